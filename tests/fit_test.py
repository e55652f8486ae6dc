"""The generic fitter: variable-projection grid, vmapped multi-start LM, options, bootstrap over runs."""

import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.errors import InputError
from bimix_jax.laws import fit, fit_bootstrap, fit_law

from bimix_jax.laws import levenberg_marquardt as lm
DOMAINS = ("code", "books", "web")
TRUE = {"a": np.array([900.0, 150.0, 120.0]), "c": np.array([1.1, 2.9, 2.8]),
        "alpha": np.array([0.11, 0.03, 0.06]), "beta": np.array([0.8, 0.55, 0.5])}
MIXTURES = [(0.1, 0.3, 0.6), (0.25, 0.25, 0.5), (0.5, 0.2, 0.3), (0.2, 0.6, 0.2), (0.4, 0.1, 0.5), (0.3, 0.4, 0.3)]
STEPS = np.geomspace(500, 60000, 20).round()


def make_table(noise=0.0, seed=0, mixtures=MIXTURES):
    rng = np.random.default_rng(seed)
    rows = []
    for k, mix in enumerate(mixtures):
        for s in STEPS:
            for e, dom in enumerate(DOMAINS):
                loss = mix[e] ** -TRUE["alpha"][e] * (TRUE["a"][e] * s ** -TRUE["beta"][e] + TRUE["c"][e])
                rows.append({"run": f"run{k}", "step": float(s), **{f"p_{d}": m for d, m in zip(DOMAINS, mix)},
                             "eval_domain": dom, "loss": loss * float(np.exp(noise * rng.standard_normal()))})
    return loss_table.from_rows(rows)


@pytest.fixture(scope="module")
def noisy():
    return make_table(noise=0.01, seed=4)


def test_linear_pair_grid_solves_the_linear_coefficients_exactly():
    x = np.geomspace(0.1, 10, 30)
    y = 2.5 * x ** -0.7 + 1.3  # y = a x' + c with x' = x^-0.7
    betas = np.array([0.3, 0.7, 1.1])
    w = np.stack([np.ones(30), np.r_[np.ones(15), np.zeros(15)]])  # Two weight vectors (e.g. resamples).
    a, c, cost = lm.linear_pair_grid((1.0 / y)[None, :], x[None, :] ** -betas[:, None], w)
    i, j = lm.best_cells(cost, 2)
    assert a.shape == (2, 1, 3) and np.all(j[:, 0] == 1) and np.all(np.abs(cost[:, 0, 1]) < 1e-12)
    np.testing.assert_allclose(lm.take(a, i, j)[:, 0], 2.5, rtol=1e-10)
    np.testing.assert_allclose(lm.take(c, i, j)[:, 0], 1.3, rtol=1e-10)
    assert np.all(a >= 0) and np.all(c >= 0)  # Positivity is enforced on every cell.


def test_pad_rows_buckets():
    assert [lm.pad_rows(n) for n in (1, 8, 9, 100, 128, 129, 700)] == [8, 8, 16, 128, 128, 256, 768]


def test_fit_is_deterministic_and_domains_do_not_interact(noisy):
    one = fit_law(noisy, "bimix")
    two = fit_law(noisy, "bimix")
    for k in one.params:
        np.testing.assert_array_equal(one.params[k], two.params[k])
    shuffled = fit_law(noisy, "bimix", eval_domains=["web", "code", "books"])  # Vmapped: order is irrelevant.
    assert shuffled.eval_domains == ("web", "code", "books")
    for k in one.params:
        np.testing.assert_allclose(shuffled.params[k], one.params[k][[2, 0, 1]], rtol=1e-9)


def test_convergence_report(noisy):
    fitted = fit_law(noisy, "bimix")
    for e in DOMAINS:
        c = fitted.summary["domains"][e]["convergence"]
        assert c["status"] == "converged" and 0 < c["iterations"] < fitted.summary["fitter"]["maxiter"]
        assert c["starts"] == 4 and c["starts_at_best"] >= 1 and c["grad_norm"] < 1e-3
        assert 0.005 < c["rms_residual"] < 0.02  # The 1% noise.
        lo, hi = c["start_cost_range"]
        assert lo == pytest.approx(c["cost"]) and hi >= lo
    assert fitted.summary["fitter"]["method"].startswith("jaxopt.LevenbergMarquardt")


def test_maxiter_cap_is_reported_not_hidden(noisy):
    fitted = fit_law(noisy, "bimix", maxiter=1)
    statuses = {fitted.summary["domains"][e]["convergence"]["status"] for e in DOMAINS}
    assert statuses == {"maxiter"}


