"""The best training mixture under a fitted law, with constraints, reference mixtures and a JSON report.

    r* = argmin_r  sum_e w_e L_e(r, s)   over   {lo <= r <= hi, sum(r) = 1}   (see `constraints.py`)

* `w` are weights over the law's eval domains (default: equal), normalised to sum to 1, so the reported
  "total" is a weighted mean loss (the paper's Eq. 15 is a plain sum; the argmin is the same).
* `s` is the target step, or a token budget divided by the tokens per step. Laws fitted at one step
  (`FittedLaw.target_step`, e.g. Data Mixing Laws) are only evaluated at that step.
* Solver `'auto'`: the exact Lagrange solution for BiMix (`bimix_optimum.bimix_exact`), projected gradient
  (`bimix_optimum.projected_gradient`) for every other law; `'exact'` / `'projected_gradient'` force one.

Every jitted program is cached per (law, domains, solver), so repeated calls (bootstrap, sweeps, tests)
compile once; precision follows `jax_enable_x64` (the binary enables it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws.base import FittedLaw, get_law
from bimix_jax.mixture import constraints, export, proportions

from bimix_jax.mixture import bimix_optimum
REPORT_FORMAT = "bimix_jax.mixture_report"
REPORT_VERSION = 2  # 2: references uniform / natural / reference (was: baseline)
SOLVERS = ("auto", "exact", "projected_gradient")
# Laws with BiMix's parameters and form, L_e = r_own(e)^-alpha_e (a_e s^-beta_e + c_e): the exact solver applies.
EXACT_LAWS = {"bimix"}
CORNER_SHARE = 0.9  # warn when one domain gets at least this share
KKT_WARN = 1e-4  # warn when the relative KKT residual of the returned mixture is above this


@dataclasses.dataclass(frozen=True)
class Solution:
    r: np.ndarray  # [D]
    solver: str
    iterations: int
    converged: bool
    nu: float  # simplex multiplier
    mu: np.ndarray  # [D] bound multipliers (loss decrease per unit relaxation of a binding bound)
    kkt_residual: float


def default_min_floor(law: str) -> float:
    return constraints.DEFAULT_MIN_FLOOR.get(law, 0.0)


def resolve_step(
    fitted: FittedLaw,
    step: float | None = None,
    *,
    token_budget: float | None = None,
    tokens_per_step: float | None = None,
) -> float:
    """The target step: `step`, or `token_budget / tokens_per_step`, or the law's own `target_step`."""
    if step is None and tokens_per_step is not None:
        if token_budget is None:
            raise InputError("--tokens_per_step needs --token_budget to give the target step; add it or use "
                             "--steps")
        if not (math.isfinite(tokens_per_step) and tokens_per_step > 0):
            raise InputError(f"--tokens_per_step={tokens_per_step:g} must be a positive number; fix it")
        step = token_budget / tokens_per_step
    if step is None:
        if fitted.target_step is None:
            raise InputError("no target step: give --steps, or --token_budget with --tokens_per_step")
        step = fitted.target_step
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise InputError(f"--steps={step:g} must be a positive number of training steps; fix it")
    fitted.check_step(step)
    return step


