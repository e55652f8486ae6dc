"""FSDP on 8 CPU devices (in a subprocess, so the device count never leaks into other tests).

Checks: the state is created sharded (every device holds the shard shape its spec says); two FSDP train
steps on a (data=2, fsdp=4) mesh equal two single-device steps within 5e-5 (parameters, max abs; under 2% of
one Adam update at lr 3e-3), 1e-5 (loss, relative) and 1e-5 (global gradient norm before clipping, relative:
clipping and AdamW are blind to a uniform gradient scale, the norm is not); a checkpoint saved from 8 devices
restores on 1 device and back onto 8, bit-exact; the trainer's own programs place large leaves in 1/8 slices
and small ones whole, as the memory estimate counts them. And (in process, one device) remat changes memory,
not gradients.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _main(workdir: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

    from bimix_jax.data.sampler import TrainBuffers
    from bimix_jax.train import sharding
    from bimix_jax.train.checkpoint import Checkpointer
    from bimix_jax.train.state import ModelSpec, OptimSpec, RunSpec, TrainSpec, init_state, make_optimizer, make_train_step

    assert jax.device_count() == 8
    spec = RunSpec(ModelSpec(D=64, H=4, L=1, F=128), OptimSpec(lr=3e-3), TrainSpec(steps=10, batch_size=16, seq_len=16))
    cfg = spec.model.decoder(256, 16)
    opt = make_optimizer(spec.optim, spec.train.steps)
    init = lambda k: init_state(cfg, opt, k, 2)  # noqa: E731
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    data_np = TrainBuffers(rng.integers(0, 256, 4000).astype(np.int32), np.array([0, 2000], np.int32),
                           np.array([2000, 2000], np.int32))
    r_D = jnp.array([0.3, 0.7])

    mesh = sharding.make_mesh(fsdp=4)
    abstract = jax.eval_shape(init, key)
    shard = sharding.state_sharding(cfg, abstract, mesh)
    state8 = sharding.init_sharded(init, key, shard)
    emb = state8.params["embed"]["embedding"]
    assert emb.sharding.spec == P(None, "fsdp")
    # Every device holds exactly its shard: D = 64 split 4 ways over fsdp (replicated over data).
    blk = state8.params["block0"]
    for leaf, want in [(emb, (256, 16)), (blk["attn"]["qkv"]["kernel"], (16, 3, 4, 16)),
                        (blk["attn"]["out"]["kernel"], (4, 16, 16)), (blk["mlp"]["up"]["kernel"], (16, 128)),
                        (blk["mlp"]["up"]["bias"], (128,)), (blk["mlp"]["down"]["kernel"], (128, 16)),
                        (blk["norm1"]["scale"], (16,)), (state8.opt_state[1][0].mu["embed"]["embedding"], (256, 16)),
                        (state8.opt_state[1][0].nu["block0"]["mlp"]["up"]["kernel"], (16, 128))]:
        assert len(leaf.addressable_shards) == 8
        assert all(x.data.shape == want for x in leaf.addressable_shards), (leaf.shape, leaf.sharding.spec, want)
    total = sum(x.nbytes for x in jax.tree_util.tree_leaves(state8))
    assert sharding.bytes_per_device(state8) < 0.35 * total, (sharding.bytes_per_device(state8), total)

    repl = NamedSharding(mesh, P())
    step8 = make_train_step(cfg, spec, state_sharding=shard, data_sharding=repl,
                            batch_sharding=sharding.batch_sharding(mesh))
    step1 = make_train_step(cfg, spec)
    dev0 = jax.devices()[0]
    state1 = jax.device_put(init(key), dev0)
    data8, data1 = jax.device_put(data_np, repl), jax.device_put(data_np, dev0)
    for s in range(2):
        state8, m8 = step8(state8, data8, key, jnp.int32(s), r_D)
        state1, m1 = step1(state1, data1, key, jnp.int32(s), r_D)
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
        # The gradient itself, before clipping: a wrong scale (summed instead of averaged over devices) shows here.
        np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
        print(f"step {s}: grad_norm 8 devices {float(m8['grad_norm']):.7g}, 1 device {float(m1['grad_norm']):.7g}")
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b)))),
                                  state8.params, state1.params)
    worst = max(jax.tree_util.tree_leaves(diff))
    assert worst < 5e-5, worst  # Adam steps of lr 3e-3: agreement to under 2% of one update.
    assert state8.params["embed"]["embedding"].sharding.spec == P(None, "fsdp")
    print(f"fsdp_vs_1device_max_abs_param_diff={worst:.3g}")

    # Checkpoint: 8 devices -> 1 device -> 8 devices.
    ck = Checkpointer(os.path.join(workdir, "a"), async_save=False)
    ck.save(3, state8, {"step": 3})
    ck.wait()
    one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SingleDeviceSharding(dev0)),
                                 abstract)
    restored1, _ = ck.restore(3, one)
    assert all(len(x.devices()) == 1 for x in jax.tree_util.tree_leaves(restored1))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored1, state8)
    ck2 = Checkpointer(os.path.join(workdir, "b"), async_save=False)
    ck2.save(3, restored1, {"step": 3})
    ck2.wait()
    eight = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shard)
    restored8, _ = ck2.restore(3, eight)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored8, state8)
    assert restored8.params["embed"]["embedding"].sharding == state8.params["embed"]["embedding"].sharding
    ck.close()
    ck2.close()

    # The trainer's one-axis mesh: large leaves FSDP over "data", small ones replicated.
    from jax.sharding import Mesh
    big = RunSpec(ModelSpec(D=512, H=8, L=1, F=1024), OptimSpec(), TrainSpec(steps=10, batch_size=16, seq_len=16))
    cfg_b = big.model.decoder(1024, 16)
    opt_b = make_optimizer(big.optim, 10)
    tsh = sharding.trainer_state_sharding(cfg_b, lambda k: init_state(cfg_b, opt_b, k, 2), Mesh(np.array(jax.devices()), ("data",)))
    assert tsh.params["embed"]["embedding"].spec == P(None, "data")
    assert tsh.params["block0"]["mlp"]["up"]["kernel"].spec == P("data", None)
    assert tsh.params["block0"]["norm1"]["scale"].spec == P()
    # The trainer's programs create exactly these per-device shards.
    from bimix_jax.train.loop import _mesh, compiled_programs
    big_state = compiled_programs(cfg_b, big, _mesh(None, big), 2).init(key)
    p = big_state.params
    for leaf, want in [(p["embed"]["embedding"], (1024, 64)), (p["block0"]["mlp"]["up"]["kernel"], (64, 1024)),
                        (p["block0"]["attn"]["qkv"]["kernel"], (64, 3, 8, 64)),
                        (big_state.opt_state[1][0].mu["block0"]["mlp"]["down"]["kernel"], (1024, 64)),
                        (p["block0"]["norm1"]["scale"], (512,)), (p["block0"]["mlp"]["up"]["bias"], (1024,))]:
        assert len(leaf.addressable_shards) == 8
        assert all(x.data.shape == want for x in leaf.addressable_shards), (leaf.shape, leaf.sharding.spec, want)
    # The memory estimate's parameter bytes are what one device holds.
    assert sharding.trainer_param_bytes_per_device(cfg_b, 8) == sharding.bytes_per_device(p)
    print("ok")


@pytest.mark.slow  # About 55 s on 2 loaded cores (two compilations in a fresh process).
def test_fsdp_on_8_cpu_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-3000:] + out.stderr[-3000:]


def test_remat_keeps_gradients():
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bimix_jax.model import DecoderConfig, init_params, token_losses

    cfg = DecoderConfig(D=16, H=2, L=1, F=32, V=32, max_len=4)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 5)), jnp.int32)
    p = init_params(cfg, jax.random.key(0))
    g = jax.jit(jax.grad(lambda q, c: jnp.mean(token_losses(c, q, x))), static_argnums=1)
    ga, gb = g(p, cfg), g(p, dataclasses.replace(cfg, remat=True))
    assert max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ga, gb))) < 1e-6


if __name__ == "__main__":
    _main(sys.argv[1])
