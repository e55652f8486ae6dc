"""Training speed of the tiny config's model: JAX train step, the loss formulation before/after, K runs in one
vmapped step versus K runs in turn, and a PyTorch CPU baseline.

    python -m experiments.bench_train                        # prints one JSON object
    python -m experiments.bench_train --repeats=7 --group_sizes=2,4,8 --parts=step,torch,group
    python -m experiments.bench_train --config_arg=runlocal --batch_size=1 --parts=group --steps=50

Steady state only: compilation and warmup steps are excluded (compile times are reported on their own,
with the persistent compilation cache off). Each figure is the median of `--repeats` timings of
`--steps` consecutive steps (the device queue is drained once per timing); `*_best` figures are the
fastest timing. The implementations compared in one part are timed in turns, round after round; each
ratio is the median of the per-round ratios, and each `*_best` ratio the ratio of the fastest timings
(other processes can only slow a timing down, so on a busy machine `*_best` is the steadier figure).
The batch is drawn inside the step everywhere.
PyTorch (an optional benchmark extra, `pip install torch`) runs the same shapes in fp32 with AdamW; if it
is missing its figures are null with the reason. While another process holds a core, PyTorch's OpenMP
steps slow down by up to 70x (seen on a shared 2-core machine) where JAX's slow down by under 2x: compare
the two with `jax_over_torch_best`.

Parts:
* `step`: the train step as the trainer runs it, and the same step with the loss as first written
  (`log_softmax` indexing, `jax.nn.dot_product_attention`), to show what the rewrite in
  `bimix_jax/model.py` gained; with the step's tokens/s, model FLOPs per token (6 (N + V D) + 12 L S D,
  `DecoderConfig.flops_per_token`), achieved model TFLOP/s and MFU against the device's peak bf16 FLOP/s
  (`bimix_jax/train/flops.py`; null with the reason on a CPU, or give `--peak_tflops`), and the same
  achieved rate as a share of a matmul rate measured on the device in the compute dtype;
* `torch`: the PyTorch step, timed in turns with the JAX step;
* `group`: for each K, one vmapped step of K runs (`bimix_jax.train.many`) against K single steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from experiments import bench_train_lib as lib, cli

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per measurement (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps before timing (after compilation).")
_CONFIG = flags.DEFINE_string("config_arg", "", "Argument of configs/tiny.py get_config (e.g. 'runlocal').")
_GROUP_SIZES = flags.DEFINE_list("group_sizes", ["2", "4", "8"], "Numbers of runs K for the group part.")
_PARTS = flags.DEFINE_list("parts", ["step", "torch", "group"], "Which parts to run: step, torch, group.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Sequences per step (0: the config's train.batch_size).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s of one device for MFU (0: the table of device "
                           "kinds in bimix_jax/train/flops.py; a CPU has none).")


def _loss_as_first_written(cfg, params, x_BxS):
    """The per-token loss as the model first computed it: indexing `log_softmax`, `dot_product_attention`."""
    import jax

    from bimix_jax import model

    with _patched(model, "causal_attention", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)):
        logits_BxLxV = model.Decoder(cfg).apply({"params": params}, x_BxS[:, :-1])
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    return -jax.numpy.take_along_axis(logp_BxLxV, x_BxS[:, 1:, None], axis=-1)[..., 0]


@contextlib.contextmanager
def _patched(module, name: str, value):
    """Replaces `module.name` while a function is traced (benchmark reference only)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def first_written_step(setup: lib.JaxSetup) -> Callable:
    """The train step with `_loss_as_first_written` (same optimizer, sampler and shardings)."""
    import jax

    from bimix_jax.train import state as train_state

    fn = train_state._step_fn(setup.cfg, setup.spec, None)

    def step(*args):
        with _patched(train_state, "token_losses", _loss_as_first_written):
            return fn(*args)

    return jax.jit(step, donate_argnums=(0,))


