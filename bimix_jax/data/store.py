"""The token store: a corpus tokenized once, streaming, into per-domain ArrayRecord shards.

Layout of a store directory:
  spec.json                                 the `StoreSpec` it is made from (another spec is refused)
  tokenizer.model                           the SentencePiece model, when the store trained its own
  <domain>/<split>-<unit:05d>.array_record  records of `record_tokens` token ids (uint16 or uint32 bytes; the
                                            last record of a shard may be shorter); split: train, select, val
  units/<unit:05d>.done.json                completion marker of a work unit: its counts per domain and split
  index.json                                written last, by process 0, once every marker exists

Work units (`bimix_jax.data.store_sources`) are input files or ranges of TFDS records; a unit writes one shard
per (domain, split) it holds. Units are dealt round-robin to processes (`process_index` of `process_count`,
e.g. `jax.process_index()` on each host) and to local worker processes, so hosts never write the same file.
Each shard is written under a temporary name and renamed, then the unit's marker is written atomically: a
killed preparation resumes by skipping units whose markers exist.

Documents are read one at a time and encoded in batches of at most `batch_chars` characters, so memory is
bounded by the batch and one record, whatever the corpus size. A document's split is a hash of (seed, unit,
document number) against `val_fraction` and `select_fraction`: stateless, so any process decides alike. Three
splits per domain: `train`; `select`, what a method may look at (law fits, online feedback, tuning); `val`,
the reported validation split. Token positions inside a domain are 64-bit: a domain may hold any number of
tokens.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bimix_jax import atomic
from bimix_jax.data import store_sources
from bimix_jax.data.store_sources import Unit
from bimix_jax.errors import InputError

__all__ = ["StoreSpec", "TokenStore", "prepare_store", "finalize_store", "open_store", "pending_units", "SPLITS"]

SPLITS = ("train", "select", "val")
_VERSION = 2
_WRITER_OPTIONS = "group_size:1"  # One record per chunk: cheap random access (grain's recommendation).
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # Random access, no read-ahead.
TOKENIZER_FILE = "tokenizer.model"


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """What a store is made from; a store directory holding another spec is refused."""

    sources: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)  # domain -> files
    mixed: Sequence[str] = ()  # jsonl files whose records name their domain at `domain_field`
    tfds: str = ""  # TFDS dataset 'name[/config][:version]' (tfds.data_source, never downloaded)
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    tfds_shards: int = 16  # work units over the TFDS records
    domain_field: str = "meta.pile_set_name"  # mixed files and TFDS: where a record names its domain
    domains: Sequence[str] = ()  # keep only these domains (all when empty)
    tokenizer_path: str = ""  # SentencePiece model; '' trains one into <store>/tokenizer.model
    vocab_size: int = 32768  # when training the tokenizer
    tokenizer_sample_chars: int = 2_000_000  # per domain, when training the tokenizer
    record_tokens: int = 4096  # tokens per record
    val_fraction: float = 0.01  # share of documents held out for validation (reported)
    select_fraction: float = 0.01  # share of documents held out for selection (what methods may look at)
    seed: int = 0  # decides the split of each document and the tokenizer's sample
    text_field: str = "text"  # text field of jsonl records and TFDS examples

    def __post_init__(self):
        if not self.sources and not self.mixed and not self.tfds:
            raise InputError("store sources are empty; give --sources, --mixed or --tfds")
        for d, files in self.sources.items():
            if not files:
                raise InputError(f"store sources: domain {d!r} has no input files; give files or drop it")
        if self.record_tokens < 2:
            raise InputError(f"record_tokens={self.record_tokens} must be >= 2")
        for name in ("val_fraction", "select_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        if self.val_fraction + self.select_fraction >= 1:
            raise InputError("val_fraction + select_fraction must be below 1: some documents must stay for training")
        if not self.tokenizer_path and self.vocab_size < 300:
            raise InputError(f"vocab_size={self.vocab_size} is too small for a trained tokenizer; use >= 300")
        if self.tfds_shards < 1:
            raise InputError(f"tfds_shards={self.tfds_shards} must be >= 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sources"] = {k: [os.fspath(f) for f in v] for k, v in sorted(self.sources.items())}
        d["mixed"], d["domains"] = [os.fspath(f) for f in self.mixed], list(self.domains)
        return {**d, "version": _VERSION}


def _shard_path(out_dir: str, domain: str, split: str, unit: int) -> str:
    return os.path.join(out_dir, domain, f"{split}-{unit:05d}.array_record")


def _marker_path(out_dir: str, unit: int) -> str:
    return os.path.join(out_dir, "units", f"{unit:05d}.done.json")


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class _ShardWriter:
    """Appends token ids to one shard as fixed-length records; renames into place on `finish`."""

    def __init__(self, path: str, record_tokens: int, dtype: np.dtype):
        from array_record.python.array_record_module import ArrayRecordWriter

        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path, self.tmp = path, path + ".partial"
        self.writer = ArrayRecordWriter(self.tmp, _WRITER_OPTIONS)
        self.record_tokens, self.dtype = record_tokens, dtype
        self.pending: list[np.ndarray] = []
        self.pending_size = 0
        self.tokens = self.records = self.docs = 0

    def add(self, ids: np.ndarray, docs: int) -> None:
        self.docs += docs
        self.tokens += ids.size
        self.pending.append(ids.astype(self.dtype))
        self.pending_size += ids.size
        if self.pending_size >= self.record_tokens:
            buf = np.concatenate(self.pending)
            n_full = buf.size // self.record_tokens * self.record_tokens
            for rec in buf[:n_full].reshape(-1, self.record_tokens):
                self.writer.write(rec.tobytes())
                self.records += 1
            self.pending, self.pending_size = [buf[n_full:]], buf.size - n_full

    def finish(self) -> dict:
        if self.pending_size:
            self.writer.write(np.concatenate(self.pending).tobytes())
            self.records += 1
        self.writer.close()
        os.replace(self.tmp, self.path)
        return {"tokens": self.tokens, "records": self.records, "docs": self.docs}


def _run_unit(spec: StoreSpec, out_dir: str, unit: Unit, tokenizer_path: str, batch_chars: int) -> dict:
    """Tokenizes one unit into its shards, then writes its marker; returns the marker."""
    from bimix_jax.data.tokenizer import Tokenizer

    start = time.perf_counter()
    tok = Tokenizer.load(tokenizer_path)
    dtype = _token_dtype(tok.vocab_size)
    writers: dict[tuple[str, str], _ShardWriter] = {}
    batch: dict[tuple[str, str], list[str]] = {}
    chars: dict[tuple[str, str], int] = {}

    def flush(key: tuple[str, str]) -> None:
        if batch.get(key):
            if key not in writers:
                writers[key] = _ShardWriter(_shard_path(out_dir, key[0], key[1], unit.index), spec.record_tokens, dtype)
            writers[key].add(tok.encode_documents(batch[key], num_threads=1), len(batch[key]))
            batch[key], chars[key] = [], 0

    docs = store_sources.documents(unit, text_field=spec.text_field, domain_field=spec.domain_field,
                                   tfds_data_dir=spec.tfds_data_dir, wanted=spec.domains)
    n_chars = 0
    for i, (domain, text) in enumerate(docs):
        key = (domain, store_sources.split_of(spec.seed, unit, i, spec.val_fraction, spec.select_fraction))
        batch.setdefault(key, []).append(text)
        chars[key] = chars.get(key, 0) + len(text)
        n_chars += len(text)
        if chars[key] >= batch_chars:
            flush(key)
    for key in list(batch):
        flush(key)
    counts: dict[str, dict[str, dict]] = {}
    for (domain, split), w in sorted(writers.items()):
        counts.setdefault(domain, {})[split] = w.finish()
    marker = {"unit": unit.index, "source": unit.source, "domains": counts, "chars": n_chars,
              "seconds": round(time.perf_counter() - start, 3)}
    atomic.write_json(_marker_path(out_dir, unit.index), marker)
    return marker


def _check_spec(spec: StoreSpec, out_dir: str) -> None:
    path = os.path.join(out_dir, "spec.json")
    if os.path.exists(path):
        if atomic.read_json(path, what="store spec") != atomic.to_jsonable(spec.to_dict()):
            raise InputError(f"{out_dir} holds a store of another spec; use a fresh directory or delete it")
    else:
        atomic.write_json(path, spec.to_dict())  # Same content from every process: a race is harmless.


def pending_units(spec: StoreSpec, out_dir: str, units: Sequence[Unit] | None = None) -> list[Unit]:
    """Units without a completion marker."""
    units = store_sources.make_units(spec) if units is None else units
    return [u for u in units if not os.path.exists(_marker_path(out_dir, u.index))]


def tokenizer_for(spec: StoreSpec, out_dir: str, units: Sequence[Unit], *, process_index: int = 0,
                  wait_s: float = 86400.0) -> str:
    """The tokenizer's path: the given one, or `<out_dir>/tokenizer.model`, trained by process 0 on a seeded
    sample of the sources (`store_sources.tokenizer_sample`); other processes wait for it."""
    from bimix_jax.data.tokenizer import Tokenizer, train_tokenizer

    if spec.tokenizer_path:
        Tokenizer.load(spec.tokenizer_path, field="--tokenizer")
        return spec.tokenizer_path
    path = os.path.join(out_dir, TOKENIZER_FILE)
    if os.path.exists(path):
        return path
    if process_index != 0:
        deadline = time.time() + wait_s
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(5)
        if not os.path.exists(path):
            raise InputError(f"process 0 has not written {path}; start every process, or pass --tokenizer")
        return path
    sample = store_sources.tokenizer_sample(spec, units, chars_per_domain=spec.tokenizer_sample_chars)
    train_tokenizer(sample, vocab_size=spec.vocab_size, sample_chars=spec.tokenizer_sample_chars,
                    seed=spec.seed).save(path)
    return path


def prepare_store(spec: StoreSpec, out_dir: str, *, process_index: int = 0, process_count: int = 1,
                  workers: int = 1, batch_chars: int = 1 << 22, wait_s: float = 86400.0) -> list[dict]:
    """Tokenizes this process's share of the pending units (`workers` local processes); returns their markers.

    Call it on every host with its process index, then `finalize_store` on process 0 once all are done.
    """
    if not 0 <= process_index < process_count:
        raise InputError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    units = store_sources.make_units(spec)
    store_sources.check_inputs(units)
    _check_spec(spec, out_dir)
    tok_path = tokenizer_for(spec, out_dir, units, process_index=process_index, wait_s=wait_s)
    pending = {u.index for u in pending_units(spec, out_dir, units)}
    todo = [u for u in units if u.index % process_count == process_index and u.index in pending]
    if workers <= 1 or len(todo) <= 1:
        return [_run_unit(spec, out_dir, u, tok_path, batch_chars) for u in todo]
    ctx = multiprocessing.get_context("spawn")  # No fork of a process that may hold JAX threads.
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
        futures = [pool.submit(_run_unit, spec, out_dir, u, tok_path, batch_chars) for u in todo]
        return [f.result() for f in futures]


def finalize_store(spec: StoreSpec, out_dir: str) -> dict:
    """Writes `index.json` once every unit is complete (process 0 only); returns the index."""
    units = store_sources.make_units(spec)
    missing = pending_units(spec, out_dir, units)
    if missing:
        raise InputError(f"{len(missing)} store units are not done (first: {missing[0].source}); run prepare_store "
                         "on every process first")
    from bimix_jax.data.tokenizer import Tokenizer

    tok_path = spec.tokenizer_path or os.path.join(out_dir, TOKENIZER_FILE)
    tok = Tokenizer.load(tok_path)
    domains: dict[str, dict[str, list]] = {}
    for u in units:
        marker = atomic.read_json(_marker_path(out_dir, u.index), what="store marker")
        for d, per in marker["domains"].items():
            for s, info in per.items():
                if info["tokens"]:
                    domains.setdefault(d, {k: [] for k in SPLITS})[s].append(
                        {"file": os.path.basename(_shard_path(out_dir, d, s, u.index)), **info})
    if not domains:
        raise InputError(f"the sources of {out_dir} hold no documents (of the selected domains); check the sources")
    index = {"version": _VERSION, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
             "dtype": _token_dtype(tok.vocab_size).name, "record_tokens": spec.record_tokens,
             "tokenizer": os.path.abspath(tok_path), "tokenizer_fingerprint": tok.fingerprint(),
             "domains": dict(sorted(domains.items()))}
    atomic.write_json(os.path.join(out_dir, "index.json"), index)
    return index


class _Split:
    """Random access to the token stream of one domain and split (shards read lazily)."""

    def __init__(self, root: str, shards: Sequence[Mapping], record_tokens: int, dtype: np.dtype):
        self.paths = [os.path.join(root, s["file"]) for s in shards]
        self.starts = np.concatenate([[0], np.cumsum([int(s["tokens"]) for s in shards], dtype=np.int64)])
        self.docs = sum(int(s.get("docs", 0)) for s in shards)
        self.record_tokens, self.dtype = record_tokens, dtype
        self._readers: dict[int, object] = {}

    @property
    def num_tokens(self) -> int:
        return int(self.starts[-1])

    def _reader(self, i: int):
        r = self._readers.get(i)
        if r is None:
            from array_record.python.array_record_module import ArrayRecordReader

            r = self._readers[i] = ArrayRecordReader(self.paths[i], _READER_OPTIONS)
        return r

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int32 (may span records and shards)."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {self.num_tokens})")
        out, pos, end = [], start, start + length
        while pos < end:
            shard = bisect.bisect_right(self.starts, pos) - 1
            local = pos - int(self.starts[shard])
            rec_lo = local // self.record_tokens
            local_stop = min(end, int(self.starts[shard + 1])) - int(self.starts[shard])
            rec_hi = (local_stop - 1) // self.record_tokens + 1
            recs = self._reader(shard).read(list(range(rec_lo, rec_hi)))
            buf = np.frombuffer(b"".join(recs), dtype=self.dtype)
            take = buf[local - rec_lo * self.record_tokens:][: end - pos]
            out.append(take)
            pos += take.size
        return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)

    def chunks(self, chunk_records: int = 256) -> Iterator[np.ndarray]:
        """The whole stream, in order, as int32 chunks of about `chunk_records` records."""
        for i in range(len(self.paths)):
            r = self._reader(i)
            n = r.num_records()
            for lo in range(0, n, chunk_records):
                recs = r.read(lo, min(n, lo + chunk_records))
                yield np.frombuffer(b"".join(recs), dtype=self.dtype).astype(np.int32)


class TokenStore:
    """A finished store: per-domain, per-split random access and streaming."""

    def __init__(self, root: str, index: Mapping):
        self.root, self.index = root, index
        self.domains = tuple(index["domains"])
        self.vocab_size, self.eos_id = int(index["vocab_size"]), int(index["eos_id"])
        dtype = np.dtype(index["dtype"])
        self._splits = {(d, s): _Split(os.path.join(root, d), index["domains"][d].get(s, []),
                                       int(index["record_tokens"]), dtype) for d in self.domains for s in SPLITS}

    @property
    def tokenizer_path(self) -> str:
        return str(self.index["tokenizer"])

    def split(self, domain: str, split: str = "train") -> _Split:
        if split not in SPLITS:
            raise InputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return self._splits[(domain, split)]

    def token_counts(self, split: str = "train") -> dict[str, int]:
        return {d: self.split(d, split).num_tokens for d in self.domains}

    def doc_counts(self, split: str = "train") -> dict[str, int]:
        return {d: self.split(d, split).docs for d in self.domains}


def open_store(root: str) -> TokenStore:
    path = os.path.join(root, "index.json")
    if not os.path.exists(path):
        raise InputError(f"{root} holds no finished token store ({path} is absent); run "
                         "experiments.prepare_store first")
    index = atomic.read_json(path, what="token store index")
    if index.get("version") != _VERSION:
        raise InputError(f"{path} has store format {index.get('version')}, this code reads {_VERSION}; rebuild the "
                         "store with experiments.prepare_store into a fresh folder")
    return TokenStore(root, index)
