"""Reference fitters in scipy, the way the papers fit their laws, for tests and benchmarks (never the library).

* `dml_bounded_scipy`: the Data Mixing Law per eval domain, bounded 0 <= c < min(y) (Ye et al.'s own
  procedure): grid over c / min(y), exponents by linear least squares for each c, then
  `scipy.optimize.least_squares(method='trf')` with bounds and an analytic Jacobian from the best starts.
* `dml_predict`: L = c + k exp(t . r).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from bimix_jax.laws.dml import sum_zero_basis
from bimix_jax.laws.dml_bounded import C_FRACTIONS


def dml_predict(params: dict[str, np.ndarray], r_ND: np.ndarray) -> np.ndarray:
    return params["c"] + params["k"] * np.exp(np.asarray(r_ND) @ params["t"])


def dml_bounded_scipy(r_ND: np.ndarray, y_N: np.ndarray, n_starts: int = 4) -> dict[str, np.ndarray]:
    """Fits one eval domain; returns {'c', 'k', 't' [D]} (t in the sum-zero gauge) and the final 'cost'."""
    r_ND, y_N = np.asarray(r_ND, float), np.asarray(y_N, float)
    d = r_ND.shape[1]
    q = sum_zero_basis(d)
    a_NxD = np.concatenate([np.ones((len(y_N), 1)), r_ND @ q], axis=1)
    m = float(y_N.min())
    logy = np.log(y_N)
    cells = []
    for f in C_FRACTIONS:
        c = f * m
        beta = np.linalg.lstsq(a_NxD, np.log(np.maximum(y_N - c, 1e-12)), rcond=None)[0]
        cost = float(np.sum((np.logaddexp(np.log(max(c, 1e-300)), a_NxD @ beta) - logy) ** 2))
        cells.append((cost, c, beta))
    cells.sort(key=lambda z: z[0])

    def resid(p):
        return np.log(p[0] + np.exp(a_NxD @ p[1:])) - logy

    def jac(p):
        e = np.exp(a_NxD @ p[1:])
        den = (p[0] + e)[:, None]
        return np.concatenate([1.0 / den, a_NxD * e[:, None] / den], axis=1)

    hi = m * (1.0 - 1e-9)
    lo_b = np.array([0.0] + [-np.inf] * d)
    hi_b = np.array([hi] + [np.inf] * d)
    best = None
    for _, c, beta in cells[:n_starts]:
        p0 = np.concatenate([[min(max(c, 1e-9 * m), hi * (1 - 1e-9))], beta])
        sol = optimize.least_squares(resid, p0, jac=jac, bounds=(lo_b, hi_b), method="trf")
        if best is None or sol.cost < best.cost:
            best = sol
    p = best.x
    return {"c": p[0], "k": float(np.exp(p[1])), "t": q @ p[2:], "cost": float(best.cost)}
