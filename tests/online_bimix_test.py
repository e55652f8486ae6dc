"""Online BiMix on a simulator whose losses follow BiMix's law in the cumulative shares: the optimum is known."""

import numpy as np
import pytest
from scipy import optimize

from bimix_jax.online import bimix_online, schedule

TRUE = {"alpha": np.array([0.05, 0.3, 0.15, 0.02]), "b": np.array([3.0, 4.0, 2.0, 5.0]),
        "beta": np.array([0.5, 0.4, 0.6, 0.3]), "c": np.array([1.0, 1.5, 0.8, 0.6])}


def law(step, share_D, P=TRUE):
    return share_D ** -P["alpha"] * (P["b"] * step ** -P["beta"] + P["c"])


def simulate(method, T, *, noise=0.0, seed=0):
    """Feedback after every segment from the law at the realised cumulative shares; returns (state, shares)."""
    m = len(TRUE["alpha"])
    rng = np.random.default_rng(seed)
    state = method.observe(method.init(m, T, seed), np.full(m, 9.0))
    rows, step = np.zeros(m), 0
    while (seg := method.next_segment(state, step)) is not None:
        schedule.check_simplex(np.asarray(seg.proportions), "emitted mixture")
        rows += seg.steps * np.asarray(seg.proportions)
        step += seg.steps
        L = law(step, rows / rows.sum()) * (1 + noise * rng.standard_normal(m))
        state = method.observe(state, L) if seg.feedback else method.skip(state)
    assert step == T
    return state, rows / rows.sum()


def optimum(T):
    k = TRUE["b"] * T ** -TRUE["beta"] + TRUE["c"]
    res = optimize.minimize(lambda z: np.sum(k * (np.exp(z) / np.exp(z).sum()) ** -TRUE["alpha"]), np.zeros(4),
                            method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
    return np.exp(res.x) / np.exp(res.x).sum()


def test_fit_recovers_the_law_from_varied_shares():
    rng = np.random.default_rng(0)
    s = np.linspace(50, 1000, 40)
    r = rng.uniform(0.05, 0.6, 40)
    for i in range(4):
        P = {k: v[i] for k, v in TRUE.items()}
        f = bimix_online.fit_domain(s, r, r ** -P["alpha"] * (P["b"] * s ** -P["beta"] + P["c"]))
        assert abs(f["alpha"] - P["alpha"]) < 0.01 and abs(f["beta"] - P["beta"]) < 0.02, (i, f)
        assert f["rel_rmse"] < 1e-3


def test_optimal_shares_match_a_generic_solver_and_respect_bounds():
    k = TRUE["b"] * 1000.0 ** -TRUE["beta"] + TRUE["c"]
    got = bimix_online.optimal_shares(TRUE["alpha"], k, np.zeros(4))
    np.testing.assert_allclose(got, optimum(1000), atol=2e-4)
    lower = np.array([0.1, 0.0, 0.3, 0.1])
    got = bimix_online.optimal_shares(TRUE["alpha"], k, lower)
    assert np.all(got >= lower - 1e-12) and np.isclose(got.sum(), 1.0)
    g = TRUE["alpha"] * k * got ** (-TRUE["alpha"] - 1)  # KKT: equal marginal benefit where not at a bound
    free = got > lower + 1e-9
    assert np.ptp(g[free]) < 1e-6 * g[free].max() and np.all(g[~free] <= g[free].max() * (1 + 1e-6))


@pytest.mark.parametrize("noise", [0.0, 2e-3])
def test_steers_to_the_known_optimum(noise):
    T = 1000
    cfg = bimix_online.OnlineBiMixConfig(round_steps=100, explore_steps=5, tilt=0.5, min_step=40, floor=0.02)
    state, shares = simulate(bimix_online.OnlineBiMix(cfg), T, noise=noise, seed=1)
    best, uniform = law(T, optimum(T)).mean(), law(T, np.full(4, 0.25)).mean()
    final = law(T, shares).mean()
    assert final - best < 0.06 * (uniform - best), (final, best, uniform)  # the exploration and floor cost a little
    assert np.argmax(shares) == 1 and np.argmax(state["p"]) == 1
    fit = state["fits"][-1]["domains"]
    np.testing.assert_allclose([f["alpha"] for f in fit], TRUE["alpha"], atol=0.02 if noise == 0 else 0.05)


def test_exploration_moves_the_cumulative_shares_and_budget_is_exact():
    cfg = bimix_online.OnlineBiMixConfig(round_steps=50, explore_steps=4, tilt=0.8, min_step=10)
    state, _ = simulate(bimix_online.OnlineBiMix(cfg), 230)
    shares = np.array([h["share"] for h in state["history"][1:]])
    assert np.ptp(shares[:12], axis=0).min() > 0.05  # every domain's share varies in the first rounds
    # Round 1 has 3 points at step >= 10 (a fit needs 4); rounds 2-4 refit; round 5 ends the run (no feedback).
    assert [f["round"] for f in state["fits"]] == [2, 3, 4]


def test_state_is_a_pure_function_of_the_feedback():
    cfg = bimix_online.OnlineBiMixConfig(round_steps=40, explore_steps=3, tilt=0.5, min_step=10)
    a, _ = simulate(bimix_online.OnlineBiMix(cfg), 200, noise=1e-3, seed=4)
    b, _ = simulate(bimix_online.OnlineBiMix(cfg), 200, noise=1e-3, seed=4)
    assert a == b


@pytest.mark.parametrize("kw,match", [(dict(round_steps=10, explore_steps=3), "exploration steps"),
                                      (dict(tilt=0.0), "tilt"), (dict(floor=0.3), "floor"), (dict(rate=1.5), "rate")])
def test_bad_configs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        bimix_online.OnlineBiMix(bimix_online.OnlineBiMixConfig(**kw)).init(4, 100, 0)
