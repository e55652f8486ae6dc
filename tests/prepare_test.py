"""`prepare_data`: spec -> tokens, cached in the workdir, reused, refused when the spec changes."""

import os

import numpy as np
import pytest

from bimix_jax.data.prepare import describe, load_prepared, prepare_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError

SMALL = dict(embedded_chars_per_domain=20_000, vocab_size=512, tokenizer_sample_chars=20_000)
FILES = {"tokenizer.model", "corpus.json.gz", "tokens.npz", "stats.json", "spec.json"}


def _snapshot(ddir):
    out = {}
    for f in sorted(os.listdir(ddir)):
        with open(os.path.join(ddir, f), "rb") as fh:
            out[f] = fh.read()
    return out


def _split_docs(buf, eos):
    ends = np.flatnonzero(buf == eos)
    return [buf[s:e] for s, e in zip(np.concatenate([[0], ends[:-1] + 1]), ends)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wd")
    return str(wd), prepare_data(DataSpec(**SMALL), str(wd))


def test_tokens_are_the_corpus_documents(prepared):
    wd, p = prepared
    assert set(os.listdir(os.path.join(wd, "data"))) == FILES and not p.from_cache
    assert p.tokens.domains == p.corpus.domains and len(p.tokens.domains) == 5
    assert p.tokens.vocab_size == p.tokenizer.vocab_size == 512 and p.tokens.eos_id == p.tokenizer.eos_id
    for d in p.tokens.domains:
        for split in ("train", "val"):
            buf = (p.tokens.train if split == "train" else p.tokens.val)[d]
            docs = _split_docs(buf, p.tokens.eos_id)
            assert [p.tokenizer.decode(x) for x in docs] == list(p.corpus.documents(d, split))
            s = p.stats[d]
            assert s[f"{split}_tokens"] == buf.size and s[f"{split}_docs"] == len(docs)
            assert s[f"{split}_chars"] == sum(map(len, p.corpus.documents(d, split)))


def test_domains_differ_in_token_distribution(prepared):
    _, p = prepared
    V = p.tokens.vocab_size
    dist = {d: np.bincount(p.tokens.train[d], minlength=V) / p.tokens.train[d].size for d in p.tokens.domains}

    def js(a, b):
        m = (a + b) / 2
        kl = lambda x: np.sum(x[x > 0] * np.log(x[x > 0] / m[x > 0]))  # noqa: E731
        return (kl(a) + kl(b)) / 2

    ds = p.tokens.domains
    pairs = [(a, b) for i, a in enumerate(ds) for b in ds[i + 1:]]
    assert min(js(dist[a], dist[b]) for a, b in pairs) > 0.08  # Max is ln 2 = 0.69.


def test_rerun_reuses_the_cache(prepared):
    wd, p = prepared
    before = _snapshot(os.path.join(wd, "data"))
    q = prepare_data(DataSpec(**SMALL), wd)
    assert q.from_cache and q.tokens.fingerprint() == p.tokens.fingerprint()
    assert q.corpus.to_dict() == p.corpus.to_dict() and dict(q.stats) == dict(p.stats)
    assert _snapshot(os.path.join(wd, "data")) == before
    r = load_prepared(wd)
    assert r.spec == DataSpec(**SMALL) and r.tokens.fingerprint() == p.tokens.fingerprint()


def test_deterministic_across_workdirs_and_seeded(prepared, tmp_path):
    wd, p = prepared
    again = prepare_data(DataSpec(**SMALL), str(tmp_path / "a"))
    assert again.tokens.fingerprint() == p.tokens.fingerprint()
    assert _snapshot(str(tmp_path / "a" / "data")) == _snapshot(os.path.join(wd, "data"))
    other = prepare_data(DataSpec(seed=1, **SMALL), str(tmp_path / "b"))
    assert other.tokens.fingerprint() != p.tokens.fingerprint()


def test_changed_spec_is_refused_and_nothing_is_touched(prepared):
    wd, _ = prepared
    before = _snapshot(os.path.join(wd, "data"))
    with pytest.raises(InputError) as e:
        prepare_data(DataSpec(**{**SMALL, "vocab_size": 1024}), wd)
    msg = str(e.value)
    assert "\n" not in msg and "vocab_size=512 there, 1024 now" in msg and "fresh workdir" in msg
    assert _snapshot(os.path.join(wd, "data")) == before


def test_bad_input_writes_nothing(tmp_path):
    for spec in (DataSpec(domains="poetry", **SMALL), DataSpec(source="folder", path=str(tmp_path / "x")),
                 DataSpec(tokenizer_path=str(tmp_path / "none.model"), **SMALL)):
        with pytest.raises(InputError):
            prepare_data(spec, str(tmp_path / "wd"))
        assert not os.path.exists(tmp_path / "wd")


def test_given_tokenizer_is_used_and_copied(prepared, tmp_path):
    wd, p = prepared
    src = os.path.join(wd, "data", "tokenizer.model")
    q = prepare_data(DataSpec(tokenizer_path=src, **SMALL), str(tmp_path / "wd"))
    assert q.tokens.fingerprint() == p.tokens.fingerprint()  # Same corpus, same tokenizer.
    assert q.tokenizer_path == str(tmp_path / "wd" / "data" / "tokenizer.model")
    assert q.tokenizer.model_proto == p.tokenizer.model_proto


def test_interrupted_or_damaged_cache(tmp_path):
    wd = str(tmp_path / "wd")
    p = prepare_data(DataSpec(**SMALL), wd)
    os.remove(os.path.join(wd, "data", "tokens.npz"))  # Incomplete: rebuilt for the same spec.
    q = prepare_data(DataSpec(**SMALL), wd)
    assert not q.from_cache and q.tokens.fingerprint() == p.tokens.fingerprint()
    other = DomainTokens(p.tokens.domains, p.tokens.val, p.tokens.train, p.tokens.vocab_size, p.tokens.eos_id)
    other.save(os.path.join(wd, "data", "tokens.npz"))
    with pytest.raises(InputError, match="does not match"):
        prepare_data(DataSpec(**SMALL), wd)
    with pytest.raises(InputError, match="holds no prepared data"):
        load_prepared(str(tmp_path / "empty"))


def test_describe_table(prepared):
    _, p = prepared
    table = describe(p.stats)
    lines = table.splitlines()
    assert len(lines) == 2 + len(p.tokens.domains) + 1 and lines[-1].startswith("| **total**")
    for d in p.tokens.domains:
        s = p.stats[d]
        assert f"| {d} | {d} | {s['train_docs']:,} + {s['val_docs']:,} |" in table


def test_selection_split_tokens_and_unchanged_two_way_data(prepared, tmp_path):
    import dataclasses
    import json

    wd, p = prepared
    q = prepare_data(DataSpec(select_fraction=0.1, min_select_docs=3, **SMALL), str(tmp_path / "sel"))
    assert q.tokens.has_select and not p.tokens.has_select
    assert q.tokens.fingerprint() != p.tokens.fingerprint()
    for d in p.tokens.domains:
        assert q.corpus.val[d] == p.corpus.val[d]  # (the tokenizer, trained on the training split, differs)
        assert q.stats[d]["select_docs"] == len(_split_docs(q.tokens.select[d], q.tokens.eos_id)) >= 1
        assert q.stats[d]["train_docs"] + q.stats[d]["select_docs"] == p.stats[d]["train_docs"]
    assert "documents (train + select + val)" in describe(q.stats)
    again = DomainTokens.load(os.path.join(str(tmp_path / "sel"), "data", "tokens.npz"))
    assert again.fingerprint() == q.tokens.fingerprint()
    # A two-way corpus keeps its fingerprint and file: the tokens object without a selection split is unchanged.
    assert dataclasses.replace(p.tokens, select={}).fingerprint() == p.tokens.fingerprint()
    # A cache written before the selection fields existed still loads.
    spec_path = os.path.join(wd, "data", "spec.json")
    old = {k: v for k, v in json.load(open(spec_path)).items() if k not in ("select_fraction", "min_select_docs")}
    with open(spec_path, "w") as f:
        json.dump(old, f)
    assert prepare_data(DataSpec(**SMALL), wd).from_cache and load_prepared(wd).tokens.fingerprint() == \
        p.tokens.fingerprint()
