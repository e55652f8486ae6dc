"""The GPU check's CPU smoke run prints every field, with figures consistent with each other; MFU arithmetic and
the table of device kinds."""

import json
import os
import subprocess
import sys

import pytest

from bimix_jax.train import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BIMIX_JAX_CACHE_DIR": "", "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_smoke_run_has_every_field(smoke):
    assert {"device_kind", "platform", "devices", "step", "group", "data", "train", "goals", "wall_s"} <= set(smoke)
    step = smoke["step"]
    for key in ("compile_s", "step_ms", "tokens_per_s", "model_flops_per_token", "model_tflops_per_s", "mfu",
                "peak_bf16_tflops_per_device", "attention", "attention_reason", "memory_estimate_not_measured",
                "memory_measured"):
        assert key in step, key
    assert step["attention"] == "einsum" and step["mfu"] is None and "cpu" in step["mfu_null_reason"]
    # configs/proxy.py:runlocal: D 64, L 2, F 256, V 512 at S 64: 6 (N + V D) + 12 L S D.
    n = 2 * (4 * 64 * 64 + 2 * 64 * 256 + 256 + 64 + 2 * 64) + 64
    assert step["model_flops_per_token"] == 6 * (n + 512 * 64) + 12 * 2 * 64 * 64
    assert step["tokens_per_s"] == pytest.approx(16 * 64 / (step["step_ms"] / 1e3))
    assert step["model_tflops_per_s"] == pytest.approx(step["model_flops_per_token"] * step["tokens_per_s"] / 1e12)
    group = smoke["group"]["group_K2"]
    assert group["sequential_step_ms"] > 0 and group["vmapped_step_ms"] > 0 and group["speedup"] > 0
    data = smoke["data"]
    assert data["store_train_tokens"] > 0 and data["wait_ms_per_step"]["median"] >= 0
    wait = data["wait_ms_per_step"]["median"]
    assert data["wait_share_of_step"] == pytest.approx(wait / data["step_ms_without_input"])
    train = smoke["train"]  # the trainer reading the store (data.source=store)
    assert train["steps"] == 4 and train["vocab_size"] == 512 and train["trainer_tokens_per_s_median"] > 0
    assert set(train["final_validation_losses"]) == {"alpha", "beta", "gamma", "delta"}
    goals = smoke["goals"]
    assert goals["mfu_at_least_0.45"] is None  # no peak on a CPU: not measured, not guessed
    assert goals["data_wait_below_1pct_of_step"] == (data["wait_share_of_step"] < 0.01)
    assert goals["vmapped_K_at_least_3x_sequential"] == (group["speedup"] >= 3)


@pytest.mark.parametrize("kind,tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                         ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835),
                                         ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
                                         ("NVIDIA L4", 121), ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5", 459),
                                         ("TPU v5p", 459), ("TPU v6 lite", 918), ("NVIDIA L40S", None),
                                         ("TPU v4 lite", None), ("cpu", None)])
def test_peak_table(kind, tflops):
    assert flops.peak_bf16_flops(kind) == (None if tflops is None else tflops * 1e12)


class _Device:
    def __init__(self, kind):
        self.device_kind = kind


def test_mfu_arithmetic():
    # The proxy (774,240,768 FLOPs per token) at 600k tokens/s on 8 H100s: 4.65e14 / 7.91e15 = 5.87%.
    out = flops.report(774_240_768, 600_000, [_Device("NVIDIA H100 80GB HBM3")] * 8)
    assert out["mfu"] == pytest.approx(774_240_768 * 600_000 / (989e12 * 8))
    assert out["peak_source"] == "table" and out["model_tflops_per_s"] == pytest.approx(464.544, rel=1e-4)
    given = flops.report(1e9, 1e3, [_Device("cpu")], peak_tflops=2.0)
    assert given["mfu"] == pytest.approx(0.5) and given["peak_source"] == "given"
    assert flops.report(1e9, 1e3, [_Device("cpu")])["mfu"] is None
