"""Checkpoints of a run: one orbax `CheckpointManager` under `<workdir>/checkpoints/<step>/`.

Each checkpoint holds two items:
* `state`: the train state pytree (model parameters, optimizer state, the sampler's rows-per-domain
  ledger), saved asynchronously so training goes on while it is written;
* `meta`: JSON with the step, training tokens seen and the data fingerprint.

Orbax writes a step into a temporary folder and renames it when complete, so a process killed
mid-save leaves no half checkpoint that `latest_step` would pick; temporary folders are cleaned up
on the next start. A checkpoint that exists but cannot be read is an `InputError` naming it: a run
never silently restarts from scratch.

Integrity: once a save has completed, its folder is sealed with a SHA-256 manifest
(`bimix_jax.train.manifest`; the training loop polls every step, so within a step of the save). Opening the checkpoints verifies every step folder; one that does not
match its manifest (a flipped bit, a truncated or deleted file) or was never sealed is moved to
`<workdir>/checkpoints_unverified/` with a warning naming it and the reason, and the run resumes from the
latest verified checkpoint (training is deterministic, so the result is the same, only later).
`restore` verifies the step again just before reading it. Restore order: the latest verified
checkpoint in the workdir, else a fresh start.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from bimix_jax.errors import InputError
from bimix_jax.train import hosts, manifest

UNVERIFIED_DIR = "checkpoints_unverified"


class Checkpointer:
    """Saves and restores `(state, meta)` pairs by step."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._pending: list[int] = []  # saved steps not sealed yet
        if jax.process_index() == 0:
            self._set_aside_unverified()
        hosts.barrier(f"checkpoints verified {self.directory}")  # every process then sees the same latest step
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

    def _set_aside_unverified(self) -> None:
        """Moves every step folder that fails its manifest out of the manager's sight, with a warning."""
        if not os.path.isdir(self.directory):
            return
        steps = sorted(int(n) for n in os.listdir(self.directory)
                       if n.isdigit() and os.path.isdir(os.path.join(self.directory, n)))
        bad = {s: r for s in steps if (r := manifest.verify(os.path.join(self.directory, str(s)))) is not None}
        if not bad:
            return
        good = [s for s in steps if s not in bad]
        aside = os.path.join(os.path.dirname(self.directory), UNVERIFIED_DIR)
        for step, reason in bad.items():
            dest, n = os.path.join(aside, str(step)), 1
            while os.path.exists(dest):
                dest, n = os.path.join(aside, f"{step}.{n}"), n + 1
            try:
                os.makedirs(aside, exist_ok=True)
                shutil.move(os.path.join(self.directory, str(step)), dest)
            except OSError as e:
                raise InputError(
                    f"checkpoint {self.directory}/{step} cannot be trusted ({reason}) and cannot be moved aside "
                    f"({e.strerror}); delete that folder to resume from the previous checkpoint") from e
            logging.warning("checkpoint %s/%d cannot be trusted: %s; moved it to %s and resuming from %s",
                            self.directory, step, reason, dest,
                            f"step {good[-1]}" if good else "the start (no verified checkpoint is left)")

    def _seal_pending(self) -> None:
        for step in self._pending:
            folder = os.path.join(self.directory, str(step))
            if os.path.isdir(folder) and jax.process_index() == 0:
                manifest.seal(folder)
        self._pending = []

    def _finish(self) -> None:
        """Waits for the running save, then seals what it wrote; save errors become one line."""
        try:
            self._manager.wait_until_finished()
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types (disk full, permissions).
            steps = ", ".join(str(s) for s in self._pending) or "?"
            raise InputError(
                f"cannot save checkpoint {self.directory}/{steps} ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}); free disk space or fix permissions, then rerun the same "
                "command to resume from the last complete checkpoint") from e
        self._seal_pending()

    def poll(self) -> None:
        """Seals a finished asynchronous save without waiting (call it often, e.g. every step)."""
        if self._pending and not self._manager.is_saving_in_progress():
            self._finish()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts saving (asynchronously); the previous save is awaited (and sealed) first."""
        self._finish()
        self._pending.append(step)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - see `_finish`
            raise InputError(
                f"cannot save checkpoint {self.directory}/{step} ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}); free disk space or fix permissions, then rerun the same "
                "command to resume from the last complete checkpoint") from e

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores `step` into the structure, shapes and shardings of `abstract_state`."""
        path = os.path.join(self.directory, str(step))
        reason = manifest.verify(path)
        if reason is not None:
            raise InputError(f"checkpoint {path} is corrupted or unreadable ({reason}); delete that folder to "
                             "resume from the previous checkpoint, or delete the workdir to start fresh")
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
        self._finish()

    def close(self) -> None:
        """Finishes (and seals) a running save, then releases the manager."""
        try:
            self._finish()
        finally:
            self._manager.close()

