"""Helpers of `bench_data` (not a binary): a generated jsonl corpus, and the peak memory and throughput of the
streamed token store against the in-memory `prepare_data`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

DOMAINS = ("alpha", "beta", "gamma", "delta")
_DOC_WORDS = 400


def write_corpus(root: str, total_mb: int, *, files_per_domain: int = 4, seed: int = 0) -> dict[str, list[str]]:
    """Random-word jsonl documents, `total_mb` MB over 4 domains (each its own word list); returns the files."""
    rng = np.random.default_rng(seed)
    word_rng = np.random.default_rng(1234)  # Same words for every seed: one tokenizer fits all corpora.
    sources: dict[str, list[str]] = {}
    per_file = total_mb * 2**20 // (len(DOMAINS) * files_per_domain)
    for j, d in enumerate(DOMAINS):
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"[j * 5:j * 5 + 12]))
        words = np.array(["".join(word_rng.choice(letters, word_rng.integers(2, 9))) for _ in range(3000)])
        weights = 1.0 / np.arange(1, words.size + 1)  # Zipf-like word frequencies.
        os.makedirs(root, exist_ok=True)
        # A pool of 1024 documents (json lines) per domain; files are random draws from it (fast to write).
        ids = word_rng.choice(words.size, (1024, _DOC_WORDS), p=weights / weights.sum())
        pool = [json.dumps({"text": " ".join(words[row].tolist())}) + "\n" for row in ids]
        for f in range(files_per_domain):
            path = os.path.join(root, f"{d}-{f}.jsonl")
            written = 0
            with open(path, "w", encoding="utf-8") as out:
                while written < per_file:
                    lines = "".join(pool[i] for i in rng.integers(0, len(pool), 256))
                    out.write(lines)
                    written += len(lines)
            sources.setdefault(d, []).append(path)
    return sources


_PEAK = """
import resource
def _peak_mb():  # This process's high-water RSS (VmHWM) and that of its waited-for children (workers).
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    return round(max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024, 1)
"""


def _child(code: str) -> dict:
    """Runs python `code` (which prints one JSON line) in a child; adds its wall time.

    Peak memory is read inside the child (`_peak_mb`): the rusage of a child seen from here would include
    this process's own RSS at the fork.
    """
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _PEAK + code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    out = proc.stdout.read()
    status = proc.wait()
    if status:
        raise RuntimeError(f"child failed ({status}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=round(time.perf_counter() - t, 2))
    return result


def _stream(sources: dict, tok: str, out: str, workers: int) -> dict:
    code = f"""
import json, time
from bimix_jax.data import store
spec = store.StoreSpec(sources={sources!r}, tokenizer_path={tok!r}, record_tokens=4096, val_fraction=0.01)
t = time.perf_counter()
markers = store.prepare_store(spec, {out!r}, workers={workers})
index = store.finalize_store(spec, {out!r})
s = time.perf_counter() - t
n = sum(sh["tokens"] for d in index["domains"].values() for sp in d.values() for sh in sp)
worker_s = sum(m["seconds"] for m in markers)
print(json.dumps({{"tokens": n, "prepare_s": round(s, 2), "tokens_per_s": round(n / s),
                  "tokens_per_worker_s": round(n / worker_s), "peak_rss_mb": _peak_mb()}}))
"""
    return _child(code)


def _plain_sentencepiece(sources: dict, tok: str, mb_per_domain: int) -> dict:
    """The baseline of a store worker: the same documents (the first `mb_per_domain` MB of each domain's first
    file) parsed from json and encoded by plain SentencePiece in one thread, tokens/s."""
    code = f"""
import json, time
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file={tok!r})
docs = []
for files in {sources!r}.values():
    size = 0
    for line in open(files[0], encoding="utf-8"):
        docs.append(json.loads(line)["text"])
        size += len(line)
        if size >= {mb_per_domain} * 2**20:
            break
t = time.perf_counter()
n = sum(len(ids) + 1 for ids in sp.encode(docs, num_threads=1))
s = time.perf_counter() - t
print(json.dumps({{"tokens": n, "encode_s": round(s, 2), "tokens_per_s": round(n / s)}}))
"""
    return _child(code)


def _in_memory(folder: str, tok: str, workdir: str) -> dict:
    code = f"""
