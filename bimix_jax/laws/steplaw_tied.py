"""Step laws L(s) = E + C s^-beta for many curves at once, with the exponent tied over groups of curves.

The nested prediction's step stage (`nested.py`). A curve is one (model size, run, eval domain); its
exponent beta is shared by every curve of its *tie group*: the curve alone (`tie='curve'`, the paper's
per-run law), every curve of one eval domain and model size (`'domain_size'`), or every curve of one eval
domain over all sizes and runs (`'domain'`). For fixed beta the law is linear in (E, C), so the fit is
variable projection: relative least squares (weights 1/L, close to log-loss residuals) with E, C >= 0 in
closed form per curve, the tied beta chosen on a log grid over `BETA_BOUNDS` and refined by golden
section inside its bracket. Everything is vectorised over curves (numpy segment sums), so thousands of
curves fit in milliseconds. `backtest_min_step` chooses the first fitted step by backtesting inside the
fit data (see its docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bimix_jax.errors import InputError

BETA_BOUNDS = (0.02, 3.0)  # physical range of the step exponent: positive, at most cubic decay
TIES = ("curve", "domain_size", "domain")
MIN_POINTS = 3
_GOLDEN_ITERS = 48


@dataclasses.dataclass(frozen=True)
class Curves:
    """K points of C curves, sorted by curve: step s [K], loss y [K], curve index [K] and curve starts [C]."""

    s_K: np.ndarray
    y_K: np.ndarray
    curve_K: np.ndarray
    start_C: np.ndarray
    ref: float  # reference log step (conditioning)

    @classmethod
    def of(cls, steps: Sequence[np.ndarray], losses: Sequence[np.ndarray]) -> Curves:
        s = np.concatenate([np.asarray(v, float) for v in steps])
        y = np.concatenate([np.asarray(v, float) for v in losses])
        n = np.array([len(v) for v in steps])
        start = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(int)
        return cls(s, y, np.repeat(np.arange(len(n)), n), start, float(np.mean(np.log(s))))


def _sums(c: Curves, beta_K_or_G: np.ndarray) -> tuple[np.ndarray, ...]:
    """Weighted segment sums per curve, [G, C] each: S11, S1x, Sxx, S1y, Sxy, Syy (x = (s/ref)^-beta)."""
    beta = np.atleast_2d(beta_K_or_G)
    x = np.exp(-beta * (np.log(c.s_K) - c.ref))
    w2 = 1.0 / c.y_K ** 2
    cols = (np.broadcast_to(w2, x.shape), w2 * x, w2 * x * x, np.broadcast_to(w2 * c.y_K, x.shape),
            w2 * x * c.y_K, np.broadcast_to(w2 * c.y_K ** 2, x.shape))
    return tuple(np.add.reduceat(v, c.start_C, axis=1) for v in cols)


def _solve(sums: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E, C >= 0 minimising the relative squared error per curve, and its cost; each [G, C]."""
    s11, s1x, sxx, s1y, sxy, syy = sums
    with np.errstate(divide="ignore", invalid="ignore"):
        det = s11 * sxx - s1x * s1x
        e = (sxx * s1y - s1x * sxy) / det
        cc = (s11 * sxy - s1x * s1y) / det
        e_only, c_only = np.maximum(s1y / s11, 0.0), np.maximum(sxy / sxx, 0.0)

    def cost(e_, c_):
        return syy - 2 * e_ * s1y - 2 * c_ * sxy + e_ * e_ * s11 + 2 * e_ * c_ * s1x + c_ * c_ * sxx

    ok = (e >= 0) & (cc >= 0) & (det > 0)
    ce, cc_ = cost(e_only, 0.0), cost(0.0, c_only)
    use_e = ce <= cc_
    e = np.where(ok, e, np.where(use_e, e_only, 0.0))
    cc = np.where(ok, cc, np.where(use_e, 0.0, c_only))
    out = np.where(ok, cost(e, cc), np.minimum(ce, cc_))
    return e, cc, np.where(np.isfinite(out), np.maximum(out, 0.0), np.inf)


def _group_cost(c: Curves, beta_T: np.ndarray, tie_C: np.ndarray) -> np.ndarray:
    """Summed cost of each tie group [T] at its own beta."""
    cost = _solve(_sums(c, beta_T[tie_C][c.curve_K][None]))[2][0]
    return np.bincount(tie_C, weights=cost, minlength=len(beta_T))


