"""Mixing laws: BiMix, Data Mixing Laws (Ye et al.), regression laws (RegMix), their generic jaxopt fitter and held-out protocols.

Importing this package registers every law (`get_law('bimix')`, `get_law('dml')`).
"""

from bimix_jax.laws import bimix, dml, lightgbm_law, regression  # noqa: F401  (registration; LightGBM optional)
from bimix_jax.laws.base import FitProblem, FittedLaw, Law, get_law, register, registered_laws
from bimix_jax.laws.fit import fit_bootstrap, fit_law

__all__ = ["FitProblem", "FittedLaw", "Law", "fit_bootstrap", "fit_law", "get_law", "register", "registered_laws"]
