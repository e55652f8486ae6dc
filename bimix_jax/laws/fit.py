"""Fit any registered law to a loss table, and bootstrap it over runs, each in one compiled call.

`fit_law(table, 'bimix' | 'dml', **options)` -> `FittedLaw`; `fit_bootstrap(table, law, n_boot=...)`
-> (`FittedLaw` on the full table, bootstrap params stacked on a leading [n_boot] axis). The fitter
knows no particular law: a law turns the table into a `FitProblem` (one curve fit per eval domain), the
generic solver (`lm.py`: jaxopt Levenberg-Marquardt, vmapped over eval domains x starts, and over
replicates for the bootstrap) fits it, and the law maps the parameters back to natural units.

Options (keyword arguments):
  model_size: keep only rows of this model size (a table with several sizes needs one);
  eval_domains: the eval domains to fit (default: all in the table);
  n_starts, maxiter, loss ('l2' | 'huber'), huber_delta, ftol, xtol, gtol, damping,
    dtype ('float64' | 'float32'): see `lm.SolverOptions`;
  law options: dml takes target_step (default: the table's largest step) and step_min (checkpoints
    below it are not used by the step law).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from bimix_jax.errors import InputError
from bimix_jax.laws import levenberg_marquardt as lm
from bimix_jax.laws.base import FitProblem, FittedLaw, Law, get_law
from bimix_jax.loss_table import LossTable

_SOLVER_FIELDS = tuple(f.name for f in dataclasses.fields(lm.SolverOptions))
MAX_REDRAWS = 1000  # per bootstrap replicate, before declaring the runs unable to identify the law


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A law, its fit problem and the padded arrays for the solver."""

    law: Law
    problem: FitProblem
    options: lm.SolverOptions
    law_options: dict
    x: np.ndarray  # [E, N, F]
    logy: np.ndarray  # [E, N]
    w: np.ndarray  # [E, N]
    model_size: str | None


def prepare(table: LossTable, law: str, *, model_size: str | None = None,
            eval_domains: Sequence[str] | None = None, check: bool = True, **options: Any) -> Prepared:
    """Checks the input and builds the law's fit problem (no fitting yet).

    With check=False the per-domain identifiability checks (`FitProblem.check_rows`) are left to the caller.
    """
    solver_kw = {k: options.pop(k) for k in list(options) if k in _SOLVER_FIELDS}
    opts = lm.SolverOptions(**solver_kw)
    law_cls = get_law(law)
    table = table.for_model_size(model_size)
    if eval_domains is None:
        eval_domains = table.eval_domains
    else:
        eval_domains = tuple(eval_domains)
        if not eval_domains:
            raise InputError("no eval domains to fit; name at least one")
        table = table.for_eval_domains(eval_domains)
    law_obj = law_cls(table.domains, eval_domains)
    accepted = inspect.signature(law_obj.fit_problem).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InputError(f"law {law} takes no option {unknown[0]!r}; remove it")
    problem = law_obj.fit_problem(table, opts, **options)
    for g in range(len(eval_domains) if check else 0):
        reason = problem.check_rows(g, np.ones(len(problem.logy[g]), dtype=bool))
        if reason:
            raise InputError(reason)
    x, logy, w = lm.pack_groups(list(problem.x), list(problem.logy))
    size = table.model_sizes[0] if table.has_model_size else None
    return Prepared(law_obj, problem, opts, dict(options), x, logy, w, size)


def _convergence(prep: Prepared, sol: lm.Solution, g: int) -> dict[str, Any]:
    cost = sol.start_cost[g]
    ok = np.isfinite(cost)
    best = float(cost[ok].min()) if ok.any() else float("inf")
    agree_tol = 1e-4 if prep.options.dtype == "float32" else 1e-6
    return {
        "status": "converged" if sol.converged[g] else ("failed" if not ok.any() else "maxiter"),
        "iterations": int(sol.iterations[g]),
        "cost": float(sol.cost[g]),
        "grad_norm": float(sol.grad_norm[g]),
        # RMS of the residuals (l2: of log loss; huber: sqrt of twice the mean Huber loss).
        "rms_residual": float(np.sqrt(2.0 * sol.cost[g] / max(float(np.sum(prep.w[g])), 1.0))),
        "starts": int(cost.size),
        # Starts that ended within a relative 1e-6 (float32: 1e-4) of the best cost: agreement across starts.
        "starts_at_best": int(np.sum(cost[ok] <= best + agree_tol * max(best, 1e-12))),
        # Starts whose result violates the law's constraints (e.g. bimix alpha < its bound when free).
        "starts_inadmissible": int(np.sum(~ok)),
        "start_cost_range": [best, float(cost[ok].max())] if ok.any() else None,
    }


