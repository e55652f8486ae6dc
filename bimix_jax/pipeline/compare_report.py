"""The comparison's report: the numbers (`summarize`, JSON-able), `report.md` (`compare_markdown.py`),
`report.json` and PNG plots (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bimix_jax import atomic
from bimix_jax.loss_table import LossTable
from bimix_jax.pipeline import compare_markdown, compare_stats
from bimix_jax.pipeline.compare_spec import CONTROLS

BASELINE = "uniform"
REPORT_FORMAT = "bimix_jax.compare_report"
paired_test = compare_stats.paired_test  # kept for callers of the former location

# Where each method's choice comes from (every reported number: the validation split, at the reported seeds).
SPLIT_SEEN = {
    "uniform": "nothing (fixed)",
    "natural": "training split (token counts)",
    "se": "training split (token streams)", "ce": "training split (token streams)",
    "je": "training split (token streams)", "vne": "training split (documents)",
    "bimix": "selection split: losses of the static proxies at the tuning seed",
    "dml": "selection split: losses of the static proxies at the tuning seed",
    "doremi": "selection split: feedback set (per-token excess over the reference), grid scored on it",
    "aioli": "selection split: feedback set, grid scored on it",
    "aioli_restricted": "selection split: feedback set; prior from DoReMi runs scored on it",
    "online_bimix": "selection split: feedback set, grid scored on it",
    "aioli_static": "selection split: feedback set (Aioli's chosen settings)",
    "aioli_uniform_exploit": "selection split: feedback set (Aioli's chosen settings; p not used)",
}
# Published defaults, quoted from /work/shared/docs/peers.md (its sources: the official scripts and trainers).
DEFAULTS = {
    "aioli": ["official full-SlimPajama script (m=7): K = 200 of 40k steps, R = 2, S = 10, f = 0.75, η = 1, EMA 0.1",
              "official arxiv+stackexchange script (m=2): K = 250, R = 4, S = 4, f = 0.625, η = 0.2, EMA 0.1",
              "official arxiv+books+stackexchange script (m=3): K = 250, R = 4, S = 6, f = 0.5, η = 0.1, EMA 0.5",
              "reference README: R \"4 or 6\", S 4, η 0.1/0.2/0.5, and starting without EMA"],
    "doremi": ["official trainer: reweight_eta 1.0 (paper η = 1), reweight_eps 1e-4 (paper c = 1e-3), weights "
               "updated every step",
               "Aioli's re-implementation: EG step μ 0.01 in Aioli's scripts; maintainer's advice (doremi#5): "
               "η = 0.1"],
    "online_bimix": ["none: no anchor has this method"],
}


@dataclasses.dataclass
class Inputs:
    domains: tuple[str, ...]
    methods: list[str]
    seeds: list[int]
    tuning_seed: int
    steps: int
    budget_tokens: int
    finals: dict[str, list[dict[str, float]]]  # method -> per seed: eval domain -> final loss (validation split)
    tables: dict[str, list[LossTable]]  # method -> per seed loss table
    mixtures: dict[str, list[float]]  # method -> proportions (online: final p / averaged weights)
    compute: dict[str, dict[str, Any]]
    trajectories: dict[str, list[dict]]  # run label -> trajectory records (first seed)
    aioli_rounds: dict[str, list[dict]]  # method -> Aioli rounds (first seed)
    online_bimix_fits: list[dict]  # online BiMix's refits (first seed)
    tuning: dict[str, dict]  # kind -> grid table (compare_tuning.Tuned.table)
    splits: dict[str, dict]  # domain -> split sizes and evaluation sets (compare_data.split_table)
    uniform_long: list[float]  # uniform trained `equal_compute` budgets: average loss per reported seed
    equal_compute: float
    laws: dict[str, dict]  # bimix / dml: the fitted law's mixture and prediction
    uniform_selection_loss: float | None  # uniform at the tuning seed on the selection split (the grids' yardstick)
    config: dict


def summarize(inp: Inputs) -> dict[str, Any]:
    """The numbers of the report (JSON-able)."""
    avg = {m: np.array([np.mean([f[d] for d in inp.domains]) for f in inp.finals[m]]) for m in inp.methods}
    methods = {}
    for m in inp.methods:
        per_dom = np.array([[f[d] for d in inp.domains] for f in inp.finals[m]])  # [S, D]
        ppl = np.exp(per_dom).mean(axis=1)
        methods[m] = {
            "role": "control" if m in CONTROLS else "baseline" if m == BASELINE else "method",
            "average_loss": compare_stats.summary_row(avg[m]),
            "average_perplexity": compare_stats.summary_row(ppl),
            "per_domain_loss": {d: {k: v for k, v in compare_stats.summary_row(per_dom[:, i]).items()
                                    if k != "per_seed"} for i, d in enumerate(inp.domains)},
            "mixture": dict(zip(inp.domains, inp.mixtures.get(m) or [float("nan")] * len(inp.domains))),
            "compute": inp.compute.get(m, {}),
            "split_seen": SPLIT_SEEN.get(m, ""),
        }
    if BASELINE in avg:
        for family in ([m for m in inp.methods if m != BASELINE and m not in CONTROLS],
                       [m for m in inp.methods if m in CONTROLS]):
            for m, e in compare_stats.compare_family({m: avg[m] - avg[BASELINE] for m in family}).items():
                methods[m]["vs_uniform"] = e
    others = [m for m in inp.methods if m != BASELINE and m not in CONTROLS]
    equal = {}
    if inp.uniform_long and BASELINE in avg:
        equal = compare_stats.equal_compute({m: avg[m] for m in inp.methods if m != BASELINE},
                                            {m: inp.compute[m]["multiplier"] for m in inp.methods if m != BASELINE},
                                            avg[BASELINE], np.asarray(inp.uniform_long), inp.equal_compute)
    return {
        "format": REPORT_FORMAT, "domains": list(inp.domains), "seeds": inp.seeds, "tuning_seed": inp.tuning_seed,
        "steps": inp.steps, "budget_tokens": inp.budget_tokens, "methods": methods,
        "ranking": sorted(inp.methods, key=lambda m: methods[m]["average_loss"]["mean"]),
        "beat_uniform": [m for m in others if methods[m].get("vs_uniform", {}).get("beats_uniform")],
        "worse_than_uniform": [m for m in others if methods[m].get("vs_uniform", {}).get("worse_than_uniform")],
        "lower_on_average": [m for m in others if methods[m].get("vs_uniform", {}).get("mean", 0) < 0],
        "beat_uniform_uncorrected": [m for m in others if methods[m].get("vs_uniform", {}).get("mean", 0) < 0
                                     and methods[m]["vs_uniform"]["p"] < compare_stats.ALPHA],
        "equal_compute": {"multiplier": inp.equal_compute, "uniform_long": compare_stats.summary_row(
            inp.uniform_long) if inp.uniform_long else None, "methods": equal},
        "tuning": inp.tuning, "uniform_selection_loss": inp.uniform_selection_loss, "defaults": DEFAULTS,
        "splits": inp.splits, "laws": inp.laws,
        "aioli_rounds": inp.aioli_rounds, "online_bimix_fits": inp.online_bimix_fits,
    }


def _save(fig: Figure, path: str) -> None:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    atomic.write_bytes(path, buf.getvalue())


def plots(inp: Inputs, rep: dict[str, Any], plot_dir: str) -> None:
    ms = rep["ranking"]
    fig = Figure(figsize=(max(6, 0.8 * len(ms)), 4))
    ax = fig.add_subplot()
    for i, m in enumerate(ms):
        vals = rep["methods"][m]["average_loss"]["per_seed"]
        ax.scatter([i] * len(vals), vals, s=12, color="k", zorder=3)
        ax.bar(i, np.mean(vals), yerr=np.std(vals, ddof=1) if len(vals) > 1 else 0,
               color="tab:orange" if m == BASELINE else "tab:gray" if m in CONTROLS else "tab:blue", alpha=0.6)
    lo = min(min(rep["methods"][m]["average_loss"]["per_seed"]) for m in ms)
    hi = max(max(rep["methods"][m]["average_loss"]["per_seed"]) for m in ms)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    ax.set_xticks(range(len(ms)), ms, rotation=45, ha="right")
    ax.set_ylabel("average validation loss (nats)")
    ax.set_title("final loss per method (bars: mean ± std; dots: seeds; grey: controls)")
    fig.tight_layout()
    _save(fig, os.path.join(plot_dir, "final_loss.png"))

    traj = inp.trajectories
    cols = max(1, min(3, len(traj)))
    rows = max(1, -(-len(traj) // cols))
    fig = Figure(figsize=(6 * cols, 3.5 * rows))
    for k, (name, records) in enumerate(traj.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        segs = [r for r in records if r["kind"] != "initial"]
        for j, d in enumerate(inp.domains):
            xs, ys = [], []
            for r in segs:
                xs += [r["start"], r["end"]]
                ys += [r["requested"][j]] * 2
            ax.plot(xs, ys, label=d, lw=1)
        for r in segs:
            if r["kind"] == "probe":
                ax.axvspan(r["start"], r["end"], color="0.9", lw=0)
        ax.set_title(f"{name}: requested proportions (grey: probes)", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, os.path.join(plot_dir, "trajectories.png"))

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for m in ms:
        curves = []
        for t in inp.tables[m]:
            steps = np.unique(t.step)
            curves.append([np.mean(t.loss[t.step == s]) for s in steps])
        ax.plot(steps, np.mean(curves, axis=0), label=m, lw=2 if m == BASELINE else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("average validation loss (nats, mean over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, os.path.join(plot_dir, "loss_curves.png"))


def write(workdir: str, inp: Inputs) -> dict[str, Any]:
    rep = summarize(inp)
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    plots(inp, rep, os.path.join(workdir, "plots"))
    atomic.write_json(os.path.join(workdir, "report.json"), atomic.to_jsonable(rep))
    atomic.write_text(os.path.join(workdir, "report.md"), compare_markdown.markdown(rep))
    return rep
