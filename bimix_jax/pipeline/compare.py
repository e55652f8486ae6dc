"""Every mixing method side by side: one model, one token budget, the same reported seeds, the same data, and
no choice made on the split that is reported.

`compare_methods(config, workdir)` runs two kinds of runs (`bimix_jax/pipeline/compare_data.py`):
* auxiliary runs, at `compare.tuning_seed` and scored on the selection split: the law methods' proxies, DoReMi's
  reference and proxies, restricted Aioli's prior runs, and the tuning grids of the online methods
  (`compare_tuning.py`); everything a method chooses comes from them;
* final runs, one per method and reported seed, scored on the validation split, which nothing above sees; plus
  uniform trained for `compare.equal_compute` times the budget, for the equal-compute view.

Methods (`compare.methods`):
* static: `uniform` (the Aioli paper's stratified sampling), `natural` (token shares), the entropy mixtures
  `se`, `ce`, `je`, `vne` (from the training split);
* `bimix`, `dml`: BiMix and the Data Mixing Law fitted on the selection-split losses of the static methods'
  proxies, then the law's optimal mixture;
* `doremi`: reference (natural) + proxy (per-token clipped excess, `compare_doremi.py`), settings from
  `compare.doremi_grid`; fresh runs train on the time-averaged weights;
* `aioli`: online from uniform, settings from `compare.aioli_grid`; `aioli_restricted`: a DoReMi prior learned
  on runs `compare.restricted_fraction` as long, trained that many steps, then Aioli;
* `online_bimix`: BiMix's law fitted online to the run's own feedback (`bimix_jax/online/bimix_online.py`);
* controls `aioli_static` (one round) and `aioli_uniform_exploit` (Aioli's probes, exploit pinned to uniform).

Resumable: every run resumes or is recognised as finished; fits are stored stages. Statistics and the report:
`compare_stats.py`, `compare_report.py`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from bimix_jax import atomic, loss_table
from bimix_jax.data.source import open_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.laws import FittedLaw, fit_law
from bimix_jax.mixture import constraints
from bimix_jax.online import aioli as aioli_lib
from bimix_jax.online import bimix_online, doremi
from bimix_jax.online.spec import OnlineSpec
from bimix_jax.pipeline import compare_data, compare_report, compare_tuning, provenance, stages
from bimix_jax.pipeline.compare_doremi import TokenExcessDoReMi, token_losses_on
from bimix_jax.pipeline.compare_spec import CONTROLS, LAW_METHODS, METHODS, STATIC, CompareSpec, check_workdir
from bimix_jax.pipeline.spec import PipelineSpec
from bimix_jax.train import hosts
from bimix_jax.train.log import LOSSES_FILE
from bimix_jax.train.loop import RunResult, train_run
from bimix_jax.train.segments import read_trajectory
from bimix_jax.train.state import RunSpec

__all__ = ["CompareSpec", "METHODS", "compare_methods"]
CONFIG_FILE = "compare.json"
CONFIG_FORMAT = "bimix_jax.compare_config"
TIMING_FILE = "timing.json"


def _scaled_spec(spec: RunSpec, fraction: float, *, eval_every: int | None = None) -> RunSpec:
    """`spec` trained for `fraction` of its steps (the schedule stretched or shrunk with it)."""
    steps = max(2, int(round(spec.train.steps * fraction)))
    every = min(eval_every or spec.train.eval_every, steps)
    t = dataclasses.replace(spec.train, steps=steps, eval_every=every,
                            checkpoint_every=min(max(spec.train.checkpoint_every, int(round(
                                spec.train.checkpoint_every * fraction))), steps))
    o = dataclasses.replace(spec.optim, warmup_steps=min(spec.optim.warmup_steps, steps - 1))
    return dataclasses.replace(spec, train=t, optim=o)


class _Runs:
    """Trains (or resumes, or reloads) the comparison's runs: `runs/<name>/seed<k>` (reported view) and
    `runs/select/<name>/seed<k>` (selection view)."""

    def __init__(self, workdir: str, data, feedback_tokens: int, cfg: dict):
        self.workdir, self.data, self.feedback, self.cfg = workdir, data, feedback_tokens, cfg
        self.trained: dict[str, int] = {}  # kind of run -> tokens trained (for the compute column)

    def run(self, name: str, seed: int, spec: RunSpec, *, view: str, proportions=None, method=None) -> RunResult:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=int(seed)))
        sub = ("select",) if view == "select" else ()
        w = os.path.join(self.workdir, "runs", *sub, *name.split("/"), f"seed{seed}")
        feedback = self.feedback if method is not None else 0
        inp = compare_data.comparison_input(self.data, spec.train, feedback_tokens=feedback, view=view)
        return train_run(spec, inp, None if method is not None else np.asarray(proportions), w,
                         run_name=f"{'select/' if sub else ''}{name}/seed{seed}", method=method,
                         feedback_tokens=feedback, extra_config={**self.cfg, "compare_run": name, "view": view})


@dataclasses.dataclass
class _Context:
    spec: RunSpec
    cspec: CompareSpec
    online: OnlineSpec
    laws: PipelineSpec
    runs: _Runs
    store: provenance.StageStore
    domains: tuple[str, ...]
    named: dict[str, np.ndarray]

    @property
    def budget(self) -> int:
        return self.spec.train.steps * self.spec.train.batch_size * self.spec.train.seq_len

    @property
    def tune_spec(self) -> RunSpec:  # tuning runs: one selection-split evaluation, at the end
        return _scaled_spec(self.spec, 1.0, eval_every=self.spec.train.steps)


def compare_methods(config: Mapping, workdir: str, *, data=None) -> dict:
    """Runs (or resumes) the comparison in `workdir`; returns the report (also in report.md/json).

    `data`: the prepared corpus to use instead of the one `config.data` describes (tests change one split)."""
    start = time.perf_counter()
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    run_spec = RunSpec.from_config(cfg)
    data_spec = DataSpec.from_config(cfg["data"])
    online = OnlineSpec.from_config(cfg.get("online"))
    cspec = CompareSpec.from_config(cfg.get("compare", {}))
    if "pipeline" not in cfg:
        raise InputError("config.pipeline is missing: the law-based and entropy methods fit and measure with the "
                         "pipeline's settings; start from configs/compare_tiny.py")
    laws = PipelineSpec.from_config(cfg["pipeline"])
    if online.feedback_tokens < 1:
        raise InputError("online.feedback_tokens must be >= 1 for a comparison (the online methods' feedback set)")
    if set(cspec.methods) & set(LAW_METHODS):
        laws.check_fit_window(run_spec)
    workdir = os.path.abspath(workdir)
    check_workdir(workdir, cfg, CONFIG_FILE, CONFIG_FORMAT)
    T = run_spec.train.steps
    with atomic.removed_on_input_error(workdir):  # Checks that need the corpus.
        prepared = data if data is not None else open_data(data_spec, workdir)
        tokens = prepared.run_data  # in memory, or a token store read on demand
        D = len(tokens.domains)
        cspec.check_domains(D)
        grids = cspec.method_configs(online, D, T)
        compare_data.comparison_input(tokens, run_spec.train, feedback_tokens=online.feedback_tokens, view="report")
        splits = compare_data.split_table(tokens, run_spec.train, online.feedback_tokens)
    writer = hosts.is_writer()  # multi-host: every process computes, process 0 alone writes
    if writer:
        atomic.write_json(os.path.join(workdir, CONFIG_FILE),
                          {"format": CONFIG_FORMAT, "config": atomic.to_jsonable(cfg)})
    store = provenance.StageStore(workdir, writer=writer)
    ctx = _Context(run_spec, cspec, online, laws, _Runs(workdir, tokens, online.feedback_tokens, cfg), store,
                   tokens.domains, _static_mixtures(prepared, laws, store))
    aux = _auxiliary(ctx, grids, tokens)
    finals = _finals(ctx, aux)
    long_runs = ([ctx.runs.run("uniform_long", s, _scaled_spec(run_spec, cspec.equal_compute,
                                                                eval_every=cspec.final_eval_every * 2),
                               view="report", proportions=ctx.named["uniform"]) for s in cspec.seeds]
                 if cspec.equal_compute > 1 else [])
    methods = [m for m in cspec.methods if m in finals]
    inputs = compare_report.Inputs(
        domains=tokens.domains, methods=methods, seeds=list(cspec.seeds), tuning_seed=cspec.tuning_seed, steps=T,
        budget_tokens=ctx.budget, finals={m: [r.final_losses for r in finals[m]] for m in methods},
        tables={m: [loss_table.read_csv(os.path.join(r.workdir, LOSSES_FILE)) for r in finals[m]] for m in methods},
        mixtures={m: (ctx.named[m].tolist() if m in STATIC else aux["mixtures"].get(m)
                      or finals[m][0].method_summary["final_proportions"]) for m in methods},
        compute=_compute(ctx, aux, finals),
        trajectories={m: read_trajectory(finals[m][0].workdir) for m in methods
                      if finals[m][0].method_summary is not None} | aux["trajectories"],
        aioli_rounds={m: finals[m][0].method_summary["rounds"] for m in methods
                      if m.startswith("aioli") and finals[m][0].method_summary},
        online_bimix_fits=(finals["online_bimix"][0].method_summary["fits"] if "online_bimix" in finals else []),
        tuning=aux["tuning"], splits=splits, uniform_long=[np.mean(list(r.final_losses.values())) for r in long_runs],
        equal_compute=cspec.equal_compute, laws=aux["laws"], uniform_selection_loss=aux.get("uniform_selection_loss"),
        config=cfg)
    report = compare_report.write(workdir, inputs) if writer else compare_report.summarize(inputs)
    wall = time.perf_counter() - start
    if writer:
        path = os.path.join(workdir, TIMING_FILE)
        past = atomic.read_json(path, what="timing") if os.path.exists(path) else []
        atomic.write_json(path, past + [{"wall_s": round(wall, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}])
    report["wall_s_this_invocation"] = wall
    logging.info("comparison finished in %.1f s (this invocation); report %s", wall, os.path.join(workdir, "report.md"))
    return report


def _auxiliary(ctx: _Context, grids: dict[str, list], tokens) -> dict[str, Any]:
    """Every choice: laws fitted on selection-view proxies, grids scored on the selection split, the prior."""
    c, runs, ts, methods = ctx.cspec, ctx.runs, ctx.cspec.tuning_seed, set(ctx.cspec.methods)
    out: dict[str, Any] = {"mixtures": {}, "tuning": {}, "trajectories": {}, "laws": {}, "tokens": {}}
    want_uniform = bool(methods & (set(LAW_METHODS) | {"doremi", "aioli", "online_bimix", "aioli_restricted"}))
    proxies = {n: runs.run(n, ts, ctx.spec, view="select", proportions=ctx.named[n])
               for n in STATIC if n in methods and (methods & set(LAW_METHODS) or (n == "uniform" and want_uniform))}
    if "uniform" in proxies:
        out["uniform_selection_loss"] = float(np.mean(list(proxies["uniform"].final_losses.values())))
    if methods & set(LAW_METHODS):
        table = loss_table.concat([loss_table.read_csv(os.path.join(r.workdir, LOSSES_FILE)) for r in proxies.values()],
                                  source="proxies (selection split)")
        for law in (m for m in LAW_METHODS if m in methods):
            fit, _ = ctx.store.run(f"law_{law}", provenance.fingerprint(law, table.to_csv(), _law_settings(ctx.laws)),
                                   lambda law=law: _law_mixture(law, table, ctx.laws, ctx.spec.train.steps, tokens))
            out["mixtures"][law] = [fit["mixture"][d] for d in ctx.domains]
            out["laws"][law] = fit
        out["tokens"]["proxies"] = len(proxies) * ctx.budget
        out["proxy_names"] = list(proxies)
    if methods & {"doremi", "aioli_restricted"}:
        _doremi(ctx, grids["doremi"], out)
    for kind, names in (("aioli", {"aioli", "aioli_restricted", "aioli_static", "aioli_uniform_exploit"}),
                        ("online_bimix", {"online_bimix"})):
        if methods & names:
            cls = aioli_lib.Aioli if kind == "aioli" else bimix_online.OnlineBiMix
            tuned = compare_tuning.tune(kind, grids[kind], lambda k, cfg, kind=kind, cls=cls: (_avg(runs.run(
                f"tune/{kind}/g{k + 1}", ts, ctx.tune_spec, view="select", method=cls(cfg)).final_losses), {}))
            out["tuning"][kind] = tuned.table(getattr(ctx.online, kind), ctx.domains)
            out[kind] = tuned.config
            out["tokens"][f"tune_{kind}"] = len(tuned.scores) * ctx.budget
    if "aioli_restricted" in methods:
        short = _scaled_spec(ctx.spec, c.restricted_fraction, eval_every=ctx.spec.train.steps)
        ref = runs.run("restricted/reference", ts, short, view="select", proportions=ctx.named["natural"])
        proxy = runs.run("restricted/doremi", ts, short, view="select",
                         method=_doremi_method(ctx, out["doremi"], ref))
        out["prior"], out["prior_steps"] = proxy.method_summary["final_proportions"], short.train.steps
        out["tokens"]["prior"] = 2 * short.train.steps * ctx.spec.train.batch_size * ctx.spec.train.seq_len
        out["trajectories"]["restricted/doremi (prior)"] = read_trajectory(proxy.workdir)
    return out


def _avg(losses: Mapping[str, float]) -> float:
    return float(np.mean(list(losses.values())))


def _doremi_method(ctx: _Context, config: doremi.DoReMiConfig, reference: RunResult) -> TokenExcessDoReMi:
    """DoReMi measured against `reference`'s per-token losses on the feedback set."""
    t = ctx.spec.train
    inp = compare_data.comparison_input(ctx.runs.data, t, feedback_tokens=ctx.online.feedback_tokens, view="select")
    feedback = inp.feedback_set(t)
    cfg = ctx.spec.model.decoder(inp.vocab_size, t.seq_len)
    return TokenExcessDoReMi.make(config, cfg, feedback, token_losses_on(cfg, reference.state.params, feedback))


