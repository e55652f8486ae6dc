"""`PipelineSpec`: the `pipeline` section of a pipeline config, typed and checked, and the workdir's config.

Every field is documented in `configs/pipeline_tiny.py`. Settings are checked here, before anything is
written: syntax and ranges at once (`PipelineSpec.from_config`), the fit window against the run's
evaluation steps (`check_fit_window`), and everything that needs the corpus's domains
(`check_domains`, after data preparation).

A workdir remembers its config in `pipeline.json`. Fields that decide the proxy runs (the data, model,
optim and train sections, and `RUN_FIELDS`) may not change: another config's runs are refused, naming
the field. The other pipeline fields (fit, objective, constraints, bootstrap, vmap) may change between
invocations; the stages that depend on them are recomputed (see `bimix_jax.pipeline.provenance.StageStore`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bimix_jax import atomic
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.laws.base import canonical_law_name
from bimix_jax.mixture import constraints, proportions
from bimix_jax.train.state import RunSpec

CANDIDATE_KEYWORDS = ("uniform", "natural", "se", "ce", "je", "vne")
CANDIDATE_ALIASES = {"baseline": "natural"}  # older name of a candidate, still read
OPTIMIZED = "optimized"  # the run of the recommended mixture
RUN_FIELDS = ("candidates", "extra_candidates", "entropy_temperature", "entropy_sequence_length", "vne_max_docs")
FIT_LOSSES = ("l2", "huber")
CONFIG_FILE = "pipeline.json"
CONFIG_FORMAT = "bimix_jax.pipeline_config"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# Names the optimizer's messages use for what the pipeline calls config fields.
_FLAG_NAMES = {"--floors": "pipeline.floors", "--caps": "pipeline.caps", "--min_floor": "pipeline.min_floor",
               "--max_epochs": "pipeline.max_epochs", "--weights": "pipeline.objective_weights",
               "--token_budget": "pipeline.target_step", "--domain_tokens": "the corpus's token counts"}


def _field_error(e: InputError) -> InputError:
    text = str(e)
    for flag, field in _FLAG_NAMES.items():
        text = text.replace(flag, field)
    return InputError(text)


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    candidates: str = "uniform,natural,se,ce,je,vne"
    extra_candidates: str = ""
    entropy_temperature: float = 1.0
    entropy_sequence_length: int = 0
    vne_max_docs: int = 1000
    noise_seeds: int = 0
    vmap: bool = False
    fit_min_step: int = 0
    fit_n_starts: int = 4
    fit_loss: str = "l2"
    fit_huber_delta: float = 0.05
    law: str = "bimix"  # bimix | dml | auto (chosen by leave-one-mixture-out CV before the last checkpoint)
    leave_one_out: bool = True
    target_step: int = 0
    objective_weights: str = ""
    min_floor: float = 0.01
    floors: str = ""
    caps: str = ""
    max_epochs: float = 0.0
    bootstrap: int = 64
    bootstrap_seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "law", canonical_law_name(self.law))
        if len(self.candidate_names) + len(self.extras) < 2:
            raise InputError(f"pipeline.candidates={self.candidates!r} with pipeline.extra_candidates="
                             f"{self.extra_candidates!r} gives {len(self.candidate_names) + len(self.extras)} "
                             "candidate(s); the law needs at least 2 mixtures: name e.g. uniform,natural,se,ce,je,vne")
        checks = [
            ("entropy_temperature", math.isfinite(self.entropy_temperature) and self.entropy_temperature > 0,
             "a finite number > 0 (the paper: 1)"),
            ("entropy_sequence_length", self.entropy_sequence_length == 0 or self.entropy_sequence_length >= 2,
             "0 (whole stream) or >= 2"),
            ("vne_max_docs", self.vne_max_docs >= 1, ">= 1"),
            ("noise_seeds", 0 <= self.noise_seeds <= 100, "in [0, 100] (0: seed-to-seed spread not measured)"),
            ("fit_min_step", self.fit_min_step >= 0, ">= 0"),
            ("fit_n_starts", self.fit_n_starts >= 1, ">= 1"),
            ("fit_loss", self.fit_loss in FIT_LOSSES, f"one of {', '.join(FIT_LOSSES)}"),
            ("fit_huber_delta", math.isfinite(self.fit_huber_delta) and self.fit_huber_delta > 0, "> 0"),
            ("law", self.law in ("bimix", "dml", "auto"), "one of bimix, dml, auto"),
            ("target_step", self.target_step >= 0, ">= 0 (0: the proxies' train.steps)"),
            ("min_floor", math.isfinite(self.min_floor) and 0 < self.min_floor < 1,
             "in (0, 1/number of domains): BiMix's loss diverges at a zero proportion"),
            ("max_epochs", math.isfinite(self.max_epochs) and self.max_epochs >= 0, ">= 0 (0: no repetition cap)"),
            ("bootstrap", 0 <= self.bootstrap <= 100_000, "in [0, 100000] (0: no bootstrap)"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise InputError(f"pipeline.{name}={getattr(self, name)!r} must be {what}; fix the config")
        for name in ("objective_weights", "floors", "caps"):
            self.domain_values(name)

    @classmethod
    def from_config(cls, section: Mapping) -> PipelineSpec:
        """From `config.pipeline` (unknown fields are refused)."""
        values = dict(section)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"config.pipeline.{unknown[0]} is not a pipeline field; remove it")
        for name, value in values.items():
            kind = type(cls.__dataclass_fields__[name].default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                values[name] = float(value)
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise InputError(f"pipeline.{name}={value!r} must be of type {kind.__name__}; fix the config")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def candidate_names(self) -> tuple[str, ...]:
        names = canonical_candidates(self.candidates)
        for n in names:
            if n not in CANDIDATE_KEYWORDS:
                raise InputError(f"pipeline.candidates: {n!r} is not a candidate; choose from "
                                 f"{', '.join(CANDIDATE_KEYWORDS)} (or add it to pipeline.extra_candidates)")
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup:
            raise InputError(f"pipeline.candidates names {dup!r} twice; name each candidate once")
        return names

    @property
    def extras(self) -> tuple[tuple[str, str], ...]:
        """(name, mixture text) of each extra candidate, syntax checked."""
        out: list[tuple[str, str]] = []
        for item in (s.strip() for s in self.extra_candidates.split(";")):
            if not item:
                continue
            name, sep, text = item.partition(":")
            name = name.strip()
            if not sep or not _NAME.fullmatch(name):
                raise InputError(f"pipeline.extra_candidates: {item!r} is not 'name:domain=weight,...' with a name "
                                 "of letters, digits, '_', '-' or '.'; fix it")
            taken = (*CANDIDATE_KEYWORDS, OPTIMIZED, "data", *(n for n, _ in out))
            if name in taken or name.startswith("."):
                raise InputError(f"pipeline.extra_candidates: the name {name!r} is taken; choose another")
            weights = proportions.parse(text, field=f"pipeline.extra_candidates ({name})")
            if isinstance(weights, dict):
                proportions.check_weights(weights, tuple(weights), field=f"pipeline.extra_candidates ({name})")
            out.append((name, text.strip()))
        return tuple(out)

    def domain_values(self, name: str) -> dict[str, float] | None:
        """`objective_weights`, `floors` or `caps` as {domain: value} (None when empty)."""
        return constraints.parse_domain_values(getattr(self, name), f"pipeline.{name}")

    def resolved_target_step(self, run: RunSpec) -> int:
        return self.target_step or run.train.steps

    def check_fit_window(self, run: RunSpec) -> list[int]:
        """The evaluation steps the law is fitted on; InputError when too few for BiMix and its held-out test."""
        t = run.train
        steps = sorted({*range(t.eval_every, t.steps + 1, t.eval_every), t.steps})
        used = [s for s in steps if s >= self.fit_min_step]
        if len(used) < 4:
            raise InputError(
                f"pipeline.fit_min_step={self.fit_min_step} leaves {len(used)} evaluation steps ({used}) of "
                f"train.eval_every={t.eval_every} up to train.steps={t.steps}; BiMix needs 3 and its last-step "
                "test 4: lower pipeline.fit_min_step or evaluate more often")
        return used

    def check_domains(self, domains: Sequence[str], token_counts: Mapping[str, int], tokens_per_step: int,
                      run: RunSpec) -> constraints.Bounds:
        """Checks the domain-valued fields against the corpus; returns the optimizer's feasible set."""
        domains = tuple(domains)
        if len(domains) < 2:
            raise InputError(f"the corpus has {len(domains)} domain; a mixture needs at least 2 (data.domains)")
        constraints.check_values(self.domain_values("objective_weights"), domains, "pipeline.objective_weights",
                                 what="eval domain")
        weights = self.domain_values("objective_weights")
        if weights and sum(weights.values()) <= 0:
            raise InputError("pipeline.objective_weights are all zero; give at least one domain a positive weight")
        for name in ("floors", "caps"):
            constraints.check_values(self.domain_values(name), domains, f"pipeline.{name}", high=1.0)
        budget = float(self.resolved_target_step(run) * tokens_per_step)
        try:
            return constraints.make_bounds(
                domains, floors=self.domain_values("floors"), caps=self.domain_values("caps"),
                domain_tokens={d: float(token_counts[d]) for d in domains}, token_budget=budget,
                max_epochs=self.max_epochs or None, min_floor=self.min_floor)
        except InputError as e:
            raise _field_error(e) from None


