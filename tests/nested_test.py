"""Size law recovery and identifiability; the nested 70M + 160M -> 410M prediction on real runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax.errors import InputError
from bimix_jax.laws import sizelaw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PILE3 = os.path.join(ROOT, "..", "shared", "data", "pile3_github_books3_pilecc.csv")
N = [18.9e6, 85.1e6, 201.5e6]


def _points(e_c, n0_c, alpha, sizes, domains):
    return [((c, d), d, n, e_c[c] + (n0_c[c] / n) ** alpha) for c, d in enumerate(domains) for n in sizes]


def test_size_law_recovers_alpha_and_extrapolates():
    e, n0 = np.array([1.0, 2.5, 2.9, 1.2]), np.array([3e5, 8e4, 2e5, 1e6])
    law = sizelaw.fit_size_law(_points(e, n0, 0.42, N, ["a", "b", "c", "d"]), tie_e=False)
    assert abs(law.alpha - 0.42) < 1e-3
    np.testing.assert_allclose(law.predict(805.7e6), e + (n0 / 805.7e6) ** 0.42, rtol=1e-4)


def test_two_sizes_need_tied_e():
    domains = ["a", "a", "b", "b"]  # two mixtures per eval domain, E shared by domain
    e, n0 = np.array([1.0, 1.0, 2.5, 2.5]), np.array([3e5, 6e5, 8e4, 2e5])
    pts = _points(e, n0, 0.3, N[:2], domains)
    with pytest.raises(InputError, match="free parameters"):
        sizelaw.fit_size_law(pts, tie_e=False)
    law = sizelaw.fit_size_law(pts, tie_e=True)
    assert abs(law.alpha - 0.3) < 1e-3
    np.testing.assert_allclose(law.E, e, rtol=1e-4)


@pytest.mark.slow
def test_nested_prediction_of_410m_from_70m_and_160m(tmp_path):
    if not os.path.exists(PILE3):
        pytest.skip("shared pile3 table absent")
    out = tmp_path / "nested.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.predict_nested", f"--losses={PILE3}",
                           "--small_sizes=70M,160M", "--target_size=410M", "--target_step=60000",
                           "--max_step=30000", f"--out={out}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["fitting_mixtures"] == 6 and 0 < rep["size_law"]["alpha"] < 3
    held = rep["heldout"]
    assert held["pooled"]["n"] == 96  # 32 runs x 3 domains at 410M, step 60000, none fitted
    assert held["mean"]["mre_pct"] < 7.0 and held["pooled"]["pearson"] > 0.8, held["mean"]
    opt = rep["optimum"]["proportions"]
    assert abs(sum(opt.values()) - 1) < 1e-9 and min(opt.values()) >= 0
