"""Token store: streamed shards equal the in-memory tokenization; three splits; random reads; process split;
resume; routing by a record field; TFDS; a tokenizer trained from the sources."""

import json
import os

import numpy as np
import pytest

from bimix_jax.data import store, store_sources
from bimix_jax.data.tokenizer import Tokenizer, train_tokenizer
from bimix_jax.errors import InputError

WORDS = {"code": "def x ( ) : return y + 1 ; for i in range".split(), "prose": "the cat sat on a mat and ran far away".split()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("store_corpus")
    rng = np.random.default_rng(0)
    sources, docs = {}, {}
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


def _expected(spec, tok):
    """Per domain and split, the tokens the store must hold (every unit's documents in order)."""
    out = {}
    for unit in store_sources.make_units(spec):
        docs = store_sources.documents(unit, text_field=spec.text_field, domain_field=spec.domain_field,
                                       tfds_data_dir=spec.tfds_data_dir, wanted=spec.domains)
        for i, (d, text) in enumerate(docs):
            split = store_sources.split_of(spec.seed, unit, i, spec.val_fraction, spec.select_fraction)
            out.setdefault(d, {s: [] for s in store.SPLITS})[split].append(text)
    return {d: {s: tok.encode_documents(p) for s, p in per.items()} for d, per in out.items()}


def _check_store(out, spec, tok_path):
    st = store.open_store(out)
    want = _expected(spec, Tokenizer.load(tok_path))
    assert set(st.domains) == set(want)
    rng = np.random.default_rng(1)
    for d in st.domains:
        for s in store.SPLITS:
            sp = st.split(d, s)
            assert sp.num_tokens == want[d][s].size
            if not sp.num_tokens:
                continue
            np.testing.assert_array_equal(np.concatenate(list(sp.chunks(chunk_records=3))), want[d][s])
            for _ in range(10):  # Ranges across records and shard boundaries.
                n = int(rng.integers(1, min(40, sp.num_tokens)))
                a = int(rng.integers(0, sp.num_tokens - n + 1))
                np.testing.assert_array_equal(sp.read(a, n), want[d][s][a:a + n])
    return st


def test_store_matches_tokenizer_and_reads_any_range(corpus, tmp_path):
    sources, _, tok_path = corpus
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=7, val_fraction=0.2,
                           select_fraction=0.2)
    out = str(tmp_path / "st")
    # Two processes split the units: disjoint, and together all of them.
    done0 = store.prepare_store(spec, out, process_index=0, process_count=2, batch_chars=200)
    with pytest.raises(InputError, match="not done"):
        store.finalize_store(spec, out)
    done1 = store.prepare_store(spec, out, process_index=1, process_count=2, batch_chars=200)
    units = {m["unit"] for m in done0}, {m["unit"] for m in done1}
    assert not units[0] & units[1] and len(units[0]) + len(units[1]) == 6
    store.finalize_store(spec, out)
    st = _check_store(out, spec, tok_path)
    assert st.vocab_size == 320 and st.index["dtype"] == "uint16"
    for d in st.domains:  # Three disjoint splits, each holding documents.
        assert all(st.split(d, s).docs > 0 for s in store.SPLITS)
        assert sum(st.split(d, s).docs for s in store.SPLITS) == 90


def test_store_resumes_after_kill(corpus, tmp_path):
    sources, _, tok_path = corpus
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=16)
    out = str(tmp_path / "st")
    store.prepare_store(spec, out)
    store.finalize_store(spec, out)
    before = {f: open(os.path.join(out, "code", f), "rb").read() for f in sorted(os.listdir(os.path.join(out, "code")))}
    # A kill during unit 1 (code's second file): its marker is absent and a partial file is left behind.
    os.remove(os.path.join(out, "units", "00001.done.json"))
    open(os.path.join(out, "code", "train-00001.array_record.partial"), "wb").write(b"junk")
    assert [u.index for u in store.pending_units(spec, out)] == [1]
    assert [m["unit"] for m in store.prepare_store(spec, out)] == [1]  # Only the unfinished unit is redone.
    after = {f: open(os.path.join(out, "code", f), "rb").read() for f in sorted(os.listdir(os.path.join(out, "code")))}
    assert after == before
    other = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=8)
    with pytest.raises(InputError, match="another spec"):
        store.prepare_store(other, out)


