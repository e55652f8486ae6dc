"""The end-to-end pipeline on the runlocal config: outputs, resume after SIGKILL, changed settings, bad input."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bimix_jax import atomic, loss_table
from bimix_jax.pipeline import report, run as pipeline, stages
from bimix_jax.errors import InputError
from bimix_jax.laws.base import FittedLaw
from bimix_jax.entropy import counts as entropy_counts
from bimix_jax.pipeline.spec import PipelineSpec, check_workdir_config
from configs import pipeline_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATES = ["uniform", "natural", "se", "ce", "je", "vne"]
RUNS = [*CANDIDATES, "optimized", "uniform-seed1", "optimized-seed1"]


def config(**pipeline_fields):
    c = pipeline_tiny.get_config("runlocal")
    c.pipeline.bootstrap = 4
    for k, v in pipeline_fields.items():
        c.pipeline[k] = v
    return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return pipeline.run_pipeline(config(), str(tmp_path_factory.mktemp("pipeline") / "w"))


def results(rep: dict) -> dict:
    """report.json without what differs between invocations that computed the same numbers."""
    return {k: v for k, v in rep.items() if k not in ("timing", "provenance")}


def copy(finished, tmp_path, name="w"):
    dst = str(tmp_path / name)
    shutil.copytree(finished.workdir, dst)
    return dst


def test_outputs_are_complete_and_consistent(finished):
    w, rep = finished.workdir, finished.report
    assert sorted(os.listdir(os.path.join(w, "runs"))) == sorted(RUNS)
    for name in ("pipeline.json", "provenance.json", "fit.json", "mixture.json", "losses.csv", "losses_candidates.csv",
                 "data/tokenizer.model", "mixture_exports/megatron_blend.txt",
                 *(f"plots/{p}.png" for p in report.PLOTS)):
        assert os.path.isfile(os.path.join(w, name)), name
    table = loss_table.read_csv(os.path.join(w, "losses.csv"))
    assert sorted(table.runs) == sorted(RUNS)
    cand = loss_table.read_csv(os.path.join(w, "losses_candidates.csv"))
    assert list(cand.runs) == CANDIDATES and len(cand) == 6 * 6 * 5  # 6 runs x 6 evaluations x 5 domains
    # The recommended mixture: on the simplex, above the floor, the run trained on it, exports agree.
    mix = finished.mixture
    assert sum(mix.values()) == pytest.approx(1, abs=1e-9) and min(mix.values()) >= 0.01 - 1e-12
    run_config = atomic.read_json(os.path.join(w, "runs", "optimized", "config.json"))
    assert run_config["proportions"] == mix
    assert atomic.read_json(os.path.join(w, "mixture_exports", "weights.json")) == pytest.approx(mix, abs=1e-6)
    fitted = FittedLaw.load(os.path.join(w, "fit.json"))
    assert fitted.law == "bimix" and fitted.train_domains == table.domains
    assert fitted.summary["holdout"]["protocol"] == "last_step"
    # Report: every candidate with its requested and realized shares, every run in the comparison, honestly ranked.
    assert [c["name"] for c in rep["candidates"]] == CANDIDATES
    for c in rep["candidates"]:
        assert sum(c["mixture"].values()) == pytest.approx(1)
        assert max(abs(c["mixture"][d] - c["realized_shares"][d]) for d in c["mixture"]) < 0.05
    comp = rep["comparison"]
    assert sorted(r["run"] for r in comp) == sorted([*CANDIDATES, "optimized"])
    assert [r["rank"] for r in comp] == list(range(1, 8))
    assert all(a["observed_average"] <= b["observed_average"] for a, b in zip(comp, comp[1:]))
    observed = {r["run"]: r["observed_average"] for r in comp}
    for run in observed:  # the average is the mean of the run's last-step losses in its loss table
        last = table.subset((table.run == run) & (table.step == 24))
        assert observed[run] == pytest.approx(float(np.mean(last.loss)), rel=1e-12)
    assert sorted(rep["heldout"]["leave_one_out"]) == sorted(CANDIDATES)
    assert rep["seed_noise"]["n"] == 2 and rep["seed_noise"]["std"] > 0
    # Paired per seed with uniform (the first candidate: also trained with the noise seed) and the best candidate.
    last_avg = {r: float(np.mean(table.loss[(table.run == r) & (table.step == 24)])) for r in table.runs}
    want = [last_avg["optimized"] - last_avg["uniform"], last_avg["optimized-seed1"] - last_avg["uniform-seed1"]]
    assert rep["paired"]["uniform"]["differences"] == pytest.approx(want, rel=1e-9)
    best = min(CANDIDATES, key=lambda r: last_avg[r])
    assert rep["paired"][best]["seeds"] == (2 if best == "uniform" else 1)
    assert "Paired with uniform seed by seed" in rep["verdict"]
    assert set(rep["confirmation"]["at_last_step"]) == set(table.domains)
    md = open(finished.paths["report_md"]).read()
    assert rep["verdict"] in md and all(f"{r['observed_average']:.4f}" in md for r in comp)
    assert rep["provenance"]["code"]["source_sha256"] and rep["provenance"]["code"]["version"] == "0.1.0"


def test_rerun_of_a_finished_pipeline_redoes_nothing(finished, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished stage was redone")

    for module, name in ((entropy_counts, "entropy_report"), (stages, "fit_stage"), (stages, "mixture_stage"),
                         (stages, "confirm_stage"), (report, "write")):
        monkeypatch.setattr(module, name, forbidden)
    w = finished.workdir
    before = {n: open(os.path.join(w, "runs", n, "metrics.jsonl")).read() for n in RUNS}
    again = pipeline.run_pipeline(config(), w)
    assert again.report == finished.report and again.mixture == finished.mixture
    assert {n: open(os.path.join(w, "runs", n, "metrics.jsonl")).read() for n in RUNS} == before  # nothing trained


_KILL = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[4])
    from bimix_jax.pipeline import run as pipeline, stages
    from bimix_jax.train import log as run_log
    from tests.pipeline_test import config

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[3] == "proxy":  # in run se, after its step-16 rows were written (its last checkpoint: step 12)
        evaluate = run_log.RunLog.eval
        def eval_then_die(log, count, losses, *shares):
            evaluate(log, count, losses, *shares)
            if log.run_name == "se" and count == 16:
                log.ckpt.wait()
                die()
        run_log.RunLog.eval = eval_then_die
    else:  # when the mixture stage starts (the fit stage is stored)
        stages.mixture_stage = die
    pipeline.run_pipeline(config(), sys.argv[2])
""")


