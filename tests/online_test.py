"""Mixing methods on simulators with known dynamics, checked rule by rule against independent references.

Each rule check is also run on plausible wrong implementations (`*_MUTANTS`): the check must fail on every one,
so a wrong update cannot pass this file.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimix_jax.online import aioli, doremi, schedule, static


def simulate(method, A_DxD, steps, *, seed=0, noise=0.0, L0=None, multiplicative=False, excess=None):
    """Runs `method` against L <- L - A p per step (`multiplicative`: L <- L - (A p) * L / 5); DoReMi observes
    `excess(L)`. Returns (state, segments)."""
    m = A_DxD.shape[0]
    rng = np.random.default_rng(seed)
    L = np.full(m, 5.0) if L0 is None else np.asarray(L0, float)
    state = method.init(m, steps, seed)
    state = method.observe(state, L if excess is None else excess(L))
    step, segments = 0, []
    while (seg := method.next_segment(state, step)) is not None:
        p = np.asarray(seg.proportions)
        schedule.check_simplex(p, "emitted mixture")
        for _ in range(seg.steps):
            drop = A_DxD @ p
            L = L - (drop * L / 5 if multiplicative else drop) + noise * rng.standard_normal(m)
        step += seg.steps
        segments.append(seg)
        state = method.observe(state, L if excess is None else excess(L)) if seg.feedback else method.skip(state)
    assert step == steps, "the segments must add up to the budget"
    return state, segments


def random_A(m, seed):
    rng = np.random.default_rng(seed)
    return 0.001 * (rng.uniform(0.0, 1.0, (m, m)) + 3 * np.eye(m))


# -- Aioli: an independent reference of the algorithm (peers.md b.2 / f), step by step -----------------------

def reference_aioli(c: aioli.AioliConfig, A_DxD, T, seed):
    """[(proportions, steps, kind)], [(A, p)] per round, written from the published pseudo-code."""
    m = A_DxD.shape[0]
    L = np.full(m, 5.0)
    segs, rounds = [], []

    def train(q, n, kind):
        nonlocal L
        for _ in range(n):
            L = L - (A_DxD @ q) * L / 5
        segs.append((tuple(np.round(q, 12)), n, kind))

    u = np.full(m, 1.0 / m)
    p, Abar, step, r = u.copy(), None, 0, 0
    if c.prior_steps:
        train(np.asarray(c.prior), c.prior_steps, "prior")
        step = c.prior_steps
        if c.eg_start == "prior":
            p = np.asarray(c.prior) / np.sum(c.prior)
    while step < T:
        r += 1
        start = step
        if T - start > c.sweeps * m * c.probe_steps:
            rng = np.random.default_rng([seed, r])
            order = [int(j) for _ in range(c.sweeps) for j in rng.permutation(m)]
            G, L_prev = np.zeros((m, m)), L.copy()
            for j in order:
                q = np.where(np.arange(m) == j, c.one_hot_factor, (1 - c.one_hot_factor) / (m - 1))
                train(q, c.probe_steps, "probe")
                G[:, j] += L_prev - L  # chained: from the loss after the previous probe
                L_prev = L.copy()
                step += c.probe_steps
            G /= c.sweeps
            W = np.array([np.where(np.arange(m) == k, c.one_hot_factor, (1 - c.one_hot_factor) / (m - 1))
                          for k in range(m)])
            A = G if c.one_hot_factor == 1 else np.linalg.solve(W, G.T).T
            A = A - A.min() if A.min() < 0 else A
            A = A / A.sum()
            if c.ema is not None:
                Abar = A if Abar is None else (1 - c.ema) * A + c.ema * Abar
                p = u * np.exp(c.eta * Abar.sum(axis=0))
            else:
                p = p * np.exp(c.eta * A.sum(axis=0))
            p = p / p.sum()
            rounds.append((A, p.copy()))
        n = min(start + c.round_steps - step, T - step)
        train(p if c.exploit == "learned" else u, n, "train")
        step += n
    return segs, rounds


AIOLI_CASES = [  # (config, steps): >= 2 rounds each; f < 1 and f = 1; R = 2; EMA; prior with both eg_starts
    (aioli.AioliConfig(round_steps=40, sweeps=2, probe_steps=3, one_hot_factor=0.7, eta=3.0), 130),
    (aioli.AioliConfig(round_steps=30, sweeps=1, probe_steps=2, one_hot_factor=1.0, eta=2.0, ema=0.3), 95),
    (aioli.AioliConfig(round_steps=30, sweeps=1, probe_steps=3, one_hot_factor=0.8, eta=5.0, prior=(0.5, 0.3, 0.1, 0.1),
                       prior_steps=10, eg_start="prior"), 80),
    (aioli.AioliConfig(round_steps=30, sweeps=1, probe_steps=3, one_hot_factor=0.8, eta=5.0, prior=(0.5, 0.3, 0.1, 0.1),
                       prior_steps=10, eg_start="uniform"), 80),
    (aioli.AioliConfig(round_steps=30, sweeps=1, probe_steps=2, one_hot_factor=0.6, eta=4.0, exploit="uniform"), 70),
]
A_ASYM = np.array([[4.0, 0.5, 0.2, -1.5], [0.3, 2.0, 0.1, 0.2], [1.0, 0.4, 6.0, 0.3], [0.2, 2.5, 0.7, 1.0]]) * 1e-3


def check_aioli(make=lambda c: aioli.Aioli(c)):
    """Every case: the method's segments and per-round (A, p) equal the reference's."""
    for c, T in AIOLI_CASES:
        state, segs = simulate(make(c), A_ASYM, T, seed=3, multiplicative=True)
        want_segs, want_rounds = reference_aioli(c, A_ASYM, T, 3)
        got = [(tuple(np.round(s.proportions, 12)), s.steps, s.kind) for s in segs]
        assert got == want_segs, (c, got[:8], want_segs[:8])
        assert len(state["history"]) == len(want_rounds) >= 2
        for h, (A, p) in zip(state["history"], want_rounds):
            np.testing.assert_allclose(h["A"], A, rtol=1e-9, atol=1e-15)
            np.testing.assert_allclose(h["p"], p, rtol=1e-9, atol=1e-15)


class _RoundStartDrops(aioli.Aioli):  # loss drops measured from the round's start, not chained
    def observe(self, state, losses_D):
        if state.get("phase") != "probe":
            return super().observe(state, losses_D)
        start = state.get("L_start", state["L_prev"])
        out = super().observe(dict(state, L_prev=start), losses_D)
        if out["phase"] == "probe":
            out["L_start"] = start
        else:
            out.pop("L_start", None)
        return out


class _StaleExploit(aioli.Aioli):  # the exploit segment trains on the p of the previous round
    def _exploit_mixture(self, state):
        h = state["history"]
        return tuple(h[-2]["p"]) if len(h) >= 2 else (1.0 / state["m"],) * state["m"]


_REAL = {"eg_update": aioli.eg_update, "learn_params": aioli.learn_params, "normalize_A": aioli.normalize_A}
AIOLI_MUTANTS = {
    "probe mixtures f e_j + (1 - f) uniform": lambda mp: mp.setattr(
        aioli, "probe_mixtures", lambda m, f: f * np.eye(m) + (1 - f) / m),
    "no deconvolution when f < 1": lambda mp: mp.setattr(
        aioli, "learn_params", lambda G, f, diagonal=False: _REAL["normalize_A"](G)),
    "eta ignored": lambda mp: mp.setattr(aioli, "eg_update", lambda p, c, eta: _REAL["eg_update"](p, c, 1.0)),
    "eta applied twice": lambda mp: mp.setattr(
        aioli, "eg_update", lambda p, c, eta: _REAL["eg_update"](_REAL["eg_update"](p, c, eta), c, eta)),
    "row sums instead of column sums": lambda mp: mp.setattr(
        aioli, "learn_params", lambda G, f, diagonal=False: _REAL["learn_params"](G, f, diagonal=diagonal).T),
    "no shift of negative entries": lambda mp: mp.setattr(aioli, "normalize_A", lambda A: np.asarray(A) / np.sum(A)),
}
AIOLI_CLASS_MUTANTS = {
    "drops from the round's start (not chained)": _RoundStartDrops,
    "exploit on the previous round's p": _StaleExploit,
}
AIOLI_CONFIG_MUTANTS = {  # a wrong reading of a setting, expressed as the config the code would then follow
    "EMA weights swapped": lambda c: dataclasses.replace(c, ema=None if c.ema is None else 1 - c.ema),
    "eg_start ignored": lambda c: dataclasses.replace(c, eg_start="prior" if c.eg_start == "uniform" else "uniform"),
    "EMA accumulates onto p (no restart)": lambda c: dataclasses.replace(c, ema=None),
}


def test_aioli_follows_the_reference_rule_by_rule():
    check_aioli()


@pytest.mark.parametrize("f", [1.0, 0.75, 0.5])
def test_learn_params_recovers_A_exactly_without_noise(f):
    A = random_A(4, 1)
    cfg = aioli.AioliConfig(round_steps=200, sweeps=2, probe_steps=5, one_hot_factor=f)
    state, _ = simulate(aioli.Aioli(cfg), A, 200)
    np.testing.assert_allclose(state["history"][0]["A"], A / A.sum(), rtol=1e-8, atol=1e-12)


def test_learn_params_with_noise_recovers_column_sums():
    A = random_A(3, 3)
    cfg = aioli.AioliConfig(round_steps=400, sweeps=4, probe_steps=30, one_hot_factor=0.75)
    state, _ = simulate(aioli.Aioli(cfg), A, 400, noise=2e-4, seed=5)
    got = np.asarray(state["history"][0]["colsum"])
    assert np.max(np.abs(got - A.sum(axis=0) / A.sum())) < 0.03, got


def test_budget_is_exact_and_a_short_last_stretch_does_not_probe():
    A = np.diag([0.001, 0.004, 0.001])
    cfg = aioli.AioliConfig(round_steps=50, sweeps=1, probe_steps=4, one_hot_factor=1.0, eta=1.0)
    state, segs = simulate(aioli.Aioli(cfg), A, 210)
    assert np.argmax(state["p"]) == 1 and state["p"][1] > 0.5
    kinds = schedule.realized_steps([s.to_json() for s in segs])
    assert kinds["probe"] == 4 * 12 and kinds["train"] == 210 - 48  # 4 rounds probe; the 5th (10 steps) cannot.


def test_controls_one_round_and_uniform_exploit():
    A = random_A(3, 4)
    state, segs = simulate(aioli.Aioli(aioli.AioliConfig(round_steps=90, sweeps=1, probe_steps=3)), A, 90)
    assert [s.kind for s in segs] == ["probe"] * 3 + ["train"] and len(state["history"]) == 1
    state, segs = simulate(aioli.Aioli(aioli.AioliConfig(round_steps=30, sweeps=1, probe_steps=3, exploit="uniform",
                                                         eta=5.0)), A, 90)
    assert all(s.proportions == (1 / 3,) * 3 for s in segs if s.kind == "train")
    assert max(state["p"]) > 0.34  # p is still learned, only not trained on


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


# -- DoReMi -------------------------------------------------------------------------------------------------

def test_token_excess_clips_each_token_before_averaging():
    loss = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    ref = np.array([2.0, 2.0, 2.0, 1.0, 1.0])
    dom = np.array([0, 0, 0, 1, 1])
    w = np.array([1.0, 1.0, 1.0, 1.0, 0.0])  # the last token is padding
    got = doremi.token_excess(loss, ref, w, dom, 3)
    np.testing.assert_allclose(got, [1 / 3, 1.0, 0.0])  # clip-after-averaging would give [0, 1, 0]


def reference_doremi(c: doremi.DoReMiConfig, m, T, excess_of_step):
    """Segments' proportions and the time-averaged weights, replaying the official per-step rule."""
    a, total, step, segs = np.full(m, 1.0 / m), np.zeros(m), 0, []
    while step < T:
        n = min(c.update_every, T - step)
        segs.append(a.copy())
        total += n * a
        step += n
        if step < T:
            lam = excess_of_step(step)
            for _ in range(n):
                z = np.log(a) + c.eta * lam
                a = np.exp(z - z.max())
                a = a / a.sum()
                a = (1 - c.smoothing) * a + c.smoothing / m
    return segs, total / total.sum()


