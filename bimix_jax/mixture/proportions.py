"""One home for a training mixture: parse, check (one tolerance), name, and convert it.

A mixture is D proportions over the training domains, finite, >= 0 and summing to 1 within `SUM_TOLERANCE`.
Users write one as text:

* `uniform`: equal shares (`stratified` is accepted as another name for it, as the Aioli paper calls it);
* `natural`: each domain's share of the training tokens;
* any other name of `named` (the pipeline passes its entropy mixtures `se`, `ce`, `je`, `vne`);
* `domain=weight,...`: domains not named get 0; weights must sum to 1 unless `normalize=True`;
* a `.json` file: the optimizer's report or the pipeline's `mixture.json` (its `mixture`), or an exported
  `weights.json` (`{domain: weight}`), so a recommended mixture goes back into training as it is.

Every caller (configs, flags, loss tables, online methods, the pipeline, the comparison) goes through here, so a
mixture means the same thing and fails with the same one-line `InputError` everywhere. This module imports only
`bimix_jax.errors` (no JAX), so the data and loss-table layers below `mixture/` use it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from bimix_jax.errors import InputError

# |sum - 1| allowed for proportions given by a user, read from a table or computed by a method.
SUM_TOLERANCE = 1e-6
UNIFORM, NATURAL = "uniform", "natural"
KEYWORDS = (UNIFORM, NATURAL)
# Older or other names accepted on input, with the one they stand for.
ALIASES = {"stratified": UNIFORM}
FORMS = "write it like 'code=0.3,prose=0.7', 'uniform', 'natural' or a mixture .json file"


_WARNED: set[tuple[str, str]] = set()


def canonical_name(name: str, *, field: str = "mixture", aliases: Mapping[str, str] | None = None) -> str:
    """`name` with another or older name replaced by the one used here (a deprecation line, once per field and
    name)."""
    table = {**ALIASES, **(aliases or {})}
    key = str(name).strip()
    if key.lower() in table:
        new = table[key.lower()]
        if (field, key) not in _WARNED:
            _WARNED.add((field, key))
            logging.warning("%s: %r is read as %r, the name used here; write %r", field, key, new, new)
        return new
    return key


def parse(text: str, *, field: str = "mixture") -> str | dict[str, float]:
    """`'uniform'`, `'natural'`, another mixture name, or `{domain: weight}` from `'code=0.3,prose=0.7'`.

    Syntax only (no corpus needed): a name is returned lowercased; weights are numbers, each domain once.
    """
    text = str(text).strip()
    if not text:
        raise InputError(f"{field} is empty; {FORMS}")
    if text.endswith(".json"):
        return _from_file(text, field)
    if "=" not in text and "," not in text:
        if not text.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise InputError(f"{field}: {text!r} is not a mixture; {FORMS}")
        return canonical_name(text.lower(), field=field)
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"{field}: {item.strip()!r} is not domain=weight; {FORMS}")
        if name in out:
            raise InputError(f"{field}: domain {name!r} appears twice; give each domain one weight")
        try:
            out[name] = float(value)
        except ValueError:
            raise InputError(f"{field}: weight of {name!r} is {value.strip()!r}, not a number; {FORMS}") from None
    return out


def _from_file(path: str, field: str) -> dict[str, float]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{field}: mixture file {path} does not exist; check the path") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{field}: mixture file {path} cannot be read ({e}); give a mixture.json or weights.json"
                         ) from None
    if isinstance(obj, dict) and isinstance(obj.get("mixture"), dict):
        obj = obj["mixture"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in obj.values()):
        raise InputError(f"{field}: {path} holds no mixture ({{domain: weight}}, or a report with a 'mixture'); "
                         "give the optimizer's mixture.json or its exported weights.json")
    return {str(k): float(v) for k, v in obj.items()}


def check_weights(weights: Mapping[str, float], domains: Sequence[str], *, normalize: bool = False,
                  field: str = "mixture") -> np.ndarray:
    """`{domain: weight}` -> [D] float64 proportions in `domains` order (missing domains get 0).

    Unknown domains, weights that are not finite numbers >= 0, an all-zero mixture, or (unless `normalize`) a
    sum off 1 by more than `SUM_TOLERANCE` raise a one-line `InputError` naming `field`.
    """
    domains = tuple(domains)
    unknown = [d for d in weights if d not in domains]
    if unknown:
        raise InputError(f"{field}: domain {unknown[0]!r} is not in the corpus (domains: {', '.join(domains)}); "
                         "fix the mixture")
    r_D = np.zeros(len(domains))
    for i, d in enumerate(domains):
        w = weights.get(d, 0.0)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise InputError(f"{field}: weight of {d!r} is {w!r}, not a number; {FORMS}") from None
        if not math.isfinite(w) or w < 0:
            raise InputError(f"{field}: weight of {d!r} is {w}; weights must be finite and >= 0")
        r_D[i] = w
    missing = [d for d in domains if d not in weights]
    if missing:
        logging.info("%s: domains %s are not named and get weight 0", field, ", ".join(missing))
    return check_sum(r_D, normalize=normalize, field=field)


def check_sum(r_D: np.ndarray, *, normalize: bool = False, field: str = "mixture") -> np.ndarray:
    """Weights >= 0 -> proportions: refuses an all-zero vector, and a sum off 1 unless `normalize`."""
    total = float(np.sum(r_D))
    if total <= 0:
        raise InputError(f"{field}: every weight is 0; give at least one domain a positive weight")
    if abs(total - 1.0) > SUM_TOLERANCE:
        if not normalize:
            raise InputError(f"{field}: weights sum to {total:.9g}, not 1 (within {SUM_TOLERANCE:g}); fix them or "
                             "ask for normalisation (normalize_mixture=True, or --normalize)")
        logging.info("%s: weights summed to %.9g; renormalised to 1", field, total)
    return np.asarray(r_D, np.float64) / total


def check_array(p_D, num_domains: int, *, field: str = "mixture") -> np.ndarray:
    """A [D] proportions vector: finite, >= 0, summing to 1 within `SUM_TOLERANCE`; else `InputError`."""
    try:
        r_D = np.asarray(p_D, np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{field}: {p_D!r} is not {num_domains} numbers") from None
    if (r_D.shape != (num_domains,) or not np.all(np.isfinite(r_D)) or r_D.min() < 0
            or abs(r_D.sum() - 1) > SUM_TOLERANCE):
        raise InputError(f"{field}: proportions {r_D.tolist()} must be {num_domains} weights >= 0 summing to 1 "
                         f"(within {SUM_TOLERANCE:g})")
    return r_D


def on_simplex(p_D) -> bool:
    """Whether `p_D` is a proportions vector (1-D, finite, >= -tolerance, summing to 1 within tolerance)."""
    r_D = np.asarray(p_D, np.float64)
    return bool(r_D.ndim == 1 and r_D.size and np.all(np.isfinite(r_D)) and r_D.min() >= -SUM_TOLERANCE
                and abs(r_D.sum() - 1) <= SUM_TOLERANCE)


def renormalize(p_D) -> np.ndarray:
    """Clips negatives from rounding and rescales to sum exactly 1 (float64)."""
    r_D = np.maximum(np.asarray(p_D, np.float64), 0.0)
    return r_D / r_D.sum()


def uniform(num_domains: int) -> np.ndarray:
    return np.full(num_domains, 1.0 / num_domains)


def natural(token_counts: Mapping[str, int | float], domains: Sequence[str]) -> np.ndarray:
    """Each domain's share of the training tokens, in `domains` order."""
    counts = np.array([float(token_counts[d]) for d in domains])
    if counts.sum() <= 0:
        raise InputError("the natural mixture needs training tokens; every domain is empty")
    return counts / counts.sum()