def _doremi(ctx: _Context, configs: list, out: dict) -> None:
    """DoReMi's reference, its grid (each point: proxy, then a fresh run on the proxy's weights, scored on the
    selection split) and the chosen point's weights."""
    runs, ts = ctx.runs, ctx.cspec.tuning_seed
    ref = runs.run("doremi/reference", ts, ctx.tune_spec, view="select", proportions=ctx.named["natural"])
    proxies: dict[int, RunResult] = {}

    def proxy(k: int, config) -> RunResult:
        if k not in proxies:
            proxies[k] = runs.run(f"doremi/proxy_g{k + 1}", ts, ctx.tune_spec, view="select",
                                  method=_doremi_method(ctx, config, ref))
        return proxies[k]

    def score(k: int, config) -> tuple[float, dict]:
        weights = proxy(k, config).method_summary["final_proportions"]
        scored = runs.run(f"tune/doremi/g{k + 1}", ts, ctx.tune_spec, view="select", proportions=np.asarray(weights))
        return _avg(scored.final_losses), {"weights": weights}

    tuned = compare_tuning.tune("doremi", configs, score)
    chosen = proxy(tuned.chosen, tuned.config)
    out["doremi"], out["doremi_proxy"] = tuned.config, chosen.method_summary
    out["mixtures"]["doremi"] = chosen.method_summary["final_proportions"]
    out["tuning"]["doremi"] = tuned.table(ctx.online.doremi, ctx.domains)
    out["tokens"]["doremi_own"] = 2 * ctx.budget  # reference + the chosen proxy
    out["tokens"]["tune_doremi"] = (len(proxies) - 1 + len(tuned.scores)) * ctx.budget
    out["trajectories"]["doremi proxy"] = read_trajectory(chosen.workdir)