import json, time
from bimix_jax.data.prepare import prepare_data
from bimix_jax.data.spec import DataSpec
t = time.perf_counter()
p = prepare_data(DataSpec(source="folder", path={folder!r}, tokenizer_path={tok!r}, val_fraction=0.01), {workdir!r})
s = time.perf_counter() - t
n = sum(p.tokens.token_counts("train").values()) + sum(p.tokens.token_counts("val").values())
print(json.dumps({{"tokens": n, "prepare_s": round(s, 2), "tokens_per_s": round(n / s), "peak_rss_mb": _peak_mb()}}))
"""
    return _child(code)


def _tokenizer(sources: dict, path: str) -> str:
    from bimix_jax.data.tokenizer import train_tokenizer

    docs = {}
    for d, files in sources.items():
        with open(files[0], encoding="utf-8") as f:
            docs[d] = [json.loads(next(f))["text"] for _ in range(200)]
    train_tokenizer(docs, vocab_size=4096, sample_chars=400_000).save(path)
    return path


def measure(tmp: str, *, corpus_mb: int, compare_mb: int, workers: int = 1, store_dir: str = "") -> dict:
    """Streams a generated corpus of `corpus_mb` MB into a token store (kept in `store_dir` when given) and
    compares a worker's throughput with plain SentencePiece on the same kind of documents; with `compare_mb`,
    also a smaller corpus streamed against `prepare_data` in memory."""
    out: dict = {"workers": workers, "cpu_count": os.cpu_count()}
    t = time.perf_counter()
    sources = write_corpus(os.path.join(tmp, "big"), max(1, corpus_mb))
    out["generate_s"] = round(time.perf_counter() - t, 1)
    tok = _tokenizer(sources, os.path.join(tmp, "tok.model"))
    if corpus_mb:
        out["corpus_bytes"] = sum(os.path.getsize(f) for fs in sources.values() for f in fs)
        out["plain_sentencepiece_before"] = _plain_sentencepiece(sources, tok, 16)
        out["streamed"] = _stream(sources, tok, store_dir or os.path.join(tmp, "store_big"), workers)
        out["plain_sentencepiece_after"] = _plain_sentencepiece(sources, tok, 16)
        plain = max(out["plain_sentencepiece_before"]["tokens_per_s"], out["plain_sentencepiece_after"]["tokens_per_s"])
        out["per_worker_over_plain_sentencepiece"] = round(out["streamed"]["tokens_per_worker_s"] / plain, 3)
    for f in (f for fs in sources.values() for f in fs):
        os.remove(f)
    if compare_mb:
        folder = os.path.join(tmp, "small")
        small = write_corpus(folder, compare_mb, files_per_domain=1, seed=1)
        for d, (f,) in small.items():  # The folder reader's layout: <domain>.jsonl.
            os.rename(f, os.path.join(folder, f"{d}.jsonl"))
            small[d] = [os.path.join(folder, f"{d}.jsonl")]
        out["compare_corpus_bytes"] = sum(os.path.getsize(f) for fs in small.values() for f in fs)
        out["compare_streamed"] = _stream(small, tok, os.path.join(tmp, "store_small"), workers)
        out["compare_in_memory"] = _in_memory(folder, tok, os.path.join(tmp, "wd"))
    return out


def measure_input(tmp: str, *, corpus_mb: int = 32, batch_size: int = 64, seq_len: int = 1024, steps: int = 40,
                  step_ms: float = 100.0, threads: int = 4) -> dict:
    """Batches of the mixture input read from a token store: cost per batch, and the wait per step behind a
    consumer that spends `step_ms` per step (time.sleep, standing in for the device's step)."""
    from bimix_jax.data import store
    from bimix_jax.data.input import MixtureInput

    sources = write_corpus(os.path.join(tmp, "in"), corpus_mb)
    tok = _tokenizer(sources, os.path.join(tmp, "tok_in.model"))
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok, record_tokens=4096)
    store.prepare_store(spec, os.path.join(tmp, "store_in"))
    store.finalize_store(spec, os.path.join(tmp, "store_in"))
    st = store.open_store(os.path.join(tmp, "store_in"))
    mi = MixtureInput({d: st.split(d) for d in st.domains}, seq_len=seq_len, batch_size=batch_size,
                      schedule=[(0, [0.4, 0.3, 0.2, 0.1])], seed=0)
    t = time.perf_counter()
    for s in range(steps):
        mi.batch(s)
    sync_ms = (time.perf_counter() - t) / steps * 1e3
    it = mi.iterate(0, steps + 1, threads=threads, prefetch=8)
    next(it)  # Starts the reader threads.
    waits = []
    for _ in range(steps):
        time.sleep(step_ms / 1e3)
        t = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t)
    wait_ms = float(np.median(waits) * 1e3)
    return {"batch": [batch_size, seq_len + 1], "tokens_per_batch": batch_size * (seq_len + 1),
            "synchronous_ms_per_batch": round(sync_ms, 2),
            "synchronous_tokens_per_s": round(batch_size * (seq_len + 1) / sync_ms * 1e3),
            "simulated_step_ms": step_ms, "prefetch_threads": threads,
            "wait_ms_per_step": {"median": round(wait_ms, 3), "max": round(max(waits) * 1e3, 3)},
            "wait_share_of_step": round(wait_ms / (step_ms + wait_ms), 5)}


def measure_train(store_dir: str, workdir: str, *, steps: int = 60, batch_size: int = 16, seq_len: int = 128) -> dict:
    """A runlocal-sized training run reading its batches from the token store in `store_dir`, in a child process:
    its peak RSS (which must not grow with the store) and the host's wait for batches per step."""
    code = f"""
import json, statistics, time
from configs import tiny
from bimix_jax.train.loop import train_from_config
c = tiny.get_config("runlocal")
c.data.source, c.data.path = "store", {store_dir!r}
c.train.steps, c.train.batch_size, c.train.seq_len = {steps}, {batch_size}, {seq_len}
c.train.eval_every = c.train.checkpoint_every = {steps}
c.train.log_every = 5
t = time.perf_counter()
res = train_from_config(c, {workdir!r})
s = time.perf_counter() - t
recs = [json.loads(x) for x in open({workdir!r} + "/metrics.jsonl")][1:]
wait = statistics.median(r["data_wait_ms_per_step"] for r in recs)
step_ms = statistics.median({batch_size * seq_len} / r["tokens_per_s"] * 1e3 for r in recs)
print(json.dumps({{"steps": {steps}, "train_s": round(s, 1), "peak_rss_mb": _peak_mb(),
                  "data_wait_ms_per_step": round(wait, 3), "step_ms": round(step_ms, 2),
                  "data_wait_share": round(wait / step_ms, 4), "store_train_tokens": sum(res.usage[d]["windows_per_epoch"]
                  for d in res.usage) * {seq_len + 1}}}))
"""
    return _child(code)
