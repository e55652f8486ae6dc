r"""Tokenizes a corpus once into a token store (per-domain ArrayRecord shards); rerun to resume after a kill.

    python -m experiments.prepare_store --sources='code=/data/code/*.jsonl.zst;web=/data/web/*.jsonl.zst' \
        --out=/data/store --workers=16
    python -m experiments.prepare_store --mixed='/data/pile/train/*.jsonl.zst' --domain_field=meta.pile_set_name \
        --domains=Pile-CC,Github,Books3 --vocab_size=32768 --out=/data/pile_store --workers=16
    python -m experiments.prepare_store --tfds=my_corpus --tfds_data_dir=/data/tfds --domain_field=label \
        --tokenizer=/data/tokenizer.model --out=/data/tfds_store

Sources: `--sources` (domain=glob pairs: every file belongs to its domain), `--mixed` (Pile-style jsonl files
whose records name their domain at `--domain_field`) and `--tfds` (a prepared TFDS dataset, read with
tfds.data_source, never downloaded). Without `--tokenizer`, a SentencePiece tokenizer is trained on a seeded
sample of the sources (`--tokenizer_sample_chars` per domain) and saved in the store. Every document goes to the
train, select (what mixing methods may look at) or val (reported) split by a hash of the seed and its position.
On every host of a pod run the same command with BIMIX_JAX_DISTRIBUTED=1 (hosts take disjoint units; process
0 writes index.json last); hosts launched without jax.distributed pass --process_index and --process_count.
Prints the tokens per domain and split, tokens/s and the peak memory of this process and of its workers.
"""

from __future__ import annotations

import glob
import json
import resource
import time
from collections.abc import Sequence

from absl import flags

from experiments import cli

_SOURCES = flags.DEFINE_string("sources", "", "domain=glob pairs separated by ';' (jsonl[.gz|.zst] or .txt files).")
_MIXED = flags.DEFINE_string("mixed", "", "Globs (';'-separated) of jsonl files whose records name their domain.")
_TFDS = flags.DEFINE_string("tfds", "", "A prepared TFDS dataset, name[/config][:version].")
_TFDS_SPLIT = flags.DEFINE_string("tfds_split", "train", "TFDS split.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = the default).")
_DOMAIN_FIELD = flags.DEFINE_string("domain_field", "meta.pile_set_name",
                                    "--mixed and --tfds: the dotted field naming a record's domain.")
_DOMAINS = flags.DEFINE_list("domains", [], "Keep only these domains (default: all).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "SentencePiece model file ('' = train one into the store).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 32768, "Vocabulary of a trained tokenizer.")
_SAMPLE_CHARS = flags.DEFINE_integer("tokenizer_sample_chars", 2_000_000,
                                     "Characters per domain in a trained tokenizer's sample.")
