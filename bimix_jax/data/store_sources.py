"""Where a token store's documents come from: work units, document streams, and the tokenizer's sample.

A work unit is what one worker tokenizes into shards:
* one input file of a domain given by file (`StoreSpec.sources`: `domain -> files`, `.jsonl[.gz|.zst]` records
  or a `.txt` document);
* one input file whose records name their domain in a field (`StoreSpec.mixed`: Pile-style files, domain at
  the dotted path `domain_field`, e.g. `meta.pile_set_name`);
* a contiguous range of records of a TFDS dataset (`StoreSpec.tfds`, read with `tfds.data_source`, never
  downloaded; the domain is the `domain_field` feature, class labels become their names, or the dataset's name
  when it has no such feature).
`documents(unit, ...)` streams `(domain, text)` of a unit, domain names normalised as the loss tables write them
(`Pile-CC` -> `pile_cc`) and filtered by `StoreSpec.domains`.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bimix_jax.data import readers
from bimix_jax.data.corpus import normalize_domain_name
from bimix_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class Unit:
    index: int  # position in the spec's fixed unit order (names its shards)
    kind: str  # 'file' | 'mixed' | 'tfds'
    source: str  # the file, or 'tfds:<name>:<split>'
    domain: str = ""  # 'file' units: the domain every document belongs to
    lo: int = 0  # 'tfds' units: records [lo, hi)
    hi: int = 0

    @property
    def key(self) -> str:
        """What decides a document's split with its number: stable when other units are added or reordered."""
        return f"{self.source}#{self.lo}" if self.kind == "tfds" else os.path.basename(self.source)


def _tfds_source(name: str, split: str, data_dir: str):
    import tensorflow_datasets as tfds  # Deferred: only this source needs it.

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many types; all mean "cannot open it offline".
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot open TFDS dataset {name} split {split} without downloading: {first}; prepare it "
                         "beforehand (`tfds build --file_format=array_record`) or fix --tfds") from e


def make_units(spec) -> list[Unit]:
    """Every work unit of a `StoreSpec`, in a fixed order."""
    units: list[Unit] = []
    for d in sorted(spec.sources):
        for path in spec.sources[d]:
            units.append(Unit(len(units), "file", os.fspath(path), domain=normalize_domain_name(d)))
    for path in spec.mixed:
        units.append(Unit(len(units), "mixed", os.fspath(path)))
    if spec.tfds:
        n = len(_tfds_source(spec.tfds, spec.tfds_split, spec.tfds_data_dir))
        shards = max(1, min(spec.tfds_shards, n))
        bounds = np.linspace(0, n, shards + 1).astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            units.append(Unit(len(units), "tfds", f"tfds:{spec.tfds}:{spec.tfds_split}", lo=int(lo), hi=int(hi)))
    return units


def check_inputs(units: Sequence[Unit]) -> None:
    for u in units:
        if u.kind != "tfds" and not os.path.isfile(u.source):
            raise InputError(f"store input {u.source} does not exist; fix --sources or --mixed")
        if u.kind == "file" and not u.source.endswith((*readers._JSONL_SUFFIXES, ".txt")):  # noqa: SLF001
            raise InputError(f"store input {u.source} is neither .jsonl[.gz|.zst] nor .txt; convert it or drop it")
        if u.kind == "mixed" and not u.source.endswith(readers._JSONL_SUFFIXES):  # noqa: SLF001
            raise InputError(f"store input {u.source} is not .jsonl[.gz|.zst]: a file whose records name their "
                             "domain must be json lines")


def _record_domain(record: Mapping, field: str, origin: str) -> str:
    try:
        raw = readers._lookup(record, field)  # noqa: SLF001
    except KeyError:
        raise InputError(f"{origin} has no domain field {field!r}; set --domain_field (Pile: meta.pile_set_name, "
                         "SlimPajama: meta.redpajama_set_name)") from None
    if not isinstance(raw, (str, int)):
        raise InputError(f"{origin}: domain field {field!r} is not a name; set --domain_field")
    return str(raw)


