"""Backtests of the nested prediction: every variant on splits of a table whose targets were measured.

A split is written `SMALL+SIZES<=MAX_STEP->TARGET_SIZE@TARGET_STEP`, e.g. `70M+160M<=15000->160M@30000`: fit the
step laws of the small sizes on checkpoints up to MAX_STEP and predict TARGET_SIZE at TARGET_STEP (the target
size may be one of the small sizes: then the split tests the step extrapolation alone). A variant is a named
`NestedOptions`. Two scores per (split, variant), on the target rows the table holds:

* `level`: the size-stage points (a fitting mixture brought to the target) against the same mixture observed at
  the target: mean relative error and bias (%), i.e. the step x size extrapolation alone;
* `full`: the mixing law's prediction of every observed target run: mean relative error, the worst single
  point, mean R^2 of log loss, and the Spearman correlation of the mean loss over eval domains.
A variant that cannot be fitted on a split gets its reason instead of scores.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError
from bimix_jax.laws import nested
from bimix_jax.laws.nested import NestedOptions

_SPLIT = re.compile(r"^\s*([\w.]+(?:\+[\w.]+)*)\s*<=\s*([0-9.eE+]+)\s*->\s*([\w.]+)\s*@\s*([0-9.eE+]+)\s*$")

# The variants compared in docs/results.md: the step stage first (first step x exponent tie, with the paper's size
# and mixing laws), then the size and mixing laws on the chosen step stage. The default (`NestedOptions()`) was
# chosen among them on the splits named there, never on the reported target.
STEP_VARIANTS: dict[str, NestedOptions] = {
    f"steps {m}, beta per {t}": NestedOptions(min_step=v, step_tie=t, size_form="floor", size_tie="all")
    for m, v in (("all", None), (">= 10k", 10000.0), ("auto", "auto")) for t in ("curve", "domain_size", "domain")
}
SIZE_VARIANTS: dict[str, NestedOptions] = {
    f"{f} size law (alpha {t}), {law}": NestedOptions(size_form=f, size_tie=t, law=law)
    for f, t in (("floor", "all"), ("floor", "domain"), ("power", "domain"))
    for law in ("dml", "dml_unbounded", "loglinear")
}
PREVIOUS = NestedOptions(min_step=None, step_tie="curve", size_form="floor", size_tie="all")  # before the backtests
VARIANTS = {"previous default": PREVIOUS, **STEP_VARIANTS, **SIZE_VARIANTS}


@dataclasses.dataclass(frozen=True)
class Split:
    small_sizes: tuple[str, ...]
    max_step: float
    target_size: str
    target_step: float

    @property
    def name(self) -> str:
        return f"{'+'.join(self.small_sizes)}<={self.max_step:g}->{self.target_size}@{self.target_step:g}"

    @classmethod
    def parse(cls, text: str) -> Split:
        m = _SPLIT.match(text)
        if not m:
            raise InputError(f"split {text!r} is not SIZES<=MAX_STEP->SIZE@STEP; write e.g. 70M+160M<=15000->160M@30000")
        return cls(tuple(m.group(1).split("+")), float(m.group(2)), m.group(3), float(m.group(4)))


def _level(result: Mapping[str, Any], target: lt.LossTable) -> dict[str, Any]:
    mixes = target.mixtures()
    run_of = {nested.mixture_key(p): r for r, p in mixes.items()}
    obs = {(str(r), str(e)): float(y) for r, e, y in zip(target.run, target.eval_domain, target.loss)}
    err = []
    for (key, e), y in zip(result["size"].curves, result["size_pred"]):
        o = obs.get((run_of.get(key), e))
        if o is not None:
            err.append(y / o - 1)
    if not err:
        return {"points": 0}
    err = 100 * np.array(err)
    return {"points": int(err.size), "mre_pct": float(np.mean(np.abs(err))), "bias_pct": float(np.mean(err)),
            "worst_pct": float(np.max(np.abs(err)))}


def score(table: lt.LossTable, split: Split, options: NestedOptions, sizes: Mapping[str, float] | None = None
          ) -> dict[str, Any]:
    """Fits `options` on the split's small runs and scores it on the target rows (see the module doc)."""
    target = nested.observed_at(table, split.target_size, split.target_step)
    if target is None:
        raise InputError(f"split {split.name}: the table has no {split.target_size} rows at step "
                         f"{split.target_step:g} to score against")
    try:
        res = nested.predict_nested(table, small_sizes=split.small_sizes, target_size=split.target_size,
                                    target_step=split.target_step,
                                    options=dataclasses.replace(options, max_step=split.max_step), sizes=sizes)
    except InputError as e:
        return {"error": str(e)}
    full = nested.score_against(res["fitted"], target.for_eval_domains(
        [e for e in target.eval_domains if e in res["fitted"].eval_domains]))
    agg = full["aggregate"]
    return {"level": _level(res, target),
            "full": {"runs": len(target.runs), "mre_pct": full["mean"]["mre_pct"],
                     "worst_point_pct": full["worst_point"]["re_pct"], "r2_log": full["mean"]["r2_log"],
                     "spearman": agg.get("spearman"), "bias_nats": agg.get("bias_nats")},
            "min_step": res["step_law"]["min_step"], "size_alpha": res["size_law"]["alpha"]}