def _excess_of_step(step):
    return np.array([0.3, 0.05, 0.0]) + 0.01 * np.array([np.sin(step), np.cos(step), 0.5])


def check_doremi(make=lambda c: doremi.DoReMi(c)):
    for c, T in ((doremi.DoReMiConfig(eta=0.5, smoothing=0.01, update_every=10), 45),
                 (doremi.DoReMiConfig(eta=2.0, smoothing=1e-3, update_every=7), 30)):
        method = make(c)
        state = method.init(3, T, 0)
        state = method.observe(state, np.zeros(3))
        step, segs = 0, []
        while (seg := method.next_segment(state, step)) is not None:
            segs.append(np.asarray(seg.proportions))
            step += seg.steps
            state = method.observe(state, _excess_of_step(step)) if seg.feedback else method.skip(state)
        want_segs, want_avg = reference_doremi(c, 3, T, _excess_of_step)
        assert len(segs) == len(want_segs)
        for g, w in zip(segs, want_segs):
            np.testing.assert_allclose(g, w, rtol=1e-10)
        np.testing.assert_allclose(method.summary(state)["final_proportions"], want_avg, rtol=1e-10)


class _FullLastSegment(doremi.DoReMi):  # the last, shorter segment weighted as a full one
    def _account(self, state):
        n = self.config.update_every
        s = dict(state, steps=state["steps"] + n)
        s["sum_alpha"] = (np.asarray(state["sum_alpha"]) + n * np.asarray(state["alpha"])).tolist()
        return s, n


