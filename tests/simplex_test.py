"""The capped-simplex projection: exact, feasible, equal to jaxopt's on the plain simplex, right Jacobian.

Runs in float64 (`jax.enable_x64`) so feasibility and agreement can be checked to 1e-12.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jaxopt.projection import projection_simplex

from bimix_jax.mixture.simplex import project_capped_simplex

D = 6
project = jax.jit(project_capped_simplex)


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def reference_projection(x, lo, hi):
    """Bisection on tau to full float64 precision: p = clip(x - tau, lo, hi) with sum(p) = 1."""
    a, b = np.min(x - hi) - 1.0, np.max(x - lo) + 1.0
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if np.clip(x - m, lo, hi).sum() > 1.0 else (a, m)
    return np.clip(x - 0.5 * (a + b), lo, hi)


def feasible_bounds(u, v, floor_mass, cap_mass):
    """lo sums to floor_mass (<= 1); hi = lo + gaps whose sum is >= 1 - floor_mass, clipped at 1."""
    u, v = np.asarray(u) + 1e-3, np.asarray(v) + 1e-3
    lo = floor_mass * u / u.sum()
    hi = np.minimum(lo + (1.0 - floor_mass) * cap_mass * v / v.sum(), 1.0)
    return lo, hi


unit = st.floats(0.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    x=st.lists(st.floats(-3.0, 3.0), min_size=D, max_size=D),
    u=st.lists(unit, min_size=D, max_size=D),
    v=st.lists(unit, min_size=D, max_size=D),
    floor_mass=st.floats(0.0, 1.0),
    cap_mass=st.floats(1.0, 3.0),
)
def test_feasible_and_equal_to_reference(x, u, v, floor_mass, cap_mass):
    x = np.asarray(x)
    lo, hi = feasible_bounds(u, v, floor_mass, cap_mass)
    p = np.asarray(project(x, lo, hi))
    assert np.all(p >= lo - 1e-15) and np.all(p <= hi + 1e-15)
    assert abs(p.sum() - 1.0) <= 1e-12
    np.testing.assert_allclose(p, reference_projection(x, lo, hi), atol=1e-11)


def test_equals_jaxopt_projection_on_the_plain_simplex():
    rng = np.random.default_rng(0)
    x_BxD = rng.normal(0.0, 2.0, (50, D))
    ours = jax.vmap(project_capped_simplex, in_axes=(0, None, None))(x_BxD, jnp.zeros(D), jnp.ones(D))
    theirs = jax.vmap(projection_simplex)(jnp.asarray(x_BxD))
    np.testing.assert_allclose(ours, theirs, atol=1e-14)


def test_idempotent_and_fixed_coordinates():
    x = np.array([0.9, -0.2, 0.4, 0.05, 0.3, 0.1])
    lo = np.array([0.0, 0.1, 0.0, 0.2, 0.0, 0.0])
    hi = np.array([0.3, 0.1, 1.0, 1.0, 0.25, 1.0])  # coordinate 1 is fixed at 0.1
    p = np.asarray(project(x, lo, hi))
    assert p[1] == 0.1 and p[0] == 0.3 and abs(p.sum() - 1) < 1e-15
    np.testing.assert_allclose(project(p, lo, hi), p, atol=1e-15)
    # Degenerate feasible sets: floors summing to 1, caps summing to 1.
    np.testing.assert_allclose(project(x, np.full(D, 1 / D), np.ones(D)), np.full(D, 1 / D), atol=1e-15)
    np.testing.assert_allclose(project(x, np.zeros(D), np.full(D, 1 / D)), np.full(D, 1 / D), atol=1e-15)


def test_jacobian_matches_finite_differences():
    x = np.array([0.6, 0.1, 0.35, -0.4, 0.2, 0.3])
    lo = np.array([0.0, 0.15, 0.0, 0.05, 0.0, 0.0])
    hi = np.array([0.3, 1.0, 1.0, 1.0, 1.0, 1.0])
    p = np.asarray(project(x, lo, hi))
    free = (p > lo + 1e-9) & (p < hi - 1e-9)
    assert 2 <= free.sum() < D  # a generic point: some free, some on a bound
    jac = jax.jacfwd(project_capped_simplex, argnums=(0, 1, 2))(x, lo, hi)
    eps = 1e-6
    for arg, J in enumerate(jac):
        fd = np.zeros((D, D))
        for j in range(D):
            args_p = [np.array(a, dtype=float) for a in (x, lo, hi)]
            args_m = [np.array(a, dtype=float) for a in (x, lo, hi)]
            args_p[arg][j] += eps
            args_m[arg][j] -= eps
            fd[:, j] = (np.asarray(project(*args_p)) - np.asarray(project(*args_m))) / (2 * eps)
        np.testing.assert_allclose(J, fd, atol=1e-7)
    # On the free set the Jacobian is the centering matrix: J = diag(f) - f f^T / |f|.
    f = free.astype(float)
    np.testing.assert_allclose(jac[0], np.diag(f) - np.outer(f, f) / f.sum(), atol=1e-12)


def test_float32_is_feasible_to_single_precision():
    with jax.enable_x64(False):
        rng = np.random.default_rng(1)
        lo, hi = feasible_bounds(rng.uniform(size=D), rng.uniform(size=D), 0.3, 1.5)
        lo, hi = lo.astype(np.float32), hi.astype(np.float32)
        p = jax.jit(project_capped_simplex)(jnp.asarray(rng.normal(size=D), jnp.float32), lo, hi)
        assert p.dtype == jnp.float32
        assert np.all(p >= lo) and np.all(p <= hi) and abs(float(p.sum()) - 1) < 1e-6