def backtest(table: lt.LossTable, splits: Sequence[Split], variants: Mapping[str, NestedOptions] | None = None,
             sizes: Mapping[str, float] | None = None, base: NestedOptions | None = None) -> list[dict[str, Any]]:
    """One row per (split, variant); `base` (the step stage of SIZE_VARIANTS rows) defaults to NestedOptions()."""
    variants = VARIANTS if variants is None else variants
    base = NestedOptions() if base is None else base
    rows = []
    for s in splits:
        for name, opts in variants.items():
            if name in SIZE_VARIANTS and opts is SIZE_VARIANTS[name]:
                opts = dataclasses.replace(base, size_form=opts.size_form, size_tie=opts.size_tie, law=opts.law)
            rows.append({"split": s.name, "variant": name, **score(table, s, opts, sizes)})
    return rows


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = ["| split | variant | first step | level MRE % (bias) | full MRE % | worst point % | R² log | Spearman |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['split']} | {r['variant']} | cannot fit: {r['error'][:80]} | | | | | |")
            continue
        lv, fu = r["level"], r["full"]
        level = f"{lv['mre_pct']:.2f} ({lv['bias_pct']:+.2f})" if lv.get("points") else "-"
        lines.append(f"| {r['split']} | {r['variant']} | {r['min_step']:g} | {level} | {fu['mre_pct']:.2f} | "
                     f"{fu['worst_point_pct']:.2f} | {f(fu['r2_log'], '.3f')} | {f(fu['spearman'], '.2f')} |")
    return "\n".join(lines)


def summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, the mean over splits of the level and full relative errors (splits it could fit)."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        level = [r["level"]["mre_pct"] for r in mine if "error" not in r and r["level"].get("points")]
        full = [r["full"]["mre_pct"] for r in mine if "error" not in r]
        out.append({"variant": name, "splits": len(mine), "failed": sum("error" in r for r in mine),
                    "level_mre_pct": float(np.mean(level)) if level else None, "level_splits": len(level),
                    "full_mre_pct": float(np.mean(full)) if full else None})
    return out


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| variant | mean level MRE % (splits) | mean full MRE % | splits it cannot fit |", "|---|---|---|---|"]
    for s in summary(rows):
        lv = f"{s['level_mre_pct']:.2f} ({s['level_splits']})" if s["level_mre_pct"] is not None else "-"
        fu = f"{s['full_mre_pct']:.2f}" if s["full_mre_pct"] is not None else "-"
        lines.append(f"| {s['variant']} | {lv} | {fu} | {s['failed']} |")
    return "\n".join(lines)
