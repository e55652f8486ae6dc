"""What every binary in `experiments/` shares: flag parsing, one-line errors, process-wide settings.

`run(main)` replaces `absl.app.run(main)`:
* a bad flag, a config override that names no field, a bad override value, or a config file that
  cannot be loaded prints one line `error: ...` to stderr and exits with code 2, no traceback;
* an `InputError` raised by the library does the same;
* the persistent JAX compilation cache is enabled before `main` runs (so a second process reuses
  compiled programs), unless `BIMIX_JAX_CACHE_DIR` is set to an empty string;
* `jax.distributed.initialize()` is called when `BIMIX_JAX_DISTRIBUTED=1` (multi-host TPU/GPU pods:
  JAX's multi-controller runtime; every host runs the same command; hosts launched by hand set
  `JAX_COORDINATOR_ADDRESS`, `BIMIX_JAX_NUM_PROCESSES` and `BIMIX_JAX_PROCESS_ID`);
* after `main` returns, the heap is frozen (`gc.freeze`), which spares the interpreter's final garbage
  collection at exit (~0.2 s of a short binary's wall time).

The library never reads flags: binaries turn flags and configs into plain arguments.
"""

from __future__ import annotations

import gc
import logging as std_logging
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from bimix_jax.errors import InputError

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "bimix_jax", "jax_cache")


def fail(message: str, code: int = 2) -> None:
    """Prints `error: message` as one line to stderr and exits."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(code)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, (KeyError, AttributeError)):
        text = text.strip("\"'")
    lines = [line for line in text.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in text and len(lines) > 1:
        # A config file's get_config raised: keep the flag and the final exception line (its message).
        return lines[0].rstrip(": ") + ": " + lines[-1].strip()
    return lines[0] if lines else type(e).__name__


def _config_file_arg(argv: Sequence[str]) -> str:
    for a in argv[1:]:
        if a.startswith("--config="):
            return a.split("=", 1)[1].split(":", 1)[0]
    return "the config file"


_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _parse_flags(argv: Sequence[str]) -> list[str]:
    try:
        rest = flags.FLAGS(argv)
    except SystemExit:
        if any(a in _HELP for a in argv[1:]):
            sys.exit(0)  # absl exits with 1 after printing the help asked for
        raise
    except flags.Error as e:
        fail(_first_line(e) + "; see --helpshort")
    except (AttributeError, KeyError) as e:
        # ml_collections raises these for an override naming a field the (locked) config lacks.
        flag = next((a for a in argv[1:] if a.startswith("--") and "." in a.split("=")[0]), "")
        fail(f"{flag.split('=')[0] or 'a config override'} names no config field ({_first_line(e)}); "
             "check the spelling against the config file")
    except Exception as e:  # noqa: BLE001 - a config file that raises while loading.
        fail(f"cannot load {_config_file_arg(argv)}: {type(e).__name__}: {_first_line(e)}; fix the config file "
             "or its argument")
    # Config files are loaded lazily: touch each config flag so a missing/broken file fails here.
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if type(flag).__name__ == "_ConfigFlag" and flag.present:
            value = flag.value
            if type(value).__name__ == "_ErrorConfig":
                path = _config_file_arg(argv)
                if not os.path.isfile(path):
                    fail(f"--{name}: config file {path} does not exist; check the path")
                fail(f"--{name}: cannot load {path}; check its syntax")
    return rest


def quiet_orbax_logs() -> None:
    """Drops orbax's per-save INFO lines from the progress log of training binaries (warnings stay)."""

    def keep(record: std_logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        if record.exc_info:  # a failed background save: the library reports it in one line; drop the traceback
            record.exc_info, record.exc_text = None, None
        return record.levelno > std_logging.INFO

    logging.get_absl_logger().addFilter(keep)


def _quiet_closed_loop_callbacks() -> None:
    """After a failed background checkpoint save, tensorstore's write callbacks keep calling into orbax's
    closed asyncio loop and print a 'RuntimeError: Event loop is closed' traceback each (through
    `sys.excepthook`); the save failure itself is reported in one line, so these are dropped."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        previous(kind, value, tb)

    sys.excepthook = hook


def setup_jax() -> None:
    """Process-wide JAX settings owned by binaries (never by the library)."""
    import jax

    cache_dir = os.environ.get("BIMIX_JAX_CACHE_DIR", DEFAULT_CACHE_DIR)
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Cache even quick compiles: the fitters' programs compile in about a second.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if os.environ.get("BIMIX_JAX_DISTRIBUTED") == "1":
        # On TPU pods, SLURM, Kubernetes or Open MPI, JAX finds the coordinator and the process ids itself; hosts
        # launched by hand give them: JAX_COORDINATOR_ADDRESS=host:port, BIMIX_JAX_NUM_PROCESSES, BIMIX_JAX_PROCESS_ID.
        n, pid = os.environ.get("BIMIX_JAX_NUM_PROCESSES"), os.environ.get("BIMIX_JAX_PROCESS_ID")
        jax.distributed.initialize(num_processes=int(n) if n else None, process_id=int(pid) if pid else None)
        logging.info("JAX process %d/%d, %d local devices", jax.process_index(), jax.process_count(),
                     jax.local_device_count())
    # Devices are not touched here, so input errors found before any computation print one line only.


def run(main: Callable[[Sequence[str]], None]) -> None:
    """Runs an absl `main` with one-line errors (exit code 2) for bad input."""

    def _main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            fail(f"unexpected positional arguments {' '.join(argv[1:])}; every option is a --flag")
        try:
            setup_jax()
            _quiet_closed_loop_callbacks()
            main(argv)
        except InputError as e:
            fail(str(e))
        # The work is done and written. Freezing the heap spares the interpreter's final garbage
        # collection over JAX's many objects (~0.2 s per process); atexit handlers still run.
        gc.freeze()

    app.run(_main, flags_parser=_parse_flags)


def renamed(old_flag, new_name: str):
    """The value of a flag kept under its old name, with a warning naming the new one (None when unset)."""
    if not old_flag.present:
        return None
    logging.warning("--%s is the old name of --%s; it is read as --%s (write --%s)", old_flag.name, new_name,
                    new_name, new_name)
    return old_flag.value


def number_or(value: str, name: str, word: str | None = None) -> float | str:
    """Parses a flag that takes a number or (when `word` is given) that word; InputError naming the flag otherwise."""
    from bimix_jax.errors import InputError

    if word is not None and value.strip() == word:
        return word
    try:
        return float(value)
    except ValueError:
        raise InputError(f"--{name}={value!r} must be a number" + (f" or {word!r}" if word else "")) from None
