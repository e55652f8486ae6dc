"""SHA-256 manifests of checkpoints: written after each save completes, verified before a restore.

A checkpoint folder `<step>/` is *sealed* by `sha256.json` in it: every other file's relative path,
size and SHA-256. `verify` recomputes them; a flipped bit, a truncated or deleted file, or a missing
manifest (a process killed between the save and the seal) makes the checkpoint unverified, and the
checkpointer then resumes from the latest verified one instead (`bimix_jax.train.checkpoint`).
"""

from __future__ import annotations

import hashlib
import os

from bimix_jax import atomic

MANIFEST = "sha256.json"
FORMAT = "bimix_jax.checkpoint_manifest.v1"
_CHUNK = 1 << 20


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: str) -> dict[str, dict]:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == MANIFEST:
                continue
            out[rel] = {"bytes": os.path.getsize(path), "sha256": _digest(path)}
    return out


def seal(folder: str) -> None:
    """Writes the manifest of a complete checkpoint folder (atomically)."""
    atomic.write_json(os.path.join(folder, MANIFEST), {"format": FORMAT, "files": _files(folder)})


def verify(folder: str) -> str | None:
    """None when `folder` matches its manifest; otherwise the reason it does not."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return f"it has no {MANIFEST} (the process that saved it was stopped before sealing it)"
    try:
        stored = atomic.read_json(path, what="checkpoint manifest")
        expected = stored["files"]
        if stored.get("format") != FORMAT or not isinstance(expected, dict):
            return f"its {MANIFEST} is not a manifest of this project"
    except Exception as e:  # noqa: BLE001 - any damage of the manifest itself
        return f"its {MANIFEST} is damaged ({type(e).__name__})"
    try:
        actual = _files(folder)
    except OSError as e:
        return f"a file cannot be read ({e.strerror or type(e).__name__})"
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            return f"{rel} is missing"
        if rel not in expected:
            return f"{rel} is not in its manifest"
        if actual[rel] != expected[rel]:
            return f"{rel} does not match its SHA-256 (changed or truncated)"
    return None
