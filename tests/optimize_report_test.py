"""The optimizer's report: constraints, binding bounds, references, warnings, bad input, bootstrap intervals.

Float64 throughout (`jax.enable_x64`, module fixture), as in `optimize_test.py`.
"""

import dataclasses

import jax
import numpy as np
import pytest

from bimix_jax.errors import InputError
from bimix_jax.laws.fit import fit_law
from bimix_jax.mixture import constraints, optimize, uncertainty
from tests import mixture_testlib as tl


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def exact_double(monkeypatch):
    """The BiMix double gets the real law's treatment: the exact solver and the default positive floor."""
    monkeypatch.setattr(optimize, "EXACT_LAWS", optimize.EXACT_LAWS | {tl.BIMIX_DOUBLE})
    monkeypatch.setitem(constraints.DEFAULT_MIN_FLOOR, tl.BIMIX_DOUBLE, 1e-4)


def law3(seed=10):
    return tl.bimix_fit(tl.random_bimix_params(np.random.default_rng(seed), 3), tl.domains(3))


def test_report_shows_binding_cap_next_to_the_unconstrained_optimum(exact_double):
    fitted = law3()
    free = optimize.optimize_mixture(fitted, step=2e4)
    top = max(free["mixture"], key=free["mixture"].get)
    cap = 0.8 * free["mixture"][top]
    bounds = constraints.make_bounds(fitted.train_domains, caps={top: cap}, min_floor=1e-4)
    rep = optimize.optimize_mixture(fitted, step=2e4, bounds=bounds)
    assert rep["solver"]["name"] == "exact" and rep["solver"]["converged"]
    assert rep["binding"] == {top: ["cap"]} and rep["mixture"][top] == pytest.approx(cap, abs=1e-15)
    assert rep["shadow_prices"][top] > 0  # relaxing the cap would lower the predicted loss
    un = rep["unconstrained"]
    assert un["mixture"] == pytest.approx(free["mixture"], abs=1e-12)
    assert un["cost_of_constraints"] > 0
    assert any(top in w and "cap" in w for w in rep["warnings"])
    assert sum(rep["mixture"].values()) == pytest.approx(1.0, abs=1e-12)
    # Totals are the weighted predictions of the law at the reported mixtures.
    r = np.array([rep["mixture"][d] for d in fitted.train_domains])
    p = {k: np.asarray(v) for k, v in fitted.params.items()}
    expected = tl.bimix_objective_np(p, r[None], 2e4, np.full(3, 1 / 3))[0]
    assert rep["predicted_loss"]["optimum"]["total"] == pytest.approx(expected)
    assert free["gain"]["vs_uniform"] > 0 and "unconstrained" not in free and free["binding"] == {}


def test_repetition_caps_epochs_and_natural_reference(exact_double):
    fitted = law3(11)
    tokens = {"d0": 1e9, "d1": 4e9, "d2": 2e10}
    bounds = constraints.make_bounds(fitted.train_domains, domain_tokens=tokens, token_budget=1e10,
                                     max_epochs=2.0, min_floor=1e-4)
    np.testing.assert_allclose(bounds.hi, [0.2, 0.8, 1.0])
    rep = optimize.optimize_mixture(fitted, step=1e4, bounds=bounds)
    assert rep["references"]["natural"] == pytest.approx({"d0": 1 / 25, "d1": 4 / 25, "d2": 20 / 25})
    assert all(e <= 2.0 + 1e-9 for e in rep["epochs"]["optimum"].values())
    for d, tags in rep["binding"].items():
        assert tags == ["repetition"] and rep["epochs"]["optimum"][d] == pytest.approx(2.0)
    assert "vs_natural" in rep["gain"]


def test_corner_and_minimum_floor_warnings(exact_double):
    fitted = law3(12)
    rep = optimize.optimize_mixture(fitted, step=1e4, weights={"d1": 1.0})
    assert rep["weights"] == {"d0": 0.0, "d1": 1.0, "d2": 0.0}
    assert rep["mixture"]["d1"] == pytest.approx(1 - 2e-4)
    assert rep["binding"] == {"d0": ["min_floor"], "d2": ["min_floor"]}
    assert any("corner" in w for w in rep["warnings"]) and any("minimum proportion" in w for w in rep["warnings"])


def test_projected_gradient_report_equals_exact_and_real_bimix_law_agrees(exact_double):
    fitted = law3(13)
    bounds = constraints.make_bounds(fitted.train_domains, floors={"d0": 0.3}, min_floor=1e-4)
    a = optimize.optimize_mixture(fitted, step=5e3, bounds=bounds, weights={"d0": 1, "d1": 2, "d2": 3})
    b = optimize.optimize_mixture(fitted, step=5e3, bounds=bounds, weights={"d0": 1, "d1": 2, "d2": 3},
                                  solver="projected_gradient")
    assert b["solver"]["name"] == "projected_gradient" and b["solver"]["converged"]
    assert a["mixture"] == pytest.approx(b["mixture"], abs=1e-6)
    import bimix_jax.laws  # noqa: F401  (registers the real 'bimix')

    real = dataclasses.replace(fitted, law="bimix")
    c = optimize.optimize_mixture(real, step=5e3, bounds=bounds, weights={"d0": 1, "d1": 2, "d2": 3})
    assert c["solver"]["name"] == "exact" and c["mixture"] == pytest.approx(a["mixture"], abs=1e-14)


