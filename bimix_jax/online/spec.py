"""`config.online`: which mixing method a run follows and its settings, as typed values.

    online.method           'static' (the config's fixed `mixture`), 'aioli', 'doremi' or 'online_bimix'
    online.feedback_tokens  tokens per domain of the methods' feedback set (from the selection split when the
                            corpus has one, else carved off the end of the training split)
    online.aioli.*          `AioliConfig` fields (ema < 0 means no EMA; prior '' means none)
    online.doremi.*         `DoReMiConfig` fields
    online.online_bimix.*   `OnlineBiMixConfig` fields

DoReMi needs a reference model's per-token losses, which come from a reference run
(`experiments/compare_methods.py` trains it); the train binary offers 'static', 'aioli' and 'online_bimix'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions
from bimix_jax.online import aioli, bimix_online, doremi
from bimix_jax.online.schedule import MixingMethod

METHODS = ("static", "aioli", "doremi", "online_bimix")
_SECTIONS = ("method", "feedback_tokens", "aioli", "doremi", "online_bimix")


def _section(config: Mapping, name: str, kind) -> dict:
    section = dict(config.get(name, {}) or {})
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise InputError(f"config.online.{name}.{unknown[0]} is not a field; known: {', '.join(sorted(known))}")
    return section


@dataclasses.dataclass(frozen=True)
class OnlineSpec:
    method: str = "static"
    feedback_tokens: int = 0
    aioli: aioli.AioliConfig = aioli.AioliConfig()
    doremi: doremi.DoReMiConfig = doremi.DoReMiConfig()
    online_bimix: bimix_online.OnlineBiMixConfig = bimix_online.OnlineBiMixConfig()

    @classmethod
    def from_config(cls, config: Mapping | None) -> OnlineSpec:
        if not config:
            return cls()
        config = dict(config)
        unknown = sorted(set(config) - set(_SECTIONS))
        if unknown:
            raise InputError(f"config.online.{unknown[0]} is not a field; known: {', '.join(_SECTIONS)}")
        method = str(config.get("method", "static"))
        if method not in METHODS:
            raise InputError(f"online.method={method!r} is unknown; choose one of {', '.join(METHODS)}")
        feedback = int(config.get("feedback_tokens", 0))
        if feedback < 0:
            raise InputError(f"online.feedback_tokens={feedback} must be >= 0")
        a = _section(config, "aioli", aioli.AioliConfig)
        if "ema" in a and a["ema"] is not None and a["ema"] < 0:
            a["ema"] = None
        if "prior" in a:
            a["prior"] = _prior(a["prior"])
        spec = cls(method, feedback, aioli.AioliConfig(**a),
                   doremi.DoReMiConfig(**_section(config, "doremi", doremi.DoReMiConfig)),
                   bimix_online.OnlineBiMixConfig(**_section(config, "online_bimix", bimix_online.OnlineBiMixConfig)))
        try:
            spec.doremi.check()
        except ValueError as e:
            raise InputError(f"online.{e}") from None
        return spec

    def build(self, num_domains: int, *, prior: Sequence[float] | None = None) -> MixingMethod | None:
        """The method object (None for static runs); `InputError` names a bad field. DoReMi's measurement needs a
        reference model, which the comparison supplies (`bimix_jax.pipeline.compare_doremi`)."""
        if self.method == "static":
            return None
        if self.method == "doremi":
            raise InputError("online.method='doremi' needs a reference model's per-token losses; use "
                             "experiments/compare_methods.py, which trains the reference first")
        if self.method == "online_bimix":
            try:
                self.online_bimix.check(num_domains)
            except ValueError as e:
                raise InputError(f"online.{e}") from None
            return bimix_online.OnlineBiMix(self.online_bimix)
        cfg = self.aioli if prior is None else dataclasses.replace(self.aioli, prior=tuple(float(x) for x in prior))
        if cfg.prior is not None and len(cfg.prior) != num_domains:
            raise InputError(f"online.aioli.prior has {len(cfg.prior)} weights for {num_domains} domains")
        try:
            cfg.check(num_domains)
        except ValueError as e:
            raise InputError(f"online.{e}") from None
        return aioli.Aioli(cfg)


def _prior(value) -> tuple[float, ...] | None:
    if value in (None, "", ()):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        p = np.array([float(x) for x in parts])
    except ValueError:
        raise InputError(f"online.aioli.prior={value!r} must be comma-separated weights in domain order") from None
    return tuple(proportions.check_array(p, p.size, field="online.aioli.prior").tolist())
