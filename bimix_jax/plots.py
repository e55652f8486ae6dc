"""Fit plots: observed vs fitted loss curves per eval domain, and held-out predictions vs observations.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it works
headless and never touches process-wide state.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
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
            if fitted.law == "ye":  # The step law brought this run to the target step; the law predicts there.
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
