"""The mixture input: per-domain windows mixed block-deterministically, read through grain.

* A domain's training tokens are cut into N_d windows of `seq_len + 1` tokens (window w holds tokens
  [w (S+1), (w+1)(S+1))). Draw k of domain d reads window `index_shuffle(k mod N_d)` under a key of
  (seed, d, epoch k // N_d): sampling without replacement within each epoch, a fresh order each epoch.
* Rows are grouped in blocks of `block_size` sequences (a multiple of the global batch). A block holds
  exactly the largest-remainder rounding of `block_size * r_d` rows of each domain (the expected count
  whenever it is an integer), permuted within the block by a key of (seed, block).
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

__all__ = ["TokenSource", "ArraySource", "MixtureInput", "block_counts"]


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


def block_counts(proportions_D: np.ndarray, block_size: int) -> np.ndarray:
    """[D] int64 rows per domain in a block: floor(block r_d), the remainder to the largest fractions."""
    r_D = np.asarray(proportions_D, dtype=np.float64)
    r_D = r_D / r_D.sum()
    exact_D = r_D * block_size
    c_D = np.floor(exact_D + 1e-9).astype(np.int64)
    extra = block_size - int(c_D.sum())
    if extra > 0:
        frac_D = np.where(r_D > 0, exact_D - c_D, -1.0)
        c_D[np.argsort(-frac_D, kind="stable")[:extra]] += 1
    return c_D


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
            r = np.asarray(r, dtype=np.float64)
            if r.shape != (D,) or not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
                raise InputError(f"mixture schedule: proportions at step {start} must be {D} finite weights >= 0 "
                                 "with a positive sum")

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

    def _stage_blocks(self) -> list[tuple[int, np.ndarray]]:
        spb = self.block_size // self.batch_size
        return [(start // spb, block_counts(np.asarray(r), self.block_size)) for start, r in self.schedule]

    def _draws_before_block(self, block: int) -> np.ndarray:
        """[D] draws of each domain in blocks [0, block)."""
        stages = self._stage_blocks()
        total_D = np.zeros(len(self.sources), np.int64)
        for i, (b0, c_D) in enumerate(stages):
            b1 = stages[i + 1][0] if i + 1 < len(stages) else block
            total_D += c_D * max(0, min(b1, block) - b0)
        return total_D

    def _block_domains(self, block: int) -> np.ndarray:
        """[block_size] domain of each row of a block (permuted by a key of (seed, block))."""
        stages = self._stage_blocks()
        c_D = [c for b0, c in stages if b0 <= block][-1]
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
