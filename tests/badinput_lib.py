"""Runs many bad-input cases of the binaries in ONE process (their real entry points, `cli.run(main)`).

    python -m tests.badinput_lib CASES.json RESULTS.json

CASES.json: a list of {"id", "binary", "argv", "watch"} ("watch": folders in which nothing may change). For each case the binary's module is imported (its
absl flags defined), the flags are reset, `cli.run(main)` runs with that argv, and the exit code and
everything written to stderr (file-descriptor level, so logging and tracebacks are caught too) are
recorded in RESULTS.json. Between binaries, the flags the previous one defined are removed, so six
binaries that share flag names run in one interpreter (one JAX import instead of one per case).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile


def _run_case(module, argv: list[str]) -> tuple[int, str]:
    from absl import flags

    from experiments import cli

    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # re-defined when --config is parsed
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    sys.argv = [module.__name__, *argv]
    with tempfile.TemporaryFile(mode="w+b") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        code = 0
        try:
            cli.run(module.main)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - an escaped exception is a failure of the case: record it
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        return code, err.read().decode("utf-8", "replace")


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
        out.setdefault(os.path.relpath(base, root) + os.sep, (0, 0))
    return out


def run_cases(cases: list[dict]) -> dict[str, dict]:
    from absl import flags

    results: dict[str, dict] = {}
    by_binary: dict[str, list[dict]] = {}
    for case in cases:
        by_binary.setdefault(case["binary"], []).append(case)
    for binary, group in by_binary.items():
        before = set(flags.FLAGS)
        module = importlib.import_module(f"experiments.{binary}")
        for case in group:
            watch = case.get("watch") or []
            before_files = {w: _snapshot(w) for w in watch}
            code, stderr = _run_case(module, case["argv"])
            written = sorted(os.path.join(w, p) for w in watch for p, v in _snapshot(w).items()
                             if before_files[w].get(p) != v)
            results[case["id"]] = {"code": code, "stderr": stderr, "written": written}
        defined = {f.name for f in flags.FLAGS.flags_by_module_dict().get(module.__name__, [])}
        for name in (set(flags.FLAGS) - before) & defined | {n for n in flags.FLAGS if n.startswith("config.")}:
            delattr(flags.FLAGS, name)
        sys.modules.pop(module.__name__, None)
    return results


if __name__ == "__main__":
    cases_path, results_path = sys.argv[1:3]
    with open(cases_path) as f:
        cases = json.load(f)
    results = run_cases(cases)
    with open(results_path, "w") as f:
        json.dump(results, f)
