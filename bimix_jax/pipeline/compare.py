"""Every mixing method side by side: one model, one token budget, the same seeds, the same data.

`compare_methods(config, workdir)` trains, for each seed, one run per method and reports the final
per-domain validation losses (the same held-out split for every run), each method's paired per-seed
difference against uniform sampling (stratified), and the compute each method spent beyond its final run.

Methods (`compare.methods`):
* static: `uniform` (the Aioli paper's stratified sampling), `natural` (token shares), the entropy mixtures
  `se`, `ce`, `je`, `vne`;
* `bimix`, `dml`: BiMix and the Data Mixing Law (Ye et al.) fitted on the static methods' first-seed runs
  (the proxies: their tokens count as the method's compute), then the law's optimal mixture;
* `doremi`: two stages; the reference is the `natural` run of the first seed, a DoReMi proxy run learns the
  time-averaged weights, fresh runs train on them (reference + proxy count as compute);
* `aioli`: online from uniform, every seed (probe steps are part of the budget);
* `aioli_restricted`: a prior learned by DoReMi on shorter runs (`compare.restricted_fraction` of the budget:
  reference and proxy), trained for that many steps, then Aioli.
Every run carves the same feedback slice off its training tokens (`online.feedback_tokens`), so all methods
train on the same data and online methods never see the reported validation split.

Resumable: every run resumes or is recognised as finished; fits and mixtures are stored stages.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from bimix_jax import atomic, loss_table
from bimix_jax.data.source import open_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.laws import FittedLaw, fit_law
from bimix_jax.mixture import constraints, proportions
from bimix_jax.online import doremi
from bimix_jax.online.schedule import realized_steps
from bimix_jax.online.spec import OnlineSpec
from bimix_jax.pipeline import compare_report, provenance, stages
from bimix_jax.pipeline.spec import PipelineSpec
from bimix_jax.train import hosts
from bimix_jax.train.log import LOSSES_FILE
from bimix_jax.train.loop import RunResult, train_run
from bimix_jax.train.segments import read_trajectory
from bimix_jax.train.state import RunSpec

STATIC = ("uniform", "natural", "se", "ce", "je", "vne")
LAW_METHODS = ("bimix", "dml")
METHODS = STATIC + LAW_METHODS + ("doremi", "aioli", "aioli_restricted")
CONFIG_FILE = "compare.json"
CONFIG_FORMAT = "bimix_jax.compare_config"
_RUN_SECTIONS = ("data", "model", "optim", "train", "online", "compare", "pipeline")


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    restricted_fraction: float = 0.25  # restricted Aioli: prior runs' length and prior steps, fraction of budget

    @classmethod
    def from_config(cls, section: Mapping) -> CompareSpec:
        section = dict(section)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise InputError(f"config.compare.{unknown[0]} is not a field; known: {', '.join(sorted(known))}")
        if "methods" in section:
            section["methods"] = tuple(proportions.canonical_name(m, field="compare.methods")
                                       for m in _names(section["methods"], "compare.methods"))
        if "seeds" in section:
            try:
                section["seeds"] = tuple(int(s) for s in _names(section["seeds"], "compare.seeds"))
            except ValueError:
                raise InputError("compare.seeds must be integers, like '0,1,2'") from None
        spec = cls(**section)
        bad = [m for m in spec.methods if m not in METHODS]
        if bad:
            raise InputError(f"compare.methods: {bad[0]!r} is unknown; choose from {', '.join(METHODS)}")
        if len(set(spec.methods)) != len(spec.methods) or len(set(spec.seeds)) != len(spec.seeds):
            raise InputError("compare.methods and compare.seeds must not repeat an entry")
        if not spec.methods or not spec.seeds:
            raise InputError("compare.methods and compare.seeds need at least one entry each")
        if "uniform" not in spec.methods:
            raise InputError("compare.methods must include 'uniform' (stratified sampling): every method is compared "
                             "with it")
        if not 0 < spec.restricted_fraction < 1:
            raise InputError(f"compare.restricted_fraction={spec.restricted_fraction} must lie in (0, 1)")
        if set(spec.methods) & set(LAW_METHODS) and len(set(spec.methods) & set(STATIC)) < 3:
            raise InputError("compare.methods: the law-based methods (bimix, dml) fit on the static methods' runs; "
                             "include at least 3 static methods")
        return spec


def _names(value: Any, field: str) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(str(p).strip() for p in parts if str(p).strip())
    if not out:
        raise InputError(f"{field} is empty; list at least one entry")
    return out


def _check_workdir(workdir: str, cfg: dict) -> None:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if os.path.isdir(workdir) and set(os.listdir(workdir)) - {"data"}:
            raise InputError(f"workdir {workdir} is not empty and holds no {CONFIG_FILE}; give a new or empty "
                             "--workdir")
        return
    stored = atomic.read_json(path, what="comparison config")
    if not isinstance(stored, dict) or stored.get("format") != CONFIG_FORMAT:
        raise InputError(f"{path} is not a comparison config of this project; use another --workdir")
    old, new = stored["config"], atomic.to_jsonable(cfg)
    for section in _RUN_SECTIONS:
        a, b = old.get(section), new.get(section)
        if a != b:
            key = next((k for k in sorted(set(a or {}) | set(b or {})) if (a or {}).get(k) != (b or {}).get(k)), "")
            raise InputError(f"workdir {workdir} holds another comparison ({section}.{key}: "
                             f"{(a or {}).get(key)!r} there, {(b or {}).get(key)!r} now); rerun with the same config, "
                             "or use another --workdir")


def _short_spec(spec: RunSpec, fraction: float) -> RunSpec:
    steps = max(2, int(round(spec.train.steps * fraction)))
    t = dataclasses.replace(spec.train, steps=steps, eval_every=min(spec.train.eval_every, steps),
                            checkpoint_every=min(spec.train.checkpoint_every, steps))
    o = dataclasses.replace(spec.optim, warmup_steps=min(spec.optim.warmup_steps, steps - 1))
    return dataclasses.replace(spec, train=t, optim=o)


class _Runs:
    """Trains (or resumes, or reloads) the comparison's runs under `workdir/runs/<name>/seed<k>`."""

    def __init__(self, workdir: str, spec: RunSpec, tokens, feedback_tokens: int, cfg: dict):
        self.workdir, self.spec, self.tokens, self.feedback, self.cfg = workdir, spec, tokens, feedback_tokens, cfg

    def run(self, name: str, seed: int, *, proportions=None, method=None, spec: RunSpec | None = None) -> RunResult:
        spec = spec or self.spec
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=int(seed)))
        w = os.path.join(self.workdir, "runs", name, f"seed{seed}")
        return train_run(spec, self.tokens, None if method is not None else np.asarray(proportions), w,
                         run_name=f"{name}/seed{seed}", method=method, feedback_tokens=self.feedback,
                         extra_config={**self.cfg, "compare_run": name})


def compare_methods(config: Mapping, workdir: str) -> dict:
    """Runs (or resumes) the comparison in `workdir`; returns the report (also in report.md/json)."""
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
    _check_workdir(workdir, cfg)
    short = _short_spec(run_spec, cspec.restricted_fraction)
    with atomic.removed_on_input_error(workdir):  # Checks that need the corpus.
        prepared = open_data(data_spec, workdir)
        tokens = prepared.run_data  # in memory, or a token store read on demand
        D, T = len(tokens.domains), run_spec.train.steps
        n_static = len(set(cspec.methods) & set(STATIC))
        if "dml" in cspec.methods and n_static < D + 1:
            raise InputError(f"compare.methods: dml fits the Data Mixing Law on the static methods' runs and needs at "
                             f"least {D + 1} of them for {D} domains (it has {n_static}); add static methods or drop dml")
        as_aioli, as_doremi = (dataclasses.replace(online, method=m) for m in ("aioli", "doremi"))
        aioli = as_aioli.build(D) if {"aioli", "aioli_restricted"} & set(cspec.methods) else None
        if "aioli_restricted" in cspec.methods and aioli.config.sweeps * D * aioli.config.probe_steps >= T - short.train.steps:
            raise InputError("compare.restricted_fraction leaves too few steps after the prior for one Aioli round; "
                             "lower it or online.aioli.round_steps")
    writer = hosts.is_writer()  # multi-host: every process computes, process 0 alone writes
    if writer:
        atomic.write_json(os.path.join(workdir, CONFIG_FILE), {"format": CONFIG_FORMAT, "config": atomic.to_jsonable(cfg)})
    store = provenance.StageStore(workdir, writer=writer)
    runs = _Runs(workdir, run_spec, tokens, online.feedback_tokens, cfg)
    budget = T * run_spec.train.batch_size * run_spec.train.seq_len
    short_budget = short.train.steps * run_spec.train.batch_size * run_spec.train.seq_len
    seeds, s0 = cspec.seeds, cspec.seeds[0]

    named = _static_mixtures(prepared, laws, store)
    results: dict[str, list[RunResult]] = {}
    mixtures: dict[str, list[float]] = {}
    compute: dict[str, dict[str, Any]] = {}
    # Static methods, every seed (and at the first seed wherever a law or DoReMi needs them as proxies).
    need_proxies = set(cspec.methods) & set(LAW_METHODS)
    for name in STATIC:
        want = name in cspec.methods
        if not want and not (name == "natural" and ({"doremi"} & set(cspec.methods))):
            continue
        mixtures[name] = named[name].tolist()
        results[name] = [runs.run(name, s, proportions=named[name]) for s in (seeds if want else (s0,))]
        compute[name] = {"extra_train_tokens": 0, "notes": "fixed mixture"}
    if need_proxies:
        proxy_names = [n for n in STATIC if n in cspec.methods]
        table = loss_table.concat([loss_table.read_csv(os.path.join(results[n][0].workdir, LOSSES_FILE))
                                   for n in proxy_names], source="proxies")
        for law in sorted(need_proxies, key=METHODS.index):
            out, _ = store.run(f"law_{law}", provenance.fingerprint(law, table.to_csv(), _law_settings(laws)),
                               lambda law=law: _law_mixture(law, table, laws, T, tokens))
            mixtures[law] = [out["mixture"][d] for d in tokens.domains]
            results[law] = [runs.run(law, s, proportions=np.asarray(mixtures[law])) for s in seeds]
            compute[law] = {"extra_train_tokens": len(proxy_names) * budget, "law": out,
                            "notes": f"law fitted on {len(proxy_names)} proxy runs ({', '.join(proxy_names)}, seed {s0})"}
    if "doremi" in cspec.methods:
        ref = results["natural"][0].feedback_losses
        proxy = runs.run("doremi_proxy", s0, method=as_doremi.build(D, reference_losses=ref), spec=run_spec)
        mixtures["doremi"] = doremi.DoReMi.averaged(_method_state(proxy))
        results["doremi"] = [runs.run("doremi", s, proportions=np.asarray(mixtures["doremi"])) for s in seeds]
        compute["doremi"] = {"extra_train_tokens": 2 * budget, "proxy": proxy.method_summary,
                             "notes": f"reference run (natural, seed {s0}) + proxy run"}
    if "aioli" in cspec.methods:
        results["aioli"] = [runs.run("aioli", s, method=aioli) for s in seeds]
        compute["aioli"] = _online_compute(results["aioli"], run_spec, online.feedback_tokens, D, 0)
    if "aioli_restricted" in cspec.methods:
        ref = runs.run("prior_reference", s0, proportions=named["natural"], spec=short).feedback_losses
        prior_proxy = runs.run("prior_doremi", s0, method=as_doremi.build(D, reference_losses=ref), spec=short)
        prior = doremi.DoReMi.averaged(_method_state(prior_proxy))
        restricted = dataclasses.replace(aioli, name="aioli_restricted", config=dataclasses.replace(
            aioli.config, prior=tuple(prior), prior_steps=short.train.steps))
        results["aioli_restricted"] = [runs.run("aioli_restricted", s, method=restricted) for s in seeds]
        compute["aioli_restricted"] = _online_compute(results["aioli_restricted"], run_spec, online.feedback_tokens,
                                                      D, 2 * short_budget)
        compute["aioli_restricted"]["prior"] = prior
        compute["aioli_restricted"]["notes"] = (f"prior from DoReMi on {short.train.steps}-step runs (reference + "
                                                f"proxy), trained {short.train.steps} steps, then Aioli")
    for name in ("aioli", "aioli_restricted"):
        if name in results:
            mixtures[name] = results[name][0].method_summary["final_proportions"]
    methods = [m for m in cspec.methods if m in results]
    inputs = compare_report.Inputs(
        domains=tokens.domains, methods=methods, seeds=list(seeds), steps=T, budget_tokens=budget,
        finals={m: [r.final_losses for r in results[m]] for m in methods},
        tables={m: [loss_table.read_csv(os.path.join(r.workdir, LOSSES_FILE)) for r in results[m]] for m in methods},
        mixtures=mixtures, compute=compute,
        trajectories={m: read_trajectory(results[m][0].workdir) for m in ("aioli", "aioli_restricted") if m in results}
        | ({"doremi_proxy": read_trajectory(os.path.join(workdir, "runs", "doremi_proxy", f"seed{s0}"))}
           if "doremi" in results else {}),
        aioli_rounds={m: results[m][0].method_summary["rounds"] for m in ("aioli", "aioli_restricted")
                      if m in results},
        config=cfg)
    report = compare_report.write(workdir, inputs) if writer else compare_report.summarize(inputs)
    logging.info("comparison finished in %.1f s (this invocation); report %s", time.perf_counter() - start,
                 os.path.join(workdir, "report.md"))
    return report


def _method_state(result: RunResult) -> dict:
    """A DoReMi proxy's final state as `DoReMi.averaged` needs it (from the method summary)."""
    s = result.method_summary
    return {"sum_alpha": s["final_proportions"], "alpha": s["last_alpha"]}


def _online_compute(results: Sequence[RunResult], spec: RunSpec, feedback_tokens: int, D: int,
                    extra: int) -> dict:
    kinds = realized_steps([r for r in read_trajectory(results[0].workdir) if r["kind"] != "initial"])
    evals = sum(1 for r in read_trajectory(results[0].workdir) if r.get("feedback_losses") is not None)
    per_step = spec.train.batch_size * spec.train.seq_len
    return {"extra_train_tokens": extra, "probe_tokens": kinds["probe"] * per_step,
            "prior_tokens": kinds["prior"] * per_step, "feedback_evaluations": evals,
            "feedback_eval_tokens": evals * feedback_tokens * D, "notes": "probe steps are part of the budget"}


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
