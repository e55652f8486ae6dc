"""The comparison's statistics: paired tests against uniform, bootstrap intervals, Holm's correction and the
equal-compute view.

* `paired_test`: two-sided paired t-test of mean(d) = 0 over seeds (d: a method's per-seed average loss minus
  uniform's at the same seed).
* `bootstrap_ci`: percentile interval of mean(d) over seeds resampled with replacement (seeded; with 5 seeds
  the interval is coarse and reported next to the t-test, not instead of it).
* `holm`: Holm-Bonferroni adjusted p-values over a family of tests; a method *beats uniform* when its mean
  difference is negative and its adjusted p is below `ALPHA`.
* `equal_compute`: uniform trained for `m` times the budget gives, per seed, uniform's loss at any multiplier k
  in [1, m] by interpolation in log k; each method is compared with uniform at its own total compute k
  (k > m: with uniform at m, a bound), and its uniform-equivalent multiplier is where uniform's mean loss
  equals the method's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax.scipy.special as jsp
import numpy as np

ALPHA = 0.05
BOOTSTRAP = 10_000


def paired_test(d: np.ndarray) -> dict[str, float]:
    """Two-sided paired t-test of mean(d) = 0 (d: per-seed differences)."""
    d = np.asarray(d, np.float64)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "std": float("nan"), "t": float("nan"), "p": float("nan"), "n": n}
    std = float(d.std(ddof=1))
    if std == 0:
        return {"mean": mean, "std": 0.0, "t": float("inf") if mean else 0.0, "p": 0.0 if mean else 1.0, "n": n}
    t = mean / (std / math.sqrt(n))
    df = n - 1
    p = float(jsp.betainc(df / 2.0, 0.5, df / (df + t * t)))  # = 2 * P(T_df > |t|)
    return {"mean": mean, "std": std, "t": float(t), "p": p, "n": n}


def bootstrap_ci(d: np.ndarray, *, level: float = 0.95, reps: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """Percentile interval of mean(d) with the seeds resampled with replacement."""
    d = np.asarray(d, np.float64)
    if d.size < 2:
        return [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, d.size, size=(reps, d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def holm(p: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1); NaN p-values stay NaN and are not counted."""
    names = [k for k, v in p.items() if np.isfinite(v)]
    order = sorted(names, key=lambda k: p[k])
    m, out, running = len(order), {k: float("nan") for k in p}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out


def compare_family(diffs: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per method: the paired test, the bootstrap interval and Holm's adjusted p over the family `diffs`."""
    out = {m: {**paired_test(d), "ci95": bootstrap_ci(d), "per_seed": np.asarray(d).tolist(),
               "lower_at": int(np.sum(np.asarray(d) < 0))} for m, d in diffs.items()}
    adj = holm({m: e["p"] for m, e in out.items()})
    for m, e in out.items():
        e["p_holm"] = adj[m]
        e["beats_uniform"] = bool(e["mean"] < 0 and np.isfinite(e["p_holm"]) and e["p_holm"] < ALPHA)
        e["worse_than_uniform"] = bool(e["mean"] > 0 and np.isfinite(e["p_holm"]) and e["p_holm"] < ALPHA)
    return out


def equal_compute(avg_SxM: Mapping[str, np.ndarray], multiplier_M: Mapping[str, float], uniform_S: np.ndarray,
                  uniform_long_S: np.ndarray, long_multiplier: float) -> dict[str, dict]:
    """Per method: uniform's per-seed loss at the method's compute k, the paired difference, and the
    uniform-equivalent multiplier (see the module docstring)."""
    u1, um = np.asarray(uniform_S, np.float64), np.asarray(uniform_long_S, np.float64)
    lm = math.log(long_multiplier)
    out = {}
    for m, avg in avg_SxM.items():
        k = float(multiplier_M[m])
        kk = min(max(k, 1.0), long_multiplier)
        ref = u1 + (um - u1) * math.log(kk) / lm
        d = np.asarray(avg, np.float64) - ref
        mean_m, mu1, mum = float(np.mean(avg)), float(u1.mean()), float(um.mean())
        if mean_m >= mu1:
            equiv = "<= 1"
        elif mean_m <= mum:
            equiv = f">= {long_multiplier:g}"
        else:
            equiv = f"{math.exp(lm * (mean_m - mu1) / (mum - mu1)):.2f}"
        test = paired_test(d)
        verdict = ("better" if test["mean"] < 0 and test["p"] < ALPHA else
                   "worse" if test["mean"] > 0 and test["p"] < ALPHA else "no significant difference")
        if k > long_multiplier:
            verdict = (f"worse than uniform at {long_multiplier:g}x, so at {k:.2f}x too" if verdict == "worse" else
                       f"inconclusive: uniform trained only to {long_multiplier:g}x")
        out[m] = {"multiplier": k, "uniform_at": kk, "diff": test["mean"], "std": test["std"], "p": test["p"],
                  "uniform_equivalent": equiv, "verdict": verdict, "per_seed": d.tolist()}
    return out


def summary_row(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "per_seed": v.tolist()}
