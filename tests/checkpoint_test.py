"""Orbax checkpoints of the train state: exact round trip, retention, unfinished and damaged steps."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bimix_jax.train.checkpoint import Checkpointer
from bimix_jax.errors import InputError
from bimix_jax.train.state import TrainState


def _state(seed: int) -> TrainState:
    params = {"w": jax.random.normal(jax.random.key(seed), (4, 3)), "b": jnp.arange(3.0) + seed}
    opt = optax.adamw(1e-3)
    opt_state = opt.update(params, opt.init(params), params)[1]  # non-trivial moments and count
    return TrainState(params, opt_state, jnp.array([seed, 2 * seed, 0], jnp.int32))


def _abstract(state):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_round_trip_is_exact_and_keeps_latest(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    states = {s: _state(s) for s in (10, 20, 30)}
    for s, state in states.items():
        ckpt.save(s, state, {"step": s, "tokens": s * 100})
    ckpt.wait()
    assert ckpt.latest_step() == 30 and ckpt.all_steps() == [20, 30]
    restored, meta = ckpt.restore(20, _abstract(states[20]))
    ckpt.close()
    assert meta == {"step": 20, "tokens": 2000}
    assert isinstance(restored, TrainState)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(states[20])
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(states[20])):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_unfinished_save_is_ignored_and_damage_is_reported(tmp_path):
    directory = str(tmp_path / "ckpt")
    ckpt = Checkpointer(directory, keep=3)
    ckpt.save(5, _state(5), {"step": 5})
    ckpt.close()
    # A process killed mid-save leaves only orbax's temporary folder.
    os.makedirs(os.path.join(directory, "7.orbax-checkpoint-tmp-1234", "state"))
    ckpt = Checkpointer(directory, keep=3)
    assert ckpt.latest_step() == 5
    for root, _, files in os.walk(os.path.join(directory, "5", "meta")):
        for f in files:
            with open(os.path.join(root, f), "w") as fh:
                fh.write("{not json")
    with pytest.raises(InputError, match=r"checkpoint .*ckpt/5 is corrupted or unreadable.*delete") as e:
        ckpt.restore(5, _abstract(_state(5)))
    assert "\n" not in str(e.value)
    ckpt.close()
