"""Data Mixing Laws (Ye et al.): formula, gauge, recovery (direct and through the step law), data checks."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.errors import InputError
from bimix_jax.laws import FittedLaw, fit_law, get_law
from bimix_jax.laws.dml import sum_zero_basis

DOMAINS = ("code", "books", "web")
EVALS = ("code", "books", "web", "wiki")  # wiki is not a training domain.
T_EXP = np.array([[-3.0, 1.0, 0.5], [0.8, -2.5, 0.4], [0.3, 0.6, -1.8], [-0.4, -0.9, -1.2]])
TRUE = {"c": np.array([1.0, 2.6, 2.7, 2.2]), "k": np.array([0.9, 0.7, 0.6, 0.8]),
        "t": T_EXP - T_EXP.mean(axis=1, keepdims=True)}  # Sum-zero gauge, as fitted.
MIXTURES = [m for m in itertools.product(np.arange(0, 1.01, 0.25), repeat=3) if abs(sum(m) - 1) < 1e-9]  # 15
TARGET = 80000.0


def dml_loss(r, e, params=TRUE):
    return params["c"][e] + params["k"][e] * np.exp(params["t"][e] @ np.asarray(r))


def make_table(mixtures=MIXTURES, steps=(TARGET,), noise=0.0, seed=0, step_curve=False):
    """Rows at `steps`; with step_curve, L(s) = E + (B/s)^beta and L(TARGET) = the Data Mixing Law."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, mix in enumerate(mixtures):
        for s in steps:
            for e, dom in enumerate(EVALS):
                loss = dml_loss(mix, e)
                if step_curve:
                    b, beta = 2000.0 * (1 + 0.1 * e), 0.5 + 0.05 * k % 3
                    loss = loss - (b / TARGET) ** beta + (b / s) ** beta
                rows.append({"run": f"mix{k}", "step": float(s), **{f"p_{d}": m for d, m in zip(DOMAINS, mix)},
                             "eval_domain": dom, "loss": loss * float(np.exp(noise * rng.standard_normal()))})
    return loss_table.from_rows(rows)


def check_predictions(fitted, rtol):
    rng = np.random.default_rng(7)
    for r in rng.dirichlet(np.ones(3), size=20):
        np.testing.assert_allclose(fitted.predict(r, fitted.target_step), [dml_loss(r, e) for e in range(4)], rtol=rtol)


def test_predict_formula_and_gauge_invariance():
    law = get_law("dml")(DOMAINS, EVALS)
    params = {k: jnp.asarray(v) for k, v in TRUE.items()}
    r = jnp.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(law.predict(params, r, TARGET), [dml_loss(r, e) for e in range(4)], rtol=1e-6)
    shifted = dict(params, t=params["t"] + 1.7, k=params["k"] * np.exp(-1.7))  # Same law on the simplex.
    np.testing.assert_allclose(law.predict(shifted, r, TARGET), law.predict(params, r, TARGET), rtol=1e-5)
    q = sum_zero_basis(5)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(q.sum(axis=0), 0.0, atol=1e-12)


def test_noise_free_recovery_with_zeros_and_a_non_training_eval_domain():
    fitted = fit_law(make_table(), "dml")
    assert fitted.target_step == TARGET and fitted.eval_domains == EVALS
    for k, v in TRUE.items():
        np.testing.assert_allclose(fitted.params[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    assert fitted.summary["points_observed"] == 15 * 4 and fitted.summary["points_step_law"] == 0
    assert set(fitted.summary["source_by_run"].values()) == {"observed"}


def test_noisy_recovery_within_tolerance():
    fitted = fit_law(make_table(noise=0.003, seed=1), "dml")
    check_predictions(fitted, rtol=0.01)
    np.testing.assert_allclose(fitted.params["t"], TRUE["t"], atol=0.3)


def test_nested_pipeline_extrapolates_runs_with_the_step_law():
    steps = np.geomspace(1000, 60000, 12).round()
    fitted = fit_law(make_table(steps=steps, step_curve=True), "dml", target_step=TARGET)
    summary = fitted.summary
    assert summary["points_step_law"] == 15 * 4 and summary["points_observed"] == 0
    assert set(summary["source_by_run"].values()) == {"step_law"} and summary["step_law"]["all_converged"]
    assert summary["step_law"]["max_rmse_log"] < 1e-6
    check_predictions(fitted, rtol=1e-5)
    # At a step the table has, the observed losses are used and the sources say so.
    at_60k = fit_law(make_table(steps=steps, step_curve=True), "dml")
    assert at_60k.target_step == 60000.0 and set(at_60k.summary["source_by_run"].values()) == {"observed"}


def test_predict_elsewhere_than_the_target_step_is_an_input_error(tmp_path):
    fitted = fit_law(make_table(), "dml")
    fitted.save(tmp_path / "dml.json")
    loaded = FittedLaw.load(tmp_path / "dml.json")
    assert loaded.target_step == TARGET
    with pytest.raises(InputError, match="fitted for step 80000 only"):
        loaded.predict([0.2, 0.3, 0.5], 1000.0)


def test_too_few_mixtures_is_an_input_error():
    with pytest.raises(InputError, match="3 distinct mixtures at step 80000, fewer than the 4 free Data Mixing Law parameters"):
        fit_law(make_table(mixtures=MIXTURES[:3]), "dml")


def test_constant_proportion_is_an_input_error():
    no_code = [m for m in MIXTURES if m[0] == 0]
    with pytest.raises(InputError, match="p_code is 0 in every run used; its coefficient t is not identifiable"):
        fit_law(make_table(mixtures=no_code), "dml")


def test_step_law_needs_three_checkpoints():
    with pytest.raises(InputError, match=r"run 'mix0', eval domain 'code': 2 checkpoint\(s\) to extrapolate"):
        fit_law(make_table(steps=(1000.0, 2000.0), step_curve=True), "dml", target_step=TARGET)
    with pytest.raises(InputError, match="--target_step"):
        fit_law(make_table(), "dml", target_step=-5.0)


def test_older_name_ye_is_still_read(tmp_path):
    """Fit files, flags and configs written when the Data Mixing Law was named 'ye' keep working."""
    import json

    from bimix_jax.laws import select
    from bimix_jax.pipeline.spec import PipelineSpec

    fitted = fit_law(make_table(), "ye")
    assert fitted.law == "dml"
    obj = fitted.to_json()
    obj["law"] = "ye"
    (tmp_path / "old.json").write_text(json.dumps(obj))
    old = FittedLaw.load(tmp_path / "old.json")
    assert old.law == "dml"
    np.testing.assert_allclose(old.predict([0.2, 0.3, 0.5], TARGET), fitted.predict([0.2, 0.3, 0.5], TARGET))
    assert select.candidate("ye_unbounded") == ("dml", {"bounded": False})
    assert PipelineSpec(law="ye").law == "dml"
