"""Chaos harness: SIGKILL a command at random moments, rerun it, compare its outputs with an uninterrupted run.

    results = chaos_trials(command, workdir_flag="--workdir", files=["losses.csv", ...], trials=10,
                           root=tmp_path, env=env, cwd=REPO, numbers=report_numbers)

Adding another resumable binary is one call with its command and the files it must reproduce.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Sequence


def _run(cmd: Sequence[str], env: dict, cwd: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def chaos_trials(command: Sequence[str], *, workdir_flag: str, files: Sequence[str], trials: int, root: str,
                 env: dict, cwd: str, seed: int = 0, numbers: Callable[[str], object] | None = None,
                 timeout: float = 1200) -> list[dict]:
    """Runs `command` twice uninterrupted, then `trials` times killed (SIGKILL) at a random moment and rerun.

    Each trial's `files` (relative to its workdir) must be byte-identical to the uninterrupted run's, and
    `numbers(workdir)` (e.g. a report's numbers) equal. Returns one record per trial (kill time, whether
    the process was still running when killed, the files that differ); raises AssertionError on failure.
    """
    rng = random.Random(seed)
    ref = os.path.join(root, "reference")
    out = _run([*command, f"{workdir_flag}={ref}"], env, cwd, timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = {f: open(os.path.join(ref, f), "rb").read() for f in files}
    expected_numbers = numbers(ref) if numbers else None
    # A second uninterrupted run, with warm compilation caches like the trials', sets the kill window.
    warm = os.path.join(root, "warm")
    start = time.perf_counter()
    out = _run([*command, f"{workdir_flag}={warm}"], env, cwd, timeout)
    duration = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(open(os.path.join(warm, f), "rb").read() == expected[f] for f in files)
    records = []
    for k in range(trials):
        wd = os.path.join(root, f"trial{k}")
        at = rng.uniform(0.05, 0.95) * duration
        proc = subprocess.Popen([*command, f"{workdir_flag}={wd}"], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(at)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = _run([*command, f"{workdir_flag}={wd}"], env, cwd, timeout)
        assert out.returncode == 0, f"trial {k} (killed at {at:.1f} s): {out.stderr[-3000:]}"
        differ = [f for f in files if open(os.path.join(wd, f), "rb").read() != expected[f]]
        same_numbers = numbers(wd) == expected_numbers if numbers else True
        records.append({"trial": k, "kill_at_s": round(at, 2), "killed": killed, "differ": differ,
                        "same_numbers": same_numbers})
        assert not differ and same_numbers, records[-1]
    return records
