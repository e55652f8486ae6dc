"""Training speed of the tiny config's model: JAX train step, the sampler's share, and a PyTorch CPU baseline.

    python -m experiments.bench_train                  # prints one JSON object
    python -m experiments.bench_train --steps=100 --repeats=5

Steady state only: compilation and warmup steps are excluded; each figure is the median of `--repeats`
timings of `--steps` consecutive steps (the device queue is drained once per timing). The batch is
drawn inside the step in both implementations. PyTorch (an optional benchmark extra, `pip install
torch`) runs the same shapes in fp32 with AdamW; if it is missing its figures are null with the reason.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from experiments import cli

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps before timing (compilation included).")
_CONFIG = flags.DEFINE_string("config_arg", "", "Argument of configs/tiny.py get_config (e.g. 'runlocal').")


def _median_seconds(run_steps: Callable[[int], None], steps: int, repeats: int, warmup: int) -> float:
    """Median seconds per step; `run_steps(n)` runs n steps and waits for them."""
    run_steps(warmup)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_steps(steps)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def _synthetic_tokens(vocab_size: int, n_domains: int = 5, tokens_per_domain: int = 200_000):
    from bimix_jax.data.tokens import DomainTokens

    rng = np.random.default_rng(0)
    domains = tuple(f"d{i}" for i in range(n_domains))
    make = lambda n: rng.integers(1, vocab_size, n).astype(np.int32)  # noqa: E731
    return DomainTokens(domains=domains, train={d: make(tokens_per_domain) for d in domains},
                        val={d: make(4096) for d in domains}, vocab_size=vocab_size, eos_id=0)


def bench_jax(spec, vocab_size: int, steps: int, repeats: int, warmup: int) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from bimix_jax.data import sampler
    from bimix_jax.train import _mesh, compiled_programs

    t = spec.train
    tokens = _synthetic_tokens(vocab_size)
    D = len(tokens.domains)
    mesh = _mesh(None, spec)
    programs = compiled_programs(spec.model.decoder(vocab_size, t.seq_len), spec, mesh, D)
    repl = NamedSharding(mesh, P())
    data = jax.device_put(sampler.train_buffers(tokens, t.seq_len), repl)
    r_D = jax.device_put(np.full(D, 1.0 / D, np.float32), repl)
    key = jax.random.key(0)
    box = {"state": programs.init(key), "step": 0}

    def train_steps(n: int) -> None:
        for _ in range(n):
            box["state"], metrics = programs.train_step(box["state"], data, key, box["step"], r_D)
            box["step"] += 1
        jax.block_until_ready(metrics["loss"])

    @jax.jit
    def sample(data, key, step, r_D):  # what the train step does before the model
        x_BxS, domain_B = sampler.sample_batch(data, jax.random.fold_in(key, step), r_D, batch_size=t.batch_size,
                                               seq_len=t.seq_len)
        return x_BxS, sampler.rows_per_domain(domain_B, D)

    def sample_steps(n: int) -> None:
        for i in range(n):
            x, _ = sample(data, key, i, r_D)
        jax.block_until_ready(x)

    step_s = _median_seconds(train_steps, steps, repeats, warmup)
    sample_s = _median_seconds(sample_steps, steps, repeats, warmup)
    return {"jax_step_ms": step_s * 1e3, "jax_tokens_per_s": t.batch_size * t.seq_len / step_s,
            "sampler_ms": sample_s * 1e3, "sampler_fraction_of_step": sample_s / step_s,
            "jax_devices": [str(d) for d in jax.devices()], "jax_version": jax.__version__}


def bench_torch(spec, vocab_size: int, steps: int, repeats: int, warmup: int) -> dict:
    try:
        import torch
    except ImportError as e:
        return {"torch_tokens_per_s": None, "torch_step_ms": None, "torch_null_reason": f"torch is not installed ({e})"}
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    m, t, o = spec.model, spec.train, spec.optim
    Kh = m.D // m.H

    def rope(x):  # x: [B, H, L, K]; rotates channel pairs (i, i + K/2), as the JAX model does
        L = x.shape[2]
        freq = 10_000.0 ** (-torch.arange(0, Kh // 2, dtype=torch.float32) * 2.0 / Kh)
        angle = torch.arange(L, dtype=torch.float32)[:, None] * freq[None, :]
        sin, cos = angle.sin(), angle.cos()
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.RMSNorm(m.D, eps=1e-6), nn.RMSNorm(m.D, eps=1e-6)
            self.qkv, self.out = nn.Linear(m.D, 3 * m.D, bias=False), nn.Linear(m.D, m.D, bias=False)
            self.up, self.down = nn.Linear(m.D, m.F), nn.Linear(m.F, m.D)

        def forward(self, x):
            B, L, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, m.H, Kh).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(B, L, m.D))
            return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, m.D)
            self.blocks = nn.ModuleList(Block() for _ in range(m.L))
            self.norm = nn.RMSNorm(m.D, eps=1e-6)

        def forward(self, tokens):
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x)
            return self.norm(x) @ self.embed.weight.T  # tied output embedding

    model = Decoder()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    tokens = _synthetic_tokens(vocab_size)
    buffers = [torch.from_numpy(tokens.train[d].astype(np.int64)) for d in tokens.domains]
    gen = torch.Generator().manual_seed(0)
    per_domain = t.batch_size // len(buffers)

    def batch():  # as the JAX sampler: rows from one domain each, random window starts
        rows = []
        for i in range(t.batch_size):
            buf = buffers[min(i // max(per_domain, 1), len(buffers) - 1)]
            start = int(torch.randint(0, buf.numel() - t.seq_len, (1,), generator=gen))
            rows.append(buf[start:start + t.seq_len + 1])
        return torch.stack(rows)

    def train_steps(n: int) -> None:
        for _ in range(n):
            x = batch()
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
        assert math.isfinite(loss.item())

    step_s = _median_seconds(train_steps, steps, repeats, warmup)
    return {"torch_step_ms": step_s * 1e3, "torch_tokens_per_s": t.batch_size * t.seq_len / step_s,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "torch_null_reason": None}


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax.train_state import RunSpec
    from configs import tiny

    config = tiny.get_config(_CONFIG.value or None)
    spec = RunSpec.from_config(config)
    vocab_size = int(config.data.vocab_size)
    args = (spec, vocab_size, _STEPS.value, _REPEATS.value, _WARMUP.value)
    out = {"config": f"configs/tiny.py{':' + _CONFIG.value if _CONFIG.value else ''}",
           "model": dict(config.model), "batch_size": spec.train.batch_size, "seq_len": spec.train.seq_len,
           "vocab_size": vocab_size, "cpu_count": os.cpu_count(), "steps": _STEPS.value, "repeats": _REPEATS.value}
    out.update(bench_jax(*args))
    out.update(bench_torch(*args))
    torch_rate = out.get("torch_tokens_per_s")
    out["jax_over_torch"] = out["jax_tokens_per_s"] / torch_rate if torch_rate else None
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli.run(main)
