"""Offline document embeddings and the von Neumann entropy of their cosine kernel."""

import collections
import math

import numpy as np
import pytest

from bimix_jax.errors import InputError
from bimix_jax.entropy import vne
from bimix_jax.entropy.vne import EmbedConfig, domain_vne, embed_documents, von_neumann_entropy

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(x, y):\n    return x + y\n",
    "<html><body><h1>Title</h1><p>Some text.</p></body></html>",
    "12 + 30 = 42; 7 * 6 = 42; 84 / 2 = 42",
    "name,date,amount\nalice,2024-01-02,10.50\nbob,2024-02-03,7.25",
]


def exact_features(text: str, orders=(3, 4, 5)) -> collections.Counter:
    s = vne.normalize_text(text)
    feats = collections.Counter(("w", w) for w in s.split())
    for n in orders:
        feats.update(("c", s[i:i + n]) for i in range(len(s) - n + 1))
    return feats


def exact_cosine(a: str, b: str) -> float:
    fa, fb = exact_features(a), exact_features(b)
    va = {k: math.log1p(v) for k, v in fa.items()}
    vb = {k: math.log1p(v) for k, v in fb.items()}
    dot = sum(v * vb.get(k, 0.0) for k, v in va.items())
    return dot / math.sqrt(sum(v * v for v in va.values()) * sum(v * v for v in vb.values()))


def test_vne_is_zero_for_identical_documents():
    assert von_neumann_entropy(np.tile([[0.3, -1.0, 2.0]], (50, 1))) == pytest.approx(0.0, abs=1e-9)
    r = domain_vne([DOCS[0]] * 40, domain="dup")
    assert r["vne"] == pytest.approx(0.0, abs=1e-6) and r["docs_used"] == 40


@pytest.mark.parametrize("n, d", [(1, 5), (7, 7), (12, 40)])
def test_vne_is_ln_n_for_mutually_orthogonal_documents(n, d):
    q, _ = np.linalg.qr(np.random.default_rng(n).normal(size=(d, n)))
    x = q.T * np.arange(1, n + 1)[:, None]  # Orthogonal rows of different norms (the kernel is cosine).
    for method in ("gram", "covariance", "auto"):
        assert von_neumann_entropy(x, method=method) == pytest.approx(math.log(n), abs=1e-9)


@pytest.mark.parametrize("n, d", [(300, 16), (10, 64), (64, 64)])
def test_covariance_shortcut_equals_direct_n_by_n_eigendecomposition(n, d):
    x = np.random.default_rng(d).normal(size=(n, d)) + 0.5  # Correlated rows, a non-trivial spectrum.
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(u @ u.T / n)  # The full N x N spectrum, zeros included.
    lam = lam[lam > 1e-15]
    direct = float(-np.sum(lam * np.log(lam)))
    assert von_neumann_entropy(x, method="covariance") == pytest.approx(direct, abs=1e-9)
    assert von_neumann_entropy(x, method="gram") == pytest.approx(direct, abs=1e-9)
    assert 0 < direct <= math.log(min(n, d)) + 1e-12


def test_embeddings_are_unit_norm_deterministic_and_seeded():
    x = embed_documents(DOCS)
    assert x.shape == (5, 256) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(x, embed_documents(DOCS))
    np.testing.assert_array_equal(x[2], embed_documents([DOCS[4], DOCS[2]])[1])  # Batch-independent.
    assert not np.allclose(x, embed_documents(DOCS, EmbedConfig(seed=1)))
    np.testing.assert_array_equal(embed_documents(["Hello,  WORLD!"]), embed_documents(["hello , world !"]))
    assert not embed_documents(["", "   \n"]).any()  # No token: zero rows.


def test_projection_preserves_the_cosine_of_exact_ngram_features():
    cfg = EmbedConfig(dim=4096, nnz=8)
    x = embed_documents(DOCS + ["The quick brown fox jumped over a lazy cat."], cfg).astype(np.float64)
    texts = DOCS + ["The quick brown fox jumped over a lazy cat."]
    errors = [abs(float(x[i] @ x[j]) - exact_cosine(texts[i], texts[j]))
              for i in range(len(texts)) for j in range(i + 1, len(texts))]
    assert max(errors) < 0.08  # The sparse JL estimate has a standard deviation of about 0.02 here.
    assert exact_cosine(DOCS[0], texts[-1]) > 0.4 and float(x[0] @ x[-1]) > 0.4


def test_subsample_is_seeded_sorted_and_bounded():
    a = vne.subsample(1000, 100, seed=0, domain="web")
    assert a.size == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    np.testing.assert_array_equal(a, vne.subsample(1000, 100, seed=0, domain="web"))
    assert not np.array_equal(a, vne.subsample(1000, 100, seed=1, domain="web"))
    assert not np.array_equal(a, vne.subsample(1000, 100, seed=0, domain="code"))
    np.testing.assert_array_equal(vne.subsample(50, 100), np.arange(50))
    r = domain_vne(DOCS * 30, domain="web", max_docs=20)
    assert r["docs_used"] == 20 and r["docs_total"] == 150


def test_diverse_documents_have_higher_vne_than_near_duplicates():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(2000)]
    diverse = [" ".join(rng.choice(words, 30)) for _ in range(100)]
    base = " ".join(words[:30])
    near = [base + f" w{i}" for i in range(100)]
    assert domain_vne(diverse, domain="d")["vne"] > domain_vne(near, domain="n")["vne"] + 1.0


def test_bad_input():
    with pytest.raises(InputError, match="domain 'blank' has no document with text"):
        domain_vne(["", " \n "], domain="blank")
    with pytest.raises(InputError, match="zero or non-finite row"):
        von_neumann_entropy(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(InputError, match="method='svd' is unknown"):
        von_neumann_entropy(np.eye(2), method="svd")
    with pytest.raises(InputError, match="char_orders"):
        EmbedConfig(char_orders=(0,))