def _killed(workdir, where, cache):
    out = subprocess.run([sys.executable, "-c", _KILL, REPO, workdir, where, cache], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]


@pytest.mark.slow  # kills of the pipeline; tests/chaos_test.py adds random moments
def test_sigkill_during_a_proxy_and_a_later_stage_then_resume(finished, tmp_path):
    w = str(tmp_path / "killed")
    shutil.copytree(os.path.join(finished.workdir, "data"), os.path.join(w, "data"))  # skip data preparation
    cache = str(tmp_path / "jax_cache")
    _killed(w, "proxy", cache)
    se = loss_table.read_csv(os.path.join(w, "runs", "se", "losses.csv"))
    assert se.step.max() == 16 and sorted(os.listdir(os.path.join(w, "runs", "se", "checkpoints"))) == ["12"]
    assert not os.path.exists(os.path.join(w, "runs", "ce"))
    assert not os.path.exists(os.path.join(w, "stages", "fit.json"))
    _killed(w, "mixture", cache)
    assert os.path.exists(os.path.join(w, "stages", "fit.json"))
    assert not os.path.exists(os.path.join(w, "stages", "mixture.json"))
    assert not os.path.exists(os.path.join(w, "runs", "optimized"))
    resumed = pipeline.run_pipeline(config(), w)
    for name in RUNS:  # no row lost or duplicated, every number as in the uninterrupted pipeline
        for f in ("losses.csv", "config.json"):
            assert open(os.path.join(w, "runs", name, f)).read() == open(
                os.path.join(finished.workdir, "runs", name, f)).read(), (name, f)
    for f in ("losses.csv", "fit.json", "mixture.json"):
        assert open(os.path.join(w, f)).read() == open(os.path.join(finished.workdir, f)).read(), f
    assert results(resumed.report) == results(finished.report)
    assert len(resumed.report["provenance"]["invocations"]) == 3


