"""Times the data layer (read corpus, train tokenizer, encode, prepare from scratch and from cache); prints JSON.

    python -m experiments.bench_data
    python -m experiments.bench_data --spec=vocab_size=4096,embedded_chars_per_domain=1000000 --repeats=5
    python -m experiments.bench_data --mode=store --corpus_mb=2048 --compare_mb=200
    python -m experiments.bench_data --mode=store --corpus_mb=2048 --workers=2 --store=/data/bench_store
    python -m experiments.bench_data --mode=train --store=/data/bench_store --steps=60

`--spec` overrides `DataSpec` fields (`key=value`, comma-separated). Each repeat prepares into a fresh
temporary workdir, then loads it again from the cache; the medians and every sample are printed.

`--mode=store` writes a generated jsonl corpus (4 domains of random words) of `--corpus_mb` MB and streams
it into a token store (`bimix_jax.data.store`) in a child process, reporting tokens/s and the child's peak
RSS; with `--compare_mb` it also prepares a corpus of that size both ways, streamed and in memory
(`prepare_data`), each in its own child process. It also encodes documents of the same corpus with plain
SentencePiece in one process, before and after: a store worker's tokens per second over that rate comes first.

`--mode=train` trains a runlocal-sized model for `--steps` steps from the token store `--store` in a child
process: its peak RSS (which must not grow with the store's size) and the wait for batches per step.

`--mode=input` reads batches of 64 x 1025 tokens of the mixture input (`bimix_jax.data.input`) from a store:
the cost of one batch, and the wait per step behind a consumer sleeping 100 ms per step (standing in for a
device step), with grain's reader threads ahead of it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence

from absl import flags

from configs.common import parse_arg
from experiments import cli

_SPEC = flags.DEFINE_string("spec", "", "DataSpec overrides, e.g. vocab_size=4096,seed=1.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions of each step.")
_MODE = flags.DEFINE_enum("mode", "prepare", ["prepare", "store", "input", "train"], "What to measure.")
_CORPUS_MB = flags.DEFINE_integer("corpus_mb", 256, "store mode: size of the generated corpus streamed into a store.")
_COMPARE_MB = flags.DEFINE_integer("compare_mb", 0, "store mode: corpus size for streamed vs in-memory (0: skip).")
_WORKERS = flags.DEFINE_integer("workers", 1, "store mode: local worker processes of prepare_store.")
_DIR = flags.DEFINE_string("dir", "", "store mode: scratch folder (default: a temporary folder, removed after).")
_STORE = flags.DEFINE_string("store", "", "store mode: keep the store here; train mode: the store to train from.")
_STEPS = flags.DEFINE_integer("steps", 60, "train mode: training steps.")


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(round(time.perf_counter() - t, 4))
    return times, out


def main(argv: Sequence[str]) -> None:
    del argv
    if _MODE.value == "store":
        from experiments import bench_data_lib

        with tempfile.TemporaryDirectory(dir=_DIR.value or None) as tmp:
            print(json.dumps(bench_data_lib.measure(tmp, corpus_mb=_CORPUS_MB.value, compare_mb=_COMPARE_MB.value,
                                                 workers=_WORKERS.value, store_dir=_STORE.value), indent=2))
        return
    if _MODE.value == "train":
        from experiments import bench_data_lib

        if not _STORE.value:
            cli.fail("--mode=train needs --store=<a token store folder>")
        with tempfile.TemporaryDirectory(dir=_DIR.value or None) as tmp:
            print(json.dumps(bench_data_lib.measure_train(_STORE.value, tmp + "/run", steps=_STEPS.value), indent=2))
        return
    if _MODE.value == "input":
        from experiments import bench_data_lib

        with tempfile.TemporaryDirectory(dir=_DIR.value or None) as tmp:
            print(json.dumps(bench_data_lib.measure_input(tmp), indent=2))
        return
    from bimix_jax.data import prepare, tokenizer
    from bimix_jax.data.spec import DataSpec

    try:
        spec = DataSpec(**parse_arg(_SPEC.value, **DataSpec().to_dict()))
    except ValueError as e:
        cli.fail(f"--spec: {e}")
    n = max(1, _REPEATS.value)
    corpus_s, corpus = _timed(lambda: prepare.load_corpus(spec), n)
    train_s, tok = _timed(lambda: tokenizer.train_tokenizer(
        corpus.train, vocab_size=spec.vocab_size, sample_chars=spec.tokenizer_sample_chars, seed=spec.seed), n)
    docs = [doc for d in corpus.domains for doc in corpus.train[d] + corpus.val[d]]
    encode_s, buf = _timed(lambda: tok.encode_documents(docs), n)
    scratch_s, cache_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            wd = f"{tmp}/wd{i}"
            t = time.perf_counter()
            prepared = prepare.prepare_data(spec, wd)
            scratch_s.append(round(time.perf_counter() - t, 4))
            t = time.perf_counter()
            assert prepare.prepare_data(spec, wd).from_cache
            cache_s.append(round(time.perf_counter() - t, 4))
    med = statistics.median
    print(json.dumps({
        "spec": spec.to_dict(),
        "repeats": n,
        "load_corpus_s": {"median": med(corpus_s), "samples": corpus_s},
        "train_tokenizer_s": {"median": med(train_s), "samples": train_s},
        "encode_s": {"median": med(encode_s), "samples": encode_s},
        "encode_tokens_per_s": round(buf.size / med(encode_s)),
        "prepare_scratch_s": {"median": med(scratch_s), "samples": scratch_s},
        "prepare_cache_s": {"median": med(cache_s), "samples": cache_s},
        "scratch_over_cache": round(med(scratch_s) / med(cache_s), 1),
        "vocab_size": prepared.tokens.vocab_size,
        "tokens_fingerprint": prepared.tokens.fingerprint(),
        "stats": prepared.stats,
        "table_markdown": prepare.describe(prepared.stats),
    }, indent=2))


if __name__ == "__main__":
    cli.run(main)
