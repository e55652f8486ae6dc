"""A mixture in the forms other training stacks take.

* `weights_json`: `{domain: weight}` in training-domain order (this project's sampler, big_vision-style
  `config.input.data`, levanter `train_weights`).
* `megatron_blend`: Megatron-LM's `--data-path` blend, `"w1 prefix1 w2 prefix2 ..."`. Each prefix is
  `path_template.format(domain=d)`; the default template `{domain}_text_document` is the name Megatron's
  `preprocess_data.py` gives a `.bin/.idx` pair, so pass e.g. `/data/pile/{domain}_text_document`.
  Megatron normalises the weights; domains with weight 0 are left out (nothing to sample).
* `sampling_weights`: the `weights` list, in the given domain order, for
  `tf.data.Dataset.sample_from_datasets(datasets, weights=...)` and `grain.MapDataset.mix(datasets,
  weights=...)`; build `datasets` in the same order.

Weights are rounded to `decimals` places by largest remainder, so the printed weights sum to exactly 1 at
that precision and no positive weight prints as 0 (as long as it is >= 10^-decimals).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from bimix_jax import atomic
from bimix_jax.errors import InputError

DEFAULT_TEMPLATE = "{domain}_text_document"
DEFAULT_DECIMALS = 6


def round_to_sum(r_D: np.ndarray, decimals: int = DEFAULT_DECIMALS) -> np.ndarray:
    """Rounds non-negative weights to `decimals` places so that they still sum to 1 (largest remainder)."""
    r_D = np.clip(np.asarray(r_D, dtype=np.float64), 0.0, None)
    r_D = r_D / r_D.sum()
    unit = 10**decimals
    scaled = r_D * unit
    units = np.floor(scaled).astype(np.int64)
    short = unit - int(units.sum())
    order = np.argsort(-(scaled - units), kind="stable")
    units[order[:short]] += 1
    return units / unit


def check_template(path_template: str) -> None:
    try:
        path_template.format(domain="x")
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(
            f"--megatron_template {path_template!r} is not a valid template ({e}); use {{domain}} as the only "
            "field"
        ) from None
    if "{domain}" not in path_template:
        raise InputError(f"--megatron_template {path_template!r} must contain {{domain}}; e.g. "
                         f"{DEFAULT_TEMPLATE}")


def weights_json(mixture: Mapping[str, float], decimals: int = DEFAULT_DECIMALS) -> dict[str, float]:
    domains = list(mixture)
    rounded = round_to_sum(np.array([mixture[d] for d in domains]), decimals)
    return {d: float(w) for d, w in zip(domains, rounded)}


def megatron_blend(
    mixture: Mapping[str, float], path_template: str = DEFAULT_TEMPLATE, decimals: int = DEFAULT_DECIMALS
) -> str:
    check_template(path_template)
    parts = []
    for d, w in weights_json(mixture, decimals).items():
        if w > 0:
            parts.append(f"{w:.{decimals}f} {path_template.format(domain=d)}")
    return " ".join(parts)


def sampling_weights(
    mixture: Mapping[str, float], domains: Sequence[str] | None = None, decimals: int = DEFAULT_DECIMALS
) -> list[float]:
    """Weights in `domains` order (default: the mixture's order); every mixture domain must be listed."""
    domains = list(mixture) if domains is None else list(domains)
    if sorted(domains) != sorted(mixture):
        raise InputError(f"domain order {domains} does not list the mixture's domains {list(mixture)}; fix it")
    w = weights_json(mixture, decimals)
    return [w[d] for d in domains]


def export_all(
    mixture: Mapping[str, float], path_template: str = DEFAULT_TEMPLATE, decimals: int = DEFAULT_DECIMALS
) -> dict:
    """All forms in one JSON-able dict (the `export` section of a mixture report)."""
    return {
        "weights": weights_json(mixture, decimals),
        "megatron_blend": megatron_blend(mixture, path_template, decimals),
        "megatron_template": path_template,
        "sampling_weights": {"domains": list(mixture), "weights": sampling_weights(mixture, None, decimals)},
    }


def write_exports(directory: str | os.PathLike, export: Mapping) -> list[str]:
    """Writes `weights.json`, `megatron_blend.txt` and `sampling_weights.json` into `directory`."""
    directory = os.fspath(directory)
    paths = [os.path.join(directory, n) for n in ("weights.json", "megatron_blend.txt", "sampling_weights.json")]
    atomic.write_json(paths[0], export["weights"])
    atomic.write_text(paths[1], export["megatron_blend"] + "\n")
    atomic.write_json(paths[2], export["sampling_weights"])
    return paths
