"""Fit plots: observed vs fitted loss curves per eval domain, and held-out predictions vs observations.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it works
headless and never touches process-wide state.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from bimix_jax.errors import InputError
from bimix_jax.laws.base import FittedLaw
from bimix_jax.loss_table import LossTable

MAX_LEGEND_RUNS = 8


def _curve(fitted: FittedLaw, r_D: np.ndarray, steps: np.ndarray, e: int) -> np.ndarray | None:
    """The law's loss for eval domain index e along `steps` at mixture r_D (None: cannot predict)."""
    if not fitted.model.predictable(r_D[None, :], fitted.eval_domains[e])[0]:
        return None
    with jax.enable_x64(True):
        params = {k: np.asarray(v, np.float64) for k, v in fitted.params.items()}
        out = np.asarray(fitted.model.predict(params, r_D, steps[:, None]))
    return np.broadcast_to(out, (steps.size, len(fitted.eval_domains)))[:, e]  # Step-less laws give [E].


def fit_figure(table: LossTable, fitted: FittedLaw, holdout: Mapping[str, Any] | None = None) -> Figure:
    """Loss vs step per eval domain (log axes; markers observed, lines fitted, one colour per mixture),
    plus a predicted-vs-observed scatter of the held-out points when `holdout` (an evaluate report) is given.
    """
    domains = list(fitted.eval_domains)
    n_panels = len(domains) + (1 if holdout else 0)
    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig = Figure(figsize=(4.6 * cols, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    runs = list(table.runs)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    mixtures = table.mixtures()
    step_fits = (fitted.summary.get("step_law") or {}).get("fits", {})
    for e, dom in enumerate(domains):
        ax = fig.add_subplot(rows, cols, e + 1)
        for run, colour in zip(runs, colours):
            m = (table.run == run) & (table.eval_domain == dom)
            if not m.any():
                continue
            label = run if len(runs) <= MAX_LEGEND_RUNS else None
            ax.plot(table.step[m], table.loss[m], "o", ms=2.5, color=colour, alpha=0.6, label=label)
            steps = np.geomspace(table.step[m].min(), max(table.step[m].max(), fitted.target_step or 0), 100)
            if fitted.law == "dml":  # The step law brought this run to the target step; the law predicts there.
                sf = step_fits.get(f"{run}/{dom}")
                if sf:
                    ax.plot(steps, sf["E"] + (sf["B"] / steps) ** sf["beta"], "--", lw=1, color=colour)
                pred = _curve(fitted, mixtures[run], np.array([fitted.target_step]), e)
                ax.plot([fitted.target_step], pred, "*", ms=9, color=colour, mec="k", mew=0.5)
            else:
                pred = _curve(fitted, mixtures[run], steps, e)
                if pred is not None:
                    ax.plot(steps, pred, "-", lw=1.2, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(f"{fitted.law} - eval {dom}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats)")
        if len(runs) <= MAX_LEGEND_RUNS:
            ax.legend(fontsize=6, loc="upper right")
    if holdout:
        ax = fig.add_subplot(rows, cols, len(domains) + 1)
        pts = holdout["points"]
        obs, pred, dom_of = np.array(pts["observed"]), np.array(pts["predicted"]), np.array(pts["eval_domain"])
        for i, dom in enumerate(dict.fromkeys(dom_of.tolist())):
            k = dom_of == dom
            ax.plot(obs[k], pred[k], "o", ms=3, color=f"C{i}", alpha=0.7, label=dom)
        if obs.size:
            lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        r2 = (holdout.get("mean") or {}).get("r2_log")
        mre = (holdout.get("mean") or {}).get("mre_pct")
        title = f"held out ({holdout['protocol']})"
        if mre is not None:
            title += f": MRE {mre:.2f}%" + (f", R2 {r2:.3f}" if r2 is not None else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("observed loss")
        ax.set_ylabel("predicted loss")
        ax.legend(fontsize=7)
    return fig


def check_format(path: str) -> str:
    """The image format named by `path`'s extension (png, pdf, svg, ...); InputError if unsupported."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise InputError(f"--plot={path}: unsupported image format {fmt!r}; use one of {', '.join(sorted(supported))}")
    return fmt


def render(fig: Figure, path: str) -> bytes:
    """The figure encoded in the format named by `path`'s extension (png, pdf, svg, ...)."""
    fmt = check_format(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    return buf.getvalue()


# --- Figures of the pipeline report (bimix_jax.pipeline.report) ------------------------------------------------


def _grid(n_panels: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, int, int]:
    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, rows, cols


def _run_style(run: str, runs: list[str], highlight: str | None) -> dict[str, Any]:
    if run == highlight:
        return {"color": "k", "lw": 2.2, "ms": 3.5, "zorder": 5}
    return {"color": f"C{runs.index(run) % 10}", "lw": 1.0, "ms": 2.5, "alpha": 0.85}


def loss_curves_figure(table: LossTable, weights: Mapping[str, float] | None = None,
                       highlight: str | None = None) -> Figure:
    """Validation loss vs step, one panel per eval domain plus one for the (weighted) average over domains,
    one line per run (`highlight` drawn thick and black)."""
    domains = list(table.eval_domains)
    runs = list(table.runs)
    weights = dict(weights) if weights else {e: 1.0 / len(domains) for e in domains}
    fig, rows, cols = _grid(len(domains) + 1)
    for k, dom in enumerate([*domains, None]):
        ax = fig.add_subplot(rows, cols, k + 1)
        for run in runs:
            m = table.run == run
            if dom is not None:
                m &= table.eval_domain == dom
                steps, loss = table.step[m], table.loss[m]
            else:  # weighted average over the domains at steps where every domain was measured
                steps = np.unique(table.step[m])
                loss = np.array([sum(w * table.loss[m & (table.step == s) & (table.eval_domain == e)].sum()
                                     for e, w in weights.items()) for s in steps])
            order = np.argsort(steps)
            ax.plot(steps[order], loss[order], "o-", label=run, **_run_style(run, runs, highlight))
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(f"eval {dom}" if dom else "average over eval domains", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats)")
        if dom is None or len(runs) <= MAX_LEGEND_RUNS:
            ax.legend(fontsize=6, loc="upper right")
    return fig


def scatter_figure(groups: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> Figure:
    """Predicted vs observed loss, one colour per group ({label: (observed, predicted)}), with y = x."""
    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = np.inf, -np.inf
    for i, (label, (obs, pred)) in enumerate(groups.items()):
        obs, pred = np.asarray(obs, float), np.asarray(pred, float)
        if not obs.size:
            continue
        ax.plot(obs, pred, "o", ms=3.5, alpha=0.75, color=f"C{i % 10}", label=label)
        lo, hi = min(lo, obs.min(), pred.min()), max(hi, obs.max(), pred.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("observed loss (nats)")
    ax.set_ylabel("predicted loss (nats)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def mixture_bars_figure(mixtures: Mapping[str, Mapping[str, float]],
                        intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> Figure:
    """Grouped bars: the proportion of each domain (x) in each mixture (colour); `intervals`
    ({mixture: {domain: [low, high]}}) adds error bars."""
    names = list(mixtures)
    domains = list(next(iter(mixtures.values())))
    fig = Figure(figsize=(max(6.0, 1.3 * len(domains) + 2), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(domains))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        heights = np.array([mixtures[name][d] for d in domains])
        colour = "k" if name == "optimized" else f"C{i % 10}"
        yerr = None
        iv = (intervals or {}).get(name)
        if iv:
            low = np.array([iv[d][0] for d in domains])
            high = np.array([iv[d][-1] for d in domains])
            yerr = np.stack([np.clip(heights - low, 0, None), np.clip(high - heights, 0, None)])
        ax.bar(x + (i - (len(names) - 1) / 2) * width, heights, width, label=name, color=colour, yerr=yerr,
               capsize=2, alpha=0.85)
    ax.set_xticks(x, domains)
    ax.set_ylabel("proportion of training rows")
    ax.set_title("candidate mixtures and the recommended one" + (" (bootstrap interval)" if intervals else ""),
                 fontsize=10)
    ax.legend(fontsize=7, ncols=min(len(names), 4))
    return fig


def law_comparison_figure(results: Mapping[str, Mapping[str, Any]]) -> Figure:
    """`experiments.compare_laws`: R^2 of log loss and relative error per law, one group of bars per protocol, with 95% intervals."""
    protos = list(results)
    names = list(next(iter(results.values())))
    fig = Figure(figsize=(5.0 + 0.9 * len(names) * len(protos) / 2, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(names), 1)
    for ax, key, label in ((axes[0], "r2_log", "held-out R² of log loss"), (axes[1], "mre_pct", "rel. error %")):
        for j, n in enumerate(names):
            xs, ys, lo, hi = [], [], [], []
            for i, p in enumerate(protos):
                s = results[p][n]
                if s.get(key) is None:
                    continue
                ci = s.get("ci95", {}).get(key, [s[key], s[key]])
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(s[key])
                lo.append(max(s[key] - ci[0], 0.0))
                hi.append(max(ci[1] - s[key], 0.0))
            ax.bar(xs, ys, width, yerr=[lo, hi], label=n, capsize=2)
        ax.set_xticks(range(len(protos)), protos, fontsize=8)
        ax.set_ylabel(label)
        if key == "r2_log":
            ax.set_ylim(max(min(-0.5, ax.get_ylim()[0]), -2.0), 1.0)
    axes[0].legend(fontsize=7)
    return fig
