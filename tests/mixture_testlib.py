"""Test doubles for the mixture-optimizer tests: laws with known parameters, registered under test names.

`BimixDouble` has exactly BiMix's parameters and form (L_e = r_own(e)^-alpha_e (a_e s^-beta_e + c_e)) and
is registered under a test-only name; `optimize.EXACT_LAWS` is extended with it by the `exact_double`
fixture so the exact solver applies to it. `DmlDouble` is the Data Mixing Laws form.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bimix_jax import loss_table
from bimix_jax.laws.base import FittedLaw, Law, register

BIMIX_DOUBLE = "test_bimix_double"
DML_DOUBLE = "test_dml_double"


@register
class BimixDouble(Law):
    name = BIMIX_DOUBLE

    def predict(self, params, r_D, s):
        own = jnp.array([self.train_domains.index(e) for e in self.eval_domains])
        return r_D[own] ** (-params["alpha"]) * (params["a"] * s ** (-params["beta"]) + params["c"])


@register
class DmlDouble(Law):
    name = DML_DOUBLE
    uses_step = False

    def predict(self, params, r_D, s):
        return params["c"] + params["k"] * jnp.exp(params["t"] @ r_D)


def bimix_objective_np(params, r_MxD, s, w):
    """The weighted BiMix loss in numpy, for grid searches (r_MxD: candidate mixtures)."""
    L = r_MxD ** (-params["alpha"]) * (params["a"] * s ** (-params["beta"]) + params["c"])
    return L @ w


def domains(D: int) -> tuple[str, ...]:
    return tuple(f"d{i}" for i in range(D))


def random_bimix_params(rng: np.random.Generator, E: int) -> dict[str, np.ndarray]:
    """Parameters in the range real BiMix fits land in (alpha 0.02..0.5, beta 0.1..0.8)."""
    return {
        "a": np.exp(rng.uniform(-1.0, 3.0, E)),
        "c": np.exp(rng.uniform(-0.5, 1.2, E)),
        "alpha": rng.uniform(0.02, 0.5, E),
        "beta": rng.uniform(0.1, 0.8, E),
    }


def bimix_fit(params, train, evals=None, law: str = BIMIX_DOUBLE) -> FittedLaw:
    evals = train if evals is None else evals
    return FittedLaw(law, 1, tuple(train), tuple(evals), {k: np.asarray(v, float) for k, v in params.items()})


def dml_fit(rng: np.random.Generator, D: int, E: int | None = None, step: float = 30000.0) -> FittedLaw:
    E = D if E is None else E
    t = rng.normal(0.0, 0.6, (E, D))
    t[np.arange(min(E, D)), np.arange(min(E, D))] = -rng.uniform(1.0, 3.0, min(E, D))
    params = {"c": rng.uniform(1.5, 2.5, E), "k": rng.uniform(0.3, 1.0, E), "t": t}
    evals = tuple(f"d{i}" for i in range(E)) if E <= D else tuple(f"v{i}" for i in range(E))
    return FittedLaw(DML_DOUBLE, 1, domains(D), evals, params, target_step=step)


TRUE_BIMIX = {
    "a": np.array([30.0, 12.0, 20.0]), "c": np.array([1.8, 2.4, 2.0]), "alpha": np.array([0.25, 0.1, 0.15]),
    "beta": np.array([0.45, 0.35, 0.4]),
}


def synthetic_table(params=TRUE_BIMIX, noise: float = 0.003, seed: int = 0) -> loss_table.LossTable:
    """A loss table of 7 mixtures x 6 checkpoints x 3 domains drawn from a BiMix law with log-normal noise."""
    rng = np.random.default_rng(seed)
    doms = domains(3)
    mixtures = [(0.6, 0.2, 0.2), (0.2, 0.6, 0.2), (0.2, 0.2, 0.6), (1 / 3, 1 / 3, 1 / 3), (0.5, 0.4, 0.1),
                (0.1, 0.3, 0.6), (0.45, 0.1, 0.45)]
    rows = []
    for m, r in enumerate(mixtures):
        for step in (1000, 2000, 4000, 8000, 16000, 32000):
            for e, d in enumerate(doms):
                L = r[e] ** -params["alpha"][e] * (params["a"][e] * step ** -params["beta"][e] + params["c"][e])
                loss = L * np.exp(rng.normal(0, noise))
                rows.append({"run": f"m{m}", "step": step, "eval_domain": d, "loss": loss,
                             **{f"p_{dd}": r[i] for i, dd in enumerate(doms)}})
    return loss_table.from_rows(rows)
