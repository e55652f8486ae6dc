"""Regression laws (linear, log-linear, kernel ridge) and RegMix's optimiser."""

import jax.numpy as jnp
import numpy as np

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
