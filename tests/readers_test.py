"""Real-corpus readers (folder, Pile/SlimPajama jsonl, TFDS) on data the tests create."""

import gzip
import json
import os

import pytest

from bimix_jax.data.readers import load_corpus, read_documents
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError

PILE_SETS = ["Pile-CC", "Github", "DM Mathematics"]


def _write_jsonl(path, records, *, gz=False):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


def _pile_records(n_per_set, field="pile_set_name", sets=PILE_SETS):
    return [{"text": f"{s} document {i}\nsecond line {i * 7}", "meta": {field: s}}
            for i in range(n_per_set) for s in sets]


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "web-text.txt").write_text("first doc\nline two\n\n  \t\nsecond doc\n\n\n\nthird doc\n")
    (root / "Code").mkdir()
    (root / "Code" / "b.txt").write_text("def b():\n    return 2\n")
    (root / "Code" / "a.txt").write_text("def a():\n\n    return 1\n")
    (root / "Code" / "sub").mkdir()
    (root / "Code" / "sub" / "c.txt").write_text("x = 3\n")
    _write_jsonl(root / "qa.jsonl", [{"body": f"question {i}?", "id": i} for i in range(5)] + [{"body": "  "}])
    (root / "notes.md").write_text("ignored")
    (root / ".hidden.txt").write_text("ignored")
    return root


def test_folder_reader(folder):
    docs, raw, _ = read_documents(DataSpec(source="folder", path=str(folder), text_field="body"))
    assert list(docs) == ["code", "qa", "web_text"]
    assert raw == {"code": "Code/", "qa": "qa.jsonl", "web_text": "web-text.txt"}
    assert docs["web_text"] == ["first doc\nline two", "second doc", "third doc"]
    # One document per file, sorted, recursive.
    assert docs["code"] == ["def a():\n\n    return 1\n", "def b():\n    return 2\n", "x = 3\n"]
    assert docs["qa"] == [f"question {i}?" for i in range(5)]  # The blank record is skipped.
    capped, _, _ = read_documents(DataSpec(source="folder", path=str(folder), text_field="body",
                                           domains="web-text,qa", max_docs_per_domain=2))
    assert list(capped) == ["web_text", "qa"] and all(len(v) == 2 for v in capped.values())
    c = load_corpus(DataSpec(source="folder", path=str(folder), text_field="body"))
    for d in c.domains:
        assert c.val[d] and c.train[d] and sorted(c.train[d] + c.val[d]) == sorted(docs[d])


@pytest.mark.parametrize("setup,needles", [
    (lambda r: (r / "a.txt").write_text("\n \n"), ["'a'", "no text"]),
    (lambda r: ((r / "a.txt").write_text("x\n\ny"), (r / "A").mkdir()), ["'A/'", "'a.txt'", "normalise to 'a'"]),
    (lambda r: _write_jsonl(r / "q.jsonl", ['{"text": "ok"}', '{"text": oops}']),
     ["q.jsonl line 2", "not valid JSON"]),
    (lambda r: _write_jsonl(r / "q.jsonl", [{"text": "ok"}, {"txt": "no"}]), ["q.jsonl line 2", "'text'"]),
    (lambda r: _write_jsonl(r / "q.jsonl", [{"text": 3}]), ["q.jsonl line 1", "not text"]),
    (lambda r: (r / "a.txt").write_bytes(b"ok\n\n\xff\xfe bad"), ["a.txt", "UTF-8"]),
    (lambda r: (r / "notes.md").write_text("no domain here"), ["holds no domains"]),
])
def test_folder_bad_input(tmp_path, setup, needles):
    setup(tmp_path)
    with pytest.raises(InputError) as e:
        load_corpus(DataSpec(source="folder", path=str(tmp_path)))
    _one_line_error(e, *needles)


def test_folder_missing_and_unknown_domain(folder, tmp_path):
    with pytest.raises(InputError) as e:
        load_corpus(DataSpec(source="folder", path=str(tmp_path / "nope")))
    _one_line_error(e, "nope", "is not a folder")
    with pytest.raises(InputError) as e:
        load_corpus(DataSpec(source="folder", path=str(folder), domains="code,poetry", text_field="body"))
    _one_line_error(e, "'poetry'", "available: code, qa, web_text")


def test_pile_jsonl_gz(tmp_path):
    path = tmp_path / "00.jsonl.gz"
    _write_jsonl(path, _pile_records(6), gz=True)
    docs, raw, _ = read_documents(DataSpec(source="jsonl", path=str(path)))
    assert list(docs) == ["dm_mathematics", "github", "pile_cc"]
    assert raw == {"dm_mathematics": "DM Mathematics", "github": "Github", "pile_cc": "Pile-CC"}
    assert docs["github"] == [f"Github document {i}\nsecond line {i * 7}" for i in range(6)]
    sel, _, _ = read_documents(DataSpec(source="jsonl", path=str(path), domains="Pile-CC,github",
                                        max_docs_per_domain=4))
    assert list(sel) == ["pile_cc", "github"] and [len(v) for v in sel.values()] == [4, 4]


def test_jsonl_streams_and_stops_when_selected_domains_are_full(tmp_path):
    path = tmp_path / "pile.jsonl"
    _write_jsonl(path, [json.dumps(r) for r in _pile_records(3)] + ["{broken"])
    spec = dict(source="jsonl", path=str(path), domains="github,pile_cc")
    docs, _, _ = read_documents(DataSpec(max_docs_per_domain=3, **spec))  # Never reaches the broken line.
    assert [len(v) for v in docs.values()] == [3, 3]
    with pytest.raises(InputError) as e:
        read_documents(DataSpec(max_docs_per_domain=4, **spec))
    _one_line_error(e, "pile.jsonl line 10", "not valid JSON")


