"""The host side of one run's training loop: metrics records, loss-table rows and checkpoints.

`train_run` (one model) and `train_runs` (K models in one vmapped step) drive the device; both hand
each run's numbers to a `RunLog`, so every run's workdir is written the same way whichever loop
trained it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from bimix_jax import atomic, loss_table
from bimix_jax.train.checkpoint import Checkpointer
from bimix_jax.errors import InputError
from bimix_jax.train.state import RunSpec

LOSSES_FILE = "losses.csv"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


def shares(rows_D: np.ndarray, domains: Sequence[str]) -> dict[str, float]:
    """Realized share of training rows per domain."""
    total = max(int(np.sum(rows_D)), 1)
    return {d: int(n) / total for d, n in zip(domains, rows_D)}


class RunLog:
    """Writes one run's `losses.csv`, `metrics.jsonl` and `checkpoints/` as its steps complete.

    `settle(count, metrics)` takes the host copy of step `count`'s metrics, `eval(count, losses_D)` the
    validation losses after step `count`, `save(count, state)` starts a checkpoint. Only the writer
    process (process 0) writes files; every process checks the loss.
    """

    def __init__(self, spec: RunSpec, domains: Sequence[str], workdir: str, *, run_name: str, model_size: str,
                 proportions_D: np.ndarray, fingerprint: str, writer: bool):
        t = spec.train
        self.spec, self.domains, self.workdir, self.run_name = spec, tuple(domains), workdir, run_name
        self.model_size, self.proportions_D, self.fingerprint, self.writer = model_size, proportions_D, fingerprint, writer
        self.losses_path = os.path.join(workdir, LOSSES_FILE)
        self.metrics_path = os.path.join(workdir, METRICS_FILE)
        self.tokens_per_step = t.batch_size * t.seq_len
        self.ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), keep=t.keep_checkpoints)
        self._window_losses: list[float] = []
        self._clock_time: float | None = None
        self._clock_step = 0
        self._wait_s = 0.0
        # (step, rows_D) -> per-domain usage (windows drawn, epochs, repetitions), set by the loop.
        self.usage_fn: Any = None

    def latest_step(self) -> int | None:
        return self.ckpt.latest_step()

    def forget_after(self, step: int) -> None:
        """Drops loss-table rows and metrics records a killed process wrote after its last checkpoint."""
        self._clock_step = step
        if self.writer:
            loss_table.drop_rows_after(self.losses_path, self.run_name, step)
            self._check_rows_up_to(step)
            atomic.truncate_jsonl(self.metrics_path, lambda r: r.get("step", 0) <= step)

    def _check_rows_up_to(self, step: int) -> None:
        """Refuses to resume (or to call a run finished) when the loss table lacks evaluations before `step`."""
        t = self.spec.train
        want = {s for s in range(t.eval_every, step + 1, t.eval_every)} | ({t.steps} if step >= t.steps else set())
        if not want:
            return
        have = set()
        if os.path.exists(self.losses_path):
            table = loss_table.read_csv(self.losses_path)
            have = {int(s) for s in table.step[table.run == self.run_name]}
        missing = sorted(want - have)
        if missing:
            raise InputError(
                f"run {self.run_name}: {self.losses_path} lacks the evaluations of steps {missing[:3]}"
                f"{'...' if len(missing) > 3 else ''} that precede its checkpoint at step {step} (the loss table was "
                f"deleted or edited); restore the file, or delete {os.path.join(self.workdir, CHECKPOINT_DIR)} "
                "to train the run again")

    def add_data_wait(self, seconds: float) -> None:
        """Seconds the host waited for input batches (reported per step in `metrics.jsonl`)."""
        self._wait_s += seconds

    def settle(self, count: int, m: Mapping[str, Any]) -> None:
        """Host side of step `count` (`m`: loss, lr, grad_norm, rows_D as host values)."""
        t = self.spec.train
        self.ckpt.poll()  # seal a finished checkpoint at once, so a kill rarely finds it unsealed
        loss = float(m["loss"])
        if not math.isfinite(loss):
            raise InputError(
                f"run {self.run_name}: train loss is {loss} at step {count}; lower optim.lr or set optim.grad_clip "
                "and start again in a fresh workdir"
            )
        self._window_losses.append(loss)
        now = time.perf_counter()
        if self._clock_time is None:  # The first step includes compilation: time from its end.
            self._clock_time, self._clock_step = now, count
        if count % t.log_every and count != t.steps:
            return
        steps_done = count - self._clock_step
        rate = steps_done * self.tokens_per_step / (now - self._clock_time) if steps_done else float("nan")
        eta = (t.steps - count) * self.tokens_per_step / rate if steps_done else float("nan")
        record = {"step": count, "tokens": count * self.tokens_per_step,
                  "train_loss": float(np.mean(self._window_losses)), "lr": float(m["lr"]),
                  "grad_norm": float(m["grad_norm"]), "tokens_per_s": rate,
                  "data_wait_ms_per_step": self._wait_s / max(steps_done, 1) * 1e3,
                  **{f"share_{d}": s for d, s in shares(np.asarray(m["rows_D"]), self.domains).items()}}
        if self.usage_fn is not None:
            usage = self.usage_fn(count, np.asarray(m["rows_D"]))
            record.update({f"windows_{d}": u["windows_drawn"] for d, u in usage.items()})
            record.update({f"epochs_{d}": u["epochs"] for d, u in usage.items()})
            record.update({f"repetitions_{d}": u["repetitions"] for d, u in usage.items()})
        self._wait_s = 0.0
        if self.writer:
            atomic.append_jsonl(self.metrics_path, [record])
        logging.info("%s step %d/%d loss %.4f lr %.3g %.0f tokens/s ETA %.0fs", self.run_name, count, t.steps,
                     record["train_loss"], record["lr"], rate, eta)
        self._window_losses.clear()
        self._clock_time, self._clock_step = now, count

    def pause(self, seconds: float) -> None:
        """Excludes `seconds` (evaluation) from the tokens/s measurement."""
        if self._clock_time is not None:
            self._clock_time += seconds

    def eval(self, count: int, losses_D: np.ndarray, shares_D: np.ndarray | None = None) -> None:
        """Appends the loss-table rows of step `count`.

        `shares_D` (online runs): the cumulative realised shares up to `count`, written as the rows'
        proportions with `mixture=cumulative`; static runs write their fixed proportions.
        """
        p_D = self.proportions_D if shares_D is None else shares_D
        kind = {} if shares_D is None else {"mixture": "cumulative"}
        if self.writer:
            loss_table.append_rows(self.losses_path, [
                {"run": self.run_name, "model_size": self.model_size, "step": count,
                 "tokens": count * self.tokens_per_step,
                 **{f"p_{d}": float(p) for d, p in zip(self.domains, p_D)}, **kind,
                 "eval_domain": d, "loss": float(x)}
                for d, x in zip(self.domains, losses_D)
            ])
        logging.info("%s step %d eval: %s", self.run_name, count,
                     ", ".join(f"{d} {x:.4f}" for d, x in zip(self.domains, losses_D)))

    def save(self, count: int, state: Any, extra_meta: Mapping[str, Any] | None = None) -> None:
        self.ckpt.save(count, state, {"step": count, "tokens": count * self.tokens_per_step,
                                      "data_fingerprint": self.fingerprint, **(extra_meta or {})})

    def is_eval_step(self, count: int) -> bool:
        return count % self.spec.train.eval_every == 0 or count == self.spec.train.steps

    def is_checkpoint_step(self, count: int) -> bool:
        return count % self.spec.train.checkpoint_every == 0 or count == self.spec.train.steps

    def final_losses(self) -> dict[str, float]:
        """Eval domain -> validation loss at the last step, from the loss table ({} when absent)."""
        if not os.path.exists(self.losses_path):
            return {}
        table = loss_table.read_csv(self.losses_path)
        mask = (table.run == self.run_name) & (table.step == self.spec.train.steps)
        return {str(e): float(x) for e, x in zip(table.eval_domain[mask], table.loss[mask])}

    def close(self) -> None:
        """Waits for pending checkpoint saves and releases the checkpoint manager."""
        try:
            self.ckpt.wait()
        finally:
            self.ckpt.close()
