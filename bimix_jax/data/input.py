"""The mixture input: per-domain windows mixed block-deterministically, read through grain.

* A domain's training tokens are cut into N_d windows of `seq_len + 1` tokens (window w holds tokens
  [w (S+1), (w+1)(S+1))). Draw k of domain d reads window `index_shuffle(k mod N_d)` under a key of
  (seed, d, epoch k // N_d): sampling without replacement within each epoch, a fresh order each epoch.
* Rows are grouped in blocks of `block_size` sequences (a multiple of the global batch). Within a stage, the
  first n rows hold `floor(n C_d + u) - floor(n C_{d-1} + u)` rows of domain d (C: cumulative proportions, u:
  a seeded uniform per stage): every block holds floor or ceil of `block_size * r_d` rows of domain d (exactly
  that count when it is an integer), and over any number of blocks a domain's rows stay within one row of their
  expected count, with no domain favoured in the rounding. Rows are permuted within a block by a key of
  (seed, block).
* The mixture is a schedule of stages `[(start_step, proportions_D), ...]` whose starts lie on block
  boundaries. Draw counts before any block have a closed form, so every batch is a pure function of
  (seed, step, process index, schedule): each process reads only its slice of the global batch, and a
  resumed run needs no state but the step. New proportions are new data, never a recompilation.
* `iterate` wraps that function in a grain `MapDataset` over steps, read ahead by grain threads.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import grain
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions

__all__ = ["TokenSource", "ArraySource", "MixtureInput", "block_counts", "stage_rows"]


class TokenSource(Protocol):
    """What the input needs of a domain: its length and random reads (a store split, an array)."""

    @property
    def num_tokens(self) -> int: ...

    def read(self, start: int, length: int) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """An in-memory token buffer as a `TokenSource`."""

    tokens_T: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.tokens_T.size)

    def read(self, start: int, length: int) -> np.ndarray:
        return np.asarray(self.tokens_T[start:start + length], dtype=np.int32)


def stage_rows(proportions_D: np.ndarray, rows: int, u: float) -> np.ndarray:
    """[D] int64 rows of each domain among the first `rows` rows of a stage: floor(rows C_d + u) - floor(rows
    C_{d-1} + u), C the cumulative proportions (systematic sampling along the stream; sums to `rows`)."""
    r_D = np.asarray(proportions_D, dtype=np.float64)
    c_D = np.cumsum(r_D / r_D.sum())
    c_D[-1] = 1.0
    edges = np.floor(np.concatenate([[0.0], c_D]) * rows + u).astype(np.int64)
    edges[0], edges[-1] = int(np.floor(u)), rows + int(np.floor(u))
    return np.diff(edges)


def block_counts(proportions_D: np.ndarray, block_size: int, block: int = 0, u: float = 0.0) -> np.ndarray:
    """[D] int64 rows per domain in block `block` of a stage (see `stage_rows`): floor or ceil of
    `block_size * r_d`, exactly that when it is an integer."""
    return (stage_rows(proportions_D, (block + 1) * block_size, u)
            - stage_rows(proportions_D, block * block_size, u))


def _key(*parts: int) -> int:
    return zlib.crc32(np.asarray(parts, dtype=np.int64).tobytes()) & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureInput:
    """Global batches of `batch_size` windows of `seq_len + 1` tokens from `sources` under `schedule`."""

    sources: Mapping[str, TokenSource]
    seq_len: int
    batch_size: int  # global batch, sequences
    schedule: Sequence[tuple[int, Sequence[float]]]  # [(start_step, proportions in `sources` order)]
    seed: int = 0
    block_size: int = 0  # sequences per block; 0: one global batch

    def __post_init__(self):
        if self.batch_size < 1 or self.seq_len < 1:
            raise InputError(f"batch_size={self.batch_size} and seq_len={self.seq_len} must be >= 1")
        block = self.block_size or self.batch_size
        if block % self.batch_size:
            raise InputError(f"block_size={block} must be a multiple of batch_size={self.batch_size}")
        object.__setattr__(self, "block_size", block)
        D = len(self.sources)
        self._check_schedule(D)
        for d, src in self.sources.items():
            if src.num_tokens < self.seq_len + 1:
                raise InputError(f"domain {d!r} has {src.num_tokens} tokens, fewer than seq_len + 1 = "
                                 f"{self.seq_len + 1}; lower seq_len or drop the domain")

    def _check_schedule(self, D: int) -> None:
        steps_per_block = self.block_size // self.batch_size
        if not self.schedule or self.schedule[0][0] != 0:
            raise InputError("mixture schedule must start at step 0; give [(0, proportions), ...]")
        last = -1
        for start, r in self.schedule:
            if start <= last or start % steps_per_block:
                raise InputError(f"mixture schedule: stage start {start} must increase and be a multiple of "
                                 f"{steps_per_block} steps (one block)")
            last = start
            proportions.check_array(r, D, field=f"mixture schedule at step {start}")

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def num_windows(self) -> np.ndarray:
        """[D] int64 windows per domain epoch."""
        return np.array([s.num_tokens // (self.seq_len + 1) for s in self.sources.values()], dtype=np.int64)

    def with_stage(self, start_step: int, proportions_D: Sequence[float]) -> MixtureInput:
        """The same input with the mixture changed from `start_step` on (later stages dropped)."""
        kept = [s for s in self.schedule if s[0] < start_step]
        return dataclasses.replace(self, schedule=[*kept, (start_step, list(proportions_D))])

    # --- The pure function of (seed, step, process, schedule) --------------------------------------

    def _stages(self) -> list[tuple[int, int, np.ndarray, float]]:
        """(first block, end block (None for the last), proportions, u) of each stage."""
        spb = self.block_size // self.batch_size
        starts = [start // spb for start, _ in self.schedule]
        return [(b0, starts[i + 1] if i + 1 < len(starts) else None, np.asarray(r, np.float64),
                 np.random.default_rng([self.seed, b0, 0x7374]).random())
                for i, (b0, (_, r)) in enumerate(zip(starts, self.schedule))]

    def _draws_before_block(self, block: int) -> np.ndarray:
        """[D] draws of each domain in blocks [0, block)."""
        total_D = np.zeros(len(self.sources), np.int64)
        for b0, b1, r, u in self._stages():
            n = max(0, min(block if b1 is None else b1, block) - b0)
            total_D += stage_rows(r, n * self.block_size, u)
        return total_D

    def _block_domains(self, block: int) -> np.ndarray:
        """[block_size] domain of each row of a block (permuted by a key of (seed, block))."""
        b0, _, r, u = [s for s in self._stages() if s[0] <= block][-1]
        c_D = block_counts(r, self.block_size, block - b0, u)
        rows = np.repeat(np.arange(len(c_D), dtype=np.int32), c_D)
        return np.random.default_rng([self.seed, block, 0x6D6978]).permutation(rows)

    def _draw_windows(self, domain_R: np.ndarray, draw_R: np.ndarray) -> np.ndarray:
        n_D = self.num_windows()
        out = np.empty(domain_R.size, np.int64)
        for j, (d, k) in enumerate(zip(domain_R.tolist(), draw_R.tolist())):
            n = int(n_D[d])
            epoch, pos = divmod(k, n)
            out[j] = grain.experimental.index_shuffle(pos, max_index=n - 1, seed=_key(self.seed, d, epoch), rounds=4)
        return out

    def rows(self, step: int, process_index: int = 0, process_count: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(domain_R, draw_R, window_R) of this process's rows at `step` (R = batch_size / process_count)."""
        if self.batch_size % process_count or not 0 <= process_index < process_count:
            raise InputError(f"batch_size={self.batch_size} must be divisible by process_count={process_count} "
                             f"and 0 <= process_index={process_index} < process_count")
        spb = self.block_size // self.batch_size
        block, within = divmod(step, spb)
        domain_K = self._block_domains(block)
        # Draw number of each row: draws before the block + its rank among its domain's rows in the block.
        rank_K = np.empty_like(domain_K, dtype=np.int64)
        for d in np.unique(domain_K):
            where = np.flatnonzero(domain_K == d)
            rank_K[where] = np.arange(where.size)
        draw_K = self._draws_before_block(block)[domain_K] + rank_K
        per = self.batch_size // process_count
        lo = within * self.batch_size + process_index * per
        domain_R, draw_R = domain_K[lo:lo + per], draw_K[lo:lo + per]
        return domain_R, draw_R, self._draw_windows(domain_R, draw_R)

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's slice of global batch `step`: x_RxS [R, seq_len + 1] int32, domain_R, epoch_R."""
        domain_R, draw_R, window_R = self.rows(step, process_index, process_count)
        srcs = list(self.sources.values())
        S1 = self.seq_len + 1
        x_RxS = np.stack([srcs[d].read(int(w) * S1, S1) for d, w in zip(domain_R.tolist(), window_R.tolist())])
        epoch_R = draw_R // self.num_windows()[domain_R]
        return {"x": x_RxS.astype(np.int32), "domain": domain_R, "epoch": epoch_R.astype(np.int32), "step": np.int64(step)}

    def usage(self, step: int) -> dict[str, dict[str, float]]:
        """Per domain: windows drawn in steps [0, step), epochs (draws / windows) and completed repetitions."""
        spb = self.block_size // self.batch_size
        block, within = divmod(step, spb)
        draws_D = self._draws_before_block(block)
        if within:
            draws_D = draws_D + np.bincount(self._block_domains(block)[: within * self.batch_size],
                                            minlength=len(self.sources))
        n_D = self.num_windows()
        return {d: {"windows_drawn": int(k), "windows_per_epoch": int(n), "epochs": float(k / n),
                    "repetitions": int(k // n)} for d, k, n in zip(self.domains, draws_D, n_D)}

    def iterate(self, start_step: int, num_steps: int, *, process_index: int = 0, process_count: int = 1,
                threads: int = 4, prefetch: int = 8) -> Iterator[dict[str, np.ndarray]]:
        """Batches `start_step, start_step + 1, ...` (this process's slices), read ahead by grain threads."""
        ds = grain.MapDataset.range(start_step, start_step + num_steps).map(
            lambda step: self.batch(int(step), process_index, process_count))
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))
