"""SentencePiece training, exact round trips on every domain, eos packing and vocabulary checks."""

import numpy as np
import pytest

from bimix_jax.data.readers import load_corpus
from bimix_jax.data.spec import DataSpec
from bimix_jax.data.tokenizer import Tokenizer, balanced_sample, train_tokenizer
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(DataSpec(embedded_chars_per_domain=40_000))


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer(corpus.train, vocab_size=512, sample_chars=30_000, seed=0)


def test_round_trip_on_every_domain(corpus, tok):
    assert tok.vocab_size == 512 and tok.eos_id == 2
    for d in corpus.domains:
        docs = list(corpus.val[d]) + list(corpus.train[d][:5])
        ids = tok.encode(docs)
        assert all(x.dtype == np.int32 and x.size for x in ids)
        assert [tok.decode(x) for x in ids] == docs, d
        assert len(docs[0]) / ids[0].size > 1.0  # It compresses.


@pytest.mark.parametrize("text", [
    "  leading spaces\n\n\n  and blank lines  \n",
    "def f(x):\n\tif x:\n        return {'a': [1, 2]}  # trailing   ",
    "naïve café — 東京, Ελληνικά, emoji 🎉, nul \x00 and \r\n",
    "12345678901234567890 + 0.000001 = -3e-9",
    "",
])
def test_round_trip_on_awkward_text(tok, text):
    assert tok.decode(tok.encode([text])[0]) == text


def test_newlines_and_digits_are_single_tokens(tok):
    pieces = tok.pieces("a = 1234\nb")
    assert "\n" in pieces and all("\n" not in p or p == "\n" for p in pieces)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "3", "4"]
    code = tok.pieces("class A:\n        return x\n")
    assert any(set(p) == {"▁"} and len(p) > 1 for p in code)  # Indentation merges into space-run pieces.


def test_encode_documents_appends_eos(tok):
    docs = ["first doc", "second\ndoc", "x"]
    buf = tok.encode_documents(docs)
    assert buf.dtype == np.int32 and buf.ndim == 1
    assert buf.size == sum(x.size for x in tok.encode(docs)) + len(docs)
    ends = np.flatnonzero(buf == tok.eos_id)
    assert ends[-1] == buf.size - 1 and len(ends) == len(docs)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert [tok.decode(buf[s:e]) for s, e in zip(starts, ends)] == docs


def test_training_is_deterministic_and_depends_on_the_sample(corpus, tok):
    again = train_tokenizer(corpus.train, vocab_size=512, sample_chars=30_000, seed=0)
    assert again.model_proto == tok.model_proto and again.fingerprint() == tok.fingerprint()
    other = train_tokenizer(corpus.train, vocab_size=512, sample_chars=10_000, seed=0)
    assert other.model_proto != tok.model_proto


def test_balanced_sample(corpus):
    sample = balanced_sample(corpus.train, 8_000, seed=0)
    assert sum(map(len, sample)) <= 8_000 * len(corpus.domains)
    assert max(map(len, sample)) <= 2000
    for d in corpus.domains:  # Every domain contributes (each has more than 8k characters).
        text = "".join(corpus.train[d])
        assert sum(len(s) for s in sample if s in text) >= 4_000, d
    assert balanced_sample(corpus.train, 8_000, seed=1) != sample


def test_save_load_and_vocabulary_mismatch(tmp_path, tok):
    path = str(tmp_path / "t.model")
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.model_proto == tok.model_proto and loaded.path == path
    buf = tok.encode_documents(["hello world", "more text"])
    good = DomainTokens(("a",), {"a": buf}, {"a": buf}, vocab_size=tok.vocab_size, eos_id=tok.eos_id)
    loaded.check_tokens(good)
    bigger = DomainTokens(("a",), {"a": buf}, {"a": buf + 600}, vocab_size=2048, eos_id=tok.eos_id)
    with pytest.raises(InputError, match="re-tokenize") as e:
        loaded.check_tokens(bigger)
    assert "vocabulary 2048" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="eos 5"):
        loaded.check_tokens(DomainTokens(("a",), {"a": buf}, {"a": buf}, vocab_size=tok.vocab_size, eos_id=5))


def test_bad_tokenizer_input(tmp_path, corpus):
    with pytest.raises(InputError, match="tokenizer_path"):
        Tokenizer.load(str(tmp_path / "missing.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a SentencePiece model"):
        Tokenizer.load(str(tmp_path / "junk.model"))
    with pytest.raises(InputError, match="data.vocab_size=100") as e:
        train_tokenizer(corpus.train, vocab_size=100, sample_chars=5_000)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="tokenizer_sample_chars"):
        train_tokenizer(corpus.train, vocab_size=512, sample_chars=0)


def test_soft_vocabulary_limit_on_tiny_corpora():
    tiny = train_tokenizer({"a": ["abc abd abe " * 20, "xyz"]}, vocab_size=4096, sample_chars=1000)
    assert 259 < tiny.vocab_size < 4096
    assert tiny.decode(tiny.encode(["abd xyz"])[0]) == "abd xyz"
