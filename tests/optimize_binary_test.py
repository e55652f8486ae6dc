"""`python -m experiments.optimize_mixture` end to end: report, exports, bootstrap, one-line errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import bimix_jax.laws  # noqa: F401  (registers 'bimix' and 'dml')
from bimix_jax import loss_table
from bimix_jax.laws import FittedLaw, fit_law
from bimix_jax.mixture import constraints, optimize
from tests import mixture_testlib as tl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("github", "books3", "pile_cc")
PARAMS = {"a": [40.0, 15.0, 25.0], "c": [1.2, 2.6, 2.3], "alpha": [0.2, 0.05, 0.12], "beta": [0.5, 0.4, 0.45]}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.optimize_mixture", *args]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


ENV = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR="")


@pytest.fixture(scope="module")
def fit_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("fit") / "fit.json")
    FittedLaw("bimix", 1, DOMAINS, DOMAINS, {k: np.array(v) for k, v in PARAMS.items()}).save(path)
    return path


def test_report_and_exports(fit_file, tmp_path):
    out, exp = str(tmp_path / "mix.json"), str(tmp_path / "exp")
    proc = run(f"--fit={fit_file}", "--token_budget=1e10", "--tokens_per_step=5e5", "--caps=pile_cc=0.5",
               "--domain_tokens=github=1e9,books3=2e10,pile_cc=5e10", "--max_epochs=3",
               "--weights=github=1,pile_cc=1",
               f"--out={out}", f"--export_dir={exp}", "--megatron_template=/data/{domain}_text_document")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.load(open(out))
    assert rep["step"] == 2e4 and rep["solver"]["name"] == "exact" and rep["fit_file"] == fit_file
    # The same problem solved in this process (float64) gives the same mixture.
    with jax.enable_x64(True):
        fitted = FittedLaw.load(fit_file)
        bounds = constraints.make_bounds(DOMAINS, caps={"pile_cc": 0.5}, domain_tokens={
            "github": 1e9, "books3": 2e10, "pile_cc": 5e10}, token_budget=1e10, max_epochs=3.0, min_floor=1e-4)
        r = optimize.solve(fitted, step=2e4, weights_E=np.array([0.5, 0.0, 0.5]), bounds=bounds).r
    np.testing.assert_allclose([rep["mixture"][d] for d in DOMAINS], r, atol=1e-12)
    # github is capped at 3 epochs (0.3), pile_cc at 0.5: the unweighted books3 takes the remaining 0.2.
    assert rep["binding"] == {"github": ["repetition"], "pile_cc": ["cap"]}
    assert rep["mixture"]["books3"] == pytest.approx(0.2, abs=1e-12)
    assert rep["epochs"]["optimum"]["github"] == pytest.approx(3.0)
    assert "unconstrained" in rep and "natural" in rep["references"]
    blend = open(os.path.join(exp, "megatron_blend.txt")).read().split()
    assert blend[1::2] == [f"/data/{d}_text_document" for d in DOMAINS]
    assert json.load(open(os.path.join(exp, "weights.json"))) == rep["export"]["weights"]
    assert "github" in proc.stdout and "repetition" in proc.stdout and "wrote" in proc.stdout


def test_bootstrap_end_to_end(tmp_path):
    table = tl.synthetic_table()
    csv, fit, out = str(tmp_path / "t.csv"), str(tmp_path / "fit.json"), str(tmp_path / "mix.json")
    loss_table.write_csv(csv, table)
    fit_law(table, "bimix").save(fit)
    proc = run(f"--fit={fit}", "--steps=30000", f"--losses={csv}", "--bootstrap=8", "--seed=3", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    boot = json.load(open(out))["bootstrap"]
    assert boot["n_boot"] == 8 and boot["n_used"] == 8 and boot["seed"] == 3
    for d in table.domains:
        q = boot["mixture"][d]
        assert len(q) == 3 and q[0] <= q[1] <= q[2]
    assert "5%..95%" in proc.stdout
