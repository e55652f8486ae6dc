"""BiMix fitting speed and held-out error: this fitter (jaxopt LM, vmapped) against scipy's TRF loop.

    python -m experiments.bench_fit                      # pile3, 160M; prints one JSON object
    python -m experiments.bench_fit --model_size=70M --n_boot=64 --repeats=15

Same table, same rows (own proportion 0 excluded), same objective (least squares of log loss) for both:
* scipy: `least_squares(method='trf')` per eval domain from 8 seeded starts (the paper's method; the
  setup that reproduces the data README's reference numbers), looped in Python;
* fair (`fair`, first `bimix_reduced`): the same reduced problem on both sides (alpha eliminated in closed form,
  3 parameters): scipy's MINPACK LM with an analytic Jacobian from the same starts and variants, the same
  tolerances; then scipy TRF on the 4-parameter bounded problem from the same 4 grid starts (`bimix_4param_trf`),
  the cold start (compilation included, `bimix_cold_start`) and the bounded Data Mixing Law at 410M against the
  paper's bounded scipy procedure, same starts;
* jax: `bimix_jax.laws.fit.fit_law` (all domains x starts in one compiled call).
Figures: one full fit in a fresh process with compilation (`cold`), in a fresh process whose persistent
compilation cache is warm (`cold_cached`; temporary `BIMIX_JAX_CACHE_DIR`), and in-process once compiled
(`warm`, median of --repeats); per-refit time of --n_boot bootstrap refits over runs (jax: one vmapped
call; scipy: a loop over the same resamples); held-out error of both under both protocols; the fit cost
each reaches. Fresh-process figures give the fit call alone (`fit_s`), a process that imports and fits
(`process_s`, interpreter start and imports included) and the real binary end to end (`binary_s`: the fit_law
binary on the same table: flags, reading, fitting, writing, exit). Timings on a shared machine are noisy: compare
ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                     "..", "shared", "data", "pile3_github_books3_pilecc.csv"),
                              "Loss table CSV.")
_MODEL_SIZE = flags.DEFINE_string("model_size", "160M", "Model size rows to fit.")
_N_BOOT = flags.DEFINE_integer("n_boot", 64, "Bootstrap refits.")
_REPEATS = flags.DEFINE_integer("repeats", 11, "Timings per warm measurement (median reported).")
_COLD_REPEATS = flags.DEFINE_integer("cold_repeats", 3, "Fresh processes per cold measurement (median reported).")
_FRESH = flags.DEFINE_bool("fresh", True, "Also time fresh processes (cold compile, persistent cache, binary).")
_SCIPY_STARTS = 8

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from experiments import cli
cli.setup_jax()
from bimix_jax import loss_table
from bimix_jax.laws import fit
t1 = time.perf_counter()
table = loss_table.read_csv(sys.argv[1])
t2 = time.perf_counter()
fit.fit_law(table, "bimix", model_size=sys.argv[2], dtype=sys.argv[3])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "fit_s": t3 - t2}))
"""


# ----------------------------------------------------------------------------------------------------------
# The scipy reference: per domain, 8 starts, TRF on log-loss residuals, theta = (log a, log c, log alpha, beta).


def _scipy_residual(theta, lr, ls, ly, sw):
    la, lc, lal, beta = theta
    return (np.logaddexp(la - beta * ls, lc) - np.exp(lal) * lr - ly) * sw


