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
import dataclasses
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bimix_jax.data import sampler
from bimix_jax.data.input import MixtureInput
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.train import hosts
from bimix_jax.train.evaluate import EvalSet, build_eval_set
from bimix_jax.train.segments import split_feedback
from bimix_jax.train.state import TrainSpec

Stages = Sequence[tuple[int, Sequence[float]]]


@dataclasses.dataclass(frozen=True)
class _Buffers:
    """What `build_eval_set` reads of a corpus: domains and one buffer per domain (as its `val`)."""

    domains: tuple[str, ...]
    val: Mapping[str, np.ndarray]


class RunInput(abc.ABC):
    """Batches, validation set and feedback set of one run."""

    batch_input: bool  # False: the step samples from device buffers; True: the step gets host batches
    domains: tuple[str, ...]
    vocab_size: int

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Identifies the training data (a run's `config.json` compares it)."""

    @abc.abstractmethod
    def eval_set(self, t: TrainSpec) -> EvalSet:
        """The reported validation windows (the first `t.eval_tokens` of each domain's validation split)."""

    @abc.abstractmethod
    def feedback_set(self, t: TrainSpec) -> EvalSet | None:
        """The online methods' feedback windows (None without feedback tokens)."""

    @abc.abstractmethod
    def place(self, mesh: Mesh) -> None:
        """Puts what the step needs on the devices (before the first `batches`)."""

    @abc.abstractmethod
    def batches(self, start: int, steps: int, stages: Stages, seed: int) -> Iterator[Any]:
        """The step's data argument for steps `start .. start + steps - 1`, under the schedule `stages`."""

    @abc.abstractmethod
    def usage(self, step: int, rows_D: np.ndarray, stages: Stages, seed: int) -> dict[str, dict[str, float]]:
        """Per domain after `step` steps: windows drawn, windows per epoch, epochs, completed repetitions."""

    def data_wait_s(self) -> float:
        """Seconds the host waited for batches since the last call (0 when batches are sampled on device)."""
        return 0.0


class MemoryInput(RunInput):
    batch_input = False

    def __init__(self, tokens: DomainTokens, t: TrainSpec, *, feedback_tokens: int = 0):
        self.tokens, self.feedback = split_feedback(tokens, feedback_tokens, t.seq_len)
        self.feedback_tokens, self.seq_len = feedback_tokens, t.seq_len
        self.domains, self.vocab_size = self.tokens.domains, self.tokens.vocab_size
        self.buffers = sampler.train_buffers(self.tokens, t.seq_len)
        self.data = None

    def fingerprint(self) -> str:
        return self.tokens.fingerprint()

    def eval_set(self, t: TrainSpec) -> EvalSet:
        return build_eval_set(self.tokens, seq_len=t.seq_len, eval_tokens=t.eval_tokens, batch_size=t.eval_batch_size)

    def feedback_set(self, t: TrainSpec) -> EvalSet | None:
        if not self.feedback_tokens:
            return None
        return build_eval_set(self.feedback, seq_len=t.seq_len, eval_tokens=self.feedback_tokens,
                              batch_size=t.eval_batch_size)

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

    def __init__(self, data, t: TrainSpec, *, feedback_tokens: int = 0, threads: int = 4, prefetch: int = 8):
        self.data, self.t, self.feedback_tokens = data, t, feedback_tokens
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

    def fingerprint(self) -> str:
        return self.data.fingerprint()

    def _split_set(self, split: str, tokens: int, t: TrainSpec) -> EvalSet:
        bufs = {}
        for d in self.domains:
            sp = self.data.store.split(d, split)
            bufs[d] = sp.read(0, min(tokens + 1, sp.num_tokens))
        return build_eval_set(_Buffers(self.domains, bufs), seq_len=t.seq_len, eval_tokens=tokens,
                              batch_size=t.eval_batch_size)

    def eval_set(self, t: TrainSpec) -> EvalSet:
        return self._split_set("val", t.eval_tokens, t)

    def feedback_set(self, t: TrainSpec) -> EvalSet | None:
        return self._split_set("select", self.feedback_tokens, t) if self.feedback_tokens else None

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


def make_input(data, t: TrainSpec, *, feedback_tokens: int = 0) -> RunInput:
    """The run input for a corpus: a `RunInput` as it is, a `DomainTokens` in memory, a store's `StoreData`."""
    if isinstance(data, RunInput):
        return data
    if isinstance(data, DomainTokens):
        return MemoryInput(data, t, feedback_tokens=feedback_tokens)
    if hasattr(data, "store"):
        return StoreInput(data, t, feedback_tokens=feedback_tokens)
    raise TypeError(f"cannot train on {type(data).__name__}; give DomainTokens or a token store's StoreData")
