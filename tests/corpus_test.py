"""The embedded corpus, the train/validation split rule, domain names and selection."""

import ast
import collections
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bimix_jax.data import embedded
from bimix_jax.data.corpus import normalize_domain_name, select_domains, split_mask
from bimix_jax.data.readers import load_corpus
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.loss_table import DOMAIN_NAME

SMALL = dict(embedded_chars_per_domain=30_000)


def _bigram_dist(docs):
    counts = collections.Counter()
    for doc in docs:
        counts.update(doc[i:i + 2] for i in range(len(doc) - 1))
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def _js(p, q):
    keys = set(p) | set(q)
    m = {k: (p.get(k, 0) + q.get(k, 0)) / 2 for k in keys}
    kl = lambda a: sum(v * math.log(v / m[k]) for k, v in a.items() if v > 0)  # noqa: E731
    return (kl(p) + kl(q)) / 2


def test_embedded_has_five_distinct_nonempty_domains():
    c = load_corpus(DataSpec(**SMALL))
    assert c.domains == tuple(sorted(embedded.DOMAINS))
    assert len(c.domains) >= 5
    for d in c.domains:
        assert c.num_docs("train")[d] >= 1 and c.num_docs("val")[d] >= 1
        assert all(doc.strip() for doc in c.train[d] + c.val[d])
        total = c.num_chars("train")[d] + c.num_chars("val")[d]
        assert 30_000 <= total < 30_000 + 25_000, (d, total)  # About the budget: it stops after crossing it.
    dists = {d: _bigram_dist(c.train[d]) for d in c.domains}
    for i, a in enumerate(c.domains):
        for b in c.domains[i + 1:]:
            assert _js(dists[a], dists[b]) > 0.1, (a, b)  # Character bigrams differ clearly (max is ln 2).


def test_embedded_domains_have_their_character():
    c = load_corpus(DataSpec(**SMALL))
    code = "\n".join(c.train["code"])
    assert "def " in code and "import " in code and "    return" in code
    assert all(" = " in line for doc in c.train["arithmetic"] for line in doc.splitlines())
    assert any("," in doc and "@example." in doc for doc in c.train["records"])
    assert all(doc.startswith(("<!DOCTYPE html>", "<?xml")) for doc in c.train["markup"])
    function_words = {}  # Share of English function words among alphabetic words.
    for d in ("prose", "code"):
        words = re.findall(r"[A-Za-z]+", " ".join(c.train[d]).lower())
        function_words[d] = sum(w in ("the", "of", "is", "a", "to", "and", "in") for w in words) / len(words)
    assert function_words["prose"] > max(0.12, 2 * function_words["code"]), function_words


def test_arithmetic_results_are_correct():
    docs = embedded.embedded_documents("arithmetic", seed=3, chars=5000)
    for line in "\n".join(docs).splitlines():
        lhs, rhs = line.split(" = ")
        if " remainder " in rhs:
            a, b = (int(x) for x in lhs.split(" / "))
            q, r = (int(x) for x in rhs.split(" remainder "))
            assert (q, r) == divmod(a, b)
        else:
            assert eval(lhs) == int(rhs)  # noqa: S307 - our own generated digits and operators.


def test_embedded_is_deterministic_and_seeded():
    a, b = load_corpus(DataSpec(**SMALL)), load_corpus(DataSpec(**SMALL))
    c = load_corpus(DataSpec(seed=1, **SMALL))
    for d in a.domains:
        assert a.train[d] == b.train[d] and a.val[d] == b.val[d]
        assert (a.train[d], a.val[d]) != (c.train[d], c.val[d]), d


def test_domain_selection_orders_and_does_not_change_documents():
    full = load_corpus(DataSpec(**SMALL))
    part = load_corpus(DataSpec(domains="records, Code", **SMALL))
    assert part.domains == ("records", "code")
    for d in part.domains:
        assert part.train[d] == full.train[d] and part.val[d] == full.val[d]


def test_split_is_disjoint_and_stable_under_document_caps():
    full = load_corpus(DataSpec(val_fraction=0.2, **SMALL))
    capped = load_corpus(DataSpec(val_fraction=0.2, max_docs_per_domain=7, **SMALL))
    for d in full.domains:
        assert not set(full.train[d]) & set(full.val[d])
        assert capped.num_docs("train")[d] + capped.num_docs("val")[d] == 7
        kept = set(capped.train[d]) | set(capped.val[d])
        # The cap keeps each document's side, except that the min_val_docs top-up may move more to val.
        assert set(capped.train[d]) <= set(full.train[d])
        assert set(full.val[d]) & kept <= set(capped.val[d])


def test_split_mask_rule():
    docs = [f"document {i}" for i in range(400)]
    val = split_mask(docs, seed=0, val_fraction=0.1, min_val_docs=4, domain="x")
    assert 20 <= val.sum() <= 60  # ~ Binomial(400, 0.1).
    assert np.array_equal(val, split_mask(docs[::-1], seed=0, val_fraction=0.1, min_val_docs=4, domain="x")[::-1])
    assert not np.array_equal(val, split_mask(docs, seed=1, val_fraction=0.1, min_val_docs=4, domain="x"))
    small = split_mask(docs[:6], seed=0, val_fraction=0.01, min_val_docs=4, domain="x")
    assert small.sum() == 4  # Topped up to min_val_docs.
    assert split_mask(docs[:2], seed=0, val_fraction=0.5, min_val_docs=10, domain="x").tolist().count(True) == 1
    dup = split_mask(["same", "same", "other", "x", "y"], seed=0, val_fraction=0.5, min_val_docs=0, domain="x")
    assert dup[0] == dup[1]  # Identical documents land on the same side.


