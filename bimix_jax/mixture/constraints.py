"""The feasible set of training mixtures: simplex, floors, caps and repetition caps.

Every mixture the optimizer returns satisfies `lo_D <= r_D <= hi_D` and `sum(r_D) = 1`, with

    lo_i = max(floor_i, min_floor)
    hi_i = min(cap_i, max_epochs * tokens_i / token_budget, 1)

* `floors` / `caps`: per-domain bounds given by the user (`{domain: proportion}`);
* repetition caps: with each domain's available tokens and the total training-token budget, a domain may
  be repeated at most `max_epochs` times;
* `min_floor`: a positive lower bound that laws diverging at r = 0 need (BiMix: `r^-alpha`). It is
  `DEFAULT_MIN_FLOOR[law]` unless given, and user floors below it are raised to it.

Infeasible combinations (floors summing above 1, caps summing below 1, a floor above its cap) are one-line
`InputError`s naming the flags to change. Values are checked (finite, in range, known domain names).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from bimix_jax.errors import InputError

# Laws whose prediction diverges at a zero proportion: the default positive floor of every domain.
DEFAULT_MIN_FLOOR = {"bimix": 1e-4}
# A proportion within this (relative + absolute) distance of a bound counts as sitting on it.
BIND_RTOL = 1e-6
BIND_ATOL = 1e-9


def parse_domain_values(text: str | None, flag: str) -> dict[str, float] | None:
    """Parses `'d1=x,d2=y'` into `{d1: x, d2: y}` (None or '' -> None); bad syntax -> InputError."""
    if text is None or not str(text).strip():
        return None
    out: dict[str, float] = {}
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"{flag}: {item!r} is not domain=value; write it like {flag}=github=0.2,books3=0.1")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"{flag}: value {value!r} of domain {name!r} is not a number; fix it") from None
        if name in out:
            raise InputError(f"{flag}: domain {name!r} is given twice; give each domain once")
        out[name] = number
    return out or None


def check_values(
    values: Mapping[str, float] | None,
    domains: Sequence[str],
    flag: str,
    *,
    low: float = 0.0,
    high: float = math.inf,
    what: str = "domain",
) -> dict[str, float]:
    """Checks `{domain: value}`: known names, finite numbers in [low, high]; returns a plain dict."""
    if not values:
        return {}
    out = {}
    for name, v in values.items():
        if name not in domains:
            raise InputError(f"{flag}: unknown {what} {name!r}; known: {', '.join(domains)}")
        v = float(v)
        if not math.isfinite(v) or v < low or v > high:
            bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
            raise InputError(f"{flag}: {name}={v:g} must be a finite number {bound}; fix the value")
        out[name] = v
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Bounds:
    """Per-domain lower/upper bounds of the feasible set, and where each bound comes from."""

    domains: tuple[str, ...]
    lo: np.ndarray  # [D] effective lower bound
    hi: np.ndarray  # [D] effective upper bound
    floor: np.ndarray  # [D] user floors (0 where none)
    cap: np.ndarray  # [D] user caps (1 where none)
    repetition_cap: np.ndarray  # [D] max_epochs * tokens / budget (inf where not given)
    min_floor: float
    domain_tokens: np.ndarray  # [D] available tokens (nan where not given)
    token_budget: float | None
    max_epochs: float | None

    @property
    def has_user_constraints(self) -> bool:
        return bool(np.any(self.floor > self.min_floor) or np.any(self.hi < 1.0))

    def relaxed(self) -> Bounds:
        """The same set without user floors, caps and repetition caps (the law's min_floor stays)."""
        D = len(self.domains)
        return dataclasses.replace(
            self, lo=np.full(D, self.min_floor), hi=np.ones(D), floor=np.zeros(D), cap=np.ones(D),
            repetition_cap=np.full(D, np.inf),
        )

    def binding(self, r_D: np.ndarray) -> dict[str, list[str]]:
        """Which bounds each domain sits on: 'floor', 'min_floor', 'cap', 'repetition' (empty list: none)."""
        r_D = np.asarray(r_D, dtype=np.float64)
        out = {}
        for i, d in enumerate(self.domains):
            tags = []
            if self.lo[i] > 0 and r_D[i] <= self.lo[i] * (1 + BIND_RTOL) + BIND_ATOL:
                tags.append("floor" if self.floor[i] >= self.min_floor and self.floor[i] > 0 else "min_floor")
            if self.hi[i] < 1 and r_D[i] >= self.hi[i] * (1 - BIND_RTOL) - BIND_ATOL:
                if self.cap[i] <= self.hi[i]:
                    tags.append("cap")
                if self.repetition_cap[i] <= self.hi[i]:
                    tags.append("repetition")
            out[d] = tags
        return out

    def epochs(self, r_D: np.ndarray) -> dict[str, float] | None:
        """Implied passes over each domain's data, r_i * budget / tokens_i (domains with token counts)."""
        if self.token_budget is None or np.all(np.isnan(self.domain_tokens)):
            return None
        out = {}
        for d, r, t in zip(self.domains, np.asarray(r_D, dtype=np.float64), self.domain_tokens):
            if not np.isnan(t):
                out[d] = float(r * self.token_budget / t) if t > 0 else (math.inf if r > 0 else 0.0)
        return out

    def to_json(self) -> dict:
        D = self.domains
        return {
            "lower": dict(zip(D, self.lo.tolist())),
            "upper": dict(zip(D, self.hi.tolist())),
            "min_floor": self.min_floor,
            "floors": {d: v for d, v in zip(D, self.floor.tolist()) if v > 0},
            "caps": {d: v for d, v in zip(D, self.cap.tolist()) if v < 1},
            "repetition_caps": {d: v for d, v in zip(D, self.repetition_cap.tolist()) if np.isfinite(v)},
            "domain_tokens": {d: v for d, v in zip(D, self.domain_tokens.tolist()) if not np.isnan(v)},
            "token_budget": self.token_budget,
            "max_epochs": self.max_epochs,
        }


def make_bounds(
    domains: Sequence[str],
    *,
    floors: Mapping[str, float] | None = None,
    caps: Mapping[str, float] | None = None,
    domain_tokens: Mapping[str, float] | None = None,
    token_budget: float | None = None,
    max_epochs: float | None = None,
    min_floor: float = 0.0,
) -> Bounds:
    """Builds and checks the feasible set (see the module docstring); infeasible -> InputError."""
    domains = tuple(domains)
    D = len(domains)
    if not math.isfinite(min_floor) or not 0.0 <= min_floor < 1.0 / D:
        raise InputError(f"--min_floor={min_floor:g} must be in [0, 1/{D}); lower it")
    floors = check_values(floors, domains, "--floors", high=1.0)
    caps = check_values(caps, domains, "--caps", high=1.0)
    tokens = check_values(domain_tokens, domains, "--domain_tokens")
    for flag, v in (("--token_budget", token_budget), ("--max_epochs", max_epochs)):
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise InputError(f"{flag}={v:g} must be a positive number; fix the value")
    if max_epochs is not None and (token_budget is None or not tokens):
        raise InputError("--max_epochs needs --domain_tokens and --token_budget to turn epochs into caps; "
                         "add them")

    floor_D = np.array([floors.get(d, 0.0) for d in domains])
    cap_D = np.array([caps.get(d, 1.0) for d in domains])
    tokens_D = np.array([tokens.get(d, np.nan) for d in domains])
    rep_D = np.full(D, np.inf)
    if max_epochs is not None:
        has = ~np.isnan(tokens_D)
        rep_D[has] = max_epochs * tokens_D[has] / token_budget
    lo_D = np.maximum(floor_D, min_floor)
    hi_D = np.minimum(np.minimum(cap_D, rep_D), 1.0)

    for i, d in enumerate(domains):
        if lo_D[i] > hi_D[i]:
            low_src = "--floors" if floor_D[i] >= min_floor else "--min_floor (the law's minimum proportion)"
            high_src = "--caps" if cap_D[i] <= rep_D[i] else "its repetition cap (--max_epochs, --domain_tokens)"
            raise InputError(
                f"domain {d}: lower bound {lo_D[i]:g} from {low_src} is above upper bound {hi_D[i]:g} from "
                f"{high_src}; lower the floor or raise the cap"
            )
    if lo_D.sum() > 1.0 + 1e-12:
        raise InputError(
            f"--floors (with --min_floor {min_floor:g}) sum to {lo_D.sum():.6g} > 1, no mixture satisfies them; "
            "lower the floors"
        )
    if hi_D.sum() < 1.0 - 1e-12:
        raise InputError(
            f"upper bounds from --caps and repetition caps sum to {hi_D.sum():.6g} < 1, no mixture satisfies "
            "them; "
            "raise --caps or --max_epochs, add --domain_tokens, or lower --token_budget"
        )
    return Bounds(
        domains=domains, lo=lo_D, hi=hi_D, floor=floor_D, cap=cap_D, repetition_cap=rep_D,
        min_floor=float(min_floor), domain_tokens=tokens_D,
        token_budget=None if token_budget is None else float(token_budget),
        max_epochs=None if max_epochs is None else float(max_epochs),
    )
