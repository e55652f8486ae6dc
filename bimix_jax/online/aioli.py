"""Aioli (Chen et al., arXiv 2411.05735): estimate a dynamic linear mixing law online, update by EG.

The dynamic law: one round on mixture p lowers domain i's loss by `sum_j A_ij p_j`. Each round of K steps:

1. LearnParams: R sweeps over a random permutation of the m domains; probe j trains S steps on the smoothed
   one-hot mixture q_j (f on domain j, (1 - f) / (m - 1) on each other). After each probe the feedback losses
   are measured and the drops are chained: `G[:, j] += L_prev - L_new`, `L_prev = L_new` (the reference code's
   choice: the loss after the previous probe, not the round's start). G is averaged over the R sweeps.
2. Deconvolution (f < 1): probe k drops domain i's loss by `sum_j A_ij q_k[j]`, so row i of A solves
   `W a = G[i]` with W's rows the probe mixtures (exact). `diagonal=True` keeps only `A_ii = G_ii / f`.
3. Normalisation: `A <- A - min(A)` when `min(A) < 0`, then `A <- A / sum(A)`.
4. EG on the column sums (the total benefit of training on each domain):
   without EMA `p <- p * exp(eta * colsum(A))` (accumulated over rounds); with EMA gamma,
   `Abar <- (1 - gamma) A + gamma Abar` and `p <- uniform * exp(eta * colsum(Abar))` (restarted from uniform,
   as in the reference code).
5. The rest of the round, `K - R m S` steps, trains on p. Probe steps are real optimizer steps and count
   against the budget; the model is never rolled back.

Restricted Aioli trains `prior_steps` steps on a prior mixture first. Two controls explain a result:
Aioli-static is one round (`round_steps` = the whole run: one LearnParams, then p to the end), and
`exploit='uniform'` runs the same probes but pins every exploit segment to uniform (A and p are still
estimated and recorded), so its gap to uniform is the cost of probing alone. Where the reference code and the
paper differ: the code restarts the EG state from uniform after the prior (`eg_start='uniform'`, default),
the paper starts from the prior (`eg_start='prior'`). A final stretch too short for a round's probes
(at most `R m S` steps left) trains on p without probing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bimix_jax.mixture.proportions import renormalize as normalize
from bimix_jax.online.schedule import Segment, State


@dataclasses.dataclass(frozen=True)
class AioliConfig:
    round_steps: int = 100  # K: steps per round (probes included)
    sweeps: int = 2  # R: LearnParams sweeps over the domains per round
    probe_steps: int = 4  # S: steps per probe
    one_hot_factor: float = 0.75  # f: weight of the probed domain in its probe mixture
    eta: float = 1.0  # EG step size
    ema: float | None = None  # gamma; None = no EMA (accumulated EG, the README's advice to start with)
    diagonal: bool = False  # keep only A_ii = G_ii / f
    prior: tuple[float, ...] | None = None  # restricted Aioli: the prior mixture
    prior_steps: int = 0  # steps trained on the prior first
    eg_start: str = "uniform"  # after the prior: 'uniform' (reference code) or 'prior' (paper)
    exploit: str = "learned"  # exploit segments train on 'learned' p, or on 'uniform' (the probe-cost control)

    def check(self, num_domains: int) -> None:
        m = num_domains
        if m < 2:
            raise ValueError("Aioli needs at least 2 domains")
        if min(self.round_steps, self.sweeps, self.probe_steps) < 1:
            raise ValueError("aioli.round_steps, sweeps and probe_steps must be >= 1")
        if self.sweeps * m * self.probe_steps >= self.round_steps:
            raise ValueError(f"aioli: sweeps x domains x probe_steps = {self.sweeps * m * self.probe_steps} probe "
                             f"steps do not leave a step of the round (round_steps={self.round_steps}) for p")
        if not (1.0 / m < self.one_hot_factor <= 1.0):
            raise ValueError(f"aioli.one_hot_factor={self.one_hot_factor} must lie in (1/m, 1] (m={m} domains)")
        if not self.eta > 0:
            raise ValueError("aioli.eta must be > 0")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError("aioli.ema must lie in [0, 1) or be None")
        if self.eg_start not in ("uniform", "prior"):
            raise ValueError("aioli.eg_start must be 'uniform' or 'prior'")
        if self.exploit not in ("learned", "uniform"):
            raise ValueError("aioli.exploit must be 'learned' or 'uniform'")
        if self.prior_steps and self.prior is None:
            raise ValueError("aioli.prior_steps > 0 needs aioli.prior")


def probe_mixtures(m: int, f: float) -> np.ndarray:
    """[m, m] W: row k is the smoothed one-hot mixture of probe k."""
    W = np.full((m, m), (1.0 - f) / (m - 1))
    np.fill_diagonal(W, f)
    return W


def learn_params(G_DxD: np.ndarray, f: float, *, diagonal: bool = False) -> np.ndarray:
    """A from the averaged chained loss drops G (G[i, j]: drop of domain i's loss over probe j), normalised."""
    m = G_DxD.shape[0]
    if diagonal:
        A = np.diag(np.diag(G_DxD) / f)
    elif f < 1:
        A = np.linalg.solve(probe_mixtures(m, f), G_DxD.T).T  # row i solves W a = G[i]
    else:
        A = G_DxD.copy()
    return normalize_A(A)


def normalize_A(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, np.float64)
    if A.min() < 0:
        A = A - A.min()
    total = A.sum()
    return A / total if total > 0 else np.full_like(A, 1.0 / A.size)


def eg_update(p_D: np.ndarray, colsum_D: np.ndarray, eta: float) -> np.ndarray:
    """Exponentiated gradient: `p * exp(eta * colsum)`, renormalised (stable in log space)."""
    logits = np.log(np.maximum(p_D, 1e-300)) + eta * colsum_D
    return normalize(np.exp(logits - logits.max()))


@dataclasses.dataclass(frozen=True)
class Aioli:
    config: AioliConfig = AioliConfig()
    name: str = "aioli"

    def init(self, num_domains: int, total_steps: int, seed: int) -> State:
        self.config.check(num_domains)
        m, c = num_domains, self.config
        uniform = [1.0 / m] * m
        return {"m": m, "total_steps": int(total_steps), "seed": int(seed), "started": False,
                "phase": "prior" if c.prior_steps else "round", "round": 0, "p": uniform, "A_ema": None,
                "probe_order": [], "probe_index": 0, "G": [[0.0] * m for _ in range(m)], "L_prev": None,
                "round_start": 0, "next_start": 0, "history": []}

    # -- planning -------------------------------------------------------------------------------------
    def next_segment(self, state: State, step: int) -> Segment | None:
        c, T, m = self.config, state["total_steps"], state["m"]
        if step >= T:
            return None
        left = T - step
        if state["phase"] == "prior":
            n = min(c.prior_steps, left)
            return Segment(tuple(c.prior), n, "prior", n < left, "prior")
        if state["phase"] == "probe":
            j = state["probe_order"][state["probe_index"]]
            q = probe_mixtures(m, c.one_hot_factor)[j]
            return Segment(tuple(q.tolist()), c.probe_steps, "probe", True,
                           f"round {state['round']} probe {state['probe_index'] + 1} (domain {j})")
        # Exploit: the rest of the round (or of the run) on p (on uniform for the probe-cost control).
        n = min(state["round_start"] + c.round_steps - step, left)
        return Segment(self._exploit_mixture(state), n, "train", n < left, f"round {state['round']}")

    def _exploit_mixture(self, state: State) -> tuple[float, ...]:
        return tuple(state["p"]) if self.config.exploit == "learned" else (1.0 / state["m"],) * state["m"]

    # -- feedback -------------------------------------------------------------------------------------
    def observe(self, state: State, losses_D: np.ndarray) -> State:
        s = dict(state)
        L = [float(x) for x in np.asarray(losses_D, np.float64)]
        if not s["started"]:
            s["started"] = True
            s["L_prev"] = L
            if s["phase"] == "round":
                s = self._start_round(s, 0)
            return s
        if s["phase"] == "prior":
            s["L_prev"] = L
            if self.config.eg_start == "prior":
                s["p"] = list(normalize(np.asarray(self.config.prior)))
            return self._start_round(s, self.config.prior_steps)
        if s["phase"] == "probe":
            j = s["probe_order"][s["probe_index"]]
            G = np.asarray(s["G"])
            G[:, j] += np.asarray(s["L_prev"]) - np.asarray(L)
            s["G"], s["L_prev"], s["probe_index"] = G.tolist(), L, s["probe_index"] + 1
            if s["probe_index"] == len(s["probe_order"]):
                s = self._update(s)
            return s
        s["L_prev"] = L  # The end of a round's exploit segment: the next round starts.
        return self._start_round(s, s["round_start"] + self.config.round_steps)

    def skip(self, state: State) -> State:
        return dict(state, phase="done")

    def _start_round(self, s: State, start: int) -> State:
        c, m = self.config, s["m"]
        s = dict(s, round=s["round"] + 1, round_start=start, probe_index=0, G=[[0.0] * m for _ in range(m)])
        if s["total_steps"] - start > c.sweeps * m * c.probe_steps:
            rng = np.random.default_rng([s["seed"], s["round"]])
            s["probe_order"] = [int(j) for _ in range(c.sweeps) for j in rng.permutation(m)]
            s["phase"] = "probe"
        else:  # Too little budget left for the probes: train on p to the end.
            s["probe_order"], s["phase"] = [], "exploit"
        return s

    def _update(self, s: State) -> State:
        c, m = self.config, s["m"]
        A = learn_params(np.asarray(s["G"]) / c.sweeps, c.one_hot_factor, diagonal=c.diagonal)
        if c.ema is not None:
            Abar = A if s["A_ema"] is None else (1 - c.ema) * A + c.ema * np.asarray(s["A_ema"])
            p = eg_update(np.full(m, 1.0 / m), Abar.sum(axis=0), c.eta)
            s["A_ema"] = Abar.tolist()
        else:
            p = eg_update(np.asarray(s["p"]), A.sum(axis=0), c.eta)
        probe_end = s["round_start"] + c.sweeps * m * c.probe_steps
        s["history"] = s["history"] + [{"round": s["round"], "step": probe_end, "A": A.tolist(),
                                        "colsum": A.sum(axis=0).tolist(), "p": p.tolist()}]
        s["p"], s["phase"] = p.tolist(), "exploit"
        return s

    def summary(self, state: State) -> dict:
        return {"method": self.name, "final_proportions": list(self._exploit_mixture(state)), "learned_p": state["p"],
                "rounds": state["history"], "config": dataclasses.asdict(self.config)}
