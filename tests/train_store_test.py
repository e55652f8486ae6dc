"""Training from a token store: the batches the step saw, resume after a kill, online methods, the binaries."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.data.input import block_counts
from bimix_jax.data.source import open_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.online import aioli
from bimix_jax.train import inputs
from bimix_jax.train.loop import train_run
from bimix_jax.train.state import ModelSpec, OptimSpec, RunSpec, TrainSpec
from tests.store_testlib import make_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = RunSpec(ModelSpec(D=32, H=4, L=2, F=64), OptimSpec(lr=3e-3, warmup_steps=2),
               TrainSpec(steps=12, batch_size=8, seq_len=16, eval_every=4, eval_tokens=64, eval_batch_size=8,
                         checkpoint_every=4, log_every=2))
R = np.array([0.5, 0.25, 0.25])


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return make_store(str(tmp_path_factory.mktemp("train_store")))


def _data(store_dir, domains=""):
    return open_data(DataSpec(source="store", path=store_dir, domains=domains), "/nonexistent-workdir")


class _Recording(inputs.StoreInput):
    """A store input that keeps the domain of every row of every batch it hands the step."""

    def __init__(self, *args, stop_after: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.seen, self.stop_after = [], stop_after

    def host_batches(self, start, steps, stages, seed):
        for b in super().host_batches(start, steps, stages, seed):
            if self.stop_after is not None and len(self.seen) == self.stop_after:
                raise KeyboardInterrupt  # a kill between two steps
            self.seen.append(b["domain"].copy())
            yield b


def test_every_batch_holds_the_exact_block_counts(store_dir, tmp_path):
    data = _data(store_dir, "math,code,prose")
    assert data.domains == ("math", "code", "prose")  # data.domains chooses and orders
    inp = _Recording(data, SPEC.train)
    res = train_run(SPEC, inp, R, str(tmp_path / "run"), run_name="r")
    want = block_counts(R, SPEC.train.batch_size)
    assert len(inp.seen) == SPEC.train.steps
    for domain_B in inp.seen:
        np.testing.assert_array_equal(np.bincount(domain_B, minlength=3), want)
    # The step counted exactly these rows (its ledger is computed inside jit from the batch it was given).
    rows = np.asarray(jax.device_get(res.state.rows_D))
    np.testing.assert_array_equal(rows, want * SPEC.train.steps)
    # Usage: windows drawn per domain, epochs and repetitions, in the result and in metrics.jsonl.
    S1 = SPEC.train.seq_len + 1
    for d, n in zip(data.domains, rows):
        u = res.usage[d]
        assert u["windows_drawn"] == n and u["windows_per_epoch"] == data.token_counts()[d] // S1
        assert u["epochs"] == pytest.approx(n / u["windows_per_epoch"])
    last = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert last["epochs_math"] == pytest.approx(res.usage["math"]["epochs"])
    assert last["data_wait_ms_per_step"] >= 0
    table = loss_table.read_csv(tmp_path / "run" / "losses.csv")
    assert set(table.eval_domain) == set(data.domains) and sorted(set(table.step)) == [4, 8, 12]


def test_a_killed_run_resumes_to_identical_losses(store_dir, tmp_path):
    data = _data(store_dir)
    full = train_run(SPEC, inputs.StoreInput(data, SPEC.train), R, str(tmp_path / "full"), run_name="r")
    killed = _Recording(data, SPEC.train, stop_after=10)  # after the checkpoint at step 8
    with pytest.raises(KeyboardInterrupt):
        train_run(SPEC, killed, R, str(tmp_path / "killed"), run_name="r")
    resumed = train_run(SPEC, _Recording(data, SPEC.train), R, str(tmp_path / "killed"), run_name="r")
    assert resumed.resumed_from == 8
    assert open(tmp_path / "full" / "losses.csv").read() == open(tmp_path / "killed" / "losses.csv").read()
    for a, b in zip(jax.tree_util.tree_leaves(full.state.params), jax.tree_util.tree_leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_online_method_from_a_store_resumes_identically(store_dir, tmp_path):
    """Aioli's probes change the mixture every few steps; the batches follow the schedule, and a killed run
    resumes from the stages its checkpoint holds."""
    data = _data(store_dir)
    cfg = aioli.AioliConfig(round_steps=6, sweeps=1, probe_steps=1, one_hot_factor=0.75)
    spec = RunSpec(SPEC.model, SPEC.optim, SPEC.train)
    kw = dict(run_name="a", method=aioli.Aioli(cfg), feedback_tokens=32)
    full = train_run(spec, _Recording(data, spec.train, feedback_tokens=32), None, str(tmp_path / "full"), **kw)
    killed = _Recording(data, spec.train, feedback_tokens=32, stop_after=9)
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, killed, None, str(tmp_path / "killed"), **kw)
    train_run(spec, _Recording(data, spec.train, feedback_tokens=32), None, str(tmp_path / "killed"), **kw)
    for f in ("losses.csv", "trajectory.jsonl"):
        assert open(tmp_path / "full" / f).read() == open(tmp_path / "killed" / f).read()
    probes = [r for r in map(json.loads, open(tmp_path / "full" / "trajectory.jsonl")) if r["kind"] == "probe"]
    assert probes and all(max(r["requested"]) == pytest.approx(0.75) for r in probes)
    assert full.usage is not None and sum(u["windows_drawn"] for u in full.usage.values()) == 12 * 8


def test_binaries_train_from_a_store(store_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR="")
    common = ["--config=configs/tiny.py:runlocal", "--config.data.source=store", f"--config.data.path={store_dir}",
              "--config.train.seq_len=16", "--config.train.eval_tokens=64"]
    w = str(tmp_path / "t")
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *common, f"--workdir={w}",
                           "--config.mixture=code=0.5,prose=0.5"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = loss_table.read_csv(os.path.join(w, "losses.csv"))
    assert table.mixtures()[table.runs[0]].tolist() == [0.5, 0.0, 0.5]  # code, math, prose
    m = str(tmp_path / "m")
    proc = subprocess.run([sys.executable, "-m", "experiments.train_many", *common, f"--workdir={m}",
                           "--mixtures=uniform", "--mixtures=natural"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(os.path.exists(os.path.join(m, r, "losses.csv")) for r in ("mix0", "mix1"))
    e = str(tmp_path / "e")
    proc = subprocess.run([sys.executable, "-m", "experiments.entropy_mixture", *common[:3], f"--workdir={e}",
                           "--proxy=vne", "--vne_max_docs=50"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.load(open(os.path.join(e, "entropy_mixture.json")))
    assert rep["domains"] == ["code", "math", "prose"] and not os.path.exists(os.path.join(e, "data"))
    store_train = _data(store_dir).token_counts("train")
    assert {d: rep["entropy"][d]["tokens"] for d in rep["domains"]} == store_train  # the store's streams, whole
    assert all(0 < rep["entropy"][d]["vne_docs_used"] <= 50 for d in rep["domains"])  # decoded documents
    bad = subprocess.run([sys.executable, "-m", "experiments.train", *common, f"--workdir={tmp_path / 'bad'}",
                          "--config.online.method=aioli", "--config.online.feedback_tokens=100000"], cwd=REPO,
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "selection tokens" in bad.stderr and not os.path.exists(tmp_path / "bad")


@pytest.mark.slow  # the whole runlocal pipeline and a comparison on a store (about 40 s)
def test_pipeline_and_comparison_run_on_a_store(store_dir, tmp_path):
    from bimix_jax.pipeline import compare, run
    from configs import compare_tiny, pipeline_tiny

    def on_store(c):
        c.data.source, c.data.path = "store", store_dir
        c.train.seq_len, c.train.eval_tokens = 16, 64
        return c

    result = run.run_pipeline(on_store(pipeline_tiny.get_config("runlocal")), str(tmp_path / "p"))
    rep = result.report
    assert set(result.mixture) == {"code", "math", "prose"}
    assert set(rep["data_use"]["epochs"]) >= {"uniform", "optimized"}
    assert "documents (train + select + val)" in open(result.paths["report_md"]).read()
    cfg = on_store(compare_tiny.get_config("runlocal"))
    cfg.compare.methods, cfg.compare.seeds = "uniform,natural,se,aioli", "0"
    out = compare.compare_methods(cfg, str(tmp_path / "c"))
    assert set(out["methods"]) == {"uniform", "natural", "se", "aioli"}
