"""Executing a mixing method's schedule inside a run: the feedback set, the trajectory file and the
method's checkpointed state.

* Feedback set: `split_feedback` takes the first `feedback_tokens` tokens of every domain's selection split
  when the corpus has one; otherwise it carves the last `feedback_tokens` training tokens of every domain off
  its training buffer (the sampler never draws them). Methods never see the validation split that the loss
  table reports, so an online method cannot tune itself on the numbers it is judged by. A method that
  defines `feedback(params)` measures its own feedback (DoReMi's per-token excess over a reference model).
* `trajectory.jsonl`: one record per segment (step range, kind, label, requested proportions, realised rows
  per domain, the feedback losses after it), plus an `initial` record with the losses before step 1.
* `method.json`: the method's summary at the end of the run (final proportions, Aioli's A per round,
  DoReMi's updates and averaged weights).
* The method's state, the current segment, its first step and the row ledger at that step travel in every
  checkpoint's metadata, so a run killed mid-segment (mid-probe) resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from bimix_jax import atomic
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.online.schedule import MixingMethod, Segment

TRAJECTORY_FILE = "trajectory.jsonl"
METHOD_FILE = "method.json"


def split_feedback(tokens: DomainTokens, feedback_tokens: int, seq_len: int) -> tuple[DomainTokens, DomainTokens]:
    """(training tokens without the feedback slice, feedback tokens as the `val` split of a second corpus).
    With a selection split the training tokens stay whole and the feedback set is the selection split."""
    if feedback_tokens < 0:
        raise InputError(f"online.feedback_tokens={feedback_tokens} must be >= 0")
    if feedback_tokens == 0:
        return tokens, tokens
    if tokens.has_select:
        for d in tokens.domains:
            if tokens.select[d].size < feedback_tokens + 1:
                raise InputError(f"domain {d!r} has {tokens.select[d].size} selection tokens, fewer than "
                                 f"online.feedback_tokens + 1 = {feedback_tokens + 1}; lower online.feedback_tokens or "
                                 "raise data.select_fraction / data.min_select_docs")
        return tokens, dataclasses.replace(tokens, val=tokens.select)
    train, feedback = {}, {}
    for d in tokens.domains:
        buf = tokens.train[d]
        keep = buf.size - feedback_tokens - 1
        if keep < 4 * (seq_len + 1):
            raise InputError(
                f"online.feedback_tokens={feedback_tokens} leaves domain {d!r} {max(keep, 0)} training tokens "
                f"(it has {buf.size}); lower online.feedback_tokens"
            )
        train[d], feedback[d] = buf[:keep], buf[keep:]
    return (dataclasses.replace(tokens, train=train),
            dataclasses.replace(tokens, train=train, val=feedback))


class ScheduleRunner:
    """Host-side state of a run's schedule: plans segments, measures feedback, writes the trajectory.

    Every run has one: a static run follows a one-segment `Static` method with `record=False` (no trajectory,
    no method file, nothing added to its checkpoints, so its workdir keeps the static format); an online run
    records everything. `stages` is the schedule trained so far, `[(start_step, proportions), ...]`, the input
    a token store needs to place every batch.
    """

    def __init__(self, method: MixingMethod, *, total_steps: int, seed: int, workdir: str, writer: bool,
                 feedback_fn: Callable[[Any], np.ndarray] | None, record: bool = True):
        self.method, self.total_steps, self.seed = method, total_steps, seed
        self.writer, self.feedback_fn, self.record = writer, feedback_fn, record
        self.trajectory_path = os.path.join(workdir, TRAJECTORY_FILE)
        self.method_path = os.path.join(workdir, METHOD_FILE)
        self.mstate: dict | None = None
        self.segment: Segment | None = None
        self.segment_start = 0
        self.rows_start: list[int] | None = None
        self.stages: list[tuple[int, list[float]]] = []

    # -- start and resume -----------------------------------------------------------------------------
    def start_fresh(self, state: Any, num_domains: int) -> None:
        self.mstate = self.method.init(num_domains, self.total_steps, self.seed)
        if not self.record:
            return
        if self.writer:
            atomic.truncate_jsonl(self.trajectory_path, lambda r: False)
        losses = self._feedback(state.params)
        self.mstate = self.method.observe(self.mstate, losses)
        self._record({"start": 0, "end": 0, "kind": "initial", "feedback_losses": losses.tolist()})

    def resume(self, meta: dict, step: int, num_domains: int) -> None:
        sched = meta.get("schedule")
        if not self.record:  # A static run: stateless, one stage from step 0.
            self.mstate = self.method.init(num_domains, self.total_steps, self.seed)
            first = self.method.next_segment(self.mstate, 0)
            self.stages = [(0, list(first.proportions))]
            return
        if not isinstance(sched, dict):
            raise InputError(f"the checkpoint at step {step} holds no mixing-method state; it was written by a "
                             "static run: use another workdir for an online run")
        self.mstate = sched["method_state"]
        self.segment = Segment.from_json(sched["segment"]) if sched["segment"] else None
        self.segment_start, self.rows_start = int(sched["segment_start"]), sched["rows_start"]
        self.stages = [(int(a), list(r)) for a, r in sched.get("stages", [])]
        redo = self.segment is not None and self.segment_start + self.segment.steps == step
        if self.writer:
            atomic.truncate_jsonl(self.trajectory_path,
                                  lambda r: r["end"] < step or (r["end"] == step and not redo))

    def meta(self) -> dict:
        """What a checkpoint saves of the schedule (JSON); nothing for a static run."""
        if not self.record:
            return {}
        return {"schedule": {"method_state": self.mstate,
                             "segment": self.segment.to_json() if self.segment else None,
                             "segment_start": self.segment_start, "rows_start": self.rows_start,
                             "stages": [[a, list(r)] for a, r in self.stages]}}

    # -- segments -------------------------------------------------------------------------------------
    def current(self, step: int, state: Any) -> Segment:
        """The segment that trains step `step + 1`: ends the previous one at `step` when due, plans the next."""
        if self.segment is not None and step == self.segment_start + self.segment.steps:
            self._end(step, state)
        if self.segment is None:
            self.segment = self.method.next_segment(self.mstate, step)
            if self.segment is None:
                raise RuntimeError(f"{self.method.name} planned no segment at step {step} of {self.total_steps}")
            self.segment_start, self.rows_start = step, _rows(state)
            p = [float(x) for x in self.segment.proportions]
            if not self.stages or self.stages[-1][1] != p:
                self.stages.append((step, p))
        return self.segment

    def finish(self, state: Any) -> dict:
        """Ends the last segment (if not yet ended) and writes `method.json`; returns the summary."""
        if self.segment is not None:
            self._end(self.segment_start + self.segment.steps, state)
        summary = self.method.summary(self.mstate)
        if self.writer and self.record:
            atomic.write_json(self.method_path, summary)
        return summary

    def _end(self, step: int, state: Any) -> None:
        seg = self.segment
        self.segment = None
        if not self.record:
            return
        rows = (np.asarray(_rows(state)) - np.asarray(self.rows_start)).tolist()
        losses = self._feedback(state.params) if seg.feedback else None
        self.mstate = self.method.observe(self.mstate, losses) if seg.feedback else self.method.skip(self.mstate)
        self._record({"start": self.segment_start, "end": step, "kind": seg.kind, "label": seg.label,
                      "requested": list(seg.proportions), "realized_rows": rows,
                      "feedback_losses": None if losses is None else losses.tolist()})

    def _feedback(self, params: Any) -> np.ndarray:
        """The method's own measurement when it defines `feedback(params)`, else the feedback set's losses."""
        own = getattr(self.method, "feedback", None)
        return np.asarray(own(params), np.float64) if own is not None else self.feedback_fn(params)

    def _record(self, record: dict) -> None:
        if self.writer:
            atomic.append_jsonl(self.trajectory_path, [record])


def _rows(state: Any) -> list[int]:
    return [int(x) for x in np.asarray(jax.device_get(state.rows_D))]


def read_trajectory(workdir: str) -> list[dict]:
    path = os.path.join(workdir, TRAJECTORY_FILE)
    return atomic.read_jsonl(path) if os.path.exists(path) else []
