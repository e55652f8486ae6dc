"""`DomainTokens`: the tokenized corpus every consumer reads (sampler, trainer, entropy proxies).

Each domain has two flat int32 buffers, `train` and `val`, and a third, `select`, when the corpus has a
selection split (what methods may look at; `bimix_jax.data.corpus`). A buffer is the domain's documents,
tokenized and concatenated, each document followed by `eos_id`. The validation and selection buffers hold
whole documents that never appear in the training buffer; they are fixed by the corpus and its seed, never by
the training mixture, so per-domain validation losses of different mixtures are comparable. Without a
selection split the fingerprint and the saved file are exactly those of a two-split corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from bimix_jax import atomic
from bimix_jax.errors import InputError
from bimix_jax.loss_table import check_domain_name

_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class DomainTokens:
    """Per-domain packed token buffers (train and validation) with their vocabulary."""

    domains: tuple[str, ...]
    train: Mapping[str, np.ndarray]  # domain -> [T_d] int32, documents each followed by eos_id
    val: Mapping[str, np.ndarray]  # domain -> [V_d] int32, held-out documents, same format
    vocab_size: int
    eos_id: int
    select: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # domain -> [S_d]; {} = no split

    def __post_init__(self):
        if not self.domains:
            raise InputError("the corpus has no domains; give at least one domain")
        if len(set(self.domains)) != len(self.domains):
            raise InputError(f"domain names repeat in {list(self.domains)}; give each domain a unique name")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"eos_id {self.eos_id} outside vocabulary of size {self.vocab_size}")
        for d in self.domains:
            check_domain_name(d, "corpus")
            for split, bufs in self._splits():
                if d not in bufs:
                    raise InputError(f"domain {d!r} has no {split} split; rebuild the tokenized corpus")
                buf = bufs[d]
                if buf.ndim != 1 or buf.dtype != np.int32:
                    raise ValueError(f"{split}[{d!r}] must be a 1-D int32 array, got {buf.dtype}{buf.shape}")
                if buf.size == 0:
                    raise InputError(f"domain {d!r} has no {split} tokens; add documents to it or drop the domain")
                lo, hi = int(buf.min()), int(buf.max())
                if lo < 0 or hi >= self.vocab_size:
                    raise InputError(
                        f"domain {d!r} has token id {hi if hi >= self.vocab_size else lo} outside the "
                        f"vocabulary [0, {self.vocab_size}); the tokens were made with another tokenizer: re-tokenize"
                    )

    def _splits(self) -> tuple[tuple[str, Mapping[str, np.ndarray]], ...]:
        return (("train", self.train), ("val", self.val)) + ((("select", self.select),) if self.select else ())

    @property
    def has_select(self) -> bool:
        return bool(self.select)

    def split(self, name: str) -> Mapping[str, np.ndarray]:
        """The buffers of split 'train', 'select' or 'val'."""
        bufs = dict(self._splits())
        if name not in bufs:
            raise InputError(f"the corpus has no {name!r} split; it has {', '.join(bufs)}")
        return bufs[name]

    def token_counts(self, split: str = "train") -> dict[str, int]:
        bufs = self.split(split)
        return {d: int(bufs[d].size) for d in self.domains}

    def fingerprint(self) -> str:
        """A short content hash: identifies the exact token data a run was trained on."""
        h = hashlib.sha256()
        h.update(f"{_FORMAT_VERSION}|{self.vocab_size}|{self.eos_id}|{','.join(self.domains)}".encode())
        for d in self.domains:
            h.update(np.ascontiguousarray(self.train[d]).tobytes())
            h.update(np.ascontiguousarray(self.val[d]).tobytes())
        if self.select:  # a corpus without a selection split keeps its fingerprint
            h.update(b"|select")
            for d in self.domains:
                h.update(np.ascontiguousarray(self.select[d]).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Atomically writes an .npz with both splits of every domain."""
        arrays = {"meta": np.array([_FORMAT_VERSION, self.vocab_size, self.eos_id], dtype=np.int64)}
        arrays["domains"] = np.array(self.domains, dtype=str)
        for i, d in enumerate(self.domains):
            arrays[f"train_{i}"] = self.train[d]
            arrays[f"val_{i}"] = self.val[d]
            if self.select:
                arrays[f"select_{i}"] = self.select[d]
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic.write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> DomainTokens:
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                version, vocab_size, eos_id = (int(x) for x in z["meta"])
                if version != _FORMAT_VERSION:
                    raise InputError(f"token file {path} has format {version}, expected {_FORMAT_VERSION}; delete it to rebuild")
                domains = tuple(str(d) for d in z["domains"])
                train = {d: z[f"train_{i}"] for i, d in enumerate(domains)}
                val = {d: z[f"val_{i}"] for i, d in enumerate(domains)}
                select = {d: z[f"select_{i}"] for i, d in enumerate(domains)} if "select_0" in z.files else {}
        except FileNotFoundError as e:
            raise InputError(f"token file {path} does not exist; check the path") from e
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InputError(f"token file {path} is corrupted ({e}); delete it to rebuild") from e
        return cls(domains=domains, train=train, val=val, vocab_size=vocab_size, eos_id=eos_id, select=select)
