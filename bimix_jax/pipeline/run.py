"""The end-to-end BiMix job: `run_pipeline(config, workdir)` -> candidates, proxies, law, mixture, check, report.

1. `data/`: the corpus and its tokenizer (`bimix_jax.data.prepare`);
2. `stages/candidates.json`: uniform, the natural token shares and the SE, CE, JE, VNE entropy mixtures
   as candidates; identical candidates are trained once;
3. `runs/<candidate>/`: one proxy run per distinct candidate (`bimix_jax.train.many.train_runs`, vmapped
   with `pipeline.vmap`), all with the same seed, so they differ only in the mixture;
4. `stages/fit.json`, `fit.json`: BiMix fitted on the candidates' checkpoints together, from
   `pipeline.fit_min_step` on, with its held-out scores;
5. `stages/mixture.json`, `mixture.json`, `mixture_exports/`: the best mixture under the law and its
   bootstrap interval;
6. `runs/optimized/`: a run on that mixture;
7. `stages/confirm.json`: predicted vs observed for it (the confirmation run), and every run's observed average loss;
8. `report.md`, `report.json`, `plots/*.png` (`bimix_jax.pipeline.report`); `losses_candidates.csv`
   (the fit data), `losses.csv` (every run), `pipeline.json` (the config), `provenance.json` (code).

Resumable: rerun the same call after a kill at any moment. Runs resume from their checkpoints (finished
ones are not retrained, loss-table rows are neither lost nor duplicated); every other stage is stored
atomically with a fingerprint of its inputs and is not redone. A workdir holding another config's runs
is refused (`bimix_jax.pipeline.spec`). This is the only module that knows both training and laws.
Single host: every file is written by the calling process.
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
from bimix_jax.pipeline import provenance, report, stages
from bimix_jax.data import source
from bimix_jax.data.prepare import PreparedData, describe
from bimix_jax.data.source import open_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.laws.base import FittedLaw
from bimix_jax.mixture import export, proportions
from bimix_jax.pipeline.spec import (OPTIMIZED, RUN_FIELDS, PipelineSpec, check_workdir_config,
                                     read_history, write_workdir_config)
from bimix_jax.train.loop import CONFIG_FILE as RUN_CONFIG_FILE, LOSSES_FILE, train_run
from bimix_jax.train import hosts, inputs as run_inputs
from bimix_jax.train.many import train_runs
from bimix_jax.train.state import RunSpec

SECTIONS = ("data", "model", "optim", "train", "pipeline")
RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    workdir: str
    report: dict[str, Any]  # the content of report.json
    mixture: dict[str, float]  # the recommended mixture
    paths: dict[str, str]  # report_md, report_json, fit, mixture, losses, plots (folder)


def _config_dict(config: Mapping) -> dict[str, Any]:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(d) - set(SECTIONS))
    if unknown:
        raise InputError(f"config.{unknown[0]} is not a pipeline config field (sections: {', '.join(SECTIONS)}); "
                         "remove it, e.g. start from configs/pipeline_tiny.py")
    return atomic.to_jsonable(d)


def _make_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise InputError(f"cannot write to workdir {workdir} ({e.strerror or type(e).__name__}); check that its "
                         "parent is a writable directory with free space, or choose another --workdir") from e


def _export_json(path: str, obj: Any) -> None:
    """Writes `obj` unless the file already holds it (exports of stored stages are rewritten only if lost)."""
    obj = atomic.to_jsonable(obj)
    if os.path.exists(path):
        try:
            if atomic.read_json(path) == obj:
                return
        except InputError:
            pass
    atomic.write_json(path, obj)


def _candidates(prepared, spec: PipelineSpec, extras: list[tuple[str, np.ndarray]]) -> dict:
    rep, named = stages.corpus_mixtures(prepared, temperature=spec.entropy_temperature,
                                        sequence_length=spec.entropy_sequence_length, max_docs=spec.vne_max_docs)
    cands = stages.candidate_mixtures(prepared.domains, named, spec.candidate_names, extras)
    return {"entropy": rep, "candidates": cands}


def _read_table(run_dir: str) -> loss_table.LossTable:
    return loss_table.read_csv(os.path.join(run_dir, LOSSES_FILE))


def run_pipeline(config: Mapping, workdir: str) -> PipelineResult:
    """Runs (or resumes, or reloads) the whole job in `workdir`; see the module docstring."""
    start = time.perf_counter()
    cfg = _config_dict(config)
    run_spec = RunSpec.from_config(cfg)
    data_spec = DataSpec.from_config(cfg["data"])
    spec = PipelineSpec.from_config(cfg["pipeline"])
    cfg["pipeline"]["candidates"] = ",".join(spec.candidate_names)  # today's names (older ones still read)
    spec.check_fit_window(run_spec)
    workdir = os.path.abspath(workdir)
    _, changed = check_workdir_config(workdir, cfg)
    t = run_spec.train
    # Checks that need the corpus; a workdir this call created is removed again on bad input.
    with atomic.removed_on_input_error(workdir):
        _make_workdir(workdir)
        prepared = open_data(data_spec, workdir)
        tokens = prepared.run_data  # in memory, or a token store read on demand
        bounds = spec.check_domains(tokens.domains, tokens.token_counts("train"), t.batch_size * t.seq_len,
                                    run_spec)
        extras = [(n, proportions.resolve(text, tokens.domains, token_counts=tokens.token_counts("train"),
                                       field=f"pipeline.extra_candidates ({n})"))
                  for n, text in spec.extras]
        run_inputs.make_input(tokens, t)  # every domain is long enough for a training window
    code = provenance.code_version()
    if changed:
        logging.info("settings changed since the last invocation: %s; the stages that use them are redone",
                     ", ".join(changed))
    history = read_history(workdir) + [{"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed,
                                        "git_commit": code["git_commit"], "source_sha256": code["source_sha256"]}]
    writer = hosts.is_writer()  # multi-host: every process computes, process 0 alone writes
    if writer:
        write_workdir_config(workdir, cfg, history)
        atomic.write_json(os.path.join(workdir, "provenance.json"), code)
    store = provenance.StageStore(workdir, writer=writer)

    # Candidates and their proxy runs.
    fp_cand = provenance.fingerprint("candidates", tokens.fingerprint(), {k: cfg["pipeline"][k] for k in RUN_FIELDS},
                                     [(n, r) for n, r in extras])
    cand_out, _ = store.run("candidates", fp_cand, lambda: _candidates(prepared, spec, extras))
    for c in cand_out["candidates"]:
        if c["duplicate_of"]:
            logging.info("candidate %s has the same mixture as %s (to %g): trained once", c["name"], c["duplicate_of"],
                         stages.DUPLICATE_ATOL)
    unique = [c for c in cand_out["candidates"] if c["duplicate_of"] is None]
    if len(unique) < 2:
        raise InputError(f"pipeline.candidates gives {len(unique)} distinct mixture(s); BiMix needs at least 2 "
                         "(3 to score it by leaving one out): add candidates")
    names = [c["name"] for c in unique]
    # The first candidate again with other seeds: the seed-to-seed spread the comparison is judged against.
    noise = [f"{names[0]}-seed{t.seed + k}" for k in range(1, spec.noise_seeds + 1)]
    taken = sorted(set(noise) & {c["name"] for c in cand_out["candidates"]})
    if taken:
        raise InputError(f"pipeline.extra_candidates: the name {taken[0]!r} is taken by a seed-noise run; rename it")
    run_dirs = {n: os.path.join(workdir, RUNS_DIR, n) for n in [*names, *noise]}
    mixtures_KxD = np.stack([proportions.to_array(c["mixture"], tokens.domains) for c in unique]
                            + [proportions.to_array(unique[0]["mixture"], tokens.domains)] * len(noise))
    logging.info("training %d proxies (%s)%s", len(run_dirs), ", ".join(run_dirs), " vmapped" if spec.vmap else "")
    train_start = time.perf_counter()
    results = train_runs(run_spec, tokens, mixtures_KxD, list(run_dirs.values()), run_names=list(run_dirs),
                         seeds=[t.seed] * len(names) + [t.seed + k for k in range(1, len(noise) + 1)],
                         vmap=spec.vmap, extra_configs=[{**cfg, "pipeline_run": n} for n in run_dirs])
    proxies = {"realized_shares": {r.run_name: r.realized_shares for r in results},
               "usage": {r.run_name: r.usage for r in results},
               "model_size": results[0].model_size, "steps": t.steps, "tokens_per_run": results[0].tokens}
    run_files = [os.path.join(d, f) for d in run_dirs.values() for f in (RUN_CONFIG_FILE, LOSSES_FILE)]
    fp_prox = provenance.fingerprint("proxies", fp_cand, [provenance.sha256_file(f) for f in run_files])
    if store.load("proxies", fp_prox) is None:  # seconds of the invocation that finished them
        store.save("proxies", fp_prox, proxies, time.perf_counter() - train_start)
    noise_tables = {n: _read_table(run_dirs[n]) for n in noise}
    cand_tables = {n: _read_table(run_dirs[n]) for n in names}
    candidates_table = loss_table.concat(list(cand_tables.values()), source="losses_candidates.csv")
    candidates_csv = candidates_table.to_csv()
    if writer:
        atomic.write_text(os.path.join(workdir, "losses_candidates.csv"), candidates_csv)

    # The law, its held-out scores and the best mixture.
    options = stages.fit_options(spec.fit_n_starts, spec.fit_loss, spec.fit_huber_delta)
    fp_fit = provenance.fingerprint("fit", provenance.sha256_bytes(candidates_csv.encode()), options,
                                    spec.fit_min_step, spec.leave_one_out,
                                    *(() if spec.law == "bimix" else (spec.law, spec.resolved_target_step(run_spec))))
    fit_out, _ = store.run("fit", fp_fit, lambda: stages.fit_stage(
        candidates_table, min_step=spec.fit_min_step, options=options, leave_one_out=spec.leave_one_out,
        law=spec.law, target_step=float(spec.resolved_target_step(run_spec))))
    fitted = FittedLaw.from_json(fit_out["law"], source=store.path("fit"))
    if writer:
        _export_json(os.path.join(workdir, "fit.json"), fit_out["law"])
    target = spec.resolved_target_step(run_spec)
    weights = spec.domain_values("objective_weights")
    fp_mix = provenance.fingerprint("mixture", fp_fit, target, weights, bounds.to_json(), spec.bootstrap,
                                    spec.bootstrap_seed)
    mix_out, _ = store.run("mixture", fp_mix, lambda: stages.mixture_stage(
        fitted, stages.fit_table(candidates_table, spec.fit_min_step), step=float(target), weights=weights,
        bounds=bounds, n_boot=spec.bootstrap, seed=spec.bootstrap_seed))
    export_dir = os.path.join(workdir, "mixture_exports")
    if writer:
        _export_json(os.path.join(workdir, "mixture.json"), mix_out)
        if not all(os.path.exists(os.path.join(export_dir, f)) for f in ("weights.json", "megatron_blend.txt")):
            export.write_exports(export_dir, mix_out["export"])

    # The recommended mixture, trained and checked against the law's prediction.
    r_opt = proportions.to_array(mix_out["mixture"], tokens.domains)
    opt_dir = os.path.join(workdir, RUNS_DIR, OPTIMIZED)
    _check_optimized_dir(opt_dir, r_opt, tokens.domains, changed)
    opt_result = train_run(run_spec, tokens, r_opt, opt_dir, run_name=OPTIMIZED,
                           extra_config={**cfg, "pipeline_run": OPTIMIZED})
    proxies["realized_shares"][OPTIMIZED] = opt_result.realized_shares
    proxies["usage"][OPTIMIZED] = opt_result.usage
    # The recommended mixture with the noise seeds too: paired per-seed differences against the first candidate.
    rec_noise_tables = {}
    for k in range(1, spec.noise_seeds + 1):
        name = f"{OPTIMIZED}-seed{t.seed + k}"
        seed_spec = dataclasses.replace(run_spec, train=dataclasses.replace(t, seed=t.seed + k))
        train_run(seed_spec, tokens, r_opt, os.path.join(workdir, RUNS_DIR, name), run_name=name,
                  extra_config={**cfg, "pipeline_run": name})
        rec_noise_tables[name] = _read_table(os.path.join(workdir, RUNS_DIR, name))
    tables = {**cand_tables, OPTIMIZED: _read_table(opt_dir)}
    all_table = loss_table.concat([*tables.values(), *noise_tables.values(), *rec_noise_tables.values()],
                                  source="losses.csv")
    if writer:
        atomic.write_text(os.path.join(workdir, "losses.csv"), all_table.to_csv())
    fp_val = provenance.fingerprint("confirm", fp_mix, provenance.sha256_bytes(all_table.to_csv().encode()))
    val_out, _ = store.run("confirm", fp_val, lambda: stages.confirm_stage(
        fitted, tables, recommended=OPTIMIZED, last_step=float(t.steps), min_step=spec.fit_min_step,
        weights=mix_out["weights"], noise_tables=noise_tables, recommended_noise_tables=rec_noise_tables))

    # The report.
    fp_rep = provenance.fingerprint("report", fp_val, proxies, report.REPORT_VERSION)
    paths = report.paths(workdir)
    rec = store.load("report", fp_rep)
    if writer and (rec is None or not all(os.path.exists(p) for p in paths.values())):
        inputs = report.ReportInputs(
            config=cfg, spec=spec.to_dict(), data_table=_describe(prepared), candidates=cand_out,
            proxies=proxies, fit=fit_out, mixture=mix_out, confirmation=val_out, table=all_table, fitted=fitted,
            timing={name: _seconds(store, name) for name in ("candidates", "proxies", "fit", "mixture", "confirm")},
            provenance={"code": code, "invocations": history},
            files=_file_hashes(workdir, [*names, *noise, *rec_noise_tables]))
        rep_start = time.perf_counter()
        report.write(workdir, inputs)
        store.save("report", fp_rep, {"files": list(paths)}, time.perf_counter() - rep_start)
    hosts.barrier("pipeline report")
    rep = atomic.read_json(paths["report_json"], what="pipeline report")
    logging.info("pipeline finished in %.1f s (this invocation); report %s", time.perf_counter() - start,
                 paths["report_md"])
    return PipelineResult(workdir=workdir, report=rep, mixture=dict(mix_out["mixture"]), paths=paths)


def _describe(prepared) -> str:
    return describe(prepared.stats) if isinstance(prepared, PreparedData) else source.describe(prepared.stats)


def _seconds(store: provenance.StageStore, name: str) -> float | None:
    path = store.path(name)
    return atomic.read_json(path).get("seconds") if os.path.exists(path) else None


def _file_hashes(workdir: str, names: list[str]) -> dict[str, str | None]:
    files = ["data/tokenizer.model", "data/tokens.npz", "losses_candidates.csv", "losses.csv",
             "fit.json", "mixture.json"]
    files += [f"{RUNS_DIR}/{n}/{f}" for n in [*names, OPTIMIZED] for f in (RUN_CONFIG_FILE, LOSSES_FILE)]
    return {f: provenance.sha256_file(os.path.join(workdir, f)) for f in files}


def _check_optimized_dir(opt_dir: str, r_opt: np.ndarray, domains: tuple[str, ...], changed: list[str]) -> None:
    """Refuses a `runs/optimized` trained on another mixture (an earlier fit's recommendation)."""
    path = os.path.join(opt_dir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        return
    old = atomic.read_json(path, what="run config").get("proportions") or {}
    if [old.get(d) for d in domains] != r_opt.tolist():
        since = f" (settings changed since: {', '.join(changed)})" if changed else ""
        raise InputError(f"{opt_dir} holds a run of another recommended mixture{since}; delete {opt_dir} to "
                         "train the new one, or rerun with the earlier settings")