def _scipy_starts(ly: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([[np.log(10.0) + rng.normal(), np.log(0.8 * np.exp(ly.min())), np.log(rng.uniform(0.02, 0.5)),
                      rng.uniform(0.1, 0.8)] for _ in range(_SCIPY_STARTS)])


def scipy_fit(table, domains: Sequence[str], weights: dict | None = None, seed: int = 0) -> dict:
    """{domain: (theta, cost)}; rows with own proportion 0 excluded; `weights[domain]` per-row multiplicities."""
    from scipy.optimize import least_squares

    out = {}
    for e in domains:
        j = table.domains.index(e)
        m = (table.eval_domain == e) & (table.p[:, j] > 0)
        lr, ls, ly = np.log(table.p[m, j]), np.log(table.step[m]), np.log(table.loss[m])
        sw = np.sqrt(weights[e]) if weights else np.ones(ly.size)
        best = None
        for x0 in _scipy_starts(ly, seed):
            res = least_squares(_scipy_residual, x0, args=(lr, ls, ly, sw), method="trf")
            if best is None or res.cost < best.cost:
                best = res
        out[e] = (best.x, float(best.cost))
    return out


def scipy_predict(theta, r, s):
    la, lc, lal, beta = theta
    return np.exp(np.logaddexp(la - beta * np.log(s), lc) - np.exp(lal) * np.log(r))


def scipy_heldout(table, report: dict) -> dict:
    """The scipy fit scored on exactly the held-out rows (and domains) of one of our protocol reports."""
    from bimix_jax.laws import protocols

    pts = report["points"]
    key = {(r, s, e) for r, s, e in zip(pts["run"], pts["step"], pts["eval_domain"])}
    held = np.array([(r, s, e) in key for r, s, e in zip(table.run, table.step, table.eval_domain)])
    if report["protocol"] == "mixtures":
        held = np.isin(table.run, report["heldout_runs"])
    train = table.subset(~held)
    domains = list(report["per_domain"])
    fits = scipy_fit(train, domains)
    per_domain, obs_all, pred_all = {}, [], []
    for e in domains:
        j = table.domains.index(e)
        rows = [i for i, (r, s, d) in enumerate(zip(pts["run"], pts["step"], pts["eval_domain"])) if d == e]
        mix = table.mixtures()
        pred = np.array([scipy_predict(fits[e][0], mix[pts["run"][i]][j], pts["step"][i]) for i in rows])
        obs = np.array([pts["observed"][i] for i in rows])
        per_domain[e] = protocols.metrics(obs, pred)
        obs_all.append(obs)
        pred_all.append(pred)
    return {"per_domain": per_domain, **protocols.summarise(per_domain, np.concatenate(obs_all),
                                                           np.concatenate(pred_all))}


# ----------------------------------------------------------------------------------------------------------
# The fair scipy baseline: the same starts as ours (the law's grid), an analytic Jacobian, the same bounds.


def scipy_fit_fair(table, domains: Sequence[str], n_starts: int = 4) -> dict:
    """{domain: (theta, cost)}: TRF from our n_starts grid starts, analytic Jacobian, log alpha/beta >= log 1e-6."""
    from scipy.optimize import least_squares

    from bimix_jax.laws.bimix import BiMixCurve

    curve = BiMixCurve()
    lo, hi = np.array(curve.bounds).T
    out = {}
    for e in domains:
        j = table.domains.index(e)
        m = (table.eval_domain == e) & (table.p[:, j] > 0)
        x0, ls, ly = np.log(table.p[m, j]), np.log(table.step[m]), np.log(table.loss[m])
        x1 = ls - ls.mean()

        def resid(th):
            return np.logaddexp(th[0] - np.exp(th[3]) * x1, th[1]) - np.exp(th[2]) * x0 - ly

        def jac(th):
            b = np.exp(th[3])
            a = th[0] - b * x1
            u = np.logaddexp(a, th[1])
            sa, sc = np.exp(a - u), np.exp(th[1] - u)
            return np.stack([sa, sc, -np.exp(th[2]) * x0, -sa * b * x1], axis=1)

        starts = curve.starts(np.stack([x0, x1], 1), ly, np.ones((1, ly.size)), n_starts)[0]
        best = None
        for th0 in starts:
            res = least_squares(resid, np.clip(th0, lo + 1e-9, hi - 1e-9), jac=jac, bounds=(lo, hi), method="trf")
            if best is None or res.cost < best.cost:
                best = res
        out[e] = (best.x, float(best.cost))
    return out


def bench_reduced(table, repeats: int) -> dict:
    """The fair first ratio: BiMix's reduced least-squares problem (alpha eliminated, 3 parameters) on both sides,
    the same starts and variants (`BiMixProfiledCurve.starts`), the same stopping tolerances, analytic Jacobian
    for scipy's MINPACK LM (`experiments.baselines.bimix_reduced_lm`). Timed: start generation and the solves of
    every eval domain (jax: `lm.solve`, compiled once before timing; its end-to-end `fit_law` is timed too)."""
    from bimix_jax.laws import fit
    from bimix_jax.laws import levenberg_marquardt as lm
    from bimix_jax.laws.bimix import ALPHA_MIN
    from experiments import baselines

    prep = fit.prepare(table, "bimix")
    model, opts = prep.problem.model, prep.options
    groups = [(np.asarray(x), np.asarray(y)) for x, y in zip(prep.problem.x, prep.problem.logy)]

    def scipy_all():
        out = []
        for x, y in groups:
            theta0, variant = model.starts(x, y, np.ones((1, len(y))), opts.n_starts)
            out.append(baselines.bimix_reduced_lm(x[:, 0], x[:, 1], y, theta0[0], variant[0], alpha_min=ALPHA_MIN,
                                                  ftol=opts.ftol, xtol=opts.xtol, gtol=opts.gtol))
        return out

    def jax_solve():
        return lm.solve(model, prep.x, prep.logy, prep.w, opts)

    sol = jax_solve()  # Compiles.
    ref = scipy_all()
    jax_ms = _median_ms(jax_solve, repeats)
    scipy_ms = _median_ms(scipy_all, repeats)
    fit_ms = _median_ms(lambda: fit.fit_law(table, "bimix"), repeats)
    return {"what": "reduced problem (alpha eliminated, 3 parameters), same starts, variants and tolerances; scipy "
                    "least_squares(method='lm') with analytic Jacobian vs lm.solve (warm); fit_law end to end too",
            "model": type(model).__name__, "n_starts": opts.n_starts,
            "tolerances": {"ftol": opts.ftol, "xtol": opts.xtol, "gtol": opts.gtol},
            "scipy_lm_ms": scipy_ms, "jax_solve_ms": jax_ms, "jax_fit_law_ms": fit_ms,
            "speedup": scipy_ms["median_ms"] / jax_ms["median_ms"],
            "speedup_vs_fit_law": scipy_ms["median_ms"] / fit_ms["median_ms"],
            "scipy_evaluations": int(sum(r[2] for r in ref)),
            "jax_iterations": [int(i) for i in sol.iterations],
            "cost": {"jax": [float(c) for c in sol.cost], "scipy": [r[1] for r in ref]}}


def bench_dml(repeats: int) -> dict:
    """Bounded Data Mixing Law at 410M, step 60000: ours against the paper's bounded scipy procedure, same 4 grid starts
    and an analytic Jacobian (`experiments.baselines.dml_bounded_scipy`)."""
    from bimix_jax import loss_table
    from bimix_jax.laws import fit
    from experiments import baselines

    t = loss_table.read_csv(_LOSSES.value, model_size="410M")
    t = t.subset(t.step == 60000.0)
    fitted = fit.fit_law(t, "dml")
    jax_ms = _median_ms(lambda: fit.fit_law(t, "dml"), repeats)

    def scipy_all():
        return {e: baselines.dml_bounded_scipy(t.p[t.eval_domain == e], t.loss[t.eval_domain == e], n_starts=4)
                for e in t.eval_domains}

    ref = scipy_all()
    scipy_ms = _median_ms(scipy_all, max(3, repeats // 2))
    return {"rows": len(t), "jax_warm_fit_ms": jax_ms, "scipy_warm_fit_ms": scipy_ms,
            "fair_speedup": scipy_ms["median_ms"] / jax_ms["median_ms"],
            "cost": {"jax": {e: fitted.summary["domains"][e]["convergence"]["cost"] for e in t.eval_domains},
                     "scipy": {e: ref[e]["cost"] for e in t.eval_domains}}}


# ----------------------------------------------------------------------------------------------------------


def _median_ms(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def _run_fresh(args: list[str], cache_dir: str) -> tuple[float, str]:
    """Wall seconds and stdout of one fresh process with its own persistent compilation cache."""
    env = dict(os.environ, BIMIX_JAX_CACHE_DIR=cache_dir, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, res.stdout


def _snippet(cache_dir: str, dtype: str) -> dict:
    """The fit in a fresh process, broken down (import/read/fit seconds) with the whole process (`process_s`)."""
    wall, stdout = _run_fresh(["-c", _CHILD, _LOSSES.value, _MODEL_SIZE.value, dtype], cache_dir)
    return {**json.loads(stdout.strip().splitlines()[-1]), "process_s": wall}


def _binary(cache_dir: str, dtype: str) -> float:
    """Wall seconds of the real binary, `python -m experiments.fit_law ... --out=...`, end to end."""
    with tempfile.TemporaryDirectory() as out_dir:
        wall, _ = _run_fresh(["-m", "experiments.fit_law", f"--losses={_LOSSES.value}", "--law=bimix",
                              f"--model_size={_MODEL_SIZE.value}", f"--dtype={dtype}",
                              f"--out={os.path.join(out_dir, 'fit.json')}"], cache_dir)
    return wall


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench_cold(dtype: str) -> dict:
    """`cold`: every process with an empty cache (compilation included); `cold_cached`: with a warm one."""
    with tempfile.TemporaryDirectory() as cache:
        cold = [{**_snippet(os.path.join(cache, f"snippet{i}"), dtype),
                 "binary_s": _binary(os.path.join(cache, f"binary{i}"), dtype)} for i in range(_COLD_REPEATS.value)]
        warm = os.path.join(cache, "warm")
        _binary(warm, dtype)  # Populates the persistent cache.
        cached = [{**_snippet(warm, dtype), "binary_s": _binary(warm, dtype)} for _ in range(_COLD_REPEATS.value)]
    return {"cold": _median(cold), "cold_cached": _median(cached)}


def main(argv: Sequence[str]) -> None:
    del argv
    import jax

    from bimix_jax import loss_table
    from bimix_jax.laws import fit

    from bimix_jax.laws import levenberg_marquardt as lm, protocols
    table = loss_table.read_csv(_LOSSES.value, model_size=_MODEL_SIZE.value)
    domains = list(table.eval_domains)
    result = {"fair": {"bimix_reduced": bench_reduced(table, _REPEATS.value)}, "table": os.path.basename(_LOSSES.value),
              "model_size": _MODEL_SIZE.value,
              "law": "bimix", "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "scipy_starts": _SCIPY_STARTS}

    # Warm single fits.
    fitted = fit.fit_law(table, "bimix")  # Compiles.
    jax_warm = _median_ms(lambda: fit.fit_law(table, "bimix"), _REPEATS.value)
    fit.fit_law(table, "bimix", dtype="float32")
    jax_warm32 = _median_ms(lambda: fit.fit_law(table, "bimix", dtype="float32"), _REPEATS.value)
    scipy_fits = scipy_fit(table, domains)
    scipy_warm = _median_ms(lambda: scipy_fit(table, domains), max(3, _REPEATS.value // 3))
    result["cost"] = {"jax": {e: fitted.summary["domains"][e]["convergence"]["cost"] for e in domains},
                      "scipy": {e: scipy_fits[e][1] for e in domains}}  # Both 0.5 * sum(r^2).
    fair_fits = scipy_fit_fair(table, domains, fitted.summary["fitter"]["n_starts"])
    fair_ms = _median_ms(lambda: scipy_fit_fair(table, domains, fitted.summary["fitter"]["n_starts"]),
                         max(3, _REPEATS.value // 3))
    result["cost"]["scipy_same_starts"] = {e: fair_fits[e][1] for e in domains}
    result["fair"]["bimix_4param_trf"] = {
        "what": "scipy TRF on the 4-parameter bounded problem from the same 4 grid starts, analytic Jacobian, same "
                "bounds, vs this fitter's fit_law (warm; it solves the reduced problem)",
        "scipy_warm_fit_ms": fair_ms, "jax_warm_fit_ms": jax_warm,
        "speedup": fair_ms["median_ms"] / jax_warm["median_ms"]}
    result["fair"]["dml_410M"] = bench_dml(_REPEATS.value)

    # Bootstrap: the same run resamples for both.
    prep = fit.prepare(table, "bimix")
    w, _ = fit.resample_weights(prep, _N_BOOT.value, 0)
    boot = lambda dtype: fit.fit_bootstrap(table, "bimix", n_boot=_N_BOOT.value, seed=0, dtype=dtype)  # noqa: E731
    boot("float64")
    boot("float32")
    solve_only = lambda: lm.solve_batched(prep.problem.model, prep.x, prep.logy, w, prep.options)  # noqa: E731
    jax_boot = _median_ms(lambda: boot("float64"), 3)
    jax_boot_solve = _median_ms(solve_only, 3)
    jax_boot32 = _median_ms(lambda: boot("float32"), 3)
    weights = [{e: w[b, g, :len(prep.problem.logy[g])] for g, e in enumerate(domains)} for b in range(_N_BOOT.value)]
    n_scipy = min(_N_BOOT.value, 16)  # The scipy loop is slow: time a subset of the same resamples.
    t0 = time.perf_counter()
    for b in range(n_scipy):
        scipy_fit(table, domains, weights[b])
    scipy_per_refit = 1e3 * (time.perf_counter() - t0) / n_scipy
    per = lambda ms: ms["median_ms"] / _N_BOOT.value  # noqa: E731

    result["jax"] = {
        "warm_fit_ms": jax_warm, "warm_fit_ms_float32": jax_warm32,
        "bootstrap": {"n_boot": _N_BOOT.value, "per_refit_ms": per(jax_boot),
                      "per_refit_ms_solver_only": per(jax_boot_solve), "per_refit_ms_float32": per(jax_boot32),
                      "note": "per_refit_ms includes the full-table fit and resampling that fit_bootstrap also does"},
        "iterations": {e: fitted.summary["domains"][e]["convergence"]["iterations"] for e in domains},
        "n_starts": fitted.summary["fitter"]["n_starts"],
    }
    result["scipy"] = {"warm_fit_ms": scipy_warm, "bootstrap": {"per_refit_ms": scipy_per_refit,
                                                               "timed_refits": n_scipy}}
    result["speedup"] = {
        "warm_fit": scipy_warm["median_ms"] / jax_warm["median_ms"],
        "warm_fit_float32": scipy_warm["median_ms"] / jax_warm32["median_ms"],
        "bootstrap_per_refit": scipy_per_refit / per(jax_boot),
        "bootstrap_per_refit_float32": scipy_per_refit / per(jax_boot32),
    }

    # Held-out error of both, on the same protocol splits.
    full = loss_table.read_csv(_LOSSES.value)
    held = {}
    for protocol in ("last_step", "mixtures"):
        report = protocols.evaluate(full, "bimix", protocol, model_size=_MODEL_SIZE.value)
        sc = scipy_heldout(table, report)
        keep = ("mean", "worst")
        held[protocol] = {"jax": {k: report[k] for k in keep}, "scipy": {k: sc[k] for k in keep},
                          "domains": list(report["per_domain"]), "skipped": list(report["skipped"])}
    result["heldout"] = held

    # Fresh processes (compilation, persistent cache), last: they compete for the CPU otherwise.
    if _FRESH.value:
        result["jax"]["fresh_process"] = {"float64": bench_cold("float64"), "float32": bench_cold("float32")}
        cold = result["jax"]["fresh_process"]["float64"]["cold"]["fit_s"]
        result["fair"]["bimix_cold_start"] = {
            "what": "the reduced problem in scipy (warm; it compiles nothing) vs this fitter's first fit in a fresh "
                    "process with an empty compilation cache (compilation included)",
            "jax_cold_fit_ms": 1e3 * cold, "scipy_lm_ms": result["fair"]["bimix_reduced"]["scipy_lm_ms"],
            "speedup": result["fair"]["bimix_reduced"]["scipy_lm_ms"]["median_ms"] / (1e3 * cold)}
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    cli.run(main)
