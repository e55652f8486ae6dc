"""The comparison's tuning: each online method's settings chosen from a small grid on the selection split.

A grid is a config string of `;`-separated points, each `field=value,...` over the method's config fields
(`online.aioli`, `online.doremi`, `online.online_bimix`); a point overrides the online section's settings.
Every point is trained at the tuning seed (never a reported seed) in the selection view
(`bimix_jax.pipeline.compare_data`) and scored by its average selection-split loss at the last step
(DoReMi: the point's proxy gives its time-averaged weights, and a fresh run on them is scored). The point with
the lowest score is chosen and frozen for the reported runs. An empty grid keeps the online section's setting
untuned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.online import aioli, bimix_online, doremi

GRID_KINDS = {"aioli": aioli.AioliConfig, "doremi": doremi.DoReMiConfig, "online_bimix": bimix_online.OnlineBiMixConfig}
_TUNABLE = {"aioli": ("round_steps", "sweeps", "probe_steps", "one_hot_factor", "eta", "ema"),
            "doremi": ("eta", "smoothing", "update_every"),
            "online_bimix": ("round_steps", "explore_steps", "tilt", "min_step", "rate", "floor")}
SHORT = {"round_steps": "K", "sweeps": "R", "probe_steps": "S", "one_hot_factor": "f", "update_every": "every"}


def parse_grid(text: str, kind: str, field: str) -> tuple[dict[str, Any], ...]:
    """The points of a grid string (see the module docstring); InputError names `field` and the bad entry."""
    points = []
    for k, entry in enumerate(p for p in str(text).split(";") if p.strip()):
        point = {}
        for item in (i for i in entry.split(",") if i.strip()):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or key not in _TUNABLE[kind]:
                raise InputError(f"{field}: point {k + 1} ({entry.strip()!r}) sets {key!r}; write 'field=value,...' "
                                 f"with fields among {', '.join(_TUNABLE[kind])}")
            default = next(f.default for f in dataclasses.fields(GRID_KINDS[kind]) if f.name == key)
            try:
                v: Any = int(value) if isinstance(default, int) else float(value)
            except ValueError:
                raise InputError(f"{field}: point {k + 1} sets {key}={value!r}, not a number") from None
            if key == "ema":
                v = None if v < 0 else v
            point[key] = v
        if point in points:
            raise InputError(f"{field}: point {k + 1} ({entry.strip()!r}) repeats an earlier point")
        points.append(point)
    return tuple(points)


def point_configs(base, points: Sequence[dict[str, Any]], num_domains: int, field: str) -> list:
    """The method config of every point (the base config when the grid is empty), each checked."""
    configs = [dataclasses.replace(base, **p) for p in points] or [base]
    for k, c in enumerate(configs):
        try:
            c.check(num_domains) if isinstance(c, (aioli.AioliConfig, bimix_online.OnlineBiMixConfig)) else c.check()
        except ValueError as e:
            where = f"{field}: point {k + 1}" if points else "online (no grid: the online section's setting)"
            raise InputError(f"{where}: {e}") from None
    return configs


def label(config, base) -> str:
    """A short label of a config: the tunable fields, 'ema=off' for no EMA."""
    kind = next(k for k, v in GRID_KINDS.items() if isinstance(config, v))
    parts = []
    for name in _TUNABLE[kind]:
        v = getattr(config, name)
        shown = "off" if (name == "ema" and v is None) else f"{v:g}" if isinstance(v, float) else str(v)
        parts.append(f"{SHORT.get(name, name)}={shown}")
    return " ".join(parts)


@dataclasses.dataclass
class Tuned:
    """A method's grid, each point's selection score, and the chosen point."""

    kind: str
    configs: list
    scores: list[float]
    extra: list[dict] = dataclasses.field(default_factory=list)  # per point (DoReMi: the proxy's weights)

    @property
    def chosen(self) -> int:
        return int(np.argmin(self.scores)) if self.scores else 0

    @property
    def config(self):
        return self.configs[self.chosen]

    def table(self, base, domains: Sequence[str]) -> dict[str, Any]:
        return {"kind": self.kind, "tuned": len(self.configs) > 1, "chosen": self.chosen,
                "default": dataclasses.asdict(base),
                "points": [{"label": label(c, base), "config": dataclasses.asdict(c),
                            "selection_loss": s, **(self.extra[k] if k < len(self.extra) else {})}
                           for k, (c, s) in enumerate(zip(self.configs, self.scores + [None] *
                                                          (len(self.configs) - len(self.scores))))]}


def tune(kind: str, configs: list, score: Callable[[int, Any], tuple[float, dict]]) -> Tuned:
    """Scores every point (`score(k, config) -> (average selection loss, extra)`); one point is not scored."""
    if len(configs) == 1:
        return Tuned(kind, configs, [])
    scores, extra = [], []
    for k, c in enumerate(configs):
        s, e = score(k, c)
        scores.append(float(s))
        extra.append(e)
    return Tuned(kind, configs, scores, extra)