def eval_weights(fitted: FittedLaw, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Normalised objective weights [E] over the eval domains; unlisted domains get 0 (default: equal)."""
    E = len(fitted.eval_domains)
    if not weights:
        return np.full(E, 1.0 / E)
    w = constraints.check_values(weights, fitted.eval_domains, "--weights", what="eval domain")
    w_E = np.array([w.get(e, 0.0) for e in fitted.eval_domains])
    if w_E.sum() <= 0:
        raise InputError("--weights are all zero; give at least one eval domain a positive weight")
    return w_E / w_E.sum()


def own_indices(fitted: FittedLaw) -> np.ndarray:
    missing = [e for e in fitted.eval_domains if e not in fitted.train_domains]
    if missing:
        raise InputError(f"the exact solver needs eval domains among the training domains; {missing} are not; "
                         "use --solver=projected_gradient")
    return np.array([fitted.train_domains.index(e) for e in fitted.eval_domains])


@functools.lru_cache(maxsize=32)
def programs(law: str, train_domains: tuple[str, ...], eval_domains: tuple[str, ...]):
    """Jitted programs of one law and domain set (built once per process)."""
    model = get_law(law)(train_domains, eval_domains)
    predict = jax.jit(jax.vmap(model.predict, in_axes=(None, 0, None)))  # params, r_MxD, s -> [M, E]

    def pg(params, s, w_E, lo_D, hi_D):
        r_D, iters, _ = bimix_optimum.projected_gradient(model, params, s, w_E, lo_D, hi_D)
        return r_D, iters

    def exact(params, own_E, s, w_E, lo_D, hi_D):
        r_D, _ = bimix_optimum.bimix_exact(params, own_E, s, w_E, lo_D, hi_D)
        return r_D, jnp.asarray(bimix_optimum.BISECTION_STEPS, jnp.int32)  # a fixed number of bisection steps

    def kkt(params, s, w_E, r_D, lo_D, hi_D):
        f, g_D = jax.value_and_grad(lambda r: bimix_optimum.objective(model, params, r, s, w_E))(r_D)
        return bimix_optimum.kkt(g_D, r_D, lo_D, hi_D, f)

    def pg_batch(params_B, *args):
        # One compiled loop over the laws, not a vmap: a vmapped while-loop runs every lane until the slowest
        # converges (2.5x slower on CPU), and on jax 0.10.2's CPU backend the vmapped solver hung for some
        # batch sizes (see README, "Mixture optimizer").
        return jax.lax.map(lambda p: pg(p, *args), params_B)

    return dict(
        model=model, predict=predict, pg=jax.jit(pg), exact=jax.jit(exact), kkt=jax.jit(kkt),
        pg_batch=jax.jit(pg_batch),
        exact_batch=jax.jit(jax.vmap(exact, in_axes=(0, None, None, None, None, None))),
        kkt_batch=jax.jit(jax.vmap(kkt, in_axes=(0, None, None, 0, None, None))),
        predict_batch=jax.jit(jax.vmap(predict, in_axes=(0, 0, None))),  # params_B, r_BxMxD -> [B, M, E]
    )


def _jnp_params(params: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    dtype = jnp.result_type(float)
    return {k: jnp.asarray(v, dtype) for k, v in params.items()}


def choose_solver(fitted: FittedLaw, solver: str = "auto") -> str:
    if solver not in SOLVERS:
        raise InputError(f"--solver={solver!r} is unknown; choose one of {', '.join(SOLVERS)}")
    exact_ok = fitted.law in EXACT_LAWS and all(
        np.all(np.asarray(fitted.params[k]) >= 0) for k in ("a", "c", "alpha")
    )
    if solver == "exact" and not exact_ok:
        raise InputError(f"--solver=exact needs a bimix law with a, c, alpha >= 0, not this {fitted.law} law; "
                         "use --solver=projected_gradient")
    if solver == "auto":
        return "exact" if exact_ok else "projected_gradient"
    return solver


def solve(
    fitted: FittedLaw, *, step: float, weights_E: np.ndarray, bounds: constraints.Bounds, solver: str = "auto"
) -> Solution:
    """Solves for the best mixture (no report); `solver` is 'auto', 'exact' or 'projected_gradient'."""
    solver = choose_solver(fitted, solver)
    if fitted.law in constraints.DEFAULT_MIN_FLOOR and np.any(bounds.lo <= 0):
        raise InputError(f"the {fitted.law} law diverges at a zero proportion; give a positive --min_floor "
                         f"(default {constraints.DEFAULT_MIN_FLOOR[fitted.law]:g})")
    progs = programs(fitted.law, fitted.train_domains, fitted.eval_domains)
    dtype = jnp.result_type(float)
    params = _jnp_params(fitted.params)
    s, w_E = jnp.asarray(step, dtype), jnp.asarray(weights_E, dtype)
    lo_D, hi_D = jnp.asarray(bounds.lo, dtype), jnp.asarray(bounds.hi, dtype)
    if solver == "exact":
        r_D, iters = progs["exact"](params, jnp.asarray(own_indices(fitted)), s, w_E, lo_D, hi_D)
    else:
        r_D, iters = progs["pg"](params, s, w_E, lo_D, hi_D)
    nu, mu_D, residual = progs["kkt"](params, s, w_E, r_D, lo_D, hi_D)
    r = np.asarray(r_D, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise InputError(f"the {fitted.law} law gives a non-finite optimum at step {step:g}; check the fit file")
    return Solution(
        r=r, solver=solver, iterations=int(iters), converged=bool(float(residual) <= KKT_WARN),
        nu=float(nu), mu=np.asarray(mu_D, dtype=np.float64), kkt_residual=float(residual),
    )


def predict_losses(fitted: FittedLaw, step: float, mixtures_MxD: np.ndarray) -> np.ndarray:
    """Predicted loss [M, E] of each mixture (inf/nan where the law diverges, e.g. BiMix at r = 0)."""
    progs = programs(fitted.law, fitted.train_domains, fitted.eval_domains)
    dtype = jnp.result_type(float)
    out = progs["predict"](_jnp_params(fitted.params), jnp.asarray(mixtures_MxD, dtype), jnp.asarray(step, dtype))
    return np.asarray(out, dtype=np.float64)


def _losses_json(fitted: FittedLaw, L_E: np.ndarray, w_E: np.ndarray) -> dict:
    used = w_E > 0
    total = float(np.dot(w_E[used], L_E[used])) if np.all(np.isfinite(L_E[used])) else math.inf
    return {"per_domain": dict(zip(fitted.eval_domains, L_E.tolist())), "total": total}


def _mixture_json(domains: Sequence[str], r_D: np.ndarray) -> dict[str, float]:
    return dict(zip(domains, np.asarray(r_D, dtype=np.float64).tolist()))


def optimize_mixture(
    fitted: FittedLaw,
    *,
    step: float,
    weights: Mapping[str, float] | None = None,
    bounds: constraints.Bounds | None = None,
    reference: Mapping[str, float] | None = None,
    solver: str = "auto",
    proportion_range: Mapping[str, tuple[float, float]] | None = None,
    megatron_template: str = export.DEFAULT_TEMPLATE,
) -> dict:
    """Solves for the best mixture and returns the JSON-able report (see README, "Mixture optimizer").

    The optimum is compared with `uniform`, with the `natural` token shares when `bounds` has token counts for
    every domain, and with `reference`, a mixture over all training domains given by the user. `proportion_range` ({domain: (min, max)} of the
    proportions the law was fitted on) adds a warning where the optimum extrapolates beyond them.
    """
    domains = fitted.train_domains
    D = len(domains)
    export.check_template(megatron_template)
    w_E = eval_weights(fitted, weights)
    if bounds is None:
        bounds = constraints.make_bounds(domains, min_floor=default_min_floor(fitted.law))
    if bounds.domains != domains:
        raise InputError(f"constraints are over domains {bounds.domains}, the law over {domains}; rebuild them")
    references = {proportions.UNIFORM: proportions.uniform(D)}
    if not np.any(np.isnan(bounds.domain_tokens)) and bounds.domain_tokens.sum() > 0:
        references[proportions.NATURAL] = proportions.natural(dict(zip(domains, bounds.domain_tokens)), domains)
    if reference:
        references["reference"] = proportions.to_array(
            constraints.check_values(reference, domains, "--reference", high=1.0), domains, field="--reference")
    sol = solve(fitted, step=step, weights_E=w_E, bounds=bounds, solver=solver)
    names = ["optimum", *references]
    L_MxE = predict_losses(fitted, step, np.stack([sol.r, *references.values()]))
    losses = {n: _losses_json(fitted, L, w_E) for n, L in zip(names, L_MxE)}
    binding = {d: tags for d, tags in bounds.binding(sol.r).items() if tags}
    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "law": fitted.law,
        "law_version": fitted.version,
        "step": step,
        "train_domains": list(domains),
        "eval_domains": list(fitted.eval_domains),
        "weights": dict(zip(fitted.eval_domains, w_E.tolist())),
        "solver": {"name": sol.solver, "iterations": sol.iterations, "converged": sol.converged,
                   "kkt_residual": sol.kkt_residual, "multiplier": sol.nu},
        "mixture": _mixture_json(domains, sol.r),
        "predicted_loss": losses,
        "gain": {f"vs_{n}": losses[n]["total"] - losses["optimum"]["total"] for n in references},
        "references": {n: _mixture_json(domains, r) for n, r in references.items()},
        "constraints": bounds.to_json(),
        "binding": binding,
        "shadow_prices": {d: float(sol.mu[domains.index(d)]) for d in binding},
        "epochs": {n: bounds.epochs(r) for n, r in [("optimum", sol.r), *references.items()]}
        if bounds.epochs(sol.r) is not None else None,
        "warnings": [],
    }
    warn = report["warnings"]
    user_binding = {d: [t for t in tags if t != "min_floor"] for d, tags in binding.items()}
    user_binding = {d: t for d, t in user_binding.items() if t}
    if user_binding:
        relaxed = solve(fitted, step=step, weights_E=w_E, bounds=bounds.relaxed(), solver=solver)
        L_E = predict_losses(fitted, step, relaxed.r[None])[0]
        report["unconstrained"] = {
            "mixture": _mixture_json(domains, relaxed.r),
            "predicted_loss": _losses_json(fitted, L_E, w_E),
            "epochs": bounds.epochs(relaxed.r),
            "cost_of_constraints": losses["optimum"]["total"] - _losses_json(fitted, L_E, w_E)["total"],
        }
        for d, tags in user_binding.items():
            i = domains.index(d)
            bound = bounds.lo[i] if tags[0] == "floor" else bounds.hi[i]
            warn.append(f"{d} sits on its {'/'.join(tags)} bound {bound:.6g}; without floors and caps the "
                        f"optimum gives it {relaxed.r[i]:.6g}")
    _warnings(warn, fitted, sol, bounds, binding, losses, proportion_range)
    report["export"] = export.export_all(report["mixture"], megatron_template)
    return report


def _warnings(warn, fitted, sol, bounds, binding, losses, proportion_range) -> None:
    domains = fitted.train_domains
    top = int(np.argmax(sol.r))
    if sol.r[top] >= CORNER_SHARE:
        warn.append(f"the optimum is near a corner of the simplex ({domains[top]} gets {sol.r[top]:.4f}); "
                    "the law extrapolates far from typical fitted mixtures, check it against a training run")
    floor_only = [d for d, tags in binding.items() if tags == ["min_floor"]]
    if floor_only:
        verb = "sits" if len(floor_only) == 1 else "sit"
        warn.append(f"{', '.join(floor_only)} {verb} on the minimum proportion {bounds.min_floor:g}: at these "
                    "weights the law predicts no benefit from more of it")
    if not sol.converged:
        warn.append(f"the {sol.solver} solver stopped with relative KKT residual {sol.kkt_residual:.2g} "
                    f"after {sol.iterations} iterations; the mixture may not be optimal")
    for name, L in losses.items():
        if name != "optimum" and not math.isfinite(L["total"]):
            warn.append(f"the {fitted.law} law diverges at the {name} mixture (a zero proportion?); its loss "
                        "is null")
    for d, (pmin, pmax) in (proportion_range or {}).items():
        r = sol.r[domains.index(d)]
        if r < pmin * (1 - 1e-9) or r > pmax * (1 + 1e-9):
            warn.append(f"{d} gets {r:.4g}, outside the proportions {pmin:.4g}..{pmax:.4g} the law was fitted "
                        "on; the prediction extrapolates")
