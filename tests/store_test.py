"""Token store: streamed shards equal the in-memory tokenization; random reads; process split; resume."""

import json
import os

import numpy as np
import pytest

from bimix_jax.data import store
from bimix_jax.data.tokenizer import Tokenizer, train_tokenizer
from bimix_jax.errors import InputError

WORDS = {"code": "def x ( ) : return y + 1 ; for i in range".split(), "prose": "the cat sat on a mat and ran far away".split()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("store_corpus")
    rng = np.random.default_rng(0)
    sources = {}
    docs = {}
    for d, words in WORDS.items():
        sources[d], docs[d] = [], []
        for f in range(3):
            path = root / f"{d}-{f}.jsonl"
            file_docs = [" ".join(rng.choice(words, rng.integers(3, 40))) for _ in range(30)]
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in file_docs))
            sources[d].append(str(path))
            docs[d].append(file_docs)
    tok = train_tokenizer({d: [t for f in v for t in f] for d, v in docs.items()}, vocab_size=320, sample_chars=100_000)
    tok_path = str(root / "tok.model")
    tok.save(tok_path)
    return sources, docs, tok_path


def _expected(spec, docs, tok):
    out = {}
    for d in sorted(docs):
        parts = {"train": [], "val": []}
        for u, file_docs in enumerate(docs[d]):
            for i, t in enumerate(file_docs):
                parts["val" if store._is_val(spec.seed, d, u, i, spec.val_fraction) else "train"].append(t)
        out[d] = {s: tok.encode_documents(p) for s, p in parts.items()}
    return out


def test_store_matches_tokenizer_and_reads_any_range(corpus, tmp_path):
    sources, docs, tok_path = corpus
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=7, val_fraction=0.2)
    out = str(tmp_path / "st")
    # Two processes split the units: disjoint, and together all of them.
    done0 = store.prepare_store(spec, out, process_index=0, process_count=2, batch_chars=200)
    with pytest.raises(InputError, match="not done"):
        store.finalize_store(spec, out)
    done1 = store.prepare_store(spec, out, process_index=1, process_count=2, batch_chars=200)
    assert not set(done0) & set(done1) and len(done0) + len(done1) == 6
    store.finalize_store(spec, out)
    st = store.open_store(out)
    want = _expected(spec, docs, Tokenizer.load(tok_path))
    rng = np.random.default_rng(1)
    for d in st.domains:
        for s in store.SPLITS:
            sp = st.split(d, s)
            assert sp.num_tokens == want[d][s].size > 0
            np.testing.assert_array_equal(np.concatenate(list(sp.chunks(chunk_records=3))), want[d][s])
            for _ in range(20):  # Ranges across records and shard boundaries.
                n = int(rng.integers(1, 40))
                a = int(rng.integers(0, sp.num_tokens - n))
                np.testing.assert_array_equal(sp.read(a, n), want[d][s][a:a + n])
    assert st.vocab_size == 320 and st.index["dtype"] == "uint16"


def test_store_resumes_after_kill(corpus, tmp_path):
    sources, _, tok_path = corpus
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=16)
    out = str(tmp_path / "st")
    store.prepare_store(spec, out)
    store.finalize_store(spec, out)
    before = {f: open(os.path.join(out, "code", f), "rb").read() for f in sorted(os.listdir(os.path.join(out, "code")))}
    # A kill during unit code/1: its marker is absent and a partial file is left behind.
    os.remove(os.path.join(out, "code", "val-00001.done.json"))
    open(os.path.join(out, "code", "train-00001.array_record.partial"), "wb").write(b"junk")
    assert store.pending_units(spec, out) == [("code", 1, sources["code"][1])]
    assert store.prepare_store(spec, out) == ["code/1"]  # Only the unfinished unit is redone.
    after = {f: open(os.path.join(out, "code", f), "rb").read() for f in sorted(os.listdir(os.path.join(out, "code")))}
    assert after == before
    other = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=8)
    with pytest.raises(InputError, match="another spec"):
        store.prepare_store(other, out)


def test_entropy_report_streams_the_store(corpus, tmp_path):
    from bimix_jax.entropy.counts import entropy_report

    sources, docs, tok_path = corpus
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=5, val_fraction=0.0)
    out = str(tmp_path / "st")
    store.prepare_store(spec, out, workers=2)  # Two local processes.
    store.finalize_store(spec, out)
    st = store.open_store(out)
    want = _expected(spec, docs, Tokenizer.load(tok_path))
    streamed = entropy_report({d: st.split(d) for d in st.domains}, st.vocab_size, sequence_length=16)
    in_memory = entropy_report({d: want[d]["train"] for d in st.domains}, st.vocab_size, sequence_length=16)
    assert streamed["entropy"] == in_memory["entropy"] and streamed["mixture"] == in_memory["mixture"]


@pytest.mark.slow  # Generates and streams a 2 GiB corpus: tens of minutes on 2 cores.
def test_streamed_preparation_memory_is_bounded_on_2gb(tmp_path):
    from experiments import bench_data_lib

    out = bench_data_lib.measure(str(tmp_path), corpus_mb=2048, compare_mb=0)
    assert out["corpus_bytes"] >= 2 * 2**30
    # The child's peak RSS is the interpreter and libraries plus one batch and one record: far below the corpus.
    assert out["streamed"]["peak_rss_mb"] < 400, out
    assert out["streamed"]["tokens"] > 0


def test_prepare_store_binary(corpus, tmp_path):
    import subprocess
    import sys

    sources, _, tok_path = corpus
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR="")
    src = ";".join(f"{d}={os.path.dirname(fs[0])}/{d}-*.jsonl" for d, fs in sources.items())
    out = str(tmp_path / "st")
    ok = subprocess.run([sys.executable, "-m", "experiments.prepare_store", f"--sources={src}", f"--tokenizer={tok_path}",
                         f"--out={out}", "--record_tokens=32"], cwd=root, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert store.open_store(out).token_counts()["code"] > 0
    bad = subprocess.run([sys.executable, "-m", "experiments.prepare_store", "--sources=code=/nonexistent/*.jsonl",
                          f"--tokenizer={tok_path}", f"--out={tmp_path / 'bad'}"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --sources: no file matches '/nonexistent/*.jsonl' for domain 'code'; fix the glob"]
    assert not os.path.exists(tmp_path / "bad")
