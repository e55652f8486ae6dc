"""The one input interface of the training loop: where each step's batch, the validation set and the
feedback set come from. `data.source` chooses; the loop does not know which.

* `MemoryInput` (a `DomainTokens` corpus that fits on the device): the token buffers are placed on every device
  once and the jitted step samples its batch from them (`bimix_jax.data.sampler`): a pure function of
  (seed, step, proportions). The feedback set is the corpus's selection split when it has one (the training
  buffers stay whole), else it is carved off the end of each domain's training buffer (`split_feedback`).
* `StoreInput` (a token store, any size; `bimix_jax.data.source.StoreData`): batches come from
  `bimix_jax.data.input.MixtureInput`, block-deterministic, a pure function of (seed, step, process index,
  schedule). Each process reads only its slice of the global batch, read ahead by grain threads, and the slices
  are assembled into the global batch with `jax.make_array_from_process_local_data`. Validation reads the
  store's `val` split, the feedback set its `select` split.

The schedule is the list of stages `[(start_step, proportions_D), ...]` the run has trained so far (one for a
static run); with it and the step, `usage` gives per-domain windows drawn, epochs and completed repetitions.
"""

from __future__ import annotations

import abc
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bimix_jax.data import sampler
from bimix_jax.data.input import MixtureInput
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.train import hosts
from bimix_jax.train.evaluate import EvalSet, split_eval_set
from bimix_jax.train.segments import split_feedback
from bimix_jax.train.state import TrainSpec

Stages = Sequence[tuple[int, Sequence[float]]]
SPLITS = ("val", "select")  # what a run's evaluation set may be drawn from


class RunInput(abc.ABC):
    """Batches, validation set and feedback set of one run.

    `eval_split`: the split the run is scored on, `val` (the reported validation split) or `select` (a
    comparison's auxiliary runs, whose losses methods may look at); `spread_eval`: windows spread over the whole
    split instead of its first tokens (`bimix_jax.train.evaluate.split_eval_set`). The feedback set is drawn the
    same way from the feedback split.
    """

    batch_input: bool  # False: the step samples from device buffers; True: the step gets host batches
    feedback_split: str  # where the feedback set comes from
    domains: tuple[str, ...]
    vocab_size: int

    def __init__(self, *, feedback_tokens: int, eval_split: str, spread_eval: bool):
        if eval_split not in SPLITS:
            raise ValueError(f"eval_split {eval_split!r} is not one of {SPLITS}")
        self.feedback_tokens, self.eval_split, self.spread_eval = feedback_tokens, eval_split, spread_eval

    @abc.abstractmethod
    def data_fingerprint(self) -> str:
        """Identifies the training data."""

    @abc.abstractmethod
    def split_length(self, domain: str, split: str) -> int:
        """Tokens of a domain's split (`val`, `select`, or the feedback split)."""

    @abc.abstractmethod
    def read(self, domain: str, split: str, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n) of a domain's split."""

    @abc.abstractmethod
    def place(self, mesh: Mesh) -> None:
        """Puts what the step needs on the devices (before the first `batches`)."""

    @abc.abstractmethod
    def batches(self, start: int, steps: int, stages: Stages, seed: int) -> Iterator[Any]:
        """The step's data argument for steps `start .. start + steps - 1`, under the schedule `stages`."""

    @abc.abstractmethod
    def usage(self, step: int, rows_D: np.ndarray, stages: Stages, seed: int) -> dict[str, dict[str, float]]:
        """Per domain after `step` steps: windows drawn, windows per epoch, epochs, completed repetitions."""

    def fingerprint(self) -> str:
        """Identifies what the run trains and is scored on (a run's `config.json` compares it)."""
        if self.eval_split == "val" and not self.spread_eval:
            return self.data_fingerprint()
        return f"{self.data_fingerprint()}:{'report' if self.eval_split == 'val' else self.eval_split}"

    def device_arrays(self) -> list[Any]:
        """Host arrays the input places whole on every device (for the memory estimate)."""
        return []

    def data_wait_s(self) -> float:
        """Seconds the host waited for batches since the last call (0 when batches are sampled on device)."""
        return 0.0

    def _set(self, split: str, tokens: int, t: TrainSpec, field: str, name: str) -> EvalSet:
        return split_eval_set(self.domains, lambda d: self.split_length(d, split),
                              lambda d, o, n: self.read(d, split, o, n), tokens=tokens, seq_len=t.seq_len,
                              batch_size=t.eval_batch_size, spread=self.spread_eval, field=field, split=name)

    def eval_set(self, t: TrainSpec) -> EvalSet:
        """The windows the run is scored on (`eval_split`, `t.eval_tokens` per domain)."""
        name = "validation" if self.eval_split == "val" else "selection"
        return self._set(self.eval_split, t.eval_tokens, t, "train.eval_tokens", name)

    def feedback_set(self, t: TrainSpec) -> EvalSet | None:
        """The online methods' feedback windows (None without feedback tokens)."""
        if not self.feedback_tokens:
            return None
        return self._set(self.feedback_split, self.feedback_tokens, t, "online.feedback_tokens", "feedback")