def test_changed_settings_redo_later_stages_or_are_refused(finished, tmp_path):
    w = copy(finished, tmp_path)
    with pytest.raises(InputError, match=r"holds the runs of another config \(train.steps: 24 there, 30 now\).*"
                                         r"rerun with the same config to continue it, or use another --workdir"):
        c = config()
        c.train.steps = 30
        pipeline.run_pipeline(c, w)
    with pytest.raises(InputError, match=r"another config \(pipeline.candidates: 'uniform,natural,se,ce,je,vne' there"):
        pipeline.run_pipeline(config(candidates="natural,se"), w)
    # More bootstrap replicates: the mixture stage and the report are redone; the runs are kept.
    metrics = open(os.path.join(w, "runs", "optimized", "metrics.jsonl")).read()
    more = pipeline.run_pipeline(config(bootstrap=6), w)
    assert more.report["recommended"]["bootstrap"]["n_boot"] == 6 and more.mixture == finished.mixture
    assert open(os.path.join(w, "runs", "optimized", "metrics.jsonl")).read() == metrics
    assert more.report["provenance"]["invocations"][-1]["changed"] == ["pipeline.bootstrap"]
    # A higher floor changes the recommendation: the run of the old one is not silently reused or replaced.
    with pytest.raises(InputError, match=r"runs/optimized holds a run of another recommended mixture \(settings "
                                         r"changed since: pipeline.min_floor\); delete .* to train the new one"):
        pipeline.run_pipeline(config(bootstrap=6, min_floor=0.15), w)


def test_corrupted_checkpoint_is_set_aside_and_the_run_redone_from_a_verified_one(finished, tmp_path):
    w = copy(finished, tmp_path)
    state = os.path.join(w, "runs", "ce", "checkpoints", "24", "state")
    for root, _, files in os.walk(state):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    again = pipeline.run_pipeline(config(), w)
    assert os.path.isdir(os.path.join(w, "runs", "ce", "checkpoints_unverified", "24"))
    assert open(os.path.join(w, "runs", "ce", "losses.csv")).read() == open(
        os.path.join(finished.workdir, "runs", "ce", "losses.csv")).read()
    assert results(again.report) == results(finished.report)


def test_disk_full_while_reporting_leaves_no_half_report(finished, tmp_path, monkeypatch):
    w = copy(finished, tmp_path)
    for f in ("report.md", "report.json", "stages/report.json"):
        os.remove(os.path.join(w, f))
    mkstemp = atomic.tempfile.mkstemp

    def full(*args, prefix="", **kwargs):
        if ".png." in prefix or "report" in prefix:
            raise OSError(errno.ENOSPC, "No space left on device")
        return mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", full)
    with pytest.raises(InputError, match=r"cannot write .*plots/.*\.png: No space left on device"):
        pipeline.run_pipeline(config(), w)
    assert not os.path.exists(os.path.join(w, "report.md")) and not os.path.exists(os.path.join(w, "report.json"))
    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    assert results(pipeline.run_pipeline(config(), w).report) == results(finished.report)


