"""Helpers shared by the config files (`get_config(arg)` in each `configs/*.py`)."""

from __future__ import annotations

import ml_collections

from bimix_jax.data.spec import DataSpec


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config argument like `'runlocal,steps=200'` into typed values.

    `--config=configs/x.py:runlocal,steps=200` passes `'runlocal,steps=200'` to `get_config`. Every key
    must be in `defaults`, whose types decide how a value is parsed; a bare key sets a bool to True.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is unknown; known: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("", "1", "true", "yes")
        elif value == "":
            raise ValueError(f"config argument {key!r} needs a value, like {key}={default}")
        else:
            out[key] = type(default)(value)
    return out


def data_config(**overrides) -> ml_collections.ConfigDict:
    """`config.data`: exactly the `DataSpec` fields (meaning and unit of each: `bimix_jax/data/spec.py`).

    Starts from the `DataSpec` defaults; `overrides` must name existing fields.
    """
    fields = DataSpec().to_dict()
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"data field {unknown[0]!r} is unknown; known: {', '.join(fields)}")
    return ml_collections.ConfigDict({**fields, **overrides})