@dataclasses.dataclass(frozen=True)
class TiedFit:
    """Fitted curves: E, C, beta per curve [C] (L = E + C (s / exp(ref))^-beta), tie group per curve."""

    E: np.ndarray
    C: np.ndarray
    beta: np.ndarray
    tie: np.ndarray
    ref: float
    rms_rel: np.ndarray  # [C] RMS relative residual per curve
    at_bound: np.ndarray  # [C] beta at an end of BETA_BOUNDS

    def predict(self, s: np.ndarray | float, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.E[idx] + self.C[idx] * np.exp(-self.beta[idx] * (np.log(s) - self.ref))


def fit(steps: Sequence[np.ndarray], losses: Sequence[np.ndarray], tie_C: Sequence[int] | np.ndarray,
        names: Sequence[str] | None = None, grid: int = 64) -> TiedFit:
    """Fits every curve (steps[c], losses[c]); curves with the same `tie_C` share beta."""
    for k, s in enumerate(steps):
        if np.unique(s).size < MIN_POINTS:
            name = names[k] if names else f"curve {k}"
            raise InputError(f"{name}: {np.unique(s).size} checkpoint(s) in the fitted steps, the step law "
                             f"L = E + C s^-beta needs at least {MIN_POINTS}; lower --min_step or raise --max_step")
    c = Curves.of(steps, losses)
    _, tie = np.unique(np.asarray(tie_C), return_inverse=True)
    n_tie = int(tie.max()) + 1
    g = np.geomspace(*BETA_BOUNDS, grid)
    cost_GxC = _solve(_sums(c, g[:, None]))[2]
    cost_GxT = np.stack([np.bincount(tie, weights=row, minlength=n_tie) for row in cost_GxC])
    i = np.argmin(cost_GxT, axis=0)
    lo, hi = g[np.maximum(i - 1, 0)], g[np.minimum(i + 1, grid - 1)]
    r = (np.sqrt(5) - 1) / 2
    for _ in range(_GOLDEN_ITERS):  # Golden section per tie group, vectorised.
        x1, x2 = hi - r * (hi - lo), lo + r * (hi - lo)
        left = _group_cost(c, x1, tie) <= _group_cost(c, x2, tie)
        hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
    beta_T = 0.5 * (lo + hi)
    worse = _group_cost(c, beta_T, tie) > cost_GxT[i, np.arange(n_tie)]
    beta_T = np.where(worse, g[i], beta_T)
    beta_C = beta_T[tie]
    e, cc, cost = (v[0] for v in _solve(_sums(c, beta_C[c.curve_K][None])))
    n_C = np.bincount(c.curve_K)
    edge = (np.isclose(beta_C, BETA_BOUNDS[0], rtol=1e-3)) | (np.isclose(beta_C, BETA_BOUNDS[1], rtol=1e-3))
    return TiedFit(E=e, C=cc, beta=beta_C, tie=tie, ref=c.ref, rms_rel=np.sqrt(cost / n_C), at_bound=edge)


def backtest_min_step(steps: Sequence[np.ndarray], losses: Sequence[np.ndarray], tie_C: Sequence[int],
                      ratio: float, candidates: Sequence[float] | None = None) -> dict:
    """The first fitted step that extrapolates best inside the fit data.

    `ratio` is the extrapolation asked for (target step / last fitted step). Each curve's checkpoints above
    s_max / sqrt(ratio) are held out (a backtest window ending later than s_max / ratio, so that it does not
    sit in the early transient the choice is about; at least a factor 1.25); for every candidate first step
    (default: the checkpoints nearest 0, 5, 10, 20, ..., 67% of that cut) the laws are fitted on
    [candidate, cut] and predict every held-out checkpoint; the candidate with the smallest mean absolute
    log error wins. Returns {'min_step', 'scores' {candidate: error}, 'ratio', 'backtest_max_step'};
    InputError when the window holds too few checkpoints.
    """
    ratio = max(float(np.sqrt(max(ratio, 1.0))), 1.25)
    s_max = min(float(np.max(s)) for s in steps)
    cut = s_max / ratio
    all_steps = np.unique(np.concatenate([np.asarray(s, float) for s in steps]))
    if candidates is None:
        fr = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.67]) * cut
        candidates = np.unique([all_steps[np.argmin(np.abs(all_steps - f))] for f in fr])
    steps = [np.asarray(s, float) for s in steps]
    losses = [np.asarray(y, float) for y in losses]
    held = [s > cut for s in steps]
    scores = {}
    for lo in candidates:
        keep = [(s >= lo) & (s <= cut) for s in steps]
        if min(np.unique(s[k]).size for s, k in zip(steps, keep)) < MIN_POINTS + 1:
            continue
        f = fit([s[k] for s, k in zip(steps, keep)], [y[k] for y, k in zip(losses, keep)], tie_C)
        err = [np.abs(np.log(f.predict(s[h], i) / y[h])) for i, (s, y, h) in enumerate(zip(steps, losses, held))]
        scores[float(lo)] = float(np.mean(np.concatenate(err)))
    if not scores:
        raise InputError(f"too few checkpoints below step {cut:g} to backtest the first fitted step; give "
                         "--min_step explicitly")
    best = min(scores, key=scores.get)
    return {"min_step": best, "scores": scores, "ratio": ratio, "backtest_max_step": cut}
