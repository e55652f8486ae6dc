"""Per-device memory estimate of a training run, and a check that refuses a config that cannot fit.

An estimate, not a measurement: it counts the arrays the step must hold at its peak, on one device.
* state: float32 parameters, Adam moments (2x) and gradients (2x with microbatches: accumulator and
  slice), placed as the trainer places them (`sharding.trainer_param_bytes_per_device`: leaves of at
  least 2^18 elements split over the devices, smaller ones whole on every device; a vmapped group of
  runs keeps its stacked state whole on every device);
* gathered weights: a compute-dtype copy of all parameters (the forward pass gathers them);
* activations kept for the backward pass, per block and sequence of S tokens: about (9 D + 2 F) values
  (residual, two norms, q k v, rotated q k, attention output, MLP in and out); on the einsum and XLA
  attention paths also the float32 S x S scores and probabilities of every head; on cuDNN flash
  attention only a float32 softmax statistic per head and token. With remat only each block's input is
  kept, plus one block recomputed at a time;
* logits: float32 [b, S, V] twice (logits and their gradient);
* data: the token buffers the trainer places on the device (given by the caller, `data_bytes_per_device`).
b is the sequences one device processes at once: batch_size / (microbatches x devices), times the runs of
a vmapped group. The attention path is the one the model will take (`bimix_jax.model.attention_choice`).
`check_run` reads the memory limit of each device of this process (never a device of another process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.model import DecoderConfig, attention_choice
from bimix_jax.train.sharding import trainer_param_bytes_per_device

GiB = 2**30
HEADROOM = 0.9  # share of device memory the estimate may use (XLA scratch, fragmentation, runtime)
ATTENTION_PATHS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    state: float  # bytes per device
    gathered_weights: float
    activations: float
    logits: float
    data: float
    sequences_per_device: int
    attention: str  # the attention path counted: einsum | xla | cudnn

    @property
    def total(self) -> float:
        return self.state + self.gathered_weights + self.activations + self.logits + self.data

    def to_dict(self) -> dict:
        parts = ("state", "gathered_weights", "activations", "logits", "data")
        return {**{f"{k}_gib": round(getattr(self, k) / GiB, 2) for k in parts},
                "total_gib": round(self.total / GiB, 2), "sequences_per_device": self.sequences_per_device,
                "attention": self.attention}


def data_bytes_per_device(devices: int, *, replicated: Iterable[Any] = (), sharded: Iterable[Any] = ()) -> float:
    """Bytes one device holds of host arrays placed whole on every device (`replicated`, e.g. the trainer's
    token buffers) or split over the devices (`sharded`, e.g. the evaluation set); None entries are skipped."""

    def nbytes(trees: Iterable[Any]) -> int:
        leaves = (x for t in trees if t is not None for x in jax.tree_util.tree_leaves(t))
        return sum(int(x.nbytes) if hasattr(x, "nbytes") else int(np.asarray(x).nbytes) for x in leaves)

    return float(nbytes(replicated)) + nbytes(sharded) / max(1, devices)


def estimate(cfg: DecoderConfig, *, batch_size: int, microbatches: int, seq_len: int, devices: int, attention: str,
             data_bytes: float = 0.0, runs: int = 1) -> MemoryEstimate:
    """Bytes per device at the train step's peak (see the module docstring for what is counted).

    `attention` is the path the model takes (`attention_choice(cfg, platform).impl`); `runs` > 1 counts a
    vmapped group of that many runs (state stacked and whole on every device).
    """
    if attention not in ATTENTION_PATHS:
        raise ValueError(f"attention={attention!r}: give the path taken, one of {', '.join(ATTENTION_PATHS)}")
    total_params, _ = cfg.num_params()
    b = max(1, batch_size // (microbatches * devices)) * runs
    S, D, F, H, V, L = seq_len, cfg.D, cfg.F, cfg.H, cfg.V, cfg.L
    cbytes = 2 if cfg.dtype == "bfloat16" else 4
    grads = 2 if microbatches > 1 else 1
    param_bytes = trainer_param_bytes_per_device(cfg, devices) if runs == 1 else runs * total_params * 4
    state = param_bytes * (1 + 2 + grads)
    gathered = runs * total_params * cbytes
    per_block = b * S * (9 * D + 2 * F) * cbytes
    scores = b * H * S * 4 if attention == "cudnn" else b * H * S * S * (4 + 4)
    if cfg.remat:
        activations = L * b * S * D * cbytes + per_block + scores
    else:
        activations = L * (per_block + scores)
    logits = 2 * b * S * V * 4
    return MemoryEstimate(float(state), float(gathered), float(activations), float(logits), float(data_bytes), b,
                          attention)


def check(cfg: DecoderConfig, *, batch_size: int, microbatches: int, seq_len: int, devices: int,
          device_bytes: float, attention: str, data_bytes: float = 0.0, runs: int = 1) -> MemoryEstimate:
    """The estimate, or an `InputError` naming the field to change when it exceeds HEADROOM x device_bytes."""
    kw = dict(batch_size=batch_size, seq_len=seq_len, devices=devices, attention=attention, data_bytes=data_bytes,
              runs=runs)
    est = estimate(cfg, microbatches=microbatches, **kw)
    budget = HEADROOM * device_bytes
    if est.total <= budget:
        return est
    need = f"needs about {est.total / GiB:.1f} GiB per device ({attention} attention), more than " \
           f"{budget / GiB:.1f} GiB ({HEADROOM:.0%} of {device_bytes / GiB:.0f} GiB)"
    group = f" for {runs} runs at once (train fewer runs together)" if runs > 1 else ""
    if est.state + est.gathered_weights > budget:
        raise InputError(f"the model {need} for its parameters and optimizer state alone{group}; use more devices "
                         "or a smaller model (model.D, model.L)")
    if est.state + est.gathered_weights + est.data > budget:
        raise InputError(f"this config {need}, of which {est.data / GiB:.1f} GiB are the training tokens held on "
                         "every device; read fewer (data.max_docs_per_domain) or use devices with more memory")
    if est.data > budget / 4:
        need += f" ({est.data / GiB:.1f} GiB of it the training tokens; data.max_docs_per_domain reads fewer)"
    per_dev = batch_size // devices
    for m in range(microbatches + 1, per_dev + 1):
        if per_dev % m == 0 and estimate(cfg, microbatches=m, **kw).total <= budget:
            raise InputError(f"this config {need}; raise train.microbatches from {microbatches} to {m} "
                             "(or set model.remat=True)")
    if not cfg.remat:
        raise InputError(f"this config {need}; set model.remat=True and raise train.microbatches")
    raise InputError(f"this config {need} even one sequence at a time; lower train.seq_len or use more devices")


def _local_bytes_limit(devices: Sequence[Any]) -> float | None:
    """The smallest memory limit among these devices, read on each; None when one reports none (CPU)."""
    limits = []
    for d in devices:
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return None
        limits.append(float(stats["bytes_limit"]))
    return min(limits) if limits else None


def check_run(cfg: DecoderConfig, train, devices: Iterable[Any], *, data_bytes: float = 0.0,
              runs: int = 1) -> MemoryEstimate | None:
    """`check` for a `TrainSpec` on these (global) devices, when this process's devices report their memory
    (GPU/TPU); None on CPU. The attention path is the one the model will take on these devices; an explicit
    `model.attention=cudnn` that cannot run is refused here, before anything is written."""
    devices = list(devices)
    local = [d for d in devices if d.process_index == jax.process_index()]
    if not local:
        raise InputError(f"none of the {len(devices)} training devices belongs to this process "
                         f"({jax.process_index()}); pass this process's devices")
    choice = attention_choice(cfg, local[0].platform, getattr(local[0], "compute_capability", None))
    limit = _local_bytes_limit(local)
    if limit is None:
        return None
    return check(cfg, batch_size=train.batch_size, microbatches=train.microbatches, seq_len=train.seq_len,
                 devices=len(devices), device_bytes=limit, attention=choice.impl, data_bytes=data_bytes, runs=runs)
