"""The nested prediction of Data Mixing Laws (Ye et al. §4): step law -> size law -> mixing law.

From small models on short runs, predict a larger model at a later step for any mixture:

1. step law per small curve (model size, run, eval domain), L(s) = E + C s^-beta on the checkpoints in
   [`min_step`, `max_step`] (`steplaw_tied.py`; beta per curve or tied over curves, `step_tie`), evaluated at
   `target_step` (a run measured there within `max_step` keeps its loss). `min_step='auto'` picks the first
   fitted step by backtesting inside the fit data at the same extrapolation ratio;
2. size law per (mixture, eval domain) over the small sizes (`sizelaw.py`: `floor` E + B N^-alpha with E per
   eval domain, or `power` B N^-alpha; alpha tied over all curves or per eval domain), evaluated at the
   target size's N;
3. the mixing law (default: the bounded Data Mixing Law) fitted on those predicted points; it predicts the
   target size at the target step for any mixture.
Mixtures are matched across sizes by their proportions (rounded to 6 decimals). `nested_uncertainty.py`
bootstraps the whole chain over mixtures; `nested_backtest.py` scores variants on splits of a table.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError
from bimix_jax.laws import fit as fit_lib
from bimix_jax.laws import protocols, select, sizelaw, steplaw_tied
from bimix_jax.laws.base import FittedLaw


@dataclasses.dataclass(frozen=True)
class NestedOptions:
    """How the three laws are fitted (defaults chosen by backtesting; see docs/results.md#laws)."""

    min_step: float | str | None = "auto"  # first checkpoint the step laws use; 'auto': backtested; None: all
    max_step: float | None = None  # last checkpoint the step laws use (None: all)
    step_tie: str = "domain_size"  # beta per 'curve', or tied per 'domain_size' / 'domain'
    size_form: str = "power"  # 'power' B N^-alpha, or 'floor' E + B N^-alpha (Ye et al.)
    size_tie: str = "domain"  # size exponent per eval 'domain', or tied over 'all' curves
    tie_e: bool = True  # floor form: one E per eval domain
    law: str = "dml"  # mixing law fitted on the predicted points (a `select.CANDIDATES` name)

    def check(self) -> None:
        if self.step_tie not in steplaw_tied.TIES:
            raise InputError(f"step_tie={self.step_tie!r}: choose one of {', '.join(steplaw_tied.TIES)}")
        if self.size_form not in sizelaw.FORMS:
            raise InputError(f"size_law={self.size_form!r}: choose one of {', '.join(sizelaw.FORMS)}")
        select.candidate(self.law)
        if self.size_tie not in sizelaw.TIES:
            raise InputError(f"size_tie={self.size_tie!r}: choose one of {', '.join(sizelaw.TIES)}")
        if isinstance(self.min_step, str) and self.min_step != "auto":
            raise InputError(f"min_step={self.min_step!r} must be a step or 'auto'")
        for name in ("min_step", "max_step"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str) and not (np.isfinite(v) and v > 0):
                raise InputError(f"{name}={v!r} must be a step > 0")
        if (isinstance(self.min_step, (int, float)) and self.max_step is not None
                and self.min_step >= self.max_step):
            raise InputError(f"min_step={self.min_step:g} is not below max_step={self.max_step:g}; lower --min_step")


@dataclasses.dataclass(frozen=True)
class Curve:
    """One small run's losses on one eval domain, up to max_step."""

    size: str
    run: str
    key: str  # mixture key
    domain: str
    steps: np.ndarray
    losses: np.ndarray


def mixture_key(p_D: np.ndarray) -> str:
    return "-".join(f"{round(float(p), 6):g}" for p in p_D)


def select_runs(table: lt.LossTable, patterns: Sequence[str] | None) -> lt.LossTable:
    """Rows of the runs matching any of the glob `patterns` (None or empty: all)."""
    if not patterns:
        return table
    keep = [r for r in table.runs if any(fnmatch.fnmatchcase(r, p) for p in patterns)]
    if not keep:
        raise InputError(f"--runs={','.join(patterns)} matches no run of {table.source}; runs look like "
                         f"{', '.join(table.runs[:3])}")
    return table.subset(np.isin(table.run, keep), what="--runs selection")


def collect(table: lt.LossTable, small_sizes: Sequence[str], max_step: float | None
            ) -> tuple[list[Curve], dict[str, np.ndarray]]:
    """Curves of the small sizes up to max_step, and the proportions of every mixture key."""
    if not table.has_model_size:
        raise InputError(f"loss table {table.source} has no model_size column; the nested prediction needs sizes")
    missing = [s for s in small_sizes if s not in table.model_sizes]
    if missing:
        raise InputError(f"model size {missing[0]!r} is not in {table.source}; choose from "
                         f"{', '.join(table.model_sizes)}")
    if len(set(small_sizes)) < 2:
        raise InputError(f"--small_sizes={','.join(small_sizes)}: the size law needs at least two small model sizes "
                         "with a mixture in common; add one")
    curves, meta = [], {}
    for size in small_sizes:
        sub = table.for_model_size(size)
        if max_step is not None:
            sub = sub.subset(sub.step <= max_step, what=f"{size} rows at step <= {max_step:g}")
        mixes = sub.mixtures()
        for run in sub.runs:
            key = mixture_key(mixes[run])
            meta[key] = mixes[run]
            for e in sub.eval_domains:
                m = (sub.run == run) & (sub.eval_domain == e)
                if m.any():
                    o = np.argsort(sub.step[m])
                    curves.append(Curve(size, run, key, e, sub.step[m][o], sub.loss[m][o]))
    return curves, meta


def _ties(curves: Sequence[Curve], tie: str) -> np.ndarray:
    names = {"curve": lambda c: (c.size, c.run, c.domain), "domain_size": lambda c: (c.domain, c.size),
             "domain": lambda c: (c.domain,)}[tie]
    keys = [names(c) for c in curves]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([index[k] for k in keys])


def step_stage(curves: Sequence[Curve], target_step: float, opts: NestedOptions) -> dict[str, Any]:
    """Step laws of all curves; prediction at target_step per curve (observed where measured there)."""
    tie = _ties(curves, opts.step_tie)
    min_step, backtest = opts.min_step, None
    if min_step == "auto":
        last = min(float(c.steps[-1]) for c in curves)
        try:
            backtest = steplaw_tied.backtest_min_step([c.steps for c in curves], [c.losses for c in curves], tie,
                                                      ratio=target_step / last)
            min_step = backtest["min_step"]
        except InputError as e:  # Too few early checkpoints to choose: fit them all, and say so.
            backtest, min_step = {"skipped": str(e)}, None
    lo = 0.0 if min_step is None else float(min_step)
    keep = [c.steps >= lo for c in curves]
    names = [f"run {c.run!r} ({c.size}), eval domain {c.domain!r}" for c in curves]
    fit = steplaw_tied.fit([c.steps[k] for c, k in zip(curves, keep)], [c.losses[k] for c, k in zip(curves, keep)],
                           tie, names)
    pred = fit.predict(float(target_step))
    direct = np.zeros(len(curves), bool)
    for i, c in enumerate(curves):
        at = np.isclose(c.steps, target_step, rtol=1e-9)
        if at.any():
            pred[i], direct[i] = float(c.losses[at][0]), True
    return {"fit": fit, "pred": pred, "direct": direct, "min_step": lo, "backtest": backtest}


def size_stage(curves: Sequence[Curve], pred: np.ndarray, n_target: float, opts: NestedOptions,
               sizes: Mapping[str, float] | None) -> tuple[sizelaw.SizeLaw, np.ndarray]:
    """Size law over the step-law predictions; the prediction at n_target per (mixture, domain) curve."""
    points = [((c.key, c.domain), c.domain, sizelaw.n_params(c.size, sizes), float(y)) for c, y in zip(curves, pred)]
    law = sizelaw.fit_size_law(points, tie_e=opts.tie_e, form=opts.size_form, tie_alpha=opts.size_tie)
    return law, law.predict(n_target)


def predict_nested(table: lt.LossTable, *, small_sizes: Sequence[str], target_size: str, target_step: float,
                   options: NestedOptions = NestedOptions(), sizes: Mapping[str, float] | None = None,
                   runs: Sequence[str] | None = None) -> dict[str, Any]:
    """Fits the three nested laws; returns {'fitted': FittedLaw at (target_size, target_step), 'predicted':
    LossTable of the size-law points, 'curves', 'step', 'size', reports}."""
    options.check()
    if not (np.isfinite(target_step) and target_step > 0):
        raise InputError(f"target_step={target_step!r} must be a step > 0")
    curves, meta = collect(select_runs(table, runs), small_sizes, options.max_step)
    n_target = sizelaw.n_params(target_size, sizes)
    for size in small_sizes:
        sizelaw.n_params(size, sizes)
    step = step_stage(curves, float(target_step), options)
    size_law, size_pred = size_stage(curves, step["pred"], n_target, options, sizes)
    rows = [{"run": f"{target_size}_nested_{key}", "model_size": target_size, "step": float(target_step),
             **{f"p_{d}": float(p) for d, p in zip(table.domains, meta[key])}, "eval_domain": e, "loss": float(y)}
            for (key, e), y in zip(size_law.curves, size_pred)]
    predicted = lt.from_rows(rows, domains=table.domains, source="the nested predictions")
    n_mix = len({k for k, _ in size_law.curves})
    if n_mix < 2:
        raise InputError(f"the small runs hold {n_mix} mixture; a mixing law needs several (the Data Mixing Law "
                         f"at least {len(table.domains) + 1}); add runs on other mixtures")
    law, law_options = select.candidate(options.law)
    fitted = fit_lib.fit_law(predicted, law, target_step=float(target_step), **law_options)
    fit = step["fit"]
    return {
        "fitted": fitted, "predicted": predicted, "curves": curves, "step": step, "size": size_law,
        "size_pred": size_pred, "n_target": n_target, "mixtures": n_mix,
        "observed_at_target_step": int(step["direct"].sum()),
        "step_law": {"curves": len(curves), "min_step": step["min_step"], "tie": options.step_tie,
                     "min_step_backtest": step["backtest"], "beta_range": [float(fit.beta.min()), float(fit.beta.max())],
                     "beta_at_bound": int(fit.at_bound.sum()), "max_rms_rel": float(fit.rms_rel.max())},
        "size_law": {"form": size_law.form, "alpha": size_law.alpha, "tie_alpha": options.size_tie,
                     "rms_rel": size_law.rms_rel, "tie_e": options.tie_e, "n_target": n_target,
                     "curves": {f"{k}/{e}": {"E": float(E), "B": float(b), "predicted": float(y)}
                                for (k, e), E, b, y in zip(size_law.curves, size_law.E, size_law.B, size_pred)}},
    }


def observed_at(table: lt.LossTable, size: str, step: float) -> lt.LossTable | None:
    """Rows of `size` measured at `step`, or None."""
    if not table.has_model_size or size not in table.model_sizes:
        return None
    sub = table.for_model_size(size)
    at = np.isclose(sub.step, step, rtol=1e-9)
    return sub.subset(at) if at.any() else None


def point_rows(result: Mapping[str, Any], table: lt.LossTable, target_size: str, target_step: float
               ) -> list[dict[str, Any]]:
    """One row per prediction: stage 'step' (small run at the target step), 'size' (mixture at the target size)
    and 'mixing' (every observed target run); `observed` where the table has the point."""
    obs = {}
    for r, s, st, e, y in zip(table.run, table.model_size, table.step, table.eval_domain, table.loss):
        obs[(str(r), str(s), float(st), str(e))] = float(y)
    by_key = {}
    target = observed_at(table, target_size, target_step)
    if target is not None:
        mixes = target.mixtures()
        for r in target.runs:
            by_key.setdefault(mixture_key(mixes[r]), r)
    out = []
    for c, y, d in zip(result["curves"], result["step"]["pred"], result["step"]["direct"]):
        out.append({"stage": "step", "run": c.run, "model_size": c.size, "step": target_step, "eval_domain": c.domain,
                    "observed": obs.get((c.run, c.size, float(target_step), c.domain)), "predicted": float(y),
                    "source": "observed" if d else "step law"})
    for (key, e), y in zip(result["size"].curves, result["size_pred"]):
        run = by_key.get(key)
        out.append({"stage": "size", "run": run or f"{target_size}_nested_{key}", "model_size": target_size,
                    "step": target_step, "eval_domain": e, "predicted": float(y), "source": "size law",
                    "observed": obs.get((run, target_size, float(target_step), e)) if run else None})
    if target is not None:
        keep = np.isin(target.eval_domain, list(result["fitted"].eval_domains))
        if keep.any():
            sub = target.subset(keep)
            pred = protocols.predict_rows(result["fitted"], sub)
            for r, e, y, f in zip(sub.run, sub.eval_domain, sub.loss, pred):
                out.append({"stage": "mixing", "run": str(r), "model_size": target_size, "step": target_step,
                            "eval_domain": str(e), "observed": float(y), "predicted": float(f),
                            "source": result["fitted"].law})
    return out


def score_against(fitted: FittedLaw, observed: lt.LossTable, weights: Mapping[str, float] | None = None
                  ) -> dict[str, Any]:
    """Prediction error of `fitted` on the observed rows (same step): per domain, mean and worst over domains,
    the worst single point, and the weighted mean loss per run (bias, Spearman of the ranking)."""
    pred = protocols.predict_rows(fitted, observed)
    per = {e: protocols.metrics(observed.loss[observed.eval_domain == e], pred[observed.eval_domain == e])
           for e in observed.eval_domains}
    out = {"per_domain": per, **protocols.summarise(per, observed.loss, pred), "predicted": pred}
    re = np.abs(pred / observed.loss - 1)
    k = int(np.argmax(re))
    out["worst_point"] = {"run": str(observed.run[k]), "eval_domain": str(observed.eval_domain[k]),
                          "observed": float(observed.loss[k]), "predicted": float(pred[k]),
                          "re_pct": float(100 * re[k])}
    out["aggregate"] = aggregate_error(observed, pred, weights)
    return out


def aggregate_error(observed: lt.LossTable, pred: np.ndarray, weights: Mapping[str, float] | None = None
                    ) -> dict[str, Any]:
    """Weighted mean loss per run (runs with every weighted domain): mean abs error, bias (nats), Spearman."""
    domains = list(observed.eval_domains)
    w = {e: float((weights or {}).get(e, 0.0 if weights else 1.0)) for e in domains}
    total = sum(w.values())
    if total <= 0:
        raise InputError("the eval-domain weights are all zero on the observed domains; give some a positive weight")
    agg_o, agg_p = [], []
    for r in observed.runs:
        m = observed.run == r
        have = dict(zip(observed.eval_domain[m], zip(observed.loss[m], pred[m])))
        if all(e in have for e in domains if w[e] > 0):
            agg_o.append(sum(w[e] * have[e][0] for e in domains if w[e] > 0) / total)
            agg_p.append(sum(w[e] * have[e][1] for e in domains if w[e] > 0) / total)
    o, p = np.array(agg_o), np.array(agg_p)
    if not o.size:
        return {"runs": 0}
    return {"runs": int(o.size), "mae_nats": float(np.mean(np.abs(p - o))), "bias_nats": float(np.mean(p - o)),
            "mre_pct": float(100 * np.mean(np.abs(p / o - 1))), "spearman": select.spearman(o, p),
            "weights": {e: v / total for e, v in w.items()}}


def nearest_observed(observed: lt.LossTable, r_D: np.ndarray, weights: Mapping[str, float]) -> dict[str, Any]:
    """The observed run closest (L1) to the mixture r_D, its weighted mean loss and its rank among the observed
    runs (1: lowest), and the best observed run: how the recommended mixture would have fared among them."""
    total = {}
    for r in observed.runs:
        m = observed.run == r
        have = dict(zip(observed.eval_domain[m].tolist(), observed.loss[m].tolist()))
        if all(e in have for e, w in weights.items() if w > 0):
            total[r] = sum(w * have[e] for e, w in weights.items() if w > 0) / sum(weights.values())
    if not total:
        return {}
    mixes = observed.mixtures()
    near = min(total, key=lambda r: float(np.abs(mixes[r] - r_D).sum()))
    best = min(total, key=total.get)
    return {"nearest_run": near, "nearest_l1": float(np.abs(mixes[near] - r_D).sum()),
            "nearest_weighted_loss": total[near], "nearest_rank": 1 + sum(v < total[near] for v in total.values()),
            "runs": len(total), "best_run": best, "best_weighted_loss": total[best]}
