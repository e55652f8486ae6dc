"""The loss table: the contract between training runs and the mixing-law fitters.

One row per measurement, as CSV with a header (column order is free when reading):

| column        | meaning                                                                  |
|---------------|--------------------------------------------------------------------------|
| `run`         | run id; every row of a run has the same mixture (and model size)         |
| `model_size`  | optional; nominal model size (`70M`, `160M`, or a number of parameters)  |
| `step`        | optimizer step of the measurement, > 0                                   |
| `tokens`      | optional; training tokens seen at that step                              |
| `p_<domain>`  | the run's training proportion of `<domain>`; >= 0, sum to 1 per run      |
| `mixture`     | optional; `fixed` (default) or `cumulative` (see below)                  |
| `eval_domain` | validation domain of the measurement (need not be a training domain)     |
| `loss`        | mean per-token cross-entropy in nats, > 0                                |

A run's rows are either all `fixed`, and then every row has the same proportions (a static run), or all
`cumulative`: the run's mixture changed during training (an online method) and each row's `p_` columns hold
the realised share of each domain's training rows from the start up to that step, which may differ between
rows. The mixing laws read both the same way: the proportions the model was trained on up to the step.

A table is validated completely when it is built, so a malformed table is rejected (one-line
`InputError` naming the row or run, the column and the fix) before any work starts. Writes are atomic
(`bimix_jax.atomic`): a killed writer never leaves a partial row, and `append_rows` replaces rows with
the same `(run, step, eval_domain)` key instead of duplicating them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from bimix_jax import atomic, plausibility
from bimix_jax.errors import InputError

REQUIRED_COLUMNS = ("run", "step", "eval_domain", "loss")
OPTIONAL_COLUMNS = ("model_size", "tokens", "mixture")
MIXTURE_KINDS = ("fixed", "cumulative")
PROPORTION_PREFIX = "p_"
# Proportions in a table are printed numbers; 1e-4 absorbs rounding to 4+ decimals over many domains.
SUM_TOLERANCE = 1e-4
_FIX_TABLE = "fix the table or drop the row"
DOMAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def check_domain_name(name: str, where: str) -> None:
    """Domain names become `p_<domain>` columns and file names: letters, digits, '_', '-', '.' only."""
    if not isinstance(name, str) or not DOMAIN_NAME.fullmatch(name):
        raise InputError(
            f"{where}: domain name {name!r} must use only letters, digits, '_', '-' or '.'; rename the domain"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class LossTable:
    """A validated loss table held as column arrays (N rows, D training domains)."""

    domains: tuple[str, ...]  # training domains, in `p_<domain>` column order
    run: np.ndarray  # [N] str
    step: np.ndarray  # [N] float64
    eval_domain: np.ndarray  # [N] str
    loss: np.ndarray  # [N] float64, nats
    p: np.ndarray  # [N, D] float64, training proportions of the row's run
    model_size: np.ndarray  # [N] str, '' where the table has no model_size column
    tokens: np.ndarray  # [N] float64, nan where the table has no tokens column
    source: str = "<memory>"  # file name or description, used in error messages
    cumulative: np.ndarray | None = None  # [N] bool, True where `p` is a cumulative realised share

    def __post_init__(self):
        if self.cumulative is None:
            object.__setattr__(self, "cumulative", np.zeros(len(self.loss), bool))

    @property
    def has_cumulative(self) -> bool:
        return bool(np.any(self.cumulative))

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    @property
    def has_model_size(self) -> bool:
        return bool(np.any(self.model_size != ""))

    @property
    def has_tokens(self) -> bool:
        return bool(np.any(np.isfinite(self.tokens)))

    @property
    def runs(self) -> tuple[str, ...]:
        """Run ids in order of first appearance."""
        return tuple(dict.fromkeys(self.run.tolist()))

    @property
    def eval_domains(self) -> tuple[str, ...]:
        """Validation domains: training domains first (in column order), then any others."""
        seen = dict.fromkeys(self.eval_domain.tolist())
        return tuple(d for d in self.domains if d in seen) + tuple(d for d in seen if d not in self.domains)

    @property
    def model_sizes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.model_size.tolist()))

    def mixtures(self) -> dict[str, np.ndarray]:
        """Maps each run id to its proportions [D] (an online run's: the cumulative share at its first row)."""
        first = {}
        for i, r in enumerate(self.run.tolist()):
            first.setdefault(r, i)
        return {r: self.p[i].copy() for r, i in first.items()}

    def subset(self, mask: np.ndarray, *, what: str = "selection") -> LossTable:
        """Rows where `mask` is true (a boolean [N] array or integer indices)."""
        idx = np.asarray(mask)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise ValueError(f"mask has shape {idx.shape}, expected ({len(self)},)")
        out = dataclasses.replace(
            self,
            run=self.run[idx],
            step=self.step[idx],
            eval_domain=self.eval_domain[idx],
            loss=self.loss[idx],
            p=self.p[idx],
            model_size=self.model_size[idx],
            tokens=self.tokens[idx],
            cumulative=self.cumulative[idx],
        )
        if len(out) == 0:
            raise InputError(f"loss table {self.source}: the {what} leaves no rows; choose a selection that keeps some")
        return out

    def for_model_size(self, model_size: str | None) -> LossTable:
        """Rows of one model size (None: the table must hold a single model size, or none at all)."""
        sizes = self.model_sizes
        if model_size is None or model_size == "":
            if len(sizes) > 1:
                raise InputError(
                    f"loss table {self.source} mixes model sizes {', '.join(sizes)}; pick one with --model_size"
                )
            return self
        if model_size not in sizes:
            raise InputError(
                f"loss table {self.source} has no rows with model_size={model_size}; "
                f"available: {', '.join(s for s in sizes if s) or 'none (no model_size column)'}"
            )
        return self.subset(self.model_size == model_size, what=f"model_size={model_size} selection")

    def for_eval_domains(self, eval_domains: Sequence[str]) -> LossTable:
        unknown = [d for d in eval_domains if d not in self.eval_domains]
        if unknown:
            raise InputError(
                f"loss table {self.source} has no eval_domain {unknown[0]!r}; available: {', '.join(self.eval_domains)}"
            )
        return self.subset(np.isin(self.eval_domain, list(eval_domains)), what="eval-domain selection")

    def to_rows(self) -> list[dict]:
        """Rows as dicts with the CSV column names (values are Python numbers/strings)."""
        rows = []
        for i in range(len(self)):
            row = {"run": str(self.run[i])}
            if self.has_model_size:
                row["model_size"] = str(self.model_size[i])
            row["step"] = _num(self.step[i])
            if self.has_tokens:
                row["tokens"] = _num(self.tokens[i])
            for j, d in enumerate(self.domains):
                row[PROPORTION_PREFIX + d] = float(self.p[i, j])
            if self.has_cumulative:
                row["mixture"] = "cumulative" if self.cumulative[i] else "fixed"
            row["eval_domain"] = str(self.eval_domain[i])
            row["loss"] = float(self.loss[i])
            rows.append(row)
        return rows

    def columns(self) -> list[str]:
        cols = ["run"] + (["model_size"] if self.has_model_size else []) + ["step"]
        cols += (["tokens"] if self.has_tokens else []) + [PROPORTION_PREFIX + d for d in self.domains]
        return cols + (["mixture"] if self.has_cumulative else []) + ["eval_domain", "loss"]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for row in self.to_rows():
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        return buf.getvalue()


def _num(x: float) -> float | int:
    x = float(x)
    return int(x) if math.isfinite(x) and x == int(x) and abs(x) < 2**53 else x


def _where(source: str, line: int | None, run: str | None = None) -> str:
    where = f"loss table {source}"
    if line is not None:
        where += f" line {line}"
    if run is not None:
        where += f" (run {str(run)!r})"
    return where


def _parse_float(value, column: str, source: str, line: int | None, run: str | None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{_where(source, line, run)}: column {column!r} holds {value!r}, not a number; {_FIX_TABLE}"
        ) from None
    return x


def from_rows(
    rows: Iterable[Mapping],
    *,
    domains: Sequence[str] | None = None,
    source: str = "<memory>",
    first_line: int | None = None,
) -> LossTable:
    """Builds and validates a table from dict rows keyed by CSV column names.

    Args:
      rows: mappings with keys `run, step, eval_domain, loss, p_<domain>...` and optionally
        `model_size`, `tokens`.
      domains: training domains; by default the `p_` keys of the first row, in order.
      source: name used in error messages.
      first_line: file line number of the first row (for error messages), None for in-memory rows.
    """
    rows = list(rows)
    if not rows:
        raise InputError(f"loss table {source} has no rows; train a run first or pass a non-empty table")
    if domains is None:
        domains = [k[len(PROPORTION_PREFIX):] for k in rows[0] if k.startswith(PROPORTION_PREFIX)]
    domains = tuple(domains)
    _check_columns(list(rows[0]), domains, source)
    has_size = "model_size" in rows[0]
    has_tokens = "tokens" in rows[0]
    has_mixture = "mixture" in rows[0]

    n, d = len(rows), len(domains)
    run = np.empty(n, dtype=object)
    eval_domain = np.empty(n, dtype=object)
    model_size = np.empty(n, dtype=object)
    step = np.empty(n)
    loss = np.empty(n)
    tokens = np.full(n, np.nan)
    p = np.empty((n, d))
    cumulative = np.zeros(n, bool)
    for i, row in enumerate(rows):
        line = None if first_line is None else first_line + i
        r = str(row.get("run", "")).strip()
        if not r:
            raise InputError(f"{_where(source, line)}: column 'run' is empty; give every row a run id")
        run[i] = r
        e = str(row.get("eval_domain", "")).strip()
        if not e:
            raise InputError(f"{_where(source, line, r)}: column 'eval_domain' is empty; {_FIX_TABLE}")
        eval_domain[i] = e
        model_size[i] = str(row.get("model_size", "") or "").strip() if has_size else ""
        step[i] = _parse_float(row.get("step"), "step", source, line, r)
        if not (math.isfinite(step[i]) and step[i] > 0):
            raise InputError(f"{_where(source, line, r)}: step {row.get('step')!r} must be a positive number; {_FIX_TABLE}")
        loss[i] = _parse_float(row.get("loss"), "loss", source, line, r)
        if not (math.isfinite(loss[i]) and loss[i] > 0):
            raise InputError(
                f"{_where(source, line, r)}: loss {row.get('loss')!r} must be a positive finite number (nats); {_FIX_TABLE}"
            )
        if has_tokens and str(row.get("tokens", "")).strip() not in ("", "nan"):
            tokens[i] = _parse_float(row.get("tokens"), "tokens", source, line, r)
            if not (math.isfinite(tokens[i]) and tokens[i] >= 0):
                raise InputError(f"{_where(source, line, r)}: tokens {row.get('tokens')!r} must be >= 0; {_FIX_TABLE}")
        if has_mixture:
            kind = str(row.get("mixture", "") or "fixed").strip()
            if kind not in MIXTURE_KINDS:
                raise InputError(f"{_where(source, line, r)}: mixture {kind!r} must be 'fixed' or 'cumulative'; "
                                 f"{_FIX_TABLE}")
            cumulative[i] = kind == "cumulative"
        for j, dom in enumerate(domains):
            col = PROPORTION_PREFIX + dom
            x = _parse_float(row.get(col), col, source, line, r)
            if not (math.isfinite(x) and x >= 0):
                raise InputError(f"{_where(source, line, r)}: {col}={row.get(col)!r} must be a number >= 0; {_FIX_TABLE}")
            p[i, j] = x
    table = LossTable(
        domains=domains,
        run=run.astype(str),
        step=step,
        eval_domain=eval_domain.astype(str),
        loss=loss,
        p=p,
        model_size=model_size.astype(str),
        tokens=tokens,
        source=source,
        cumulative=cumulative,
    )
    _check_consistency(table, first_line)
    return table


def _check_columns(columns: list[str], domains: tuple[str, ...], source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"loss table {source} is missing column {missing[0]!r}; a loss table needs columns "
            f"run, step, eval_domain, loss and one p_<domain> per training domain"
        )
    if not domains:
        raise InputError(
            f"loss table {source} has no p_<domain> proportion columns; add one p_<domain> column per training domain"
        )
    for dom in domains:
        if PROPORTION_PREFIX + dom not in columns:
            raise InputError(f"loss table {source} is missing column {PROPORTION_PREFIX + dom!r}; add it")
        check_domain_name(dom, f"loss table {source}")
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise InputError(f"loss table {source} has column {dup!r} twice; keep one")


def _check_consistency(t: LossTable, first_line: int | None) -> None:
    def line_of(i: int) -> int | None:
        return None if first_line is None else first_line + int(i)

    sums = t.p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{_where(t.source, line_of(i), t.run[i])}: proportions sum to {sums[i]:.6g}, not 1; "
            f"fix the p_ columns of this run (they must sum to 1 within {SUM_TOLERANCE:g})"
        )
    # Every row of a static run has the same mixture; every run has one model size and one mixture kind.
    _, first_idx, inverse = np.unique(t.run, return_index=True, return_inverse=True)
    ref = first_idx[inverse]
    bad = np.flatnonzero(t.cumulative != t.cumulative[ref])
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{_where(t.source, line_of(i), t.run[i])}: the run has both 'fixed' and 'cumulative' mixture rows; "
            "a run is either static or online: give each its own run id"
        )
    bad = np.flatnonzero(np.any(np.abs(t.p - t.p[ref]) > 1e-9, axis=1) & ~t.cumulative)
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{_where(t.source, line_of(i), t.run[i])}: the run's proportions change between rows; "
            "a static run has one mixture: give each mixture its own run id (or mark an online run's rows "
            "mixture=cumulative)"
        )
    bad = np.flatnonzero(t.model_size != t.model_size[ref])
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{_where(t.source, line_of(i), t.run[i])}: the run has rows with model sizes "
            f"{t.model_size[ref[i]]!r} and {t.model_size[i]!r}; give each model size its own run id"
        )
    # One measurement per (run, step, eval_domain).
    keys = np.array([f"{r}\x00{s!r}\x00{e}" for r, s, e in zip(t.run, t.step, t.eval_domain)])
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if np.any(counts > 1):
        k = first[np.argmax(counts > 1)]
        dup = np.flatnonzero(keys == keys[k])[1]
        raise InputError(
            f"{_where(t.source, line_of(dup), t.run[dup])}: duplicate measurement for step {_num(t.step[dup])} "
            f"eval_domain {t.eval_domain[dup]!r}; keep one row per (run, step, eval_domain)"
        )


