"""Memory estimate: the shipped configs fit the devices their launch commands name under the attention path they
take there; the path, the data buffers and the shardings change the estimate; only this process's devices are
read; configs that cannot fit are refused naming the field."""

import dataclasses

import jax
import numpy as np
import pytest

from bimix_jax.data.sampler import TrainBuffers
from bimix_jax.errors import InputError
from bimix_jax.model import attention_choice
from bimix_jax.train import memory
from bimix_jax.train.state import RunSpec
from configs import proxy, target

GPU_80GB = 0.75 * 80e9  # JAX's default GPU memory pool (75% of the device), what `bytes_limit` reports
TPU_V4 = 32 * 2**30  # HBM of one TPU v4 chip
MAX_TOKENS_BYTES = (2**31 - 1) * 4  # the largest in-memory token buffer the trainer accepts (int32), per device


def _cfg(module, **model):
    config = module.get_config()
    spec = RunSpec.from_config(config)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, **model))
    return spec.model.decoder(config.data.vocab_size, spec.train.seq_len), spec.train


def _kw(train, devices, **over):
    kw = dict(batch_size=train.batch_size, microbatches=train.microbatches, seq_len=train.seq_len, devices=devices)
    kw.update(over)
    return kw


@pytest.mark.parametrize("module", [proxy, target])
@pytest.mark.parametrize("devices,microbatches", [(1, None), (8, 1)])
def test_shipped_configs_fit_80gb_gpus_under_cudnn(module, devices, microbatches):
    """The launch commands of docs/real_scale.md: 1 GPU with the config's microbatches, 8 GPUs with 1."""
    cfg, train = _cfg(module)
    choice = attention_choice(cfg, "gpu", "9.0")
    assert choice.impl == "cudnn" and choice.flash, choice
    kw = _kw(train, devices, **({"microbatches": microbatches} if microbatches else {}))
    est = memory.check(cfg, device_bytes=GPU_80GB, attention=choice.impl, data_bytes=MAX_TOKENS_BYTES, **kw)
    assert est.total <= memory.HEADROOM * GPU_80GB and est.attention == "cudnn"
    assert est.sequences_per_device == 64 and est.data == MAX_TOKENS_BYTES


def test_target_fits_a_tpu_v4_32_slice():
    """XLA attention on TPU keeps the S x S scores: on 16 v4 chips one slice fits when the batches come from a token
    store; the largest in-memory corpus (8 GiB on every chip) needs 2."""
    cfg, train = _cfg(target)
    choice = attention_choice(cfg, "tpu")
    assert choice.impl == "xla" and not choice.flash
    kw = _kw(train, 16, device_bytes=TPU_V4, attention=choice.impl)
    assert memory.check(cfg, **{**kw, "microbatches": 1}).total <= memory.HEADROOM * TPU_V4
    assert memory.check(cfg, **{**kw, "microbatches": 2, "data_bytes": MAX_TOKENS_BYTES}).total <= 0.9 * TPU_V4
    with pytest.raises(InputError, match="raise train.microbatches from 1 to 2"):
        memory.check(cfg, **{**kw, "microbatches": 1, "data_bytes": MAX_TOKENS_BYTES})


def test_the_path_taken_decides_the_estimate():
    """The proxy fits one GPU only under cuDNN flash attention; in float32 (no cuDNN) the XLA path is counted."""
    cfg, train = _cfg(proxy)
    kw = _kw(train, 1, device_bytes=GPU_80GB)
    memory.check(cfg, attention="cudnn", **kw)
    with pytest.raises(InputError, match=r"\(xla attention\).*raise train.microbatches from 8 to 32"):
        memory.check(cfg, attention="xla", **kw)
    f32, _ = _cfg(proxy, dtype="float32")
    fallback = attention_choice(f32, "gpu", "9.0")
    assert fallback.impl == "xla" and "model.dtype=float32" in fallback.reason
    assert attention_choice(cfg, "gpu", "8.0").impl == "cudnn"  # head width 64 <= 128 on Ampere
    assert attention_choice(cfg, "gpu", "7.5").impl == "xla"  # cuDNN flash attention needs Ampere


def test_terms_match_hand_counts():
    cfg, train = _cfg(proxy)
    kw = _kw(train, 1, microbatches=4)
    flash = memory.estimate(cfg, attention="cudnn", **kw)
    # The float32 logits of 128 x 1024 tokens over 32768 pieces: 16 GiB, twice (logits and gradient).
    assert flash.logits == 2 * 128 * 1024 * 32768 * 4
    # XLA attention keeps float32 S x S scores and probabilities per head (12 heads, 12 blocks, 128 sequences);
    # cuDNN keeps one float32 softmax statistic per head and token.
    xla = memory.estimate(cfg, attention="xla", **kw)
    assert xla.activations - flash.activations == 12 * 12 * 128 * (1024 * 1024 * 8 - 1024 * 4)
    assert memory.estimate(cfg, attention="einsum", **kw).total == xla.total
    remat, _ = _cfg(proxy, remat=True)
    assert memory.estimate(remat, attention="cudnn", **kw).activations < flash.activations / 5
    with pytest.raises(ValueError, match="auto"):
        memory.estimate(cfg, attention="auto", **kw)


