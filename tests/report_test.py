"""The report from the analysis stages, on loss tables drawn from a known BiMix law (no training here)."""

import os

import numpy as np
import pytest

from bimix_jax import atomic, loss_table
from bimix_jax.pipeline import provenance, report, stages
from bimix_jax.laws.base import FittedLaw
from bimix_jax.mixture import constraints, optimize

DOMAINS = ("a", "b", "c")
TRUE = {"a": np.array([2.0, 1.5, 1.0]), "c": np.array([1.0, 1.2, 0.8]), "alpha": np.array([0.06, 0.12, 0.03]),
        "beta": np.array([0.5, 0.4, 0.6])}
CANDS = {"natural": [0.5, 0.3, 0.2], "x": [0.2, 0.5, 0.3], "y": [0.3, 0.2, 0.5], "z": [1 / 3, 1 / 3, 1 / 3]}
STEPS = np.arange(10, 101, 10)
MIN_STEP, LAST = 20, 100


def true_loss(r_D, step):
    return np.asarray(r_D) ** -TRUE["alpha"] * (TRUE["a"] * step ** -TRUE["beta"] + TRUE["c"])


def run_table(name, r_D, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in STEPS:
        for d, loss in zip(DOMAINS, true_loss(r_D, s)):
            rows.append({"run": name, "step": int(s), **{f"p_{k}": float(p) for k, p in zip(DOMAINS, r_D)},
                         "eval_domain": d, "loss": float(loss * np.exp(rng.normal(0, 0.002)) + offset)})
    return loss_table.from_rows(rows, domains=DOMAINS, source=name)


@pytest.fixture(scope="module")
def fitted_stages():
    tables = {n: run_table(n, r, i) for i, (n, r) in enumerate(CANDS.items())}
    cand_table = loss_table.concat(list(tables.values()))
    fit = stages.fit_stage(cand_table, min_step=MIN_STEP, options=stages.fit_options(4, "l2", 0.05),
                             leave_one_out=True)
    fitted = FittedLaw.from_json(fit["law"])
    bounds = constraints.make_bounds(DOMAINS, min_floor=0.01)
    mix = atomic.to_jsonable(stages.mixture_stage(
        fitted, stages.fit_table(cand_table, MIN_STEP), step=float(LAST), weights=None, bounds=bounds,
        n_boot=8, seed=0))
    return tables, fit, fitted, mix, bounds


def _inputs(fitted_stages, offset, duplicate=False):
    tables, fit, fitted, mix, _ = fitted_stages
    r_opt = np.array([mix["mixture"][d] for d in DOMAINS])
    tables = {**tables, "optimized": run_table("optimized", r_opt, 9, offset)}
    val = atomic.to_jsonable(stages.confirm_stage(fitted, tables, recommended="optimized", last_step=LAST,
                                                       min_step=MIN_STEP, weights=mix["weights"]))
    named = {n: np.array(r) for n, r in CANDS.items()}
    extras = [("dup", np.array(CANDS["x"]))] if duplicate else []
    cands = stages.candidate_mixtures(DOMAINS, {**named, "uniform": named["z"], "se": named["x"], "ce": named["y"],
                                                  "je": named["z"], "vne": named["z"]}, ["natural", "se", "ce", "je"],
                                        extras)
    for c, name in zip(cands, ["natural", "x", "y", "z", "dup"]):
        c["name"] = name  # the synthetic runs' names
    if duplicate:
        cands[-1]["duplicate_of"] = "x"
    shares = {n: dict(zip(DOMAINS, CANDS[n])) for n in CANDS} | {"optimized": mix["mixture"]}
    entropy = {d: {"se": 1.0, "ce": 0.5, "je": 1.5, "vne": 0.7, "tokens": 1000} for d in DOMAINS}
    return report.ReportInputs(
        config={"pipeline": {"fit_min_step": MIN_STEP}}, spec={}, data_table="| domain |\n|---|\n| a |",
        candidates={"entropy": {"entropy": entropy}, "candidates": cands},
        proxies={"realized_shares": shares, "model_size": "1K", "steps": LAST, "tokens_per_run": 1000},
        fit=fit, mixture=mix, confirmation=val, table=loss_table.concat(list(tables.values())), fitted=fitted,
        timing={"fit": 1.0}, provenance={"code": provenance.code_version(), "invocations": []}, files={"x": "ab"})


def test_law_and_mixture_recover_the_truth(fitted_stages):
    _, fit, fitted, mix, bounds = fitted_stages
    for k, v in TRUE.items():
        np.testing.assert_allclose(fitted.params[k], v, rtol=0.25)
    true_law = FittedLaw("bimix", 1, DOMAINS, DOMAINS, TRUE)
    import jax

    with jax.enable_x64(True):
        best = optimize.solve(true_law, step=float(LAST), weights_E=np.full(3, 1 / 3), bounds=bounds).r
    np.testing.assert_allclose([mix["mixture"][d] for d in DOMAINS], best, atol=0.03)
    assert fit["last_step"]["mean"]["mre_pct"] < 0.5
    loco = fit["leave_one_out"]
    assert sorted(loco) == sorted(CANDS) and all(v["mean"]["r2_log"] > 0.9 for v in loco.values())
    assert all(v["points"]["run"] == [r] * len(v["points"]["run"]) for r, v in loco.items())  # only the held-out run
    q = mix["bootstrap"]["mixture"]
    assert all(q[d][0] <= q[d][1] <= q[d][2] for d in DOMAINS)


def test_report_says_when_the_recommendation_wins(fitted_stages, tmp_path):
    rep = report.write(str(tmp_path), _inputs(fitted_stages, offset=0.0))
    ranks = {r["run"]: r["rank"] for r in rep["comparison"]}
    assert sorted(ranks) == sorted([*CANDS, "optimized"]) and sorted(ranks.values()) == [1, 2, 3, 4, 5]
    assert ranks["optimized"] == 1 and rep["verdict"].startswith("The recommended mixture has the lowest")
    # Predicted vs observed for the recommended run: small errors (the data follow the law).
    assert abs(rep["confirmation"]["average"]["relative_error_pct"]) < 1.0
    assert rep["confirmation"]["curve"]["fit_window"]["mean"]["r2_log"] > 0.9
    md = (tmp_path / "report.md").read_text()
    assert rep["verdict"] in md
    for row in rep["comparison"]:  # every run's observed average loss, as in report.json
        assert f"{row['observed_average']:.4f}" in md and row["run"] in md
    for d, p in rep["recommended"]["mixture"].items():
        assert f"| {d} | {p:.4f} |" in md
    for name in report.PLOTS:
        with open(tmp_path / "plots" / f"{name}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}.png" in md
    assert atomic.read_json(tmp_path / "report.json") == rep


def test_report_says_when_a_candidate_beats_the_recommendation(fitted_stages, tmp_path):
    rep = report.write(str(tmp_path), _inputs(fitted_stages, offset=0.05, duplicate=True))
    rec = next(r for r in rep["comparison"] if r["is_recommended"])
    best = rep["comparison"][0]
    assert rec["rank"] > 1 and best["run"] != "optimized"
    assert rep["verdict"].startswith(f"The recommended mixture does not beat every candidate: it ranks {rec['rank']}")
    assert best["run"] in rep["verdict"] and f"{best['observed_average']:.4f}" in rep["verdict"]
    assert rep["confirmation"]["average"]["relative_error_pct"] < -0.5  # the law under-predicts the shifted run
    md = (tmp_path / "report.md").read_text()
    assert "same as x: trained once" in md
    dup = next(c for c in rep["candidates"] if c["name"] == "dup")
    assert dup["duplicate_of"] == "x" and dup["realized_shares"] == rep["candidates"][1]["realized_shares"]


def test_paths_name_every_file(tmp_path):
    p = report.paths(str(tmp_path))
    assert set(p) == {"report_md", "report_json", *report.PLOTS}
    assert all(os.path.dirname(v) in (str(tmp_path), str(tmp_path / "plots")) for v in p.values())
