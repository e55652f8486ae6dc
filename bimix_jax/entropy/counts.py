"""Training-free mixtures from token entropies (BiMix, arXiv 2405.14908, Eq. 12-13), in nats.

A domain is one stream of token ids (its documents, each followed by eos, as the model reads them).
Pairs are the adjacent positions `(x_t, x_{t+1})` of that stream; with `sequence_length=L` only pairs
inside consecutive L-token blocks count (the paper's 1024-token sequences). From the pair counts
`c(x, x')` over `n` pairs:

* JE (joint)       = H(X_t, X_{t+1}) = -sum c/n ln(c/n) over distinct pairs;
* SE (Shannon)     = H(X_t), the entropy of the LEFT marginal `c(x) = sum_x' c(x, x')`, i.e. unigram
  counts over every position that has a successor (all tokens but the last of each sequence);
* CE (conditional) = H(X_{t+1} | X_t) = -sum c/n ln(c(x, x') / c(x)), computed from its own formula.

Because SE uses exactly the marginal of the counted pairs, CE = JE - SE holds exactly (to rounding) for
these plug-in estimates; unigram counts over all tokens would differ by one token per sequence and break
it. Counting is streaming with bounded memory (`BigramCounter`): a pair is the key `x * V + x'`
(uint32 when V^2 <= 2^32); each flush of keys is sorted (numpy's SIMD quicksort) and run-length encoded,
so memory is O(flush_tokens + distinct pairs) and no dense V x V table is needed; a dense `bincount`
table is used only when V^2 is small (it is faster there). `entropy_report` counts domains in parallel
threads (numpy releases the GIL); `threads > 1` also splits one stream's flush into key ranges.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.entropy.vne import EmbedConfig, domain_vne

PROXIES = ("se", "ce", "je", "vne")
DENSE_MAX_BINS = 1 << 18  # Dense V x V counts by default when V^2 is at most this (V <= 512).
_DENSE_LIMIT = 1 << 28  # Refuse a forced dense table above this many bins (2 GiB of int64).
_MIN_PARALLEL = 1 << 18  # Keys below this count are counted on one thread.


@dataclasses.dataclass(frozen=True)
class TokenEntropy:
    """SE, CE, JE of one token stream (nats) and the counts they come from."""

    tokens: int  # token ids seen
    pairs: int  # counted adjacent pairs n
    se: float
    ce: float
    je: float
    unigram_types: int  # distinct left tokens
    bigram_types: int  # distinct pairs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _key_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint32) if vocab_size * vocab_size <= 1 << 32 else np.dtype(np.uint64)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a new value starts in a sorted array (first index 0 included)."""
    change = np.empty(sorted_keys.size, dtype=bool)
    change[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=change[1:])
    return np.flatnonzero(change)


def _rle(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys, int64 counts) of a sorted array."""
    if sorted_keys.size == 0:
        return sorted_keys, np.zeros(0, np.int64)
    starts = _run_starts(sorted_keys)
    counts = np.empty(starts.size, np.int64)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = sorted_keys.size - starts[-1]
    return sorted_keys[starts], counts


def _merge(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merges sorted (distinct keys, counts) runs into one, adding the counts of equal keys."""
    runs = [r for r in runs if r[0].size]
    if len(runs) <= 1:
        return runs[0] if runs else (np.zeros(0, np.uint32), np.zeros(0, np.int64))
    keys = np.concatenate([r[0] for r in runs])
    counts = np.concatenate([r[1] for r in runs])
    if keys.dtype == np.uint32 and int(counts.max()) < 1 << 32:
        # Pack (key, count) into one uint64 and sort values: faster than argsort + gathers.
        packed = keys.astype(np.uint64) << np.uint64(32)
        packed |= counts.astype(np.uint64)
        packed.sort()
        keys = (packed >> np.uint64(32)).astype(np.uint32)
        counts = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    else:
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
    starts = _run_starts(keys)
    return keys[starts], np.add.reduceat(counts, starts)