def test_bad_workdirs_and_settings_write_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"cannot write to workdir .*file/w .*choose another --workdir"):
        pipeline.run_pipeline(config(), str(blocker / "w"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not empty and holds no pipeline.json"):
        pipeline.run_pipeline(config(), str(other))
    assert os.listdir(other) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    cases = [
        (dict(candidates="natural,foo"), r"pipeline.candidates: 'foo' is not a candidate"),
        (dict(candidates="se,se"), "names 'se' twice"),
        (dict(extra_candidates="mine"), "is not 'name:domain=weight,...'"),
        (dict(extra_candidates="se:code=1"), "the name 'se' is taken"),
        (dict(fit_min_step=16), r"pipeline.fit_min_step=16 leaves 3 evaluation steps \(\[16, 20, 24\]\)"),
        (dict(min_floor=0.0), "pipeline.min_floor=0.0 must be in"),
        (dict(fit_loss="l1"), "pipeline.fit_loss='l1' must be one of l2, huber"),
        (dict(bootstrap=-1), "pipeline.bootstrap=-1"),
        (dict(objective_weights="code"), "pipeline.objective_weights: 'code' is not domain=value"),
        # These need the corpus's domains: the data are prepared, then the new workdir is removed again.
        (dict(objective_weights="cod=1"), "pipeline.objective_weights: unknown eval domain 'cod'"),
        (dict(min_floor=0.3), r"pipeline.min_floor=0.3 must be in \[0, 1/5\)"),
        (dict(floors="code=0.6,prose=0.6"), "pipeline.floors .* sum to 1.2"),
        (dict(extra_candidates="mine:cod=1"), r"pipeline.extra_candidates \(mine\): domain 'cod' is not in the corpus"),
    ]
    for fields, message in cases:
        with pytest.raises(InputError, match=message):
            pipeline.run_pipeline(config(**fields), str(fresh))
        assert not fresh.exists(), fields
    c = config()
    c.mixture = "uniform"
    with pytest.raises(InputError, match="config.mixture is not a pipeline config field"):
        pipeline.run_pipeline(c, str(fresh))


def test_spec_from_config_checks_types_and_fields():
    with pytest.raises(InputError, match="config.pipeline.candidatez is not a pipeline field"):
        PipelineSpec.from_config({"candidatez": "se"})
    with pytest.raises(InputError, match="pipeline.bootstrap='8' must be of type int"):
        PipelineSpec.from_config({"bootstrap": "8"})
    spec = PipelineSpec.from_config({"max_epochs": 2, "extra_candidates": " a: code=1 ; b:uniform "})
    assert isinstance(spec.max_epochs, float) and spec.max_epochs == 2.0  # ints are accepted for float fields
    assert spec.extras == (("a", "code=1"), ("b", "uniform"))


def test_duplicate_candidates_are_marked():
    domains = ("x", "y")
    named = {"natural": np.array([0.5, 0.5]), "uniform": np.array([0.5, 0.5 + 1e-9]), "se": np.array([0.2, 0.8])}
    cands = stages.candidate_mixtures(domains, named, ["natural", "uniform", "se"], [("mine", np.array([0.2, 0.8]))])
    assert [(c["name"], c["duplicate_of"]) for c in cands] == [("natural", None), ("uniform", "natural"),
                                                               ("se", None), ("mine", "se")]


def test_workdir_config_check_allows_free_fields(tmp_path):
    from bimix_jax.pipeline.spec import write_workdir_config

    cfg = config().to_dict()
    write_workdir_config(str(tmp_path), cfg, [])
    assert check_workdir_config(str(tmp_path), cfg) == (True, [])
    changed = config(vmap=True, bootstrap=9).to_dict()
    assert check_workdir_config(str(tmp_path), changed) == (True, ["pipeline.bootstrap", "pipeline.vmap"])
    bad = config(vne_max_docs=7).to_dict()
    with pytest.raises(InputError, match=r"pipeline.vne_max_docs: 200 there, 7 now"):
        check_workdir_config(str(tmp_path), bad)


@pytest.mark.slow  # compiles the vmapped group program (several seconds on CPU)
def test_vmapped_proxies_match_separate_ones(finished, tmp_path):
    w = str(tmp_path / "vmapped")
    shutil.copytree(os.path.join(finished.workdir, "data"), os.path.join(w, "data"))
    got = pipeline.run_pipeline(config(vmap=True), w)
    for name in [*CANDIDATES, "uniform-seed1", "optimized-seed1"]:
        a, b = (loss_table.read_csv(os.path.join(d, "runs", name, "losses.csv")) for d in (w, finished.workdir))
        np.testing.assert_array_equal(a.step, b.step)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)  # float32 summation order only
    assert got.mixture == pytest.approx(finished.mixture, abs=1e-3)
