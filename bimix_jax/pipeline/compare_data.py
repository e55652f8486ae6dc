"""The comparison's data protocol: three splits, equal evaluation tokens spread over many documents, and the
selection view on which every choice is made.

* Splits (per domain): `train`; `select`, all that a method or a setting may look at (the laws' fits, the
  online feedback, the tuning grids); `val`, the reported split, seen by no method and no setting.
* Evaluation sets: `tokens` predicted tokens per domain (equal for every domain) in windows of `seq_len + 1`
  tokens placed at evenly spaced, non-overlapping offsets over the whole split (the run input's `spread_eval`,
  `bimix_jax.train.evaluate.spread_windows`), so every part of the split, not its first few documents, is scored.
* Views: a final run (`view='report'`) is scored on the validation split; an auxiliary run (law proxy, DoReMi
  reference and proxy, prior, tuning run; `view='select'`) is scored on the selection split, so its loss table
  holds selection losses and nothing it produces depends on the validation split. Both take the online
  feedback set (`feedback_tokens` per domain) spread over the selection split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.train import inputs
from bimix_jax.train.evaluate import spread_windows
from bimix_jax.train.state import TrainSpec

VIEWS = ("report", "select")
_EVAL_SPLIT = {"report": "val", "select": "select"}


def comparison_input(data, t: TrainSpec, *, feedback_tokens: int, view: str) -> inputs.RunInput:
    """The run input of a comparison run: `data` is a `DomainTokens` with a selection split or a store's data;
    evaluation and feedback sets spread over their splits."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {VIEWS}")
    if isinstance(data, DomainTokens) and not data.has_select:
        raise InputError("the comparison needs a selection split (what methods may look at, apart from the "
                         "reported validation split): set data.select_fraction or data.min_select_docs > 0")
    return inputs.make_input(data, t, feedback_tokens=feedback_tokens, eval_split=_EVAL_SPLIT[view], spread_eval=True)


def coverage(buf: np.ndarray, eos_id: int, windows: Sequence[tuple[int, int]]) -> int:
    """How many documents of the buffer (each ends with eos) the windows' predicted tokens touch."""
    doc_of = np.concatenate([[0], np.cumsum(buf[:-1] == eos_id)])  # document index of every position
    touched = set()
    for o, n in windows:
        touched.update(np.unique(doc_of[o + 1:o + n + 1]).tolist())
    return len(touched)


def split_table(data, t: TrainSpec, feedback_tokens: int) -> dict[str, dict[str, Any]]:
    """Per domain and split: documents, tokens; for the reported and selection evaluation sets and the feedback
    set: predicted tokens, windows and (in memory) documents touched."""
    out = {}
    for d in data.domains:
        row: dict[str, Any] = {}
        for split in ("train", "select", "val"):
            if isinstance(data, DomainTokens):
                buf = data.split(split)[d]
                row[split] = {"docs": int(np.sum(buf == data.eos_id)), "tokens": int(buf.size)}
            else:
                sp = data.store.split(d, split)
                row[split] = {"docs": int(sp.docs), "tokens": int(sp.num_tokens)}
        for name, split, n, field in (("reported_eval", "val", t.eval_tokens, "train.eval_tokens"),
                                      ("selection_eval", "select", t.eval_tokens, "train.eval_tokens"),
                                      ("feedback", "select", feedback_tokens, "online.feedback_tokens")):
            wins = spread_windows(row[split]["tokens"], n, t.seq_len, what=f"{field} on the {split} split of {d!r}")
            entry = {"split": split, "tokens": n, "windows": len(wins)}
            if isinstance(data, DomainTokens):
                entry["docs_touched"] = coverage(data.split(split)[d], data.eos_id, wins)
            row[name] = entry
        out[d] = row
    return out