def test_slimpajama_folder_and_glob(tmp_path):
    sets = ["RedPajamaGithub", "RedPajamaC4", "RedPajamaWikipedia"]
    (tmp_path / "chunk1").mkdir()
    recs = _pile_records(4, field="redpajama_set_name", sets=sets)
    _write_jsonl(tmp_path / "chunk1" / "example_train_0.jsonl", recs[:6])
    _write_jsonl(tmp_path / "chunk1" / "example_train_1.jsonl.gz", recs[6:], gz=True)
    for path in (str(tmp_path), str(tmp_path / "chunk1" / "example_train_*")):
        docs, raw, _ = read_documents(DataSpec(source="jsonl", path=path, domain_field="meta.redpajama_set_name"))
        assert list(docs) == ["redpajamac4", "redpajamagithub", "redpajamawikipedia"]
        assert raw["redpajamac4"] == "RedPajamaC4" and all(len(v) == 4 for v in docs.values())
    with pytest.raises(InputError) as e:  # The Pile's field is absent from SlimPajama records.
        read_documents(DataSpec(source="jsonl", path=str(tmp_path)))
    _one_line_error(e, "example_train_0.jsonl line 1", "'meta.pile_set_name'", "meta.redpajama_set_name")


def test_jsonl_bad_input(tmp_path):
    cases = {
        "missing": (None, ["does not exist"]),
        "nomatch/*.jsonl": (None, ["matches no"]),
        "list.jsonl": ('[1, 2]', ["list.jsonl line 1", "not an object"]),
        "notext.jsonl": (json.dumps({"meta": {"pile_set_name": "Github"}}), ["notext.jsonl line 1", "'text'"]),
        "badname.jsonl": (json.dumps({"text": "t", "meta": {"pile_set_name": "???"}}), ["'???'", "letters"]),
    }
    for name, (line, needles) in cases.items():
        if line is not None:
            _write_jsonl(tmp_path / name, [line])
        with pytest.raises(InputError) as e:
            load_corpus(DataSpec(source="jsonl", path=str(tmp_path / name)))
        _one_line_error(e, *needles)
    full = gzip.compress(("".join(json.dumps(r) + "\n" for r in _pile_records(200))).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError) as e:
        load_corpus(DataSpec(source="jsonl", path=str(tmp_path / "cut.jsonl.gz")))
    _one_line_error(e, "cut.jsonl.gz", "unreadable")
    _write_jsonl(tmp_path / "empty.jsonl", [{"text": " ", "meta": {"pile_set_name": "Github"}}])
    with pytest.raises(InputError) as e:
        load_corpus(DataSpec(source="jsonl", path=str(tmp_path / "empty.jsonl")))
    _one_line_error(e, "'github'", "no text")


def test_zstd_without_zstandard_is_a_clear_error(tmp_path):
    try:
        import zstandard  # noqa: F401
    except ImportError:
        (tmp_path / "x.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
        with pytest.raises(InputError) as e:
            load_corpus(DataSpec(source="jsonl", path=str(tmp_path / "x.jsonl.zst")))
        _one_line_error(e, "x.jsonl.zst", "pip install zstandard")
    else:
        data = "".join(json.dumps(r) + "\n" for r in _pile_records(3)).encode()
        (tmp_path / "x.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
        docs, _, _ = read_documents(DataSpec(source="jsonl", path=str(tmp_path / "x.jsonl.zst")))
        assert [len(v) for v in docs.values()] == [3, 3, 3]


def test_tfds_single_domain_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        docs, raw, where = read_documents(DataSpec(source="tfds", tfds_name="lm1b"))
        capped, _, _ = read_documents(DataSpec(source="tfds", tfds_name="lm1b", max_docs_per_domain=5))
    assert list(docs) == ["lm1b"] and raw == {"lm1b": "lm1b"} and "lm1b" in where
    assert 1 <= len(docs["lm1b"]) <= 12 and all(isinstance(t, str) and t.strip() for t in docs["lm1b"])
    assert capped["lm1b"] == docs["lm1b"][:5]


def test_tfds_class_label_domains_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = dict(source="tfds", tfds_name="ag_news_subset", domain_field="label", text_field="description")
    with tfds.testing.mock_data(num_examples=40):
        docs, raw, _ = read_documents(DataSpec(**spec))
        ds = tfds.data_source("ag_news_subset", split="train")
        labels = ds.dataset_info.features["label"].names
        expected = {}
        for i in range(len(ds)):
            if ds[i]["description"].strip():
                expected.setdefault(labels[int(ds[i]["label"])], []).append(ds[i]["description"])
        with pytest.raises(InputError) as e:
            read_documents(DataSpec(**{**spec, "text_field": "body"}))
        _one_line_error(e, "'body'", "description, label, title")
    assert set(raw.values()) == set(expected) and set(docs) <= {"world", "sports", "business", "sci_tech"}
    for d, r in raw.items():
        assert docs[d] == expected[r]


def test_tfds_missing_dataset_is_an_input_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    for name in ("no_such_dataset_xyz", "lm1b"):
        with pytest.raises(InputError) as e:
            load_corpus(DataSpec(source="tfds", tfds_name=name, tfds_data_dir=str(tmp_path)))
        _one_line_error(e, f"TFDS dataset {name}", "without downloading")
    assert not os.listdir(tmp_path)  # Nothing downloaded or written.
