"""The nested prediction: size and step laws recover known parameters, the chain predicts a synthetic target,
degenerate inputs are one-line errors, and on real runs the backtested first step beats fitting every step."""

import dataclasses

import numpy as np
import pytest

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError
from bimix_jax.laws import nested, nested_backtest, nested_uncertainty, sizelaw, steplaw_tied

N = [18.9e6, 85.1e6, 201.5e6]
SIZES = {"S": 1e6, "M": 4e6, "L": 16e6}


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


def test_power_size_law_per_domain_and_single_size_curves():
    # Domain a decays with alpha 0.1, domain b with 0.25; the third curve of each has one size only.
    pts = []
    for d, alpha in (("a", 0.1), ("b", 0.25)):
        for c, b in enumerate((3.0, 5.0, 9.0)):
            for n in (N[:1] if c == 2 else N[:2]):
                pts.append(((c, d), d, n, b * n ** -alpha))
    law = sizelaw.fit_size_law(pts, form="power", tie_alpha="domain")
    assert law.alpha == pytest.approx({"a": 0.1, "b": 0.25}, rel=1e-9)
    np.testing.assert_allclose(law.predict(N[2]), [b * N[2] ** -a for a in (0.1, 0.25) for b in (3.0, 5.0, 9.0)],
                               rtol=1e-9)
    grow = [((0, "a"), "a", n, 2.0 * n ** 0.1) for n in N[:2]]
    with pytest.raises(InputError, match="grows with model size"):
        sizelaw.fit_size_law(grow, form="power")


def test_tied_step_law_recovers_shared_exponent():
    s = np.arange(1000.0, 30001.0, 1000.0)
    steps, losses, ties = [], [], []
    for k, (e, c) in enumerate([(2.0, 40.0), (3.0, 25.0), (1.5, 60.0)]):
        steps.append(s)
        losses.append(e + c * s ** -0.45)
        ties.append(0)
    fit = steplaw_tied.fit(steps, losses, ties)
    np.testing.assert_allclose(fit.beta, 0.45, rtol=1e-4)
    np.testing.assert_allclose(fit.predict(1e5), [e + c * 1e5 ** -0.45 for e, c in [(2.0, 40.0), (3.0, 25.0),
                                                                                   (1.5, 60.0)]], rtol=1e-5)
    assert np.all(fit.E >= 0) and np.all(fit.C >= 0)


def test_backtested_first_step_skips_an_early_transient():
    s = np.arange(500.0, 40001.0, 500.0)
    # A power law after step 5000; before it, a warm-up bump the law cannot describe.
    clean = 2.0 + 30.0 * s ** -0.5
    losses = [clean * (1 + 0.3 * np.exp(-s / 1500.0)) * (1 + 0.01 * k) for k in range(4)]
    out = steplaw_tied.backtest_min_step([s] * 4, losses, [0, 0, 1, 1], ratio=2.0)
    assert out["min_step"] >= 3000, out
    fit = steplaw_tied.fit([s[s >= out["min_step"]]] * 4, [y[s >= out["min_step"]] for y in losses], [0, 0, 1, 1])
    every = steplaw_tied.fit([s] * 4, losses, [0, 0, 1, 1])
    truth = np.array([(2.0 + 30.0 * 8e4 ** -0.5) * (1 + 0.01 * k) for k in range(4)])
    assert np.max(np.abs(fit.predict(8e4) / truth - 1)) < np.max(np.abs(every.predict(8e4) / truth - 1)) / 3


def _synthetic_table(domains=("a", "b"), n_mix=5, steps=np.arange(200.0, 4001.0, 200.0)):
    """Loss = B_m,e N^-alpha_e * (1 + 3 s^-0.5): a power size law times a step law, exactly."""
    rng = np.random.default_rng(0)
    d = len(domains)
    mixes = rng.dirichlet(np.ones(d), n_mix)
    alpha = {e: 0.1 + 0.05 * i for i, e in enumerate(domains)}
    rows = []
    for size, n in SIZES.items():
        for m, r in enumerate(mixes):
            for s in steps:
                for i, e in enumerate(domains):
                    b = 6.0 * (1.2 - r[i]) * (1 + 0.1 * i)
                    rows.append({"run": f"{size}_m{m}", "model_size": size, "step": s,
                                 **{f"p_{x}": p for x, p in zip(domains, r)}, "eval_domain": e,
                                 "loss": b * n ** -alpha[e] * (1 + 3 * s ** -0.5)})
    return lt.from_rows(rows), mixes, alpha


