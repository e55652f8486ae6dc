"""The jit mixture sampler: determinism, no recompiles, realized shares, zero weights, short domains."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bimix_jax.data import sampler
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError

SEQ = 8


def _tokens(lengths=(500, 300, 200, 400, 100)) -> DomainTokens:
    """Domain i's train buffer holds i * 1000 + position, so a row tells its domain and its offset."""
    domains = tuple(f"d{i}" for i in range(len(lengths)))
    train = {d: (i * 1000 + np.arange(n)).astype(np.int32) for i, (d, n) in enumerate(zip(domains, lengths))}
    val = {d: np.arange(20, dtype=np.int32) for d in domains}
    return DomainTokens(domains=domains, train=train, val=val, vocab_size=10_000, eos_id=0)


@pytest.fixture(scope="module")
def draw():
    data = jax.device_put(sampler.train_buffers(_tokens(), SEQ))

    @functools.partial(jax.jit, static_argnames="batch_size")
    def fn(key, step, r_D, batch_size=16):
        return sampler.sample_batch(data, jax.random.fold_in(key, step), r_D, batch_size=batch_size, seq_len=SEQ)

    return fn


def test_rows_are_windows_of_their_domain(draw):
    r_D = jnp.array([0.2, 0.2, 0.2, 0.2, 0.2])
    x_BxS, domain_B = map(np.asarray, draw(jax.random.key(0), 3, r_D))
    assert x_BxS.shape == (16, SEQ + 1)
    lengths = [500, 300, 200, 400, 100]
    for row, d in zip(x_BxS, domain_B):
        assert np.all(row // 1000 == d)
        pos = row % 1000
        np.testing.assert_array_equal(pos, pos[0] + np.arange(SEQ + 1))
        assert pos[-1] < lengths[d]


def test_deterministic_in_key_and_step(draw):
    r_D = jnp.array([0.1, 0.2, 0.3, 0.2, 0.2])
    a = draw(jax.random.key(1), 7, r_D)[0]
    np.testing.assert_array_equal(a, draw(jax.random.key(1), 7, r_D)[0])
    assert not np.array_equal(a, draw(jax.random.key(1), 8, r_D)[0])
    assert not np.array_equal(a, draw(jax.random.key(2), 7, r_D)[0])


def test_new_proportions_do_not_recompile(draw):
    key = jax.random.key(0)
    draw(key, 0, jnp.array([0.2, 0.2, 0.2, 0.2, 0.2]))
    before = draw._cache_size()
    for r in ([1.0, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.2, 0.2], [0, 0, 0, 0, 1.0]):
        draw(key, 5, jnp.array(r, jnp.float32))
    assert draw._cache_size() == before


@pytest.mark.parametrize("r", [
    [0.5, 0.3, 0.15, 0.05, 0.0],
    [0.0, 0.7, 0.0, 0.3, 0.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
    [1 / 3, 0.0, 1 / 3, 0.0, 1 / 3],
])
def test_realized_shares_match_and_zero_weights_never_drawn(r):
    batch, steps = 16, 400
    r_D = jnp.array(r, jnp.float32)
    keys = jax.random.split(jax.random.key(3), steps)
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.split(k)[0], ()))(keys)
    domain_SxB = np.asarray(jax.vmap(lambda x: sampler.allocate_rows(x, r_D, batch))(u))
    counts_SxD = np.stack([np.bincount(row, minlength=5) for row in domain_SxB])
    r = np.array(r)
    # Every batch holds floor or ceil of B r_i rows of domain i; zero-weight domains none at all.
    assert np.all(counts_SxD >= np.floor(batch * r) - 1e-9)
    assert np.all(counts_SxD <= np.ceil(batch * r) + 1e-9)
    assert np.all(counts_SxD[:, r == 0] == 0)
    shares = counts_SxD.sum(0) / counts_SxD.sum()
    np.testing.assert_allclose(shares, r, atol=0.01)


def test_zero_weights_at_any_position_never_drawn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = rng.dirichlet(np.ones(6)) * (rng.random(6) < 0.5)
        if r.sum() == 0:
            continue
        r = r / r.sum()
        us = jnp.array([0.0, 0.5, np.nextafter(np.float32(1), np.float32(0))], jnp.float32)
        for u in us:
            d = np.asarray(sampler.allocate_rows(u, jnp.array(r, jnp.float32), 7))
            assert np.all(r[d] > 0), (r, u, d)


def test_rows_per_domain_ledger():
    np.testing.assert_array_equal(sampler.rows_per_domain(jnp.array([0, 2, 2, 3]), 4), [1, 0, 2, 1])


def test_short_domain_is_refused():
    with pytest.raises(InputError, match="'d4'.*seq_len"):
        sampler.train_buffers(_tokens(), 100)
