"""The GPU check: one prepared command on one accelerator that prints one JSON object (planned for under 8 minutes
on an H100/H200-class GPU), and a tiny CPU variant of the same code for tests.

    python -m experiments.gpu_check
    python -m experiments.gpu_check --parts=step,group --group_sizes=4,8,16 --group_batch=4
    python -m experiments.gpu_check --smoke

Parts (`--parts`), each measured, never estimated, except the memory estimate, which is labelled:
* `step`: the trainer's step of configs/proxy.py (global batch 512 x 1024, its microbatches, bf16) on
  synthetic tokens on all local devices: compile time, step time, tokens/s, model FLOPs per token
  (6 (N + V D) + 12 L S D), MFU against the device's peak bf16 FLOP/s (`bimix_jax/train/flops.py`), the
  attention path the model took and why, the memory estimate (`bimix_jax/train/memory.py`) next to the
  device's measured peak memory;
* `group`: K runs of the proxy model (`--group_batch` sequences each) in one vmapped step against K steps in
  turn (`bimix_jax.train.many`); a K whose estimate exceeds the device memory is skipped and says so;
* `data`: a token store made from a generated corpus (`--corpus_mb`, `experiments/bench_data_lib.py`); its
  mixture input (`bimix_jax.data.input`, grain threads) delivers one global batch per step to the device
  while the device runs the `step` part's program (same shapes; the program samples its own rows, the store
  batch is read, transferred and dropped): the host's wait for each batch against the step time;
* `train`: `--train_steps` steps of the trainer from that store (`data.source=store`), wall time and losses.
`goals` compares the figures with the targets (MFU >= 0.45 in bf16, data wait < 1% of the step, vmapped K
>= 3x sequential): true or false as measured, null where not measured. `--smoke` runs every part on a CPU
with configs/proxy.py:runlocal and a 1 MB corpus in well under a minute; without it a GPU or TPU is required.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from experiments import bench_train_lib as lib, cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config (default: configs/proxy.py, with --smoke its "
                                          "runlocal variant).", lock_config=True)
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes on a CPU (tests): every part, seconds not minutes.")
_PARTS = flags.DEFINE_list("parts", ["step", "group", "data", "train"], "Parts to run: step, group, data, train.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per repeat (step, group, data parts).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement (the median is reported).")
_GROUP_SIZES = flags.DEFINE_list("group_sizes", ["4", "8"], "Numbers of runs K vmapped in the group part.")
_GROUP_BATCH = flags.DEFINE_integer("group_batch", 8, "Sequences per run per step in the group part.")
_CORPUS_MB = flags.DEFINE_integer("corpus_mb", 64, "Size of the generated corpus the token store is made from.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 100, "Steps of the training from the store.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 64, "Global batch (sequences) of the training from the store.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s of one device (0: the table of device kinds).")
_DIR = flags.DEFINE_string("dir", "", "Scratch folder (default: a temporary folder); removed afterwards.")

PARTS = ("step", "group", "data", "train")
GOALS = {"mfu": 0.45, "data_wait_share": 0.01, "vmapped_speedup": 3.0}


def _config(smoke: bool):
    from configs import proxy

    config = _CONFIG.value if _CONFIG.value is not None else proxy.get_config("runlocal" if smoke else None)
    config = config.copy_and_resolve_references()
    config.unlock()
    return config


def _measured_peak_memory() -> dict:
    """The devices' own peak memory counters (GPU/TPU); null on a CPU, which keeps none."""
    import jax

    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats]
    limits = [s.get("bytes_limit") for s in stats]
    return {"peak_bytes_in_use_gib": max(peaks) / 2**30 if all(peaks) else None,
            "bytes_limit_gib": min(limits) / 2**30 if all(limits) else None}


