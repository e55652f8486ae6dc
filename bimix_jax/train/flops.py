"""Model FLOPs utilisation: achieved model FLOP/s over the devices' peak dense bf16 FLOP/s.

    MFU = flops_per_token x tokens_per_s / (peak_per_device x devices)

`DecoderConfig.flops_per_token(S)` counts 6 (N + V D) + 12 L S D per training token (PaLM's convention, see
`bimix_jax/model.py`). The peaks are vendors' dense (no 2:4 sparsity) bf16 tensor figures per chip, keyed on
`jax.Device.device_kind`:

| device kind | peak | source |
|---|---|---|
| NVIDIA H100 80GB HBM3 (SXM) | 989 TFLOP/s | H100 datasheet: 1,979 with sparsity |
| NVIDIA H100 PCIe | 756 | H100 datasheet: 1,513 with sparsity |
| NVIDIA H100 NVL | 835 | H100 datasheet: 1,671 with sparsity |
| NVIDIA H200 (SXM) | 989 | H200 datasheet: 1,979 with sparsity (the H100's compute) |
| NVIDIA H200 NVL | 835 | H200 datasheet: 1,671 with sparsity |
| NVIDIA A100 (SXM, PCIe, 40/80 GB) | 312 | A100 datasheet |
| NVIDIA L4 | 121 | L4 datasheet: 242 with sparsity |
| TPU v4 | 275 | Cloud TPU docs, v4 |
| TPU v5 lite (v5e) | 197 | Cloud TPU docs, v5e |
| TPU v5 / v5p | 459 | Cloud TPU docs, v5p |
| TPU v6 lite (v6e, Trillium) | 918 | Cloud TPU docs, v6e |

A device kind not in the table (a CPU) has no peak: MFU is None unless a peak is given.
"""

from __future__ import annotations

import re

TFLOPS = 1e12
# (pattern on the lower-cased device kind, dense bf16 peak FLOP/s per chip); the first match wins.
PEAK_BF16 = (
    (r"h100.*nvl", 835 * TFLOPS),
    (r"h100.*pcie", 756 * TFLOPS),
    (r"h100", 989 * TFLOPS),
    (r"h200.*nvl", 835 * TFLOPS),
    (r"h200", 989 * TFLOPS),
    (r"a100", 312 * TFLOPS),
    (r"\bl4\b", 121 * TFLOPS),
    (r"^tpu v4$", 275 * TFLOPS),
    (r"^tpu v5( lite|e)$", 197 * TFLOPS),
    (r"^tpu v5p?$", 459 * TFLOPS),
    (r"^tpu v6( lite|e)$", 918 * TFLOPS),
)


def peak_bf16_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device of this kind (`jax.devices()[0].device_kind`); None if unknown."""
    kind = device_kind.strip().lower()
    for pattern, peak in PEAK_BF16:
        if re.search(pattern, kind):
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, devices: int, peak_per_device: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None without a peak)."""
    if not peak_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * devices)


def report(flops_per_token: float, tokens_per_s: float, devices, peak_tflops: float = 0.0) -> dict:
    """The MFU fields every benchmark prints: model FLOPs per token, achieved TFLOP/s, peak, MFU (null with the
    reason when the device kind has no known peak and none is given)."""
    devices = list(devices)
    kind = devices[0].device_kind if devices else "none"
    peak = peak_tflops * TFLOPS if peak_tflops else peak_bf16_flops(kind)
    achieved = flops_per_token * tokens_per_s
    out = {"device_kind": kind, "devices": len(devices), "model_flops_per_token": int(flops_per_token),
           "model_tflops_per_s": achieved / TFLOPS, "peak_bf16_tflops_per_device": peak / TFLOPS if peak else None,
           "peak_source": "given" if peak_tflops else ("table" if peak else None),
           "mfu": mfu(flops_per_token, tokens_per_s, len(devices), peak)}
    if out["mfu"] is None:
        out["mfu_null_reason"] = f"no peak bf16 FLOP/s known for device kind {kind!r}; pass a peak (TFLOP/s)"
    return out
