"""The size law of the nested prediction, per curve (mixture, eval domain) over model sizes N.

N counts non-embedding parameters (`NON_EMBEDDING`, Ye et al.'s values for the Pythia-style sizes). Two forms:

* `floor` (Ye et al.): L(N) = E + B N^-alpha, E >= 0 per eval domain (shared by every mixture; `tie_e=False`
  gives each curve its own E, which needs at least three sizes per curve), B >= 0 per curve;
* `power`: L(N) = B N^-alpha (no floor): every mixture of an eval domain gains the same *relative* amount from
  size, whatever its level. With two sizes the floor form must take the floor of one mixture for every other;
  a mixture that never saw a domain has a much higher loss there and the floor form then gives it most of
  the gain; the power form does not.

alpha is tied over all curves (`tie_alpha='all'`, the paper's `tie_alpha=all`) or per eval domain
(`'domain'`), and kept in `ALPHA_BOUNDS`. For fixed alpha the floor form is linear in (E, B): relative least
squares (weights 1/L) with B profiled out per curve and E per eval domain in closed form, vectorised over the
whole alpha grid (segment sums), refined by golden section; the power form is linear in (log B, alpha)
and solved exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from bimix_jax.errors import InputError

# Non-embedding parameter counts of the model sizes (Ye et al., arXiv 2403.16952).
NON_EMBEDDING = {"70M": 18.9e6, "160M": 85.1e6, "305M": 201.5e6, "410M": 302.3e6, "1B": 805.7e6}
ALPHA_BOUNDS = (0.02, 3.0)
ALPHA_GRID = np.geomspace(*ALPHA_BOUNDS, 200)
FORMS = ("floor", "power")
TIES = ("all", "domain")


def n_params(size: str, overrides: Mapping[str, float] | None = None) -> float:
    table = {**NON_EMBEDDING, **(overrides or {})}
    if size not in table:
        raise InputError(f"model size {size!r} has no parameter count; give it, e.g. --sizes={size}=3.0e8")
    return float(table[size])


def parse_counts(text: str) -> dict[str, float]:
    """`'1B=8.1e8,7B=6.5e9'` -> {size: non-embedding parameters}; InputError naming --sizes otherwise."""
    out = {}
    for item in filter(None, (t.strip() for t in str(text or "").split(","))):
        name, sep, value = item.partition("=")
        try:
            n = float(value)
        except ValueError:
            n = float("nan")
        if not sep or not name.strip() or not (np.isfinite(n) and n > 0):
            raise InputError(f"--sizes: {item!r} is not size=parameters with a positive number; write e.g. "
                             "--sizes=1B=8.057e8")
        out[name.strip()] = n
    return out


@dataclasses.dataclass(frozen=True)
class SizeLaw:
    """Fitted curves: E [C], B [C], alpha [C]; curve c predicts E_c + B_c N^-alpha_c."""

    curves: tuple  # curve keys, e.g. (mixture key, eval domain)
    E: np.ndarray
    B: np.ndarray
    alpha_C: np.ndarray
    rms_rel: float  # RMS relative residual of the fit
    form: str = "floor"

    def predict(self, n: float) -> np.ndarray:
        return self.E + self.B * float(n) ** -self.alpha_C

    @property
    def alpha(self) -> float | dict:
        """One alpha when tied over all curves, else {eval domain: alpha}."""
        if np.allclose(self.alpha_C, self.alpha_C[0]):
            return float(self.alpha_C[0])
        return {k[1] if isinstance(k, tuple) else str(k): float(a) for k, a in zip(self.curves, self.alpha_C)}

    @property
    def N0(self) -> np.ndarray:
        return self.B ** (1.0 / self.alpha_C)


@dataclasses.dataclass(frozen=True)
class _Points:
    ln_K: np.ndarray  # log N, sorted by curve
    y_K: np.ndarray
    curve_K: np.ndarray
    start_C: np.ndarray
    group_C: np.ndarray  # E group (eval domain, or the curve itself)
    tie_C: np.ndarray  # alpha tie group


def _floor_solve(p: _Points, alpha_GxK: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Per alpha row: cost [G, T], E [G, C], B [G, C] (cost inf where some E or B < 0)."""
    x = np.exp(-alpha_GxK * p.ln_K)
    w2 = 1.0 / p.y_K ** 2

    def seg(v):
        return np.add.reduceat(np.broadcast_to(v, x.shape), p.start_C, axis=1)

    a, b, d = seg(w2 * x * x), seg(w2 * x), seg(w2)
    pp, q, r = seg(w2 * x * p.y_K), seg(w2 * p.y_K), seg(w2 * p.y_K ** 2)
    g1 = np.zeros((len(p.group_C), n_groups))
    g1[np.arange(len(p.group_C)), p.group_C] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        num, den = (q - pp * b / a) @ g1, (d - b * b / a) @ g1
        e_g = np.where(den > 1e-300 * np.maximum(d @ g1, 1.0), num / den, 0.0)
        e_c = e_g @ g1.T
        b_c = (pp - e_c * b) / a
        cost_c = r - 2 * e_c * q + e_c * e_c * d - (pp - e_c * b) ** 2 / a
    bad = (b_c < -1e-12) | (e_c < -1e-12) | ~np.isfinite(cost_c)
    cost_c = np.where(bad, np.inf, np.maximum(cost_c, 0.0))
    t1 = np.zeros((len(p.tie_C), int(p.tie_C.max()) + 1))
    t1[np.arange(len(p.tie_C)), p.tie_C] = 1.0
    with np.errstate(invalid="ignore"):
        cost_t = cost_c @ t1
    return np.where(np.isnan(cost_t), np.inf, cost_t), np.maximum(e_c, 0.0), np.maximum(b_c, 0.0)


