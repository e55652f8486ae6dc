"""What a multi-host (multi-controller) run needs beyond one process: placing host data without gathering it,
barriers, and one writer.

Every process of a `jax.distributed` job runs the same program. Host arrays that every process holds alike (token
buffers, evaluation sets, proportions, keys) are placed with `jax.make_array_from_callback`, so each process fills
only its own devices and nothing crosses hosts; `barrier(name)` waits for every process (a no-op in one process);
`is_writer()` is process 0, the only one that writes tables, reports and logs (orbax writes checkpoints from every
process itself).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def is_writer() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (one process: returns at once)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def place(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same on every process) as global arrays with `shardings` (one per leaf, or one for all):
    each process fills its own devices from its copy, so nothing is gathered across hosts."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shard_leaves = (jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
                    if not isinstance(shardings, jax.sharding.Sharding) else [shardings] * len(leaves))
    if len(shard_leaves) != len(leaves):
        raise ValueError(f"{len(shard_leaves)} shardings for {len(leaves)} arrays")
    out = []
    for x, s in zip(leaves, shard_leaves):
        x = np.asarray(x)
        out.append(jax.make_array_from_callback(x.shape, s, lambda idx, x=x: x[idx]))
    return jax.tree_util.tree_unflatten(treedef, out)
