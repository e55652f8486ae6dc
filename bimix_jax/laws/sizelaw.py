"""The size law of Data Mixing Laws' nested pipeline: L(N) = E + (N0 / N)^alpha per (mixture, eval domain).

N counts non-embedding parameters (`NON_EMBEDDING`, Ye et al.'s values for the Pythia-style sizes). With
few sizes a curve has more parameters than points, so parameters are tied as in the paper: one alpha for
all curves (`tie_alpha=True`; the paper's `tie_alpha=all`) and, optionally, one E per eval domain for all
mixtures (`tie_e=True`; needed with two sizes, where per-curve E and N0 fit any alpha exactly). For a
fixed alpha the law is linear in (E, B = N0^alpha), so the fit is variable projection: relative least
squares (weights 1/L, close to log-loss residuals) for E, B >= 0 on a grid of alpha, refined by a bounded
golden-section search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from bimix_jax.errors import InputError

# Non-embedding parameter counts of the model sizes (Ye et al., arXiv 2403.16952).
NON_EMBEDDING = {"70M": 18.9e6, "160M": 85.1e6, "305M": 201.5e6, "410M": 302.3e6, "1B": 805.7e6}
ALPHA_GRID = np.geomspace(0.02, 3.0, 200)


def n_params(size: str, overrides: Mapping[str, float] | None = None) -> float:
    table = {**NON_EMBEDDING, **(overrides or {})}
    if size not in table:
        raise InputError(f"model size {size!r} has no parameter count; give it, e.g. --sizes={size}=3.0e8")
    return float(table[size])


@dataclasses.dataclass(frozen=True)
class SizeLaw:
    """Fitted curves: E [C], B [C] (= N0^alpha), one alpha; curve c predicts E_c + B_c N^-alpha."""

    curves: tuple  # curve keys, e.g. (run key, eval domain)
    E: np.ndarray
    B: np.ndarray
    alpha: float
    rms_rel: float  # RMS relative residual of the fit

    def predict(self, n: float) -> np.ndarray:
        return self.E + self.B * float(n) ** -self.alpha

    @property
    def N0(self) -> np.ndarray:
        return self.B ** (1.0 / self.alpha)


def _solve(alpha: float, n_K: np.ndarray, y_K: np.ndarray, curve_K: np.ndarray, group_K: np.ndarray,
           n_curves: int, n_groups: int, tie_e: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """Relative least squares for (E, B) at fixed alpha; cost inf if some E or B < 0."""
    n_e = n_groups if tie_e else n_curves
    a = np.zeros((len(y_K), n_e + n_curves))
    a[np.arange(len(y_K)), group_K if tie_e else curve_K] = 1.0
    a[np.arange(len(y_K)), n_e + curve_K] = n_K ** -alpha
    w = 1.0 / y_K
    coef, *_ = np.linalg.lstsq(a * w[:, None], y_K * w, rcond=None)
    if np.any(coef < -1e-12):
        return np.inf, coef[:n_e], coef[n_e:]
    r = (a @ coef - y_K) * w
    return float(np.sum(r * r)), coef[:n_e], coef[n_e:]


def fit_size_law(points: Sequence[tuple[object, str, float, float]], *, tie_e: bool = True) -> SizeLaw:
    """Fits (curve key, eval domain, N, loss) points; alpha tied over all curves (see module doc)."""
    keys = list(dict.fromkeys(p[0] for p in points))
    groups = list(dict.fromkeys(p[1] for p in points))
    curve_K = np.array([keys.index(p[0]) for p in points])
    group_K = np.array([groups.index(p[1]) for p in points])
    n_K = np.array([p[2] for p in points], float)
    y_K = np.array([p[3] for p in points], float)
    n_free = (len(groups) if tie_e else len(keys)) + len(keys) + 1
    if len(np.unique(n_K)) < 2 or len(y_K) < n_free:
        raise InputError(f"the size law has {n_free} free parameters and {len(y_K)} points over "
                         f"{len(np.unique(n_K))} model sizes; add model sizes or tie E per eval domain")
    args = (n_K, y_K, curve_K, group_K, len(keys), len(groups), tie_e)
    costs = np.array([_solve(a, *args)[0] for a in ALPHA_GRID])
    if not np.isfinite(costs).any():
        raise InputError("no size law L = E + (N0/N)^alpha with E, N0 >= 0 fits these points (does the loss "
                         "grow with model size?); check the table")
    i = int(np.argmin(costs))
    lo, hi = ALPHA_GRID[max(i - 1, 0)], ALPHA_GRID[min(i + 1, len(ALPHA_GRID) - 1)]
    g = (np.sqrt(5) - 1) / 2
    for _ in range(60):  # Golden-section refinement inside the bracketing grid cells.
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if _solve(x1, *args)[0] <= _solve(x2, *args)[0]:
            hi = x2
        else:
            lo = x1
    alpha = 0.5 * (lo + hi)
    if _solve(alpha, *args)[0] > costs[i]:
        alpha = float(ALPHA_GRID[i])
    cost, e, b = _solve(alpha, *args)
    e_c = e[np.array([groups.index(next(p[1] for p in points if p[0] == k)) for k in keys])] if tie_e else e
    return SizeLaw(curves=tuple(keys), E=np.maximum(e_c, 0.0), B=np.maximum(b, 0.0), alpha=float(alpha),
                   rms_rel=float(np.sqrt(cost / len(y_K))))