def test_nested_chain_predicts_a_synthetic_target():
    table, mixes, alpha = _synthetic_table()
    opts = nested.NestedOptions(min_step=None, max_step=2000.0, law="loglinear")
    res = nested.predict_nested(table, small_sizes=["S", "M"], target_size="L", target_step=4000.0, options=opts,
                                sizes=SIZES)
    assert res["size_law"]["alpha"] == pytest.approx(alpha, rel=1e-3)
    target = nested.observed_at(table, "L", 4000.0)
    level = nested_backtest._level(res, target)
    assert level["points"] == 10 and level["mre_pct"] < 0.05, level
    rows = nested.point_rows(res, table, "L", 4000.0)
    assert {r["stage"] for r in rows} == {"step", "size", "mixing"}
    assert all(r["observed"] is not None for r in rows)  # every point of the synthetic table was measured
    boot = nested_uncertainty.bootstrap(table, res, target_size="L", target_step=4000.0, options=opts, n_boot=4,
                                        sizes=SIZES)
    nested_uncertainty.attach_intervals(rows, res, boot, table, 4000.0)
    assert all(r["lo"] is not None for r in rows if r["stage"] == "mixing")
    assert all(r["lo"] <= r["hi"] for r in rows if r["lo"] is not None)


def test_degenerate_inputs_are_one_line_errors():
    table, _, _ = _synthetic_table()
    kw = dict(target_size="L", target_step=4000.0, sizes=SIZES)
    with pytest.raises(InputError, match="at least two small model sizes"):
        nested.predict_nested(table, small_sizes=["S"], **kw)
    one_run = table.subset(np.isin(table.run, ["S_m0", "M_m0"]))
    with pytest.raises(InputError, match="mixture"):
        nested.predict_nested(one_run, small_sizes=["S", "M"], **kw)
    with pytest.raises(InputError, match="checkpoint"):
        nested.predict_nested(table, small_sizes=["S", "M"], options=nested.NestedOptions(max_step=400.0), **kw)
    with pytest.raises(InputError, match="--runs"):
        nested.predict_nested(table, small_sizes=["S", "M"], runs=["nothing*"], **kw)
    with pytest.raises(InputError, match="min_step"):
        nested.NestedOptions(min_step=5000.0, max_step=2000.0).check()


def test_many_domains_fit_the_step_and_size_stages():
    domains = tuple(f"d{i}" for i in range(22))
    table, _, _ = _synthetic_table(domains=domains, n_mix=24, steps=np.arange(200.0, 8001.0, 200.0))
    curves, _ = nested.collect(table, ["S", "M"], 4000.0)
    opts = nested.NestedOptions()
    step = nested.step_stage(curves, 8000.0, opts)
    law, pred = nested.size_stage(curves, step["pred"], SIZES["L"], opts, SIZES)
    assert len(curves) == 2 * 24 * 22 and pred.shape == (24 * 22,) and np.all(np.isfinite(pred))


def test_backtested_default_beats_fitting_every_step_on_real_runs(pile3_path):
    table = lt.read_csv(pile3_path)
    split = nested_backtest.Split.parse("70M+160M<=15000->160M@30000")
    new = nested_backtest.score(table, split, nested.NestedOptions())
    old = nested_backtest.score(table, split, nested_backtest.PREVIOUS)
    assert new["min_step"] > 500 and new["level"]["points"] == 18
    assert new["level"]["mre_pct"] < old["level"]["mre_pct"] / 2, (new, old)


def test_split_syntax():
    s = nested_backtest.Split.parse("70M+160M<=15000->410M@30000")
    assert s == nested_backtest.Split(("70M", "160M"), 15000.0, "410M", 30000.0) and s.name.startswith("70M+160M")
    with pytest.raises(InputError, match="SIZES<=MAX_STEP"):
        nested_backtest.Split.parse("70M->410M")
    assert dataclasses.replace(nested.NestedOptions(), law="kernel").law == "kernel"


def test_one_observed_target_run_is_scored_without_r2():
    table, _, _ = _synthetic_table()
    res = nested.predict_nested(table, small_sizes=["S", "M"], target_size="L", target_step=4000.0, sizes=SIZES,
                                options=nested.NestedOptions(law="loglinear"))
    one = nested.observed_at(table, "L", 4000.0)
    one = one.subset(one.run == one.runs[0])
    score = nested.score_against(res["fitted"], one)
    assert score["mean"]["r2_log"] is None and score["aggregate"]["runs"] == 1
    assert score["worst_point"]["re_pct"] == pytest.approx(100 * np.max(np.abs(score["predicted"] / one.loss - 1)))
