"""The segment / feedback interface between a mixing method and the trainer.

A run's mixture is a schedule of segments. The trainer loop is

    state = method.init(num_domains, total_steps, seed)
    state = method.observe(state, losses_D)               # feedback losses before the first step
    while (segment := method.next_segment(state, step)) is not None:
        train segment.steps steps on segment.proportions
        if segment.feedback: state = method.observe(state, losses after the segment)
        else:               state = method.skip(state)

`state` is a JSON-able dict (lists, floats, ints, strings), checkpointed with the model, so a method is a
pure function of its state: the same state and losses give the same plan on every process and after a
resume. The planned segments of a run add up to exactly `total_steps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from bimix_jax.mixture import proportions

KINDS = ("train", "probe", "prior")
State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Segment:
    """`steps` optimizer steps on `proportions` ([D], on the simplex)."""

    proportions: tuple[float, ...]
    steps: int
    kind: str = "train"  # train | probe (LearnParams) | prior (restricted Aioli's warm start)
    feedback: bool = False  # evaluate the feedback set after the segment and call `observe`
    label: str = ""  # e.g. 'round 2 probe 3 (code)'

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"segment kind {self.kind!r} is not one of {KINDS}")
        if self.steps < 1:
            raise ValueError(f"segment of {self.steps} steps")
        check_simplex(np.asarray(self.proportions), "segment proportions")

    def to_json(self) -> dict:
        return {"proportions": [float(x) for x in self.proportions], "steps": int(self.steps), "kind": self.kind,
                "feedback": bool(self.feedback), "label": self.label}

    @classmethod
    def from_json(cls, d: Mapping) -> Segment:
        return cls(tuple(float(x) for x in d["proportions"]), int(d["steps"]), str(d["kind"]), bool(d["feedback"]),
                   str(d.get("label", "")))


class MixingMethod(Protocol):
    """What the trainer needs of a mixing method."""

    name: str

    def init(self, num_domains: int, total_steps: int, seed: int) -> State: ...

    def observe(self, state: State, losses_D: np.ndarray) -> State: ...

    def skip(self, state: State) -> State: ...

    def next_segment(self, state: State, step: int) -> Segment | None: ...

    def summary(self, state: State) -> dict: ...


def check_simplex(p_D: np.ndarray, what: str) -> np.ndarray:
    """`p_D` as float64 when it is a proportions vector (`bimix_jax.mixture.proportions`); ValueError otherwise
    (a method emitting anything else is a bug, not bad input)."""
    if not proportions.on_simplex(p_D):
        raise ValueError(f"{what} {np.asarray(p_D).tolist()} are not on the simplex")
    return np.asarray(p_D, np.float64)



def realized_steps(segments: Sequence[Mapping]) -> dict[str, int]:
    """Steps per segment kind of a trajectory: records with `kind` and `steps`, or `start` and `end`."""
    out = {k: 0 for k in KINDS}
    for s in segments:
        if s["kind"] in out:
            out[s["kind"]] += int(s["steps"]) if "steps" in s else int(s["end"]) - int(s["start"])
    return out
