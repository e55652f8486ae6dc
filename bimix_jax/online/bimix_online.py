"""Online BiMix: fit BiMix's law to the run's own feedback history and steer the mixture toward its optimum.

No anchor has this method; it is BiMix (Ge et al., arXiv 2405.14908) applied inside one run. Per domain i the
law ties the feedback loss at step s to the domain's *cumulative* share of the training rows so far, r_i(s):

    L_i(s) = r_i(s)^-alpha_i * (b_i s^-beta_i + c_i)          (BiMix's A_i (B_i s^-beta_i + C_i), A folded in)

Each round of K steps:
1. Exploration: one segment of S steps per domain (random order), on `(1 - tilt) p + tilt e_j`, so the
   cumulative shares move apart; feedback after each.
2. Exploit: the rest of the round on p; feedback at its end.
3. Refit (`fit_domain`, variable projection: a grid over (alpha, beta), refined once, with (b, c) >= 0 in
   closed form, relative residuals) on every feedback point at step >= `min_step`, then the optimum
   (`optimal_shares`): the final cumulative shares R* that minimise sum_i L_i(R_i, T) given the rows already
   trained, converted to the mixture of the remaining steps (the exploration's pull toward uniform taken
   out), floored at `floor`; p moves `rate` of the way to it.

The cumulative shares are those requested (the sampler realises each segment's mixture to within one row per
step). Plain numpy with JSON-able state; nothing here imports the laws or the trainer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bimix_jax.mixture.proportions import renormalize as normalize
from bimix_jax.online.schedule import Segment, State

_ALPHA_D = np.linspace(0.0, 2.0, 41)
_LOG_BETA_D = np.linspace(np.log(0.02), np.log(3.0), 41)


@dataclasses.dataclass(frozen=True)
class OnlineBiMixConfig:
    round_steps: int = 50  # K: steps per round (exploration included)
    explore_steps: int = 4  # S: steps of each exploration segment (one per domain per round)
    tilt: float = 0.5  # exploration segment j trains (1 - tilt) p + tilt e_j
    min_step: int = 40  # feedback points before this step are not fitted (the warmup lies far above the law)
    rate: float = 1.0  # p <- (1 - rate) p + rate p* after each refit
    floor: float = 0.02  # lowest proportion of any domain in p*

    def check(self, num_domains: int) -> None:
        m = num_domains
        if m < 2:
            raise ValueError("online_bimix needs at least 2 domains")
        if min(self.round_steps, self.explore_steps) < 1 or self.min_step < 1:
            raise ValueError("online_bimix.round_steps, explore_steps and min_step must be >= 1")
        if m * self.explore_steps >= self.round_steps:
            raise ValueError(f"online_bimix: domains x explore_steps = {m * self.explore_steps} exploration steps "
                             f"do not leave a step of the round (round_steps={self.round_steps}) for p")
        if not 0 < self.tilt <= 1:
            raise ValueError("online_bimix.tilt must lie in (0, 1]")
        if not 0 < self.rate <= 1:
            raise ValueError("online_bimix.rate must lie in (0, 1]")
        if not 0 <= self.floor < 1.0 / m:
            raise ValueError(f"online_bimix.floor must lie in [0, 1/m) (m={m} domains)")


def _grid_fit(s_N: np.ndarray, r_N: np.ndarray, L_N: np.ndarray, alpha_G: np.ndarray,
              log_beta_H: np.ndarray) -> tuple[float, float, float, float, float]:
    """Best (err, alpha, beta, b, c) over the grid: for each (alpha, beta), (b, c) >= 0 minimise the relative
    residuals `(r^-alpha (b s^-beta + c) - L) / L` in closed form (2x2 normal equations, else one column)."""
    ra_GxN = r_N[None, :] ** -alpha_G[:, None] / L_N[None, :]
    sb_HxN = s_N[None, :] ** -np.exp(log_beta_H)[:, None]
    x1 = ra_GxN[:, None, :] * sb_HxN[None, :, :]  # [G, H, N]
    x2 = np.broadcast_to(ra_GxN[:, None, :], x1.shape)
    a11, a12, a22 = (x1 * x1).sum(-1), (x1 * x2).sum(-1), (x2 * x2).sum(-1)
    y1, y2 = x1.sum(-1), x2.sum(-1)
    det = a11 * a22 - a12 * a12
    ok = det > 1e-12 * np.maximum(a11 * a22, 1e-300)
    safe = np.where(ok, det, 1.0)
    b = np.where(ok, (a22 * y1 - a12 * y2) / safe, -1.0)
    c = np.where(ok, (a11 * y2 - a12 * y1) / safe, -1.0)
    n = float(s_N.size)

    def sse(b_, c_):  # sum (b x1 + c x2 - 1)^2 from the normal-equation sums
        return b_ * b_ * a11 + 2 * b_ * c_ * a12 + c_ * c_ * a22 - 2 * (b_ * y1 + c_ * y2) + n

    cands = [(b, c, np.where((b >= 0) & (c >= 0), sse(b, c), np.inf))]
    b_only = np.maximum(y1 / np.maximum(a11, 1e-300), 0.0)
    c_only = np.maximum(y2 / np.maximum(a22, 1e-300), 0.0)
    cands += [(b_only, np.zeros_like(b), sse(b_only, 0.0)), (np.zeros_like(c), c_only, sse(0.0, c_only))]
    err = np.minimum.reduce([e for *_, e in cands])
    g, h = np.unravel_index(int(np.argmin(err)), err.shape)
    for bb, cc, e in cands:
        if e[g, h] == err[g, h]:
            return (max(float(err[g, h]), 0.0), float(alpha_G[g]), float(np.exp(log_beta_H[h])), float(bb[g, h]),
                    float(cc[g, h]))
    raise AssertionError("unreachable")


def fit_domain(s_N: np.ndarray, r_N: np.ndarray, L_N: np.ndarray) -> dict[str, float]:
    """`L = r^-alpha (b s^-beta + c)` fitted to points (step, cumulative share, loss); relative least squares."""
    s_N, r_N, L_N = (np.asarray(x, np.float64) for x in (s_N, r_N, L_N))
    err, a, beta, b, c = _grid_fit(s_N, r_N, L_N, _ALPHA_D, _LOG_BETA_D)
    da, dlb = _ALPHA_D[1] - _ALPHA_D[0], _LOG_BETA_D[1] - _LOG_BETA_D[0]
    fine_a = np.clip(np.linspace(a - da, a + da, 21), 0.0, None)
    fine_lb = np.linspace(np.log(beta) - dlb, np.log(beta) + dlb, 21)
    err, a, beta, b, c = _grid_fit(s_N, r_N, L_N, fine_a, fine_lb)
    return {"alpha": a, "beta": beta, "b": b, "c": c, "rel_rmse": float(np.sqrt(err / max(L_N.size, 1)))}


def optimal_shares(alpha_D: np.ndarray, k_D: np.ndarray, lower_D: np.ndarray) -> np.ndarray:
    """argmin sum_i k_i R_i^-alpha_i over the simplex with R >= lower (KKT, bisection on the multiplier)."""
    alpha_D, k_D, lower_D = (np.asarray(x, np.float64) for x in (alpha_D, k_D, lower_D))
    if lower_D.sum() >= 1:
        return lower_D / lower_D.sum()
    g_D = alpha_D * np.maximum(k_D, 0.0)  # the marginal benefit's scale
    if g_D.max() <= 0:  # no domain gains from more share: spread what the bounds leave
        return lower_D + (1 - lower_D.sum()) / lower_D.size

    def shares(log_lam: float) -> np.ndarray:
        free = np.where(g_D > 0, np.exp((np.log(np.maximum(g_D, 1e-300)) - log_lam) / (1.0 + alpha_D)), 0.0)
        return np.maximum(lower_D, free)

    lo, hi = -300.0, 300.0  # sum(shares) falls as log_lam rises: above 1 at lo, below at hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if shares(mid).sum() > 1 else (lo, mid)
    R = shares(0.5 * (lo + hi))
    return R / R.sum()


@dataclasses.dataclass(frozen=True)
class OnlineBiMix:
    config: OnlineBiMixConfig = OnlineBiMixConfig()
    name: str = "online_bimix"

    def init(self, num_domains: int, total_steps: int, seed: int) -> State:
        self.config.check(num_domains)
        m = num_domains
        return {"m": m, "total_steps": int(total_steps), "seed": int(seed), "started": False, "round": 0,
                "round_start": 0, "step": 0, "phase": "explore", "order": [], "index": 0, "p": [1.0 / m] * m,
                "rows": [0.0] * m, "history": [], "fits": []}

    def _planned(self, state: State) -> Segment | None:
        """The segment that starts at `state['step']` (the same plan for `next_segment` and `observe`)."""
        c, T, step, m = self.config, state["total_steps"], state["step"], state["m"]
        if step >= T or state["phase"] == "done":
            return None
        left = T - step
        if state["phase"] == "explore":
            j = state["order"][state["index"]]
            q = (1 - c.tilt) * np.asarray(state["p"]) + c.tilt * np.eye(m)[j]
            return Segment(tuple(normalize(q).tolist()), c.explore_steps, "probe", True,
                           f"round {state['round']} explore {state['index'] + 1} (domain {j})")
        n = min(state["round_start"] + c.round_steps - step, left)
        return Segment(tuple(state["p"]), n, "train", n < left, f"round {state['round']}")

    def next_segment(self, state: State, step: int) -> Segment | None:
        if step != state["step"] and step < state["total_steps"]:
            raise ValueError(f"online_bimix planned from step {state['step']}, asked at step {step}")
        return self._planned(state)

    def _advance(self, state: State) -> State:
        seg = self._planned(state)
        s = dict(state, step=state["step"] + seg.steps)
        s["rows"] = (np.asarray(state["rows"]) + seg.steps * np.asarray(seg.proportions)).tolist()
        return s

    def observe(self, state: State, losses_D: np.ndarray) -> State:
        L = [float(x) for x in np.asarray(losses_D, np.float64)]
        if not state["started"]:
            s = dict(state, started=True, history=[{"step": 0, "share": None, "losses": L}])
            return self._start_round(s, 0)
        s = self._advance(state)
        share = normalize(np.asarray(s["rows"])).tolist()
        s["history"] = state["history"] + [{"step": s["step"], "share": share, "losses": L}]
        if s["phase"] == "explore":
            s["index"] += 1
            if s["index"] == len(s["order"]):
                s["phase"] = "exploit"
            return s
        s = self._refit(s)
        return self._start_round(s, s["round_start"] + self.config.round_steps)

    def skip(self, state: State) -> State:
        return dict(self._advance(state), phase="done")

    def _start_round(self, s: State, start: int) -> State:
        c, m = self.config, s["m"]
        s = dict(s, round=s["round"] + 1, round_start=start, index=0)
        if s["total_steps"] - start > m * c.explore_steps:
            rng = np.random.default_rng([s["seed"], s["round"]])
            s["order"], s["phase"] = [int(j) for j in rng.permutation(m)], "explore"
        else:  # Too little budget left to explore: p to the end.
            s["order"], s["phase"] = [], "exploit"
        return s

    def _refit(self, s: State) -> State:
        c, m, T, s0 = self.config, s["m"], s["total_steps"], s["step"]
        pts = [h for h in s["history"] if h["share"] is not None and h["step"] >= c.min_step]
        if len(pts) < 4 or s0 >= T:
            return s
        steps = np.array([h["step"] for h in pts], np.float64)
        share_NxD = np.array([h["share"] for h in pts])
        loss_NxD = np.array([h["losses"] for h in pts])
        fits = [fit_domain(steps, share_NxD[:, i], loss_NxD[:, i]) for i in range(m)]
        alpha = np.array([f["alpha"] for f in fits])
        k = np.array([f["b"] * T ** -f["beta"] + f["c"] for f in fits])
        r0 = normalize(np.asarray(s["rows"]))
        lower = (s0 * r0 + (T - s0) * c.floor) / T
        R = optimal_shares(alpha, k, lower)
        p_eff = np.maximum((T * R - s0 * r0) / (T - s0), 0.0)
        gamma = min(m * c.explore_steps * c.tilt / c.round_steps, 0.99)  # exploration's pull toward uniform
        p_star = np.maximum((p_eff - gamma / m) / (1 - gamma), c.floor)
        p_star = normalize(p_star)
        p = normalize((1 - c.rate) * np.asarray(s["p"]) + c.rate * p_star)
        s["fits"] = s["fits"] + [{"round": s["round"], "step": s0, "points": len(pts), "domains": fits,
                                  "target_shares": R.tolist(), "p_star": p_star.tolist(), "p": p.tolist()}]
        s["p"] = p.tolist()
        return s

    def summary(self, state: State) -> dict:
        return {"method": self.name, "final_proportions": state["p"], "fits": state["fits"],
                "history": state["history"], "config": dataclasses.asdict(self.config)}