def bench_step(setup: lib.JaxSetup, steps: int, repeats: int, warmup: int, peak_tflops: float = 0.0) -> dict:
    """The trainer's step now and with the loss as first written, timed in turns; plus the sampler alone."""
    import jax

    from bimix_jax.data import sampler

    t, D = setup.spec.train, setup.D
    now, now_compile = setup.train_step, setup.compile_s
    before, before_compile = lib.compile_seconds(first_written_step(setup), setup.programs.init(setup.key),
                                                 setup.data, setup.key, 0, setup.r_D)

    @jax.jit
    def sample(data, key, step, r_D):  # what the train step does before the model
        x_BxS, domain_B = sampler.sample_batch(data, jax.random.fold_in(key, step), r_D, batch_size=t.batch_size,
                                               seq_len=t.seq_len)
        return x_BxS, sampler.rows_per_domain(domain_B, D)

    def sample_steps(n: int) -> None:
        for i in range(n):
            x, _ = sample(setup.data, setup.key, i, setup.r_D)
        jax.block_until_ready(x)

    times = lib.interleaved({"now": setup.runner(now), "before": setup.runner(before), "sampler": sample_steps},
                            steps, repeats, warmup)
    step_s = statistics.median(times["now"])
    tokens_per_s = setup.tokens_per_step / step_s
    # MFU against the device's peak bf16 FLOP/s (null on a CPU, which has none), and against a matmul rate
    # measured here in the model's compute dtype (a reachable rate on any device).
    mfu = lib.mfu_fields(setup.cfg, t.seq_len, tokens_per_s, peak_tflops)
    matmul = lib.matmul_tflops(setup.cfg.dtype)
    mfu.update(matmul_tflops_per_s_measured=matmul,
               model_flops_share_of_measured_matmul=mfu["model_tflops_per_s"] / (matmul * mfu["devices"]))
    return {"jax_step_ms": step_s * 1e3, "jax_tokens_per_s": tokens_per_s, **mfu,
            "jax_step_ms_best": min(times["now"]) * 1e3,
            "jax_step_ms_loss_as_first_written": statistics.median(times["before"]) * 1e3,
            "jax_step_ms_loss_as_first_written_best": min(times["before"]) * 1e3,
            "jax_speedup_over_first_written": lib.ratio(times["before"], times["now"]),
            "jax_speedup_over_first_written_best": lib.best_ratio(times["before"], times["now"]),
            "jax_compile_s": now_compile, "jax_compile_s_loss_as_first_written": before_compile,
            "sampler_ms": statistics.median(times["sampler"]) * 1e3,
            "sampler_fraction_of_step": lib.ratio(times["sampler"], times["now"]),
            "jax_devices": [str(d) for d in jax.devices()], "jax_version": jax.__version__}


def torch_runner(spec, vocab_size: int) -> tuple[lib.Runner | None, dict]:
    """A runner of the PyTorch step (None with the reason when torch is missing) and its description."""
    try:
        import torch
    except ImportError as e:
        return None, {"torch_tokens_per_s": None, "torch_step_ms": None,
                      "torch_null_reason": f"torch is not installed ({e})"}
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
    tokens = lib.synthetic_tokens(vocab_size)
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

    return train_steps, {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
                         "torch_null_reason": None}


def main(argv: Sequence[str]) -> None:
    del argv
    import jax

    from bimix_jax.train.state import RunSpec
    from configs import tiny

    jax.config.update("jax_enable_compilation_cache", False)  # compile times are measured
    parts = set(_PARTS.value)
    unknown = parts - {"step", "torch", "group"}
    if unknown:
        cli.fail(f"--parts: unknown part {sorted(unknown)[0]!r}; choose from step, torch, group")
    try:
        sizes = [int(k) for k in _GROUP_SIZES.value]
    except ValueError:
        cli.fail(f"--group_sizes={','.join(_GROUP_SIZES.value)}: give integers, e.g. --group_sizes=2,4,8")
    config = tiny.get_config(_CONFIG.value or None)
    if _BATCH_SIZE.value:
        config.unlock()
        config.train.batch_size = config.train.eval_batch_size = _BATCH_SIZE.value
    spec = RunSpec.from_config(config)
    vocab_size = int(config.data.vocab_size)
    steps, repeats, warmup = _STEPS.value, _REPEATS.value, _WARMUP.value
    out = {"config": f"configs/tiny.py{':' + _CONFIG.value if _CONFIG.value else ''}",
           "model": dict(config.model), "batch_size": spec.train.batch_size, "seq_len": spec.train.seq_len,
           "vocab_size": vocab_size, "cpu_count": os.cpu_count(), "steps": steps, "repeats": repeats,
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    setup = lib.JaxSetup(spec, vocab_size)
    if "step" in parts:
        out.update(bench_step(setup, steps, repeats, warmup, _PEAK.value))
    if "torch" in parts:
        run_torch, info = torch_runner(spec, vocab_size)
        out.update(info)
        if run_torch is not None:
            now = setup.runner(setup.train_step)
            times = lib.interleaved({"jax": now, "torch": run_torch}, steps, repeats, warmup)
            tokens = spec.train.batch_size * spec.train.seq_len
            out.update({"torch_step_ms": statistics.median(times["torch"]) * 1e3,
                        "torch_tokens_per_s": tokens / statistics.median(times["torch"]),
                        "torch_step_ms_best": min(times["torch"]) * 1e3,
                        "jax_step_ms_timed_with_torch": statistics.median(times["jax"]) * 1e3,
                        "jax_step_ms_timed_with_torch_best": min(times["jax"]) * 1e3,
                        # throughput ratios (JAX tokens/s over PyTorch tokens/s)
                        "jax_over_torch": lib.ratio(times["torch"], times["jax"]),
                        "jax_over_torch_best": lib.best_ratio(times["torch"], times["jax"])})
    if "group" in parts:
        out.update(lib.bench_group(setup, sizes, steps, repeats, warmup))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli.run(main)
