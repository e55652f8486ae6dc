"""Times SE+CE+JE counting (tokens/s) and VNE embedding (documents/s); prints JSON.

    python -m experiments.bench_entropy
    python -m experiments.bench_entropy --tokens=20000000 --vocab_sizes=32000 --threads=1,2 --repeats=5

Two synthetic streams per vocabulary size (ids permuted, so frequent ids are spread over the vocabulary):
`iid_zipf`, independent Zipf(1.1) tokens, the worst case (the most distinct pairs), and `words`, Zipf(1.15)
draws from 4V "words" of 1-4 fixed random tokens, closer to text (far fewer distinct pairs).
`domains_in_parallel` measures `--domains` such streams with `entropy_report` (one thread per domain). Each
configuration reports the best and the median wall-clock rate of `--repeats` runs and the rate per CPU
second of this process (all its threads; near the idle-machine rate when other processes share the CPU). The
`collections.Counter` baseline counts the same pairs on the first `--counter_tokens` tokens only and its
rate is extrapolated to the full stream (it is linear in the tokens). The fair baseline,
`np_unique` (what a numpy user writes: `np.unique` of int64 pair keys), counts the whole stream; its ratio
comes first in each row. `dense_vs_sparse` times both
bigram paths on small vocabularies, which sets the automatic switch. `vne` embeds the built-in corpus.
"""

from __future__ import annotations

import collections
import json
import math
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from experiments import cli

_TOKENS = flags.DEFINE_integer("tokens", 10_000_000, "Tokens per stream.")
_VOCABS = flags.DEFINE_list("vocab_sizes", ["2048", "32000", "50277"], "Vocabulary sizes.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Threads splitting one stream (BigramCounter threads).")
_DOMAINS = flags.DEFINE_integer("domains", 4, "Domains (of --tokens / 2 tokens each) measured in parallel.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions of each configuration.")
_COUNTER_TOKENS = flags.DEFINE_integer("counter_tokens", 1_000_000, "Tokens for the Counter baseline.")
_DENSE_VOCABS = flags.DEFINE_list("dense_vocab_sizes", ["64", "256", "512", "1024"],
                                  "Vocabularies timed with both bigram paths.")
_VNE_CHARS = flags.DEFINE_integer("vne_chars", 1_000_000, "Characters per embedded-corpus domain for VNE.")


