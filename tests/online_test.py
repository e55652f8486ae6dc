"""Mixing methods on a simulator with known linear dynamics: L^{t+1} = L^t - A p^t (+ noise)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimix_jax.online import aioli, doremi, schedule, static


def simulate(method, A_DxD, steps, *, seed=0, noise=0.0, L0=None):
    """Runs `method` against the dynamics; returns (state, segments)."""
    m = A_DxD.shape[0]
    rng = np.random.default_rng(seed)
    L = np.full(m, 5.0) if L0 is None else np.asarray(L0, float)
    state = method.init(m, steps, seed)
    state = method.observe(state, L)
    step, segments = 0, []
    while (seg := method.next_segment(state, step)) is not None:
        p = np.asarray(seg.proportions)
        schedule.check_simplex(p, "emitted mixture")
        for _ in range(seg.steps):
            L = L - A_DxD @ p + noise * rng.standard_normal(m)
        step += seg.steps
        segments.append(seg)
        state = method.observe(state, L) if seg.feedback else method.skip(state)
    assert step == steps, "the segments must add up to the budget"
    return state, segments


def random_A(m, seed):
    rng = np.random.default_rng(seed)
    return 0.001 * (rng.uniform(0.0, 1.0, (m, m)) + 3 * np.eye(m))


@pytest.mark.parametrize("f", [1.0, 0.75, 0.5])
def test_learn_params_recovers_A_exactly_without_noise(f):
    A = random_A(4, 1)
    cfg = aioli.AioliConfig(round_steps=200, sweeps=2, probe_steps=5, one_hot_factor=f)
    state, _ = simulate(aioli.Aioli(cfg), A, 200)
    got = np.asarray(state["history"][0]["A"])
    np.testing.assert_allclose(got, A / A.sum(), rtol=1e-8, atol=1e-12)


def test_deconvolution_is_exact_and_diagonal_option():
    A = random_A(3, 2)
    for f in (0.5, 0.8):
        W = aioli.probe_mixtures(3, f)
        G = (W @ A.T).T  # G[i, k] = sum_j A_ij W[k, j]
        np.testing.assert_allclose(aioli.learn_params(G, f), A / A.sum(), rtol=1e-10)
    D = np.diag([0.3, 0.2, 0.1])
    np.testing.assert_allclose(aioli.learn_params(D * 0.8, 0.8, diagonal=True), D / D.sum(), rtol=1e-12)


def test_normalisation_shifts_negative_entries():
    A = np.array([[1.0, -0.5], [0.2, 0.3]])
    np.testing.assert_allclose(aioli.normalize_A(A), (A + 0.5) / (A + 0.5).sum())


def test_learn_params_with_noise_recovers_column_sums():
    A = random_A(3, 3)
    cfg = aioli.AioliConfig(round_steps=400, sweeps=4, probe_steps=30, one_hot_factor=0.75)
    state, _ = simulate(aioli.Aioli(cfg), A, 400, noise=2e-4, seed=5)
    got = np.asarray(state["history"][0]["colsum"])
    want = A.sum(axis=0) / A.sum()
    assert np.max(np.abs(got - want)) < 0.03, (got, want)


def test_eg_moves_weight_to_the_most_useful_domain_and_budget_is_exact():
    A = np.diag([0.001, 0.004, 0.001])
    cfg = aioli.AioliConfig(round_steps=50, sweeps=1, probe_steps=4, one_hot_factor=1.0, eta=1.0)
    state, segs = simulate(aioli.Aioli(cfg), A, 210)
    p = np.asarray(state["p"])
    assert np.argmax(p) == 1 and p[1] > 0.5
    kinds = schedule.realized_steps([s.to_json() for s in segs])
    assert kinds["probe"] == 4 * 12 and kinds["train"] == 210 - 48  # 4 rounds probe; the 5th (10 steps) cannot.
    assert len(state["history"]) == 4


def test_ema_restarts_from_uniform_and_restricted_prior():
    A = np.diag([0.001, 0.004, 0.001])
    prior = (0.6, 0.2, 0.2)
    cfg = aioli.AioliConfig(round_steps=50, sweeps=1, probe_steps=4, one_hot_factor=1.0, eta=1.0, ema=0.5,
                            prior=prior, prior_steps=20)
    state, segs = simulate(aioli.Aioli(cfg), A, 140)
    assert segs[0].kind == "prior" and segs[0].steps == 20 and segs[0].proportions == prior
    h = state["history"]
    assert h[0]["step"] == 20 + 12
    for r in h:  # With EMA, p = uniform * exp(eta colsum(Abar)): independent of the previous p.
        assert np.all(np.isfinite(r["p"]))
    Abar = np.asarray(h[0]["A"])
    np.testing.assert_allclose(h[0]["p"], aioli.eg_update(np.full(3, 1 / 3), Abar.sum(0), 1.0))


@given(m=st.integers(2, 6), K=st.integers(2, 80), R=st.integers(1, 3), S=st.integers(1, 4),
       f=st.floats(0.55, 1.0), eta=st.floats(0.01, 5.0), T=st.integers(1, 400), seed=st.integers(0, 99),
       ema=st.one_of(st.none(), st.floats(0.0, 0.9)), noise=st.sampled_from([0.0, 1e-3]))
@settings(max_examples=60, deadline=None)
def test_every_emitted_mixture_lies_on_the_simplex(m, K, R, S, f, eta, T, seed, ema, noise):
    if R * m * S >= K or f <= 1 / m:
        return
    A = np.random.default_rng(seed).normal(0.001, 0.002, (m, m))  # Negative entries too.
    cfg = aioli.AioliConfig(round_steps=K, sweeps=R, probe_steps=S, one_hot_factor=f, eta=eta, ema=ema)
    state, _ = simulate(aioli.Aioli(cfg), A, T, noise=noise, seed=seed)
    schedule.check_simplex(np.asarray(state["p"]), "final p")


def test_doremi_upweights_the_largest_excess_and_returns_the_time_average():
    A = np.diag([0.002, 0.002, 0.002])
    ref = (4.0, 3.0, 4.5)  # Domain 1 has the largest excess (5 - 3) at the start.
    method = doremi.DoReMi(ref, doremi.DoReMiConfig(eta=1.0, smoothing=1e-3, update_every=10))
    state, segs = simulate(method, A, 45)
    alphas = [np.asarray(s.proportions) for s in segs]
    assert np.argmax(alphas[1]) == 1 and alphas[1][1] > alphas[0][1]
    want = sum(s.steps * a for s, a in zip(segs, alphas)) / 45
    np.testing.assert_allclose(method.averaged(state), want / want.sum(), rtol=1e-12)
    assert all(abs(a.sum() - 1) < 1e-12 and a.min() >= 1e-3 / 3 - 1e-15 for a in alphas)


def test_static_is_one_segment():
    state, segs = simulate(static.uniform(4), np.eye(4) * 1e-3, 17)
    assert len(segs) == 1 and segs[0].steps == 17 and segs[0].proportions == (0.25,) * 4


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="probe"):
        aioli.Aioli(aioli.AioliConfig(round_steps=10, sweeps=1, probe_steps=5)).init(3, 100, 0)
    with pytest.raises(ValueError, match="one_hot_factor"):
        aioli.Aioli(aioli.AioliConfig(one_hot_factor=0.2)).init(3, 100, 0)
