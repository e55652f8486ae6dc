"""Every law on the same held-out protocols, scored alike; and the choice of a law by cross-validation.

Candidates are (law, options) pairs by name (`CANDIDATES`). Protocols, each producing held-out points
(run, eval domain, observed, predicted) from fits that never saw them:

* `last_step`: the last checkpoint of every (run, eval domain) is held out; laws without a step model fit
  at that step from the earlier checkpoints (dml: through step laws; regression laws cannot: skipped);
* `leave_one_out`: each mixture (run) in turn is held out; the rest fit; predict it at the target step;
* `kfold`: the runs, shuffled by `seed`, in k folds, each held out in turn;
* `split`: the runs matching `test_runs` (glob patterns, e.g. RegMix's `1M_test_*`) are held out once, the
  others fit.

Mixture protocols compare at one target step (default: the table's largest). `score` gives, over the
held-out points: R^2 of log loss per eval domain (mean over domains), mean relative error (%), and the
Spearman correlation of the aggregated loss (mean over eval domains, per held-out run): does the law rank
mixtures right, with percentile bootstrap intervals over held-out runs; and per eval domain R^2, Spearman
and relative error (RegMix's protocol scores each eval domain's ranking). A fold the law cannot fit (too
few mixtures, a zero own proportion) is skipped and its reason kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import fnmatch

import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.laws import fit as fit_lib
from bimix_jax.laws import protocols
from bimix_jax.laws.base import canonical_law_name, get_law
from bimix_jax.loss_table import LossTable

CANDIDATES: dict[str, tuple[str, dict]] = {
    "bimix": ("bimix", {}),
    "bimix_backtest": ("bimix", {"step_min": "auto"}),
    "dml": ("dml", {}),
    "dml_unbounded": ("dml", {"bounded": False}),
    "dml_ridge_cv": ("dml", {"ridge": "cv"}),
    "linear": ("linear", {}),
    "loglinear": ("loglinear", {}),
    "kernel": ("kernel", {}),
    "lightgbm": ("lightgbm", {}),
}
PROTOCOLS = ("last_step", "leave_one_out", "kfold", "split")


def candidate(name: str) -> tuple[str, dict]:
    name = canonical_law_name(name)
    if name not in CANDIDATES:
        raise InputError(f"unknown law candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    law, opts = CANDIDATES[name]
    return law, dict(opts)


def _predict(name: str, train: LossTable, test: LossTable, step: float | None) -> np.ndarray:
    """Fits candidate `name` on `train` and predicts `test` (NaN where the law cannot predict a row)."""
    law, opts = candidate(name)
    if not get_law(law).uses_step:
        opts["target_step"] = step
    domains = [e for e in test.eval_domains if e in train.eval_domains]
    fitted = fit_lib.fit_law(train.for_eval_domains(domains), law, **opts)
    pred = np.full(len(test), np.nan)
    model = fitted.model
    for e in domains:
        rows = np.flatnonzero((test.eval_domain == e) & model.predictable(test.p, e))
        if rows.size:
            sub = test.subset(rows)
            pred[rows] = protocols.predict_rows(fitted, sub)
    return pred


def _folds(table: LossTable, protocol: str, k: int, seed: int, test_runs: Sequence[str] | None = None
           ) -> list[tuple[str, ...]]:
    runs = list(table.runs)
    if protocol == "leave_one_out":
        return [(r,) for r in runs]
    if protocol == "split":
        held = tuple(r for r in runs if any(fnmatch.fnmatchcase(r, p) for p in (test_runs or ())))
        if not held or len(held) == len(runs):
            raise InputError(f"--test_runs={','.join(test_runs or ())} holds out {len(held)} of the {len(runs)} runs "
                             "of the split protocol; name some runs to hold out, not all")
        return [held]
    order = np.random.default_rng(seed).permutation(len(runs))
    k = min(k, len(runs))
    return [tuple(runs[i] for i in order[j::k]) for j in range(k)]


def heldout_points(table: LossTable, name: str, protocol: str, *, target_step: float | None = None, k: int = 5,
                   seed: int = 0, test_runs: Sequence[str] | None = None) -> dict[str, Any]:
    """Held-out points of candidate `name` under `protocol` (see module doc); one model size per table."""
    if table.has_model_size and len(table.model_sizes) > 1:
        raise InputError(f"loss table {table.source} has model sizes {', '.join(table.model_sizes)}; choose one")
    parts, skipped = [], []
    if protocol == "last_step":
        key = np.char.add(table.run.astype(str), np.char.add("\x00", table.eval_domain.astype(str)))
        _, inv = np.unique(key, return_inverse=True)
        last = np.full(inv.max() + 1, -np.inf)
        np.maximum.at(last, inv, table.step)
        held = table.step == last[inv]
        train = table.subset(~held)
        for s in np.unique(table.step[held]):
            parts.append((train, table.subset(held & (table.step == s)), float(s)))
    elif protocol in ("leave_one_out", "kfold", "split"):
        target = float(np.max(table.step)) if target_step is None else float(target_step)
        for fold in _folds(table, protocol, k, seed, test_runs):
            out = np.isin(table.run, fold)
            test = table.subset(out & np.isclose(table.step, target, rtol=1e-9))
            if len(test):
                parts.append((table.subset(~out), test, target))
    else:
        raise InputError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    cols: dict[str, list] = {"run": [], "step": [], "eval_domain": [], "observed": [], "predicted": []}
    for train, test, step in parts:
        try:
            pred = _predict(name, train, test, step)
        except InputError as e:
            skipped.append(str(e))
            continue
        ok = np.isfinite(pred)
        for key, v in (("run", test.run), ("step", test.step), ("eval_domain", test.eval_domain),
                       ("observed", test.loss), ("predicted", pred)):
            cols[key].extend(np.asarray(v)[ok].tolist())
    return {"candidate": name, "protocol": protocol, "folds": len(parts), "folds_skipped": len(skipped),
            "skip_reasons": sorted(set(skipped))[:5], **{k: np.asarray(v) for k, v in cols.items()}}


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for u in np.unique(v):  # Ties share their mean rank.
        m = v == u
        r[m] = r[m].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _r2_log(obs: np.ndarray, pred: np.ndarray) -> float | None:
    """R^2 of log loss; None when undefined (one point, no spread, or a prediction <= 0, as a linear law gives)."""
    if np.any(pred <= 0):
        return None
    with np.errstate(invalid="ignore"):
        return protocols.metrics(obs, pred)["r2_log"]


def _metrics(pts: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, float | None]:
    obs, pred, dom, run = (pts[k][idx] for k in ("observed", "predicted", "eval_domain", "run"))
    r2s = [_r2_log(obs[dom == e], pred[dom == e]) for e in np.unique(dom)]
    r2s = [v for v in r2s if v is not None]
    n_dom = len(np.unique(pts["eval_domain"]))
    agg_o, agg_p = [], []
    for r in np.unique(run):  # Aggregated loss of runs predicted on every eval domain.
        m = run == r
        if len(np.unique(dom[m])) == n_dom:
            agg_o.append(obs[m].mean())
            agg_p.append(pred[m].mean())
    return {"r2_log": float(np.mean(r2s)) if r2s else None,
            "mre_pct": float(100 * np.mean(np.abs(pred / obs - 1))) if obs.size else None,
            "spearman_agg": spearman(np.array(agg_o), np.array(agg_p))}


def score(pts: Mapping[str, np.ndarray], *, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Metrics over the held-out points, with 95% percentile bootstrap intervals over held-out runs."""
    n = len(pts["observed"])
    out: dict[str, Any] = {"n_points": int(n), "n_runs": int(len(np.unique(pts["run"])))}
    if n == 0:
        return {**out, **{k: None for k in ("r2_log", "mre_pct", "spearman_agg")}, "ci95": {}, "per_domain": {}}
    out.update(_metrics(pts, np.arange(n)))
    out["per_domain"] = {}
    for e in np.unique(pts["eval_domain"]):
        m = pts["eval_domain"] == e
        o, f = pts["observed"][m], pts["predicted"][m]
        out["per_domain"][str(e)] = {"n": int(m.sum()), "r2_log": _r2_log(o, f),
                                     "spearman": spearman(o, f), "mre_pct": float(100 * np.mean(np.abs(f / o - 1)))}
    runs = np.unique(pts["run"])
    rows_of = [np.flatnonzero(pts["run"] == r) for r in runs]
    rng = np.random.default_rng(seed)
    boots: dict[str, list] = {"r2_log": [], "mre_pct": [], "spearman_agg": []}
    for _ in range(n_boot if len(runs) > 1 else 0):
        idx = np.concatenate([rows_of[i] for i in rng.integers(0, len(runs), len(runs))])
        for k, v in _metrics(pts, idx).items():
            if v is not None:
                boots[k].append(v)
    out["ci95"] = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in boots.items()
                   if len(v) >= max(10, n_boot // 4)}
    return out


def compare(table: LossTable, names: Sequence[str], protocols_: Sequence[str] = ("last_step", "leave_one_out",
                                                                                  "kfold"), *,
            target_step: float | None = None, k: int = 5, seed: int = 0, n_boot: int = 200,
            test_runs: Sequence[str] | None = None) -> dict[str, Any]:
    """{protocol: {candidate: score + folds}} for every candidate on the same folds."""
    for n in names:
        candidate(n)
    out: dict[str, Any] = {}
    for p in protocols_:
        out[p] = {}
        for n in names:
            pts = heldout_points(table, n, p, target_step=target_step, k=k, seed=seed, test_runs=test_runs)
            out[p][n] = {**score(pts, n_boot=n_boot, seed=seed), "folds": pts["folds"],
                         "folds_skipped": pts["folds_skipped"], "skip_reasons": pts["skip_reasons"]}
    return out


def choose(table: LossTable, names: Sequence[str], *, protocol: str = "kfold", target_step: float | None = None,
           k: int = 5, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """The candidate with the best cross-validated R^2 of log loss (ties: lower relative error), and the scores.

    Only `table` is used: pass the fitting runs, never the runs a report calls held out.
    """
    scores = compare(table, names, (protocol,), target_step=target_step, k=k, seed=seed, n_boot=0)[protocol]
    usable = {n: s for n, s in scores.items() if s["r2_log"] is not None and s["folds_skipped"] == 0}
    if not usable:
        raise InputError(f"no law candidate among {', '.join(names)} could be cross-validated on these runs "
                         f"({protocol}); add runs or name the law")
    best = max(usable, key=lambda n: (usable[n]["r2_log"], -usable[n]["mre_pct"]))
    return best, scores


def markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One table: protocol x candidate, metrics with their 95% intervals."""

    def cell(s, k, fmt):
        v = s.get(k)
        if v is None:
            return "-"
        ci = s.get("ci95", {}).get(k)
        return f"{v:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")

    lines = ["| protocol | law | R² log loss | rel. error % | Spearman (aggregate) | points | folds (skipped) |",
             "|---|---|---|---|---|---|---|"]
    for p, per in results.items():
        for n, s in per.items():
            lines.append(f"| {p} | {n} | {cell(s, 'r2_log', '.3f')} | {cell(s, 'mre_pct', '.2f')} | "
                         f"{cell(s, 'spearman_agg', '.2f')} | {s['n_points']} | {s['folds']} ({s['folds_skipped']}) |")
    return "\n".join(lines)


def per_domain_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per eval domain Spearman / R^2 of log loss, one row per (protocol, candidate)."""
    domains = sorted({e for per in results.values() for s in per.values() for e in s.get("per_domain", {})})
    lines = ["| protocol | law | " + " | ".join(domains) + " |", "|" + "---|" * (2 + len(domains))]
    for p, per in results.items():
        for n, s in per.items():
            cells = []
            for e in domains:
                d = s.get("per_domain", {}).get(e)
                sp = "-" if not d or d["spearman"] is None else f"{d['spearman']:.3f}"
                r2 = "-" if not d or d["r2_log"] is None else f"{d['r2_log']:.3f}"
                cells.append(f"{sp} / {r2}")
            lines.append(f"| {p} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