def test_domains_routed_by_a_record_field(corpus, tmp_path):
    """Pile-style files: every record names its domain; domains are normalised and can be selected."""
    _, docs, tok_path = corpus
    rng = np.random.default_rng(5)
    files = []
    for f in range(2):
        path = tmp_path / f"pile-{f}.jsonl"
        lines = []
        for _ in range(40):
            name = rng.choice(["Github", "Pile-CC", "Books3"])
            lines.append(json.dumps({"text": " ".join(rng.choice(WORDS["code"], 9)), "meta": {"pile_set_name": name}}))
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    spec = store.StoreSpec(mixed=files, domains=("Github", "Pile-CC"), tokenizer_path=tok_path, record_tokens=9,
                           val_fraction=0.1, select_fraction=0.1)
    out = str(tmp_path / "st")
    store.prepare_store(spec, out, workers=2)
    store.finalize_store(spec, out)
    st = _check_store(out, spec, tok_path)
    assert st.domains == ("github", "pile_cc")  # books3 not selected; names as the loss tables write them
    bad = store.StoreSpec(mixed=files, domain_field="meta.nope", tokenizer_path=tok_path)
    with pytest.raises(InputError, match="no domain field 'meta.nope'"):
        store.prepare_store(bad, str(tmp_path / "bad"))


def test_tfds_dataset_built_here(tmp_path, corpus):
    tfds = pytest.importorskip("tensorflow_datasets")
    _, _, tok_path = corpus

    class StoreTinyMix(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["Pile-CC", "Github"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(60):
                yield i, {"text": " ".join(WORDS["prose" if i % 2 else "code"] * (1 + i % 3)), "label": i % 2}

    data_dir = str(tmp_path / "tfds")
    StoreTinyMix(data_dir=data_dir, file_format="array_record").download_and_prepare()
    spec = store.StoreSpec(tfds="store_tiny_mix", tfds_data_dir=data_dir, tfds_shards=3, domain_field="label",
                           tokenizer_path=tok_path, record_tokens=11, val_fraction=0.1, select_fraction=0.1)
    assert len(store_sources.make_units(spec)) == 3
    out = str(tmp_path / "st")
    store.prepare_store(spec, out)
    store.finalize_store(spec, out)
    st = _check_store(out, spec, tok_path)
    assert st.domains == ("github", "pile_cc")
    assert sum(st.doc_counts(s)["github"] for s in store.SPLITS) == 30


def test_tokenizer_trained_from_the_sources(corpus, tmp_path):
    sources, _, _ = corpus
    spec = store.StoreSpec(sources=sources, vocab_size=320, tokenizer_sample_chars=3000, record_tokens=32)
    out = str(tmp_path / "st")
    store.prepare_store(spec, out)
    store.finalize_store(spec, out)
    st = _check_store(out, spec, os.path.join(out, "tokenizer.model"))
    assert st.vocab_size == 320 and st.tokenizer_path == os.path.abspath(os.path.join(out, "tokenizer.model"))
    # The sample is bounded and seeded: the same spec trains a byte-identical model.
    sample = store_sources.tokenizer_sample(spec, store_sources.make_units(spec), chars_per_domain=3000)
    assert all(3000 <= sum(map(len, v)) < 3000 + 200 for v in sample.values())
    again = str(tmp_path / "st2")
    store.prepare_store(spec, again)
    assert open(os.path.join(out, "tokenizer.model"), "rb").read() == open(
        os.path.join(again, "tokenizer.model"), "rb").read()


def test_entropy_report_streams_the_store(corpus, tmp_path):
    from bimix_jax.entropy.counts import entropy_report

    sources, _, tok_path = corpus
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok_path, record_tokens=5, val_fraction=0.0,
                           select_fraction=0.0)
    out = str(tmp_path / "st")
    store.prepare_store(spec, out, workers=2)  # Two local processes.
    store.finalize_store(spec, out)
    st = store.open_store(out)
    want = _expected(spec, Tokenizer.load(tok_path))
    streamed = entropy_report({d: st.split(d) for d in st.domains}, st.vocab_size, sequence_length=16)
    in_memory = entropy_report({d: want[d]["train"] for d in st.domains}, st.vocab_size, sequence_length=16)
    assert streamed["entropy"] == in_memory["entropy"] and streamed["mixture"] == in_memory["mixture"]


@pytest.mark.slow  # Generates and streams a 2 GiB corpus: tens of minutes on 2 cores.
def test_streamed_preparation_memory_is_bounded_on_2gb(tmp_path):
    from experiments import bench_data_lib

    out = bench_data_lib.measure(str(tmp_path), corpus_mb=2048, compare_mb=0, workers=2)
    assert out["corpus_bytes"] >= 2 * 2**30
    # Each worker's peak RSS is the interpreter and libraries plus one batch and one record: far below the corpus.
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
    summary = json.loads(ok.stdout)
    assert summary["tokens"] == sum(sum(v.values()) for v in summary["tokens_by_domain"].values()) > 0
    assert summary["tokens_per_s"] > 0 and summary["peak_rss_mb"]["this_process"] > 0
    assert store.open_store(out).token_counts()["code"] > 0
    bad = subprocess.run([sys.executable, "-m", "experiments.prepare_store", "--sources=code=/nonexistent/*.jsonl",
                          f"--tokenizer={tok_path}", f"--out={tmp_path / 'bad'}"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --sources: no file matches '/nonexistent/*.jsonl' for domain 'code'; fix the glob"]
    assert not os.path.exists(tmp_path / "bad")
