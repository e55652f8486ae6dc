"""Loss tables as CSV files: read (checked, with plausibility checks), written and appended atomically."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

from bimix_jax import atomic
from bimix_jax.loss_table import plausibility
from bimix_jax.errors import InputError
from bimix_jax.loss_table.rows import _check_columns, from_rows
from bimix_jax.loss_table.table import _FIX_TABLE, PROPORTION_PREFIX, LossTable


def read_csv(path: str | os.PathLike, *, model_size: str | None = None, normalize: bool = False) -> LossTable:
    """Reads and checks a loss table CSV; optionally keeps only one model size. `normalize` rescales each
    row's proportions to sum to 1 (for sources that rounded them)."""
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
    table = from_rows(rows, domains=domains, source=path, first_line=2, normalize=normalize)
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