def part_step(config, steps: int, repeats: int, warmup: int, peak: float) -> tuple[dict, lib.JaxSetup]:
    """The trainer's step of `config` on synthetic tokens: time, tokens/s, MFU, attention path, memory."""
    import jax

    from bimix_jax.train import memory
    from bimix_jax.train.state import RunSpec

    spec = RunSpec.from_config(config)
    setup = lib.JaxSetup(spec, int(config.data.vocab_size))
    times = lib.interleaved({"step": setup.runner(setup.train_step)}, steps, repeats, warmup)["step"]
    step_s = statistics.median(times)
    mfu = lib.mfu_fields(setup.cfg, spec.train.seq_len, setup.tokens_per_step / step_s, peak)
    t, n = spec.train, len(jax.devices())
    est = memory.estimate(setup.cfg, batch_size=t.batch_size, microbatches=t.microbatches, seq_len=t.seq_len,
                          devices=n, attention=mfu["attention"],
                          data_bytes=memory.data_bytes_per_device(n, replicated=[setup.data]))
    return {"batch_size": t.batch_size, "seq_len": t.seq_len, "microbatches": t.microbatches,
            "compile_s": setup.compile_s, "step_ms": step_s * 1e3, "step_ms_best": min(times) * 1e3,
            "tokens_per_s": setup.tokens_per_step / step_s, **mfu,
            "memory_estimate_not_measured": est.to_dict(), "memory_measured": _measured_peak_memory()}, setup


def part_group(config, sizes: Sequence[int], batch: int, steps: int, repeats: int, warmup: int,
               peak: float) -> dict:
    """K vmapped runs of the config's model against K runs in turn, `batch` sequences per run."""
    import jax

    from bimix_jax.model import attention_choice
    from bimix_jax.train import memory
    from bimix_jax.train.state import RunSpec

    config.train.batch_size = config.train.eval_batch_size = batch
    config.train.microbatches = 1
    spec = RunSpec.from_config(config)
    setup = lib.JaxSetup(spec, int(config.data.vocab_size))
    limit = _measured_peak_memory()["bytes_limit_gib"]
    fits, out = [], {}
    for K in sizes:
        est = memory.estimate(setup.cfg, batch_size=batch, microbatches=1, seq_len=spec.train.seq_len,
                              devices=len(jax.devices()), attention=attention_choice(setup.cfg).impl, runs=K)
        if limit is not None and est.total > memory.HEADROOM * limit * 2**30:
            out[f"group_K{K}"] = {"skipped": f"estimate {est.total / 2**30:.1f} GiB > {memory.HEADROOM:.0%} of "
                                             f"{limit:.1f} GiB; lower --group_batch"}
        else:
            fits.append(K)
    out.update(lib.bench_group(setup, fits, steps, repeats, warmup))
    for K in fits:
        r = out[f"group_K{K}"]
        r["vmapped_mfu"] = lib.mfu_fields(setup.cfg, spec.train.seq_len, r["vmapped_tokens_per_s"], peak)["mfu"]
    return {"batch_per_run": batch, "seq_len": spec.train.seq_len, **out}


def make_store(root: str, corpus_mb: int, *, vocab_size: int, sample_chars: int, workers: int,
               files_per_domain: int = 4) -> tuple[str, dict]:
    """A token store of a generated 4-domain jsonl corpus (`bench_data_lib.write_corpus`); (path, timings)."""
    from bimix_jax.data import store
    from bimix_jax.data.tokenizer import train_tokenizer
    from experiments import bench_data_lib

    t0 = time.perf_counter()
    sources = bench_data_lib.write_corpus(os.path.join(root, "corpus"), corpus_mb, files_per_domain=files_per_domain)
    docs = {}
    for d, files in sources.items():
        with open(files[0], encoding="utf-8") as f:
            docs[d] = [json.loads(line)["text"] for line in itertools.islice(f, 200)]
    tok = os.path.join(root, "tokenizer.model")
    train_tokenizer(docs, vocab_size=vocab_size, sample_chars=sample_chars).save(tok)
    t1 = time.perf_counter()
    spec = store.StoreSpec(sources=sources, tokenizer_path=tok, record_tokens=4096)
    out = os.path.join(root, "store")
    store.prepare_store(spec, out, workers=workers)
    store.finalize_store(spec, out)
    tokens = sum(store.open_store(out).token_counts("train").values())
    return out, {"corpus_mb": corpus_mb, "store_train_tokens": tokens, "store_vocab_size": vocab_size,
                 "corpus_and_tokenizer_s": t1 - t0, "prepare_store_s": time.perf_counter() - t1}