@pytest.mark.parametrize("docs,match", [(["only one"], "at least 2"), (["same"] * 3, "identical")])
def test_split_mask_refuses_unsplittable_domains(docs, match):
    with pytest.raises(InputError, match=match) as e:
        split_mask(docs, seed=0, val_fraction=0.1, min_val_docs=4, domain="tiny")
    assert "'tiny'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("raw,name", [
    ("Pile-CC", "pile_cc"), ("DM Mathematics", "dm_mathematics"), ("RedPajamaGithub", "redpajamagithub"),
    ("Gutenberg (PG-19)", "gutenberg_pg_19"), ("Wikipedia (en)", "wikipedia_en"), ("sci/tech", "sci_tech"),
    ("arxiv.v2", "arxiv.v2"), ("Books3", "books3"),
])
def test_normalize_domain_name(raw, name):
    assert normalize_domain_name(raw) == name


@given(st.text())
def test_normalized_names_are_valid_and_stable(raw):
    name = normalize_domain_name(raw)
    assert name == "" or DOMAIN_NAME.fullmatch(name)
    assert normalize_domain_name(name) == name


def test_select_domains_errors_are_one_line_and_list_choices():
    assert select_domains(["a", "b", "c"], "", "x") == ("a", "b", "c")
    assert select_domains(["a", "b", "c"], "c,A", "x") == ("c", "a")
    with pytest.raises(InputError, match="available: a, b, c") as e:
        select_domains(["a", "b", "c"], "a,poetry", "the corpus")
    assert "'poetry'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="twice"):
        select_domains(["a", "b"], "a,A", "x")


def test_unknown_embedded_domain_and_empty_budget():
    with pytest.raises(InputError, match="available: arithmetic, code, markup, prose, records"):
        load_corpus(DataSpec(domains="poetry", **SMALL))
    with pytest.raises(InputError, match="embedded_chars_per_domain"):
        load_corpus(DataSpec(embedded_chars_per_domain=0))


def test_docstrings_leave_code_for_prose():
    src = '''"""Module doc."""
import os


class A:
    """Class doc
    on two lines."""

    def f(self):
        """Only a docstring."""

    def g(self):  # comment
        """Doc."""
        return 1
x = 1; y = """not a docstring"""
'''
    out = embedded._strip_docstrings(src, ast.parse(src))
    ast.parse(out)  # Still valid Python: an emptied body got `pass`.
    assert "doc" not in out.lower().replace("not a docstring", "")
    assert "return 1" in out and "# comment" in out and "not a docstring" in out
    code = "\n".join(embedded.embedded_documents("code", seed=0, chars=30_000))
    prose = "\n".join(embedded.embedded_documents("prose", seed=0, chars=600_000))  # Past pydoc topics.
    doc_lines = {ln.strip() for ln in prose.splitlines() if len(ln.strip()) > 60}
    assert not [ln for ln in code.splitlines() if ln.strip() in doc_lines and not ln.strip().startswith("#")]


def test_selection_split_is_carved_from_training_and_leaves_validation_alone():
    from bimix_jax.data.corpus import split_codes

    docs = [f"document {i}" for i in range(200)]
    two = split_mask(docs, seed=0, val_fraction=0.1, min_val_docs=4, domain="x")
    codes = split_codes(docs, seed=0, val_fraction=0.1, min_val_docs=4, select_fraction=0.15, min_select_docs=5,
                        domain="x")
    assert np.array_equal(codes == 2, two)  # the validation documents are those of the two-way split
    assert 20 <= np.sum(codes == 1) <= 50 and np.sum(codes == 0) > 100
    assert np.array_equal(codes, split_codes(docs[::-1], seed=0, val_fraction=0.1, min_val_docs=4,
                                             select_fraction=0.15, min_select_docs=5, domain="x")[::-1])
    none = split_codes(docs, seed=0, val_fraction=0.1, min_val_docs=4, select_fraction=0.0, min_select_docs=0,
                       domain="x")
    assert np.array_equal(none == 2, two) and not np.any(none == 1)
    few = split_codes(docs[:8], seed=0, val_fraction=0.01, min_val_docs=2, select_fraction=0.0, min_select_docs=30,
                      domain="x")
    assert np.sum(few == 2) == 2 and np.sum(few == 1) == 5 and np.sum(few == 0) == 1  # one stays for training
    with pytest.raises(InputError, match="too few for train, selection and validation"):
        split_codes(docs[:2], seed=0, val_fraction=0.5, min_val_docs=1, select_fraction=0.1, min_select_docs=0,
                    domain="x")


def test_corpus_with_selection_split():
    c = load_corpus(DataSpec(select_fraction=0.1, min_select_docs=3, **SMALL))
    plain = load_corpus(DataSpec(**SMALL))
    assert c.splits == ("train", "select", "val") and plain.splits == ("train", "val") and plain.select == {}
    for d in c.domains:
        assert c.val[d] == plain.val[d] and len(c.select[d]) >= 3
        assert sorted(c.train[d] + c.select[d]) == sorted(plain.train[d])
    from bimix_jax.data.corpus import Corpus
    assert Corpus.from_dict(c.to_dict()).select == c.select and "select" not in plain.to_dict()
