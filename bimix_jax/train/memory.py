"""Per-device memory estimate of a training run, and a check that refuses a config that cannot fit.

An estimate, not a measurement: it counts the arrays the step must hold at its peak.
* state: float32 parameters, Adam moments (2x) and gradients (2x with microbatches: accumulator and
  slice), divided over the devices (the trainer shards large leaves over all devices, FSDP);
* gathered weights: a compute-dtype copy of all parameters (the forward pass gathers them);
* activations kept for the backward pass, per block and sequence of S tokens: about (9 D + 2 F) values
  (residual, two norms, q k v, rotated q k, attention output, MLP in and out), plus the float32 L x L
  scores and probabilities of every head on the einsum attention path (the CPU path; the GPU/TPU path,
  `jax.nn.dot_product_attention`, keeps O(S) per head); with remat only each block's input is kept,
  plus one block recomputed at a time;
* logits: float32 [b, S, V] twice (logits and their gradient).
b is the sequences one device processes at once: batch_size / (microbatches x devices).
"""

from __future__ import annotations

import dataclasses

from bimix_jax.errors import InputError
from bimix_jax.model import DecoderConfig

GiB = 2**30
HEADROOM = 0.9  # share of device memory the estimate may use (XLA scratch, fragmentation, runtime)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    state: float  # bytes per device
    gathered_weights: float
    activations: float
    logits: float
    sequences_per_device: int

    @property
    def total(self) -> float:
        return self.state + self.gathered_weights + self.activations + self.logits

    def to_dict(self) -> dict:
        return {**{k: round(v / GiB, 2) for k, v in dataclasses.asdict(self).items() if k != "sequences_per_device"},
                "total_gib": round(self.total / GiB, 2), "sequences_per_device": self.sequences_per_device}


def estimate(cfg: DecoderConfig, *, batch_size: int, microbatches: int, seq_len: int, devices: int,
             flash_attention: bool) -> MemoryEstimate:
    """Bytes per device at the train step's peak (see the module docstring for what is counted)."""
    total_params, _ = cfg.num_params()
    b = max(1, batch_size // (microbatches * devices))
    S, D, F, H, V, L = seq_len, cfg.D, cfg.F, cfg.H, cfg.V, cfg.L
    cbytes = 2 if cfg.dtype == "bfloat16" else 4
    grads = 2 if microbatches > 1 else 1
    state = total_params * 4 * (1 + 2 + grads) / devices
    gathered = total_params * cbytes
    per_block = b * S * (9 * D + 2 * F) * cbytes
    scores = 0 if flash_attention else b * H * S * S * (4 + 4)
    if cfg.remat:
        activations = L * b * S * D * cbytes + per_block + scores
    else:
        activations = L * (per_block + scores)
    logits = 2 * b * S * V * 4
    return MemoryEstimate(state, gathered, activations, logits, b)


def check(cfg: DecoderConfig, *, batch_size: int, microbatches: int, seq_len: int, devices: int,
          device_bytes: float, flash_attention: bool) -> MemoryEstimate:
    """The estimate, or an `InputError` naming the field to change when it exceeds HEADROOM x device_bytes."""
    kw = dict(batch_size=batch_size, seq_len=seq_len, devices=devices, flash_attention=flash_attention)
    est = estimate(cfg, microbatches=microbatches, **kw)
    budget = HEADROOM * device_bytes
    if est.total <= budget:
        return est
    need = f"needs about {est.total / GiB:.1f} GiB per device, more than {budget / GiB:.1f} GiB ({HEADROOM:.0%} of " \
           f"{device_bytes / GiB:.0f} GiB)"
    if est.state + est.gathered_weights > budget:
        raise InputError(f"the model {need} for its parameters and optimizer state alone; use more devices or a "
                         f"smaller model (model.D, model.L)")
    per_dev = batch_size // devices
    for m in range(microbatches + 1, per_dev + 1):
        if per_dev % m == 0 and estimate(cfg, microbatches=m, **kw).total <= budget:
            raise InputError(f"this config {need}; raise train.microbatches from {microbatches} to {m} "
                             "(or set model.remat=True)")
    if not cfg.remat:
        raise InputError(f"this config {need}; set model.remat=True and raise train.microbatches")
    raise InputError(f"this config {need} even one sequence at a time; lower train.seq_len or use more devices")


def check_run(cfg: DecoderConfig, train, devices) -> MemoryEstimate | None:
    """`check` for a `TrainSpec` on these devices, when they report their memory (GPU/TPU); None on CPU."""
    devices = list(devices)
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
        return None
    # cuDNN flash attention on GPU keeps O(S) per head; XLA's dot_product_attention (TPU, CPU) keeps the scores.
    flash = cfg.attention != "einsum" and devices[0].platform == "gpu"
    return check(cfg, batch_size=train.batch_size, microbatches=train.microbatches, seq_len=train.seq_len,
                 devices=len(devices), device_bytes=float(stats["bytes_limit"]), flash_attention=flash)
