"""The bounded fit of the Data Mixing Law: 0 <= c_e < min observed loss, grid-over-c starts, optional ridge.

Per eval domain, `L(r) = c + k exp(t . r)` with t = Q u in the sum-zero gauge (see `dml.py`). Unbounded,
c can run above the smallest observed loss or below zero, and with few mixtures the exponents then grow
to hundreds and the law extrapolates wildly. Here

* c = m * sigmoid(z), m = the smallest observed loss of the rows fitted (so 0 < c < m, always);
* starts follow the paper's two-domain procedure: for each c on a grid of fractions of m, the exponents
  (log k, u) solve a linear least-squares problem, `log(y - c) = log k + (r Q) . u`; the best few grid
  cells (cost measured on log loss, as fitted) start Levenberg-Marquardt over (z, log k, u);
* an optional ridge `lam * sum(w) * ||u||^2` (appended residuals, `penalty`) shrinks the exponents; its
  strength per eval domain is chosen by k-fold cross-validation over the fitted runs (`choose_ridge`);
* the fitted c is reported against its bounds (`bound_report`).

Features per row: x = [r_1..r_D, sqrt(lam)] (the ridge strength rides along with the data, so every
strength of the cross-validation grid runs in the same compiled program).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bimix_jax.laws import levenberg_marquardt as lm

# Starting values of c / min(y): the paper's grid over c, denser near the bound where fits often end.
C_FRACTIONS = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98,
                        0.99, 0.995, 0.999])
RIDGE_GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # lam, relative to the fitted rows' total weight
CV_FOLDS = 5
Z_BOX = 30.0  # |z| bound: c / m in [sigmoid(-30), sigmoid(30)]
AT_BOUND = 1e-3  # c / m within this of 0 or 1: reported as at that bound


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p) - np.log1p(-p)


@dataclasses.dataclass(frozen=True)
class DmlBoundedCurve:
    """theta = (z, log k, u [D-1]); c = m sigmoid(z); x = [r [D], sqrt(lam)]. `complete` -> (log c, log k, u)."""

    n_domains: int
    basis: tuple  # sum-zero basis Q [D, D-1] as nested tuples (hashable)

    @property
    def n_params(self) -> int:
        return self.n_domains + 1

    @property
    def bounds(self) -> tuple:
        return ((-Z_BOX, Z_BOX),) + ((-lm.THETA_BOX, lm.THETA_BOX),) * self.n_domains

    def _log_m(self, logy_N, w_N):
        return jnp.min(jnp.where(w_N > 0, logy_N, jnp.inf))

    def _log_pred(self, theta_P, x_NxF, log_m):
        q = jnp.asarray(self.basis, theta_P.dtype)
        log_c = log_m + jax.nn.log_sigmoid(theta_P[0])
        return jnp.logaddexp(log_c, theta_P[1] + x_NxF[:, : self.n_domains] @ (q @ theta_P[2:]))

    def residual(self, theta_P, x_NxF, logy_N, w_N):
        return self._log_pred(theta_P, x_NxF, self._log_m(logy_N, w_N)) - logy_N

    def penalty(self, theta_P, x_NxF, w_N):
        return x_NxF[0, self.n_domains] * jnp.sqrt(jnp.sum(w_N)) * theta_P[2:]

    def complete(self, theta_P, x_NxF, logy_N, w_N):
        log_c = self._log_m(logy_N, w_N) + jax.nn.log_sigmoid(theta_P[0])
        return jnp.concatenate([log_c[None], theta_P[1:]])

    def starts(self, x_NxF: np.ndarray, logy_N: np.ndarray, w_BxN: np.ndarray, n_starts: int) -> np.ndarray:
        """For each c = f * m on C_FRACTIONS, (log k, u) by weighted linear least squares; the n best cells."""
        d = self.n_domains
        q = np.asarray(self.basis)
        a_NxD = np.concatenate([np.ones((len(logy_N), 1)), x_NxF[:, :d] @ q], axis=1)  # [1, r Q]
        lam = float(x_NxF[0, d]) ** 2
        y_N = np.exp(logy_N)
        thetas = []
        for w_N in w_BxN:
            on = w_N > 0
            m = float(np.min(y_N[on]))
            ridge = np.diag([0.0] + [lam * float(np.sum(w_N))] * (d - 1))
            th_b, cost_b = [], []
            for f in C_FRACTIONS:
                c = f * m
                z_N = np.where(on, np.log(np.maximum(y_N - c, 1e-12)), 0.0)
                gram = (a_NxD * w_N[:, None]).T @ a_NxD + ridge
                beta = np.linalg.lstsq(gram, (a_NxD * w_N[:, None]).T @ z_N, rcond=None)[0]
                pred = np.logaddexp(np.log(max(c, 1e-300)), a_NxD @ beta)
                cost = float(np.sum(w_N * (pred - logy_N) ** 2) + lam * np.sum(w_N) * np.sum(beta[1:] ** 2))
                th_b.append(np.concatenate([[_logit(np.array(f))], beta]))
                cost_b.append(cost if np.isfinite(cost) else np.inf)
            order = np.argsort(np.array(cost_b), kind="stable")
            order = np.resize(order, n_starts)  # Fewer cells than starts: repeat the best ones.
            thetas.append(np.stack([th_b[i] for i in order]))
        return np.stack(thetas)


def curve(n_domains: int, basis: np.ndarray) -> DmlBoundedCurve:
    return DmlBoundedCurve(n_domains, tuple(map(tuple, np.asarray(basis, float).tolist())))


def with_ridge(x_NxD: np.ndarray, lam: float) -> np.ndarray:
    """Appends the sqrt(lam) column."""
    return np.concatenate([x_NxD, np.full((len(x_NxD), 1), np.sqrt(lam))], axis=1)


def log_predict(theta_xP: np.ndarray, r_xNxD: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """log L from completed parameters (log c, log k, u) [..., P] at mixtures [..., N, D]."""
    t = theta_xP[..., 2:] @ np.asarray(basis).T  # [..., D]
    return np.logaddexp(theta_xP[..., :1], theta_xP[..., 1:2] + np.einsum("...nd,...d->...n", r_xNxD, t))


def fold_of_runs(runs_N: np.ndarray, n_folds: int) -> np.ndarray:
    """Fold index per row: runs sorted by id, dealt round-robin into n_folds folds."""
    uniq = np.unique(runs_N)
    k = min(n_folds, len(uniq))
    return np.searchsorted(uniq, runs_N) % k


def choose_ridge(xs: Sequence[np.ndarray], logys: Sequence[np.ndarray], runs: Sequence[np.ndarray],
                 basis: np.ndarray, options: lm.SolverOptions, grid: Sequence[float] = RIDGE_GRID,
                 n_folds: int = CV_FOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Ridge strength per eval domain by k-fold CV over runs: (lam [G], CV mean squared log error [G, L]).

    Every (domain, strength, fold) fit runs in one compiled call (folds are weight vectors).
    """
    g_n, l_n = len(xs), len(grid)
    d = xs[0].shape[1]
    gx = [with_ridge(xs[g], lam) for g in range(g_n) for lam in grid]
    gy = [logys[g] for g in range(g_n) for _ in grid]
    x, logy, w = lm.pack_groups(gx, gy)
    folds = [fold_of_runs(runs[g], n_folds) for g in range(g_n)]
    k_n = max(int(f.max()) + 1 for f in folds)
    n = x.shape[1]
    fold_GLxN = np.full((g_n * l_n, n), -1)
    for g in range(g_n):
        fold_GLxN[g * l_n:(g + 1) * l_n, : len(folds[g])] = folds[g]
    w_KxGLxN = np.stack([w * (fold_GLxN != k) for k in range(k_n)])
    sol = lm.solve_batched(curve(d, basis), x, logy, w_KxGLxN, options)
    pred = log_predict(sol.theta, np.broadcast_to(x[None, :, :, :d], (k_n,) + x[..., :d].shape), basis)
    held = np.stack([(fold_GLxN == k) for k in range(k_n)])  # [K, GL, N]
    sq = np.where(held & np.isfinite(pred), (pred - logy[None]) ** 2, 0.0)
    bad = held & ~np.isfinite(pred)
    mse = (sq.sum(axis=(0, 2)) + 1e6 * bad.sum(axis=(0, 2))) / np.maximum(held.sum(axis=(0, 2)), 1)
    mse_GxL = mse.reshape(g_n, l_n)
    return np.asarray(grid)[np.argmin(mse_GxL, axis=1)], mse_GxL


def bound_report(c_E: np.ndarray, min_loss_E: np.ndarray) -> list[dict]:
    """Per eval domain: c / min(y) and whether c ended at a bound ('zero', 'min_loss') or inside."""
    out = []
    for c, m in zip(np.asarray(c_E, float), np.asarray(min_loss_E, float)):
        ratio = c / m
        at = "zero" if ratio < AT_BOUND else ("min_loss" if ratio > 1.0 - AT_BOUND else None)
        out.append({"c_over_min_loss": float(ratio), "c_at_bound": at})
    return out
