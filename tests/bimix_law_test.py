"""BiMix law: formula, prediction guards, parameter recovery, data checks, serialization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.errors import InputError
from bimix_jax.laws import FittedLaw, fit_law, get_law
from bimix_jax.laws.bimix import ALPHA_MIN

DOMAINS = ("code", "books", "web")
TRUE = {"a": np.array([900.0, 150.0, 120.0]), "c": np.array([1.1, 2.9, 2.8]),
        "alpha": np.array([0.11, 0.03, 0.06]), "beta": np.array([0.8, 0.55, 0.5])}
MIXTURES = [(0.1, 0.3, 0.6), (0.25, 0.25, 0.5), (0.5, 0.2, 0.3), (0.2, 0.6, 0.2), (0.4, 0.1, 0.5)]
STEPS = np.geomspace(500, 60000, 20).round()


def bimix_loss(params, r, s, e):
    return r[e] ** -params["alpha"][e] * (params["a"][e] * s ** -params["beta"][e] + params["c"][e])


def make_table(params=TRUE, mixtures=MIXTURES, noise=0.0, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    rows = []
    for k, mix in enumerate(mixtures):
        for s in steps:
            for e, dom in enumerate(DOMAINS):
                loss = bimix_loss(params, np.array(mix), s, e) if mix[e] > 0 else 5.0 + rng.random()
                rows.append({"run": f"run{k}", "model_size": "10M", "step": float(s),
                             **{f"p_{d}": m for d, m in zip(DOMAINS, mix)}, "eval_domain": dom,
                             "loss": loss * float(np.exp(noise * rng.standard_normal()))})
    return loss_table.from_rows(rows)


@pytest.fixture(scope="module")
def exact_fit():
    return fit_law(make_table(), "bimix")


def test_predict_is_the_formula_and_traceable():
    law = get_law("bimix")(DOMAINS, ("web", "code"))
    params = {k: jnp.asarray(v[[2, 0]]) for k, v in TRUE.items()}
    r = jnp.array([0.2, 0.3, 0.5])
    got = law.predict(params, r, 1000.0)
    want = [bimix_loss(TRUE, np.array(r), 1000.0, 2), bimix_loss(TRUE, np.array(r), 1000.0, 0)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.grad(lambda r: jnp.sum(law.predict(params, r, 1000.0)))(r)
    assert grad[1] == 0 and grad[0] < 0 and grad[2] < 0  # Only own proportions matter; more data, lower loss.
    assert np.isinf(jax.jit(law.predict)(params, jnp.array([0.0, 0.5, 0.5]), 1000.0)[1])  # Traced: r=0 -> inf.


def test_noise_free_recovery_is_essentially_exact(exact_fit):
    for k, v in TRUE.items():
        np.testing.assert_allclose(exact_fit.params[k], v, rtol=1e-6, err_msg=k)
    for e in DOMAINS:
        c = exact_fit.summary["domains"][e]["convergence"]
        assert c["status"] == "converged" and c["rms_residual"] < 1e-8 and c["starts_at_best"] >= 1


def test_noisy_recovery_within_tolerance():
    fitted = fit_law(make_table(noise=0.005, seed=1), "bimix")
    np.testing.assert_allclose(fitted.params["beta"], TRUE["beta"], rtol=0.05)
    np.testing.assert_allclose(fitted.params["alpha"], TRUE["alpha"], atol=0.01)
    np.testing.assert_allclose(fitted.params["c"], TRUE["c"], rtol=0.05)
    r, s = np.array([0.3, 0.3, 0.4]), 30000.0  # Predictions matter more than parameters.
    want = [bimix_loss(TRUE, r, s, e) for e in range(3)]
    np.testing.assert_allclose(fitted.predict(r, s), want, rtol=0.005)


def test_domain_that_ignores_its_share_fits_alpha_at_the_bound():
    params = {k: v.copy() for k, v in TRUE.items()}
    params["alpha"][1] = 0.0
    fitted = fit_law(make_table(params), "bimix")
    assert fitted.params["alpha"][1] == pytest.approx(ALPHA_MIN)
    np.testing.assert_allclose(fitted.params["a"][1], params["a"][1], rtol=1e-4)
    np.testing.assert_allclose(fitted.params["alpha"][[0, 2]], params["alpha"][[0, 2]], rtol=1e-6)


def test_huber_resists_outliers_better_than_least_squares():
    table = make_table(noise=0.002, seed=2)
    bad = np.random.default_rng(3).random(len(table)) < 0.05  # 5% of the measurements 30% too high.
    table = loss_table.from_rows([{**r, "loss": r["loss"] * (1.3 if b else 1.0)}
                                  for r, b in zip(table.to_rows(), bad)])
    err = {loss: np.abs(fit_law(table, "bimix", loss=loss).params["beta"] / TRUE["beta"] - 1).max()
           for loss in ("l2", "huber")}
    assert err["huber"] < 0.03 and err["huber"] < err["l2"] / 3


def test_zero_proportion_rows_are_excluded_and_counted():
    mixtures = MIXTURES + [(0.0, 0.5, 0.5)]
    fitted = fit_law(make_table(mixtures=mixtures), "bimix")
    assert fitted.summary["rows_excluded_zero_proportion"] == len(STEPS)
    assert fitted.summary["domains"]["code"]["data"]["rows_excluded_zero_proportion"] == len(STEPS)
    np.testing.assert_allclose(fitted.params["alpha"], TRUE["alpha"], rtol=1e-6)  # The junk rows were not used.


def test_predict_at_zero_own_proportion_is_an_input_error(exact_fit):
    with pytest.raises(InputError, match="p_books = 0"):
        exact_fit.predict([0.5, 0.0, 0.5], 1000.0)


def test_single_distinct_proportion_is_an_input_error():
    mixtures = [(0.25, 0.25, 0.5), (0.25, 0.5, 0.25)]
    with pytest.raises(InputError, match=r"p_code = 0.25 \(runs run0, run1\).*alpha is not identifiable"):
        fit_law(make_table(mixtures=mixtures), "bimix")


def test_too_few_points_is_an_input_error():
    with pytest.raises(InputError, match="2 rows with p_code > 0, fewer than the 4 BiMix parameters"):
        fit_law(make_table(mixtures=MIXTURES[:2], steps=[1000.0]), "bimix")
    with pytest.raises(InputError, match="2 distinct steps; beta needs at least 3"):
        fit_law(make_table(steps=[1000.0, 2000.0]), "bimix")


def test_eval_domain_must_be_a_training_domain():
    rows = make_table().to_rows()
    rows[0]["eval_domain"] = "wiki"
    with pytest.raises(InputError, match="eval domain 'wiki' is not a training domain.*--law=dml"):
        fit_law(loss_table.from_rows(rows), "bimix")


def test_save_load_round_trip(exact_fit, tmp_path):
    path = tmp_path / "fit.json"
    exact_fit.save(path)
    loaded = FittedLaw.load(path)
    assert loaded.law == "bimix" and loaded.eval_domains == DOMAINS and loaded.target_step is None
    np.testing.assert_array_equal(loaded.predict([0.2, 0.3, 0.5], 5000.0), exact_fit.predict([0.2, 0.3, 0.5], 5000.0))
    assert loaded.summary["domains"]["web"]["params"]["beta"] == pytest.approx(TRUE["beta"][2], rel=1e-6)
    obj = exact_fit.to_json()
    obj["params"]["alpha"][0] = -0.1
    with pytest.raises(InputError, match="'alpha' must be positive"):
        FittedLaw.from_json(obj)
