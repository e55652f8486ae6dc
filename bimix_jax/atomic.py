"""Crash-safe file writes: a reader never sees a half-written file, a killed writer loses nothing.

* `write_bytes`/`write_text`/`write_json` write a sibling temporary file, fsync it, then
  `os.replace` it over the target and fsync the directory. The old content stays intact until the
  new one is complete, so a SIGKILL or a full disk at any moment leaves either the old or the new file.
* `append_jsonl` appends whole lines with one `write` on an `O_APPEND` descriptor, then fsyncs.
  A torn last line (power loss mid-write) is ignored by `read_jsonl` and removed by `truncate_jsonl`.

Every `OSError` (disk full, read-only or missing directory, permission) becomes an `InputError` that
names the path, so binaries report it in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from bimix_jax.errors import InputError


@contextlib.contextmanager
def _os_errors(path: str | os.PathLike, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(
            f"cannot {action} {os.fspath(path)}: {reason}; check that the directory exists, is writable "
            "and has free space, or choose another location"
        ) from e


def _fsync_dir(dirname: str) -> None:
    try:
        fd = os.open(dirname or ".", os.O_RDONLY)
    except OSError:
        return  # Some filesystems do not allow opening directories; the rename is still atomic.
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replaces `path` with `data` (creates the parent directory if needed)."""
    path = os.fspath(path)
    dirname = os.path.dirname(os.path.abspath(path))
    with _os_errors(path, "write"):
        os.makedirs(dirname, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=dirname)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(dirname)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Converts numpy/jax scalars and arrays (recursively) into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return to_jsonable(arr.item()) if arr.ndim == 0 else to_jsonable(arr.tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # JSON has no NaN/Infinity; null marks a missing or non-finite value.
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes `obj` as indented JSON (numpy values are converted)."""
    write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Reads a JSON file; a missing or corrupted file is an `InputError` naming it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise InputError(f"{what} {path} does not exist; check the path") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{what} {path} is unreadable or corrupted ({e}); regenerate it") from e


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Appends records as JSON lines in a single write, then fsyncs."""
    payload = "".join(json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in records).encode()
    if not payload:
        return
    path = os.fspath(path)
    with _os_errors(path, "append to"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, payload)
            if written != len(payload):  # Partial write (disk full): undo it.
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(28, "short write (disk full?)")
            os.fsync(fd)
        finally:
            os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads JSON lines; a torn (unterminated) last line is ignored. Missing file -> []."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    complete = lines[:-1]  # Whatever follows the last newline is a torn write.
    out = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {i + 1} is corrupted ({e}); delete the line or the file") from e
    return out


def truncate_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool]) -> None:
    """Atomically rewrites a JSON-lines file keeping only records for which `keep` is true."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return
    records = [r for r in read_jsonl(path) if keep(r)]
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


@contextlib.contextmanager
def removed_on_input_error(folder: str | os.PathLike, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """On an `InputError` inside the block, removes what the block created of `folder`: the folder and any
    parents that did not exist before (unless `keep()` says a run already owns it), then re-raises."""
    path = os.path.abspath(os.fspath(folder))
    top = None  # the outermost folder that does not exist yet
    while not os.path.exists(path):
        top, path = path, os.path.dirname(path)
    try:
        yield
    except InputError:
        if top is not None and os.path.isdir(top) and not keep():
            shutil.rmtree(top, ignore_errors=True)
        raise
