"""`compare_methods` end to end on its runlocal settings: every method, paired differences, compute, resume."""

import json
import os

import numpy as np
import pytest

from bimix_jax.errors import InputError
from bimix_jax.pipeline import compare, compare_report
from configs import compare_tiny


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("compare") / "w")
    return w, compare.compare_methods(compare_tiny.get_config("runlocal"), w)


def test_every_method_is_reported_with_paired_differences(compared):
    w, rep = compared
    cfg = compare_tiny.get_config("runlocal")
    methods = cfg.compare.methods.split(",")
    assert set(rep["methods"]) == set(methods) and sorted(rep["ranking"]) == sorted(methods)
    strat = np.asarray(rep["methods"]["uniform"]["average_loss"]["per_seed"])
    assert len(strat) == 2
    for m, e in rep["methods"].items():
        avg = np.asarray(e["average_loss"]["per_seed"])
        per_dom = [e["per_domain_loss"][d]["mean"] for d in rep["domains"]]
        assert np.isclose(avg.mean(), np.mean(per_dom))
        mix = np.asarray(list(e["mixture"].values()))
        assert np.isclose(mix.sum(), 1.0) and mix.min() >= 0
        if m != "uniform":
            np.testing.assert_allclose(e["vs_uniform"]["per_seed"], avg - strat)
            assert 0 <= e["vs_uniform"]["p"] <= 1
    beat = [m for m in methods if m != "uniform" and rep["methods"][m]["vs_uniform"]["mean"] < 0]
    assert rep["beat_uniform"] == beat
    for f in ("report.md", "report.json", "plots/final_loss.png", "plots/trajectories.png", "plots/loss_curves.png"):
        assert os.path.getsize(os.path.join(w, f)) > 0


def test_compute_is_accounted(compared):
    _, rep = compared
    cfg = compare_tiny.get_config("runlocal")
    per_step = cfg.train.batch_size * cfg.train.seq_len
    budget = cfg.train.steps * per_step
    c = {m: e["compute"] for m, e in rep["methods"].items()}
    assert c["uniform"]["extra_train_tokens"] == 0
    assert c["bimix"]["extra_train_tokens"] == 6 * budget  # the six static methods' first-seed runs
    assert c["doremi"]["extra_train_tokens"] == 2 * budget  # reference + proxy
    a = cfg.online.aioli
    rounds = len(rep["aioli_rounds"]["aioli"])
    assert rounds == 2 and c["aioli"]["probe_tokens"] == rounds * a.sweeps * 5 * a.probe_steps * per_step
    short = round(cfg.train.steps * cfg.compare.restricted_fraction)
    assert c["aioli_restricted"]["extra_train_tokens"] == 2 * short * per_step
    assert c["aioli_restricted"]["prior_tokens"] == short * per_step
    for r in rep["aioli_rounds"]["aioli"]:
        assert np.isclose(np.sum(r["A"]), 1.0) and np.isclose(np.sum(r["p"]), 1.0)


def test_rerun_resumes_to_the_same_report(compared):
    w, rep = compared
    before = open(os.path.join(w, "report.json")).read()
    again = compare.compare_methods(compare_tiny.get_config("runlocal"), w)
    assert open(os.path.join(w, "report.json")).read() == before
    assert json.loads(before)["ranking"] == again["ranking"]


def test_paired_t_test_matches_the_closed_form():
    d = np.array([-0.1, -0.05, -0.08])
    out = compare_report.paired_test(d)
    # t = mean / (sd / sqrt(3)); with 2 degrees of freedom, p = 1 - |t| / sqrt(t^2 + 2).
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    assert np.isclose(out["t"], t) and np.isclose(out["p"], 1 - abs(t) / np.sqrt(t * t + 2), rtol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("methods", "uniform,aioli,nope", "compare.methods"),
    ("methods", "aioli,natural", "uniform"),
    ("seeds", "0,0", "repeat"),
    ("restricted_fraction", 1.5, "restricted_fraction"),
    ("methods", "uniform,natural,se,ce,bimix,dml", "needs at least 6 of them"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, field, value, match):
    cfg = compare_tiny.get_config("runlocal")
    cfg.compare[field] = value
    with pytest.raises(InputError, match=match):
        compare.compare_methods(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