def documents(unit: Unit, *, text_field: str, domain_field: str, tfds_data_dir: str = "",
              wanted: Sequence[str] = ()) -> Iterator[tuple[str, str]]:
    """(normalised domain, text) of every non-empty document of `unit`, in order; `wanted` filters domains."""
    keep = {normalize_domain_name(d) for d in wanted} or None
    if unit.kind == "tfds":
        yield from _tfds_documents(unit, text_field, domain_field, tfds_data_dir, keep)
        return
    if unit.source.endswith(".txt"):
        text = readers._read_text_file(unit.source)  # noqa: SLF001
        if text.strip() and (keep is None or unit.domain in keep):
            yield unit.domain, text
        return
    for n, record in readers._jsonl_records(unit.source):  # noqa: SLF001
        origin = f"{unit.source} line {n}"
        domain = unit.domain or normalize_domain_name(_record_domain(record, domain_field, origin))
        if not domain:
            raise InputError(f"{origin}: the domain name has no letters or digits; rename the domain")
        if keep is not None and domain not in keep:
            continue
        text = readers._record_text(record, text_field, origin)  # noqa: SLF001
        if text.strip():
            yield domain, text


def _tfds_documents(unit: Unit, text_field: str, domain_field: str, data_dir: str,
                    keep: set[str] | None) -> Iterator[tuple[str, str]]:
    _, name, split = unit.source.split(":", 2)
    ds = _tfds_source(name, split, data_dir)
    features = ds.dataset_info.features
    if readers._feature(features, text_field) is None:  # noqa: SLF001
        raise InputError(f"TFDS dataset {name} has no feature {text_field!r}; set --text_field to one of "
                         f"{', '.join(sorted(features.keys()))}")
    label = readers._feature(features, domain_field)  # noqa: SLF001
    single = normalize_domain_name(name.split(":")[0].split("/")[0])
    for i in range(unit.lo, unit.hi):
        record = ds[i]
        origin = f"TFDS dataset {name} example {i}"
        if label is None:
            domain = single
        else:
            value = readers._lookup(record, domain_field)  # noqa: SLF001
            raw = label.int2str(int(value)) if hasattr(label, "int2str") else readers._as_text(  # noqa: SLF001
                value, origin, domain_field)
            domain = normalize_domain_name(raw)
        if keep is not None and domain not in keep:
            continue
        text = readers._as_text(readers._lookup(record, text_field), origin, text_field)  # noqa: SLF001
        if text.strip():
            yield domain, text


def split_of(seed: int, unit: Unit, doc: int, val_fraction: float, select_fraction: float) -> str:
    """'val', 'select' or 'train' from a hash of (seed, unit, document number): any process decides alike."""
    u = zlib.crc32(f"{seed}|{unit.key}|{doc}".encode()) / 2**32
    return "val" if u < val_fraction else "select" if u < val_fraction + select_fraction else "train"


def tokenizer_sample(spec, units: Sequence[Unit], *, chars_per_domain: int) -> dict[str, list[str]]:
    """A seeded sample of about `chars_per_domain` characters of training documents per domain, for training the
    tokenizer. Units are visited in a seeded order and each gives at most its share, so the sample spreads over
    files. Reading stops once every expected domain is full (the domains are known when files name them or
    `StoreSpec.domains` lists them; otherwise every unit is read). Memory is bounded by the sample."""
    order = np.random.default_rng(spec.seed).permutation(len(units))
    per_unit = max(chars_per_domain // max(1, min(len(units), 8)), 1 << 16)
    expected = {normalize_domain_name(d) for d in spec.domains} or (
        {u.domain for u in units} if all(u.kind == "file" for u in units) else None)
    sample: dict[str, list[str]] = {}
    size: dict[str, int] = {}
    for j in order:
        if expected and all(size.get(d, 0) >= chars_per_domain for d in expected):
            break
        unit = units[int(j)]
        taken: dict[str, int] = {}
        docs = documents(unit, text_field=spec.text_field, domain_field=spec.domain_field,
                         tfds_data_dir=spec.tfds_data_dir, wanted=spec.domains)
        for i, (d, text) in enumerate(docs):
            if split_of(spec.seed, unit, i, spec.val_fraction, spec.select_fraction) != "train":
                continue
            if size.get(d, 0) >= chars_per_domain or taken.get(d, 0) >= per_unit:
                if unit.kind == "file":
                    break  # the file holds one domain, which has its share
                continue
            sample.setdefault(d, []).append(text)
            size[d] = size.get(d, 0) + len(text)
            taken[d] = taken.get(d, 0) + len(text)
    if not sample:
        raise InputError("the store's sources hold no training documents to train a tokenizer on; check --sources")
    return sample
