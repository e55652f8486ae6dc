"""`report.md` of a comparison, from the numbers of `compare_report.summarize`."""

from __future__ import annotations

from typing import Any

import numpy as np

from bimix_jax.pipeline.compare_stats import ALPHA, BOOTSTRAP

BASELINE = "uniform"


def _fmt(x: float | None, nd: int = 4) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _p(x: float | None) -> str:
    return "nan" if x is None or not np.isfinite(x) else ("<0.001" if x < 1e-3 else f"{x:.3f}")


def _names(names: list[str]) -> str:
    return ", ".join(names) or "none"


def _rows(rep: dict[str, Any], names: list[str]) -> list[str]:
    n = len(rep["seeds"])
    out = ["| method | avg loss (mean ± std) | diff vs uniform (mean ± std) | 95% bootstrap CI | t-test p | Holm p "
           "| lower at | extra train tokens | tuning tokens | compute (x budget) |", "|---|" + "---|" * 9]
    for m in names:
        e = rep["methods"][m]
        v, c = e.get("vs_uniform"), e["compute"]
        cells = (["—"] * 5 if v is None else
                 [f"{v['mean']:+.4f} ± {_fmt(v['std'])}", f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]", _p(v["p"]),
                  _p(v["p_holm"]) + (" **beats**" if v["beats_uniform"] else " worse" if v["worse_than_uniform"]
                                     else ""), f"{v['lower_at']}/{n}"])
        out.append(f"| {m} | {e['average_loss']['mean']:.4f} ± {_fmt(e['average_loss']['std'])} | " + " | ".join(cells)
                   + f" | {c.get('extra_train_tokens', 0):,} | {c.get('tuning_train_tokens', 0):,} | "
                     f"{c.get('multiplier', 1.0):.2f} ({c.get('multiplier_with_tuning', 1.0):.2f}) |")
    return out


def _tuning(rep: dict[str, Any]) -> list[str]:
    lines = ["## Settings: published defaults, the grid, the choice (selection split, tuning seed "
             f"{rep['tuning_seed']})", ""]
    if rep.get("uniform_selection_loss") is not None:
        lines += [f"Yardstick: uniform at the tuning seed scores {rep['uniform_selection_loss']:.4f} on the selection "
                  "split. One seed per point: differences below the seed-to-seed spread of the table above are noise.",
                  ""]
    for kind, t in rep["tuning"].items():
        lines += [f"**{kind}**. Published: " + "; ".join(rep["defaults"].get(kind, ["not stated"])) + ".", ""]
        if not t["tuned"]:
            lines += [f"Not tuned (one setting): {t['points'][0]['label']}.", ""]
            continue
        lines += ["| point | setting | selection loss |", "|---|---|---|"]
        for k, p in enumerate(t["points"]):
            mark = " **chosen**" if k == t["chosen"] else ""
            lines.append(f"| {k + 1} | {p['label']} | {_fmt(p['selection_loss'])}{mark} |")
        lines.append("")
    return lines