def finish(prep: Prepared, sol: lm.Solution) -> FittedLaw:
    """Checks the solution and assembles the FittedLaw with its summary."""
    domains = prep.law.eval_domains
    for g, e in enumerate(domains):
        if not (np.isfinite(sol.cost[g]) and np.all(np.isfinite(sol.theta[g]))):
            raise InputError(f"the {prep.law.name} fit of eval domain {e!r} failed (non-finite parameters); check that "
                             "domain's losses for outliers or mislabelled rows")
    params = prep.problem.to_params(sol.theta)
    for k, v in params.items():
        bad = ~np.isfinite(v).reshape(len(domains), -1).all(axis=1)
        if bad.any():
            e = domains[int(np.argmax(bad))]
            raise InputError(f"the {prep.law.name} fit of eval domain {e!r} gave a non-finite {k}; the data do not "
                             "constrain it: add runs or checkpoints")
    convergence = {e: _convergence(prep, sol, g) for g, e in enumerate(domains)}
    for e, c in convergence.items():
        if c["status"] != "converged":
            logging.warning("%s fit of eval domain %s stopped at maxiter=%d before converging", prep.law.name, e,
                            prep.options.maxiter)
    summary = {k: v for k, v in prep.problem.summary.items() if k != "per_domain"}
    data = prep.problem.summary.get("per_domain", {})
    summary.update({
        "model_size": prep.model_size,
        "fitter": {"method": "jaxopt.LevenbergMarquardt, multi-start", **dataclasses.asdict(prep.options)},
        "law_options": dict(prep.law_options),
        "domains": {e: {"params": {k: np.asarray(v[g]).tolist() for k, v in params.items()},
                        "convergence": convergence[e], "data": data.get(e, {})} for g, e in enumerate(domains)},
    })
    if prep.problem.report is not None:
        for e, extra in prep.problem.report(params).items():
            summary["domains"][e].update(extra)
    return FittedLaw(law=prep.law.name, version=prep.law.version, train_domains=prep.law.train_domains,
                     eval_domains=domains, params=params, target_step=prep.problem.target_step, summary=summary)


def describe(fitted: FittedLaw) -> str:
    """A few human-readable lines: parameters, convergence and held-out metrics per eval domain."""
    s = fitted.summary
    head = f"{fitted.law} law, model size {s.get('model_size') or '-'}"
    if fitted.target_step is not None:
        head += f", at step {fitted.target_step:g}"
        if "points_observed" in s:
            head += f" ({s['points_observed']} observed points, {s.get('points_step_law', 0)} from step laws)"
    if s.get("rows_excluded_zero_proportion"):
        head += f"; excluded {s['rows_excluded_zero_proportion']} rows with own proportion 0"
    if isinstance(s.get("step_min"), dict):
        head += "; first fitted step (backtested) " + ", ".join(f"{e} {v:g}" for e, v in s["step_min"].items())
    lines = [head]

    def fmt(v):
        if isinstance(v, str):
            return v
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]" if isinstance(v, list) else f"{v:.4g}"

    for e, d in (s.get("domains") or {}).items():
        c = d.get("convergence")
        if c is None:  # A regression law: closed form, no solver.
            line = f"  {e}: " + ", ".join(f"{k}={fmt(v)}" for k, v in d.items() if k != "holdout" and v != "") \
                + "; closed-form fit"
        else:
            line = (f"  {e}: " + ", ".join(f"{k}={fmt(v)}" for k, v in d["params"].items())
                    + f"; {c['status']} in {c['iterations']} it, rms {c['rms_residual']:.4f}, "
                    f"{c['starts_at_best']}/{c['starts']} starts at best")
        h = d.get("holdout")
        if h:
            line += f"; held out: MRE {h['mre_pct']:.2f}% (max {h['max_re_pct']:.2f}%)"
            line += f", R2(log) {h['r2_log']:.4f}" if h.get("r2_log") is not None else ""
        lines.append(line)
    h = s.get("holdout")
    if h:
        line = (f"  held out ({h['protocol']}): mean MRE {h['mean']['mre_pct']:.3f}%, worst point "
                f"{h['worst']['max_re_pct']:.3f}%")
        if h["mean"]["r2_log"] is not None:
            line += f", mean R2(log) {h['mean']['r2_log']:.4f} (worst {h['worst']['r2_log']:.4f})"
        lines.append(line)
        lines += [f"  held out: skipped {e}: {why}" for e, why in h.get("skipped", {}).items()]
    return "\n".join(lines)