def part_data(setup: lib.JaxSetup, store_dir: str, steps: int, threads: int = 4) -> dict:
    """The host's wait for each store batch while the device runs the step program (see the module docstring)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    from bimix_jax.data import store
    from bimix_jax.data.input import MixtureInput

    st = store.open_store(store_dir)
    domains = list(st.token_counts("train"))
    t = setup.spec.train
    mi = MixtureInput({d: st.split(d) for d in domains}, seq_len=t.seq_len, batch_size=t.batch_size,
                      schedule=[(0, [1.0 / len(domains)] * len(domains))], seed=0)
    t0 = time.perf_counter()
    mi.batch(0)
    sync_ms = (time.perf_counter() - t0) * 1e3
    rows = NamedSharding(setup.mesh, P("data"))

    def loop(n: int, it) -> tuple[float, list[float]]:
        """Seconds per step over n steps (the host settles step i-1 after dispatching step i, as the trainer does),
        and the wait for each batch."""
        state, prev, waits = setup.programs.init(setup.key), None, []
        t0 = time.perf_counter()
        for i in range(n):
            if it is not None:
                w0 = time.perf_counter()
                jax.block_until_ready(jax.device_put(next(it)["x"], rows))
                waits.append(time.perf_counter() - w0)
            state, metrics = setup.train_step(state, setup.data, setup.key, i, setup.r_D)
            if prev is not None:
                jax.device_get(prev["loss"])
            prev = metrics
        jax.block_until_ready(prev["loss"])
        return (time.perf_counter() - t0) / n, waits

    warm = 2
    loop(warm, None)  # warm up the program and the allocator
    bare_s, _ = loop(steps, None)
    it = mi.iterate(0, warm + steps, threads=threads, prefetch=8)
    for _ in range(warm):  # the first batches start the reader threads
        next(it)
    fed_s, waits = loop(steps, it)
    wait_s = float(np.median(waits))
    return {"batch": [t.batch_size, t.seq_len + 1], "reader_threads": threads, "synchronous_batch_ms": sync_ms,
            "step_ms_without_input": bare_s * 1e3, "step_ms_with_store_input": fed_s * 1e3,
            "wait_ms_per_step": {"median": wait_s * 1e3, "max": max(waits) * 1e3},
            "wait_share_of_step": wait_s / bare_s}


def part_train(config, store_dir: str, workdir: str, steps: int, batch: int) -> dict:
    """`steps` steps of the trainer reading the store (`data.source=store`): wall time, losses, last metrics."""
    from bimix_jax.train import loop

    config.data.source, config.data.path, config.data.domains = "store", store_dir, ""
    config.mixture = "uniform"
    if "online" in config:
        config.online.method = "static"
    t = config.train
    t.steps, t.batch_size, t.microbatches, t.eval_batch_size = steps, batch, 1, batch
    t.eval_every = t.checkpoint_every = steps
    t.log_every, t.eval_tokens = max(1, steps // 10), 4 * t.seq_len
    config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 10)
    t0 = time.perf_counter()
    result = loop.train_from_config(config, workdir)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, loop.METRICS_FILE), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    losses = [r["train_loss"] for r in records]
    rates = [r["tokens_per_s"] for r in records[1:] if r.get("tokens_per_s") == r.get("tokens_per_s")]  # not NaN
    waits = [r["data_wait_ms_per_step"] for r in records[1:] if "data_wait_ms_per_step" in r]
    with open(os.path.join(workdir, loop.CONFIG_FILE), encoding="utf-8") as f:
        vocab_size = json.load(f)["vocab_size"]  # the store's tokenizer decides the model's vocabulary
    return {"steps": steps, "batch_size": batch, "vocab_size": vocab_size, "wall_s_with_compile_and_eval": wall,
            "trainer_tokens_per_s_median": statistics.median(rates) if rates else None,
            "trainer_data_wait_ms_per_step_median": statistics.median(waits) if waits else None,
            "first_logged_train_loss": losses[0], "last_logged_train_loss": losses[-1],
            "final_validation_losses": result.final_losses, "last_metrics_record": records[-1]}


def goals(out: dict) -> dict:
    """Each target against its measured figure (null when not measured)."""
    mfu = out.get("step", {}).get("mfu")
    wait = out.get("data", {}).get("wait_share_of_step")
    speedups = [v["speedup"] for k, v in out.get("group", {}).items() if k.startswith("group_K") and "speedup" in v]
    return {"mfu_at_least_0.45": None if mfu is None else mfu >= GOALS["mfu"],
            "data_wait_below_1pct_of_step": None if wait is None else wait < GOALS["data_wait_share"],
            "vmapped_K_at_least_3x_sequential": None if not speedups else max(speedups) >= GOALS["vmapped_speedup"]}


def _checked_flags() -> tuple[list[str], list[int]]:
    from bimix_jax.errors import InputError

    parts = [p.strip() for p in _PARTS.value]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise InputError(f"--parts: unknown part {bad[0] if bad else '(none)'!r}; choose from {', '.join(PARTS)}")
    try:
        sizes = [int(k) for k in _GROUP_SIZES.value]
    except ValueError:
        sizes = [0]
    if not sizes or min(sizes) < 1:
        raise InputError(f"--group_sizes={','.join(_GROUP_SIZES.value)}: give integers >= 1, e.g. --group_sizes=4,8")
    for flag in (_STEPS, _REPEATS, _GROUP_BATCH, _CORPUS_MB, _TRAIN_STEPS, _TRAIN_BATCH):
        if flag.value < 1:
            raise InputError(f"--{flag.name}={flag.value} must be >= 1")
    if _PEAK.value < 0:
        raise InputError(f"--peak_tflops={_PEAK.value} must be >= 0 (0: the table of device kinds)")
    if _DIR.value and not os.path.isdir(_DIR.value):
        raise InputError(f"--dir={_DIR.value} is not an existing folder; create it or leave --dir empty")
    return parts, sizes


def run(parts: Sequence[str], sizes: Sequence[int], *, smoke: bool) -> dict:
    """Every part asked for, in order; one dict (the JSON the binary prints)."""
    import jax

    t_start = time.perf_counter()
    steps, repeats = (2, 1) if smoke else (_STEPS.value, _REPEATS.value)
    warmup = 1 if smoke else 2
    config = _config(smoke)
    dev = jax.devices()[0]
    out: dict = {"smoke": smoke, "device_kind": dev.device_kind, "platform": dev.platform,
                 "devices": len(jax.devices()), "processes": jax.process_count(), "jax_version": jax.__version__,
                 "model": dict(config.model), "vocab_size": int(config.data.vocab_size)}
    setup = None
    if "step" in parts or "data" in parts:
        out["step"], setup = part_step(_config(smoke), steps, repeats, warmup, _PEAK.value)
    if "group" in parts:
        out["group"] = part_group(_config(smoke), [2] if smoke else sizes, 4 if smoke else _GROUP_BATCH.value,
                                  steps, repeats, warmup, _PEAK.value)
    if "data" in parts or "train" in parts:
        with tempfile.TemporaryDirectory(dir=_DIR.value or None) as tmp:
            store_dir, made = make_store(tmp, 1 if smoke else _CORPUS_MB.value, vocab_size=512 if smoke else 4096,
                                         sample_chars=50_000 if smoke else 400_000,
                                         workers=1 if smoke else max(1, min(8, (os.cpu_count() or 2) // 2)),
                                         files_per_domain=1 if smoke else 4)
            if "data" in parts:
                out["data"] = {**made, **part_data(setup, store_dir, 4 if smoke else 2 * steps)}
            if "train" in parts:
                out["train"] = part_train(_config(smoke), store_dir, os.path.join(tmp, "train"),
                                          4 if smoke else _TRAIN_STEPS.value, 8 if smoke else _TRAIN_BATCH.value)
    out["goals"] = goals(out)
    out["wall_s"] = time.perf_counter() - t_start
    return out


def main(argv: Sequence[str]) -> None:
    del argv
    import jax

    from bimix_jax.errors import InputError

    parts, sizes = _checked_flags()
    if jax.default_backend() == "cpu" and not _SMOKE.value:
        raise InputError("gpu_check needs a GPU or TPU and JAX sees only a CPU; run it on an accelerator, or pass "
                         "--smoke for the tiny CPU run")
    cli.quiet_orbax_logs()
    print(json.dumps(run(parts, sizes, smoke=_SMOKE.value), indent=2))


if __name__ == "__main__":
    cli.run(main)
