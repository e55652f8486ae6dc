"""The comparison's data protocol: three splits, equal evaluation tokens spread over many documents, and the
selection view on which every choice is made.

* Splits (per domain): `train`; `select`, all that a method or a setting may look at (the laws' fits, the
  online feedback, the tuning grids); `val`, the reported split, seen by no method and no setting.
* Evaluation sets: `tokens` predicted tokens per domain (equal for every domain) in windows of `seq_len + 1`
  tokens placed at evenly spaced, non-overlapping offsets over the whole split (`spread_windows`), so every
  part of the split, not its first few documents, is scored.
* Views: a final run (`view='report'`) is scored on the validation split; an auxiliary run (law proxy, DoReMi
  reference and proxy, prior, tuning run; `view='select'`) is scored on the selection split, so its loss table
  holds selection losses and nothing it produces depends on the validation split. Both take the online
  feedback set (`feedback_tokens` per domain) spread over the selection split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.train import inputs
from bimix_jax.train.evaluate import EvalSet
from bimix_jax.train.state import TrainSpec

VIEWS = ("report", "select")
_EVAL_SPLIT = {"report": "val", "select": "select"}


def spread_windows(length: int, tokens: int, seq_len: int, *, what: str) -> list[tuple[int, int]]:
    """(offset, predictions) of `ceil(tokens / seq_len)` windows (`predictions + 1` tokens each, the last one
    shorter so the predictions add up to `tokens`), evenly spaced and non-overlapping over `length` tokens."""
    w = -(-tokens // seq_len)
    sizes = [seq_len] * (w - 1) + [tokens - seq_len * (w - 1)]
    need = sum(sizes) + w
    if length < need:
        raise InputError(f"{what}: {length} tokens hold no {w} separate windows for {tokens} evaluation tokens "
                         f"(needs {need}); lower the token count or give the split more documents")
    slack = length - need
    offsets, start = [], 0
    for k, n in enumerate(sizes):
        offsets.append((start + (slack * k // (w - 1) if w > 1 else 0), n))
        start += n + 1
    return offsets


def _eval_set(windows_D: Sequence[Sequence[np.ndarray]], seq_len: int, batch_size: int) -> EvalSet:
    """The windows packed into batches of `batch_size` rows (zero rows pad the last batch), weights 1 on targets."""
    flat = [x for windows in windows_D for x in windows]
    rows = len(flat) + (-len(flat) % batch_size)
    x_RxS = np.zeros((rows, seq_len + 1), np.int32)
    for r, x in enumerate(flat):
        x_RxS[r, :x.size] = x
    targets_R = np.zeros(rows, np.int64)
    targets_R[:len(flat)] = [x.size - 1 for x in flat]
    domain_R = np.zeros(rows, np.int32)
    domain_R[:len(flat)] = np.repeat(np.arange(len(windows_D)), [len(w) for w in windows_D])
    n = rows // batch_size
    return EvalSet(x_NxBxS=x_RxS.reshape(n, batch_size, seq_len + 1),
                   w_NxBxL=(np.arange(seq_len)[None, :] < targets_R[:, None]).astype(np.float32).reshape(
                       n, batch_size, seq_len),
                   domain_NxB=domain_R.reshape(n, batch_size),
                   tokens_D=np.array([sum(x.size - 1 for x in w) for w in windows_D], np.float32))


def spread_eval_set(domains: Sequence[str], length: Callable[[str], int], read: Callable[[str, int, int], np.ndarray],
                    *, tokens: int, seq_len: int, batch_size: int, what: str) -> EvalSet:
    """The evaluation set of `tokens` predictions per domain spread over a split (`read(domain, start, n)`)."""
    windows = [[np.asarray(read(d, o, n + 1), np.int32) for o, n in spread_windows(length(d), tokens, seq_len,
                                                                                   what=f"{what} of {d!r}")]
               for d in domains]
    return _eval_set(windows, seq_len, batch_size)


def _memory_set(bufs: Mapping[str, np.ndarray], domains, tokens: int, t: TrainSpec, what: str) -> EvalSet:
    return spread_eval_set(domains, lambda d: bufs[d].size, lambda d, o, n: bufs[d][o:o + n], tokens=tokens,
                           seq_len=t.seq_len, batch_size=t.eval_batch_size, what=what)


class SpreadMemoryInput(inputs.MemoryInput):
    """An in-memory corpus with a selection split, evaluated on spread windows (see the module docstring)."""

    def __init__(self, tokens: DomainTokens, t: TrainSpec, *, feedback_tokens: int, view: str):
        super().__init__(tokens, t, feedback_tokens=feedback_tokens)
        self.view = view

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:{self.view}"

    def eval_set(self, t: TrainSpec) -> EvalSet:
        split = _EVAL_SPLIT[self.view]
        return _memory_set(self.tokens.split(split), self.domains, t.eval_tokens, t,
                           f"train.eval_tokens on the {split} split")

    def feedback_set(self, t: TrainSpec) -> EvalSet | None:
        if not self.feedback_tokens:
            return None
        return _memory_set(self.tokens.select, self.domains, self.feedback_tokens, t,
                           "online.feedback_tokens on the select split")


class SpreadStoreInput(inputs.StoreInput):
    """A token store (train / select / val splits), evaluated on spread windows (see the module docstring)."""

    def __init__(self, data, t: TrainSpec, *, feedback_tokens: int, view: str):
        super().__init__(data, t, feedback_tokens=feedback_tokens)
        self.view = view

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}:{self.view}"

    def _spread(self, split: str, tokens: int, t: TrainSpec, what: str) -> EvalSet:
        store = self.data.store
        return spread_eval_set(self.domains, lambda d: store.split(d, split).num_tokens,
                               lambda d, o, n: store.split(d, split).read(o, n), tokens=tokens, seq_len=t.seq_len,
                               batch_size=t.eval_batch_size, what=what)

    def eval_set(self, t: TrainSpec) -> EvalSet:
        split = _EVAL_SPLIT[self.view]
        return self._spread(split, t.eval_tokens, t, f"train.eval_tokens on the {split} split")

    def feedback_set(self, t: TrainSpec) -> EvalSet | None:
        if not self.feedback_tokens:
            return None
        return self._spread("select", self.feedback_tokens, t, "online.feedback_tokens on the select split")


def comparison_input(data, t: TrainSpec, *, feedback_tokens: int, view: str) -> inputs.RunInput:
    """The run input of a comparison run: `data` is a `DomainTokens` with a selection split or a store's data."""
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {VIEWS}")
    if isinstance(data, DomainTokens):
        if not data.has_select:
            raise InputError("the comparison needs a selection split (what methods may look at, apart from the "
                             "reported validation split): set data.select_fraction or data.min_select_docs > 0")
        return SpreadMemoryInput(data, t, feedback_tokens=feedback_tokens, view=view)
    return SpreadStoreInput(data, t, feedback_tokens=feedback_tokens, view=view)


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