def _fit_floor(p: _Points, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    n_tie = int(p.tie_C.max()) + 1
    cost_GxT = _floor_solve(p, ALPHA_GRID[:, None], n_groups)[0]
    if not np.all(np.isfinite(cost_GxT).any(axis=0)):
        raise InputError("no size law L = E + (N0/N)^alpha with E, N0 >= 0 fits these points (does the loss "
                         "grow with model size?); check the table or use --size_law=power")
    i = np.argmin(cost_GxT, axis=0)
    lo, hi = ALPHA_GRID[np.maximum(i - 1, 0)], ALPHA_GRID[np.minimum(i + 1, len(ALPHA_GRID) - 1)]
    g = (np.sqrt(5) - 1) / 2

    def cost_at(alpha_T):
        return _floor_solve(p, alpha_T[p.tie_C][p.curve_K][None], n_groups)[0][0]

    for _ in range(60):  # Golden-section refinement inside the bracketing grid cells, per tie group.
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        left = cost_at(x1) <= cost_at(x2)
        hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
    alpha_T = 0.5 * (lo + hi)
    alpha_T = np.where(cost_at(alpha_T) > cost_GxT[i, np.arange(n_tie)], ALPHA_GRID[i], alpha_T)
    cost, e, b = _floor_solve(p, alpha_T[p.tie_C][p.curve_K][None], n_groups)
    return e[0], b[0], alpha_T[p.tie_C], float(np.sum(cost))


def _fit_power(p: _Points) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    n = np.bincount(p.curve_K)
    ly = np.log(p.y_K)
    mx, my = (np.add.reduceat(v, p.start_C) / n for v in (p.ln_K, ly))
    dx, dy = p.ln_K - mx[p.curve_K], ly - my[p.curve_K]
    tie_K = p.tie_C[p.curve_K]
    sxx = np.bincount(tie_K, weights=dx * dx)
    sxy = np.bincount(tie_K, weights=dx * dy)
    if np.any(sxx <= 0):
        raise InputError("the power size law needs some mixture measured at two model sizes in each eval domain; "
                         "add runs or use --size_law=floor")
    alpha_T = -sxy / sxx
    if np.any(alpha_T <= 0):
        raise InputError("the loss grows with model size in some eval domain: no size law L = B N^-alpha with "
                         "alpha > 0 fits; check the table")
    alpha_T = np.clip(alpha_T, *ALPHA_BOUNDS)
    alpha_C = alpha_T[p.tie_C]
    b = np.exp(my + alpha_C * mx)
    res = np.exp(np.log(b[p.curve_K]) - alpha_C[p.curve_K] * p.ln_K) / p.y_K - 1.0
    return np.zeros_like(b), b, alpha_C, float(np.sum(res * res))


def fit_size_law(points: Sequence[tuple[object, str, float, float]], *, tie_e: bool = True, form: str = "floor",
                 tie_alpha: str = "all") -> SizeLaw:
    """Fits (curve key, eval domain, N, loss) points (see the module doc)."""
    if form not in FORMS or tie_alpha not in TIES:
        raise InputError(f"size law {form!r}, alpha tied over {tie_alpha!r}: choose a form from {FORMS} and a tie "
                         f"from {TIES}")
    keys = list(dict.fromkeys(p[0] for p in points))
    index = {k: i for i, k in enumerate(keys)}
    order = sorted(range(len(points)), key=lambda j: index[points[j][0]])
    pts = [points[j] for j in order]
    curve_K = np.array([index[p[0]] for p in pts])
    groups = list(dict.fromkeys(p[1] for p in pts))
    dom_C = np.zeros(len(keys), int)
    dom_C[curve_K] = [groups.index(p[1]) for p in pts]
    n_K = np.array([p[2] for p in pts], float)
    y_K = np.array([p[3] for p in pts], float)
    n_sizes = len(np.unique(n_K))
    n_free = (len(groups) if tie_e else len(keys)) + len(keys) + (1 if tie_alpha == "all" else len(groups))
    if form == "power":
        n_free = len(keys) + (1 if tie_alpha == "all" else len(groups))
    if n_sizes < 2 or len(y_K) < n_free:
        raise InputError(f"the size law has {n_free} free parameters and {len(y_K)} points over {n_sizes} model "
                         "size(s); fit on at least two model sizes with some mixture at both (and tie E per "
                         "eval domain)")
    start = np.concatenate([[0], np.flatnonzero(np.diff(curve_K)) + 1])
    tie_C = np.zeros(len(keys), int) if tie_alpha == "all" else dom_C
    p = _Points(np.log(n_K), y_K, curve_K, start, dom_C if tie_e else np.arange(len(keys)), tie_C)
    if form == "power":
        e, b, alpha_C, cost = _fit_power(p)
    else:
        e, b, alpha_C, cost = _fit_floor(p, len(groups) if tie_e else len(keys))
    return SizeLaw(curves=tuple(keys), E=e, B=b, alpha_C=alpha_C, rms_rel=float(np.sqrt(cost / len(y_K))),
                   form=form)
