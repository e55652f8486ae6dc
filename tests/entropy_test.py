"""SE/CE/JE from streaming bigram counts, and the entropy mixtures (BiMix Eq. 12-13)."""

import bisect
import collections
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimix_jax.errors import InputError
from bimix_jax.entropy import counts as entropy_counts
from bimix_jax.entropy.counts import BigramCounter, entropy_mixture, token_entropies


def counter_reference(x: np.ndarray) -> tuple[float, float, float]:
    """(SE, CE, JE) with collections.Counter: pairs of adjacent tokens, SE over their left tokens."""
    pairs = collections.Counter(zip(x[:-1].tolist(), x[1:].tolist()))
    left = collections.Counter(x[:-1].tolist())
    n = len(x) - 1
    je = -sum(c / n * math.log(c / n) for c in pairs.values())
    se = -sum(c / n * math.log(c / n) for c in left.values())
    ce = -sum(c / n * math.log(c / left[a]) for (a, _), c in pairs.items())
    return se, ce, je


def markov_chain(p: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(p, axis=1).tolist()
    u = rng.random(n).tolist()
    x, s = [], 0
    for t in range(n):
        s = min(bisect.bisect_right(cdf[s], u[t]), p.shape[0] - 1)
        x.append(s)
    return np.array(x, np.int32)


def test_iid_uniform_tokens_have_se_ln_k_and_ce_equal_se():
    k, n = 16, 400_000
    x = np.random.default_rng(0).integers(0, k, size=n).astype(np.int32)
    r = token_entropies(x, vocab_size=100)  # Unused ids do not matter.
    assert r.tokens == n and r.pairs == n - 1 and r.unigram_types == k and r.bigram_types == k * k
    assert r.se == pytest.approx(math.log(k), abs=2e-4)
    assert r.ce == pytest.approx(r.se, abs=2e-3)  # Plug-in bias about (k^2 - k) / 2n.
    assert r.je == pytest.approx(2 * math.log(k), abs=2e-3)


def test_markov_chain_conditional_entropy_is_its_entropy_rate():
    p = np.array([[0.9, 0.05, 0.05, 0.0], [0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.2, 0.2], [0.0, 0.5, 0.0, 0.5]])
    w, v = np.linalg.eig(p.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    row_h = np.array([-sum(q * math.log(q) for q in row if q > 0) for row in p])
    rate = float(pi @ row_h)
    x = markov_chain(p, 300_000, seed=1)
    r = token_entropies(x, vocab_size=4)
    assert r.ce == pytest.approx(rate, abs=0.01)
    assert r.se == pytest.approx(-float(pi @ np.log(pi)), abs=0.01)
    assert r.ce < r.se - 0.3  # The chain is far from i.i.d.


@pytest.mark.parametrize("vocab_size", [7, 300, 70_000])  # dense, sparse uint32 keys, sparse uint64 keys
def test_matches_counter_reference_and_chain_rule_holds(vocab_size):
    rng = np.random.default_rng(vocab_size)
    x = (rng.zipf(1.3, size=50_000) % vocab_size).astype(np.int32)
    r = token_entropies(x, vocab_size)
    se, ce, je = counter_reference(x)
    assert (r.se, r.ce, r.je) == pytest.approx((se, ce, je), abs=1e-10)
    assert r.ce == pytest.approx(r.je - r.se, abs=1e-10)  # CE is computed from its own formula.


def test_se_is_the_marginal_of_the_counted_pairs_not_of_all_tokens():
    x = np.array([0, 1, 0, 1, 2], np.int32)  # The last token, 2, has no successor.
    r = token_entropies(x, 3)
    assert r.se == pytest.approx(math.log(2), abs=1e-15) and r.pairs == 4
    assert r.ce == pytest.approx(r.je - r.se, abs=1e-15)


@given(data=st.lists(st.integers(0, 9), min_size=2, max_size=300),
       cuts=st.lists(st.integers(0, 300), max_size=8), flush=st.integers(2, 64), threads=st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_streaming_in_chunks_equals_one_shot_exactly(data, cuts, flush, threads):
    x = np.array(data, np.int32)
    one = token_entropies(x, 10, dense=False, threads=1)
    with mock.patch.object(entropy_counts, "_MIN_PARALLEL", 4):  # Key ranges and merges on tiny data too.
        counter = BigramCounter(10, dense=False, flush_tokens=flush, threads=threads)
        for chunk in np.split(x, sorted(c for c in cuts if c <= len(x))):
            counter.update(chunk)
        assert counter.result() == one
    keys, counts = counter.pair_counts()
    assert np.all(np.diff(keys.astype(np.int64)) > 0) and counts.sum() == len(x) - 1


@pytest.mark.parametrize("vocab_size", [50_277, 70_000])  # uint32 keys (packed merges), uint64 keys (argsort)
def test_streaming_with_many_flushes_and_threads_equals_one_shot_on_a_large_vocabulary(vocab_size):
    rng = np.random.default_rng(3)
    x = (rng.zipf(1.2, size=400_000) % vocab_size).astype(np.int32)
    one = token_entropies(x, vocab_size)
    counter = BigramCounter(vocab_size, threads=2, flush_tokens=1 << 18)  # Several flushes, each parallel.
    for chunk in np.array_split(x, 37):
        counter.update(chunk)
    assert counter.result() == one
    assert one.ce == pytest.approx(counter_reference(x)[1], abs=1e-10)


@pytest.mark.parametrize("vocab_size", [2, 200, 1000])
def test_sparse_and_dense_counts_agree(vocab_size):
    x = (np.random.default_rng(vocab_size).zipf(1.1, size=100_000) % vocab_size).astype(np.int32)
    results, counts = [], []
    for dense in (True, False):
        c = BigramCounter(vocab_size, dense=dense, flush_tokens=30_000, threads=2)
        c.update(x[:55_555])
        c.update(x[55_555:])
        counts.append(c.pair_counts())
        results.append(c.result())
    np.testing.assert_array_equal(counts[0][0], counts[1][0])
    np.testing.assert_array_equal(counts[0][1], counts[1][1])
    assert results[0] == results[1]
    assert BigramCounter(512).dense and not BigramCounter(513).dense  # The automatic switch.


def test_new_sequence_and_sequence_length_cut_pairs():
    x = np.arange(10, dtype=np.int32) % 4
    c = BigramCounter(4)
    c.update(x[:3])
    c.update(x[3:], new_sequence=True)
    assert c.result().pairs == 8
    by_blocks = BigramCounter(4)
    for i in range(0, 10, 4):
        by_blocks.update(x[i:i + 4], new_sequence=True)
    blocked = BigramCounter(4, sequence_length=4)
    for chunk in np.split(x, [1, 5, 6]):
        blocked.update(chunk)
    assert blocked.result() == by_blocks.result()
    assert blocked.result().pairs == 3 + 3 + 1


@pytest.mark.parametrize("tokens, match", [
    (np.zeros(0, np.int32), "domain 'web' has 0 token"),
    (np.array([3], np.int32), "domain 'web' has 1 token"),
    (np.array([1, 2, 99], np.int32), "domain 'web' has token id 99 outside the vocabulary"),
    (np.array([1, -1], np.int32), "domain 'web' has token id -1"),
    (np.array([0.5, 1.0]), "domain 'web': token ids must be a 1-D integer array"),
])
def test_bad_tokens_raise_one_line_input_error_naming_the_domain(tokens, match):
    with pytest.raises(InputError, match=match) as e:
        token_entropies(tokens, 50, name="web")
    assert "\n" not in str(e.value)


def test_mixture_is_a_softmax_of_entropies_over_temperature():
    h = {"a": 1.0, "b": 2.0, "c": 4.0}
    r = entropy_mixture(h)
    assert sum(r.values()) == pytest.approx(1.0, abs=1e-15)
    assert r["c"] / r["b"] == pytest.approx(math.exp(2.0)) and r["b"] / r["a"] == pytest.approx(math.e)
    r2 = entropy_mixture(h, temperature=2.0)
    assert r2["c"] / r2["a"] == pytest.approx(math.exp(1.5))
    assert max(entropy_mixture(h, temperature=1e6).values()) == pytest.approx(1 / 3, abs=1e-5)
    assert entropy_mixture({"a": 1000.0, "b": 0.0})["a"] == 1.0  # No overflow.
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="temperature"):
            entropy_mixture(h, temperature=bad)


def test_report_consistency_constant_is_the_same_for_every_domain():
    rng = np.random.default_rng(5)
    tokens = {"uniform": rng.integers(0, 64, size=20_000).astype(np.int32),
              "zipf": (rng.zipf(1.5, size=30_000) % 64).astype(np.int32),
              "repeat": np.tile(np.arange(8, dtype=np.int32), 2000)}
    for temperature in (1.0, 0.5):
        rep = entropy_counts.entropy_report(tokens, 64, temperature=temperature, proxy="je")
        cons = rep["consistency"]
        assert cons["spread"] < 1e-12
        lse = {m: math.log(sum(math.exp(rep["entropy"][d][m] / temperature) for d in tokens))
               for m in ("se", "ce", "je")}
        assert cons["constant"] == pytest.approx(lse["se"] + lse["ce"] - lse["je"], abs=1e-12)
        assert rep["mixture"] == rep["mixtures"]["je"] and "vne" not in rep["mixtures"]
        assert rep["entropy"]["repeat"]["ce"] == pytest.approx(0.0, abs=1e-12)  # Fully predictable.
        assert rep["entropy"]["zipf"]["tokens"] == 30_000


def test_report_refuses_bad_arguments_before_counting():
    tokens = {"a": np.arange(10, dtype=np.int32)}
    with pytest.raises(InputError, match="proxy='xe' is unknown"):
        entropy_counts.entropy_report(tokens, 10, proxy="xe")
    with pytest.raises(InputError, match="proxy=vne needs the documents"):
        entropy_counts.entropy_report(tokens, 10, proxy="vne")
    with pytest.raises(InputError, match="domain 'a' has tokens but no documents"):
        entropy_counts.entropy_report(tokens, 10, {"b": ["text"]})
    with pytest.raises(InputError, match="domain 'a' has token id 10"):
        entropy_counts.entropy_report({"a": np.array([1, 10], np.int32)}, 10)
