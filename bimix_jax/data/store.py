"""The token store: a corpus tokenized once, streaming, into per-domain ArrayRecord shards.

Layout of a store directory:
  <domain>/<split>-<unit:05d>.array_record   records of `record_tokens` token ids (uint16 or uint32 bytes;
                                            the last record of a shard may be shorter)
  <domain>/<split>-<unit:05d>.done.json      completion marker: token, record and document counts
  index.json                                written last, by process 0, once every marker exists

A work unit is one input file of one domain; it writes one shard per split. Units are dealt round-robin
to processes (`process_index` of `process_count`, e.g. `jax.process_index()` on each host), so hosts
never write the same file. Each shard is written under a temporary name and renamed, then its marker is
written atomically: a killed preparation resumes by skipping units whose markers exist.

Documents are read one at a time and encoded in batches of at most `batch_chars` characters, so memory
is bounded by the batch and one record, whatever the corpus size. A document goes to the validation split
when a hash of (seed, domain, file, document number) falls below `val_fraction`: stateless, so any
process decides alike. Token positions inside a domain are 64-bit: a domain may hold any number of tokens.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import multiprocessing
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bimix_jax import atomic
from bimix_jax.errors import InputError

__all__ = ["StoreSpec", "TokenStore", "prepare_store", "finalize_store", "open_store", "pending_units"]

SPLITS = ("train", "val")
_VERSION = 1
_WRITER_OPTIONS = "group_size:1"  # One record per chunk: cheap random access (grain's recommendation).
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # Random access, no read-ahead.


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """What a store is made from; a store directory holding another spec is refused."""

    sources: Mapping[str, Sequence[str]]  # domain -> input files (.jsonl[.gz|.zst] or .txt, one doc per file)
    tokenizer_path: str  # SentencePiece model
    record_tokens: int = 4096  # tokens per record
    val_fraction: float = 0.01  # share of documents held out for validation
    seed: int = 0  # decides the validation documents
    text_field: str = "text"  # text field of jsonl records

    def __post_init__(self):
        if not self.sources:
            raise InputError("store sources are empty; give at least one domain with input files")
        for d, files in self.sources.items():
            if not files:
                raise InputError(f"store sources: domain {d!r} has no input files; give files or drop it")
        if self.record_tokens < 2:
            raise InputError(f"record_tokens={self.record_tokens} must be >= 2")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"val_fraction={self.val_fraction} must lie in [0, 1)")

    def units(self) -> list[tuple[str, int, str]]:
        """(domain, unit number, file) of every work unit, in a fixed order."""
        return [(d, i, os.fspath(f)) for d in sorted(self.sources) for i, f in enumerate(self.sources[d])]

    def to_dict(self) -> dict:
        return {"sources": {d: [os.fspath(f) for f in fs] for d, fs in sorted(self.sources.items())},
                "tokenizer_path": os.fspath(self.tokenizer_path), "record_tokens": self.record_tokens,
                "val_fraction": self.val_fraction, "seed": self.seed, "text_field": self.text_field,
                "version": _VERSION}


def _shard_path(out_dir: str, domain: str, split: str, unit: int) -> str:
    return os.path.join(out_dir, domain, f"{split}-{unit:05d}.array_record")


def _marker_path(out_dir: str, domain: str, split: str, unit: int) -> str:
    return os.path.join(out_dir, domain, f"{split}-{unit:05d}.done.json")


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _documents(path: str, text_field: str) -> Iterator[str]:
    """The documents of one input file, streamed."""
    from bimix_jax.data import readers  # The jsonl reader streams records (gz/zst aware).

    if path.endswith(readers._JSONL_SUFFIXES):  # noqa: SLF001 - same package.
        for _, record in readers._jsonl_records(path):  # noqa: SLF001
            text = readers._record_text(record, text_field, path)  # noqa: SLF001
            if text.strip():
                yield text
    elif path.endswith(".txt"):
        text = readers._read_text_file(path)  # noqa: SLF001
        if text.strip():
            yield text
    else:
        raise InputError(f"store input {path} is neither .jsonl[.gz|.zst] nor .txt; convert it or drop it")


def _is_val(seed: int, domain: str, unit: int, doc: int, val_fraction: float) -> bool:
    h = zlib.crc32(f"{seed}|{domain}|{unit}|{doc}".encode())
    return h < val_fraction * 2**32


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


def _run_unit(spec: StoreSpec, out_dir: str, domain: str, unit: int, path: str, batch_chars: int) -> str:
    """Tokenizes one input file into its train and val shards, then writes their markers."""
    from bimix_jax.data.tokenizer import Tokenizer

    tok = Tokenizer.load(spec.tokenizer_path)
    dtype = _token_dtype(tok.vocab_size)
    writers = {s: _ShardWriter(_shard_path(out_dir, domain, s, unit), spec.record_tokens, dtype) for s in SPLITS}
    batch: dict[str, list[str]] = {s: [] for s in SPLITS}
    chars = {s: 0 for s in SPLITS}

    def flush(split: str) -> None:
        if batch[split]:
            writers[split].add(tok.encode_documents(batch[split], num_threads=1), len(batch[split]))
            batch[split], chars[split] = [], 0

    for i, text in enumerate(_documents(path, spec.text_field)):
        split = "val" if _is_val(spec.seed, domain, unit, i, spec.val_fraction) else "train"
        batch[split].append(text)
        chars[split] += len(text)
        if chars[split] >= batch_chars:
            flush(split)
    for s in SPLITS:
        flush(s)
    for s in SPLITS:
        info = writers[s].finish()
        atomic.write_json(_marker_path(out_dir, domain, s, unit), {**info, "source": path})
    return f"{domain}/{unit}"


def _check_spec(spec: StoreSpec, out_dir: str) -> None:
    path = os.path.join(out_dir, "spec.json")
    if os.path.exists(path):
        if atomic.read_json(path, what="store spec") != atomic.to_jsonable(spec.to_dict()):
            raise InputError(f"{out_dir} holds a store of another spec; use a fresh directory or delete it")
    else:
        atomic.write_json(path, spec.to_dict())  # Same content from every process: a race is harmless.


def pending_units(spec: StoreSpec, out_dir: str) -> list[tuple[str, int, str]]:
    """Units without both completion markers."""
    return [u for u in spec.units()
            if not all(os.path.exists(_marker_path(out_dir, u[0], s, u[1])) for s in SPLITS)]


def prepare_store(spec: StoreSpec, out_dir: str, *, process_index: int = 0, process_count: int = 1,
                  workers: int = 1, batch_chars: int = 1 << 22) -> list[str]:
    """Tokenizes this process's share of the pending units (`workers` local processes); returns them.

    Call it on every host with its process index, then `finalize_store` on process 0 once all are done.
    """
    if not 0 <= process_index < process_count:
        raise InputError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    from bimix_jax.data.tokenizer import Tokenizer

    Tokenizer.load(spec.tokenizer_path)  # Fails early on a bad tokenizer path.
    for _, _, path in spec.units():
        if not os.path.exists(path):
            raise InputError(f"store input {path} does not exist; fix data sources")
    _check_spec(spec, out_dir)
    pending = set(pending_units(spec, out_dir))
    todo = [u for j, u in enumerate(spec.units()) if j % process_count == process_index and u in pending]
    if workers <= 1 or len(todo) <= 1:
        return [_run_unit(spec, out_dir, d, i, p, batch_chars) for d, i, p in todo]
    ctx = multiprocessing.get_context("spawn")  # No fork of a process that may hold JAX threads.
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
        futures = [pool.submit(_run_unit, spec, out_dir, d, i, p, batch_chars) for d, i, p in todo]
        return [f.result() for f in futures]


def finalize_store(spec: StoreSpec, out_dir: str) -> dict:
    """Writes `index.json` once every unit is complete (process 0 only); returns the index."""
    missing = pending_units(spec, out_dir)
    if missing:
        raise InputError(f"{len(missing)} store units are not done (first: {missing[0][0]}/{missing[0][2]}); "
                         "run prepare_store on every process first")
    from bimix_jax.data.tokenizer import Tokenizer

    tok = Tokenizer.load(spec.tokenizer_path)
    domains = {}
    for d in sorted(spec.sources):
        per = {}
        for s in SPLITS:
            shards = []
            for i in range(len(spec.sources[d])):
                m = atomic.read_json(_marker_path(out_dir, d, s, i), what="store marker")
                if m["tokens"]:
                    shards.append({"file": os.path.basename(_shard_path(out_dir, d, s, i)), "tokens": m["tokens"],
                                   "records": m["records"], "docs": m["docs"]})
            per[s] = shards
        domains[d] = per
    index = {"version": _VERSION, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
             "dtype": _token_dtype(tok.vocab_size).name, "record_tokens": spec.record_tokens,
             "tokenizer_fingerprint": tok.fingerprint(), "domains": domains}
    atomic.write_json(os.path.join(out_dir, "index.json"), index)
    return index


class _Split:
    """Random access to the token stream of one domain and split (shards read lazily)."""

    def __init__(self, root: str, shards: Sequence[Mapping], record_tokens: int, dtype: np.dtype):
        self.paths = [os.path.join(root, s["file"]) for s in shards]
        self.starts = np.concatenate([[0], np.cumsum([int(s["tokens"]) for s in shards], dtype=np.int64)])
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
        return np.concatenate(out).astype(np.int32)

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
        self._splits = {(d, s): _Split(os.path.join(root, d), index["domains"][d][s], int(index["record_tokens"]),
                                       dtype) for d in self.domains for s in SPLITS}

    def split(self, domain: str, split: str = "train") -> _Split:
        return self._splits[(domain, split)]

    def token_counts(self, split: str = "train") -> dict[str, int]:
        return {d: self.split(d, split).num_tokens for d in self.domains}


def open_store(root: str) -> TokenStore:
    path = os.path.join(root, "index.json")
    if not os.path.exists(path):
        raise InputError(f"{root} holds no finished token store ({path} is absent); run prepare_store and "
                         "finalize_store first")
    index = atomic.read_json(path, what="token store index")
    if index.get("version") != _VERSION:
        raise InputError(f"{path} has store format {index.get('version')}, expected {_VERSION}; rebuild the store")
    return TokenStore(root, index)
