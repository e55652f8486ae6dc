r"""Tokenizes a corpus once into a token store (per-domain ArrayRecord shards); rerun to resume after a kill.

    python -m experiments.prepare_store --sources='code=/data/code/*.jsonl.zst;web=/data/web/*.jsonl.zst' \
        --tokenizer=workdirs/proxy/data/tokenizer.model --out=/data/store --workers=16
    # Every host of a pod, same command (hosts take disjoint files; process 0 writes index.json last):
    BIMIX_JAX_DISTRIBUTED=1 python -m experiments.prepare_store --sources=... --tokenizer=... --out=gs-fuse/store

Hosts launched without `jax.distributed` pass `--process_index` and `--process_count` themselves.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Sequence

from absl import flags

from experiments import cli

_SOURCES = flags.DEFINE_string("sources", None, "domain=glob pairs separated by ';' (jsonl[.gz|.zst] or .txt files).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "SentencePiece model file.")
_OUT = flags.DEFINE_string("out", None, "Store folder (created; rerun to resume).")
_RECORD_TOKENS = flags.DEFINE_integer("record_tokens", 4096, "Tokens per ArrayRecord record.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.01, "Share of documents held out for validation.")
_SEED = flags.DEFINE_integer("seed", 0, "Decides which documents are held out.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "Text field of jsonl records.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Local tokenizer processes.")
_PROCESS_INDEX = flags.DEFINE_integer("process_index", -1, "This host's index (-1: jax.process_index()).")
_PROCESS_COUNT = flags.DEFINE_integer("process_count", -1, "Number of hosts (-1: jax.process_count()).")
_WAIT_S = flags.DEFINE_integer("wait_s", 86400, "Process 0: seconds to wait for the other hosts' shards.")
flags.mark_flags_as_required(["sources", "tokenizer", "out"])


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
    if not out:
        cli.fail("--sources is empty; give domain=glob pairs separated by ';'")
    return out


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import checks
    from bimix_jax.data import store
    from bimix_jax.data.tokenizer import Tokenizer

    # Every flag is checked, under its own name, before anything is read, tokenized or written.
    checks.output_dir("--out", _OUT.value)
    Tokenizer.load(checks.input_file("--tokenizer", _TOKENIZER.value, "SentencePiece model"), field="--tokenizer")
    checks.in_range("--record_tokens", _RECORD_TOKENS.value, low=2, integer=True, hint="give at least 2")
    checks.in_range("--val_fraction", _VAL_FRACTION.value, low=0, high=1, high_open=True,
                      hint="give a share in [0, 1)")
    checks.in_range("--workers", _WORKERS.value, low=1, integer=True, hint="give at least 1")
    checks.in_range("--wait_s", _WAIT_S.value, low=0, integer=True, hint="give seconds >= 0")
    sources = _parse_sources(_SOURCES.value)
    import jax

    spec = store.StoreSpec(sources=sources, tokenizer_path=_TOKENIZER.value,
                           record_tokens=_RECORD_TOKENS.value, val_fraction=_VAL_FRACTION.value, seed=_SEED.value,
                           text_field=_TEXT_FIELD.value)
    index = _PROCESS_INDEX.value if _PROCESS_INDEX.value >= 0 else jax.process_index()
    count = _PROCESS_COUNT.value if _PROCESS_COUNT.value >= 0 else jax.process_count()
    t = time.perf_counter()
    done = store.prepare_store(spec, _OUT.value, process_index=index, process_count=count, workers=_WORKERS.value)
    print(f"process {index}/{count}: {len(done)} units tokenized in {time.perf_counter() - t:.1f} s")
    if index != 0:
        return
    deadline = time.time() + _WAIT_S.value
    while store.pending_units(spec, _OUT.value) and time.time() < deadline:
        time.sleep(10)
    result = store.finalize_store(spec, _OUT.value)
    counts = {d: {s: sum(x["tokens"] for x in v) for s, v in per.items()} for d, per in result["domains"].items()}
    print(json.dumps({"store": _OUT.value, "tokens": counts}, indent=2))


if __name__ == "__main__":
    cli.run(main)
