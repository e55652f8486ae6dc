"""Law comparison on shared protocols: metrics, intervals, the CV choice, and the compare_laws binary."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.laws import select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("a", "b", "c")
W = np.array([[0.9, -0.4, 0.1], [-0.2, 0.8, -0.5], [0.3, 0.2, -0.6]])
MIXTURES = [m for m in itertools.product(np.arange(0, 1.01, 0.125), repeat=3) if abs(sum(m) - 1) < 1e-9][::2]


def loglinear_table():
    """log L = 1 + W r exactly, at one step: the log-linear regression law is the truth."""
    rows = [{"run": f"m{k}", "step": 1000.0, **{f"p_{d}": p for d, p in zip(DOMAINS, mix)}, "eval_domain": e,
             "loss": float(np.exp(1.0 + W[i] @ np.array(mix)))}
            for k, mix in enumerate(MIXTURES) for i, e in enumerate(DOMAINS)]
    return loss_table.from_rows(rows)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)
    assert select.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_the_true_law_wins_every_protocol_and_cv_chooses_it():
    table = loglinear_table()
    res = select.compare(table, ["linear", "loglinear"], ("leave_one_out", "kfold"), n_boot=50)
    for p in ("leave_one_out", "kfold"):
        true, other = res[p]["loglinear"], res[p]["linear"]
        assert true["n_points"] == 3 * len(MIXTURES) and true["folds_skipped"] == 0
        assert true["r2_log"] > 0.999999 and true["mre_pct"] < 1e-4 and true["spearman_agg"] == pytest.approx(1.0)
        assert other["mre_pct"] > 100 * true["mre_pct"]
        lo, hi = other["ci95"]["mre_pct"]
        assert lo <= other["mre_pct"] <= hi
    best, _ = select.choose(table, ["linear", "loglinear"])
    assert best == "loglinear"
    assert "| kfold | loglinear |" in select.markdown(res)


def test_unfittable_folds_are_skipped_with_a_reason():
    table = loglinear_table()
    few = table.subset(np.isin(table.run, ["m0", "m1", "m2", "m3"]))
    res = select.compare(few, ["kernel"], ("leave_one_out",), n_boot=0)["leave_one_out"]["kernel"]
    assert res["folds"] == 4 and res["folds_skipped"] == 4 and res["r2_log"] is None
    assert "at least 4" in res["skip_reasons"][0]


@pytest.mark.slow
def test_compare_laws_binary(tmp_path):
    csv = tmp_path / "t.csv"
    t = loglinear_table()
    header = "run,step," + ",".join(f"p_{d}" for d in DOMAINS) + ",eval_domain,loss\n"
    csv.write_text(header + "".join(f"{r},{s},{','.join(map(str, p))},{e},{y}\n"
                                    for r, s, p, e, y in zip(t.run, t.step, t.p, t.eval_domain, t.loss)))
    out = tmp_path / "o.json"
    bad = subprocess.run([sys.executable, "-m", "experiments.compare_laws", f"--losses={csv}", "--laws=nope",
                          f"--out={out}"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown law candidate 'nope'" in bad.stderr and not out.exists()
    ok = subprocess.run([sys.executable, "-m", "experiments.compare_laws", f"--losses={csv}",
                         "--laws=loglinear,kernel", "--protocols=kfold", "--n_boot=20", f"--out={out}",
                         f"--table={tmp_path / 't.md'}", f"--plot={tmp_path / 'p.png'}"], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["results"]["kfold"]["loglinear"]["r2_log"] > 0.999999
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and "loglinear" in (tmp_path / "t.md").read_text()
