"""Device meshes and the sharding of the train state (FSDP, optional tensor axis).

The mesh has axes `("data", "fsdp", "tensor")`. Batches are split over `data` x `fsdp`. Parameters are
placed by their logical axis names (`nn.with_partitioning` in `bimix_jax.model`) through `RULES`:
`embed` goes to `fsdp` (each device keeps 1/fsdp of every matrix, gathered for the forward pass), `mlp`,
`heads` and `vocab` go to `tensor`. An axis whose mesh size does not divide the dimension is left whole;
leaves smaller than `min_size` elements stay replicated (their gathers cost more than they save).
Optimizer-state subtrees shaped like the parameters (Adam moments) follow the parameters; other leaves
are replicated. `init_sharded` creates the state inside jit with `out_shardings`, so it is never whole
on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bimix_jax.errors import InputError
from bimix_jax.model import DecoderConfig, init_boxed_params

AXES = ("data", "fsdp", "tensor")
RULES = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "vocab": "tensor", "kv": None}
BATCH = ("data", "fsdp")  # mesh axes the batch rows are split over


def make_mesh(devices: Sequence[jax.Device] | None = None, *, fsdp: int = 1, tensor: int = 1) -> Mesh:
    """A (data, fsdp, tensor) mesh; data = devices / (fsdp x tensor)."""
    devices = list(devices) if devices is not None else jax.devices()
    n = len(devices)
    if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
        raise InputError(f"train.fsdp={fsdp} x train.tensor={tensor} must divide the {n} devices; change train.fsdp")
    grid = np.array(devices).reshape(n // (fsdp * tensor), fsdp, tensor)
    return Mesh(grid, AXES)


def param_axes(cfg: DecoderConfig) -> Any:
    """The logical axis names of every parameter (a tree of tuples, from the model's metadata)."""
    boxed = jax.eval_shape(lambda: init_boxed_params(cfg, jax.random.key(0)))
    return jax.tree_util.tree_map(lambda b: tuple(b.names), boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _spec(shape: tuple[int, ...], names: tuple[str | None, ...], mesh_shape: Mapping[str, int], fsdp_axis: str,
          min_size: int) -> P:
    """The partition spec of one leaf on a mesh of these axis sizes (only the sizes matter, not the devices)."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    out, used = [], set()
    for dim, name in zip(shape, names):
        axis = RULES.get(name) if name else None
        if axis == "fsdp":
            axis = fsdp_axis
        if axis is None or axis not in mesh_shape or axis in used or dim % mesh_shape[axis] or mesh_shape[axis] == 1:
            out.append(None)
        else:
            out.append(axis)
            used.add(axis)
    return P(*out)


def params_sharding(cfg: DecoderConfig, abstract_params: Any, mesh: Mesh, *, fsdp_axis: str = "fsdp",
                    min_size: int = 0) -> Any:
    """A NamedSharding for every parameter (same tree as the parameters)."""
    axes = param_axes(cfg)
    return jax.tree_util.tree_map(
        lambda x, names: NamedSharding(mesh, _spec(x.shape, names, mesh.shape, fsdp_axis, min_size)),
        abstract_params, axes, is_leaf=lambda x: isinstance(x, tuple))


def state_sharding(cfg: DecoderConfig, abstract_state: Any, mesh: Mesh, *, fsdp_axis: str = "fsdp",
                   min_size: int = 0) -> Any:
    """Shardings of a train state with a `.params` field: params and param-shaped optimizer subtrees sharded."""
    p_sharding = params_sharding(cfg, abstract_state.params, mesh, fsdp_axis=fsdp_axis, min_size=min_size)
    p_def = jax.tree_util.tree_structure(abstract_state.params)
    repl = NamedSharding(mesh, P())

    def like_params(x: Any) -> bool:
        return jax.tree_util.tree_structure(x) == p_def

    def place(x: Any) -> Any:
        return p_sharding if like_params(x) else repl

    return jax.tree_util.tree_map(place, abstract_state, is_leaf=like_params)


FSDP_MIN_SIZE = 1 << 18  # elements (1 MiB in float32); smaller leaves stay replicated in the trainer


def trainer_state_sharding(cfg: DecoderConfig, init: Callable[[jax.Array], Any], mesh: Mesh) -> Any:
    """The trainer's state shardings: FSDP over the mesh's first axis for leaves of >= FSDP_MIN_SIZE elements.

    On the trainer's one-axis ("data",) mesh this is ZeRO-3 style data parallelism: every device holds a
    slice of the large matrices and their Adam moments; tiny models stay replicated, as before.
    """
    abstract = jax.eval_shape(init, jax.random.key(0))
    return state_sharding(cfg, abstract, mesh, fsdp_axis=mesh.axis_names[0], min_size=FSDP_MIN_SIZE)


def trainer_param_bytes_per_device(cfg: DecoderConfig, devices: int, *, min_size: int = FSDP_MIN_SIZE) -> int:
    """float32 parameter bytes one device holds under the trainer's rules on `devices` devices (no devices needed).

    The same placement as `trainer_state_sharding` on a ("data",) mesh of that size: a leaf of at least
    `min_size` elements is split over the devices along its `embed` dimension when the device count divides
    it; every other leaf is whole on every device. Adam moments and gradients follow the parameters.
    """
    axes = param_axes(cfg)
    abstract = jax.eval_shape(lambda: nn.meta.unbox(init_boxed_params(cfg, jax.random.key(0))))
    total = 0
    for x, names in zip(jax.tree_util.tree_leaves(abstract),
                        jax.tree_util.tree_leaves(axes, is_leaf=lambda n: isinstance(n, tuple))):
        spec = _spec(x.shape, names, {"data": devices}, "data", min_size)
        split = devices if any(a is not None for a in spec) else 1
        total += int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize // split
    return total


def init_sharded(init: Callable[[jax.Array], Any], key: jax.Array, sharding: Any) -> Any:
    """`init(key)` run inside jit, each output leaf created directly in its sharding."""
    return jax.jit(init, out_shardings=sharding)(key)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the data and fsdp axes."""
    return NamedSharding(mesh, P(tuple(a for a in BATCH if a in mesh.shape)))


def bytes_per_device(tree: Any) -> int:
    """Largest number of bytes any one device holds of a sharded tree (for checks and logs)."""
    per: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            per[shard.device] = per.get(shard.device, 0) + shard.data.nbytes
    return max(per.values()) if per else 0
