"""Helpers of `bench_train` and `gpu_check` (not a binary): timing in turns, the trainer's programs on synthetic
tokens, K runs vmapped against K runs in turn, a measured matmul rate, and the MFU fields of a throughput."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

Runner = Callable[[int], None]  # runs n steps and waits for them


def interleaved(runners: dict[str, Runner], steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each runner, `repeats` rounds, the runners timed in turn within a round."""
    for run in runners.values():
        run(warmup)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num/den."""
    return statistics.median(a / b for a, b in zip(num, den))


def best_ratio(num: list[float], den: list[float]) -> float:
    """min(num) / min(den): the ratio of the least disturbed timings (other processes only ever slow a timing)."""
    return min(num) / min(den)


def compile_seconds(jitted, *args) -> tuple[Callable, float]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def synthetic_tokens(vocab_size: int, n_domains: int = 5, tokens_per_domain: int = 200_000):
    """Uniformly random tokens in `n_domains` domains (speed only: the numbers are not a model of text)."""
    from bimix_jax.data.tokens import DomainTokens

    rng = np.random.default_rng(0)
    domains = tuple(f"d{i}" for i in range(n_domains))
    make = lambda n: rng.integers(1, vocab_size, n).astype(np.int32)  # noqa: E731
    return DomainTokens(domains=domains, train={d: make(tokens_per_domain) for d in domains},
                        val={d: make(4096) for d in domains}, vocab_size=vocab_size, eos_id=0)


class JaxSetup:
    """The trainer's programs, data and a fresh state for a run spec, on all devices (synthetic tokens)."""

    def __init__(self, spec, vocab_size: int, tokens_per_domain: int = 200_000):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        from bimix_jax.data import sampler
        from bimix_jax.train.loop import _mesh, compiled_programs

        self.spec, t = spec, spec.train
        tokens = synthetic_tokens(vocab_size, tokens_per_domain=max(tokens_per_domain, 2 * t.seq_len + 2))
        self.D = len(tokens.domains)
        self.mesh = _mesh(None, spec)
        self.cfg = spec.model.decoder(vocab_size, t.seq_len)
        self.programs = compiled_programs(self.cfg, spec, self.mesh, self.D)
        self.repl = NamedSharding(self.mesh, P())
        self.data = jax.device_put(sampler.train_buffers(tokens, t.seq_len), self.repl)
        self.r_D = jax.device_put(np.full(self.D, 1.0 / self.D, np.float32), self.repl)
        self.key = jax.random.key(0)
        self.train_step, self.compile_s = compile_seconds(self.programs.train_step, self.programs.init(self.key),
                                                          self.data, self.key, 0, self.r_D)

    @property
    def tokens_per_step(self) -> int:
        return self.spec.train.batch_size * self.spec.train.seq_len

    def runner(self, step_fn) -> Runner:
        """Steps `step_fn(state, data, key, step, r_D)` from a fresh state."""
        import jax

        box = {"state": self.programs.init(self.key), "step": 0}

        def run(n: int) -> None:
            for _ in range(n):
                box["state"], metrics = step_fn(box["state"], self.data, self.key, box["step"], self.r_D)
                box["step"] += 1
            jax.block_until_ready(metrics["loss"])

        return run


def bench_group(setup: JaxSetup, sizes: Sequence[int], steps: int, repeats: int, warmup: int) -> dict:
    """K runs in one vmapped step against K single steps in turn (the cost of training them one by one)."""
    import jax
    import jax.numpy as jnp

    from bimix_jax.train.many import group_programs

    group = group_programs(setup.cfg, setup.spec, setup.mesh, setup.D)
    out = {"group_single_compile_s": setup.compile_s}
    for K in sizes:
        keys = jax.random.split(setup.key, K)
        r_KxD = jnp.tile(setup.r_D, (K, 1))
        active_K = np.ones(K, bool)
        state = group.stack([setup.programs.init(k) for k in keys])
        compiled, compile_s = compile_seconds(group.train_step, state, setup.data, keys, np.zeros(K, np.int32),
                                              r_KxD, active_K)
        box = {"state": state, "step": 0}

        def group_steps(n: int, box=box, compiled=compiled, keys=keys, r_KxD=r_KxD, active_K=active_K) -> None:
            for _ in range(n):
                step_K = np.full(K, box["step"], np.int32)
                box["state"], metrics = compiled(box["state"], setup.data, keys, step_K, r_KxD, active_K)
                box["step"] += 1
            jax.block_until_ready(metrics["loss"])

        times = interleaved({"single": setup.runner(setup.train_step), "group": group_steps}, steps, repeats, warmup)
        # K runs in turn take K single steps per step of all K runs.
        out[f"group_K{K}"] = {
            "vmapped_step_ms": statistics.median(times["group"]) * 1e3,
            "sequential_step_ms": K * statistics.median(times["single"]) * 1e3,
            "vmapped_step_ms_best": min(times["group"]) * 1e3,
            "sequential_step_ms_best": K * min(times["single"]) * 1e3,
            "speedup": ratio([K * s for s in times["single"]], times["group"]),
            "speedup_best": best_ratio([K * s for s in times["single"]], times["group"]),
            "vmapped_tokens_per_s": K * setup.tokens_per_step / statistics.median(times["group"]),
            "compile_s": compile_s,
        }
        del box, state
    return out


def matmul_tflops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Measured TFLOP/s of one n x n matmul in `dtype` on the default device (a reachable rate, not a peak)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.dtype(dtype))
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a))
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def mfu_fields(cfg, seq_len: int, tokens_per_s: float, peak_tflops: float = 0.0) -> dict:
    """`bimix_jax.train.flops.report` for all devices, plus the attention path the model runs."""
    import jax

    from bimix_jax.model import attention_choice
    from bimix_jax.train import flops

    choice = attention_choice(cfg)
    return {**flops.report(cfg.flops_per_token(seq_len), tokens_per_s, jax.devices(), peak_tflops),
            "attention": choice.impl, "attention_reason": choice.reason}
