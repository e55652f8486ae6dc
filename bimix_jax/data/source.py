"""One entry to the data of a run, whatever its source: `open_data(spec, workdir)`.

* Every source but `store` is read, split and tokenized into memory by `prepare_data` (cached in
  `<workdir>/data/`): a `PreparedData` whose `run_data` is a `DomainTokens`.
* `data.source=store` opens a token store made by `experiments.prepare_store` (`data.path`: its folder;
  `data.domains` chooses and orders domains) without reading it: a `StoreData`, whose splits are read on demand.
Both answer what the pipeline, the comparison and the entropy proxies ask of a corpus: its domains, vocabulary,
token counts, a fingerprint, the token streams of the training split (for SE/CE/JE) and documents (for VNE).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from bimix_jax.data.corpus import normalize_domain_name, select_domains
from bimix_jax.data.prepare import PreparedData, prepare_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.data.store import TokenStore, open_store
from bimix_jax.errors import InputError

__all__ = ["StoreData", "open_data"]


@dataclasses.dataclass(frozen=True, eq=False)
class StoreData:
    """The selected domains of a token store (nothing is read until asked)."""

    spec: DataSpec
    store: TokenStore
    domains: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return self.store.vocab_size

    @property
    def eos_id(self) -> int:
        return self.store.eos_id

    @property
    def run_data(self) -> StoreData:
        return self

    @property
    def tokenizer_path(self) -> str:
        return self.store.tokenizer_path

    def token_counts(self, split: str = "train") -> dict[str, int]:
        return {d: self.store.split(d, split).num_tokens for d in self.domains}

    @functools.lru_cache(maxsize=1)
    def fingerprint(self) -> str:
        """A hash of the store's index (its shards, counts and tokenizer) and the domains selected."""
        blob = json.dumps({"index": self.store.index, "domains": self.domains}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for d in self.domains:
            out[d] = {"source_name": d}
            for s in ("train", "select", "val"):
                sp = self.store.split(d, s)
                out[d].update({f"{s}_docs": sp.docs, f"{s}_tokens": sp.num_tokens})
        return out

    def entropy_streams(self) -> dict[str, Any]:
        """Each domain's training split, streamed in chunks by the entropy counters."""
        return {d: self.store.split(d, "train") for d in self.domains}

    def documents(self, domain: str, split: str = "train", *, max_docs: int = 1000, seed: int = 0,
                  max_tokens: int = 4096) -> list[str]:
        """Up to `max_docs` documents of a split, decoded: the documents holding seeded random token positions
        (at most `max_tokens` tokens around the position each), distinct."""
        from bimix_jax.data.tokenizer import Tokenizer

        sp = self.store.split(domain, split)
        if sp.num_tokens == 0:
            return []
        tok = Tokenizer.load(self.tokenizer_path)
        rng = np.random.default_rng([seed, zlib.crc32(domain.encode())])
        starts, out = set(), []
        for p in np.sort(rng.integers(0, sp.num_tokens, size=min(max_docs, max(sp.docs, 1)) * 2)):
            lo = max(0, int(p) - max_tokens // 2)
            ids = sp.read(lo, min(max_tokens, sp.num_tokens - lo))
            at = int(p) - lo
            eos = np.flatnonzero(ids == self.eos_id)
            begin = int(eos[eos < at][-1]) + 1 if np.any(eos < at) else 0
            end = int(eos[eos >= at][0]) if np.any(eos >= at) else ids.size
            if lo + begin in starts or end <= begin:
                continue
            starts.add(lo + begin)
            out.append(tok.decode(ids[begin:end]))
            if len(out) >= max_docs:
                break
        return out


def open_data(spec: DataSpec, workdir: str) -> PreparedData | StoreData:
    """The data `spec` describes: prepared in memory (cached in `<workdir>/data/`), or a token store."""
    if spec.source != "store":
        return prepare_data(spec, workdir)
    st = open_store(spec.path)
    wanted = [normalize_domain_name(d) for d in spec.domain_list]
    domains = tuple(select_domains(sorted(st.domains), ",".join(wanted), f"token store {spec.path}")
                    if wanted else st.domains)
    for d in domains:
        if st.split(d, "train").num_tokens == 0:
            raise InputError(f"domain {d!r} of token store {spec.path} has no training tokens; drop it from "
                             "data.domains")
    return StoreData(spec=spec, store=st, domains=domains)


def describe(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of a store's domains: documents and tokens per split."""
    rows = ["| domain | documents (train + select + val) | tokens (train + select + val) |", "|---|---:|---:|"]
    for d, s in stats.items():
        docs = " + ".join(f"{int(s[f'{k}_docs']):,}" for k in ("train", "select", "val"))
        toks = " + ".join(f"{int(s[f'{k}_tokens']):,}" for k in ("train", "select", "val"))
        rows.append(f"| {d} | {docs} | {toks} |")
    return "\n".join(rows)
