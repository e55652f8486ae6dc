"""Times the data layer (read corpus, train tokenizer, encode, prepare from scratch and from cache); prints JSON.

    python -m experiments.bench_data
    python -m experiments.bench_data --spec=vocab_size=4096,embedded_chars_per_domain=1000000 --repeats=5

`--spec` overrides `DataSpec` fields (`key=value`, comma-separated). Each repeat prepares into a fresh
temporary workdir, then loads it again from the cache; the medians and every sample are printed.
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


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(round(time.perf_counter() - t, 4))
    return times, out


def main(argv: Sequence[str]) -> None:
    del argv
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
