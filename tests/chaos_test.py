"""SIGKILL at random moments, then rerun: byte-identical tables and the same report numbers (slow)."""

import json
import os
import sys

import pytest

from tests.chaos_lib import chaos_trials

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = 10


def _report_numbers(workdir):
    with open(os.path.join(workdir, "report.json")) as f:
        rep = json.load(f)
    return {k: v for k, v in rep.items() if k not in ("timing", "provenance")}


COMPARE_METHODS = ("uniform", "natural", "se", "bimix", "doremi", "aioli")


# One line per resumable binary: (command, files to reproduce, numbers to compare).
BINARIES = {
    "run_pipeline": ([sys.executable, "-m", "experiments.run_pipeline", "--config=configs/pipeline_tiny.py:runlocal",
                      "--config.pipeline.bootstrap=4"],
                     ["losses.csv", "losses_candidates.csv", "fit.json", "mixture.json"], _report_numbers),
    # Static, law-based, two-stage (DoReMi: reference, proxy, final) and online (Aioli rounds and probes) runs.
    "compare_methods": ([sys.executable, "-m", "experiments.compare_methods",
                         "--config=configs/compare_tiny.py:runlocal", "--config.compare.seeds=0",
                         f"--config.compare.methods={','.join(COMPARE_METHODS)}"],
                        [f"runs/{m}/seed0/losses.csv" for m in COMPARE_METHODS] + ["runs/aioli/seed0/trajectory.jsonl"],
                        _report_numbers),
    "train": ([sys.executable, "-m", "experiments.train", "--config=configs/tiny.py:runlocal",
               "--config.train.steps=60", "--config.run_name=r"], ["losses.csv"], None),
}


@pytest.mark.slow
@pytest.mark.parametrize("binary", list(BINARIES))
def test_sigkill_at_random_moments_then_rerun(binary, tmp_path):
    command, files, numbers = BINARIES[binary]
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR=str(tmp_path / "cache"))
    records = chaos_trials(command, workdir_flag="--workdir", files=files, trials=TRIALS, root=str(tmp_path),
                           env=env, cwd=REPO, numbers=numbers)
    print(json.dumps({"binary": binary, "trials": records}))
    assert sum(r["killed"] for r in records) >= TRIALS // 2  # most kills hit a running process
