"""Figures of the nested prediction (`experiments.predict_nested --plots=DIR`).

* `step_figure`: per eval domain, every small run's losses (fitted checkpoints filled, later ones hollow) and its
  step law extended to the target step (one colour per model size);
* `size_figure`: per eval domain, the step-law predictions at the target step against model size, each
  mixture's size law extended to the target size, and the target-size observations where the table has them;
* `scatter`: predicted vs observed at the target (size-law points and mixing-law points, with intervals).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bimix_jax import loss_table as lt

MAX_PANELS = 12  # eval domains drawn (the first ones); the CSV holds every point


def _grid(n: int) -> tuple[Figure, int, int]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.4 * cols, 3.5 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, rows, cols


def step_figure(table: lt.LossTable, result: Mapping[str, Any], target_step: float) -> Figure:
    curves = result["curves"]
    domains = list(dict.fromkeys(c.domain for c in curves))[:MAX_PANELS]
    sizes = list(dict.fromkeys(c.size for c in curves))
    fit, lo = result["step"]["fit"], result["step"]["min_step"]
    fig, rows, cols = _grid(len(domains))
    for k, dom in enumerate(domains):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, c in enumerate(curves):
            if c.domain != dom:
                continue
            color = f"C{sizes.index(c.size) % 10}"
            m = (table.run == c.run) & (table.eval_domain == dom)
            later = table.step[m] > c.steps[-1]
            used = c.steps >= lo
            ax.plot(c.steps[used], c.losses[used], "o", ms=2, color=color)
            ax.plot(c.steps[~used], c.losses[~used], ".", ms=2, color=color, alpha=0.3)
            ax.plot(table.step[m][later], table.loss[m][later], "o", ms=3, mfc="none", color=color)
            s = np.geomspace(max(lo, c.steps[0]), max(target_step, c.steps[-1]), 60)
            ax.plot(s, fit.predict(s, i), "-", lw=0.8, color=color)
        ax.axvline(target_step, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{dom}: step laws from step {lo:g}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats)")
        for j, size in enumerate(sizes):
            ax.plot([], [], "-o", ms=2, color=f"C{j % 10}", label=size)
        ax.legend(fontsize=7)
    return fig


def size_figure(result: Mapping[str, Any], target: lt.LossTable | None, n_of: Mapping[str, float],
                target_size: str) -> Figure:
    from bimix_jax.laws import nested

    law = result["size"]
    curves, pred = result["curves"], result["step"]["pred"]
    domains = list(dict.fromkeys(e for _, e in law.curves))[:MAX_PANELS]
    n_t = result["n_target"]
    obs = {}
    if target is not None:
        mixes = target.mixtures()
        for r, e, y in zip(target.run, target.eval_domain, target.loss):
            obs[(nested.mixture_key(mixes[r]), str(e))] = float(y)
    fig, rows, cols = _grid(len(domains))
    n_min = min(n_of[c.size] for c in curves)
    grid = np.geomspace(n_min, n_t, 40)
    for k, dom in enumerate(domains):
        ax = fig.add_subplot(rows, cols, k + 1)
        for j, (key, e) in enumerate(law.curves):
            if e != dom:
                continue
            color = f"C{j % 10}"
            pts = [(n_of[c.size], y) for c, y in zip(curves, pred) if c.key == key and c.domain == dom]
            ax.plot(*zip(*pts), "o", ms=3, color=color)
            ax.plot(grid, law.E[j] + law.B[j] * grid ** -law.alpha_C[j], "-", lw=0.8, color=color)
            if (key, dom) in obs:
                ax.plot([n_t], [obs[(key, dom)]], "*", ms=7, color=color)
        ax.axvline(n_t, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ticks = {**{n: s for s, n in n_of.items()}, n_t: target_size}
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.minorticks_off()
        ax.set_title(f"{dom}: size law ({law.form}) to {target_size}; stars observed", fontsize=9)
        ax.set_xlabel("model size (log non-embedding parameters)")
        ax.set_ylabel("loss at the target step (nats)")
    return fig


def scatter(points: Sequence[Mapping[str, Any]], title: str) -> Figure:
    fig = Figure(figsize=(5.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = np.inf, -np.inf
    for i, stage in reversed(list(enumerate(("step", "size", "mixing")))):
        pts = [p for p in points if p["stage"] == stage and p.get("observed") is not None]
        if not pts:
            continue
        o = np.array([p["observed"] for p in pts])
        f = np.array([p["predicted"] for p in pts])
        err = None
        if all(p.get("lo") is not None for p in pts):
            err = np.abs(np.array([[p["lo"] for p in pts], [p["hi"] for p in pts]]) - f)
        ax.errorbar(o, f, yerr=err, fmt="os^"[i], ms=4 - i * 0.5, alpha=0.75, color=f"C{i}", elinewidth=0.6,
                    label=f"{stage} stage ({len(pts)})")
        lo, hi = min(lo, o.min(), f.min()), max(hi, o.max(), f.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        pad = 0.15 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)  # intervals that leave the plot are cut at its edge
    ax.set_xlabel("observed loss (nats)")
    ax.set_ylabel("predicted loss (nats)")
    ax.set_title(title + (" (5-95% bootstrap intervals)" if any(p.get("lo") is not None for p in points) else ""),
                 fontsize=9)
    ax.legend(fontsize=7)
    return fig