def iid_zipf(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(vocab).astype(np.int32)[(rng.zipf(1.1, size=n) - 1) % vocab]


def words(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 5, size=4 * vocab)
    table = rng.integers(0, vocab, size=int(lens.sum())).astype(np.int32)
    start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    w = (rng.zipf(1.15, size=int(n / 2.4) + 1000) - 1) % lens.size
    wl = lens[w]
    pos = np.repeat(start[w] - (np.cumsum(wl) - wl), wl) + np.arange(int(wl.sum()))
    return table[pos[:n]]


def counter_entropies(x: np.ndarray) -> tuple[float, float, float]:
    """The straightforward way: Python Counters of (left) unigrams and pairs."""
    pairs = collections.Counter(zip(x[:-1].tolist(), x[1:].tolist()))
    left = collections.Counter(x[:-1].tolist())
    n = len(x) - 1
    je = -sum(c / n * math.log(c / n) for c in pairs.values())
    se = -sum(c / n * math.log(c / n) for c in left.values())
    return se, je - se, je


def unique_entropies(x: np.ndarray, vocab: int) -> tuple[float, float, float]:
    """What a numpy user writes: np.unique of int64 pair keys (and of the left tokens), counts to entropies."""
    left = x[:-1].astype(np.int64)
    _, pair_counts = np.unique(left * vocab + x[1:], return_counts=True)
    _, left_counts = np.unique(left, return_counts=True)
    n = len(x) - 1
    p, q = pair_counts / n, left_counts / n
    je, se = float(-np.sum(p * np.log(p))), float(-np.sum(q * np.log(q)))
    return se, je - se, je


def _timed(fn, repeats: int) -> tuple[list[tuple[float, float]], object]:
    """(wall seconds, CPU seconds of this process, all threads) per repeat, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return times, out


def _rate(n: int, times: list[tuple[float, float]]) -> dict:
    wall = [t for t, _ in times]
    return {"best_tokens_per_s": round(n / min(wall)),
            "median_tokens_per_s": round(n / statistics.median(wall)),
            "tokens_per_cpu_s": round(n / min(c for _, c in times)), "seconds": [round(t, 4) for t in wall]}


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax.data import embedded
    from bimix_jax.entropy import counts as entropy_counts, vne

    n, reps = _TOKENS.value, max(1, _REPEATS.value)
    threads = [int(t) for t in _THREADS.value]
    out = {"cpu_count": os.cpu_count(), "tokens": n, "repeats": reps, "streams": []}
    for vocab in map(int, _VOCABS.value):
        for name, gen in (("iid_zipf", iid_zipf), ("words", words)):
            x = gen(n, vocab)
            row = {"fair_speedup_vs_np_unique": None, "stream": name, "vocab_size": vocab}
            for t in threads:
                times, r = _timed(lambda: entropy_counts.token_entropies(x, vocab, threads=t), reps)
                row[f"threads_{t}"] = _rate(n, times)
            row.update(se=round(r.se, 4), ce=round(r.ce, 4), je=round(r.je, 4), bigram_types=r.bigram_types,
                       dense=entropy_counts.BigramCounter(vocab).dense)
            m = min(n, _COUNTER_TOKENS.value)
            times, ref = _timed(lambda: counter_entropies(x[:m]), 1)
            part = entropy_counts.token_entropies(x[:m], vocab)
            assert abs(ref[2] - part.je) < 1e-9 and abs(ref[0] - part.se) < 1e-9
            row["counter"] = {"tokens_timed": m, "tokens_per_s": round(m / times[0][0]),
                              "extrapolated_seconds_for_stream": round(times[0][0] * n / m, 2)}
            times, ref = _timed(lambda: unique_entropies(x, vocab), reps)
            assert abs(ref[2] - r.je) < 1e-6 and abs(ref[0] - r.se) < 1e-6
            row["np_unique"] = _rate(n, times)
            best = max(v["best_tokens_per_s"] for k, v in row.items() if k.startswith("threads_"))
            row["fair_speedup_vs_np_unique"] = round(best / row["np_unique"]["best_tokens_per_s"], 2)
            row["speedup_vs_counter"] = round(best / row["counter"]["tokens_per_s"], 1)
            out["streams"].append(row)
            print(json.dumps(row), flush=True)
    vocab = int(_VOCABS.value[-1])
    streams = {f"d{i}": (words if i % 2 else iid_zipf)(n // 2, vocab, seed=i) for i in range(_DOMAINS.value)}
    total = sum(x.size for x in streams.values())
    row = {"vocab_size": vocab, "domains": len(streams), "tokens": total,
           "streams": "iid_zipf and words alternating"}
    for w in sorted({1, os.cpu_count() or 1}):
        times, _ = _timed(lambda: entropy_counts.entropy_report(streams, vocab, workers=w), reps)
        row[f"workers_{w}"] = _rate(total, times)
    out["domains_in_parallel"] = row
    print(json.dumps(row), flush=True)
    out["dense_vs_sparse"] = []
    for vocab in map(int, _DENSE_VOCABS.value):
        x = iid_zipf(n, vocab)
        row = {"vocab_size": vocab, "auto": "dense" if entropy_counts.BigramCounter(vocab).dense else "sparse"}
        for dense in (True, False):
            times, _ = _timed(lambda: entropy_counts.token_entropies(x, vocab, dense=dense, threads=1), reps)
            row["dense" if dense else "sparse"] = _rate(n, times)
        out["dense_vs_sparse"].append(row)
        print(json.dumps(row), flush=True)
    docs = {d: embedded.embedded_documents(d, seed=0, chars=_VNE_CHARS.value) for d in embedded.DOMAINS}
    ndocs, nchars = sum(map(len, docs.values())), sum(len(t) for v in docs.values() for t in v)
    times, vne = _timed(lambda: {d: vne.domain_vne(v, domain=d)["vne"] for d, v in docs.items()}, reps)
    wall = [t for t, _ in times]
    out["vne"] = {"docs": ndocs, "chars": nchars, "best_docs_per_s": round(ndocs / min(wall)),
                  "best_chars_per_s": round(nchars / min(wall)), "seconds": [round(t, 4) for t in wall],
                  "vne": {d: round(v, 4) for d, v in vne.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    cli.run(main)
