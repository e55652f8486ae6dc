"""The mixing-law interface: parameters, predict, fit; and `FittedLaw`, the serialized result.

A *law* maps a training mixture `r_D` (proportions over the D training domains) and a training step `s`
to the predicted validation loss of each of E evaluation domains. Laws know nothing of training; the
optimizer only needs `FittedLaw.predict`, which is pure JAX and differentiable with respect to both
the proportions and the parameters (`Law.predict(params, r_D, s)`).

Parameters are a dict of arrays whose leading axis is the eval domain (`[E]` or `[E, D]`), stored in
their natural (constrained) units so that a fit file is readable. Each law documents its parameters.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bimix_jax import atomic
from bimix_jax.errors import InputError

if TYPE_CHECKING:
    from bimix_jax.laws.levenberg_marquardt import SolverOptions
    from bimix_jax.loss_table import LossTable

FIT_FILE_FORMAT = "bimix_jax.fitted_law"


class Law(abc.ABC):
    """A family of mixing laws over fixed training and evaluation domains."""

    name: ClassVar[str]  # registry key, e.g. 'bimix'
    version: ClassVar[int] = 1  # bump when the meaning of the parameters changes
    # Whether predictions depend on the step (False: the law is fitted at one step, see FittedLaw.target_step).
    uses_step: ClassVar[bool] = True

    def __init__(self, train_domains: Sequence[str], eval_domains: Sequence[str]):
        self.train_domains = tuple(train_domains)
        self.eval_domains = tuple(eval_domains)
        for what, names in (("train", self.train_domains), ("eval", self.eval_domains)):
            dup = next((d for i, d in enumerate(names) if d in names[:i]), None)
            if dup is not None:
                raise InputError(f"{what} domain {dup!r} is listed twice; list each domain once (refit with "
                                 "experiments.fit_law if this came from a fit file)")

    @abc.abstractmethod
    def predict(self, params: Mapping[str, jax.Array], r_D: jax.Array, s: jax.Array) -> jax.Array:
        """Predicted loss of every eval domain, shape [E], at proportions r_D [D] and step s (scalar).

        Pure and traceable: jit, vmap and grad (w.r.t. `params` and `r_D`) must work.
        """

    def check_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Raises InputError if `params` do not have this law's names and shapes (override to check more)."""

    def check_inputs(self, r_D: np.ndarray, s: np.ndarray) -> None:
        """Raises InputError for concrete inputs the law cannot predict at (override; traced inputs skip it)."""

    def predictable(self, r_ND: np.ndarray, eval_domain: str) -> np.ndarray:
        """Which mixtures [N, D] the law can predict `eval_domain` at, [N] bool (default: all)."""
        return np.ones(np.shape(r_ND)[0], dtype=bool)

    # Fitting hook, used by the generic fitter `bimix_jax.laws.fit` (which knows no particular law).
    def fit_problem(self, table: LossTable, options: SolverOptions, **law_options: Any) -> FitProblem:
        """Turns a loss table into one curve fit per eval domain (see `FitProblem`)."""
        raise InputError(f"law {self.name!r} cannot be fitted from a loss table; choose a fittable law")


@dataclasses.dataclass(frozen=True, eq=False)
class FitProblem:
    """What a law hands the generic fitter: one independent curve fit per eval domain.

    `model` is a `bimix_jax.laws.levenberg_marquardt.CurveModel` (hashable; log-loss residuals from an unconstrained
    parameter vector, and a start generator), `x[e]`/`logy[e]`/`runs[e]` are the rows of eval domain e (features
    [N_e, F], log loss [N_e], run id [N_e]); `to_params` maps unconstrained parameters [..., E, P] to
    the law's natural parameters (leading axes kept); `check_rows(e, keep_N)` says why the rows kept by
    a boolean mask do not identify the parameters of eval domain e (None: they do), used to reject bad
    tables and to redraw degenerate bootstrap resamples.
    """

    model: Any
    x: tuple[np.ndarray, ...]
    logy: tuple[np.ndarray, ...]
    runs: tuple[np.ndarray, ...]
    to_params: Callable[[np.ndarray], dict[str, np.ndarray]]
    check_rows: Callable[[int, np.ndarray], str | None]
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target_step: float | None = None
    # Per-eval-domain facts about fitted natural parameters (e.g. a parameter at its bound), or None.
    report: Callable[[dict[str, np.ndarray]], dict[str, dict]] | None = None


_REGISTRY: dict[str, type[Law]] = {}
# Older names of laws, still read (fit files, flags, configs), with the name used now.
LAW_ALIASES = {"ye": "dml"}
_WARNED: set[str] = set()


