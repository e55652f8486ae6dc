"""`prepare_data(spec, workdir)`: from a `DataSpec` to tokenized per-domain buffers, cached in the workdir.

`<workdir>/data/` holds, each written atomically:
  tokenizer.model   the SentencePiece model (trained on the corpus, or a copy of `data.tokenizer_path`)
  corpus.json.gz    the documents per domain and split (what the tokens were made from)
  tokens.npz        `DomainTokens` (train/val buffers per domain, and select with a selection split)
  stats.json        per-domain counts, vocabulary, fingerprints of tokens and tokenizer
  spec.json         the `DataSpec`; written last, so its presence marks a complete cache
A rerun with the same spec loads these files instead of rebuilding. A workdir whose `spec.json` differs
is refused with an `InputError`; nothing is written when the input is bad. A cache written before a field was
added to `DataSpec` reads as that field's default, so older workdirs stay loadable. With `data.tokenizer_path`
the given model is used (and copied) as it is: `data.vocab_size` and `data.tokenizer_sample_chars`
only matter when a tokenizer is trained.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from bimix_jax import atomic
from bimix_jax.data.corpus import Corpus
from bimix_jax.data.readers import load_corpus
from bimix_jax.data.spec import DataSpec
from bimix_jax.data.tokenizer import Tokenizer, train_tokenizer
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError

__all__ = ["PreparedData", "prepare_data", "load_prepared", "load_corpus", "describe", "data_dir"]

_FILES = ("tokenizer.model", "corpus.json.gz", "tokens.npz", "stats.json", "spec.json")


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedData:
    """Everything downstream needs from the data layer."""

    spec: DataSpec
    tokens: DomainTokens
    corpus: Corpus
    tokenizer_path: str
    # domain -> source_name, {train,val}_{docs,chars,tokens} (and select_* with a selection split)
    # (token counts are buffer lengths: documents plus one eos each).
    stats: Mapping[str, Mapping[str, Any]]
    from_cache: bool = False

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)

    # What every data source answers (see `bimix_jax.data.source`).
    @property
    def run_data(self) -> DomainTokens:
        return self.tokens

    @property
    def domains(self) -> tuple[str, ...]:
        return self.tokens.domains

    @property
    def vocab_size(self) -> int:
        return self.tokens.vocab_size

    def token_counts(self, split: str = "train") -> dict[str, int]:
        return self.tokens.token_counts(split)

    def fingerprint(self) -> str:
        return self.tokens.fingerprint()

    def entropy_streams(self) -> dict[str, Any]:
        return {d: self.tokens.train[d] for d in self.tokens.domains}

    def documents(self, domain: str, split: str = "train", **_) -> tuple[str, ...]:
        return self.corpus.documents(domain, split)


def data_dir(workdir: str) -> str:
    return os.path.join(os.fspath(workdir), "data")


def _domain_stats(corpus: Corpus, tokens: DomainTokens) -> dict[str, dict[str, Any]]:
    out = {}
    splits = corpus.splits
    docs = {s: corpus.num_docs(s) for s in splits}
    chars = {s: corpus.num_chars(s) for s in splits}
    toks = {s: tokens.token_counts(s) for s in splits}
    for d in corpus.domains:
        out[d] = {"source_name": corpus.raw_names[d]}
        for s in splits:
            out[d].update({f"{s}_docs": docs[s][d], f"{s}_chars": chars[s][d], f"{s}_tokens": toks[s][d]})
    return out


def _spec_difference(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}={old.get(k, '(absent)')!r} there, {new.get(k, '(absent)')!r} now" for k in keys
             if old.get(k) != new.get(k)]
    return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")


def _read_cache(spec: DataSpec, ddir: str) -> PreparedData | None:
    """The cached data when `ddir` holds a complete cache for `spec`; None when there is none."""
    spec_path = os.path.join(ddir, "spec.json")
    if not os.path.exists(spec_path):
        return None
    cached = _with_defaults(atomic.read_json(spec_path, what="cached data spec"))
    if cached != spec.to_dict():
        raise InputError(
            f"{ddir} holds data prepared from another data spec ({_spec_difference(cached, spec.to_dict())}); "
            f"rerun with the same data config, use a fresh workdir, or delete {ddir} to rebuild"
        )
    if not all(os.path.exists(os.path.join(ddir, f)) for f in _FILES):
        return None  # Files were removed by hand: rebuild them for the same spec.
    return _load_files(spec, ddir)


def _with_defaults(cached: Any) -> Any:
    """A cached spec with the fields added to `DataSpec` since it was written filled in with their defaults."""
    if not isinstance(cached, dict):
        return cached
    return {**{k: v for k, v in DataSpec().to_dict().items() if k not in cached}, **cached}


def _load_files(spec: DataSpec, ddir: str) -> PreparedData:
    tokens = DomainTokens.load(os.path.join(ddir, "tokens.npz"))
    tok_path = os.path.join(ddir, "tokenizer.model")
    tokenizer = Tokenizer.load(tok_path)
    tokenizer.check_tokens(tokens)
    stats = atomic.read_json(os.path.join(ddir, "stats.json"), what="data stats")
    if stats.get("tokens_fingerprint") != tokens.fingerprint():
        raise InputError(f"{ddir}/tokens.npz does not match {ddir}/stats.json; delete {ddir} to rebuild")
    try:
        with gzip.open(os.path.join(ddir, "corpus.json.gz"), "rt", encoding="utf-8") as f:
            corpus = Corpus.from_dict(json.load(f))
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise InputError(f"{ddir}/corpus.json.gz is corrupted ({e}); delete {ddir} to rebuild") from e
    if corpus.domains != tokens.domains:
        raise InputError(f"{ddir}/corpus.json.gz does not match {ddir}/tokens.npz; delete {ddir} to rebuild")
    return PreparedData(spec=spec, tokens=tokens, corpus=corpus, tokenizer_path=tok_path,
                        stats=stats["domains"], from_cache=True)


def prepare_data(spec: DataSpec, workdir: str, *, num_threads: int = -1, wait_s: float = 3600.0) -> PreparedData:
    """Reads, splits and tokenizes the corpus `spec` describes, or loads it from `<workdir>/data/`.

    In a multi-host job only process 0 reads and tokenizes; the others wait up to `wait_s` for its cache in the
    (shared) workdir and load it, so no host but one reads the corpus.
    """
    ddir = data_dir(workdir)
    hit = _read_cache(spec, ddir)
    if hit is not None:
        return hit
    if _process_index() != 0:
        return _wait_for_cache(spec, ddir, wait_s)
    corpus = load_corpus(spec)
    if spec.tokenizer_path:
        tokenizer = Tokenizer.load(spec.tokenizer_path)
    else:
        tokenizer = train_tokenizer(corpus.train, vocab_size=spec.vocab_size,
                                    sample_chars=spec.tokenizer_sample_chars, seed=spec.seed)
        if tokenizer.vocab_size < spec.vocab_size:  # SentencePiece stops when the sample has no more merges.
            raise InputError(
                f"data.vocab_size={spec.vocab_size} is more than this corpus yields ({tokenizer.vocab_size} pieces "
                f"from data.tokenizer_sample_chars={spec.tokenizer_sample_chars} per domain); set data.vocab_size "
                f"<= {tokenizer.vocab_size} or raise data.tokenizer_sample_chars")
    eos = tokenizer.eos_id
    train = {d: tokenizer.encode_documents(corpus.train[d], num_threads) for d in corpus.domains}
    val = {d: tokenizer.encode_documents(corpus.val[d], num_threads) for d in corpus.domains}
    select = {d: tokenizer.encode_documents(corpus.select[d], num_threads) for d in corpus.domains} \
        if corpus.select else {}
    tokens = DomainTokens(domains=corpus.domains, train=train, val=val, vocab_size=tokenizer.vocab_size,
                          eos_id=eos, select=select)
    stats = _domain_stats(corpus, tokens)

    # Input is good: write. spec.json goes first out and last in, so an interrupted write is rebuilt.
    spec_path = os.path.join(ddir, "spec.json")
    try:
        os.remove(spec_path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise InputError(f"cannot write to {ddir} ({e.strerror}); check that it is writable") from e
    tok_path = os.path.join(ddir, "tokenizer.model")
    tokenizer.save(tok_path)
    corpus_json = json.dumps(corpus.to_dict(), ensure_ascii=False).encode("utf-8", "surrogatepass")
    atomic.write_bytes(os.path.join(ddir, "corpus.json.gz"), gzip.compress(corpus_json, compresslevel=1, mtime=0))
    tokens.save(os.path.join(ddir, "tokens.npz"))
    atomic.write_json(os.path.join(ddir, "stats.json"), {
        "source": corpus.source, "vocab_size": tokens.vocab_size, "eos_id": tokens.eos_id,
        "tokens_fingerprint": tokens.fingerprint(), "tokenizer_fingerprint": tokenizer.fingerprint(),
        "tokenizer_from": spec.tokenizer_path or "trained", "domains": stats,
    })
    atomic.write_json(spec_path, spec.to_dict())
    return PreparedData(spec=spec, tokens=tokens, corpus=corpus, tokenizer_path=tok_path, stats=stats)


def _process_index() -> int:
    import jax

    return jax.process_index()


def _wait_for_cache(spec: DataSpec, ddir: str, wait_s: float) -> PreparedData:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        hit = _read_cache(spec, ddir)
        if hit is not None:
            return hit
        time.sleep(2)
    raise InputError(f"process {_process_index()} waited {wait_s:.0f} s for process 0 to prepare the data in {ddir}; "
                     "the workdir must be on a filesystem every host shares (or use data.source=store)")


def load_prepared(workdir: str) -> PreparedData:
    """The data a workdir was prepared with (its own `spec.json`); an `InputError` when there is none."""
    ddir = data_dir(workdir)
    spec_path = os.path.join(ddir, "spec.json")
    if not os.path.exists(spec_path):
        raise InputError(f"{workdir} holds no prepared data ({spec_path} is absent); run prepare_data first")
    spec = DataSpec.from_config(_with_defaults(atomic.read_json(spec_path, what="cached data spec")))
    return _load_files(spec, ddir)


def describe(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: domain, source name, documents, characters and tokens per split, chars/token."""
    splits = ("train", "select", "val") if any("select_docs" in s for s in stats.values()) else ("train", "val")
    names = " + ".join(splits)
    rows = [f"| domain | source name | documents ({names}) | characters ({names}) | tokens ({names}) | chars/token |",
            "|---|---|---:|---:|---:|---:|"]
    total = {k: [0] * len(splits) for k in ("docs", "chars", "tokens")}
    for d, s in stats.items():
        cells = []
        for k in ("docs", "chars", "tokens"):
            vals = [int(s[f"{sp}_{k}"]) for sp in splits]
            total[k] = [a + b for a, b in zip(total[k], vals)]
            cells.append(" + ".join(f"{v:,}" for v in vals))
        ratio = sum(s[f"{sp}_chars"] for sp in splits) / max(1, sum(s[f"{sp}_tokens"] for sp in splits))
        rows.append(f"| {d} | {s.get('source_name', d)} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    ratio = sum(total["chars"]) / max(1, sum(total["tokens"]))
    rows.append("| **total** | | " + " | ".join(" + ".join(f"{v:,}" for v in vals) for vals in total.values())
                + f" | {ratio:.2f} |")
    return "\n".join(rows)
