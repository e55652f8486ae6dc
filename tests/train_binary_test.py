"""`python -m experiments.train`: bad input (exit 2, one line, nothing written) and SIGKILL + resume."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bimix_jax import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/tiny.py:runlocal"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # One compilation cache for the module: later processes reuse the programs of earlier ones.
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    return dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR=cache)


def _cmd(workdir, *flags):
    return [sys.executable, "-m", "experiments.train", TINY, f"--workdir={workdir}", *flags]


def _run(env, workdir, *flags, timeout=240):
    return subprocess.run(_cmd(workdir, *flags), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _leaves(workdir, step):
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _metrics(workdir):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "data_wait_ms_per_step")}
            for r in atomic.read_jsonl(workdir / "metrics.jsonl")]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_sigkill_then_resume_is_bit_identical(env, tmp_path):
    flags = ["--config.run_name=r", "--config.train.steps=60", "--config.train.eval_every=10",
             "--config.train.checkpoint_every=10", "--config.train.log_every=5"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    out = _run(env, whole, *flags)
    assert out.returncode == 0, out.stderr[-3000:]

    proc = subprocess.Popen(_cmd(killed, *flags), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "10"
    sealed = first / "sha256.json"  # a checkpoint is complete once sealed with its checksums
    deadline = time.time() + 240
    while not sealed.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert first.exists() and not (killed / "checkpoints" / "60").exists()

    out = _run(env, killed, *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from step" in out.stderr
    assert (killed / "losses.csv").read_text() == (whole / "losses.csv").read_text()
    assert _metrics(killed) == _metrics(whole)
    for a, b in zip(_leaves(whole, 60), _leaves(killed, 60), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)

    # A finished run is not trained again; a different run in its workdir is refused.
    out = _run(env, killed, *flags)
    assert out.returncode == 0 and "was already complete" in out.stdout
    out = _run(env, killed, *flags, "--config.mixture=code=1")
    assert out.returncode == 2 and "holds a different run (proportions." in out.stderr.strip().splitlines()[-1]
    assert (killed / "losses.csv").read_text() == (whole / "losses.csv").read_text()
