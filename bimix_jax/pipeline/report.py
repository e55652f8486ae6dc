"""The pipeline's report: `report.json` (every number), `report.md` (the same, readable) and PNG plots.

Built from the stage outputs of `bimix_jax.pipeline.run` (loss tables, the fitted law, the optimizer's report,
the confirmation run), without training or fitting anything. Every number in `report.md` comes from
`report.json`; timings and code provenance sit in its `timing` and `provenance` sections, apart from the
results (so two invocations that computed the same thing have equal results).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from bimix_jax import atomic
from bimix_jax.pipeline import plots
from bimix_jax.laws import transfer
from bimix_jax.laws.base import FittedLaw
from bimix_jax.loss_table import LossTable

REPORT_FORMAT = "bimix_jax.pipeline_report"
REPORT_VERSION = 3  # 3: 'confirmation' (was 'validation'), candidate 'natural' (was 'baseline')
PLOTS = {"loss_curves": "loss curves of every run, per eval domain and averaged",
         "fit": "the fitted law (lines) against every run's checkpoints in the fit window (the recommended run was "
                "not fitted), with the last-step test",
         "predicted_vs_observed": "held-out predictions: each candidate left out in turn, and the recommended run",
         "mixtures": "the candidate mixtures and the recommended one"}


@dataclasses.dataclass(frozen=True, eq=False)
class ReportInputs:
    config: dict
    spec: dict  # the pipeline section, typed
    data_table: str  # Markdown table of the corpus (bimix_jax.data.prepare.describe)
    candidates: dict  # stage output: entropy report and candidate list
    proxies: dict  # realized_shares per run, model_size, steps, tokens_per_run
    fit: dict  # stage output of analysis.fit_stage
    mixture: dict  # stage output of analysis.mixture_stage (the optimizer's report)
    confirmation: dict  # stage output of stages.confirm_stage
    table: LossTable  # every run's loss table
    fitted: FittedLaw
    timing: dict
    provenance: dict
    files: dict  # path -> sha256 of the files needed to reproduce the result


def paths(workdir: str) -> dict[str, str]:
    out = {"report_md": os.path.join(workdir, "report.md"), "report_json": os.path.join(workdir, "report.json")}
    out.update({name: os.path.join(workdir, "plots", f"{name}.png") for name in PLOTS})
    return out


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("n", "mre_pct", "max_re_pct", "r2_log", "pearson", "rmse")
    return {"mean": report.get("mean"), "worst": report.get("worst"),
            "per_domain": {e: {k: m.get(k) for k in keys} for e, m in (report.get("per_domain") or {}).items()},
            "skipped": report.get("skipped") or {}}


def _loco_summary(loco: Mapping[str, Any]) -> dict[str, Any] | None:
    done = [v for v in loco.values() if "mean" in v]
    if not done:
        return None
    r2 = [v["mean"]["r2_log"] for v in done if v["mean"]["r2_log"] is not None]
    worst_r2 = [v["worst"]["r2_log"] for v in done if v["worst"]["r2_log"] is not None]
    return {"scored": len(done), "skipped": len(loco) - len(done),
            "mean_r2_log": float(np.mean(r2)) if r2 else None, "worst_r2_log": min(worst_r2) if worst_r2 else None,
            "mean_mre_pct": float(np.mean([v["mean"]["mre_pct"] for v in done])),
            "max_re_pct": float(max(v["worst"]["max_re_pct"] for v in done))}


def build(inp: ReportInputs) -> dict[str, Any]:
    """The content of report.json."""
    shares = inp.proxies["realized_shares"]
    cands = [{**c, "realized_shares": shares.get(c["duplicate_of"] or c["name"])}
             for c in inp.candidates["candidates"]]
    ent = inp.candidates["entropy"]["entropy"]
    law_domains = inp.fit["law"]["summary"].get("domains", {})
    mix = inp.mixture
    boot = mix.get("bootstrap")
    val = inp.confirmation
    runs = val["runs"]
    comparison = [{"run": n, "is_recommended": n == val["recommended"], "rank": runs[n]["rank"],
                   "observed_average": runs[n]["observed_average"], "observed_mean": runs[n]["observed_mean"],
                   "predicted_average": runs[n]["predicted_average"]} for n in val["ranking"]]
    rec = runs[val["recommended"]]
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "config": inp.config,
        "domains": list(inp.fitted.train_domains),
        "candidates": cands,
        "entropy_nats": {d: {k: ent[d].get(k) for k in ("se", "ce", "je", "vne", "tokens")} for d in ent},
        "proxies": {k: inp.proxies[k] for k in ("model_size", "steps", "tokens_per_run")},
        "proxy_scale": transfer.proxy_note(inp.proxies["model_size"]),
        "law": {"name": inp.fitted.law, "fit_min_step": inp.fit["min_step"], "rows": inp.fit["rows"],
                "runs": inp.fit["runs"], "steps": inp.fit["steps"],
                "params": {e: d["params"] for e, d in law_domains.items()},
                "convergence": {e: d["convergence"]["status"] for e, d in law_domains.items()},
                "rms_residual_log": {e: d["convergence"]["rms_residual"] for e, d in law_domains.items()}},
        "heldout": {"last_step": _summary(inp.fit["last_step"]),
                    "leave_one_out": {r: (_summary(v) if "mean" in v else v)
                                      for r, v in inp.fit["leave_one_out"].items()},
                    "leave_one_out_summary": _loco_summary(inp.fit["leave_one_out"])},
        "recommended": {
            "mixture": mix["mixture"], "step": mix["step"], "weights": mix["weights"],
            "bootstrap": None if not boot else {"percentiles": boot["percentiles"], "mixture": boot["mixture"],
                                                "n_used": boot["n_used"], "n_boot": boot["n_boot"],
                                                "gain": boot["gain"]},
            "predicted_loss": mix["predicted_loss"], "predicted_gain": mix["gain"], "binding": mix["binding"],
            "epochs": mix.get("epochs"), "warnings": mix["warnings"], "solver": mix["solver"],
            "realized_shares": shares.get(val["recommended"])},
        "confirmation": {
            "last_step": val["last_step"],
            "at_last_step": val["prediction_error_at_last_step"],
            "average": {"predicted": rec["predicted_average"], "observed": rec["observed_average"],
                        "relative_error_pct": val["average_prediction_error_pct"]},
            "curve": {k: {"mean": v["mean"], "worst": v["worst"], "pooled": v["pooled"]}
                      for k, v in val["curve"].items()}},
        "data_use": _data_use(inp, val["recommended"]),
        "seed_noise": val.get("seed_noise"),
        "paired": val.get("paired", {}),
        "comparison": comparison,
        "verdict": _verdict(val),
        "plots": {name: f"plots/{name}.png" for name in PLOTS},
        "files": inp.files,
        "timing": inp.timing,
        "provenance": inp.provenance,
    }


def _data_use(inp: ReportInputs, recommended: str) -> dict[str, Any] | None:
    """Epochs of each domain's training data every run drew, and the confirmation run against the optimizer's
    repetition cap (`pipeline.max_epochs`)."""
    usage = {run: u for run, u in (inp.proxies.get("usage") or {}).items() if u}
    if not usage:
        return None
    cap = float(inp.spec.get("max_epochs") or 0.0) or None
    epochs = {run: {d: float(x["epochs"]) for d, x in u.items()} for run, u in usage.items()}
    over = {d: e for d, e in epochs.get(recommended, {}).items() if cap is not None and e > cap}
    return {"epochs": epochs, "max_epochs": cap, "recommended_over_cap": over}


def _verdict(val: Mapping[str, Any]) -> str:
    runs, rec_name = val["runs"], val["recommended"]
    rec, best = runs[rec_name], val["best_candidate"]
    diff = val["gain_vs_best_candidate"]
    n = len(runs)
    if rec["rank"] == 1:
        text = (f"The recommended mixture has the lowest observed average validation loss of all {n} runs: "
                f"{rec['observed_average']:.4f} nats, {diff:.4f} below the best candidate ({best}, "
                f"{runs[best]['observed_average']:.4f}).")
    else:
        text = (f"The recommended mixture does not beat every candidate: it ranks {rec['rank']} of {n} by observed "
                f"average validation loss ({rec['observed_average']:.4f} nats); the best run is {best} with "
                f"{runs[best]['observed_average']:.4f}, {-diff:.4f} lower.")
    for ref, p in val.get("paired", {}).items():
        text += (f" Paired with {ref} seed by seed (recommended minus {ref}): "
                 + ", ".join(f"{x:+.4f}" for x in p["differences"])
                 + f" nats; the recommended mixture is lower at {p['recommended_wins']} of {p['seeds']} seed(s).")
    noise = val.get("seed_noise")
    if not noise:
        return text + (" Each mixture was trained once, with the same seed; how much these numbers vary from seed "
                       "to seed is not measured here (pipeline.noise_seeds=0).")
    ratio = abs(diff) / noise["std"] if noise["std"] > 0 else float("inf")
    return text + (f" Seed-to-seed spread: the {noise['mixture_of']} mixture trained with {noise['n']} seeds has a "
                   f"standard deviation of {noise['std']:.4f} nats in this average; the margin is {ratio:.1f} times "
                   "that.")


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(rep: Mapping[str, Any], data_table: str) -> str:
    """report.md from report.json's content."""
    domains = rep["domains"]
    c = rep["config"]
    lines = ["# BiMix pipeline report", "",
             f"{len(rep['candidates'])} candidate mixtures over {len(domains)} domains, proxies of "
             f"{rep['proxies']['model_size']} non-embedding parameters trained for {rep['proxies']['steps']} steps "
             f"({rep['proxies']['tokens_per_run']:,} tokens) each; BiMix fitted on their checkpoints from step "
             f"{rep['law']['fit_min_step']:g}; the recommended mixture trained and checked.", "",
             f"**Verdict.** {rep['verdict']}", "",
             ("**Warning, proxy scale.** " if rep["proxy_scale"]["below_reliable"] else "**Proxy scale.** ")
             + rep["proxy_scale"]["text"], "", "## Data", "", data_table, "",
             "## Candidates", "", "Requested proportion / realized share of training rows, per domain.", ""]
    rows = []
    for cand in rep["candidates"]:
        real = cand["realized_shares"] or {}
        cells = [f"{cand['mixture'][d]:.4f} / {real.get(d, float('nan')):.4f}" for d in domains]
        note = f"same as {cand['duplicate_of']}: trained once" if cand["duplicate_of"] else cand["source"]
        rows.append([cand["name"], *cells, note])
    rec = rep["recommended"]
    real = rec["realized_shares"] or {}
    rows.append(["**optimized**", *(f"{rec['mixture'][d]:.4f} / {real.get(d, float('nan')):.4f}" for d in domains),
                 "recommended by the fitted law"])
    lines += _table(["candidate", *domains, "source"], rows)
    use = rep.get("data_use")
    if use:
        lines += ["", "Epochs of each domain's training data drawn by each run (windows drawn x window length / the "
                  "domain's training tokens):", ""]
        lines += _table(["run", *domains], [[run, *(f"{e.get(d, float('nan')):.3f}" for d in domains)]
                                            for run, e in use["epochs"].items()])
        if use["max_epochs"]:
            over = use["recommended_over_cap"]
            lines += ["", f"Repetition cap pipeline.max_epochs = {use['max_epochs']:g}: the confirmation run "
                      + (f"drew more than that of {', '.join(f'{d} ({e:.2f})' for d, e in over.items())}."
                         if over else "stays within it for every domain.")]
    lines += ["", "Entropies (nats) behind the entropy mixtures:", ""]
    ent = rep["entropy_nats"]
    lines += _table(["domain", "tokens", "SE", "CE", "JE", "VNE"],
                    [[d, f"{ent[d]['tokens']:,}", *(_fmt(ent[d][k]) for k in ("se", "ce", "je", "vne"))]
                     for d in ent])
    law = rep["law"]
    lines += ["", "## Fitted law", "",
              f"BiMix, L_e(r, s) = r_e^-alpha_e (a_e s^-beta_e + c_e), least squares on log loss over {law['rows']} "
              f"checkpoints of {len(law['runs'])} runs (steps {law['steps'][0]:g}..{law['steps'][-1]:g}).", ""]
    lines += _table(["eval domain", "a", "c", "alpha", "beta", "rms residual (log)", "fit"],
                    [[e, *(f"{p[k]:.4g}" for k in ("a", "c", "alpha", "beta")), f"{law['rms_residual_log'][e]:.4f}",
                      law["convergence"][e]] for e, p in law["params"].items()])
    held = rep["heldout"]
    last = held["last_step"]
    lines += ["", "### Held-out quality", "",
              f"*Last step*: fit on every checkpoint but each run's last, predict the last. Mean relative error "
              f"{_fmt(last['mean'] and last['mean']['mre_pct'], '.3f')}%, worst point "
              f"{_fmt(last['worst'] and last['worst']['max_re_pct'], '.3f')}%.", ""]
    lines += _table(["eval domain", "MRE %", "max RE %"],
                    [[e, _fmt(m["mre_pct"], ".3f"), _fmt(m["max_re_pct"], ".3f")]
                     for e, m in last["per_domain"].items()])
    loco = held["leave_one_out"]
    if loco:
        s = held["leave_one_out_summary"] or {}
        lines += ["", "*Leave one candidate out*: fit on the other candidates, predict the held-out run's whole "
                  "curve (fit window). R^2 of log loss per domain (mean and worst over domains), relative error.", ""]
        rows = []
        for run, v in loco.items():
            if "mean" in v:
                rows.append([run, _fmt(v["mean"]["r2_log"]), _fmt(v["worst"]["r2_log"]),
                             _fmt(v["mean"]["mre_pct"], ".3f"), _fmt(v["worst"]["max_re_pct"], ".3f")])
            else:
                rows.append([run, "-", "-", "-", f"skipped: {v['skipped']}"])
        lines += _table(["held-out run", "R^2 mean", "R^2 worst", "MRE %", "max RE %"], rows)
        if s:
            lines += ["", f"Over the {s['scored']} scored runs: mean R^2 {_fmt(s['mean_r2_log'])}, worst "
                      f"{_fmt(s['worst_r2_log'])}; mean MRE {_fmt(s['mean_mre_pct'], '.3f')}%, worst point "
                      f"{_fmt(s['max_re_pct'], '.3f')}%."]
    lines += _recommended_md(rep, domains) + _confirmation_md(rep)
    lines += ["", "## Plots", ""] + [f"![{text}]({rep['plots'][n]})  \n*{text}*\n" for n, text in PLOTS.items()]
    settings = ", ".join(f"{k}={v!r}" for k, v in c["pipeline"].items())
    lines += ["## Reproduce", "", f"Config: `pipeline.json`, also under `config` in `report.json` (pipeline section: "
              f"{settings}). Code: "
              f"bimix-jax {rep['provenance']['code']['version']}, git commit "
              f"{rep['provenance']['code']['git_commit'] or 'unknown'}"
              f"{' (with local changes)' if rep['provenance']['code']['git_dirty'] else ''}, source SHA-256 "
              f"{rep['provenance']['code']['source_sha256'][:16]}. Files (SHA-256):", ""]
    lines += [f"- `{f}` {(h or 'missing')[:16]}" for f, h in rep["files"].items()]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in rep["timing"].items() if v is not None)
    lines += ["", f"Stage times (in the invocation that computed each): {timing}.", ""]
    return "\n".join(lines)


