"""Property fuzzing (hypothesis) of the numerics: every output is finite and feasible, or a clean InputError.

Targets: the capped-simplex projection, the exact BiMix optimum, the laws' predictions, the fitter, the
sampler's row allocation, entropy counts and entropy mixtures, and loss-table validation. The default run
draws `FAST` examples per target (a few hundred in all); `pytest -m slow` draws `SLOW` per target (the
fitter, which solves a real fit per example, draws `SLOW_FIT`). Runs in float64 (`jax.enable_x64`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bimix_jax import loss_table
from bimix_jax.data.sampler import allocate_rows
from bimix_jax.entropy.counts import entropy_mixture, token_entropies
from bimix_jax.errors import InputError
from bimix_jax.laws import fit_law
from bimix_jax.laws.base import get_law
from bimix_jax.mixture.bimix_optimum import bimix_exact
from bimix_jax.mixture.simplex import project_capped_simplex

FAST, SLOW, FAST_FIT, SLOW_FIT = 40, 10_000, 4, 300
D = 4
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
unit = st.floats(0.0, 1.0, allow_nan=False)


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _settings(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _bounds(u, v, floor_mass, cap_mass):
    u, v = np.asarray(u) + 1e-3, np.asarray(v) + 1e-3
    lo = floor_mass * u / u.sum()
    hi = np.minimum(lo + (1.0 - floor_mass) * (1.0 + cap_mass) * v / v.sum(), 1.0)
    return lo, hi


_project = jax.jit(project_capped_simplex)
_exact = jax.jit(bimix_exact)
_alloc = jax.jit(allocate_rows, static_argnums=2)


def projection_case(x, u, v, floor_mass, cap_mass):
    lo, hi = _bounds(u, v, floor_mass, cap_mass)
    p = np.asarray(_project(np.asarray(x), lo, hi))
    assert np.all(np.isfinite(p))
    assert np.all(p >= lo - 1e-9) and np.all(p <= hi + 1e-9) and abs(p.sum() - 1) < 1e-9


def optimum_case(a, c, alpha, beta, w, s, u, v, floor_mass, cap_mass):
    lo, hi = _bounds(u, v, floor_mass, cap_mass)
    lo = np.maximum(lo, 1e-4)
    if lo.sum() > 1:
        lo = lo / lo.sum() * 0.999
    hi = np.maximum(hi, lo)
    if hi.sum() < 1:
        return
    params = {k: jnp.asarray(np.asarray(x)) for k, x in (("a", a), ("c", c), ("alpha", alpha), ("beta", beta))}
    w = np.asarray(w) + 1e-3
    r, _ = _exact(params, jnp.arange(D), s, w / w.sum(), lo, hi)
    r = np.asarray(r)
    assert np.all(np.isfinite(r))
    assert np.all(r >= lo - 1e-7) and np.all(r <= hi + 1e-7) and abs(r.sum() - 1) < 1e-7


def law_case(name, a, c, alpha, beta, r, s):
    r = np.asarray(r) + 1e-3
    r = r / r.sum()
    domains = tuple(f"d{i}" for i in range(D))
    law = get_law(name)(domains, domains)
    if name == "bimix":
        params = {"a": np.asarray(a), "c": np.asarray(c), "alpha": np.asarray(alpha), "beta": np.asarray(beta)}
    else:
        t = np.outer(np.asarray(alpha) - 0.5, np.ones(D)) * np.asarray(beta)[None, :]
        params = {"c": np.asarray(c), "k": np.asarray(a) / 1e3, "t": t - t.mean(axis=1, keepdims=True)}
    out = np.asarray(law.predict({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(r), jnp.asarray(s)))
    assert out.shape == (D,) and np.all(np.isfinite(out)) and np.all(out > 0)


def fit_case(alpha, beta, c, noise, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for k, m in enumerate([(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2)]):
        for st_ in (100, 200, 400, 800, 1600):
            for e, dom in enumerate(("a", "b")):
                loss = m[e] ** -alpha * (30.0 * st_ ** -beta + c) * math.exp(noise * rng.standard_normal())
                rows.append({"run": f"r{k}", "step": st_, "p_a": m[0], "p_b": m[1], "eval_domain": dom,
                             "loss": loss})
    try:
        fitted = fit_law(loss_table.from_rows(rows), "bimix", n_starts=2)
    except InputError:
        return
    for v in fitted.params.values():
        assert np.all(np.isfinite(v)) and np.all(np.asarray(v) > 0)
    pred = np.asarray(fitted.predict(np.array([0.5, 0.5]), 1000.0))
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)


def alloc_case(r, zero_mask, u, batch):
    r = np.where(np.asarray(zero_mask), 0.0, np.asarray(r))
    if r.sum() <= 0:
        r[0] = 1.0
    r = r / r.sum()  # mixtures reach the sampler checked: finite, >= 0, summing to 1
    dom = np.asarray(_alloc(jnp.float32(u), jnp.asarray(r, jnp.float32), batch))
    assert dom.shape == (batch,) and dom.min() >= 0 and dom.max() < D
    counts = np.bincount(dom, minlength=D)
    assert np.all(counts[np.float32(r) == 0] == 0)
    assert np.all(np.abs(counts - batch * r / r.sum()) <= 1 + 1e-3)


def entropy_case(tokens, vocab, temperature, h):
    x = np.asarray(tokens, np.int64) % vocab
    if x.size >= 2:
        e = token_entropies(x.astype(np.int32), vocab)
        for v in (e.se, e.ce, e.je):
            assert math.isfinite(v) and v >= -1e-12
        assert e.ce <= e.je + 1e-9 and e.se <= math.log(vocab) + 1e-9
    try:
        mix = entropy_mixture({f"d{i}": v for i, v in enumerate(h)}, temperature)
    except InputError:
        assert not (math.isfinite(temperature) and temperature > 0) or not h
        return
    p = np.array(list(mix.values()))
    assert np.all(np.isfinite(p)) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-9


def table_case(loss, step, p):
    rows = [{"run": "r", "step": step, "p_a": p, "p_b": 1 - p, "eval_domain": "a", "loss": loss}]
    try:
        t = loss_table.from_rows(rows)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert np.isfinite(t.loss).all() and (t.loss > 0).all() and (t.step > 0).all()


vec = st.lists(unit, min_size=D, max_size=D)
pos = st.lists(st.floats(1e-3, 1e3), min_size=D, max_size=D)
expo = st.lists(st.floats(1e-4, 2.0), min_size=D, max_size=D)
TARGETS = {
    "projection": (projection_case, dict(x=st.lists(finite, min_size=D, max_size=D), u=vec, v=vec,
                                         floor_mass=st.floats(0, 0.99), cap_mass=st.floats(0, 2))),
    "bimix_optimum": (optimum_case, dict(a=pos, c=pos, alpha=expo, beta=expo, w=vec, s=st.floats(1.0, 1e7),
                                         u=vec, v=vec, floor_mass=st.floats(0, 0.9), cap_mass=st.floats(0, 2))),
    "laws": (law_case, dict(name=st.sampled_from(["bimix", "dml"]), a=pos, c=pos, alpha=expo, beta=expo, r=vec,
                            s=st.floats(1.0, 1e7))),
    "sampler": (alloc_case, dict(r=st.lists(st.floats(0, 1), min_size=D, max_size=D),
                                 zero_mask=st.lists(st.booleans(), min_size=D, max_size=D),
                                 u=st.floats(0, 0.999), batch=st.sampled_from([8, 16, 64]))),
    "entropy": (entropy_case, dict(tokens=st.lists(st.integers(0, 10_000), max_size=300),
                                   vocab=st.integers(2, 5000), temperature=st.floats(-10, 1e3),
                                   h=st.lists(st.floats(0, 1e3), max_size=6))),
    "loss_table": (table_case, dict(loss=st.one_of(st.floats(), st.text(max_size=5)),
                                    step=st.one_of(st.floats(), st.integers(-5, 10**9)), p=st.floats(-1, 2))),
}
FIT = (fit_case, dict(alpha=st.floats(0.01, 1.0), beta=st.floats(0.05, 1.5), c=st.floats(0.5, 5.0),
                      noise=st.sampled_from([0.0, 0.001, 0.01, 0.1]), seed=st.integers(0, 2**31)))


def _fuzz(target, n):
    fn, strategies = target
    given(**strategies)(_settings(n)(fn))()


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name):
    _fuzz(TARGETS[name], FAST)


def test_fuzz_fitter():
    _fuzz(FIT, FAST_FIT)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_exhaustive(name):
    _fuzz(TARGETS[name], SLOW)


@pytest.mark.slow
def test_fuzz_fitter_exhaustive():
    _fuzz(FIT, SLOW_FIT)