def resolve(text: str, domains: Sequence[str], *, named: Mapping[str, np.ndarray] | None = None,
            token_counts: Mapping[str, int | float] | None = None, normalize: bool = False,
            field: str = "mixture") -> np.ndarray:
    """The [D] proportions meant by mixture text: `uniform`, `natural` (needs `token_counts`), a name in
    `named`, or `domain=weight,...`."""
    parsed = parse(text, field=field)
    if isinstance(parsed, dict):
        return check_weights(parsed, domains, normalize=normalize, field=field)
    if named and parsed in named:
        return check_array(named[parsed], len(domains), field=field)
    if parsed == UNIFORM:
        return uniform(len(domains))
    if parsed == NATURAL and token_counts is not None:
        return natural(token_counts, domains)
    known = [*KEYWORDS, *(n for n in (named or {}) if n not in KEYWORDS)]
    raise InputError(f"{field}: {parsed!r} is not a mixture name here (known: {', '.join(known)}); {FORMS}")


def precheck(text: str, domains: Sequence[str] | None, *, normalize: bool = False, field: str = "mixture") -> None:
    """Checks mixture text before any data exists: syntax, and weights against `domains` when they are known
    (else against the names it gives)."""
    parsed = parse(text, field=field)
    if isinstance(parsed, dict):
        check_weights(parsed, tuple(domains) if domains else tuple(parsed), normalize=normalize, field=field)
    elif parsed not in KEYWORDS:
        raise InputError(f"{field}: {parsed!r} is not a mixture name here (known: {', '.join(KEYWORDS)}); {FORMS}")


def to_dict(r_D, domains: Sequence[str]) -> dict[str, float]:
    return {d: float(p) for d, p in zip(domains, np.asarray(r_D, np.float64).tolist())}


def to_array(mixture: Mapping[str, float], domains: Sequence[str], *, field: str = "mixture") -> np.ndarray:
    """`{domain: p}` covering every domain -> [D] float64 in `domains` order (checked)."""
    missing = [d for d in domains if d not in mixture]
    if missing:
        raise InputError(f"{field} lacks domains {', '.join(missing)}; give every training domain a proportion")
    return check_array([float(mixture[d]) for d in domains], len(domains), field=field)


def describe(r_D, domains: Sequence[str]) -> str:
    return ", ".join(f"{d}={p:.4g}" for d, p in zip(domains, np.asarray(r_D).tolist()))
