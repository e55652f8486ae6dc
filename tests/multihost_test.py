"""Two real processes on localhost with jax.distributed (CPU, 2 devices each) train from a token store, are
killed, resume, and match one process on 4 devices."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from bimix_jax import loss_table
from tests.store_testlib import make_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 200, 40
# Both layouts run the same global program on 4 devices; only the cross-process reductions differ (gloo vs in
# process), so losses agree to float32 summation order.
RTOL = 1e-5


def _args(store_dir: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "experiments.train", "--config=configs/tiny.py:runlocal",
            "--config.data.source=store", f"--config.data.path={store_dir}", f"--workdir={workdir}",
            "--config.train.seq_len=16", "--config.train.eval_tokens=64", "--config.mixture=code=0.5,math=0.2,prose=0.3",
            f"--config.train.steps={STEPS}", f"--config.train.eval_every={EVERY}",
            f"--config.train.checkpoint_every={EVERY}", "--config.train.log_every=20"]


def _env(devices: int, **extra) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "BIMIX_JAX_CACHE_DIR": "", "PYTHONPATH": REPO,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(store_dir: str, workdir: str, log_dir: str, tag: str) -> list[subprocess.Popen]:
    port = _port()
    procs = []
    for pid in range(2):
        env = _env(2, BIMIX_JAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   BIMIX_JAX_NUM_PROCESSES="2", BIMIX_JAX_PROCESS_ID=str(pid))
        log = open(os.path.join(log_dir, f"{tag}{pid}.log"), "w")
        procs.append(subprocess.Popen(_args(store_dir, workdir), cwd=REPO, env=env, stdout=log, stderr=log))
    return procs


def _sealed(workdir: str) -> list[int]:
    ck = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ck):
        return []
    return sorted(int(n) for n in os.listdir(ck) if n.isdigit() and os.path.exists(os.path.join(ck, n, "sha256.json")))


@pytest.mark.slow  # three runs in fresh processes, two of them distributed (about a minute on 2 cores)
def test_two_processes_kill_resume_and_match_one_process(tmp_path):
    store_dir = make_store(str(tmp_path))
    one = subprocess.run(_args(store_dir, str(tmp_path / "one")), cwd=REPO, env=_env(4), capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    work = str(tmp_path / "two")
    procs = _start_pair(store_dir, work, str(tmp_path), "first")
    deadline = time.time() + 300
    while not _sealed(work) and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:  # Killed mid-run, right after the first checkpoint.
        p.send_signal(signal.SIGKILL)
        p.wait()
    killed_at = _sealed(work)
    assert killed_at and killed_at[-1] < STEPS, (killed_at, open(tmp_path / "first0.log").read()[-3000:])

    procs = _start_pair(store_dir, work, str(tmp_path), "again")
    for p in procs:
        assert p.wait(timeout=600) == 0, open(tmp_path / f"again{procs.index(p)}.log").read()[-3000:]
    assert "resuming from step" in open(tmp_path / "again0.log").read()

    ref = loss_table.read_csv(tmp_path / "one" / "losses.csv")
    got = loss_table.read_csv(os.path.join(work, "losses.csv"))
    assert list(got.step) == list(ref.step) and list(got.eval_domain) == list(ref.eval_domain)
    np.testing.assert_allclose(got.loss, ref.loss, rtol=RTOL)
    # Only process 0 wrote: one config, one table, one metrics file (no second writer's duplicate rows).
    assert len(got.step) == len(set(zip(got.step, got.eval_domain)))