def _recommended_md(rep: Mapping[str, Any], domains: list[str]) -> list[str]:
    rec = rep["recommended"]
    boot = rec["bootstrap"]
    lines = ["", "## Recommended mixture", "",
             f"Minimises the law's weighted average loss at step {rec['step']:g} (weights: "
             + ", ".join(f"{e} {w:.3g}" for e, w in rec["weights"].items()) + ")"
             + (f"; bootstrap over runs, {boot['n_used']} of {boot['n_boot']} replicates, percentiles "
                f"{boot['percentiles'][0]:g}..{boot['percentiles'][-1]:g}" if boot else "") + ".", ""]
    base = rep["candidates"][0]["mixture"] if rep["candidates"] else {}
    rows = []
    for d in domains:
        q = boot["mixture"].get(d) if boot else None
        rows.append([d, f"{rec['mixture'][d]:.4f}", f"{q[0]:.4f}..{q[-1]:.4f}" if q else "-",
                     f"{base.get(d, float('nan')):.4f}", ",".join(rec["binding"].get(d, [])) or "-"])
    lines += _table(["domain", "recommended", "interval", rep["candidates"][0]["name"] if base else "-", "bound"], rows)
    pl = rec["predicted_loss"]
    lines += ["", "Predicted weighted average loss at that step: " + ", ".join(
        f"{n} {_fmt(v['total'])}" for n, v in pl.items()) + "."]
    lines += [f"- warning: {w}" for w in rec["warnings"]]
    return lines


def _confirmation_md(rep: Mapping[str, Any]) -> list[str]:
    val = rep["confirmation"]
    lines = ["", "## Predicted vs observed: the recommended run", "",
             f"At the last step ({val['last_step']:g}):", ""]
    rows = [[e, f"{v['predicted']:.4f}", f"{v['observed']:.4f}", f"{v['relative_error_pct']:+.2f}"]
            for e, v in val["at_last_step"].items()]
    a = val["average"]
    rows.append(["**average**", f"{a['predicted']:.4f}", f"{a['observed']:.4f}", f"{a['relative_error_pct']:+.2f}"])
    lines += _table(["eval domain", "predicted", "observed", "error %"], rows)
    for label, what in (("fit_window", "in the fit window"), ("all_steps", "at every checkpoint")):
        cv = val["curve"][label]
        lines += ["", f"Over its curve {what}: mean R^2 of log loss {_fmt(cv['mean']['r2_log'])} (worst "
                  f"{_fmt(cv['worst']['r2_log'])}), mean relative error {_fmt(cv['mean']['mre_pct'], '.3f')}% "
                  f"(worst point {_fmt(cv['worst']['max_re_pct'], '.3f')}%)."]
    lines += ["", "## Observed average validation loss of every run", "",
              "Weighted mean over the eval domains (the objective's weights) at the last step, best first; the law's "
              "prediction next to it (in-sample for the candidates).", ""]
    lines += _table(["rank", "run", "observed", "plain mean", "predicted"],
                    [[str(r["rank"]), f"**{r['run']}**" if r["is_recommended"] else r["run"],
                      f"{r['observed_average']:.4f}", f"{r['observed_mean']:.4f}", _fmt(r["predicted_average"])]
                     for r in rep["comparison"]])
    noise = rep.get("seed_noise")
    if noise:
        lines += ["", f"Seed-to-seed spread of the {noise['mixture_of']} mixture's average loss: "
                  + ", ".join(f"{r} {v:.4f}" for r, v in noise["observed_average"].items())
                  + f"; standard deviation {noise['std']:.4f} nats over {noise['n']} seeds."]
    return lines + ["", rep["verdict"]]


def figures(inp: ReportInputs) -> dict[str, bytes]:
    """The PNG plots, by name."""
    fit_rows = inp.table.subset(inp.table.step >= inp.fit["min_step"])
    groups = {}
    for run, v in inp.fit["leave_one_out"].items():
        if "points" in v:
            groups[f"{run} left out"] = (v["points"]["observed"], v["points"]["predicted"])
    pts = inp.confirmation["points"]
    in_window = np.asarray(pts["step"]) >= inp.fit["min_step"]
    groups["recommended run"] = (np.asarray(pts["observed"])[in_window], np.asarray(pts["predicted"])[in_window])
    mixtures = {c["name"]: c["mixture"] for c in inp.candidates["candidates"] if c["duplicate_of"] is None}
    mixtures["optimized"] = inp.mixture["mixture"]
    boot = inp.mixture.get("bootstrap")
    intervals = {"optimized": boot["mixture"]} if boot else None
    figs = {
        "loss_curves": plots.loss_curves_figure(inp.table, inp.mixture["weights"], highlight="optimized"),
        "fit": plots.fit_figure(fit_rows, inp.fitted, inp.fit["last_step"]),
        "predicted_vs_observed": plots.scatter_figure(groups, "BiMix predictions of runs it was not fitted on"),
        "mixtures": plots.mixture_bars_figure(mixtures, intervals),
    }
    return {name: plots.render(fig, f"{name}.png") for name, fig in figs.items()}


def write(workdir: str, inp: ReportInputs) -> dict[str, Any]:
    """Writes the plots, report.json and report.md (last); returns report.json's content."""
    p = paths(workdir)
    for name, png in figures(inp).items():
        atomic.write_bytes(p[name], png)
    rep = atomic.to_jsonable(build(inp))
    atomic.write_json(p["report_json"], rep)
    atomic.write_text(p["report_md"], markdown(rep, inp.data_table))
    return rep