def _finals(ctx: _Context, aux: dict) -> dict[str, list[RunResult]]:
    """One run per method and reported seed, scored on the validation split."""
    spec = _scaled_spec(ctx.spec, 1.0, eval_every=ctx.cspec.final_eval_every)
    T, finals = spec.train.steps, {}
    online: dict[str, Any] = {}
    if "aioli" in aux:
        a = aux["aioli"]
        online["aioli"] = aioli_lib.Aioli(a)
        online["aioli_static"] = aioli_lib.Aioli(dataclasses.replace(a, round_steps=T), name="aioli_static")
        online["aioli_uniform_exploit"] = aioli_lib.Aioli(dataclasses.replace(a, exploit="uniform"),
                                                          name="aioli_uniform_exploit")
        if "prior" in aux:
            online["aioli_restricted"] = aioli_lib.Aioli(dataclasses.replace(
                a, prior=tuple(aux["prior"]), prior_steps=aux["prior_steps"]), name="aioli_restricted")
    if "online_bimix" in aux:
        online["online_bimix"] = bimix_online.OnlineBiMix(aux["online_bimix"])
    for m in ctx.cspec.methods:
        if m in online:
            finals[m] = [ctx.runs.run(m, s, spec, view="report", method=online[m]) for s in ctx.cspec.seeds]
        else:
            mix = ctx.named[m] if m in STATIC else np.asarray(aux["mixtures"][m])
            finals[m] = [ctx.runs.run(m, s, spec, view="report", proportions=mix) for s in ctx.cspec.seeds]
    return finals


