"""A fixed mixture for the whole run (uniform, natural token shares, or any vector)."""

from __future__ import annotations

import dataclasses

import numpy as np

from bimix_jax.mixture import proportions
from bimix_jax.online.schedule import Segment, State, check_simplex


@dataclasses.dataclass(frozen=True)
class Static:
    """One segment of `total_steps` steps on `proportions`; no feedback."""

    proportions: tuple[float, ...]
    name: str = "static"

    def init(self, num_domains: int, total_steps: int, seed: int) -> State:
        if len(self.proportions) != num_domains:
            raise ValueError(f"{self.name}: {len(self.proportions)} proportions for {num_domains} domains")
        check_simplex(np.asarray(self.proportions), f"{self.name} proportions")
        return {"total_steps": int(total_steps), "planned": 0}

    def observe(self, state: State, losses_D: np.ndarray) -> State:
        return state

    def skip(self, state: State) -> State:
        return state

    def next_segment(self, state: State, step: int) -> Segment | None:
        if step >= state["total_steps"]:
            return None
        return Segment(tuple(float(x) for x in self.proportions), state["total_steps"] - step, "train", False,
                       self.name)

    def summary(self, state: State) -> dict:
        return {"method": self.name, "final_proportions": [float(x) for x in self.proportions]}


def uniform(num_domains: int) -> Static:
    return Static(tuple(proportions.uniform(num_domains).tolist()), proportions.UNIFORM)
