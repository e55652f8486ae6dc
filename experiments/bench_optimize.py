"""Times the mixture solvers on random BiMix laws with 3, 22 and 100 domains; prints JSON.

    python -m experiments.bench_optimize
    python -m experiments.bench_optimize --domains=3,22,100 --repeats=20 --batch=100 --dtypes=float64,float32

For each domain count, dtype and feasible set (`simplex`: only the 1e-4 floor; `capped`: every domain also
capped at 1.5/D, so about a third of the caps bind) it reports, for the exact Lagrange solver and for
projected gradient (the jitted programs `optimize_mixture` uses):
* `compile_s`: lowering + XLA compilation of the solver (persistent compilation cache disabled);
* `run_ms`: median and best wall time of one solve, compiled, over `--repeats` calls;
* `batch_run_ms` / `per_law_us`: one call solving `--batch` laws (the bootstrap path: vmapped for the exact
  solver, a compiled `lax.map` loop for projected gradient);
* projected gradient: iterations, and `max_abs_diff_vs_exact` of its mixture.
`scipy_slsqp` solves the same problem with `scipy.optimize.minimize(method='SLSQP')` and the analytic
gradient (the paper's "Lagrange multipliers and numerical methods (SciPy)"), for reference; `scipy_brentq`
solves the exact solver's own optimality equation with scipy's scalar root finder (the fair baseline; its
time over the exact solver's comes first, `fair_ratio_brentq_over_exact`).
`report_warm_ms` is a whole `optimize_mixture` call (solve, KKT check, references, JSON) once compiled.
The laws are random with the parameter ranges of real fits (alpha 0.02..0.5, beta 0.1..0.8).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np
from absl import flags, logging

from experiments import cli

_DOMAINS = flags.DEFINE_list("domains", ["3", "22", "100"], "Domain counts.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement.")
_BATCH = flags.DEFINE_integer("batch", 100, "Laws per vmapped call.")
_DTYPES = flags.DEFINE_list("dtypes", ["float64", "float32"], "Precisions (float64 is what the binary uses).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random laws.")


def _timed(fn, repeats: int) -> dict:
    fn()  # warm-up (first dispatch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times) * 1e3, "best": min(times) * 1e3}


def _compile(jitted, *args):
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _random_params(rng, B: int, E: int) -> dict[str, np.ndarray]:
    return {"a": np.exp(rng.uniform(-1.0, 3.0, (B, E))), "c": np.exp(rng.uniform(-0.5, 1.2, (B, E))),
            "alpha": rng.uniform(0.02, 0.5, (B, E)), "beta": rng.uniform(0.1, 0.8, (B, E))}


def _scipy(params, s, w, lo, hi, repeats):
    from scipy.optimize import minimize

    K = w * (params["a"] * s ** (-params["beta"]) + params["c"])
    al = params["alpha"]
    f = lambda r: float(np.sum(K * r ** (-al)))  # noqa: E731
    g = lambda r: -al * K * r ** (-al - 1)  # noqa: E731

    def solve():
        x0 = np.clip(np.full(lo.size, 1.0 / lo.size), lo, hi)
        return minimize(f, x0, jac=g, method="SLSQP", bounds=list(zip(lo, hi)),
                        constraints=[{"type": "eq", "fun": lambda r: r.sum() - 1.0,
                                      "jac": lambda r: np.ones_like(r)}],
                        options={"ftol": 1e-12, "maxiter": 1000}).x

    return solve(), _timed(solve, max(3, repeats // 4))


def _brentq(params, s, w, lo, hi, repeats):
    """The same optimality equation as the exact solver, sum_i clip(r_i(lam), lo, hi) = 1 in log lambda, solved
    by scipy's scalar root finder `brentq` (the fair baseline of the bisection)."""
    from scipy.optimize import brentq

    K = w * (params["a"] * s ** (-params["beta"]) + params["c"])
    logak, al = np.log(params["alpha"] * K), params["alpha"]

    def r_of(loglam):
        return np.clip(np.exp((logak - loglam) / (al + 1.0)), lo, hi)

    low = float(np.min(logak - (al + 1.0) * np.log(hi))) - 1.0
    high = float(np.max(logak - (al + 1.0) * np.log(lo))) + 1.0

    def solve():
        return r_of(brentq(lambda z: r_of(z).sum() - 1.0, low, high, xtol=1e-14, rtol=4 * np.finfo(float).eps))

    return solve(), _timed(solve, repeats)


