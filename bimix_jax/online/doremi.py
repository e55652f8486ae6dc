"""DoReMi (Xie et al., arXiv 2305.10429) as a mixing method in the segment loop (LMO reading: a dynamic
law with diagonal A = per-domain excess loss, solved by exponentiated gradient).

Two stages: a reference run (natural token shares by default) is trained first; its final per-domain
feedback losses `ref_D` are the reference. The proxy run then trains in segments of `update_every` steps;
after each segment, with the proxy's feedback losses `L_D`,

    excess_D = max(L_D - ref_D, 0)
    alpha    = softmax(log alpha + eta * excess)
    alpha    = (1 - c) alpha + c / m                                 (smoothing toward uniform)

and the output is the time average of the weights trained on (weighted by segment steps), which a fresh
run then trains on (`Static`). Choices where this port differs from the paper's step: the excess is
measured every `update_every` steps on the held-out feedback slice (domain means, clipped after
averaging) instead of every step on the training batch (per token, clipped before averaging), and alpha is
realised by sampling the proxy's batches with alpha instead of reweighting a uniform batch's loss.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bimix_jax.online.schedule import Segment, State, normalize


@dataclasses.dataclass(frozen=True)
class DoReMiConfig:
    eta: float = 1.0  # EG step (paper: 1)
    smoothing: float = 1e-3  # c, weight of uniform (paper 1e-3; reference code 1e-4)
    update_every: int = 10  # steps between weight updates

    def check(self) -> None:
        if not self.eta > 0 or not 0 <= self.smoothing <= 1 or self.update_every < 1:
            raise ValueError("doremi: eta > 0, smoothing in [0, 1] and update_every >= 1 are required")


def doremi_update(alpha_D: np.ndarray, excess_D: np.ndarray, eta: float, smoothing: float) -> np.ndarray:
    logits = np.log(np.maximum(alpha_D, 1e-300)) + eta * np.maximum(excess_D, 0.0)
    a = normalize(np.exp(logits - logits.max()))
    return (1 - smoothing) * a + smoothing / a.size


@dataclasses.dataclass(frozen=True)
class DoReMi:
    reference_losses: tuple[float, ...]
    config: DoReMiConfig = DoReMiConfig()
    name: str = "doremi"

    def init(self, num_domains: int, total_steps: int, seed: int) -> State:
        self.config.check()
        if len(self.reference_losses) != num_domains:
            raise ValueError(f"doremi: {len(self.reference_losses)} reference losses for {num_domains} domains")
        u = [1.0 / num_domains] * num_domains
        return {"total_steps": int(total_steps), "started": False, "alpha": u, "sum_alpha": [0.0] * num_domains,
                "steps": 0, "updates": []}

    def next_segment(self, state: State, step: int) -> Segment | None:
        T = state["total_steps"]
        if step >= T:
            return None
        n = min(self.config.update_every, T - step)
        return Segment(tuple(state["alpha"]), n, "train", step + n < T, f"update {len(state['updates']) + 1}")

    def _account(self, state: State, step_end: int) -> State:
        n = step_end - state["steps"]
        s = dict(state, steps=step_end)
        s["sum_alpha"] = (np.asarray(state["sum_alpha"]) + n * np.asarray(state["alpha"])).tolist()
        return s

    def observe(self, state: State, losses_D: np.ndarray) -> State:
        if not state["started"]:
            return dict(state, started=True)  # The losses before the first step: nothing to update yet.
        s = self._account(state, min(state["steps"] + self.config.update_every, state["total_steps"]))
        excess = np.maximum(np.asarray(losses_D, np.float64) - np.asarray(self.reference_losses), 0.0)
        alpha = doremi_update(np.asarray(s["alpha"]), excess, self.config.eta, self.config.smoothing)
        s["alpha"] = alpha.tolist()
        s["updates"] = s["updates"] + [{"step": s["steps"], "excess": excess.tolist(), "alpha": alpha.tolist()}]
        return s

    def skip(self, state: State) -> State:
        return self._account(state, state["total_steps"])

    def summary(self, state: State) -> dict:
        return {"method": self.name, "final_proportions": self.averaged(state), "last_alpha": state["alpha"],
                "updates": state["updates"], "config": dataclasses.asdict(self.config),
                "reference_losses": list(self.reference_losses)}

    @staticmethod
    def averaged(state: State) -> list[float]:
        """The time-averaged weights: the method's output."""
        total = np.asarray(state["sum_alpha"])
        return normalize(total).tolist() if total.sum() > 0 else state["alpha"]
