"""Checks of user-given values shared by binaries and library: output paths and numeric ranges.

Each check raises one-line `InputError`s naming the field and the fix, so a caller can check every
output path and setting before any work starts (nothing is written on bad input).
"""

from __future__ import annotations

import math
import os

from bimix_jax.errors import InputError


def _nearest_existing(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    return parent


def output_file(field: str, path: str | None) -> str:
    """A file the caller will write: non-empty, not a directory, in a writable (or creatable) folder."""
    if path is None or not str(path).strip():
        raise InputError(f"{field} is empty; give the path of the file to write")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{field}={path} is a directory; give a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"{field}={path} is not writable; choose another location or fix its permissions")
    parent = _nearest_existing(path)
    if not os.path.isdir(parent):
        raise InputError(f"{field}={path}: {parent} is a file, not a folder; choose another location")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{field}={path}: {parent} is not writable; choose another location")
    return path


def output_dir(field: str, path: str | None) -> str:
    """A folder the caller will create or write into: non-empty, not a file, in a writable place."""
    if path is None or not str(path).strip():
        raise InputError(f"{field} is empty; give a folder, e.g. {field}=workdirs/run1 (the current directory is "
                         "never used implicitly)")
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{field}={path} is a file, not a folder; choose another location")
    target = path if os.path.isdir(path) else _nearest_existing(path)
    if not os.path.isdir(target):
        raise InputError(f"{field}={path}: {target} is a file, not a folder; choose another location")
    if not os.access(target, os.W_OK | os.X_OK):
        raise InputError(f"{field}={path}: {target} is not writable; choose another location")
    return path


def input_file(field: str, path: str | None, what: str = "file") -> str:
    """A file the caller will read: exists, is a file, is readable."""
    if path is None or not str(path).strip():
        raise InputError(f"{field} is empty; give the path of the {what}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{field}={path} is a directory, not a {what}; give the file inside it")
    if not os.path.exists(path):
        raise InputError(f"{field}={path} does not exist; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{field}={path} is not readable (permission denied); fix its permissions")
    return path


def in_range(field: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
             high_open: bool = False, integer: bool = False, hint: str = "") -> None:
    """`value` is a finite number (an integer if `integer`) within the interval; else a one-line InputError."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    interval = f"{lo or '(-inf'}, {hi or 'inf)'}"
    what = "an integer" if integer else "a finite number"
    fix = f"; {hint}" if hint else "; fix the config"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise InputError(f"{field}={value!r} must be {what} in {interval}{fix}")
    x = float(value)
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise InputError(f"{field}={value!r} must be {what} in {interval}{fix}")
