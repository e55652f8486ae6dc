"""Checkpoints of a run: one orbax `CheckpointManager` under `<workdir>/checkpoints/<step>/`.

Each checkpoint holds two items:
* `state`: the train state pytree (model parameters, optimizer state, the sampler's rows-per-domain
  ledger), saved asynchronously so training goes on while it is written;
* `meta`: JSON with the step, training tokens seen and the data fingerprint.

Orbax writes a step into a temporary folder and renames it when complete, so a process killed
mid-save leaves no half checkpoint that `latest_step` would pick; temporary folders are cleaned up
on the next start. A checkpoint that exists but cannot be read is an `InputError` naming it: a run
never silently restarts from scratch. Restore order: the latest complete checkpoint in the workdir,
else a fresh start.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from bimix_jax.errors import InputError


class Checkpointer:
    """Saves and restores `(state, meta)` pairs by step."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        except (OSError, ValueError) as e:
            raise InputError(
                f"cannot open checkpoints in {self.directory} ({e}); check the folder, or delete it to start fresh"
            ) from e

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving (asynchronously); the previous save is awaited first."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `step` into the structure, shapes and shardings of `abstract_state`."""
        path = os.path.join(self.directory, str(step))
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
            state, meta = restored["state"], restored["meta"]
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files.
            msg = " ".join(str(e).split())[:300]
            raise InputError(
                f"checkpoint {path} is corrupted or unreadable ({type(e).__name__}: {msg}); delete that folder "
                "to resume from the previous checkpoint, or delete the workdir to start fresh"
            ) from e
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise InputError(f"checkpoint {path} has damaged metadata; delete that folder to resume from the previous "
                             "checkpoint, or delete the workdir to start fresh")
        return state, meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