def test_data_buffers_are_counted():
    buffers = TrainBuffers(np.zeros(1000, np.int32), np.zeros(3, np.int32), np.zeros(3, np.int32))
    evals = np.zeros((4, 8, 33), np.int32)
    got = memory.data_bytes_per_device(8, replicated=[buffers], sharded=[evals, None])
    assert got == 4000 + 12 + 12 + 4 * 8 * 33 * 4 / 8  # token buffers whole on every device, eval rows split
    cfg, train = _cfg(proxy)
    kw = _kw(train, 1, attention="cudnn")
    base = memory.estimate(cfg, **kw)
    assert memory.estimate(cfg, data_bytes=got, **kw).total - base.total == got
    # 30 GiB of tokens next to the proxy's 37 GiB: smaller slices would fit, and the refusal says what the tokens take.
    with pytest.raises(InputError, match=r"30.0 GiB of it the training tokens.*from 8 to 16"):
        memory.check(cfg, device_bytes=GPU_80GB, data_bytes=30 * 2**30, **kw)
    # 49 GiB of tokens leave no room whatever the slicing: the refusal names the data, not the model.
    with pytest.raises(InputError, match="training tokens held on every device.*data.max_docs_per_domain"):
        memory.check(cfg, device_bytes=GPU_80GB, data_bytes=49 * 2**30, **kw)


def test_state_follows_the_trainer_shardings():
    """8 devices: leaves >= 2^18 elements split 8 ways, the rest (norms, biases) whole on every device."""
    cfg, train = _cfg(proxy)
    small = cfg.L * (cfg.F + 3 * cfg.D) + cfg.D  # MLP biases and norm scales, below 2^18 elements
    total, _ = cfg.num_params()
    one = memory.estimate(cfg, attention="cudnn", **_kw(train, 1, microbatches=1))
    eight = memory.estimate(cfg, attention="cudnn", **_kw(train, 8, microbatches=1))
    assert one.state == total * 4 * 4  # parameters, two Adam moments, gradients (float32)
    assert eight.state == ((total - small) // 8 + small) * 4 * 4
    # A vmapped group keeps K stacked states whole on every device.
    group = memory.estimate(cfg, attention="cudnn", runs=3, **_kw(train, 8, microbatches=1))
    assert group.state == 3 * total * 4 * 4 and group.sequences_per_device == 3 * 64


class _Device:
    """A device as `check_run` sees it; a device of another process refuses `memory_stats` (as JAX does)."""

    def __init__(self, process_index: int, limit: float = GPU_80GB, platform: str = "gpu"):
        self.process_index, self.limit, self.platform, self.compute_capability = process_index, limit, platform, "9.0"

    def memory_stats(self):
        if self.process_index != jax.process_index():
            raise RuntimeError("memory_stats of a device of another process")
        return {"bytes_limit": self.limit}


def test_check_run_reads_only_this_process_devices():
    cfg, train = _cfg(proxy)
    train = dataclasses.replace(train, microbatches=1)
    other, mine = [_Device(1) for _ in range(4)], [_Device(0) for _ in range(4)]
    est = memory.check_run(cfg, train, other + mine)  # process 1's devices come first, as on process 0 of 2
    assert est.attention == "cudnn" and est.sequences_per_device == 64  # 512 rows over all 8 devices
    # The smallest local device decides.
    with pytest.raises(InputError, match=r"raise train.microbatches from 1 to \d"):
        memory.check_run(cfg, train, other + mine[:3] + [_Device(0, limit=24e9)])
    with pytest.raises(InputError, match="belongs to this process"):
        memory.check_run(cfg, train, other)


def test_check_run_is_skipped_where_devices_report_no_memory():
    cfg, train = _cfg(proxy)
    if jax.devices()[0].platform == "cpu":  # XLA:CPU reports no memory limit: nothing to check against.
        assert memory.check_run(cfg, train, jax.devices()) is None


def test_explicit_cudnn_is_refused_where_it_cannot_run():
    cfg, train = _cfg(proxy, attention="cudnn")
    with pytest.raises(InputError, match="model.attention='cudnn' cannot run: .*needs a CUDA GPU"):
        memory.check_run(cfg, train, [_Device(0, platform="tpu")])
    f32, _ = _cfg(proxy, attention="cudnn", dtype="float32")
    with pytest.raises(InputError, match="model.dtype=float32"):
        memory.check_run(f32, train, [_Device(0)])
