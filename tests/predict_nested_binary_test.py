"""experiments.predict_nested and experiments.backtest_nested end to end on a synthetic three-size table."""

import csv
import json
import os
import subprocess
import sys

import numpy as np

from bimix_jax.laws import FittedLaw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"S": 1e6, "M": 4e6, "L": 16e6}
MIXTURES = [(0.1, 0.2, 0.7), (0.3, 0.3, 0.4), (0.5, 0.1, 0.4), (0.2, 0.6, 0.2), (0.6, 0.3, 0.1), (0.34, 0.33, 0.33)]
DOMAINS = ("code", "math", "web")


def _table(path):
    """Loss = (1 + 2 exp(t_e . r)) N^-0.1 (1 + 3 s^-0.5): a Data Mixing Law times a power size law times a step law,
    exactly; size L only at steps 2000 and 4000."""
    rows = []
    for size, n in SIZES.items():
        for m, r in enumerate(MIXTURES):
            for s in np.arange(200.0, 4001.0, 200.0):
                if size == "L" and s not in (2000.0, 4000.0):
                    continue
                for i, e in enumerate(DOMAINS):
                    mixing = 1.0 + 2.0 * np.exp(-2.5 * r[i] + 0.5 * r[(i + 1) % 3])
                    loss = 3.0 * mixing * n ** -0.1 * (1 + 3 * s ** -0.5)
                    rows.append({"run": f"{size}_m{m}", "model_size": size, "step": s,
                                 **{f"p_{d}": p for d, p in zip(DOMAINS, r)}, "eval_domain": e, "loss": loss})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _run(module, args, tmp_path):
    env = dict(os.environ, BIMIX_JAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_predict_nested_writes_report_points_plots_and_fit(tmp_path):
    table = _table(tmp_path / "t.csv")
    out, fit, points, plots = (tmp_path / n for n in ("nested.json", "fit.json", "points.csv", "plots"))
    sizes = ",".join(f"{k}={v:g}" for k, v in SIZES.items())
    res = _run("predict_nested", [f"--losses={table}", "--small_sizes=S,M", "--target_size=L", "--target_step=4000",
                                  "--max_step=2000", f"--sizes={sizes}", "--weights=code=1,math=1,web=2",
                                  "--caps=web=0.5", "--floors=math=0.1", "--n_boot=4", f"--out={out}",
                                  f"--fit={fit}", f"--points={points}", f"--plots={plots}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    mix = rep["optimum"]["mixture"]
    assert abs(sum(mix.values()) - 1) < 1e-9 and mix["web"] <= 0.5 + 1e-9 and mix["math"] >= 0.1 - 1e-9
    assert rep["optimum"]["weights"]["web"] == 0.5
    assert rep["heldout"]["mean"]["mre_pct"] < 0.1, rep["heldout"]["mean"]  # exact synthetic laws
    assert rep["heldout"]["worst_point"]["re_pct"] >= rep["heldout"]["mean"]["max_re_pct"]
    assert FittedLaw.load(fit).target_step == 4000
    with open(points) as f:
        rows = list(csv.DictReader(f))
    assert {r["stage"] for r in rows} == {"step", "size", "mixing"}
    assert len([r for r in rows if r["stage"] == "mixing"]) == len(MIXTURES) * len(DOMAINS)
    assert all(float(r["lo"]) <= float(r["hi"]) for r in rows if r["stage"] == "mixing")
    assert sorted(os.listdir(plots)) == ["predicted_vs_observed.png", "size_law.png", "step_law.png"]
    assert "worst point" in res.stdout and "optimum:" in res.stdout


def test_backtest_nested_scores_variants(tmp_path):
    table = _table(tmp_path / "t.csv")
    out = tmp_path / "bt.json"
    sizes = ",".join(f"{k}={v:g}" for k, v in SIZES.items())
    res = _run("backtest_nested", [f"--losses={table}", "--splits=S+M<=2000->L@4000",
                                   "--variants=size", f"--sizes={sizes}", f"--out={out}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert len(rep["rows"]) == 1 + 9
    best = min((r for r in rep["rows"] if "error" not in r), key=lambda r: r["full"]["mre_pct"])
    assert best["full"]["mre_pct"] < 0.1
    assert "| variant | mean level MRE" in res.stdout
