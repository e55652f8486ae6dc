"""`config.compare`: which methods, seeds and grids a comparison runs, as typed values, and the workdir check."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from bimix_jax import atomic
from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions
from bimix_jax.online.spec import OnlineSpec
from bimix_jax.pipeline import compare_tuning

STATIC = ("uniform", "natural", "se", "ce", "je", "vne")
LAW_METHODS = ("bimix", "dml")
ONLINE = ("doremi", "aioli", "aioli_restricted", "online_bimix")
CONTROLS = ("aioli_static", "aioli_uniform_exploit")  # explain Aioli: one round; its probes with a uniform exploit
METHODS = STATIC + LAW_METHODS + ONLINE + CONTROLS
_RUN_SECTIONS = ("data", "model", "optim", "train", "online", "compare", "pipeline")


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # reported seeds: every method's final runs
    tuning_seed: int = 100  # every auxiliary run (proxies, references, priors, grids): never a reported seed
    restricted_fraction: float = 0.25  # restricted Aioli: prior runs' length and prior steps, fraction of budget
    final_eval_every: int = 100  # steps between validation evaluations of the final runs (and at the last step)
    equal_compute: float = 2.0  # uniform also trained for this many budgets (equal-compute view); <= 1 = off
    aioli_grid: str = ""  # ';'-separated points 'field=value,...' over online.aioli (compare_tuning.py)
    doremi_grid: str = ""  # likewise over online.doremi
    online_bimix_grid: str = ""  # likewise over online.online_bimix

    @classmethod
    def from_config(cls, section: Mapping) -> CompareSpec:
        section = dict(section)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise InputError(f"config.compare.{unknown[0]} is not a field; known: {', '.join(sorted(known))}")
        if "methods" in section:
            section["methods"] = tuple(proportions.canonical_name(m, field="compare.methods")
                                       for m in _names(section["methods"], "compare.methods"))
        if "seeds" in section:
            try:
                section["seeds"] = tuple(int(s) for s in _names(section["seeds"], "compare.seeds"))
            except ValueError:
                raise InputError("compare.seeds must be integers, like '0,1,2,3,4'") from None
        spec = cls(**section)
        bad = [m for m in spec.methods if m not in METHODS]
        if bad:
            raise InputError(f"compare.methods: {bad[0]!r} is unknown; choose from {', '.join(METHODS)}")
        if len(set(spec.methods)) != len(spec.methods) or len(set(spec.seeds)) != len(spec.seeds):
            raise InputError("compare.methods and compare.seeds must not repeat an entry")
        if not spec.methods or not spec.seeds:
            raise InputError("compare.methods and compare.seeds need at least one entry each")
        if "uniform" not in spec.methods:
            raise InputError("compare.methods must include 'uniform' (stratified sampling): every method is compared "
                             "with it")
        if spec.tuning_seed in spec.seeds:
            raise InputError(f"compare.tuning_seed={spec.tuning_seed} is a reported seed; choose a seed outside "
                             f"compare.seeds ({', '.join(map(str, spec.seeds))}): settings are never tuned on the "
                             "seeds that are reported")
        if not 0 < spec.restricted_fraction < 1:
            raise InputError(f"compare.restricted_fraction={spec.restricted_fraction} must lie in (0, 1)")
        if spec.final_eval_every < 1:
            raise InputError(f"compare.final_eval_every={spec.final_eval_every} must be >= 1")
        if spec.equal_compute < 0:
            raise InputError(f"compare.equal_compute={spec.equal_compute} must be >= 0 (<= 1 turns the view off)")
        if set(spec.methods) & set(LAW_METHODS) and len(set(spec.methods) & set(STATIC)) < 3:
            raise InputError("compare.methods: the law-based methods (bimix, dml) fit on the static methods' runs; "
                             "include at least 3 static methods")
        for kind in compare_tuning.GRID_KINDS:
            compare_tuning.parse_grid(getattr(spec, f"{kind}_grid"), kind, f"compare.{kind}_grid")
        return spec

    def check_domains(self, num_domains: int) -> None:
        n_static = len(set(self.methods) & set(STATIC))
        if "dml" in self.methods and n_static < num_domains + 1:
            raise InputError(f"compare.methods: dml fits the Data Mixing Law on the static methods' runs and needs at "
                             f"least {num_domains + 1} of them for {num_domains} domains (it has {n_static}); add "
                             "static methods or drop dml")

    def method_configs(self, online: OnlineSpec, num_domains: int, steps: int) -> dict[str, list]:
        """Every grid point's config per tunable method (the online section's setting when the grid is empty)."""
        out = {}
        for kind in compare_tuning.GRID_KINDS:
            field = f"compare.{kind}_grid"
            out[kind] = compare_tuning.point_configs(getattr(online, kind), compare_tuning.parse_grid(
                getattr(self, field.split(".")[1]), kind, field), num_domains, field)
        if "aioli_restricted" in self.methods:
            short = max(2, int(round(steps * self.restricted_fraction)))
            for k, a in enumerate(out["aioli"]):
                if a.sweeps * num_domains * a.probe_steps >= steps - short:
                    raise InputError(f"compare.restricted_fraction leaves too few steps after the prior for one Aioli "
                                     f"round (compare.aioli_grid point {k + 1}); lower it or the probe steps")
        return out


def _names(value: Any, field: str) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(str(p).strip() for p in parts if str(p).strip())
    if not out:
        raise InputError(f"{field} is empty; list at least one entry")
    return out


def check_workdir(workdir: str, cfg: dict, config_file: str, config_format: str) -> None:
    """InputError when `workdir` holds another comparison (naming the first differing field) or other files."""
    path = os.path.join(workdir, config_file)
    if not os.path.exists(path):
        if os.path.isdir(workdir) and set(os.listdir(workdir)) - {"data"}:
            raise InputError(f"workdir {workdir} is not empty and holds no {config_file}; give a new or empty "
                             "--workdir")
        return
    stored = atomic.read_json(path, what="comparison config")
    if not isinstance(stored, dict) or stored.get("format") != config_format:
        raise InputError(f"{path} is not a comparison config of this project; use another --workdir")
    old, new = stored["config"], atomic.to_jsonable(cfg)
    for section in _RUN_SECTIONS:
        a, b = old.get(section), new.get(section)
        if a != b:
            key = next((k for k in sorted(set(a or {}) | set(b or {})) if (a or {}).get(k) != (b or {}).get(k)), "")
            raise InputError(f"workdir {workdir} holds another comparison ({section}.{key}: "
                             f"{(a or {}).get(key)!r} there, {(b or {}).get(key)!r} now); rerun with the same config, "
                             "or use another --workdir")
