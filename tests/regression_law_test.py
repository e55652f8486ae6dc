"""Regression laws (linear, log-linear, kernel ridge, LightGBM) and RegMix's optimiser."""

import jax.numpy as jnp
import numpy as np
import pytest

from bimix_jax.laws import fit_law, regression
from tests.select_test import DOMAINS, MIXTURES, W, loglinear_table


def test_loglinear_recovers_the_exponents_and_kernel_predicts_unseen_mixtures():
    table = loglinear_table()
    fitted = fit_law(table, "loglinear")
    w = fitted.params["w"]
    np.testing.assert_allclose(w - w.mean(1, keepdims=True), W - W.mean(1, keepdims=True), atol=1e-5)
    kernel = fit_law(table.subset(table.run != "m5"), "kernel")
    r = np.array(MIXTURES[5])
    np.testing.assert_allclose(kernel.predict(r, 1000.0), np.exp(1.0 + W @ r), rtol=0.01)
    assert set(kernel.summary["domains"][DOMAINS[0]]) >= {"ls", "lam", "loo_rmse_log", "runs"}


def test_regmix_search_finds_a_known_minimum():
    target = np.array([0.2, 0.5, 0.3])
    r, info = regression.regmix_optimize(lambda x: jnp.sum((x - target) ** 2, axis=-1), np.ones(3) / 3,
                                         n_samples=20000, top_k=50)
    assert np.abs(r - target).max() < 0.03 and abs(r.sum() - 1) < 1e-9 and info["top_k"] == 50


def test_kernel_leave_one_out_is_exact_and_domains_share_the_work():
    rng = np.random.default_rng(1)
    x = rng.dirichlet(np.ones(3), 12)
    z = np.stack([np.sin(3 * x[:, 0]) + x[:, 1], x[:, 2] ** 2], axis=1)
    loo = regression._loo_all(x, z - z.mean(0))
    i, j = 5, 3  # one grid cell, by brute force: refit without each point
    ls, lam = regression.LS_GRID[i], regression.LAM_GRID[j]
    for e in range(2):
        zc = z[:, e] - z[:, e].mean()
        errs = []
        for n in range(len(x)):
            keep = np.arange(len(x)) != n
            k = np.exp(-0.5 * np.sum((x[keep][:, None] - x[keep][None]) ** 2, -1) / ls ** 2)
            a = np.linalg.solve(k + lam * np.eye(keep.sum()), zc[keep])
            kn = np.exp(-0.5 * np.sum((x[n] - x[keep]) ** 2, -1) / ls ** 2)
            errs.append(zc[n] - kn @ a)
        assert loo[i, j, e] == pytest.approx(np.mean(np.square(errs)), rel=1e-6)
    together = regression.Kernel(("p", "q", "r"), ("u", "v")).fit_domains([x, x], [np.exp(z[:, 0]), np.exp(z[:, 1])])
    alone = regression.Kernel(("p", "q", "r"), ("v",)).fit_domains([x], [np.exp(z[:, 1])])
    np.testing.assert_allclose(together[1]["a"], alone[0]["a"], rtol=1e-10)


def test_kernel_reports_a_choice_at_the_grid_edge():
    table = loglinear_table()  # log-linear truth: the smoothest kernel (largest length scale) fits best
    fitted = fit_law(table, "kernel")
    edges = [d["at_grid_edge"] for d in fitted.summary["domains"].values()]
    assert any("ls" in e or "lam" in e for e in edges), fitted.summary["domains"]


def test_lightgbm_trees_as_arrays_match_the_booster():
    lgb = pytest.importorskip("lightgbm")
    from bimix_jax.laws import lightgbm_law

    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(4), 300)
    y = np.sin(4 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.01 * rng.normal(size=300)
    booster = lgb.train({**lightgbm_law.SETTINGS, "num_leaves": 15, "min_data_in_leaf": 5}, lgb.Dataset(x, y),
                        num_boost_round=60)
    probe = rng.dirichlet(np.ones(4), 500)
    arrays = lightgbm_law._arrays(booster.dump_model())
    np.testing.assert_allclose(lightgbm_law.evaluate(arrays, probe), booster.predict(probe), rtol=1e-10, atol=1e-12)


def test_lightgbm_law_fits_round_trips_and_refuses_gradients(tmp_path, monkeypatch):
    pytest.importorskip("lightgbm")
    import jax
    from bimix_jax.errors import InputError
    from bimix_jax.laws import FittedLaw, lightgbm_law

    monkeypatch.setattr(lightgbm_law, "MAX_ROUNDS", 150)  # RegMix's 1000 rounds at lr 0.01: too slow for a unit test
    table = loglinear_table()
    fitted = fit_law(table, "lightgbm")
    d = fitted.summary["domains"][DOMAINS[0]]
    assert d["rounds"] >= 1 and d["num_leaves"] in (7, 31) and d["min_data_in_leaf"] == 2
    fitted.save(tmp_path / "lgb.json")
    again = FittedLaw.load(tmp_path / "lgb.json")
    r = np.array(MIXTURES[:4])
    np.testing.assert_allclose(np.asarray(again.predict(r, 1000.0)), np.asarray(fitted.predict(r, 1000.0)))
    truth = np.exp(1.0 + r @ W.T)
    assert np.mean(np.abs(np.asarray(fitted.predict(r, 1000.0)) / truth - 1)) < 0.15
    model, params = fitted.model, {k: jnp.asarray(v) for k, v in fitted.params.items()}
    with pytest.raises(InputError, match="no gradient"):
        jax.grad(lambda x: model.predict(params, x, 0.0).sum())(jnp.asarray(MIXTURES[0]))


def test_lightgbm_missing_is_a_one_line_install_hint(monkeypatch):
    import sys

    from bimix_jax.errors import InputError

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # import lightgbm now raises ImportError
    with pytest.raises(InputError, match="pip install"):
        fit_law(loglinear_table(), "lightgbm")
