"""What a result was made from: code version, file hashes, and stage outputs keyed by their inputs.

* `code_version()`: the package version, the git commit (and whether the working tree differs from it)
  when the package sits in a git checkout, a SHA-256 over the package's source files, and the versions of
  the libraries the numbers depend on.
* `StageStore`: each stage of a multi-stage job stores its output atomically as
  `<workdir>/stages/<name>.json` = `{stage, fingerprint, seconds, code, output}`, where `fingerprint`
  hashes everything the output was computed from (settings and input file contents). A rerun loads an
  output whose fingerprint matches and recomputes one whose inputs changed, so a killed job redoes only
  the stage it was in, and changing a late setting redoes only the stages after it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import logging

from bimix_jax import atomic
from bimix_jax.errors import InputError

STAGES_DIR = "stages"
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jaxopt", "numpy", "sentencepiece")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str | None:
    """SHA-256 of a file's content (None when the file does not exist)."""
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (numpy values allowed); equal parts give equal fingerprints."""
    text = json.dumps(atomic.to_jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return sha256_bytes(text.encode())[:20]


def source_hash(package_dir: str = _PACKAGE_DIR) -> str:
    """SHA-256 over the relative paths and contents of every `.py` file of the package, in sorted order."""
    h = hashlib.sha256()
    files = []
    for dirpath, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".py")]
    for path in sorted(files):
        h.update(os.path.relpath(path, package_dir).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read() + b"\0")
    return h.hexdigest()


def _git(root: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """Package version, git commit (None outside a checkout), source hash, library and Python versions."""
    try:
        version = importlib.metadata.version("bimix-jax")
    except importlib.metadata.PackageNotFoundError:
        version = None
    root = os.path.dirname(_PACKAGE_DIR)
    commit = _git(root, "rev-parse", "HEAD") if os.path.exists(os.path.join(root, ".git")) else None
    dirty = None
    if commit:
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    libraries = {}
    for name in _LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    return {"package": "bimix-jax", "version": version, "git_commit": commit, "git_dirty": dirty,
            "source_sha256": source_hash(), "python": sys.version.split()[0], "platform": platform.platform(),
            "libraries": libraries}


class StageStore:
    """Stage outputs of one workdir under `stages/`, each with the fingerprint of its inputs."""

    def __init__(self, workdir: str, *, writer: bool = True):
        self.directory = os.path.join(workdir, STAGES_DIR)
        self.writer = writer  # multi-host: only process 0 stores stages; the others compute the same outputs

    def path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.json")

    def load(self, name: str, fp: str) -> dict | None:
        """The stored output of stage `name` if it was computed from inputs with fingerprint `fp`."""
        path = self.path(name)
        if not os.path.exists(path):
            return None
        try:
            record = atomic.read_json(path, what=f"stage file of {name}")
        except InputError as e:  # Stage files are derived data: recompute rather than fail.
            logging.warning("%s; recomputing stage %s", e, name)
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != fp or "output" not in record:
            logging.info("stage %s: its inputs changed since it was stored; recomputing", name)
            return None
        return record

    def save(self, name: str, fp: str, output: Any, seconds: float) -> dict:
        record = {"stage": name, "fingerprint": fp, "seconds": round(float(seconds), 3),
                  "code": code_version()["source_sha256"], "output": atomic.to_jsonable(output)}
        if self.writer:
            atomic.write_json(self.path(name), record)
        return record

    def run(self, name: str, fp: str, compute: Callable[[], Any]) -> tuple[Any, dict]:
        """The output of stage `name`: loaded when stored with fingerprint `fp`, else computed and stored.

        Returns (output, record); the record holds the fingerprint, compute seconds and code hash.
        """
        record = self.load(name, fp)
        if record is not None:
            logging.info("stage %s: done before (fingerprint %s); loaded", name, fp)
            return record["output"], record
        start = time.perf_counter()
        output = compute()
        record = self.save(name, fp, output, time.perf_counter() - start)
        logging.info("stage %s: computed in %.1f s", name, record["seconds"])
        return record["output"], record