_OUT = flags.DEFINE_string("out", None, "Store folder (created; rerun to resume).")
_RECORD_TOKENS = flags.DEFINE_integer("record_tokens", 4096, "Tokens per ArrayRecord record.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.01, "Share of documents held out for validation.")
_SELECT_FRACTION = flags.DEFINE_float("select_fraction", 0.01,
                                      "Share of documents held out for selection (law fits, online feedback).")
_SEED = flags.DEFINE_integer("seed", 0, "Decides each document's split and the tokenizer's sample.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "Text field of jsonl records and TFDS examples.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Local tokenizer processes.")
_PROCESS_INDEX = flags.DEFINE_integer("process_index", -1, "This host's index (-1: jax.process_index()).")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", -1, "Number of hosts (-1: jax.process_count()).")
_WAIT_S = flags.DEFINE_integer("wait_s", 86400, "Seconds to wait for the other hosts (tokenizer, shards).")
flags.mark_flags_as_required(["out"])


def _globs(flag: str, text: str) -> list[str]:
    files = []
    for pattern in filter(None, (x.strip() for x in text.split(";"))):
        found = sorted(glob.glob(pattern, recursive=True))
        if not found:
            cli.fail(f"--{flag}: no file matches {pattern!r}; fix the glob")
        files.extend(found)
    return files


def _parse_sources(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in filter(None, (x.strip() for x in text.split(";"))):
        domain, sep, pattern = item.partition("=")
        if not sep or not domain.strip():
            cli.fail(f"--sources: {item!r} is not domain=glob; write it like 'code=/data/code/*.jsonl'")
        files = sorted(glob.glob(pattern.strip(), recursive=True))
        if not files:
            cli.fail(f"--sources: no file matches {pattern.strip()!r} for domain {domain.strip()!r}; fix the glob")
        out.setdefault(domain.strip(), []).extend(files)
    return out


def _peak_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"this_process": round(own, 1), "largest_worker": round(workers, 1)}


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import checks
    from bimix_jax.data import store
    from bimix_jax.data.tokenizer import Tokenizer
    from bimix_jax.errors import InputError

    # Every flag is checked, under its own name, before anything is read, tokenized or written.
    checks.output_dir("--out", _OUT.value)
    if _TOKENIZER.value:
        Tokenizer.load(checks.input_file("--tokenizer", _TOKENIZER.value, "SentencePiece model"), field="--tokenizer")
    else:
        checks.in_range("--vocab_size", _VOCAB_SIZE.value, low=300, integer=True, hint="give at least 300")
        checks.in_range("--tokenizer_sample_chars", _SAMPLE_CHARS.value, low=1, integer=True,
                        hint="give a positive number of characters")
    checks.in_range("--record_tokens", _RECORD_TOKENS.value, low=2, integer=True, hint="give at least 2")
    for flag, value in (("--val_fraction", _VAL_FRACTION.value), ("--select_fraction", _SELECT_FRACTION.value)):
        checks.in_range(flag, value, low=0, high=1, high_open=True, hint="give a share in [0, 1)")
    checks.in_range("--workers", _WORKERS.value, low=1, integer=True, hint="give at least 1")
    checks.in_range("--wait_s", _WAIT_S.value, low=0, integer=True, hint="give seconds >= 0")
    sources = _parse_sources(_SOURCES.value)
    mixed = _globs("mixed", _MIXED.value)
    if not sources and not mixed and not _TFDS.value:
        raise InputError("no input: give --sources (domain=glob;...), --mixed (globs of files naming their domain "
                         "at --domain_field) or --tfds (a prepared TFDS dataset)")
    import jax

    spec = store.StoreSpec(sources=sources, mixed=mixed, tfds=_TFDS.value, tfds_split=_TFDS_SPLIT.value,
                           tfds_data_dir=_TFDS_DATA_DIR.value, domain_field=_DOMAIN_FIELD.value,
                           domains=tuple(_DOMAINS.value), tokenizer_path=_TOKENIZER.value,
                           vocab_size=_VOCAB_SIZE.value, tokenizer_sample_chars=_SAMPLE_CHARS.value,
                           record_tokens=_RECORD_TOKENS.value, val_fraction=_VAL_FRACTION.value,
                           select_fraction=_SELECT_FRACTION.value, seed=_SEED.value, text_field=_TEXT_FIELD.value)
    index = _PROCESS_INDEX.value if _PROCESS_INDEX.value >= 0 else jax.process_index()
    count = _PROCESS_COUNT.value if _PROCESS_COUNT.value >= 0 else jax.process_count()
    t = time.perf_counter()
    done = store.prepare_store(spec, _OUT.value, process_index=index, process_count=count, workers=_WORKERS.value,
                               wait_s=_WAIT_S.value)
    seconds = time.perf_counter() - t
    tokens = sum(s["tokens"] for m in done for per in m["domains"].values() for s in per.values())
    worker_s = sum(m["seconds"] for m in done)
    summary = {"process": f"{index}/{count}", "units": len(done), "seconds": round(seconds, 1), "tokens": tokens,
               "tokens_per_s": round(tokens / seconds) if seconds and tokens else None,
               "tokens_per_worker_s": round(tokens / worker_s) if worker_s and tokens else None,
               "peak_rss_mb": _peak_mb()}
    if index == 0:
        deadline = time.time() + _WAIT_S.value
        while store.pending_units(spec, _OUT.value) and time.time() < deadline:
            time.sleep(10)
        result = store.finalize_store(spec, _OUT.value)
        summary["store"] = _OUT.value
        summary["tokens_by_domain"] = {d: {s: sum(x["tokens"] for x in v) for s, v in per.items()}
                                       for d, per in result["domains"].items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)
