"""Building a `LossTable` from rows (dicts of CSV fields or numbers), checked completely: every malformed
row, column or run is rejected with one line naming it and the fix."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from absl import logging

from bimix_jax.errors import InputError
from bimix_jax.loss_table.table import (_FIX_TABLE, MIXTURE_KINDS, PROPORTION_PREFIX, REQUIRED_COLUMNS,
                                        SUM_TOLERANCE, LossTable, _num, check_domain_name)


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
    normalize: bool = False,
) -> LossTable:
    """Builds and checks a table from dict rows keyed by CSV column names.

    Args:
      rows: mappings with keys `run, step, eval_domain, loss, p_<domain>...` and optionally
        `model_size`, `tokens`.
      domains: training domains; by default the `p_` keys of the first row, in order.
      source: name used in error messages.
      first_line: file line number of the first row (for error messages), None for in-memory rows.
      normalize: rescale each row's proportions to sum to 1 (sources that round them); otherwise a sum off 1 by
        more than `bimix_jax.mixture.proportions.SUM_TOLERANCE` is refused.
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
    if normalize:
        _normalize(p, source)
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


def _normalize(p_NxD: np.ndarray, source: str) -> None:
    sums = p_NxD.sum(axis=1)
    off = np.abs(sums - 1.0) > 0
    if np.any(off) and np.all(sums > 0):
        p_NxD /= sums[:, None]
        logging.info("loss table %s: proportions of %d rows rescaled to sum to 1 (sums were %.6g to %.6g)", source,
                     int(off.sum()), float(sums.min()), float(sums.max()))


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
            f"{_where(t.source, line_of(i), t.run[i])}: proportions sum to {sums[i]:.9g}, not 1 (within "
            f"{SUM_TOLERANCE:g}); fix the p_ columns of this run, or rescale every run's proportions with --normalize "
            "(normalize=True) when the source rounded them"
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



def concat(tables: Sequence[LossTable], *, source: str = "<concatenation>") -> LossTable:
    """Concatenates tables with the same training domains (checked as one table)."""
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