def read_csv(path: str | os.PathLike, *, model_size: str | None = None) -> LossTable:
    """Reads and validates a loss table CSV; optionally keeps only one model size."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"loss table {path} is a directory; give the CSV file inside it")
    if not os.path.isfile(path):
        raise InputError(f"loss table {path} does not exist; check the --losses path")
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(f"loss table {path} is empty; it needs a header and rows")
            header = [h.strip() for h in header]
            domains = tuple(h[len(PROPORTION_PREFIX):] for h in header if h.startswith(PROPORTION_PREFIX))
            _check_columns(header, domains, path)
            rows = []
            for line_no, fields in enumerate(reader, start=2):
                if not fields or all(not x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise InputError(
                        f"loss table {path} line {line_no} has {len(fields)} fields, the header has {len(header)}; "
                        f"{_FIX_TABLE}"
                    )
                rows.append(dict(zip(header, (x.strip() for x in fields))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"loss table {path} is not a readable CSV file ({e}); check the file") from e
    except OSError as e:
        raise InputError(f"loss table {path} cannot be read ({e.strerror or type(e).__name__}); fix its "
                         "permissions or copy it somewhere readable") from e
    table = from_rows(rows, domains=domains, source=path, first_line=2)
    plausibility.check(table, first_line=2)
    return table.for_model_size(model_size) if model_size else table


def write_csv(path: str | os.PathLike, table: LossTable) -> None:
    """Atomically writes a table (replacing the file)."""
    atomic.write_text(path, table.to_csv())


def append_rows(path: str | os.PathLike, rows: Sequence[Mapping]) -> LossTable:
    """Atomically appends rows to the table at `path` (created if absent) and returns the new table.

    Rows whose `(run, step, eval_domain)` key is already in the file replace the old row, so
    re-running an evaluation after a resume never duplicates a measurement.
    """
    path = os.fspath(path)
    new = from_rows(rows, source=f"rows for {path}")
    if os.path.exists(path):
        old = read_csv(path)
        if old.domains != new.domains:
            raise InputError(
                f"loss table {path} has domains {', '.join(old.domains)} but the new rows have "
                f"{', '.join(new.domains)}; write these runs to another table"
            )
        new_keys = {(r["run"], float(r["step"]), r["eval_domain"]) for r in new.to_rows()}
        kept = [r for r in old.to_rows() if (r["run"], float(r["step"]), r["eval_domain"]) not in new_keys]
        rows = kept + new.to_rows()
        if old.has_tokens or new.has_tokens:
            for r in rows:
                r.setdefault("tokens", float("nan"))
        if old.has_model_size or new.has_model_size:
            for r in rows:
                r.setdefault("model_size", "")
        if old.has_cumulative or new.has_cumulative:
            for r in rows:
                r.setdefault("mixture", "fixed")
        new = from_rows(rows, domains=old.domains, source=path)
    write_csv(path, new)
    return new


def drop_rows_after(path: str | os.PathLike, run: str, step: float) -> None:
    """Atomically removes the rows of `run` measured after `step` (used when a run resumes)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return
    table = read_csv(path)
    keep = ~((table.run == run) & (table.step > step))
    if keep.all():
        return
    if not keep.any():
        os.remove(path)
        return
    write_csv(path, table.subset(keep))


