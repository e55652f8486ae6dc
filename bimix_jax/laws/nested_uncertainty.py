"""Per-point intervals of the nested prediction: a bootstrap over mixtures through all three laws.

Each replicate draws the fitting mixtures with replacement (a mixture brings all its small runs: every size
and eval domain), refits the step laws (tied exponents change with the draw), the size law and the mixing
law, and predicts every point of `nested.point_rows` (a step- or size-stage point only in replicates that
drew its mixture) and, optionally, extra mixtures at the target (e.g. the optimum). The first fitted step
stays the one the full fit chose. Draws that leave fewer distinct mixtures than the mixing law needs are
redrawn and counted. What it does not include: the noise of each curve's own checkpoints around its step law.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError
from bimix_jax.laws import fit as fit_lib
from bimix_jax.laws import nested, select
from bimix_jax.laws.base import FittedLaw

PERCENTILES = (5.0, 95.0)
MAX_REDRAWS = 1000


@dataclasses.dataclass(frozen=True)
class Replicate:
    """One bootstrap fit: per original curve / size point its prediction (NaN: mixture not drawn), and the law."""

    step_C: np.ndarray
    size_P: np.ndarray
    fitted: FittedLaw


def _replicate(result: Mapping[str, Any], keys: Sequence[str], draw: np.ndarray, meta: Mapping[str, np.ndarray],
               domains: Sequence[str], target_size: str, target_step: float, opts: nested.NestedOptions,
               sizes: Mapping[str, float] | None) -> Replicate:
    curves = result["curves"]
    first = {}
    renamed, origin = [], []
    for j, k in enumerate(draw):
        key = keys[k]
        for i, c in enumerate(curves):
            if c.key == key:
                renamed.append(dataclasses.replace(c, run=f"{c.run}#{j}", key=f"{key}#{j}"))
                origin.append(i)
                first.setdefault(i, len(renamed) - 1)
    fixed = dataclasses.replace(opts, min_step=result["step"]["min_step"] or None)
    step = nested.step_stage(renamed, target_step, fixed)
    size_law, size_pred = nested.size_stage(renamed, step["pred"], result["n_target"], fixed, sizes)
    rows = [{"run": f"boot_{key}", "model_size": target_size, "step": float(target_step),
             **{f"p_{d}": float(p) for d, p in zip(domains, meta[key.split("#")[0]])}, "eval_domain": e,
             "loss": float(y)} for (key, e), y in zip(size_law.curves, size_pred)]
    law, law_options = select.candidate(opts.law)
    fitted = fit_lib.fit_law(lt.from_rows(rows, domains=domains, source="a bootstrap replicate"), law,
                             target_step=float(target_step), **law_options)
    step_C = np.full(len(curves), np.nan)
    for i, j in first.items():
        step_C[i] = step["pred"][j]
    pred_of = {}
    for (key, e), y in zip(size_law.curves, size_pred):
        pred_of.setdefault((key.split("#")[0], e), float(y))
    size_P = np.array([pred_of.get(ke, np.nan) for ke in result["size"].curves])
    return Replicate(step_C, size_P, fitted)


@contextlib.contextmanager
def _quiet_maxiter() -> Iterator[None]:
    """Drops the fitter's per-fit 'stopped at maxiter' warnings while replicates run (they are counted)."""

    def keep(record: std_logging.LogRecord) -> bool:
        return "before converging" not in record.getMessage()

    logger = logging.get_absl_logger()
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def bootstrap(table: lt.LossTable, result: Mapping[str, Any], *, target_size: str, target_step: float,
              options: nested.NestedOptions, n_boot: int, seed: int = 0,
              sizes: Mapping[str, float] | None = None) -> dict[str, Any]:
    """`n_boot` replicates of `result` (from `nested.predict_nested` with the same arguments)."""
    if not (isinstance(n_boot, (int, np.integer)) and 2 <= n_boot <= 10_000):
        raise InputError(f"n_boot={n_boot!r} must be an integer in [2, 10000]; pick e.g. 100")
    keys = list(dict.fromkeys(c.key for c in result["curves"]))
    meta = {nested.mixture_key(p): p for p in table.mixtures().values()}
    need = len(table.domains) + 1 if select.candidate(options.law)[0] == "dml" else 3
    if len(keys) < need:
        raise InputError(f"{len(keys)} fitting mixtures: too few to bootstrap the {options.law} law (it needs "
                         f"{need} distinct ones in every draw); add mixtures or drop --n_boot")
    rng = np.random.default_rng(seed)
    reps, redrawn = [], 0
    with _quiet_maxiter():
        while len(reps) < n_boot:
            draw = rng.integers(0, len(keys), len(keys))
            if redrawn > MAX_REDRAWS * n_boot:
                raise InputError("cannot draw identifiable bootstrap resamples of the mixtures; add mixtures")
            if len(np.unique(draw)) < need:
                redrawn += 1
                continue
            try:
                reps.append(_replicate(result, keys, draw, meta, table.domains, target_size, target_step, options,
                                       sizes))
            except InputError:
                redrawn += 1
    unconverged = sum(d.get("convergence", {}).get("status") == "maxiter"
                      for r in reps for d in (r.fitted.summary.get("domains") or {}).values())
    return {"replicates": reps, "n_boot": n_boot, "seed": seed, "redrawn": redrawn, "unit": "mixture",
            "mixing_fits_at_maxiter": int(unconverged)}


def interval(values_B: np.ndarray) -> list[float] | None:
    v = np.asarray(values_B, float)
    v = v[np.isfinite(v)]
    return np.percentile(v, PERCENTILES).tolist() if v.size >= 2 else None


def predict_mixtures(boot: Mapping[str, Any], r_MxD: np.ndarray, target_step: float) -> np.ndarray:
    """Predicted loss [B, M, E] of mixtures r_MxD under every replicate's mixing law."""
    from bimix_jax.mixture import optimize

    return np.stack([optimize.predict_losses(rep.fitted, target_step, np.asarray(r_MxD, float))
                     for rep in boot["replicates"]])


def attach_intervals(points: list[dict[str, Any]], result: Mapping[str, Any], boot: Mapping[str, Any],
                     table: lt.LossTable, target_step: float) -> None:
    """Adds 'lo'/'hi' (the 5-95% bootstrap interval) to the rows of `nested.point_rows`, in place."""
    reps = boot["replicates"]
    step_BxC = np.stack([r.step_C for r in reps])
    size_BxP = np.stack([r.size_P for r in reps])
    mixes = table.mixtures()
    runs = list(dict.fromkeys(p["run"] for p in points if p["stage"] == "mixing"))
    if runs:
        pred = predict_mixtures(boot, np.stack([mixes[r] for r in runs]), target_step)
        col = {e: i for i, e in enumerate(result["fitted"].eval_domains)}
        at = {r: i for i, r in enumerate(runs)}
    counter = {"step": 0, "size": 0}
    for p in points:
        if p["stage"] == "mixing":
            iv = interval(pred[:, at[p["run"]], col[p["eval_domain"]]])
        else:
            i = counter[p["stage"]]
            counter[p["stage"]] += 1
            iv = interval((step_BxC if p["stage"] == "step" else size_BxP)[:, i])
        p["lo"], p["hi"] = iv if iv else (None, None)
