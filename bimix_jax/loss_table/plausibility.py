"""Plausibility of a loss table's numbers, beyond the format checks of `bimix_jax.loss_table`.

* Refused (one-line `InputError` naming the line and run): a loss above `MAX_LOSS` nats (a
  cross-entropy that large means a wrong unit or a corrupted value; uniform guessing over a million
  tokens is 13.8 nats), a step above `MAX_STEP`, a tokens count above `MAX_TOKENS`.
* Warned (logged, naming the line): an outlier relative to its run's curve: a point whose log loss lies
  more than a factor `OUTLIER_FACTOR` outside the range of its neighbours (up to two checkpoints on
  each side, same run and eval domain). Smooth training curves never do that from their first
  evaluation on; a spike or a dropped digit does.
"""

from __future__ import annotations

import math

import numpy as np
from absl import logging

from bimix_jax.errors import InputError

MAX_LOSS = 100.0  # nats
MAX_STEP = 1e12
MAX_TOKENS = 1e18
OUTLIER_FACTOR = 2.0
_NEIGHBOURS = 2


def _line(first_line: int | None, i: int) -> str:
    return f" line {first_line + int(i)}" if first_line is not None else f" row {int(i)}"


def check(table, *, first_line: int | None = None, warn: bool = True) -> list[str]:
    """Refuses absurd magnitudes; logs (and returns) a warning per outlier row."""
    for name, values, limit, unit in (("loss", table.loss, MAX_LOSS, " nats"), ("step", table.step, MAX_STEP, ""),
                                      ("tokens", table.tokens, MAX_TOKENS, "")):
        bad = np.flatnonzero(np.nan_to_num(values, nan=0.0) > limit)
        if bad.size:
            i = bad[0]
            raise InputError(
                f"loss table {table.source}{_line(first_line, i)} (run {str(table.run[i])!r}): {name} "
                f"{float(values[i]):g} is implausible (above {limit:g}{unit}); fix the value or drop the row")
    warnings = [f"loss table {table.source}{_line(first_line, i)} (run {str(table.run[i])!r}, eval_domain "
                f"{str(table.eval_domain[i])!r}, step {table.step[i]:g}): loss {table.loss[i]:g} is an outlier of "
                f"its curve (neighbours {lo:g}..{hi:g}); check the measurement"
                for i, lo, hi in outliers(table)]
    if warn:
        for w in warnings:
            logging.warning("%s", w)
    return warnings


def outliers(table) -> list[tuple[int, float, float]]:
    """(row, lowest, highest neighbour loss) of every row far outside its neighbours' range."""
    out = []
    limit = math.log(OUTLIER_FACTOR)
    keys = np.char.add(np.char.add(table.run.astype(str), "\x00"), table.eval_domain.astype(str))
    order = np.lexsort((table.step, keys))
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(order)]
    log_loss = np.log(table.loss)
    for a, b in zip(starts, ends):
        if b - a < 3:
            continue
        idx = order[a:b]
        for j in range(b - a):
            near = np.r_[idx[max(0, j - _NEIGHBOURS):j], idx[j + 1:j + 1 + _NEIGHBOURS]]
            lo, hi = log_loss[near].min(), log_loss[near].max()
            x = log_loss[idx[j]]
            if x > hi + limit or x < lo - limit:
                out.append((int(idx[j]), float(np.exp(lo)), float(np.exp(hi))))
    return sorted(out)