def markdown(rep: dict[str, Any]) -> str:
    doms, ms = rep["domains"], rep["methods"]
    n = len(rep["seeds"])
    main = [m for m in rep["ranking"] if ms[m]["role"] != "control"]
    controls = [m for m in rep["ranking"] if ms[m]["role"] == "control"]
    n_methods = len([m for m in main if m != BASELINE])
    lines = [
        "# Mixing methods compared on one budget\n",
        f"{len(main)} methods and {len(controls)} controls x {n} reported seeds ({', '.join(map(str, rep['seeds']))}), "
        f"{rep['steps']} steps, {rep['budget_tokens']:,} training tokens per final run. Average loss = the mean of the "
        "per-domain losses (nats) on the reported validation split at the last step (the same evaluation tokens for "
        "every domain, spread over the whole split). No method and no setting saw that split: every choice was made "
        f"on the selection split with seed {rep['tuning_seed']}, which is not reported. Paired differences are per "
        f"seed against `{BASELINE}` (negative = better): two-sided paired t-test, a {BOOTSTRAP:,}-resample bootstrap "
        f"95% interval of the mean, and Holm's correction over the {n_methods} methods (the controls form their own "
        f"family). A method *beats uniform* when its mean difference is negative and its Holm-adjusted p < {ALPHA}.\n",
        f"**{len(rep['beat_uniform'])} of {n_methods} methods beat uniform after Holm correction** "
        f"({_names(rep['beat_uniform'])}). Lower on average: {_names(rep['lower_on_average'])}; p < {ALPHA} before "
        f"correction: {_names(rep['beat_uniform_uncorrected'])}; worse than uniform after correction: "
        f"{_names(rep['worse_than_uniform'])}.\n",
        "Compute: extra training tokens of a method's own auxiliary runs (proxies, reference, prior runs); tuning "
        "tokens of its grid; compute = (final run + extra + feedback evaluations / 3) in budgets (with tuning in "
        "parentheses). Probe and exploration steps are inside the budget.\n",
        *_rows(rep, main)]
    if controls:
        lines += ["", "## Controls that explain Aioli", "",
                  "`aioli_static`: one round (LearnParams once, then p to the end). `aioli_uniform_exploit`: "
                  "Aioli's probes with every exploit segment on uniform, so its gap to uniform is the cost of "
                  "probing alone.", "",
                  *_rows(rep, controls)]
    eq = rep["equal_compute"]
    if eq["methods"]:
        u = eq["uniform_long"]
        lines += ["", f"## Equal compute: uniform trained for up to {eq['multiplier']:g} budgets", "",
                  f"Uniform at {eq['multiplier']:g}x the budget: {u['mean']:.4f} ± {_fmt(u['std'])}. Uniform's loss "
                  "at a method's compute k is interpolated per seed in log k between 1x and "
                  f"{eq['multiplier']:g}x; beyond it the comparison is with uniform at {eq['multiplier']:g}x (a "
                  "bound). Uniform-equivalent = the multiple of the budget at which uniform's mean loss equals the "
                  "method's.", "",
                  "| method | compute k | uniform at | diff (mean ± std) | p | uniform-equivalent | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for m in rep["ranking"]:
            e = eq["methods"].get(m)
            if e:
                lines.append(f"| {m} | {e['multiplier']:.2f} | {e['uniform_at']:.2f} | {e['diff']:+.4f} ± "
                             f"{_fmt(e['std'])} | {_p(e['p'])} | {e['uniform_equivalent']} | {e['verdict']} |")
    lines += ["", "## Splits (documents / tokens per domain) and evaluation sets", "",
              "| domain | train | selection | validation (reported) | reported eval | selection eval | feedback set |",
              "|---|---|---|---|---|---|---|"]
    for d, s in rep["splits"].items():
        ev = [f"{s[k]['tokens']:,} tok, {s[k]['windows']} windows" + (f", {s[k]['docs_touched']} docs"
                                                                        if "docs_touched" in s[k] else "")
              for k in ("reported_eval", "selection_eval", "feedback")]
        sizes = [f"{s[k]['docs']:,} / {s[k]['tokens']:,}" for k in ("train", "select", "val")]
        lines.append(f"| {d} | " + " | ".join(sizes + ev) + " |")
    lines += ["", "## Which split each method saw", "", "| method | its choice comes from |", "|---|---|"]
    lines += [f"| {m} | {ms[m]['split_seen']} |" for m in rep["ranking"]]
    lines += ["", *_tuning(rep)]
    lines += ["## Per-domain validation loss at the end (mean ± std over seeds)", "",
              "| method | " + " | ".join(doms) + " |", "|---|" + "---|" * len(doms)]
    for m in rep["ranking"]:
        pd = ms[m]["per_domain_loss"]
        lines.append(f"| {m} | " + " | ".join(f"{pd[d]['mean']:.4f} ± {_fmt(pd[d]['std'])}" for d in doms) + " |")
    lines += ["", "## Mixtures (online methods: the last exploit mixture of the first seed; DoReMi: averaged weights)",
              "", "| method | " + " | ".join(doms) + " |", "|---|" + "---|" * len(doms)]
    for m in rep["ranking"]:
        lines.append(f"| {m} | " + " | ".join(_fmt(ms[m]["mixture"][d], 3) for d in doms) + " |")
    lines += ["", "## Per-seed paired differences against uniform (average loss, nats)", ""]
    lines += [f"- {m}: " + ", ".join(f"{x:+.4f}" for x in ms[m]["vs_uniform"]["per_seed"])
              for m in rep["ranking"] if ms[m].get("vs_uniform")]
    lines += ["", "## Compute beyond the final runs", ""]
    for m in rep["ranking"]:
        c = ms[m]["compute"]
        extra = ", ".join(f"{k} {v:,}" for k, v in c.items() if k.endswith("tokens") and v)
        lines.append(f"- {m}: {c.get('notes', '')}" + (f"; {extra}" if extra else ""))
    for name, rounds in rep["aioli_rounds"].items():
        lines += ["", f"## {name}: A estimated per round (first seed; normalised, column sums drive the EG step)", ""]
        for r in rounds:
            lines.append(f"- round {r['round']} (update at step {r['step']}): colsum(A) = "
                         + ", ".join(f"{d} {x:.3f}" for d, x in zip(doms, r["colsum"]))
                         + "; p = " + ", ".join(f"{x:.3f}" for x in r["p"]))
    if rep["online_bimix_fits"]:
        lines += ["", "## online_bimix: the law refitted per round (first seed)", ""]
        for f in rep["online_bimix_fits"]:
            lines.append(f"- round {f['round']} (step {f['step']}, {f['points']} points): alpha = "
                         + ", ".join(f"{d} {x['alpha']:.2f}" for d, x in zip(doms, f["domains"]))
                         + "; p = " + ", ".join(f"{x:.3f}" for x in f["p"]))
    lines += ["", "Plots: `plots/final_loss.png`, `plots/trajectories.png`, `plots/loss_curves.png`.", ""]
    return "\n".join(lines)