def test_law_fitted_at_one_step():
    fitted = tl.dml_fit(np.random.default_rng(14), 3, step=30000.0)
    assert optimize.resolve_step(fitted) == 30000.0
    with pytest.raises(InputError, match="fitted for step 30000 only"):
        optimize.resolve_step(fitted, 10000.0)
    rep = optimize.optimize_mixture(fitted, step=30000.0)
    assert rep["solver"]["name"] == "projected_gradient" and rep["solver"]["converged"]
    assert optimize.resolve_step(law3(), token_budget=2e9, tokens_per_step=1e5) == 2e4
    with pytest.raises(InputError, match="--steps=-5 must be a positive"):
        optimize.resolve_step(law3(), -5.0)
    with pytest.raises(InputError, match="no target step"):
        optimize.resolve_step(law3())
    with pytest.raises(InputError, match="diverges at a zero proportion; give a positive --min_floor"):
        import bimix_jax.laws  # noqa: F401

        real = dataclasses.replace(law3(), law="bimix")
        no_floor = constraints.make_bounds(real.train_domains, min_floor=0.0)
        optimize.optimize_mixture(real, step=1e4, bounds=no_floor)
    with pytest.raises(InputError, match="--solver=exact needs a bimix law"):
        optimize.optimize_mixture(fitted, step=30000.0, solver="exact")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(floors={"d0": 0.6, "d1": 0.5}), "--floors .* sum to 1.1 > 1"),
        (dict(caps={"d0": 0.2, "d1": 0.2, "d2": 0.2}), "sum to 0.6 < 1"),
        (dict(floors={"d0": 0.3}, caps={"d0": 0.2}), "domain d0: lower bound 0.3 from --floors is above"),
        (dict(floors={"dx": 0.1}), "--floors: unknown domain 'dx'"),
        (dict(caps={"d0": -0.1}), r"--caps: d0=-0.1 must be a finite number in \[0, 1\]"),
        (dict(domain_tokens={"d0": -5.0}), "--domain_tokens: d0=-5"),
        (dict(max_epochs=2.0), "--max_epochs needs --domain_tokens and --token_budget"),
        (dict(domain_tokens={"d0": 1e6}, token_budget=-1.0), "--token_budget=-1 must be a positive"),
        (dict(domain_tokens={"d0": 1e6, "d1": 1e6, "d2": 1e6}, token_budget=1e9, max_epochs=1.0), "< 1"),
        (dict(min_floor=0.5), "--min_floor=0.5 must be in"),
    ],
)
def test_infeasible_or_bad_constraints_are_one_line_errors(kwargs, match):
    with pytest.raises(InputError, match=match) as err:
        constraints.make_bounds(tl.domains(3), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights={"nope": 1.0}), "--weights: unknown eval domain 'nope'"),
        (dict(weights={"d0": -1.0}), "--weights: d0=-1"),
        (dict(weights={"d0": 0.0}), "--weights are all zero"),
        (dict(reference={"d0": 0.5, "d1": 0.5}), "--reference lacks domains d2"),
        (dict(reference={"d0": 0.5, "d1": 0.5, "d2": 0.5}), "--reference: proportions \\[0.5, 0.5, 0.5\\] must be 3 weights"),
        (dict(solver="newton"), "--solver='newton' is unknown"),
        (dict(megatron_template="data/x"), "must contain {domain}"),
    ],
)
def test_bad_objective_input_is_one_line_error(kwargs, match, exact_double):
    with pytest.raises(InputError, match=match):
        optimize.optimize_mixture(law3(), step=1e4, **kwargs)


@pytest.mark.parametrize("text, match", [("d0", "is not domain=value"), ("d0=x", "is not a number"),
                                         ("d0=1,d0=2", "given twice")])
def test_parse_domain_values(text, match):
    assert constraints.parse_domain_values(" d0=0.5, d1 = 2e-1 ,", "--caps") == {"d0": 0.5, "d1": 0.2}
    assert constraints.parse_domain_values("", "--caps") is None
    with pytest.raises(InputError, match=match):
        constraints.parse_domain_values(text, "--caps")


# ---------------------------------------------------------------------------------------------------------
# Bootstrap intervals (real fitter on a table generated by a known BiMix law).


def test_bootstrap_intervals_cover_the_true_optimum():
    import bimix_jax.laws  # noqa: F401

    true = tl.TRUE_BIMIX
    table = tl.synthetic_table(true)
    fitted = fit_law(table, "bimix")
    bounds = constraints.make_bounds(fitted.train_domains, min_floor=1e-4)
    w = np.full(3, 1 / 3)
    refs = {"uniform": np.full(3, 1 / 3), "reference": np.array([0.6, 0.2, 0.2])}
    out = uncertainty.bootstrap_optimum(table, fitted, n_boot=16, seed=1, step=3e4, weights_E=w, bounds=bounds,
                                        references=refs)
    assert out["n_used"] == 16 and out["solver"] == "exact" and out["max_kkt_residual"] < 1e-9
    true_fit = tl.bimix_fit(true, fitted.train_domains, law="bimix")
    r_true = optimize.solve(true_fit, step=3e4, weights_E=w, bounds=bounds).r
    for i, d in enumerate(fitted.train_domains):
        lo5, mid, hi95 = out["mixture"][d]
        assert 1e-4 <= lo5 <= mid <= hi95 <= 1.0
        assert lo5 - 0.02 <= r_true[i] <= hi95 + 0.02
    assert out["gain"]["vs_reference"][0] > 0  # this reference is clearly worse under every replicate
    other = dataclasses.replace(fitted, train_domains=("x", "y", "z"))
    with pytest.raises(InputError, match="--losses has training domains"):
        uncertainty.bootstrap_optimum(table, other, n_boot=2, step=3e4, weights_E=w, bounds=bounds,
                                      references=refs)
