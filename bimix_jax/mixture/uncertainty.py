"""How sure is the optimum? Bootstrap over runs: refit the law, re-optimize, report percentile intervals.

1. `bimix_jax.laws.fit.fit_bootstrap` refits the law on `n_boot` resamples of the loss table's runs (with
   replacement) in one vmapped compiled call;
2. every bootstrap law is optimized under the same objective and constraints, again in one compiled call
   (the vmapped exact solver for BiMix; for other laws projected gradient in a compiled `lax.map` loop,
   see `optimize.programs` for why not vmapped);
3. each replicate's predicted gain is measured under its own law: total(reference) - total(its optimum).

The report gives percentiles (default 5, 50, 95) of every optimal proportion, of the predicted total loss
at the optimum and of the gain against each reference mixture (uniform, natural, a given reference). Replicates whose
refit failed (non-finite parameters) are dropped and counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws.base import FittedLaw
from bimix_jax.loss_table import LossTable
from bimix_jax.mixture import constraints, optimize

DEFAULT_PERCENTILES = (5.0, 50.0, 95.0)


def refit_options(fitted: FittedLaw, model_size: str | None = None) -> dict:
    """Fit options that reproduce `fitted` on a resample: its eval domains, model size, step, solver settings."""
    opts: dict = {"eval_domains": fitted.eval_domains}
    size = model_size if model_size is not None else fitted.summary.get("model_size")
    if size:
        opts["model_size"] = size
    if fitted.target_step is not None:
        opts["target_step"] = fitted.target_step
    try:
        from bimix_jax.laws import levenberg_marquardt as law_solver

        fields = {f.name for f in dataclasses.fields(law_solver.SolverOptions)}
    except (ImportError, TypeError):
        fields = set()
    fitter = fitted.summary.get("fitter") or {}
    opts.update({k: v for k, v in fitter.items() if k in fields})
    opts.update({k: v for k, v in (fitted.summary.get("law_options") or {}).items() if k not in opts})
    return opts


def solve_batch(fitted: FittedLaw, params_B: dict, *, step: float, weights_E: np.ndarray,
                bounds: constraints.Bounds, solver: str) -> tuple[np.ndarray, np.ndarray]:
    """Optimal mixtures [B, D] and relative KKT residuals [B] of a batch of parameter sets (one call)."""
    progs = optimize.programs(fitted.law, fitted.train_domains, fitted.eval_domains)
    dtype = jnp.result_type(float)
    p = {k: jnp.asarray(v, dtype) for k, v in params_B.items()}
    s, w_E = jnp.asarray(step, dtype), jnp.asarray(weights_E, dtype)
    lo_D, hi_D = jnp.asarray(bounds.lo, dtype), jnp.asarray(bounds.hi, dtype)
    if solver == "exact":
        r_BxD, _ = progs["exact_batch"](p, jnp.asarray(optimize.own_indices(fitted)), s, w_E, lo_D, hi_D)
    else:
        r_BxD, _ = progs["pg_batch"](p, s, w_E, lo_D, hi_D)
    _, _, residual_B = progs["kkt_batch"](p, s, w_E, r_BxD, lo_D, hi_D)
    return np.asarray(r_BxD, np.float64), np.asarray(residual_B, np.float64)


def _quantiles(x_B: np.ndarray, percentiles: Sequence[float]) -> list[float] | None:
    x_B = x_B[np.isfinite(x_B)]
    return np.percentile(x_B, percentiles).tolist() if x_B.size else None


def bootstrap_optimum(
    table: LossTable,
    fitted: FittedLaw,
    *,
    n_boot: int,
    step: float,
    weights_E: np.ndarray,
    bounds: constraints.Bounds,
    references: dict[str, np.ndarray],
    seed: int = 0,
    solver: str = "auto",
    model_size: str | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict:
    """Percentile intervals of the optimum and its predicted gains (the `bootstrap` report section)."""
    from bimix_jax.laws.fit import fit_bootstrap  # The fitter is only needed here.

    if tuple(table.domains) != tuple(fitted.train_domains):
        raise InputError(f"--losses has training domains {', '.join(table.domains)}, the fit file "
                         f"{', '.join(fitted.train_domains)}; pass the table the law was fitted on")
    solver = optimize.choose_solver(fitted, solver)
    _, boot = fit_bootstrap(table, fitted.law, n_boot=n_boot, seed=seed, **refit_options(fitted, model_size))
    ok_B = np.all([np.all(np.isfinite(v.reshape(n_boot, -1)), axis=1) for v in boot.values()], axis=0)
    if solver == "exact":  # The exact solver needs a, c, alpha >= 0 (the fitter keeps them positive).
        ok_B &= np.all([np.all(boot[k].reshape(n_boot, -1) >= 0, axis=1) for k in ("a", "c", "alpha")], axis=0)
    if not ok_B.any():
        raise InputError(f"all {n_boot} bootstrap refits failed; add runs to the loss table")
    params_B = {k: v[ok_B] for k, v in boot.items()}
    B = int(ok_B.sum())
    r_BxD, residual_B = solve_batch(fitted, params_B, step=step, weights_E=weights_E, bounds=bounds,
                                    solver=solver)

    progs = optimize.programs(fitted.law, fitted.train_domains, fitted.eval_domains)
    names = list(references)
    mix_BxMxD = np.stack([r_BxD] + [np.broadcast_to(references[n], r_BxD.shape) for n in names], axis=1)
    dtype = jnp.result_type(float)
    p_B = {k: jnp.asarray(v, dtype) for k, v in params_B.items()}
    L_BxMxE = progs["predict_batch"](p_B, jnp.asarray(mix_BxMxD, dtype), jnp.asarray(step, dtype))
    L_BxMxE = np.asarray(L_BxMxE, np.float64)
    used = weights_E > 0
    total_BxM = np.einsum("bme,e->bm", L_BxMxE[..., used], weights_E[used])
    pct = list(percentiles)
    return {
        "n_boot": int(n_boot),
        "n_used": B,
        "n_failed_refits": int(n_boot - B),
        "seed": int(seed),
        "unit": "run",
        "solver": solver,
        "percentiles": pct,
        "mixture": {d: _quantiles(r_BxD[:, i], pct) for i, d in enumerate(fitted.train_domains)},
        "predicted_total_at_optimum": _quantiles(total_BxM[:, 0], pct),
        "gain": {f"vs_{n}": _quantiles(total_BxM[:, m + 1] - total_BxM[:, 0], pct) for m, n in enumerate(names)},
        "max_kkt_residual": float(np.max(residual_B)),
    }