def canonical_law_name(name: str) -> str:
    """`name`, or the name used now for an older one (logged once: Data Mixing Laws were once named `ye`)."""
    name = str(name)
    for old, new in LAW_ALIASES.items():
        if name == old or name.startswith(old + "_"):
            renamed = new + name[len(old):]
            if name not in _WARNED:
                _WARNED.add(name)
                logging.warning("law %r is read as %r, the name used now; write %r", name, renamed, renamed)
            return renamed
    return name


def register(cls: type[Law]) -> type[Law]:
    """Class decorator adding a law to the registry under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def get_law(name: str) -> type[Law]:
    name = canonical_law_name(name)
    if name not in _REGISTRY:
        raise InputError(f"unknown law {name!r}; choose one of {', '.join(sorted(_REGISTRY)) or '(none registered)'}")
    return _REGISTRY[name]


def registered_laws() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


@dataclasses.dataclass(frozen=True, eq=False)
class FittedLaw:
    """A law with fitted parameters, its domains and a summary of the data it was fitted on."""

    law: str
    version: int
    train_domains: tuple[str, ...]
    eval_domains: tuple[str, ...]
    params: Mapping[str, np.ndarray]
    # Step the law is valid at, for laws that do not model the step (None: any step).
    target_step: float | None = None
    # Fit data summary, convergence report, held-out metrics: free-form JSON-able dict.
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> Law:
        return get_law(self.law)(self.train_domains, self.eval_domains)

    def predict(self, r_D: jax.Array, s: jax.Array | float) -> jax.Array:
        """Predicted loss [E] of each eval domain for proportions r_D [D] at step s."""
        self.check_step(s)
        if not isinstance(r_D, jax.core.Tracer) and not isinstance(s, jax.core.Tracer):
            self.model.check_inputs(np.asarray(r_D, dtype=float), np.asarray(s, dtype=float))
        params = {k: jnp.asarray(v) for k, v in self.params.items()}
        return self.model.predict(params, jnp.asarray(r_D), jnp.asarray(s, dtype=jnp.result_type(float)))

    def check_step(self, s: Any) -> None:
        if self.target_step is None or isinstance(s, jax.core.Tracer):
            return
        s_arr = np.asarray(s, dtype=float)
        if not np.allclose(s_arr, self.target_step, rtol=1e-9):
            raise InputError(
                f"this {self.law} law was fitted for step {self.target_step:g} only, not {float(s_arr.ravel()[0]):g}; "
                "refit it for that step or use a law that models the step (bimix)"
            )

    def to_json(self) -> dict:
        return {
            "format": FIT_FILE_FORMAT,
            "law": self.law,
            "version": self.version,
            "train_domains": list(self.train_domains),
            "eval_domains": list(self.eval_domains),
            "target_step": self.target_step,
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
            "summary": atomic.to_jsonable(dict(self.summary)),
        }

    @classmethod
    def from_json(cls, obj: Any, *, source: str = "<json>") -> FittedLaw:
        """Parses and checks a fit file's content (wrong format, law version or shapes: InputError)."""
        if not isinstance(obj, dict) or obj.get("format") != FIT_FILE_FORMAT:
            raise InputError(f"{source} is not a fitted-law file of this project; produce one with experiments.fit_law")
        try:
            law = canonical_law_name(str(obj["law"]))
            version = int(obj["version"])
            train_domains = tuple(str(d) for d in obj["train_domains"])
            eval_domains = tuple(str(d) for d in obj["eval_domains"])
            params = {str(k): np.asarray(v, dtype=np.float64) for k, v in obj["params"].items()}
            target_step = obj.get("target_step")
            target_step = None if target_step is None else float(target_step)
            summary = dict(obj.get("summary") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{source} is corrupted ({type(e).__name__}: {e}); refit with experiments.fit_law") from e
        law_cls = get_law(law)
        if version != law_cls.version:
            raise InputError(
                f"{source} holds a {law} law of version {version}, this code reads version {law_cls.version}; "
                "refit with experiments.fit_law"
            )
        for k, v in params.items():
            if not np.all(np.isfinite(v)):
                raise InputError(f"{source}: parameter {k!r} is not finite; refit with experiments.fit_law")
        fitted = cls(law, version, train_domains, eval_domains, params, target_step, summary)
        fitted.model.check_params(params)
        return fitted

    def save(self, path: str | os.PathLike) -> None:
        atomic.write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedLaw:
        path = os.fspath(path)
        return cls.from_json(atomic.read_json(path, what="fit file"), source=path)