def fit_law(table: LossTable, law: str, **options: Any) -> FittedLaw:
    """Fits `law` to `table` (all eval domains x starts in one compiled call). See the module docstring."""
    if hasattr(get_law(law), "fit_direct"):  # Regression laws: closed form, no curve fit.
        table = table.for_model_size(options.pop("model_size", None))
        domains = options.pop("eval_domains", None)
        table = table.for_eval_domains(domains) if domains else table
        fitted = get_law(law)(table.domains, domains or table.eval_domains).fit_direct(table, **options)
        sizes = table.model_sizes if table.has_model_size else ()
        fitted.summary.setdefault("model_size", sizes[0] if len(sizes) == 1 else None)
        return fitted
    prep = prepare(table, law, **options)
    sol = lm.solve(prep.problem.model, prep.x, prep.logy, prep.w, prep.options)
    return finish(prep, sol)


def resample_weights(prep: Prepared, n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Row weights [n_boot, E, N] from resampling the runs with replacement (counts), and the redraw count.

    A resample that leaves some eval domain unidentifiable (e.g. only one distinct proportion) is redrawn,
    so every replicate is a meaningful fit; the number of redraws is reported.
    """
    problem = prep.problem
    all_runs = sorted(set(np.concatenate(problem.runs).tolist()))
    run_idx = [np.searchsorted(all_runs, r) for r in problem.runs]
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot,) + prep.w.shape)
    redrawn = 0
    for b in range(n_boot):
        for attempt in range(MAX_REDRAWS + 1):
            counts = np.bincount(rng.integers(0, len(all_runs), len(all_runs)), minlength=len(all_runs))
            reasons = [problem.check_rows(g, counts[idx] > 0) for g, idx in enumerate(run_idx)]
            reason = next((r for r in reasons if r), None)
            if reason is None:
                break
            if attempt == MAX_REDRAWS:
                raise InputError(f"cannot draw identifiable bootstrap resamples of the {len(all_runs)} runs "
                                 f"({reason}); add runs")
            redrawn += 1
        for g, idx in enumerate(run_idx):
            w[b, g, : len(idx)] = counts[idx]
    return w, redrawn


def fit_bootstrap(table: LossTable, law: str, *, n_boot: int, seed: int = 0,
                  **options: Any) -> tuple[FittedLaw, dict[str, np.ndarray]]:
    """Fits `law` on the full table and on `n_boot` resamples of its runs (one vmapped compiled call).

    Returns the full-table fit (its summary gains a 'bootstrap' section: quantiles, convergence, redraws)
    and the bootstrap parameters, same keys as `FittedLaw.params` with a leading [n_boot] axis.
    """
    if not (isinstance(n_boot, (int, np.integer)) and 1 <= n_boot <= 100_000):
        raise InputError(f"n_boot={n_boot!r} must be a positive integer; pick e.g. 64")
    prep = prepare(table, law, **options)
    fitted = finish(prep, lm.solve(prep.problem.model, prep.x, prep.logy, prep.w, prep.options))
    w, redrawn = resample_weights(prep, int(n_boot), int(seed))
    distinct = len({wb.tobytes() for wb in w})
    if distinct < max(2, n_boot // 2):
        logging.warning("only %d distinct identifiable resamples of the runs among %d (%d redrawn): the bootstrap "
                        "understates the uncertainty; add runs", distinct, n_boot, redrawn)
    sol = lm.solve_batched(prep.problem.model, prep.x, prep.logy, w, prep.options)
    boot = prep.problem.to_params(sol.theta)
    domains = prep.law.eval_domains
    ok = np.isfinite(sol.cost) & np.all(np.isfinite(sol.theta), axis=-1)  # [B, E]
    if not ok.all():
        logging.warning("%d of %d bootstrap fits were non-finite; their parameters are NaN", int((~ok).sum()),
                        ok.size)
        for k, v in boot.items():
            v[~ok] = np.nan
    quantiles = {k: {e: np.nanquantile(v[:, g], [0.025, 0.5, 0.975], axis=0).tolist()
                     for g, e in enumerate(domains)} for k, v in boot.items()}
    summary = dict(fitted.summary)
    summary["bootstrap"] = {
        "n_boot": int(n_boot), "seed": int(seed), "unit": "run", "redrawn": int(redrawn),
        # Resamples that leave a domain unidentifiable are redrawn; few distinct ones = little information.
        "distinct_resamples": distinct,
        "converged_fraction": {e: float(np.mean(sol.converged[:, g])) for g, e in enumerate(domains)},
        "max_iterations": int(np.max(sol.iterations)),
        "non_finite": int((~ok).sum()),
        "quantiles_2.5_50_97.5": quantiles,
    }
    return dataclasses.replace(fitted, summary=summary), boot
