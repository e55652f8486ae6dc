"""Memory estimate: the shipped proxy/target configs fit an 80 GB GPU; configs that cannot fit are refused."""

import pytest

from bimix_jax.errors import InputError
from bimix_jax.train import memory
from bimix_jax.train.state import RunSpec
from configs import proxy, target

GPU_80GB = 80e9


def _args(config, devices, **over):
    spec = RunSpec.from_config(config)
    cfg = spec.model.decoder(config.data.vocab_size, spec.train.seq_len)
    kw = dict(batch_size=spec.train.batch_size, microbatches=spec.train.microbatches, seq_len=spec.train.seq_len,
              devices=devices, device_bytes=GPU_80GB, flash_attention=True)
    kw.update(over)
    return cfg, kw


@pytest.mark.parametrize("module", [proxy, target])
@pytest.mark.parametrize("devices,microbatches", [(1, None), (8, 1)])
def test_shipped_configs_fit_an_80gb_gpu(module, devices, microbatches):
    config = module.get_config()
    cfg, kw = _args(config, devices, **({"microbatches": microbatches} if microbatches else {}))
    est = memory.check(cfg, **kw)
    assert est.total <= memory.HEADROOM * GPU_80GB
    assert est.sequences_per_device == 64


def test_refusals_name_the_field():
    cfg, kw = _args(proxy.get_config(), 1, microbatches=1)
    with pytest.raises(InputError, match="raise train.microbatches from 1 to 8"):
        memory.check(cfg, **kw)
    cfg, kw = _args(target.get_config(), 1, microbatches=1)
    kw["device_bytes"] = 16e9  # A 16 GB device: the 1B model's state alone is ~14 GB plus gathered weights.
    with pytest.raises(InputError, match="model.D, model.L"):
        memory.check(cfg, **kw)


def test_terms_match_hand_counts():
    cfg, kw = _args(proxy.get_config(), 1, microbatches=4)
    kw.pop("device_bytes")
    est = memory.estimate(cfg, **kw)
    # The float32 logits of 128 x 1024 tokens over 32768 pieces: 16 GiB, twice (logits and gradient).
    assert est.logits == 2 * 128 * 1024 * 32768 * 4
    # Einsum attention keeps float32 L x L scores and probabilities per head: 12 heads x 1024^2 x 8 B x 128.
    einsum = memory.estimate(cfg, **{**kw, "flash_attention": False})
    assert einsum.activations - est.activations == 12 * 12 * 128 * 1024 * 1024 * 8
    assert memory.estimate(cfg.__class__(**{**cfg.__dict__, "remat": True}), **kw).activations < est.activations / 5


def test_check_run_is_skipped_where_devices_report_no_memory():
    import jax

    config = proxy.get_config()
    spec = RunSpec.from_config(config)
    cfg = spec.model.decoder(config.data.vocab_size, spec.train.seq_len)
    if jax.devices()[0].platform == "cpu":  # XLA:CPU reports no memory limit: nothing to check against.
        assert memory.check_run(cfg, spec.train, jax.devices()) is None