class _KeyRange:
    """Counts of the pair keys in one key range: a merged run plus pending runs (merged geometrically)."""

    def __init__(self, dtype: np.dtype):
        self.keys, self.counts = np.zeros(0, dtype), np.zeros(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self.pending.append((keys, counts))
        self.pending_size += keys.size
        if self.pending_size >= self.keys.size:  # Each distinct key is re-merged O(log) times.
            self.consolidate()

    def consolidate(self) -> None:
        if self.pending:
            self.keys, self.counts = _merge([(self.keys, self.counts)] + self.pending)
            self.pending, self.pending_size = [], 0


class BigramCounter:
    """Streaming unigram/bigram counts of one token stream; `result()` gives SE, CE and JE.

    `update(chunk)` continues the stream (the first token of `chunk` pairs with the last token seen);
    `update(chunk, new_sequence=True)` starts a new sequence. Memory is bounded by `flush_tokens` pair
    keys plus the distinct pairs; `dense` forces (True) or forbids (False) the V x V table. `threads > 1`
    sorts slices of each flush in parallel and keeps the counts in disjoint key ranges (about 1.5x the
    total work of one thread, so it pays only on idle cores; `entropy_report` parallelises domains).
    """

    def __init__(self, vocab_size: int, *, name: str = "tokens", sequence_length: int = 0,
                 dense: bool | None = None, threads: int = 1, flush_tokens: int = 1 << 24):
        if vocab_size < 1:
            raise InputError(f"vocab_size={vocab_size} for {name!r} must be >= 1")
        if sequence_length < 0 or sequence_length == 1:
            raise InputError(f"sequence_length={sequence_length} must be 0 (one stream) or >= 2")
        if flush_tokens < 2:
            raise InputError(f"flush_tokens={flush_tokens} must be >= 2")
        bins = vocab_size * vocab_size
        self.dense = bins <= DENSE_MAX_BINS if dense is None else bool(dense)
        if self.dense and bins > _DENSE_LIMIT:
            raise InputError(f"dense counts for vocab_size={vocab_size} need {bins} bins; use dense=False")
        self.name, self.vocab_size, self.sequence_length = name, vocab_size, sequence_length
        self.threads = max(1, threads)
        self.flush_tokens = flush_tokens
        self._dtype = _key_dtype(vocab_size)
        self._tokens = 0
        self._prev: int | None = None  # Last token of the current sequence.
        self._pos = 0  # Position (in its sequence) of the next token.
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._table: np.ndarray | None = None  # Dense [V*V] int64 counts.
        self._ranges: list[_KeyRange] | None = None
        self._pivots: np.ndarray | None = None  # Key-range boundaries, fixed at the first flush.

    def update(self, tokens, *, new_sequence: bool = False) -> None:
        """Adds a chunk of token ids (1-D integer array-like) to the stream."""
        x = np.asarray(tokens)
        if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)):
            raise InputError(
                f"domain {self.name!r}: token ids must be a 1-D integer array, got {x.dtype}{x.shape}")
        if x.size:
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = hi if hi >= self.vocab_size else lo
                raise InputError(
                    f"domain {self.name!r} has token id {bad} outside the vocabulary [0, {self.vocab_size}); "
                    "the ids come from another tokenizer: re-tokenize or fix vocab_size")
        if new_sequence:
            self._prev, self._pos = None, 0
        for start in range(0, x.size, self.flush_tokens):
            keys = self._keys(x[start:start + self.flush_tokens])
            if keys.size:
                self._pending.append(keys)
                self._pending_size += keys.size
            if self._pending_size >= self.flush_tokens:
                self._flush()
        self._tokens += x.size

    def _keys(self, piece: np.ndarray) -> np.ndarray:
        """Pair keys `left * V + right` of `piece` (preceded by the carried token), sequence cuts removed."""
        dt, v = self._dtype, self.vocab_size
        first_left = self._pos - 1 if self._prev is not None else self._pos  # Sequence position of 1st left.
        if self._prev is not None:
            keys = np.empty(piece.size, dt)
            keys[0] = self._prev * v + int(piece[0])
            body = keys[1:]
        else:
            keys = body = np.empty(piece.size - 1, dt)
        np.multiply(piece[:-1], v, out=body, dtype=dt, casting="unsafe")
        np.add(body, piece[1:], out=body, casting="unsafe")
        if self.sequence_length and keys.size:
            length = self.sequence_length
            cut = np.arange((length - 1 - first_left) % length, keys.size, length)  # left is a block's last.
            keys = np.delete(keys, cut)
        self._prev = int(piece[-1])
        self._pos += piece.size
        if self.sequence_length:
            self._pos %= self.sequence_length
            if self._pos == 0:
                self._prev = None  # The piece ended exactly at a block boundary.
        return keys

    def _slices(self, n: int) -> list[slice]:
        parts = self.threads if n >= _MIN_PARALLEL else 1
        bounds = np.linspace(0, n, parts + 1).astype(int)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def _flush(self) -> None:
        if not self._pending:
            return
        keys = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_size = [], 0
        slices = self._slices(keys.size)
        with ThreadPoolExecutor(len(slices)) as pool:
            if self.dense:
                bins = self.vocab_size * self.vocab_size
                if self._table is None:
                    self._table = np.zeros(bins, np.int64)
                for part in pool.map(lambda s: np.bincount(keys[s], minlength=bins), slices):
                    self._table += part
                return
            # Sort position slices in parallel (in place: the keys are ours); cut every sorted slice at the
            # key-range pivots; each range sorts its pieces together and run-length encodes them. Ranges
            # are disjoint, so their counts never need merging with each other.
            list(pool.map(lambda s: keys[s].sort(), slices))
            runs = [keys[s] for s in slices]
            if self._ranges is None:  # Range boundaries at quantiles of this first flush.
                sample = np.sort(np.concatenate([r[:: max(1, r.size // 1024)] for r in runs]))
                self._pivots = np.unique(sample[(np.arange(1, self.threads) * sample.size) // self.threads])
                self._ranges = [_KeyRange(self._dtype) for _ in range(self._pivots.size + 1)]
            edges = [np.concatenate([[0], np.searchsorted(r, self._pivots), [r.size]]) for r in runs]

            def count_range(j: int) -> None:
                pieces = [r[e[j]:e[j + 1]] for r, e in zip(runs, edges) if e[j + 1] > e[j]]
                if pieces:
                    merged = pieces[0] if len(pieces) == 1 else np.sort(np.concatenate(pieces))
                    self._ranges[j].add(*_rle(merged))

            list(pool.map(count_range, range(len(self._ranges))))

    def pair_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """All counted pairs as (sorted distinct keys `x * V + x'`, int64 counts)."""
        self._flush()
        if self.dense:
            if self._table is None:
                return np.zeros(0, self._dtype), np.zeros(0, np.int64)
            nz = np.flatnonzero(self._table)
            return nz.astype(self._dtype), self._table[nz]
        if self._ranges is None:
            return np.zeros(0, self._dtype), np.zeros(0, np.int64)
        with ThreadPoolExecutor(len(self._ranges)) as pool:
            list(pool.map(lambda r: r.consolidate(), self._ranges))
        return (np.concatenate([r.keys for r in self._ranges]),
                np.concatenate([r.counts for r in self._ranges]))

    def result(self) -> TokenEntropy:
        """SE, CE, JE (nats) of everything seen so far; the counter can keep streaming afterwards."""
        keys, counts = self.pair_counts()
        if counts.size == 0:
            raise InputError(
                f"domain {self.name!r} has {self._tokens} token(s) and no adjacent pair; entropies need at "
                "least two tokens in a sequence: add documents or drop the domain")
        return _entropies(keys, counts, self.vocab_size, self._tokens)


def _entropies(keys: np.ndarray, counts: np.ndarray, vocab_size: int, tokens: int,
               block: int = 1 << 16) -> TokenEntropy:
    """Plug-in SE, CE, JE from sorted distinct pair keys and their counts (cache-sized blocks)."""
    n = int(counts.sum())
    blocks = [slice(a, a + block) for a in range(0, keys.size, block)]
    c_x = np.zeros(vocab_size, np.float64)  # Left marginal (exact: counts < 2^53).
    sum_xy = 0.0  # sum c(x, x') ln c(x, x')
    for b in blocks:
        c_xy = counts[b].astype(np.float64)
        sum_xy += float(np.sum(c_xy * np.log(c_xy)))
        left = keys[b] // vocab_size  # Sorted, so each left token is one run.
        starts = _run_starts(left)
        c_x[left[starts]] += np.add.reduceat(c_xy, starts)
    seen = c_x > 0
    log_c_x = np.zeros(vocab_size, np.float64)
    np.log(c_x, out=log_c_x, where=seen)
    sum_pair_x = 0.0  # sum c(x, x') ln c(x) over pairs: a second pass, with the marginal known
    for b in blocks:
        sum_pair_x += float(np.sum(counts[b] * log_c_x[keys[b] // vocab_size]))
    log_n = math.log(n)
    je = log_n - sum_xy / n
    se = log_n - float(np.sum(c_x * log_c_x)) / n
    ce = (sum_pair_x - sum_xy) / n  # -sum c(x, x')/n ln(c(x, x') / c(x)), pair by pair
    return TokenEntropy(tokens=tokens, pairs=n, se=se, ce=ce, je=je, unigram_types=int(seen.sum()),
                        bigram_types=int(keys.size))


def token_entropies(tokens, vocab_size: int, *, name: str = "tokens", **counter_kwargs) -> TokenEntropy:
    """One-shot SE, CE, JE of a token stream (same result as streaming it through `BigramCounter`)."""
    counter = BigramCounter(vocab_size, name=name, **counter_kwargs)
    counter.update(tokens)
    return counter.result()


def stream_entropies(chunks: Iterable[np.ndarray], vocab_size: int, *, name: str = "tokens",
                     **counter_kwargs) -> TokenEntropy:
    """SE, CE, JE of a stream given in chunks (e.g. `TokenStore.split(d).chunks()`); memory is one chunk
    plus the counter's bound, whatever the stream's length."""
    counter = BigramCounter(vocab_size, name=name, **counter_kwargs)
    for chunk in chunks:
        counter.update(chunk)
    return counter.result()


def entropy_mixture(entropies: Mapping[str, float], temperature: float = 1.0) -> dict[str, float]:
    """`r_i = exp(H_i / T) / sum_j exp(H_j / T)` (BiMix Eq. 13 at T = 1), per domain."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature={temperature} must be a finite number > 0; the paper uses 1")
    if not entropies:
        raise InputError("no domains to mix; give at least one domain")
    h = np.array([float(v) for v in entropies.values()], np.float64)
    bad = [d for d, v in zip(entropies, h) if not math.isfinite(v)]
    if bad:
        raise InputError(f"domain {bad[0]!r} has a non-finite entropy; check its data")
    z = (h - h.max()) / temperature  # <= 0, so a tiny temperature gives 0 and -inf, never inf - inf
    w = np.exp(z)
    return dict(zip(entropies, (w / w.sum()).tolist()))


def consistency(mix_se: Mapping[str, float], mix_ce: Mapping[str, float],
                mix_je: Mapping[str, float]) -> dict:
    """`ln r_JE - ln r_SE - ln r_CE` per domain: one constant across domains when CE = JE - SE.

    It equals `lse(SE/T) + lse(CE/T) - lse(JE/T)` (lse = log-sum-exp over domains) for every domain.
    """
    per = {d: math.log(mix_je[d]) - math.log(mix_se[d]) - math.log(mix_ce[d]) for d in mix_je}
    values = np.array(list(per.values()))
    return {"per_domain": per, "constant": float(values.mean()), "spread": float(values.max() - values.min())}


def entropy_report(tokens: Mapping[str, Any], vocab_size: int,
                   documents: Mapping[str, Sequence[str]] | None = None, *, proxy: str = "ce",
                   temperature: float = 1.0, sequence_length: int = 0, max_docs: int = 1000,
                   embed_config: EmbedConfig = EmbedConfig(), workers: int | None = None) -> dict:
    """SE/CE/JE (and VNE when `documents` are given) per domain, all mixtures, and the chosen one.

    `tokens` maps each domain to its token stream; `documents` maps it to its texts (for VNE). Every
    domain is checked before anything is returned, so a caller writes nothing on bad input.
    """
    if proxy not in PROXIES:
        raise InputError(f"proxy={proxy!r} is unknown; choose one of {', '.join(PROXIES)}")
    if proxy == "vne" and documents is None:
        raise InputError("proxy=vne needs the documents of every domain; give documents or another proxy")
    entropy_mixture({"_": 0.0}, temperature)  # Checks the temperature before the long part.
    domains = list(tokens)
    if documents is not None:
        missing = [d for d in domains if d not in documents]
        if missing:
            raise InputError(
                f"domain {missing[0]!r} has tokens but no documents; give documents for every domain")

    def measure(d: str) -> dict:
        src = tokens[d]  # An array, or a token-store split (streamed by its `chunks()`).
        out = (stream_entropies(src.chunks(), vocab_size, name=d, sequence_length=sequence_length) if hasattr(src, "chunks")
               else token_entropies(src, vocab_size, name=d, sequence_length=sequence_length)).to_dict()
        if documents is not None:
            v = domain_vne(documents[d], domain=d, max_docs=max_docs, cfg=embed_config)
            out.update(vne=v["vne"], vne_docs_used=v["docs_used"], vne_docs_total=v["docs_total"])
        return out

    with ThreadPoolExecutor(max(1, min(workers or os.cpu_count() or 1, len(domains)))) as pool:
        per = dict(zip(domains, pool.map(measure, domains)))  # Raises the first failing domain's error.
    measures = ("se", "ce", "je", "vne") if documents is not None else ("se", "ce", "je")
    mixtures = {m: entropy_mixture({d: per[d][m] for d in domains}, temperature) for m in measures}
    return {
        "units": "nats",
        "proxy": proxy,
        "temperature": temperature,
        "domains": domains,
        "entropy": per,
        "mixtures": mixtures,
        "mixture": mixtures[proxy],
        "consistency": consistency(mixtures["se"], mixtures["ce"], mixtures["je"]),
        "settings": {
            "pairs": ("adjacent tokens of each domain's stream (documents each followed by eos)"
                      + (f", within consecutive {sequence_length}-token sequences" if sequence_length else "")),
            "se_marginal": "left tokens of the counted pairs",
            "vocab_size": vocab_size,
            "vne_embedding": (dataclasses.asdict(embed_config) | {"max_docs": max_docs}
                              if documents is not None else None),
        },
    }
