"""Offline document embeddings and their von Neumann entropy (VNE; BiMix Eq. 17-18, the Vendi score's log).

Embedding (no model, no download, reproducible across numpy versions: every random choice is a hash):

1. Text is case-folded and cut into words (`\\w+`) and single punctuation marks, joined by single spaces
   and wrapped in one space on each side (" def f ( x ) : ").
2. Features: every token (a word or a punctuation mark) and every character n-gram of orders
   `char_orders` (default 3, 4, 5) of that string, spaces included, so n-grams span word boundaries.
   Each feature is a 32-bit hash (polynomial hash mod 2^32, then the murmur3 finaliser salted by the
   feature kind, the order and the seed), so the feature space has 2^32 entries; a document's value of a
   feature is `ln(1 + count)` (sublinear term frequency).
3. A seeded sparse random projection to `dim` dimensions (default 256): every feature adds its value,
   with a hashed sign +-1, to `nnz` (default 8) hashed coordinates, i.e. the sum of `nnz` independent
   CountSketch maps (a sparse Johnson-Lindenstrauss transform: inner products are preserved in
   expectation, with a variance falling as 1/dim). No matrix is stored and no BLAS call is made. Rows
   are then scaled to unit L2 norm, so inner products are cosines.

VNE of a domain: with unit rows `X [N, d]`, the cosine kernel `K = X X^T` has unit diagonal and
`rho = K / N` has trace 1; VNE = -sum lambda ln lambda over the eigenvalues of rho, in nats. The nonzero
eigenvalues of `X X^T / N` and `X^T X / N` coincide (X = U S V^T gives both as S^2 / N), so the d x d
covariance is decomposed when N > d: O(N d^2) instead of O(N^3). VNE lies in [0, ln min(N, d)].
At most `max_docs` documents per domain enter: those with the smallest salted hash of their index.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Sequence

import numpy as np

from bimix_jax.errors import InputError

_TOKEN = re.compile(r"\w+|[^\w\s]")
_P = np.uint32(0x01000193)  # Odd multiplier of the polynomial hash (FNV prime).
_P_INV = np.uint32(pow(0x01000193, -1, 1 << 32))  # Its inverse mod 2^32.
_BATCH_CHARS = 1 << 20  # Characters hashed per batch (bounds the temporaries).


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """How documents become vectors (see the module docstring)."""

    char_orders: tuple[int, ...] = (3, 4, 5)  # character n-gram orders
    dim: int = 256  # projected dimension d
    nnz: int = 8  # nonzeros per feature in the sparse projection
    seed: int = 0  # salts every hash (features, projection, document subsample)

    def __post_init__(self):
        if not self.char_orders or any(n < 1 for n in self.char_orders):
            raise InputError(f"char_orders={self.char_orders} must be positive n-gram orders")
        if self.dim < 1 or self.nnz < 1:
            raise InputError(f"dim={self.dim} and nnz={self.nnz} must be >= 1")


def fmix32(h: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser (a bijection that mixes every input bit into every output bit)."""
    h = np.array(h, dtype=np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _salt(*parts: int) -> np.uint32:
    return np.uint32(zlib.crc32(np.array(parts, dtype=np.int64).tobytes()))


def normalize_text(text: str) -> str:
    """Case-folded words and punctuation marks joined by single spaces, with a space on each side."""
    return " " + " ".join(_TOKEN.findall(text.casefold())) + " "


def _powers(base: np.uint32, n: int) -> np.ndarray:
    """[n] uint32: base^0 .. base^(n-1) mod 2^32."""
    out = np.empty(n, np.uint32)
    out[0] = 1
    if n > 1:
        out[1:] = np.cumprod(np.full(n - 1, base, np.uint32), dtype=np.uint32)
    return out


def _features(texts: Sequence[str], cfg: EmbedConfig) -> tuple[np.ndarray, np.ndarray]:
    """(doc index, 32-bit feature hash) of every feature occurrence of normalised `texts`, vectorized."""
    codes = [np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) for t in texts]
    c = np.concatenate(codes)
    doc = np.repeat(np.arange(len(texts)), [x.size for x in codes])
    n = c.size
    # S[i] = sum_{k<i} c[k] Q^k (Q = 1/P mod 2^32); hash(c[l:r]) = P^(r-1) (S[r] - S[l]) = sum c[k] P^(r-1-k).
    prefix = np.zeros(n + 1, np.uint32)
    np.cumsum(c * _powers(_P_INV, n), dtype=np.uint32, out=prefix[1:])
    pow_p = _powers(_P, n + 1)

    def span_hash(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return pow_p[hi - 1] * (prefix[hi] - prefix[lo])

    docs, hashes = [], []
    for order in cfg.char_orders:
        lo = np.arange(max(n - order + 1, 0))
        lo = lo[doc[lo] == doc[lo + order - 1]]  # The n-gram stays inside one document.
        docs.append(doc[lo])
        hashes.append(span_hash(lo, lo + order) ^ _salt(cfg.seed, 1, order))
    space = np.flatnonzero(c == ord(" "))
    lo, hi = space[:-1] + 1, space[1:]
    word = hi > lo  # Between two consecutive spaces of one document (an empty span between documents).
    docs.append(doc[lo[word]])
    hashes.append(span_hash(lo[word], hi[word]) ^ _salt(cfg.seed, 2))
    return np.concatenate(docs), fmix32(np.concatenate(hashes))


def _project(doc: np.ndarray, feature: np.ndarray, num_docs: int, cfg: EmbedConfig) -> np.ndarray:
    """[num_docs, dim] float64: sparse signed projection of the ln(1 + count) feature values."""
    key = (doc.astype(np.uint64) << np.uint64(32)) | feature
    key, count = np.unique(key, return_counts=True)  # One entry per (document, feature).
    row = (key >> np.uint64(32)).astype(np.int64) * cfg.dim
    feature = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    value = np.log1p(count)
    out = np.zeros(num_docs * cfg.dim, np.float64)
    for k in range(cfg.nnz):
        g = fmix32(feature ^ _salt(cfg.seed, 3, k))
        col = (g.astype(np.uint64) * np.uint64(cfg.dim)) >> np.uint64(32)  # Uniform in [0, dim).
        out += np.bincount(row + col.astype(np.int64), weights=np.where(g & np.uint32(1), value, -value),
                           minlength=out.size)
    return out.reshape(num_docs, cfg.dim)


def embed_documents(docs: Sequence[str], cfg: EmbedConfig = EmbedConfig()) -> np.ndarray:
    """[N, dim] float32 unit-norm embeddings; a document without any token gets a zero row."""
    texts = [normalize_text(d) for d in docs]
    out = np.zeros((len(texts), cfg.dim), np.float32)
    start = 0
    while start < len(texts):  # Batches of about _BATCH_CHARS characters.
        stop, chars = start, 0
        while stop < len(texts) and (stop == start or chars + len(texts[stop]) <= _BATCH_CHARS):
            chars += len(texts[stop])
            stop += 1
        out[start:stop] = _project(*_features(texts[start:stop], cfg), stop - start, cfg)
        start = stop
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def subsample(num_docs: int, max_docs: int, *, seed: int = 0, domain: str = "") -> np.ndarray:
    """Sorted indices of the (at most) `max_docs` documents with the smallest salted index hash."""
    if max_docs <= 0 or num_docs <= max_docs:
        return np.arange(num_docs)
    salt = _salt(seed, zlib.crc32(domain.encode("utf-8")), 3)
    rank = fmix32(np.arange(num_docs, dtype=np.uint32) ^ salt)
    return np.sort(np.argsort(rank, kind="stable")[:max_docs])


def von_neumann_entropy(x_NxD: np.ndarray, *, method: str = "auto") -> float:
    """VNE (nats) of `K / N`, `K` the cosine kernel of the rows of `x_NxD` (rows are normalised here).

    `method`: 'gram' decomposes the N x N `K / N`, 'covariance' the D x D `X^T X / N` (same nonzero
    spectrum), 'auto' the smaller of the two.
    """
    x = np.asarray(x_NxD, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"embeddings must be a non-empty [N, D] array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InputError("embeddings contain a zero or non-finite row; drop empty documents first")
    x = x / norms[:, None]
    n, d = x.shape
    if method == "auto":
        method = "gram" if n <= d else "covariance"
    if method == "gram":
        rho = (x @ x.T) / n
    elif method == "covariance":
        rho = (x.T @ x) / n
    else:
        raise InputError(f"method={method!r} is unknown; choose auto, gram or covariance")
    lam = np.linalg.eigvalsh(rho)
    lam = lam[lam > 0]
    return float(max(0.0, -np.sum(lam * np.log(lam))))


def domain_vne(docs: Sequence[str], *, domain: str, max_docs: int = 1000,
               cfg: EmbedConfig = EmbedConfig()) -> dict:
    """VNE of one domain's documents: {'vne', 'docs_total', 'docs_used'} (empty documents are skipped)."""
    idx = subsample(len(docs), max_docs, seed=cfg.seed, domain=domain)
    x = embed_documents([docs[i] for i in idx], cfg)
    x = x[np.linalg.norm(x, axis=1) > 0]
    if x.shape[0] == 0:
        raise InputError(
            f"domain {domain!r} has no document with text to embed; add documents or drop the domain")
    return {"vne": von_neumann_entropy(x), "docs_total": len(docs), "docs_used": int(x.shape[0])}