def canonical_candidates(text: str) -> tuple[str, ...]:
    """The candidate names of `pipeline.candidates`, older names replaced by today's (with a warning)."""
    return tuple(proportions.canonical_name(n, field="pipeline.candidates", aliases=CANDIDATE_ALIASES)
                 for n in str(text).split(",") if n.strip())


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _run_defining(config: Mapping) -> dict[str, Any]:
    """The fields that decide the runs, with defaults filled in (so a field added to the configs with its default
    does not make an existing workdir look like another config's)."""
    config = atomic.to_jsonable(config)
    flat = {}
    if all(k in config for k in ("model", "optim", "train")):
        flat.update(_flatten({"model": {}, "optim": {}, "train": {}, **RunSpec.from_config(config).to_dict()}))
    if "data" in config:
        flat.update(_flatten({"data": DataSpec.from_config(config["data"]).to_dict()}))
    flat.update(_flatten({k: v for k, v in config.items() if k not in ("model", "optim", "train", "data")}))
    if isinstance(flat.get("pipeline.candidates"), str):  # a workdir written with older candidate names
        flat["pipeline.candidates"] = ",".join(canonical_candidates(flat["pipeline.candidates"]))
    free = {f"pipeline.{f.name}" for f in dataclasses.fields(PipelineSpec) if f.name not in RUN_FIELDS}
    return {k: v for k, v in flat.items() if k not in free}