class _LastWeights(doremi.DoReMi):  # the final weights instead of the time average
    def summary(self, state):
        return {**super().summary(state), "final_proportions": state["alpha"]}


class _UnweightedAverage(doremi.DoReMi):  # the mean of the weights, not weighted by the steps trained on each
    def summary(self, state):
        m = len(state["alpha"])
        alphas = [[1.0 / m] * m] + [u["alpha"] for u in state["updates"]]
        return {**super().summary(state), "final_proportions": list(np.mean(alphas, axis=0))}


def _smooth_then_eg(a, excess, eta, c):
    a = (1 - c) * np.asarray(a) + c / len(a)
    z = np.log(a) + eta * np.asarray(excess)
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


_REAL_DOREMI = {"update": doremi.doremi_update, "step": doremi.doremi_step}
DOREMI_MUTANTS = {
    "one EG step per update (eta not per step)": lambda mp: mp.setattr(
        doremi, "doremi_update", lambda a, e, eta, c, steps: _REAL_DOREMI["update"](a, e, eta, c, 1)),
    "smoothing toward uniform dropped": lambda mp: mp.setattr(
        doremi, "doremi_step", lambda a, e, eta, c: _REAL_DOREMI["step"](a, e, eta, 0.0)),
    "smoothing before the EG step": lambda mp: mp.setattr(doremi, "doremi_step", _smooth_then_eg),
}
DOREMI_CLASS_MUTANTS = {"the last, shorter segment counted as a full one": _FullLastSegment,
                        "final weights, not the time average": _LastWeights,
                        "average not weighted by steps": _UnweightedAverage}


