"""The `LossTable` dataclass (checked columns as arrays), its selections and CSV rendering; the table's
column names and the domain-name rule (see the package docstring for the format)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Sequence

import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions

REQUIRED_COLUMNS = ("run", "step", "eval_domain", "loss")
OPTIONAL_COLUMNS = ("model_size", "tokens", "mixture")
MIXTURE_KINDS = ("fixed", "cumulative")
PROPORTION_PREFIX = "p_"
SUM_TOLERANCE = proportions.SUM_TOLERANCE  # one tolerance for every mixture; rounded sources: normalize=True
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
    """A checked loss table held as column arrays (N rows, D training domains)."""

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


def parse_model_size(size: str) -> float:
    """'70M' -> 7e7, '1.3B' -> 1.3e9, '410000000' -> 4.1e8."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([kKmMbBtT]?)\s*", str(size))
    if not m:
        raise InputError(f"model_size {size!r} is not a size; write it like 70M, 1.3B or 410000000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale
