"""Held-out evaluation of a law on a loss table, as in the BiMix paper.

Protocols (one model size at a time):
* `last_step`: for each (run, eval domain), fit on every checkpoint but the last, predict the last;
  relative error per domain (mean and worst). For a law fitted at one step (dml) the law is fitted at the
  held-out step, from the step-law extrapolations of the earlier checkpoints.
* `mixtures`: hold out whole runs (mixtures), fit on the rest, predict every held-out point: R^2 of log
  loss, Pearson r, mean/max relative error and RMSE per domain (and mean/worst over domains). Default
  held-out runs: those whose `zlib.crc32` of the '-'-joined proportions (each rounded to 6 decimals,
  in column order, written as Python `str` of a float) is divisible by 4; or an explicit list.

An eval domain the fit rows cannot identify (e.g. BiMix with a single distinct own proportion among
the fitted runs) or that has no predictable held-out row is skipped with its reason, and held-out rows
BiMix cannot predict (own proportion 0) are excluded and counted; the metrics cover the rest.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws import fit as fit_lib
from bimix_jax.laws.base import FittedLaw, get_law
from bimix_jax.loss_table import LossTable

PROTOCOLS = ("last_step", "mixtures")
_ERRORS = ("mre_pct", "max_re_pct", "rmse")  # lower is better; the others (r2_log, pearson) higher


def crc_key(proportions: Sequence[float]) -> int:
    """zlib.crc32 of the '-'-joined proportions, each `str(round(p, 6))`, in column order."""
    return zlib.crc32("-".join(str(round(float(p), 6)) for p in proportions).encode())


def crc_holdout_runs(table: LossTable) -> tuple[str, ...]:
    """Runs held out by the default rule: crc_key(proportions) % 4 == 0."""
    return tuple(r for r, p in table.mixtures().items() if crc_key(p) % 4 == 0)


def metrics(observed: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """n, mean/max relative error (%), R^2 of log loss, Pearson r of loss, RMSE (nats)."""
    y, f = np.asarray(observed, float), np.asarray(predicted, float)
    re = np.abs(f - y) / y
    ly, lf = np.log(y), np.log(f)
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum((ly - lf) ** 2)) / ss_tot if y.size > 1 and ss_tot > 0 else None
    pearson = float(np.corrcoef(y, f)[0, 1]) if y.size > 1 and np.std(y) > 0 and np.std(f) > 0 else None
    return {"n": int(y.size), "mre_pct": float(100 * re.mean()), "max_re_pct": float(100 * re.max()),
            "r2_log": r2, "pearson": pearson, "rmse": float(np.sqrt(np.mean((f - y) ** 2)))}


def predict_rows(fitted: FittedLaw, table: LossTable) -> np.ndarray:
    """The law's prediction for every row of `table` (its run's mixture, step and eval domain)."""
    col = {e: i for i, e in enumerate(fitted.eval_domains)}
    missing = sorted(set(table.eval_domain.tolist()) - set(col))
    if missing:
        raise InputError(f"the fitted {fitted.law} law has no eval domain {missing[0]!r}; refit including it")
    if table.domains != fitted.train_domains:
        raise InputError(f"loss table {table.source} has domains {', '.join(table.domains)}, the law was fitted on "
                         f"{', '.join(fitted.train_domains)}; use a table over the same domains")
    fitted.check_step(table.step)
    model = fitted.model
    idx = np.array([col[e] for e in table.eval_domain])
    for e, i in col.items():
        rows = idx == i
        if rows.any() and not model.predictable(table.p[rows], e).all():
            raise InputError(f"the {fitted.law} law cannot predict eval domain {e!r} for some rows of {table.source} "
                             f"(e.g. p_{e} = 0 for bimix); exclude those rows")
    with jax.enable_x64(True):
        params = {k: np.asarray(v, np.float64) for k, v in fitted.params.items()}
        out_NxE = np.asarray(model.predict(params, table.p, table.step[:, None]))
    return out_NxE[np.arange(len(table)), idx]


def summarise(per_domain: dict[str, dict], obs: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Mean and worst over domains of each metric (worst: max error, min R^2 / Pearson), and pooled metrics."""
    def agg(key: str, worst: bool):
        vals = [m[key] for m in per_domain.values() if m[key] is not None]
        if not vals:
            return None
        if not worst:
            return float(np.mean(vals))
        return float(max(vals) if key in _ERRORS else min(vals))

    keys = ("mre_pct", "max_re_pct", "r2_log", "pearson", "rmse")
    return {"mean": {k: agg(k, False) for k in keys}, "worst": {k: agg(k, True) for k in keys},
            "pooled": metrics(obs, pred) if obs.size else None}


def _usable(law: str, train: LossTable, test: LossTable, fit_options: dict) -> tuple[list[str], dict, np.ndarray]:
    """Eval domains the train rows identify and test rows can check; reasons for the others; test row mask."""
    keep, skipped = [], {}
    test_ok = np.ones(len(test), dtype=bool)
    for e in test.eval_domains:
        rows = test.eval_domain == e
        try:
            law_obj = get_law(law)(test.domains, [e])
        except InputError as err:
            skipped[e] = str(err)
            continue
        test_ok[rows] = law_obj.predictable(test.p[rows], e)
        if not test_ok[rows].any():
            skipped[e] = "no held-out row the law can predict"
        elif e not in train.eval_domains:
            skipped[e] = "no fitting rows"
        else:
            keep.append(e)
    try:  # One problem for all candidate domains; per-domain problems only if the law rejects it as a whole.
        problem = fit_lib.prepare(train, law, eval_domains=keep, check=False, **dict(fit_options)).problem
        reasons = [problem.check_rows(g, np.ones(len(problem.logy[g]), dtype=bool)) for g in range(len(keep))]
    except InputError:
        reasons = []
        for e in keep:
            try:
                fit_lib.prepare(train, law, eval_domains=[e], **dict(fit_options))
                reasons.append(None)
            except InputError as err:
                reasons.append(str(err))
    skipped.update({e: r for e, r in zip(keep, reasons) if r})
    keep = [e for e, r in zip(keep, reasons) if not r]
    if not keep:
        raise InputError(f"no eval domain can be evaluated ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return keep, skipped, test_ok & np.isin(test.eval_domain, keep)


def _fit_and_score(law: str, train: LossTable, test: LossTable, fit_options: dict, **extra) -> dict[str, Any]:
    keep, skipped, test_ok = _usable(law, train, test, {**fit_options, **extra})
    excluded = int(np.sum(~test_ok & ~np.isin(test.eval_domain, list(skipped))))
    test = test.subset(test_ok, what="held-out selection")
    fitted = fit_lib.fit_law(train, law, eval_domains=keep, **fit_options, **extra)
    return {"fitted": fitted, "test": test, "pred": predict_rows(fitted, test), "skipped": skipped,
            "excluded_rows_zero_proportion": excluded}


def _report(protocol: str, law: str, table: LossTable, parts: list[dict], fit_runs, heldout_runs) -> dict[str, Any]:
    test_run = np.concatenate([p["test"].run for p in parts])
    test_step = np.concatenate([p["test"].step for p in parts])
    test_dom = np.concatenate([p["test"].eval_domain for p in parts])
    obs = np.concatenate([p["test"].loss for p in parts])
    pred = np.concatenate([p["pred"] for p in parts])
    domains = [e for e in table.eval_domains if np.any(test_dom == e)]
    per_domain = {e: metrics(obs[test_dom == e], pred[test_dom == e]) for e in domains}
    skipped = {}
    for p in parts:
        skipped.update({e: r for e, r in p["skipped"].items() if e not in per_domain})
    out = {"protocol": protocol, "law": law, "model_size": table.model_sizes[0] if table.has_model_size else None,
           "fit_runs": list(fit_runs), "heldout_runs": list(heldout_runs), "per_domain": per_domain,
           **summarise(per_domain, obs, pred), "skipped": skipped,
           "excluded_rows_zero_proportion": int(sum(p["excluded_rows_zero_proportion"] for p in parts)),
           "fits": [p["fitted"].to_json() for p in parts],
           "points": {"run": test_run.tolist(), "step": test_step.tolist(), "eval_domain": test_dom.tolist(),
                      "observed": obs.tolist(), "predicted": pred.tolist()}}
    return out


def last_step(table: LossTable, law: str, *, model_size: str | None = None, **fit_options: Any) -> dict[str, Any]:
    """Fits on all but the last checkpoint of each (run, eval domain); predicts the last (see module doc)."""
    table = table.for_model_size(model_size)
    key = np.char.add(np.char.add(table.run.astype(str), "\x00"), table.eval_domain.astype(str))
    _, inverse = np.unique(key, return_inverse=True)
    last = np.full(inverse.max() + 1, -np.inf)
    np.maximum.at(last, inverse, table.step)
    held = table.step == last[inverse]
    if held.all():
        raise InputError(f"loss table {table.source}: every run has a single checkpoint; last_step needs at least two")
    train = table.subset(~held, what="fitting selection")
    parts = []
    if get_law(law).uses_step:
        parts.append(_fit_and_score(law, train, table.subset(held), fit_options))
    else:  # One fit per held-out step, at that step (the protocol sets the law's target step).
        fit_options.pop("target_step", None)
        for s in np.unique(table.step[held]):
            parts.append(_fit_and_score(law, train, table.subset(held & (table.step == s)), fit_options,
                                        target_step=float(s)))
    return _report("last_step", law, table, parts, table.runs, table.runs)


def check_runs(table: LossTable, runs: Sequence[str]) -> tuple[str, ...]:
    """The distinct run ids of `runs`; InputError naming the first one `table` lacks."""
    runs = tuple(dict.fromkeys(str(r) for r in runs))
    unknown = [r for r in runs if r not in table.runs]
    if unknown:
        size = f" for model size {table.model_sizes[0]}" if table.has_model_size else ""
        raise InputError(f"--holdout_runs: run {unknown[0]!r} is not in loss table {table.source}{size}; "
                         f"choose from {', '.join(table.runs)}")
    return runs


def mixtures(table: LossTable, law: str, *, holdout_runs: Sequence[str] | None = None, model_size: str | None = None,
             **fit_options: Any) -> dict[str, Any]:
    """Fits on the runs not held out; predicts every held-out point (see module doc)."""
    table = table.for_model_size(model_size)
    if holdout_runs is None or len(holdout_runs) == 0:
        held_runs = crc_holdout_runs(table)
        rule = "crc32 % 4 == 0"
    else:
        held_runs = check_runs(table, holdout_runs)
        rule = "explicit"
    fit_runs = tuple(r for r in table.runs if r not in held_runs)
    if not held_runs or not fit_runs:
        what = "no run" if not held_runs else "every run"
        raise InputError(f"the {rule} holdout rule holds out {what} of loss table {table.source}; "
                         "name the held-out runs with --holdout_runs")
    held = np.isin(table.run, held_runs)
    train = table.subset(~held, what="fitting selection")
    test = table.subset(held, what="held-out selection")
    extra = {}
    if not get_law(law).uses_step:  # The law holds at one step: compare there.
        target = float(fit_options.pop("target_step", None) or np.max(train.step))
        at = np.isclose(test.step, target, rtol=1e-9)
        if not at.any():
            raise InputError(f"no held-out run was measured at step {target:g}; choose --target_step among the "
                             "held-out runs' steps")
        test = test.subset(at)
        extra["target_step"] = target
    report = _report("mixtures", law, table, [_fit_and_score(law, train, test, fit_options, **extra)], fit_runs,
                     held_runs)
    report["holdout_rule"] = rule
    return report


def attach(fitted: FittedLaw, report: dict[str, Any] | None) -> FittedLaw:
    """`fitted` with the held-out report in its summary ('holdout', and per domain 'domains'[e]['holdout'])."""
    if not report:
        return fitted
    summary = dict(fitted.summary)
    held = {k: v for k, v in report.items() if k != "fits"}
    held["fit_params"] = [{"eval_domains": f["eval_domains"], "target_step": f["target_step"], "params": f["params"]}
                          for f in report["fits"]]
    summary["holdout"] = held
    domains = {e: dict(d) for e, d in (summary.get("domains") or {}).items()}
    for e, m in report["per_domain"].items():
        if e in domains:
            domains[e]["holdout"] = m
    summary["domains"] = domains
    return dataclasses.replace(fitted, summary=summary)


def evaluate(table: LossTable, law: str, protocol: str, **options: Any) -> dict[str, Any]:
    """Runs protocol 'last_step' or 'mixtures' (options: model_size, holdout_runs, fit options)."""
    if protocol == "last_step":
        if options.pop("holdout_runs", None):
            raise InputError("--holdout_runs applies to --holdout=mixtures only; drop it or change the protocol")
        return last_step(table, law, **options)
    if protocol == "mixtures":
        return mixtures(table, law, **options)
    raise InputError(f"unknown holdout protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