def _compute(ctx: _Context, aux: dict, finals: dict[str, list[RunResult]]) -> dict[str, dict[str, Any]]:
    """Per method: extra training tokens (its own auxiliary runs), tuning tokens, probe and prior steps within the
    budget, feedback evaluations (forward-only tokens), and the total compute as a multiple of the budget."""
    t, D, tok = ctx.spec.train, len(ctx.domains), aux["tokens"]
    per_step, out = t.batch_size * t.seq_len, {}
    for m, results in finals.items():
        c: dict[str, Any] = {"extra_train_tokens": 0, "tuning_train_tokens": 0, "probe_tokens": 0,
                             "prior_tokens": 0, "feedback_eval_tokens": 0}
        traj = read_trajectory(results[0].workdir)
        for r in traj:
            if r["kind"] in ("probe", "prior"):
                c[f"{r['kind']}_tokens"] += (r["end"] - r["start"]) * per_step
        evals = sum(r.get("feedback_losses") is not None for r in traj)
        c["feedback_eval_tokens"] = evals * ctx.online.feedback_tokens * D
        if m in LAW_METHODS:
            c["extra_train_tokens"] = tok["proxies"]
            names = aux["proxy_names"]
            c["notes"] = f"law fitted on {len(names)} selection-view proxies ({', '.join(names)})"
        elif m == "doremi":
            c.update(extra_train_tokens=tok["doremi_own"], tuning_train_tokens=tok["tune_doremi"])
            prx = aux["trajectories"]["doremi proxy"]
            c["feedback_eval_tokens"] = (sum(r.get("feedback_losses") is not None for r in prx) + 1) * \
                ctx.online.feedback_tokens * D
            c["notes"] = "reference (natural) + proxy at the tuning seed; fresh runs on the averaged weights"
        elif m == "aioli_restricted":
            c.update(extra_train_tokens=tok["prior"], tuning_train_tokens=tok.get("tune_aioli", 0) +
                     tok.get("tune_doremi", 0))
            c["notes"] = f"DoReMi prior from runs of {aux['prior_steps']} steps, trained {aux['prior_steps']} steps"
        elif m in ("aioli", "online_bimix"):
            c["tuning_train_tokens"] = tok.get(f"tune_{m}", 0)
            c["notes"] = "probe / exploration steps are part of the budget"
        elif m in CONTROLS:
            c["notes"] = "control: Aioli's chosen settings (no tuning of its own)"
        else:
            c["notes"] = "fixed mixture"
        c["multiplier"] = (ctx.budget + c["extra_train_tokens"] + c["feedback_eval_tokens"] / 3) / ctx.budget
        c["multiplier_with_tuning"] = c["multiplier"] + c["tuning_train_tokens"] / ctx.budget
        out[m] = c
    return out


def _static_mixtures(prepared, laws: PipelineSpec, store: provenance.StageStore) -> dict[str, np.ndarray]:
    tokens = prepared.run_data
    fp = provenance.fingerprint("entropy", tokens.fingerprint(), laws.entropy_temperature, laws.vne_max_docs,
                                laws.entropy_sequence_length)

    def compute():
        _, named = stages.corpus_mixtures(prepared, temperature=laws.entropy_temperature,
                                          sequence_length=laws.entropy_sequence_length, max_docs=laws.vne_max_docs)
        return {m: named[m].tolist() for m in stages.ENTROPY_PROXIES}

    ent, _ = store.run("entropy", fp, compute)
    fixed = stages.fixed_mixtures(tokens)
    return {"uniform": fixed["uniform"], "natural": fixed["natural"], **{m: np.asarray(v) for m, v in ent.items()}}


def _law_settings(laws: PipelineSpec) -> dict:
    return {k: getattr(laws, k) for k in ("fit_min_step", "fit_n_starts", "fit_loss", "fit_huber_delta", "min_floor")}


def _law_mixture(law: str, table: loss_table.LossTable, laws: PipelineSpec, steps: int, tokens) -> dict:
    """The law's optimal mixture at `steps`: BiMix through the pipeline's fit and mixture stages, the Data Mixing
    Law (Ye et al.) through the same fitter and optimizer."""
    rows = stages.fit_table(table, laws.fit_min_step)
    options = stages.fit_options(laws.fit_n_starts, laws.fit_loss, laws.fit_huber_delta)
    if law == "bimix":
        fitted = FittedLaw.from_json(stages.fit_stage(table, min_step=laws.fit_min_step, options=options,
                                                      leave_one_out=False)["law"])
    else:
        fitted = fit_law(rows, "dml", **options)
    bounds = constraints.make_bounds(tokens.domains, min_floor=laws.min_floor,
                                     domain_tokens=tokens.token_counts("train"))
    rep = stages.mixture_stage(fitted, rows, step=float(steps), weights=None, bounds=bounds, n_boot=0, seed=0)
    return {"mixture": rep["mixture"], "predicted_loss": rep.get("predicted_loss"), "warnings": rep.get("warnings"),
            "fit_summary": fitted.summary, "law": law}