def concat(tables: Sequence[LossTable], *, source: str = "<concatenation>") -> LossTable:
    """Concatenates tables with the same training domains (validated as one table)."""
    if not tables:
        raise InputError("no loss tables to combine; pass at least one")
    domains = tables[0].domains
    for t in tables[1:]:
        if t.domains != domains:
            raise InputError(
                f"loss table {t.source} has domains {', '.join(t.domains)}, others have {', '.join(domains)}; "
                "combine only tables over the same training domains"
            )
    rows = []
    any_size = any(t.has_model_size for t in tables)
    any_tokens = any(t.has_tokens for t in tables)
    any_cumulative = any(t.has_cumulative for t in tables)
    for t in tables:
        for r in t.to_rows():
            if any_cumulative:
                r.setdefault("mixture", "fixed")
            if any_size:
                r.setdefault("model_size", "")
            if any_tokens:
                r.setdefault("tokens", float("nan"))
            rows.append(r)
    return from_rows(rows, domains=domains, source=source)


def parse_model_size(size: str) -> float:
    """'70M' -> 7e7, '1.3B' -> 1.3e9, '410000000' -> 4.1e8."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([kKmMbBtT]?)\s*", str(size))
    if not m:
        raise InputError(f"model_size {size!r} is not a size; write it like 70M, 1.3B or 410000000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale
