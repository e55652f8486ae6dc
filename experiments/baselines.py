"""Reference fitters in scipy, the way the papers fit their laws, for tests and benchmarks (never the library).

* `dml_bounded_scipy`: the Data Mixing Law per eval domain, bounded 0 <= c < min(y) (Ye et al.'s own
  procedure): grid over c / min(y), exponents by linear least squares for each c, then
  `scipy.optimize.least_squares(method='trf')` with bounds and an analytic Jacobian from the best starts.
* `dml_predict`: L = c + k exp(t . r).
* `bimix_reduced_lm`: BiMix's least-squares problem with alpha eliminated (3 parameters), MINPACK LM, the same
  starts and variants as the jax fitter: the fair baseline of `bench_fit`.
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


def bimix_reduced_lm(x0_N: np.ndarray, x1_N: np.ndarray, logy_N: np.ndarray, theta0_SxP: np.ndarray,
                     variant_S: np.ndarray, *, alpha_min: float, ftol: float, xtol: float, gtol: float,
                     max_nfev: int | None = None) -> tuple[np.ndarray, float, int]:
    """BiMix's reduced least-squares problem (alpha eliminated in closed form, theta = (log a', log c, log beta)),
    solved by MINPACK Levenberg-Marquardt (`least_squares(method='lm')`) with its analytic Jacobian from each start;
    variant 1 pins alpha at `alpha_min`, variant 0 profiles it (admissible if it ends >= alpha_min), as the jax
    fitter does (`bimix_jax.laws.bimix.BiMixProfiledCurve`). Returns (best theta, best cost, evaluations)."""
    x0, x1, ly = (np.asarray(v, float) for v in (x0_N, x1_N, logy_N))
    den = float(x0 @ x0)

    def parts(th):
        u = th[0] - np.exp(th[2]) * x1
        g = np.logaddexp(u, th[1]) - ly
        sa, sc = np.exp(u - (g + ly)), np.exp(th[1] - (g + ly))
        jac_g = np.stack([sa, sc, -sa * np.exp(th[2]) * x1], axis=1)
        return g, jac_g

    best, nfev = (None, np.inf), 0
    for th0, v in zip(theta0_SxP, variant_S):
        if v == 1:
            def resid(th):
                return parts(th)[0] - alpha_min * x0

            def jac(th):
                return parts(th)[1]
        else:
            def resid(th):
                g = parts(th)[0]
                return g - (g @ x0 / den) * x0

            def jac(th):
                jg = parts(th)[1]
                return jg - np.outer(x0, x0 @ jg) / den
        sol = optimize.least_squares(resid, th0, jac=jac, method="lm", ftol=ftol, xtol=xtol, gtol=gtol,
                                     max_nfev=max_nfev)
        nfev += sol.nfev
        alpha = alpha_min if v == 1 else float(parts(sol.x)[0] @ x0 / den)
        if alpha >= alpha_min and sol.cost < best[1]:
            best = (sol.x, float(sol.cost))
    return best[0], best[1], nfev
