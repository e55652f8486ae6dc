"""The run_pipeline binary: one-line errors with exit code 2 for bad input; a full run and its resume (slow)."""

import os
import subprocess
import sys

import pytest

from bimix_jax import atomic
from bimix_jax.pipeline.spec import write_workdir_config
from configs import pipeline_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, workdir, *flags, config="configs/pipeline_tiny.py:runlocal"):
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR=str(tmp_path / "jax_cache"))
    cmd = [sys.executable, "-m", "experiments.run_pipeline", f"--config={config}", f"--workdir={workdir}", *flags]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def _one_line_error(out, expected: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last


def test_unwritable_workdir_and_another_configs_runs_are_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(_run(tmp_path, blocker / "w"), f"{blocker} is a file, not a folder")
    # A workdir started with another train.steps: refused, naming the field and both ways forward.
    other = pipeline_tiny.get_config("runlocal")
    other.train.steps = 30
    workdir = tmp_path / "w"
    write_workdir_config(str(workdir), other.to_dict(), [])
    _one_line_error(_run(tmp_path, workdir), "holds the runs of another config (train.steps: 30 there, 24 now); "
                    "rerun with the same config to continue it, or use another --workdir (or delete this one) to "
                    "start fresh")
    assert os.listdir(workdir) == ["pipeline.json"]


@pytest.mark.slow  # the whole runlocal pipeline in a fresh process (about 15 s), then its rerun
def test_binary_runs_and_reruns_without_work(tmp_path):
    workdir = tmp_path / "w"
    out = _run(tmp_path, workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = atomic.read_json(workdir / "report.json")
    lines = out.stdout.splitlines()
    assert lines[0].startswith("recommended mixture: ") and "(sum 1.000000)" in lines[0]
    assert sum(1 for line in lines if line.startswith("  ") and line.strip()[0].isdigit()) == len(rep["comparison"])
    assert rep["verdict"] in out.stdout
    stages = {f: os.path.getmtime(workdir / "stages" / f) for f in os.listdir(workdir / "stages")}
    again = _run(tmp_path, workdir)
    assert again.returncode == 0 and again.stdout == out.stdout, again.stderr[-3000:]
    assert {f: os.path.getmtime(workdir / "stages" / f) for f in os.listdir(workdir / "stages")} == stages
