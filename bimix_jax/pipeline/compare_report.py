"""The comparison's report: `report.md`, `report.json` and PNG plots (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any

import jax.scipy.special as jsp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bimix_jax import atomic
from bimix_jax.loss_table import LossTable

BASELINE = "uniform"
REPORT_FORMAT = "bimix_jax.compare_report"


@dataclasses.dataclass
class Inputs:
    domains: tuple[str, ...]
    methods: list[str]
    seeds: list[int]
    steps: int
    budget_tokens: int
    finals: dict[str, list[dict[str, float]]]  # method -> per seed: eval domain -> final loss
    tables: dict[str, list[LossTable]]  # method -> per seed loss table
    mixtures: dict[str, list[float]]  # method -> proportions (online: final p / averaged weights)
    compute: dict[str, dict[str, Any]]
    trajectories: dict[str, list[dict]]  # run label -> trajectory records (first seed)
    aioli_rounds: dict[str, list[dict]]  # method -> Aioli rounds (first seed)
    config: dict


def paired_test(d: np.ndarray) -> dict[str, float]:
    """Two-sided paired t-test of mean(d) = 0 (d: per-seed differences)."""
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


def summarize(inp: Inputs) -> dict[str, Any]:
    """The numbers of the report (JSON-able)."""
    methods = {}
    avg = {m: np.array([np.mean([f[d] for d in inp.domains]) for f in inp.finals[m]]) for m in inp.methods}
    for m in inp.methods:
        per_dom = np.array([[f[d] for d in inp.domains] for f in inp.finals[m]])  # [S, D]
        ppl = np.exp(per_dom)
        entry = {
            "average_loss": {"mean": float(avg[m].mean()), "std": float(avg[m].std(ddof=1)) if avg[m].size > 1
                             else float("nan"), "per_seed": avg[m].tolist()},
            "average_perplexity": {"mean": float(ppl.mean(axis=1).mean()), "per_seed": ppl.mean(axis=1).tolist()},
            "per_domain_loss": {d: {"mean": float(per_dom[:, i].mean()),
                                    "std": float(per_dom[:, i].std(ddof=1)) if per_dom.shape[0] > 1 else float("nan")}
                                for i, d in enumerate(inp.domains)},
            "mixture": dict(zip(inp.domains, inp.mixtures.get(m, [float("nan")] * len(inp.domains)))),
            "compute": inp.compute.get(m, {}),
        }
        if m != BASELINE and BASELINE in avg:
            entry["vs_uniform"] = paired_test(avg[m] - avg[BASELINE])
            entry["vs_uniform"]["per_seed"] = (avg[m] - avg[BASELINE]).tolist()
        methods[m] = entry
    others = [m for m in inp.methods if m != BASELINE]
    beat = [m for m in others if methods[m]["vs_uniform"]["mean"] < 0]
    significant = [m for m in beat if methods[m]["vs_uniform"]["p"] < 0.05]
    ranking = sorted(inp.methods, key=lambda m: methods[m]["average_loss"]["mean"])
    return {"format": REPORT_FORMAT, "domains": list(inp.domains), "seeds": inp.seeds, "steps": inp.steps,
            "budget_tokens": inp.budget_tokens, "methods": methods, "ranking": ranking,
            "beat_uniform": beat, "beat_uniform_p05": significant, "aioli_rounds": inp.aioli_rounds}


def _fmt(x: float, nd: int = 4) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def markdown(rep: dict[str, Any]) -> str:
    doms, ms = rep["domains"], rep["methods"]
    n = len(rep["seeds"])
    lines = ["# Mixing methods compared on one budget\n",
             f"{len(ms)} methods x {n} seeds ({', '.join(map(str, rep['seeds']))}), {rep['steps']} steps, "
             f"{rep['budget_tokens']:,} training tokens per final run. Average validation loss = the mean of the "
             "per-domain losses (nats) on the held-out split at the last step; perplexity = the mean of the per-domain "
             f"perplexities. Paired differences are per seed against `{BASELINE}` (negative = better), with a "
             "two-sided paired t-test.\n",
             f"**{len(rep['beat_uniform'])} of {len(ms) - 1} methods beat uniform on average** "
             f"({', '.join(rep['beat_uniform']) or 'none'}); "
             f"{len(rep['beat_uniform_p05'])} at p < 0.05 ({', '.join(rep['beat_uniform_p05']) or 'none'}).\n",
             "| method | avg loss (mean ± std) | avg ppl | diff vs uniform (mean ± std) | p | extra train tokens | "
             "probe tokens |", "|---|---|---|---|---|---|---|"]
    for m in rep["ranking"]:
        e = ms[m]
        v = e.get("vs_uniform")
        diff = "—" if v is None else f"{v['mean']:+.4f} ± {_fmt(v['std'])}"
        p = "—" if v is None else _fmt(v["p"], 3)
        c = e["compute"]
        lines.append(f"| {m} | {e['average_loss']['mean']:.4f} ± {_fmt(e['average_loss']['std'])} | "
                     f"{e['average_perplexity']['mean']:.3f} | {diff} | {p} | {c.get('extra_train_tokens', 0):,} | "
                     f"{c.get('probe_tokens', 0):,} |")
    lines += ["", "## Per-domain validation loss at the end (mean ± std over seeds)", "",
              "| method | " + " | ".join(doms) + " |", "|---|" + "---|" * len(doms)]
    for m in rep["ranking"]:
        pd = ms[m]["per_domain_loss"]
        lines.append(f"| {m} | " + " | ".join(f"{pd[d]['mean']:.4f} ± {_fmt(pd[d]['std'], 4)}" for d in doms) + " |")
    lines += ["", "## Mixtures (online methods: final Aioli p, DoReMi's time-averaged weights)", "",
              "| method | " + " | ".join(doms) + " |", "|---|" + "---|" * len(doms)]
    for m in rep["ranking"]:
        mix = ms[m]["mixture"]
        lines.append(f"| {m} | " + " | ".join(_fmt(mix[d], 3) for d in doms) + " |")
    lines += ["", "## Per-seed paired differences against uniform (average loss, nats)", ""]
    for m in rep["ranking"]:
        v = ms[m].get("vs_uniform")
        if v:
            lines.append(f"- {m}: " + ", ".join(f"{x:+.4f}" for x in v["per_seed"]))
    lines += ["", "## Compute beyond the final runs", ""]
    for m in rep["ranking"]:
        c = ms[m]["compute"]
        extra = ", ".join(f"{k} {v:,}" for k, v in c.items() if k.endswith("tokens") or k == "feedback_evaluations")
        lines.append(f"- {m}: {c.get('notes', '')}; {extra}")
    for name, rounds in rep["aioli_rounds"].items():
        lines += ["", f"## {name}: A estimated per round (first seed; normalised, column sums drive the EG step)", ""]
        for r in rounds:
            lines.append(f"- round {r['round']} (update at step {r['step']}): colsum(A) = "
                         + ", ".join(f"{d} {x:.3f}" for d, x in zip(doms, r["colsum"]))
                         + "; p = " + ", ".join(f"{x:.3f}" for x in r["p"]))
    lines += ["", "Plots: `plots/final_loss.png`, `plots/trajectories.png`, `plots/loss_curves.png`.", ""]
    return "\n".join(lines)


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
               color="tab:orange" if m == BASELINE else "tab:blue", alpha=0.6)
    lo = min(min(rep["methods"][m]["average_loss"]["per_seed"]) for m in ms)
    hi = max(max(rep["methods"][m]["average_loss"]["per_seed"]) for m in ms)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    ax.set_xticks(range(len(ms)), ms, rotation=45, ha="right")
    ax.set_ylabel("average validation loss (nats)")
    ax.set_title("final loss per method (bars: mean ± std; dots: seeds)")
    fig.tight_layout()
    _save(fig, os.path.join(plot_dir, "final_loss.png"))

    traj = inp.trajectories
    fig = Figure(figsize=(6 * max(1, len(traj)), 3.5))
    for k, (name, records) in enumerate(traj.items()):
        ax = fig.add_subplot(1, max(1, len(traj)), k + 1)
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
        ax.set_title(f"{name}: requested proportions (grey: probes)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
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
    atomic.write_text(os.path.join(workdir, "report.md"), markdown(rep))
    return rep
