"""Data Mixing Laws (Ye et al., arXiv 2403.16952): L_e(r) = c_e + k_e * exp(sum_j t_ej r_j), at one step.

Every eval domain (training domain or not) gets its own law over ALL training proportions, so zeros
and cross-domain transfer are fine. `FittedLaw.params = {'c': [E], 'k': [E], 't': [E, D]}`, c, k > 0;
the law holds at one step, `FittedLaw.target_step`.

Identifiability: proportions sum to 1, so `t_e + lambda * 1` with `k_e * exp(-lambda)` predicts the same
loss on the simplex. We fix the gauge `sum_j t_ej = 0`: the fitter's free parameters are
(log c, log k, u) with t = Q u, Q an orthonormal basis of the sum-zero subspace [D, D-1]; so a law has
D + 1 free parameters per eval domain and needs at least D + 1 distinct mixtures that vary every
proportion.

Nested pipeline (as in the paper): each run is brought to the target step first. A run measured at the
target step keeps its observed loss; any other run's loss there comes from its step law
L(s) = E + (B/s)^beta (`steplaw.py`). The summary says which source each run used. The mixing law is
then fitted (least squares or Huber on log loss) from starts found by variable projection over a
quasi-random set of t directions (for fixed t, L = c + k exp(t.r) is linear in (c, k)).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws import dml_bounded, steplaw
from bimix_jax.laws import levenberg_marquardt as lm
from bimix_jax.laws.base import FitProblem, Law, register

PARAM_NAMES = ("c", "k", "t")
N_CANDIDATES = 256  # t directions tried by the start generator
T_RANGE = 6.0  # candidate u entries lie in [-T_RANGE, T_RANGE]


@functools.lru_cache(maxsize=None)
def sum_zero_basis(d: int) -> np.ndarray:
    """Orthonormal basis [d, d-1] of {t : sum(t) = 0} (normalised Helmert contrasts)."""
    q = np.zeros((d, d - 1))
    for i in range(1, d):
        q[:i, i - 1] = 1.0
        q[i, i - 1] = -float(i)
        q[:, i - 1] /= np.linalg.norm(q[:, i - 1])
    return q


@functools.lru_cache(maxsize=None)
def _candidates(dim: int) -> np.ndarray:
    """Zero plus a Halton sequence in [-T_RANGE, T_RANGE]^dim: [N_CANDIDATES, dim], deterministic."""
    primes = [p for p in range(2, 2000) if all(p % q for q in range(2, int(p ** 0.5) + 1))][:dim]
    pts = np.zeros((N_CANDIDATES, dim))
    for j, base in enumerate(primes):
        for i in range(1, N_CANDIDATES):
            f, x, n = 1.0, 0.0, i
            while n:
                f /= base
                x += f * (n % base)
                n //= base
            pts[i, j] = (2.0 * x - 1.0) * T_RANGE
    return pts


@dataclasses.dataclass(frozen=True)
class DmlCurve:
    """Per-eval-domain model: theta = (log c, log k, u [D-1]), t = Q u; x = r [D]."""

    n_domains: int

    @property
    def n_params(self) -> int:
        return self.n_domains + 1

    def residual(self, theta_P, x_NxF, logy_N, w_N):
        q = jnp.asarray(sum_zero_basis(self.n_domains), theta_P.dtype)
        return jnp.logaddexp(theta_P[0], theta_P[1] + x_NxF @ (q @ theta_P[2:])) - logy_N

    def starts(self, x_NxF: np.ndarray, logy_N: np.ndarray, w_BxN: np.ndarray, n_starts: int) -> np.ndarray:
        u_KxU = _candidates(self.n_domains - 1)
        xs_KxN = np.exp((u_KxU @ sum_zero_basis(self.n_domains).T) @ x_NxF.T)  # exp(t . r) per candidate
        k, c, cost = lm.linear_pair_grid(np.exp(-logy_N)[None, :], xs_KxN, w_BxN)
        i, j = lm.best_cells(cost, n_starts)
        return np.concatenate([lm.safe_log(lm.take(c, i, j), 1e-3)[..., None],
                               lm.safe_log(lm.take(k, i, j), 1e-3)[..., None], u_KxU[j]], axis=-1)


@register
class DataMixingLaw(Law):
    """L_e(r) = c_e + k_e * exp(t_e . r) at FittedLaw.target_step; params c [E], k [E], t [E, D]."""

    name = "dml"
    version = 1
    uses_step = False

    def __init__(self, train_domains: Sequence[str], eval_domains: Sequence[str]):
        super().__init__(train_domains, eval_domains)
        if len(self.train_domains) < 2:
            raise InputError("the Data Mixing Law needs at least 2 training domains (p_ columns); add domains or use bimix")

    def predict(self, params: Mapping[str, jax.Array], r_D: jax.Array, s: jax.Array) -> jax.Array:
        del s  # The law holds at FittedLaw.target_step only (checked there for concrete steps).
        return params["c"] + params["k"] * jnp.exp(jnp.asarray(r_D) @ jnp.swapaxes(params["t"], -1, -2))

    def check_params(self, params: Mapping[str, np.ndarray]) -> None:
        if set(params) != set(PARAM_NAMES):
            raise InputError(f"dml parameters must be {', '.join(PARAM_NAMES)}, got {', '.join(sorted(params))}; refit")
        e, d = len(self.eval_domains), len(self.train_domains)
        for k, shape in (("c", (e,)), ("k", (e,)), ("t", (e, d))):
            if np.asarray(params[k]).shape != shape:
                raise InputError(f"dml parameter {k!r} has shape {np.asarray(params[k]).shape}, expected {shape}; refit")
        if not (np.all(np.asarray(params["c"]) > 0) and np.all(np.asarray(params["k"]) > 0)):
            raise InputError("dml parameters c and k must be positive; refit with experiments.fit_law")

    def check_inputs(self, r_D: np.ndarray, s: np.ndarray) -> None:
        if r_D.shape[-1:] != (len(self.train_domains),):
            raise InputError(f"proportions have shape {r_D.shape}; expected [..., {len(self.train_domains)}] "
                             f"over {', '.join(self.train_domains)}")

    def fit_problem(self, table, options: lm.SolverOptions, *, target_step: float | None = None,
                    step_min: float = 0.0, bounded: bool = True, ridge: float | str = 0.0) -> FitProblem:
        """bounded: 0 <= c < min observed loss (`dml_bounded`; False: c, k > 0 only, the earlier fit);
        ridge: strength of a ridge on t (bounded only), a number or 'cv' (k-fold CV over runs per domain)."""
        if not (ridge == "cv" or (isinstance(ridge, (int, float)) and np.isfinite(ridge) and ridge >= 0)):
            raise InputError(f"dml ridge={ridge!r} must be a number >= 0 or 'cv'")
        if ridge and not bounded:
            raise InputError("the dml ridge applies to the bounded fit only; drop ridge or set bounded=True")
        target = float(np.max(table.step)) if target_step is None else float(target_step)
        if not (np.isfinite(target) and target > 0):
            raise InputError(f"--target_step={target_step!r} must be a positive step")
        mixtures = table.mixtures()
        points: dict[str, list[list]] = {e: [] for e in self.eval_domains}  # [run, source, loss]
        curves = []
        for e in self.eval_domains:
            for run in table.runs:
                m = (table.run == run) & (table.eval_domain == e)
                if not m.any():
                    continue
                steps, losses = table.step[m], table.loss[m]
                at = np.isclose(steps, target, rtol=1e-9, atol=0.0)
                if at.any():
                    points[e].append([run, "observed", float(losses[at][0])])
                else:
                    keep = steps >= step_min
                    curves.append((run, e, steps[keep], losses[keep]))
                    points[e].append([run, "step_law", len(curves) - 1])
        fits = steplaw.fit_step_laws(curves, target, options)
        xs, logys, runs = [], [], []
        for e in self.eval_domains:
            for p in points[e]:
                if p[1] == "step_law":
                    p[2] = float(fits.prediction[p[2]])
            if not points[e]:
                raise InputError(f"eval domain {e!r} has no rows; drop it from the eval domains")
            runs.append(np.array([p[0] for p in points[e]]))
            xs.append(np.stack([mixtures[r] for r in runs[-1]]))
            logys.append(np.log(np.array([p[2] for p in points[e]])))
        sources = {}
        for e in self.eval_domains:
            for run, src, _ in points[e]:
                sources[run] = src if sources.get(run, src) == src else "mixed"
        eval_domains, train_domains, d = self.eval_domains, self.train_domains, len(self.train_domains)

        def check_rows(g: int, keep_N: np.ndarray) -> str | None:
            e = eval_domains[g]
            mix = np.unique(np.round(xs[g][keep_N][:, :d], 9), axis=0)
            if len(mix) < d + 1:
                return (f"eval domain {e!r}: {len(mix)} distinct mixtures at step {target:g}, fewer than the {d + 1} "
                        f"free Data Mixing Law parameters (c, k and {d - 1} independent t); add runs with other mixtures")
            for j, dom in enumerate(train_domains):
                if np.ptp(mix[:, j]) == 0:
                    return (f"eval domain {e!r}: p_{dom} is {mix[0, j]:g} in every run used; its coefficient t is not "
                            f"identifiable: add runs with another p_{dom} or drop that domain")
            rank = np.linalg.matrix_rank(mix - mix.mean(axis=0), tol=1e-9)
            if rank < d - 1:
                return (f"eval domain {e!r}: the mixtures vary along {rank} of the {d - 1} directions of the simplex; "
                        "add runs that vary the proportions independently")
            return None

        q = sum_zero_basis(d)

        def to_params(theta_xP: np.ndarray) -> dict[str, np.ndarray]:
            theta_xP = np.asarray(theta_xP, dtype=np.float64)
            return {"c": np.exp(theta_xP[..., 0]), "k": np.exp(theta_xP[..., 1]), "t": theta_xP[..., 2:] @ q.T}

        n_obs = sum(p[1] == "observed" for e in eval_domains for p in points[e])
        summary = {
            "target_step": target,
            "points_used": int(sum(len(v) for v in points.values())),
            "points_observed": int(n_obs),
            "points_step_law": int(sum(len(v) for v in points.values()) - n_obs),
            "source_by_run": sources,
            "runs": len(sources),
            "steps": [float(np.min(table.step)), float(np.max(table.step))],
            "step_min": float(step_min),
            "step_law": fits.report(),
            "per_domain": {e: {"points": len(points[e])} for e in eval_domains},
        }
        if not bounded:
            return FitProblem(model=DmlCurve(d), x=tuple(xs), logy=tuple(logys), runs=tuple(runs),
                              to_params=to_params, check_rows=check_rows, summary=summary, target_step=target)
        if ridge == "cv":
            lam_E, cv_mse = dml_bounded.choose_ridge(xs, logys, runs, q, options)
            summary["ridge_cv"] = {"grid": list(dml_bounded.RIDGE_GRID), "folds": dml_bounded.CV_FOLDS,
                                   "cv_mse_log": {e: cv_mse[g].tolist() for g, e in enumerate(eval_domains)}}
        else:
            lam_E = np.full(len(xs), float(ridge))
        for g, e in enumerate(eval_domains):
            summary["per_domain"][e]["ridge"] = float(lam_E[g])
        min_loss = np.array([float(np.exp(np.min(y))) for y in logys])

        def report(params: dict[str, np.ndarray]) -> dict[str, dict]:
            return dict(zip(eval_domains, dml_bounded.bound_report(params["c"], min_loss)))

        return FitProblem(model=dml_bounded.curve(d, q), x=tuple(dml_bounded.with_ridge(x, lam) for x, lam in
                                                              zip(xs, lam_E)),
                          logy=tuple(logys), runs=tuple(runs), to_params=to_params, check_rows=check_rows,
                          summary=summary, target_step=target, report=report)
