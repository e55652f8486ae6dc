"""DoReMi (Xie et al., arXiv 2305.10429) as a mixing method in the segment loop (LMO reading: a dynamic
law with diagonal A = per-domain excess loss, solved by exponentiated gradient).

Two stages: a reference model is trained first (natural token shares); the proxy run then trains in
segments of `update_every` steps, and after each segment the per-domain excess of the proxy over the
reference is measured on the feedback set, **clipped per token, then averaged** as in the official trainer
(`doremi/trainer.py`):

    excess_D = mean over domain-D tokens of max(loss_proxy(tok) - loss_ref(tok), 0)      (`token_excess`)

The measurement needs both models' per-token losses, so the caller measures it (the comparison's
`bimix_jax/pipeline/compare_doremi.py`) and hands `excess_D` to `observe`. The update replays the official
per-step rule once for every step the segment trained (`eta` and `smoothing` are per step, so the update
interval changes only how often the excess is measured, not the step size):

    alpha <- softmax(log alpha + eta * excess)        one exponentiated-gradient step
    alpha <- (1 - c) alpha + c / m                    smoothing toward uniform

The output is the time average of the weights trained on (each weighted by the steps it was trained),
which a fresh run then trains on (`Static`). Where this port differs from the official trainer: the excess
is measured every `update_every` steps on the held-out feedback set (the same tokens for proxy and
reference) rather than every step on the training batch, and alpha is realised by sampling the proxy's
batches with alpha rather than by reweighting a uniform batch's loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bimix_jax.mixture.proportions import renormalize as normalize
from bimix_jax.online.schedule import Segment, State


@dataclasses.dataclass(frozen=True)
class DoReMiConfig:
    eta: float = 1.0  # EG step per training step (official reweight_eta 1)
    smoothing: float = 1e-3  # c per step, weight of uniform (paper 1e-3; official reweight_eps 1e-4)
    update_every: int = 10  # steps between measurements of the excess

    def check(self) -> None:
        if not self.eta > 0 or not 0 <= self.smoothing <= 1 or self.update_every < 1:
            raise ValueError("doremi: eta > 0, smoothing in [0, 1] and update_every >= 1 are required")


def token_excess(loss_N: np.ndarray, ref_N: np.ndarray, weight_N: np.ndarray, domain_N: np.ndarray,
                 num_domains: int) -> np.ndarray:
    """[D] per domain: the mean over its tokens (weight 1) of max(loss - ref, 0): clip per token, then average."""
    clipped_N = np.maximum(np.asarray(loss_N, np.float64) - np.asarray(ref_N, np.float64), 0.0)
    w_N = np.asarray(weight_N, np.float64)
    total_D = np.bincount(domain_N, weights=clipped_N * w_N, minlength=num_domains)
    count_D = np.bincount(domain_N, weights=w_N, minlength=num_domains)
    return total_D / np.maximum(count_D, 1e-12)


def doremi_step(alpha_D: np.ndarray, excess_D: np.ndarray, eta: float, smoothing: float) -> np.ndarray:
    """One step of the official rule: EG on the excess, then smoothing toward uniform."""
    logits = np.log(np.maximum(alpha_D, 1e-300)) + eta * np.asarray(excess_D, np.float64)
    a = normalize(np.exp(logits - logits.max()))
    return (1 - smoothing) * a + smoothing / a.size


def doremi_update(alpha_D: np.ndarray, excess_D: np.ndarray, eta: float, smoothing: float,
                  steps: int) -> np.ndarray:
    """The weights after `steps` training steps that all saw `excess_D`: `doremi_step` replayed per step."""
    a = np.asarray(alpha_D, np.float64)
    for _ in range(int(steps)):
        a = doremi_step(a, excess_D, eta, smoothing)
    return a


@dataclasses.dataclass(frozen=True)
class DoReMi:
    config: DoReMiConfig = DoReMiConfig()
    name: str = "doremi"

    def init(self, num_domains: int, total_steps: int, seed: int) -> State:
        self.config.check()
        u = [1.0 / num_domains] * num_domains
        return {"total_steps": int(total_steps), "started": False, "alpha": u, "sum_alpha": [0.0] * num_domains,
                "steps": 0, "updates": []}

    def next_segment(self, state: State, step: int) -> Segment | None:
        T = state["total_steps"]
        if step >= T:
            return None
        n = min(self.config.update_every, T - step)
        return Segment(tuple(state["alpha"]), n, "train", step + n < T, f"update {len(state['updates']) + 1}")

    def _account(self, state: State) -> tuple[State, int]:
        """Adds the segment that just ended (the weights trained on, times its steps) to the running sum."""
        n = min(self.config.update_every, state["total_steps"] - state["steps"])
        s = dict(state, steps=state["steps"] + n)
        s["sum_alpha"] = (np.asarray(state["sum_alpha"]) + n * np.asarray(state["alpha"])).tolist()
        return s, n

    def observe(self, state: State, excess_D: np.ndarray) -> State:
        """`excess_D`: the per-token clipped excess of the proxy over the reference (`token_excess`)."""
        if not state["started"]:
            return dict(state, started=True)  # The measurement before the first step: nothing to update yet.
        excess = np.asarray(excess_D, np.float64)
        if not np.all(np.isfinite(excess)) or excess.min() < 0:
            raise ValueError(f"doremi: the excess {excess.tolist()} must be finite and >= 0 (clipped per token)")
        s, n = self._account(state)
        alpha = doremi_update(np.asarray(s["alpha"]), excess, self.config.eta, self.config.smoothing, n)
        s["alpha"] = alpha.tolist()
        s["updates"] = s["updates"] + [{"step": s["steps"], "steps": n, "excess": excess.tolist(),
                                        "alpha": alpha.tolist()}]
        return s

    def skip(self, state: State) -> State:
        return self._account(state)[0]

    def summary(self, state: State) -> dict:
        return {"method": self.name, "final_proportions": self.averaged(state), "last_alpha": state["alpha"],
                "updates": state["updates"], "config": dataclasses.asdict(self.config)}

    @staticmethod
    def averaged(state: State) -> list[float]:
        """The time-averaged weights (each weighted by the steps trained on it): the method's output."""
        total = np.asarray(state["sum_alpha"])
        return normalize(total).tolist() if total.sum() > 0 else state["alpha"]