def bench_one(D: int, dtype: str, capped: bool, rng, repeats: int, batch: int) -> dict:
    import jax
    import jax.numpy as jnp

    from bimix_jax.laws.base import FittedLaw
    from bimix_jax.mixture import constraints, optimize

    jax.clear_caches()  # every configuration compiles from scratch
    optimize.programs.cache_clear()
    domains = tuple(f"d{i}" for i in range(D))
    progs = optimize.programs("bimix", domains, domains)
    P = _random_params(rng, batch, D)
    p1 = {k: v[0] for k, v in P.items()}
    dt = jnp.dtype(dtype)
    cast = lambda x: jnp.asarray(x, dt)  # noqa: E731
    s, w = cast(2e4), cast(np.full(D, 1.0 / D))
    lo = cast(np.full(D, 1e-4))
    hi = cast(np.full(D, min(1.5 / D, 1.0) if capped else 1.0))
    own = jnp.arange(D)
    params = {k: cast(v) for k, v in p1.items()}
    params_B = {k: cast(v) for k, v in P.items()}
    out: dict = {}
    ex, ex_compile = _compile(progs["exact"], params, own, s, w, lo, hi)
    r_ex = np.asarray(ex(params, own, s, w, lo, hi)[0])
    out["exact"] = {"compile_s": ex_compile,
                    "run_ms": _timed(lambda: jax.block_until_ready(ex(params, own, s, w, lo, hi)), repeats)}
    pg, pg_compile = _compile(progs["pg"], params, s, w, lo, hi)
    r_pg, iters = pg(params, s, w, lo, hi)
    out["projected_gradient"] = {
        "compile_s": pg_compile,
        "run_ms": _timed(lambda: jax.block_until_ready(pg(params, s, w, lo, hi)), repeats),
        "iterations": int(iters), "max_abs_diff_vs_exact": float(np.max(np.abs(np.asarray(r_pg) - r_ex))),
    }
    for name, fn, args in (("exact", progs["exact_batch"], (params_B, own, s, w, lo, hi)),
                           ("projected_gradient", progs["pg_batch"], (params_B, s, w, lo, hi))):
        fn, c = _compile(fn, *args)
        t = _timed(lambda fn=fn, args=args: jax.block_until_ready(fn(*args)), 2)
        out[name].update({"batch_compile_s": c, "batch_run_ms": t, "per_law_us": t["median"] * 1e3 / batch})
    r_sp, t_sp = _scipy({k: np.asarray(v, np.float64) for k, v in p1.items()}, 2e4, np.full(D, 1.0 / D),
                        np.asarray(lo, np.float64), np.asarray(hi, np.float64), repeats)
    out["scipy_slsqp"] = {"run_ms": t_sp, "max_abs_diff_vs_exact": float(np.max(np.abs(r_sp - r_ex)))}
    r_bq, t_bq = _brentq({k: np.asarray(v, np.float64) for k, v in p1.items()}, 2e4, np.full(D, 1.0 / D),
                         np.asarray(lo, np.float64), np.asarray(hi, np.float64), repeats)
    out["scipy_brentq"] = {"run_ms": t_bq, "max_abs_diff_vs_exact": float(np.max(np.abs(r_bq - r_ex)))}
    out = {"fair_ratio_brentq_over_exact": t_bq["median"] / out["exact"]["run_ms"]["median"], **out}
    fitted = FittedLaw("bimix", 1, domains, domains, {k: np.asarray(v, np.float64) for k, v in p1.items()})
    bounds = constraints.make_bounds(domains, caps={d: float(hi[0]) for d in domains} if capped else None,
                                     min_floor=1e-4)
    optimize.optimize_mixture(fitted, step=2e4, bounds=bounds)  # compile everything the report uses
    out["report_warm_ms"] = _timed(lambda: optimize.optimize_mixture(fitted, step=2e4, bounds=bounds),
                                   max(3, repeats // 4))
    out["binding_caps"] = int(np.sum(r_ex >= np.asarray(hi) * (1 - 1e-6)))
    return out


def main(argv: Sequence[str]) -> None:
    del argv
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # measure real compile times
    results = []
    for dtype in _DTYPES.value:
        with jax.enable_x64(dtype == "float64"):
            for D in (int(d) for d in _DOMAINS.value):
                for capped in (False, True):
                    rng = np.random.default_rng(_SEED.value + D)
                    t0 = time.perf_counter()
                    res = bench_one(D, dtype, capped, rng, _REPEATS.value, _BATCH.value)
                    logging.info("bench %s D=%d %s: %.1f s", dtype, D, "capped" if capped else "simplex",
                                 time.perf_counter() - t0)
                    kind = "capped" if capped else "simplex"
                    results.append({"domains": D, "dtype": dtype, "set": kind, **res})
    print(json.dumps({"device": str(jax.devices()[0]), "cpus": os.cpu_count(), "batch": _BATCH.value,
                      "repeats": _REPEATS.value, "results": results}, indent=1))


if __name__ == "__main__":
    cli.run(main)
