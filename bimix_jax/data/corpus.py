"""`Corpus`: the documents of every domain, split into train, selection and validation (see
`readers.load_corpus`).

The splits are a fixed function of each document's text and the seed, never of the mixture: a document is
held out for validation when `u = hash(seed, text)` (uniform in [0, 1)) is below `val_fraction`, or when
it is among the `max(min_val_docs, 1)` smallest `u` of its domain (so small domains still get validation
text), while at least one document stays in training. With a selection split (`select_fraction` or
`min_select_docs` > 0), a document that is not held out for validation goes to selection when its `u` is
below `val_fraction + select_fraction`, or when it is among the `min_select_docs` smallest `u` of those left,
again keeping at least one training document; without one, the split is exactly the two-way split above.
The split of a document does not depend on the other domains, on their order or on `max_docs_per_domain`
(except through the top-ups), and identical documents always land on the same side.

Domain names from real data ('Pile-CC', 'DM Mathematics', 'RedPajamaGithub') are normalised by
`normalize_domain_name`: lower case, every run of characters other than `[a-z0-9.]` becomes '_',
leading/trailing '_' dropped ('pile_cc', 'dm_mathematics', 'redpajamagithub'). `DataSpec.domains`
selects and orders domains; its entries are normalised the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError

_NON_NAME = re.compile(r"[^a-z0-9.]+")


def normalize_domain_name(raw: str) -> str:
    """'Pile-CC' -> 'pile_cc', 'DM Mathematics' -> 'dm_mathematics', 'Gutenberg (PG-19)' -> 'gutenberg_pg_19'."""
    return _NON_NAME.sub("_", str(raw).lower()).strip("_")


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """Documents per domain and split, in domain order; `raw_names` maps each domain to its source name.
    `select` is empty when the corpus has no selection split."""

    domains: tuple[str, ...]
    train: Mapping[str, tuple[str, ...]]
    val: Mapping[str, tuple[str, ...]]
    raw_names: Mapping[str, str]
    source: str
    select: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "select", "val") if self.select else ("train", "val")

    def documents(self, domain: str, split: str = "train") -> tuple[str, ...]:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        return {"train": self.train, "select": self.select, "val": self.val}[split][domain]

    def num_docs(self, split: str = "train") -> dict[str, int]:
        return {d: len(self.documents(d, split)) for d in self.domains}

    def num_chars(self, split: str = "train") -> dict[str, int]:
        return {d: sum(map(len, self.documents(d, split))) for d in self.domains}

    def to_dict(self) -> dict:
        out = {"source": self.source, "domains": list(self.domains), "raw_names": dict(self.raw_names),
               "train": {d: list(self.train[d]) for d in self.domains},
               "val": {d: list(self.val[d]) for d in self.domains}}
        if self.select:  # absent without a selection split: such caches read as before
            out["select"] = {d: list(self.select[d]) for d in self.domains}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Corpus:
        domains = tuple(d["domains"])
        return cls(domains=domains, train={k: tuple(d["train"][k]) for k in domains},
                   val={k: tuple(d["val"][k]) for k in domains}, raw_names=dict(d["raw_names"]),
                   source=d["source"], select={k: tuple(d["select"][k]) for k in domains} if "select" in d else {})


def document_hashes(docs: Sequence[str], seed: int) -> np.ndarray:
    """[N] float64 in [0, 1): a seeded hash of each document's text."""
    prefix = f"bimix-split|{seed}|".encode()
    out = np.empty(len(docs), dtype=np.float64)
    for i, doc in enumerate(docs):
        digest = hashlib.blake2b(prefix + doc.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out[i] = (int.from_bytes(digest, "little") >> 11) / float(1 << 53)
    return out


def split_mask(docs: Sequence[str], *, seed: int, val_fraction: float, min_val_docs: int,
               domain: str, u: np.ndarray | None = None) -> np.ndarray:
    """[N] bool, True for validation documents (see the module docstring for the rule)."""
    n = len(docs)
    if n < 2:
        raise InputError(
            f"domain {domain!r} has {n} document(s); it needs at least 2 (one for training, one for validation): "
            "add documents or drop the domain"
        )
    u = document_hashes(docs, seed) if u is None else u
    val = u < val_fraction
    k = min(max(min_val_docs, 1), n - 1)
    val |= u <= np.sort(u)[k - 1]
    if val.all():
        keep = np.flatnonzero(u == u.max())  # Return the largest-hash document(s) to training.
        val[keep] = False
    if val.all() or not val.any():
        raise InputError(
            f"domain {domain!r} cannot be split into training and validation documents (its documents are "
            "identical); add distinct documents or drop the domain"
        )
    return val


def split_codes(docs: Sequence[str], *, seed: int, val_fraction: float, min_val_docs: int, select_fraction: float,
                min_select_docs: int, domain: str) -> np.ndarray:
    """[N] int8: 0 train, 1 selection, 2 validation (see the module docstring for the rule)."""
    u = document_hashes(docs, seed)
    val = split_mask(docs, seed=seed, val_fraction=val_fraction, min_val_docs=min_val_docs, domain=domain, u=u)
    codes = np.where(val, 2, 0).astype(np.int8)
    if select_fraction <= 0 and min_select_docs <= 0:
        return codes
    rest = ~val
    if rest.sum() < 2:
        raise InputError(f"domain {domain!r} has {len(docs)} document(s), too few for train, selection and validation "
                         "splits; add documents, lower data.min_val_docs, or drop the domain")
    sel = rest & (u < val_fraction + select_fraction)
    k = min(min_select_docs, int(rest.sum()) - 1)
    if k > 0:
        sel |= rest & (u <= np.sort(u[rest])[k - 1])
    if sel[rest].all():  # Return the largest-hash document(s) of the rest to training.
        sel[rest & (u == u[rest].max())] = False
    if not sel.any() or sel[rest].all():
        raise InputError(f"domain {domain!r} cannot be split into training and selection documents; add distinct "
                         "documents, raise data.select_fraction or data.min_select_docs, or drop the domain")
    codes[sel] = 1
    return codes


def select_domains(available: Sequence[str], wanted: str, where: str) -> tuple[str, ...]:
    """The domains named in `wanted` (comma-separated, normalised), in that order; '' keeps all available."""
    names = [normalize_domain_name(w) for w in wanted.split(",") if w.strip()]
    if not names:
        return tuple(available)
    seen = set()
    for raw, name in zip((w.strip() for w in wanted.split(",") if w.strip()), names):
        if name not in available:
            raise InputError(
                f"data.domains: {raw!r} is not a domain of {where}; available: {', '.join(available) or 'none'}"
            )
        if name in seen:
            raise InputError(f"data.domains names {name!r} twice; give each domain once")
        seen.add(name)
    return tuple(names)


def build_corpus(docs: Mapping[str, Sequence[str]], raw_names: Mapping[str, str], spec: DataSpec,
                 source: str) -> Corpus:
    """Splits each domain's documents (in `docs` order) into train, selection (when the spec asks) and validation."""
    train, select, val = {}, {}, {}
    for d, domain_docs in docs.items():
        codes = split_codes(domain_docs, seed=spec.seed, val_fraction=spec.val_fraction,
                            min_val_docs=spec.min_val_docs, select_fraction=spec.select_fraction,
                            min_select_docs=spec.min_select_docs, domain=d)
        train[d], select[d], val[d] = (tuple(doc for doc, c in zip(domain_docs, codes) if c == k) for k in (0, 1, 2))
    domains = tuple(docs)
    return Corpus(domains=domains, train=train, val=val, raw_names={d: raw_names[d] for d in domains},
                  source=source, select=select if spec.has_select else {})