def test_float32_agrees_with_float64(noisy):
    f64, f32 = fit_law(noisy, "bimix"), fit_law(noisy, "bimix", dtype="float32")
    for k in f64.params:
        np.testing.assert_allclose(f32.params[k], f64.params[k], rtol=2e-3, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("options, message", [
    ({"loss": "l1"}, "loss 'l1' is not supported"),
    ({"n_starts": 0}, "n_starts=0 must be"),
    ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
    ({"target_step": 5.0}, "law bimix takes no option 'target_step'"),
    ({"eval_domains": ["wiki"]}, "has no eval_domain 'wiki'"),
    ({"model_size": "1B"}, "no rows with model_size=1B"),
])
def test_bad_options_are_input_errors(noisy, options, message):
    with pytest.raises(InputError, match=message):
        fit_law(noisy, "bimix", **options)
    with pytest.raises(InputError, match="unknown law 'regmix'"):
        fit_law(noisy, "regmix")


def test_bootstrap_is_one_batched_fit_over_run_resamples(noisy):
    fitted, boot = fit_bootstrap(noisy, "bimix", n_boot=32, seed=3)
    assert set(boot) == {"a", "c", "alpha", "beta"} and boot["beta"].shape == (32, 3)
    np.testing.assert_allclose(fitted.params["beta"], fit_law(noisy, "bimix").params["beta"])  # Full-table fit.
    again = fit_bootstrap(noisy, "bimix", n_boot=32, seed=3)[1]
    other = fit_bootstrap(noisy, "bimix", n_boot=32, seed=4)[1]
    np.testing.assert_array_equal(boot["alpha"], again["alpha"])
    assert not np.array_equal(boot["alpha"], other["alpha"])
    # The resamples vary, and cover the truth within their 95% range for nearly every parameter.
    assert np.all(boot["beta"].std(axis=0) > 1e-4)
    lo, hi = np.percentile(np.stack([boot[k] for k in TRUE]), [2.5, 97.5], axis=1)
    inside = (lo <= np.stack(list(TRUE.values()))) & (np.stack(list(TRUE.values())) <= hi)
    assert inside.mean() >= 0.75
    summary = fitted.summary["bootstrap"]
    assert summary["n_boot"] == 32 and summary["unit"] == "run" and summary["non_finite"] == 0
    assert summary["distinct_resamples"] > 16
    assert min(summary["converged_fraction"].values()) == 1.0


def test_bootstrap_redraws_resamples_that_cannot_identify_the_law():
    # Only 3 runs: a resample drawing one run three times has a single proportion per domain.
    table = make_table(noise=0.005, mixtures=MIXTURES[:3])
    prep = fit.prepare(table, "bimix")
    w, redrawn = fit.resample_weights(prep, 40, seed=0)
    assert redrawn > 0
    runs_per_replicate = [len({r for r, wi in zip(prep.problem.runs[0], w[b, 0]) if wi > 0}) for b in range(40)]
    assert min(runs_per_replicate) >= 2
    assert np.all(w[:, :, :len(prep.problem.runs[0])].sum(axis=2) == 3 * len(STEPS))  # 3 runs drawn each time.
    with pytest.raises(InputError, match="n_boot=0 must be a positive integer"):
        fit_bootstrap(table, "bimix", n_boot=0)


def test_a_failed_fit_is_an_input_error_not_garbage(noisy):
    prep = fit.prepare(noisy, "bimix")
    sol = lm.solve(prep.problem.model, prep.x, prep.logy, prep.w, prep.options)
    broken = sol._replace(cost=np.where(np.arange(3) == 1, np.inf, sol.cost))
    with pytest.raises(InputError, match="fit of eval domain 'books' failed"):
        fit.finish(prep, broken)
    nan_theta = sol.theta.copy()
    nan_theta[2, 0] = np.nan
    with pytest.raises(InputError, match="eval domain 'web' failed"):
        fit.finish(prep, sol._replace(theta=nan_theta))


def test_scipy_reduced_baseline_reaches_the_same_optimum(noisy):
    """bench_fit's fair baseline solves the same reduced problem: the same cost per domain, from the same starts."""
    baselines = pytest.importorskip("experiments.baselines")
    from bimix_jax.laws.bimix import ALPHA_MIN

    prep = fit.prepare(noisy, "bimix")
    sol = lm.solve(prep.problem.model, prep.x, prep.logy, prep.w, prep.options)
    for g, (x, y) in enumerate(zip(prep.problem.x, prep.problem.logy)):
        theta0, variant = prep.problem.model.starts(x, y, np.ones((1, len(y))), prep.options.n_starts)
        _, cost, _ = baselines.bimix_reduced_lm(x[:, 0], x[:, 1], y, theta0[0], variant[0], alpha_min=ALPHA_MIN,
                                                ftol=1e-8, xtol=1e-10, gtol=1e-12)
        assert cost == pytest.approx(sol.cost[g], rel=1e-6)