class MemoryInput(RunInput):
    batch_input = False
    feedback_split = "feedback"  # the selection split, or the training tail carved off when there is none

    def __init__(self, tokens: DomainTokens, t: TrainSpec, *, feedback_tokens: int = 0, eval_split: str = "val",
                 spread_eval: bool = False):
        super().__init__(feedback_tokens=feedback_tokens, eval_split=eval_split, spread_eval=spread_eval)
        self.tokens, self.feedback = split_feedback(tokens, feedback_tokens, t.seq_len)
        self.seq_len = t.seq_len
        self.domains, self.vocab_size = self.tokens.domains, self.tokens.vocab_size
        self.buffers = sampler.train_buffers(self.tokens, t.seq_len)
        self.data = None

    def data_fingerprint(self) -> str:
        return self.tokens.fingerprint()

    def _buffer(self, domain: str, split: str) -> np.ndarray:
        return self.feedback.val[domain] if split == "feedback" else self.tokens.split(split)[domain]

    def split_length(self, domain: str, split: str) -> int:
        return int(self._buffer(domain, split).size)

    def read(self, domain: str, split: str, start: int, n: int) -> np.ndarray:
        return self._buffer(domain, split)[start:start + n]

    def device_arrays(self) -> list[Any]:
        return [self.buffers]

    def place(self, mesh: Mesh) -> None:
        self.data = hosts.place(self.buffers, NamedSharding(mesh, P()))

    def batches(self, start: int, steps: int, stages: Stages, seed: int) -> Iterator[Any]:
        return itertools.repeat(self.data, steps)

    def usage(self, step: int, rows_D: np.ndarray, stages: Stages, seed: int) -> dict[str, dict[str, float]]:
        S1 = self.seq_len + 1
        out = {}
        for d, rows in zip(self.domains, np.asarray(rows_D, np.int64).tolist()):
            n = self.tokens.train[d].size
            epochs = rows * S1 / n
            out[d] = {"windows_drawn": int(rows), "windows_per_epoch": int(n // S1), "epochs": float(epochs),
                      "repetitions": int(epochs)}
        return out


class StoreInput(RunInput):
    batch_input = True
    feedback_split = "select"

    def __init__(self, data, t: TrainSpec, *, feedback_tokens: int = 0, eval_split: str = "val",
                 spread_eval: bool = False, threads: int = 4, prefetch: int = 8):
        super().__init__(feedback_tokens=feedback_tokens, eval_split=eval_split, spread_eval=spread_eval)
        self.data, self.t = data, t
        self.domains, self.vocab_size = tuple(data.domains), data.vocab_size
        self.sources = {d: data.store.split(d, "train") for d in self.domains}
        self.threads, self.prefetch = threads, prefetch
        self.rows = None
        self._wait = 0.0
        for d in self.domains:
            if data.store.split(d, "val").num_tokens < 2:
                raise InputError(f"domain {d!r} of token store {data.spec.path} has no validation tokens; rebuild the "
                                 "store with --val_fraction > 0")
            have = data.store.split(d, "select").num_tokens
            if feedback_tokens and have < feedback_tokens + 1:
                raise InputError(f"domain {d!r} of token store {data.spec.path} has {have} selection tokens, fewer "
                                 f"than online.feedback_tokens + 1 = {feedback_tokens + 1}; lower "
                                 "online.feedback_tokens or rebuild the store with a larger --select_fraction")

    def data_fingerprint(self) -> str:
        return self.data.fingerprint()

    def split_length(self, domain: str, split: str) -> int:
        return self.data.store.split(domain, split).num_tokens

    def read(self, domain: str, split: str, start: int, n: int) -> np.ndarray:
        return self.data.store.split(domain, split).read(start, n)

    def place(self, mesh: Mesh) -> None:
        self.rows = NamedSharding(mesh, P("data"))

    def mixture(self, stages: Stages, seed: int) -> MixtureInput:
        return MixtureInput(self.sources, seq_len=self.t.seq_len, batch_size=self.t.batch_size,
                            schedule=[(int(s), list(r)) for s, r in stages], seed=seed)

    def host_batches(self, start: int, steps: int, stages: Stages, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's slices `{"x": [R, S + 1], "domain": [R]}` (R = batch / processes), read ahead."""
        it = self.mixture(stages, seed).iterate(start, steps, process_index=jax.process_index(),
                                                process_count=jax.process_count(), threads=self.threads,
                                                prefetch=self.prefetch)
        for _ in range(steps):
            t0 = time.perf_counter()
            local = next(it)
            self._wait += time.perf_counter() - t0
            yield {"x": local["x"], "domain": local["domain"].astype(np.int32)}

    def batches(self, start: int, steps: int, stages: Stages, seed: int) -> Iterator[Any]:
        B, S1 = self.t.batch_size, self.t.seq_len + 1
        for local in self.host_batches(start, steps, stages, seed):
            yield {"x": jax.make_array_from_process_local_data(self.rows, local["x"], (B, S1)),
                   "domain": jax.make_array_from_process_local_data(self.rows, local["domain"], (B,))}

    def usage(self, step: int, rows_D: np.ndarray, stages: Stages, seed: int) -> dict[str, dict[str, float]]:
        return self.mixture(stages, seed).usage(step)

    def data_wait_s(self) -> float:
        wait, self._wait = self._wait, 0.0
        return wait


def make_input(data, t: TrainSpec, *, feedback_tokens: int = 0, eval_split: str = "val",
               spread_eval: bool = False) -> RunInput:
    """The run input for a corpus: a `RunInput` as it is, a `DomainTokens` in memory, a store's `StoreData`."""
    if isinstance(data, RunInput):
        return data
    kw = dict(feedback_tokens=feedback_tokens, eval_split=eval_split, spread_eval=spread_eval)
    if isinstance(data, DomainTokens):
        return MemoryInput(data, t, **kw)
    if hasattr(data, "store"):
        return StoreInput(data, t, **kw)
    raise TypeError(f"cannot train on {type(data).__name__}; give DomainTokens or a token store's StoreData")