def test_doremi_follows_the_official_rule_step_by_step():
    check_doremi()


def _mutants():
    """(rule, name, apply): `apply(monkeypatch)` patches the code or returns the method factory to check."""
    out = [("aioli", n, f) for n, f in AIOLI_MUTANTS.items()]
    out += [("aioli", n, lambda mp, cls=cls: (lambda c: cls(c))) for n, cls in AIOLI_CLASS_MUTANTS.items()]
    out += [("aioli", n, lambda mp, f=f: (lambda c: aioli.Aioli(f(c)))) for n, f in AIOLI_CONFIG_MUTANTS.items()]
    out += [("doremi", n, f) for n, f in DOREMI_MUTANTS.items()]
    out += [("doremi", n, lambda mp, cls=cls: (lambda c: cls(c))) for n, cls in DOREMI_CLASS_MUTANTS.items()]
    return out


@pytest.mark.parametrize("rule,name,apply", _mutants(), ids=lambda x: x if isinstance(x, str) else "")
def test_rule_checks_fail_on_a_plausible_wrong_implementation(rule, name, apply, monkeypatch):
    make = apply(monkeypatch)
    check = {"aioli": check_aioli, "doremi": check_doremi}[rule]
    with pytest.raises(AssertionError):
        check() if make is None else check(make)


def test_doremi_refuses_an_unclipped_excess():
    method = doremi.DoReMi()
    state = method.observe(method.init(2, 20, 0), np.zeros(2))
    with pytest.raises(ValueError, match="clipped per token"):
        method.observe(state, np.array([0.1, -0.2]))


def test_static_is_one_segment():
    state, segs = simulate(static.uniform(4), np.eye(4) * 1e-3, 17)
    assert len(segs) == 1 and segs[0].steps == 17 and segs[0].proportions == (0.25,) * 4


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="probe"):
        aioli.Aioli(aioli.AioliConfig(round_steps=10, sweeps=1, probe_steps=5)).init(3, 100, 0)
    with pytest.raises(ValueError, match="one_hot_factor"):
        aioli.Aioli(aioli.AioliConfig(one_hot_factor=0.2)).init(3, 100, 0)
    with pytest.raises(ValueError, match="exploit"):
        aioli.Aioli(aioli.AioliConfig(exploit="stale")).init(3, 100, 0)
