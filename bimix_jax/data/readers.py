"""Readers for every `DataSpec.source`, and `load_corpus(spec)`.

* `embedded`: the built-in offline corpus (`bimix_jax.data.embedded`).
* `folder`: one entry per domain in `data.path`: `<domain>.txt` (documents separated by blank lines),
  `<domain>/` (one document per `.txt` file below it, recursively, in sorted order) or `<domain>.jsonl`
  (`.jsonl.gz`, `.jsonl.zst`; one record per line, text in `data.text_field`). Other files are ignored.
* `jsonl`: Pile/SlimPajama-style records from a file, a folder (every `*.jsonl[.gz|.zst]` below it) or a
  glob; the domain is the record field at the dotted path `data.domain_field` (`meta.pile_set_name`,
  `meta.redpajama_set_name`). Files are streamed; with `data.domains` and `data.max_docs_per_domain`
  set, reading stops as soon as every selected domain is full.
* `tfds`: `tfds.data_source(data.tfds_name, split=data.tfds_split, download=False)`; the domain is the
  feature `data.domain_field` when the dataset has it (class labels become their names), otherwise the
  dataset is one domain named after it. Nothing is ever downloaded.

Domain names are normalised (`corpus.normalize_domain_name`); domains come in `data.domains` order, else
sorted by name. Whitespace-only documents are skipped. Every problem is a one-line `InputError` naming
the file (and line).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

from bimix_jax.data import embedded
from bimix_jax.data.corpus import Corpus, build_corpus, normalize_domain_name, select_domains
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


class _Collector:
    """Gathers documents per normalised domain, honouring the selection and the per-domain cap."""

    def __init__(self, spec: DataSpec, where: str):
        self.where = where
        self.wanted = {normalize_domain_name(d) for d in spec.domain_list} or None
        self.max_docs = spec.max_docs_per_domain
        self.docs: dict[str, list[str]] = {}
        self.raw: dict[str, str] = {}

    def domain(self, raw: str, origin: str, stem: str | None = None) -> str:
        """The normalised name of the domain called `raw` in the source (`stem` overrides the name's basis)."""
        name = normalize_domain_name(raw if stem is None else stem)
        if not name:
            raise InputError(f"{origin}: domain name {raw!r} has no letters or digits; rename the domain")
        prev = self.raw.setdefault(name, raw)
        if prev != raw:
            raise InputError(f"{origin}: domains {prev!r} and {raw!r} both normalise to {name!r}; rename one")
        self.docs.setdefault(name, [])
        return name

    def wants(self, name: str) -> bool:
        if self.wanted is not None and name not in self.wanted:
            return False
        return not self.max_docs or len(self.docs[name]) < self.max_docs

    def add(self, raw: str, text: str, origin: str, stem: str | None = None) -> None:
        name = self.domain(raw, origin, stem)
        if self.wants(name) and text.strip():
            self.docs[name].append(text)

    def done(self) -> bool:
        """True once every selected domain holds `max_docs` documents (never without a selection and a cap)."""
        if self.wanted is None or not self.max_docs:
            return False
        return all(len(self.docs.get(w, ())) >= self.max_docs for w in self.wanted)

    def finish(self, spec: DataSpec) -> tuple[dict[str, list[str]], dict[str, str], str]:
        if not self.docs:
            raise InputError(f"{self.where} holds no domains; check data.path and the expected layout")
        order = select_domains(sorted(self.docs), spec.domains, self.where)
        for d in order:
            if not self.docs[d]:
                raise InputError(
                    f"domain {d!r} ({self.raw[d]!r} in {self.where}) has no text; add documents or drop it "
                    "from data.domains"
                )
        return {d: self.docs[d] for d in order}, {d: self.raw[d] for d in order}, self.where


def _lookup(record: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(record, dict) or key not in record:
            raise KeyError(dotted)
        record = record[key]
    return record


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise InputError(f"{path} is zstd-compressed; `pip install zstandard` or decompress it") from e
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _jsonl_records(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line; a bad line is an `InputError` naming file and line."""
    n = 0
    try:
        with _open_binary(path) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InputError(f"{path} line {n} is not valid JSON ({e}); fix or remove the line") from e
                if not isinstance(record, dict):
                    raise InputError(f"{path} line {n} is a JSON {type(record).__name__}, not an object; "
                                     "write one JSON object per line")
                yield n, record
    except FileNotFoundError as e:
        raise InputError(f"{path} does not exist; check data.path") from e
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path} is unreadable after line {n} ({e}); fix or re-download the file") from e


def _record_text(record: dict, field: str, origin: str) -> str:
    try:
        text = _lookup(record, field)
    except KeyError:
        raise InputError(f"{origin} has no text field {field!r}; set data.text_field to the record's text "
                         "field") from None
    if not isinstance(text, str):
        raise InputError(f"{origin}: field {field!r} is a {type(text).__name__}, not text; set data.text_field")
    return text


def _read_text_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from e
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror}); check the file") from e


def _split_blank_lines(text: str) -> list[str]:
    docs, cur = [], []
    for line in text.split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        docs.append("\n".join(cur))
    return docs


def _read_folder(spec: DataSpec) -> _Collector:
    root = spec.path
    if not os.path.isdir(root):
        raise InputError(f"data.path={root} is not a folder; give a folder with one <domain>.txt, <domain>.jsonl "
                         "or <domain>/ entry per domain")
    col = _Collector(spec, f"folder {root}")
    for entry in sorted(os.listdir(root)):
        full = os.path.join(root, entry)
        if entry.startswith("."):
            continue
        if os.path.isdir(full):
            name = col.domain(entry + "/", full, entry)
            files = sorted(glob.glob(os.path.join(glob.escape(full), "**", "*.txt"), recursive=True))
            for path in files:
                if not col.wants(name):
                    break
                col.add(entry + "/", _read_text_file(path), path, entry)
        elif entry.endswith(".txt"):
            stem = entry[: -len(".txt")]
            name = col.domain(entry, full, stem)
            for doc in _split_blank_lines(_read_text_file(full)) if col.wants(name) else ():
                col.add(entry, doc, full, stem)
        elif entry.endswith(_JSONL_SUFFIXES):
            stem = entry[: entry.rindex(".jsonl")]
            name = col.domain(entry, full, stem)
            if not col.wants(name):
                continue
            for n, record in _jsonl_records(full):
                col.add(entry, _record_text(record, spec.text_field, f"{full} line {n}"), full, stem)
                if not col.wants(name):
                    break
    return col


def _jsonl_files(path: str) -> list[str]:
    if glob.has_magic(path):
        files = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        files = [p for p in glob.glob(os.path.join(glob.escape(path), "**", "*"), recursive=True)
                 if p.endswith(_JSONL_SUFFIXES) and os.path.isfile(p)]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise InputError(f"data.path={path} does not exist; give a .jsonl[.gz|.zst] file, a folder or a glob")
    if not files:
        raise InputError(f"data.path={path} matches no .jsonl[.gz|.zst] file; check the path or glob")
    return sorted(files)


def _read_jsonl(spec: DataSpec) -> _Collector:
    col = _Collector(spec, f"data.path={spec.path}")
    for path in _jsonl_files(spec.path):
        for n, record in _jsonl_records(path):
            origin = f"{path} line {n}"
            try:
                raw = _lookup(record, spec.domain_field)
            except KeyError:
                raise InputError(
                    f"{origin} has no domain field {spec.domain_field!r}; set data.domain_field (Pile: "
                    "meta.pile_set_name, SlimPajama: meta.redpajama_set_name)"
                ) from None
            if not isinstance(raw, (str, int)):
                raise InputError(f"{origin}: domain field {spec.domain_field!r} is not a name; "
                                 "set data.domain_field")
            name = col.domain(str(raw), origin)
            if col.wants(name):
                col.add(str(raw), _record_text(record, spec.text_field, origin), origin)
                if col.done():
                    return col
    return col


def _feature(features: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        try:
            features = features[key]
        except (KeyError, TypeError):
            return None
    return features


def _as_text(value: Any, origin: str, field: str) -> str:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{origin}: field {field!r} is not UTF-8 text; set data.text_field") from e
    if isinstance(value, str):
        return value
    raise InputError(f"{origin}: field {field!r} is a {type(value).__name__}, not text; set data.text_field")


def _read_tfds(spec: DataSpec) -> _Collector:
    import tensorflow_datasets as tfds  # Deferred: only this source needs it.

    where = f"TFDS dataset {spec.tfds_name} split {spec.tfds_split}"
    try:
        ds = tfds.data_source(spec.tfds_name, split=spec.tfds_split, data_dir=spec.tfds_data_dir or None,
                              download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many types; all mean "cannot open it offline".
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(
            f"cannot open {where} (data_dir={spec.tfds_data_dir or 'default'}) without downloading: {first}; "
            "prepare it beforehand (`tfds build --file_format=array_record`) or fix data.tfds_name/tfds_split"
        ) from e
    features = ds.dataset_info.features
    if _feature(features, spec.text_field) is None:
        raise InputError(f"{where} has no feature {spec.text_field!r}; set data.text_field to one of "
                         f"{', '.join(sorted(features.keys()))}")
    label = _feature(features, spec.domain_field)
    single = spec.tfds_name.split(":")[0]
    col = _Collector(spec, where)
    for i in range(len(ds)):
        record = ds[i]
        origin = f"{where} example {i}"
        if label is None:
            raw = single
        else:
            try:
                value = _lookup(record, spec.domain_field)
            except KeyError:
                raise InputError(f"{origin} has no {spec.domain_field!r}; set data.domain_field") from None
            if hasattr(label, "int2str"):
                raw = label.int2str(int(value))
            else:
                raw = _as_text(value, origin, spec.domain_field)
        name = col.domain(raw, origin)
        if col.wants(name):
            col.add(raw, _as_text(_lookup(record, spec.text_field), origin, spec.text_field), origin)
        if (label is None and not col.wants(name)) or col.done():
            break
    return col


def _read_embedded(spec: DataSpec) -> _Collector:
    col = _Collector(spec, "the embedded corpus")
    for d in embedded.DOMAINS:
        col.domain(d, col.where)
        if col.wanted is None or d in col.wanted:
            col.docs[d] = embedded.embedded_documents(d, seed=spec.seed, chars=spec.embedded_chars_per_domain,
                                                      max_docs=spec.max_docs_per_domain)
    return col


_READERS = {"embedded": _read_embedded, "folder": _read_folder, "jsonl": _read_jsonl, "tfds": _read_tfds}


def read_documents(spec: DataSpec) -> tuple[dict[str, list[str]], dict[str, str], str]:
    """(documents per selected domain in order, source name per domain, description of the source)."""
    return _READERS[spec.source](spec).finish(spec)


def load_corpus(spec: DataSpec) -> Corpus:
    """Reads (or generates) the documents `spec` describes and splits them; nothing is written."""
    docs, raw_names, where = read_documents(spec)
    return build_corpus(docs, raw_names, spec, where)
