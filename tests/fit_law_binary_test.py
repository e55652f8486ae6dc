"""experiments.fit_law end to end: outputs on good input; one-line errors, exit 2, nothing written on bad input."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax.laws import FittedLaw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("code", "web")
MIXTURES = [(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2), (0.5, 0.5)]
STEPS = [500, 1000, 2000, 4000, 8000, 16000, 32000, 64000]  # Fit and last_step fit share padded shapes.


def rows(mixtures=MIXTURES, steps=STEPS, size="10M"):
    out = []
    for k, mix in enumerate(mixtures):
        for s in steps:
            for e, dom in enumerate(DOMAINS):
                loss = mix[e] ** -(0.05 + 0.05 * e) * (300.0 * s ** -0.6 + 2.0 + e)
                out.append({"run": f"{size}_run{k}", "model_size": size, "step": s, "p_code": mix[0],
                            "p_web": mix[1], "eval_domain": dom, "loss": round(loss, 6)})
    return out


def write(path, table_rows, columns=None):
    columns = columns or list(table_rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table_rows)
    return str(path)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def run(args, cache_dir):
    env = dict(os.environ, BIMIX_JAX_CACHE_DIR=cache_dir, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.fit_law", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bimix_fit_with_holdout_and_plot(tmp_path, cache_dir):
    table = write(tmp_path / "t.csv", rows())
    out, plot = tmp_path / "fit.json", tmp_path / "fit.png"
    res = run([f"--losses={table}", "--law=bimix", "--holdout=last_step", f"--out={out}", f"--plot={plot}"],
              cache_dir)
    assert res.returncode == 0, res.stderr
    fitted = FittedLaw.load(out)
    assert fitted.law == "bimix" and fitted.eval_domains == DOMAINS and fitted.summary["model_size"] == "10M"
    np.testing.assert_allclose(fitted.params["beta"], [0.6, 0.6], rtol=1e-4)
    held = fitted.summary["holdout"]
    assert held["protocol"] == "last_step" and held["worst"]["max_re_pct"] < 0.01
    assert fitted.summary["domains"]["web"]["holdout"]["n"] == len(MIXTURES)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bimix law, model size 10M" in res.stdout and "held out (last_step)" in res.stdout


@pytest.mark.parametrize("law", ["loglinear", "kernel"])
def test_regression_law_fits_at_one_step(law, tmp_path, cache_dir):
    table = write(tmp_path / "t.csv", rows())
    out = tmp_path / "fit.json"
    res = run([f"--losses={table}", f"--law={law}", "--target_step=16000", f"--out={out}"], cache_dir)
    assert res.returncode == 0, res.stderr
    fitted = FittedLaw.load(out)
    assert fitted.law == law and fitted.target_step == 16000 and fitted.summary["model_size"] == "10M"
    assert f"{law} law, model size 10M, at step 16000" in res.stdout and "closed-form fit" in res.stdout
    from bimix_jax.laws import get_law

    model = get_law(law)(fitted.train_domains, fitted.eval_domains)
    for r in rows(steps=[16000]):  # the fit reproduces the runs it was fitted on (a smooth law, 5 mixtures)
        mix = np.array([r["p_code"], r["p_web"]])
        pred = np.asarray(model.predict(fitted.params, mix, 16000.0))[DOMAINS.index(r["eval_domain"])]
        assert abs(pred / r["loss"] - 1) < 0.02, (r, pred)


def test_regmix_search_on_rounded_proportions(tmp_path, cache_dir):
    """Proportions rounded by their source (sums 0.999-1.001) need --normalize; RegMix's search lands in the simplex
    and predicts a loss no higher than the best fitted run's."""
    rounded = [(0.333, 0.666), (0.201, 0.8), (0.6, 0.401), (0.8, 0.2), (0.5, 0.5), (0.7, 0.299)]
    table = write(tmp_path / "t.csv", rows(mixtures=rounded, steps=[16000]))
    out = tmp_path / "fit.json"
    refused = run([f"--losses={table}", "--law=kernel", f"--out={out}"], cache_dir)
    assert refused.returncode == 2 and "--normalize" in refused.stderr and not out.exists()
    res = run([f"--losses={table}", "--law=kernel", "--normalize", "--search_samples=4000", "--search_top_k=20",
               "--search_weights=web=1", f"--out={out}"], cache_dir)
    assert res.returncode == 0, res.stderr
    search = FittedLaw.load(out).summary["regmix_search"]
    assert abs(sum(search["mixture"].values()) - 1) < 1e-9 and list(search["weights"]) == ["web"]
    best_run = min(r["loss"] for r in rows(mixtures=rounded, steps=[16000]) if r["eval_domain"] == "web")
    assert search["predicted_loss"]["web"] <= best_run * 1.01 and "RegMix search:" in res.stdout
