"""The step law of Data Mixing Laws' nested pipeline: L(s) = E + (B / s)^beta per (run, eval domain).

Used by the Data Mixing Law to bring every run to one target step: a run measured at the target step keeps its
observed loss; any other run gets its step law, fitted on its own checkpoints, evaluated at the target
step (interpolation or extrapolation). All curves are fitted in one compiled call of the generic solver
(log-loss residuals, E, B, beta > 0); starts come from variable projection on a beta grid
(for fixed beta, L = E + B^beta s^-beta is linear in (E, B^beta)).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws import levenberg_marquardt as lm

BETA_GRID = np.geomspace(0.02, 3.0, 40)
MIN_POINTS = 3  # E, B, beta


@dataclasses.dataclass(frozen=True)
class StepCurve:
    """theta = (log E, log B - log s_ref, log beta); x = [log s - log s_ref]."""

    n_params: int = 3

    def residual(self, theta_P, x_NxF, logy_N, w_N):
        return jnp.logaddexp(theta_P[0], jnp.exp(theta_P[2]) * (theta_P[1] - x_NxF[:, 0])) - logy_N

    def starts(self, x_NxF: np.ndarray, logy_N: np.ndarray, w_BxN: np.ndarray, n_starts: int) -> np.ndarray:
        xs_KxN = np.exp(-BETA_GRID[:, None] * x_NxF[None, :, 0])
        scale, floor, cost = lm.linear_pair_grid(np.exp(-logy_N)[None, :], xs_KxN, w_BxN)  # E + B^beta s^-beta
        i, j = lm.best_cells(cost, n_starts)
        beta = BETA_GRID[j]
        return np.stack([lm.safe_log(lm.take(floor, i, j), 1e-3),
                         lm.safe_log(lm.take(scale, i, j), 1e-6) / beta, np.log(beta)], axis=-1)


@dataclasses.dataclass(frozen=True)
class StepLawFits:
    """Step laws of K (run, eval domain) curves and their predictions at the target step."""

    run: np.ndarray  # [K] str
    eval_domain: np.ndarray  # [K] str
    E: np.ndarray  # [K]
    B: np.ndarray  # [K]
    beta: np.ndarray  # [K]
    prediction: np.ndarray  # [K] loss at the target step
    n_points: np.ndarray  # [K]
    max_step: np.ndarray  # [K] last fitted checkpoint (target beyond it: extrapolation)
    converged: np.ndarray  # [K] bool
    rmse_log: np.ndarray  # [K] fit residual RMS on log loss

    def report(self) -> dict[str, Any]:
        return {
            "curves": int(self.run.size),
            "all_converged": bool(np.all(self.converged)),
            "max_rmse_log": float(np.max(self.rmse_log)) if self.run.size else None,
            "fits": {f"{r}/{e}": {"E": float(E), "B": float(B), "beta": float(b), "predicted": float(p),
                                  "points": int(n), "last_step": float(m), "converged": bool(c)}
                     for r, e, E, B, b, p, n, m, c in zip(self.run, self.eval_domain, self.E, self.B, self.beta,
                                                           self.prediction, self.n_points, self.max_step,
                                                           self.converged)},
        }


def predict(E: np.ndarray, B: np.ndarray, beta: np.ndarray, step: np.ndarray | float) -> np.ndarray:
    """L(s) = E + (B / s)^beta."""
    return E + (B / np.asarray(step, dtype=float)) ** beta


def fit_step_laws(curves: list[tuple[str, str, np.ndarray, np.ndarray]], target_step: float,
                  options: lm.SolverOptions) -> StepLawFits:
    """Fits L(s) = E + (B/s)^beta to each (run, eval_domain, steps, losses) curve; predicts at target_step."""
    if not curves:
        return StepLawFits(*(np.zeros(0, dtype=t) for t in (str, str, float, float, float, float, int, float, bool,
                                                             float)))
    xs, logys, refs = [], [], []
    for run, e, steps, losses in curves:
        n = np.unique(steps).size
        if n < MIN_POINTS:
            raise InputError(
                f"run {run!r}, eval domain {e!r}: {n} checkpoint(s) to extrapolate to step {target_step:g}, the step "
                f"law L = E + (B/s)^beta needs at least {MIN_POINTS}; add checkpoints, lower --step_min, or choose a "
                "--target_step the run was measured at"
            )
        ref = float(np.mean(np.log(steps)))
        xs.append((np.log(steps) - ref)[:, None])
        logys.append(np.log(losses))
        refs.append(ref)
    x, logy, w = lm.pack_groups(xs, logys)
    sol = lm.solve(StepCurve(), x, logy, w, options)
    if not np.all(np.isfinite(sol.cost)):
        k = int(np.argmax(~np.isfinite(sol.cost)))
        raise InputError(f"the step-law fit of run {curves[k][0]!r}, eval domain {curves[k][1]!r} failed (non-finite); "
                         "check that run's losses")
    ref_K = np.array(refs)
    E = np.exp(sol.theta[:, 0])
    beta = np.exp(sol.theta[:, 2])
    B = np.exp(sol.theta[:, 1] + ref_K)
    n_points = np.array([len(c[3]) for c in curves])
    rmse_log = np.array([np.sqrt(np.mean((np.log(predict(E[k], B[k], beta[k], c[2])) - np.log(c[3])) ** 2))
                         for k, c in enumerate(curves)])
    return StepLawFits(
        run=np.array([c[0] for c in curves]), eval_domain=np.array([c[1] for c in curves]), E=E, B=B, beta=beta,
        prediction=predict(E, B, beta, target_step), n_points=n_points,
        max_step=np.array([float(np.max(c[2])) for c in curves]), converged=sol.converged,
        rmse_log=rmse_log,
    )