def check_workdir_config(workdir: str, config: Mapping) -> tuple[bool, list[str]]:
    """Whether `workdir` already holds this pipeline, and the free fields changed since its last invocation.

    InputError when it holds another config's runs (naming the first differing field) or files that are
    not a pipeline's.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        # Only prepared data may precede pipeline.json (a first invocation killed while preparing it).
        if os.path.isdir(workdir) and set(os.listdir(workdir)) - {"data"}:
            raise InputError(f"workdir {workdir} is not empty and holds no {CONFIG_FILE}; give a new or empty "
                             "--workdir for a pipeline")
        return False, []
    stored = atomic.read_json(path, what="pipeline config")
    if not isinstance(stored, dict) or stored.get("format") != CONFIG_FORMAT:
        raise InputError(f"{path} is not a pipeline config of this project; use another --workdir")
    old, new = _run_defining(stored["config"]), _run_defining(config)
    for key in sorted(set(old) | set(new)):
        if old.get(key, "(absent)") != new.get(key, "(absent)"):
            raise InputError(
                f"workdir {workdir} holds the runs of another config ({key}: {old.get(key, '(absent)')!r} there, "
                f"{new.get(key, '(absent)')!r} now); rerun with the same config to continue it, or use another "
                "--workdir (or delete this one) to start fresh")
    old_all, new_all = _flatten(stored["config"]), _flatten(atomic.to_jsonable(config))
    changed = [k for k in sorted(set(old_all) | set(new_all)) if old_all.get(k) != new_all.get(k)]
    return True, changed


def write_workdir_config(workdir: str, config: Mapping, history: list[dict]) -> None:
    atomic.write_json(os.path.join(workdir, CONFIG_FILE),
                      {"format": CONFIG_FORMAT, "config": atomic.to_jsonable(config), "invocations": history})


def read_history(workdir: str) -> list[dict]:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return []
    return list(atomic.read_json(path, what="pipeline config").get("invocations") or [])
