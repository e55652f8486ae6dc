"""`DataSpec`: which corpus to read, how to split it and how to tokenize it.

Config files carry these exact fields under `config.data` (a binary builds `DataSpec(**config.data)`),
so every field is a plain str/int/float that a `--config.data.<field>=` override can set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from bimix_jax.errors import InputError

SOURCES = ("embedded", "folder", "jsonl", "tfds", "store")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the documents come from, and how they become per-domain token buffers."""

    # 'embedded' (built-in offline corpus), 'folder' (one .txt/.jsonl file or sub-folder per domain),
    # 'jsonl' (Pile/SlimPajama-style records, domain read from `domain_field`), 'tfds' (tfds.data_source), or
    # 'store' (a token store made by experiments.prepare_store, read on demand: any size).
    source: str = "embedded"
    # Folder (source=folder), jsonl file/glob (source=jsonl) or store folder (source=store).
    path: str = ""
    # Comma-separated domains to use, in this order; '' keeps every domain the source has.
    domains: str = ""
    # jsonl/tfds: dotted path of the domain name in a record (Pile: meta.pile_set_name,
    # SlimPajama: meta.redpajama_set_name).
    domain_field: str = "meta.pile_set_name"
    # jsonl/folder-jsonl/tfds: field holding a document's text.
    text_field: str = "text"
    # tfds: dataset name (optionally 'name/config:version'), split and data_dir ('' = TFDS default).
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    # Read at most this many documents per domain (0 = all).
    max_docs_per_domain: int = 0
    # Embedded corpus: approximate characters generated/collected per domain.
    embedded_chars_per_domain: int = 400_000
    # Fraction of each domain's documents held out for validation (whole documents, fixed by `seed`).
    val_fraction: float = 0.05
    # Validation documents per domain are at least this many (and at least one training document remains).
    min_val_docs: int = 4
    # Fraction of each domain's documents held out as the selection split: what a method may look at (law fits,
    # online feedback, tuning), never reported; 0 with min_select_docs 0 = no selection split (train + validation).
    select_fraction: float = 0.0
    # Selection documents per domain are at least this many (taken from the training side of the split).
    min_select_docs: int = 0
    # Seed of the embedded corpus generation and of the train/validation split.
    seed: int = 0
    # SentencePiece vocabulary size when training a tokenizer.
    vocab_size: int = 2048
    # Path of an existing SentencePiece model to use instead of training one ('' = train in the workdir).
    tokenizer_path: str = ""
    # Characters per domain in the tokenizer's balanced training sample.
    tokenizer_sample_chars: int = 200_000

    def __post_init__(self):
        if self.source not in SOURCES:
            raise InputError(f"data.source={self.source!r} is unknown; choose one of {', '.join(SOURCES)}")
        if self.source in ("folder", "jsonl", "store") and not self.path:
            raise InputError(f"data.source={self.source} needs data.path; set --config.data.path=...")
        if self.source == "tfds" and not self.tfds_name:
            raise InputError("data.source=tfds needs data.tfds_name; set --config.data.tfds_name=...")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"data.val_fraction={self.val_fraction} must lie in (0, 1)")
        if not 0.0 <= self.select_fraction < 1.0 - self.val_fraction:
            raise InputError(f"data.select_fraction={self.select_fraction} must lie in [0, 1 - data.val_fraction): "
                             "some documents must stay for training")
        if self.vocab_size < 64:
            raise InputError(f"data.vocab_size={self.vocab_size} is too small; use at least 64")
        for name in ("max_docs_per_domain", "embedded_chars_per_domain", "min_val_docs", "min_select_docs",
                     "tokenizer_sample_chars"):
            if getattr(self, name) < 0:
                raise InputError(f"data.{name}={getattr(self, name)} must be >= 0")

    @property
    def has_select(self) -> bool:
        """Whether the corpus gets a selection split."""
        return self.select_fraction > 0 or self.min_select_docs > 0

    @property
    def domain_list(self) -> tuple[str, ...]:
        return tuple(d.strip() for d in self.domains.split(",") if d.strip())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the fields that decide the token data (identifies cached tokens in a workdir)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, cfg) -> DataSpec:
        """From a ConfigDict/dict holding exactly these fields."""
        d = dict(cfg)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"config.data.{unknown[0]} is not a data field; remove it")
        return cls(**d)
