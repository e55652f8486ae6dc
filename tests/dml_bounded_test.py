"""The bounded Data Mixing Law fit: bounds, ridge, and parity with the paper's bounded scipy procedure on real runs."""

import os

import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.laws import fit_law, protocols
from bimix_jax.laws import dml_bounded
from tests.dml_law_test import make_table, dml_loss

PILE3 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pile3_github_books3_pilecc.csv")


@pytest.fixture(scope="module")
def pile3_410m():
    if not os.path.exists(PILE3):
        pytest.skip("shared pile3 table absent")
    t = loss_table.read_csv(PILE3).for_model_size("410M")
    return t.subset(t.step == 60000.0)


@pytest.mark.slow
def test_c_stays_below_the_smallest_loss_and_the_bound_is_reported():
    few = make_table(mixtures=[(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.25, 0.25, 0.5)], noise=0.02, seed=3)
    fitted = fit_law(few, "dml")
    for g, e in enumerate(fitted.eval_domains):
        m = few.loss[few.eval_domain == e].min()
        assert 0 < fitted.params["c"][g] < m
        d = fitted.summary["domains"][e]
        np.testing.assert_allclose(d["c_over_min_loss"], fitted.params["c"][g] / m, rtol=1e-9)
        assert d["c_at_bound"] in (None, "zero", "min_loss")
        assert (d["c_at_bound"] == "min_loss") == (d["c_over_min_loss"] > 1 - dml_bounded.AT_BOUND)


@pytest.mark.slow
def test_ridge_shrinks_the_exponents():
    table = make_table(noise=0.01, seed=2)
    norms = [np.linalg.norm(fit_law(table, "dml", ridge=lam).params["t"], axis=1) for lam in (0.0, 1.0)]
    assert np.all(norms[1] < norms[0])


@pytest.mark.slow
def test_ridge_cv_picks_from_the_grid_and_predicts():
    table = make_table(noise=0.01, seed=2)
    cv = fit_law(table, "dml", ridge="cv")
    lams = [cv.summary["domains"][e]["data"]["ridge"] for e in cv.eval_domains]
    assert set(lams) <= set(dml_bounded.RIDGE_GRID)
    assert np.asarray(list(cv.summary["ridge_cv"]["cv_mse_log"].values())).shape == (4, len(dml_bounded.RIDGE_GRID))
    # 1% noise, 15 mixtures: the CV choice still predicts unseen mixtures within 2%.
    for r in np.random.default_rng(7).dirichlet(np.ones(3), size=10):
        np.testing.assert_allclose(cv.predict(r, cv.target_step), [dml_loss(r, e) for e in range(4)], rtol=0.02)


def _heldout(table, fit_runs, predict):
    test = table.subset(~np.isin(table.run, fit_runs))
    pred = predict(table.subset(np.isin(table.run, fit_runs)), test)
    per = [protocols.metrics(test.loss[test.eval_domain == e], pred[test.eval_domain == e]) for e in table.eval_domains]
    return np.mean([m["r2_log"] for m in per]), np.mean([m["mre_pct"] for m in per])


def _ours(train, test):
    fitted = fit_law(train, "dml")
    for g, e in enumerate(fitted.eval_domains):  # 0 <= c < the smallest fitted loss, and reported.
        m = train.loss[train.eval_domain == e].min()
        assert 0 <= fitted.params["c"][g] < m
        np.testing.assert_allclose(fitted.summary["domains"][e]["c_over_min_loss"], fitted.params["c"][g] / m)
    return protocols.predict_rows(fitted, test)


def _scipy(train, test):
    baselines = pytest.importorskip("experiments.baselines")
    pred = np.zeros(len(test))
    for e in train.eval_domains:
        params = baselines.dml_bounded_scipy(train.p[train.eval_domain == e], train.loss[train.eval_domain == e])
        pred[test.eval_domain == e] = baselines.dml_predict(params, test.p[test.eval_domain == e])
    return pred


def test_heldout_error_no_worse_than_the_bounded_scipy_procedure(pile3_410m):
    t = pile3_410m
    held = protocols.crc_holdout_runs(t)
    splits = [[r for r in t.runs if r not in held], list(np.random.default_rng(0).choice(t.runs, 8, replace=False))]
    for fit_runs in splits:
        r2, mre = _heldout(t, fit_runs, _ours)
        r2_sp, mre_sp = _heldout(t, fit_runs, _scipy)
        assert r2 >= r2_sp - 1e-3 and mre <= mre_sp * 1.001 + 1e-3, (len(fit_runs), r2, r2_sp, mre, mre_sp)


@pytest.mark.slow
def test_bound_rescues_a_fit_on_few_mixtures(pile3_410m):
    t = pile3_410m
    splits = [None, list(np.random.default_rng(0).choice(t.runs, 8, replace=False))]
    # With 8 mixtures an unbounded c extrapolates wildly; the bound keeps the held-out R^2 far above it.
    r2_free, _ = _heldout(t, splits[1], lambda a, b: protocols.predict_rows(fit_law(a, "dml", bounded=False), b))
    r2_bounded, _ = _heldout(t, splits[1], _ours)
    assert r2_bounded > r2_free + 1.0, (r2_bounded, r2_free)
