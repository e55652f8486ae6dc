"""The mixture solvers: feasibility, KKT, exact == projected gradient, grid search, implicit gradients.

Everything runs in float64 (`jax.enable_x64`, module fixture): the comparisons are at 1e-6 and tighter.
Random laws and constraints are passed as traced arrays to solvers jitted once per module, so the
property tests compile nothing per example.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimix_jax.mixture import bimix_optimum
from tests import mixture_testlib as tl

D = 5
DOMAINS = tl.domains(D)
MODEL = tl.BimixDouble(DOMAINS, DOMAINS)
OWN = jnp.arange(D)
exact = jax.jit(bimix_optimum.bimix_exact)
pg = jax.jit(functools.partial(bimix_optimum.projected_gradient, MODEL))


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def kkt(params, s, w, r, lo, hi):
    g = jax.grad(lambda r_: bimix_optimum.objective(MODEL, params, r_, s, w))(r)
    f = bimix_optimum.objective(MODEL, params, r, s, w)
    return bimix_optimum.kkt(g, r, lo, hi, f)


vec = functools.partial(st.lists, min_size=D, max_size=D)
laws = st.fixed_dictionaries({
    "a": vec(st.floats(0.3, 20.0)), "c": vec(st.floats(0.5, 3.5)), "alpha": vec(st.floats(0.02, 0.5)),
    "beta": vec(st.floats(0.1, 0.8)),
})
bounds = st.tuples(vec(st.floats(0.0, 1.0)), vec(st.floats(0.0, 1.0)), st.floats(0.0, 0.6), st.floats(1.05, 2.5))


def make_bounds(b):
    u, v, floor_mass, cap_mass = b
    u, v = np.asarray(u) + 1e-2, np.asarray(v) + 1e-2
    lo = np.maximum(floor_mass * u / u.sum(), 1e-4)
    hi = np.minimum(lo + (1.0 - lo.sum()) * cap_mass * v / v.sum(), 1.0)
    return jnp.asarray(lo), jnp.asarray(hi)


def as_params(law):
    return {k: jnp.asarray(v, jnp.float64) for k, v in law.items()}


@settings(max_examples=40, deadline=None)
@given(law=laws, b=bounds, w=vec(st.floats(0.05, 1.0)), log_s=st.floats(2.0, 5.0))
def test_exact_is_feasible_and_satisfies_kkt(law, b, w, log_s):
    params, (lo, hi) = as_params(law), make_bounds(b)
    w, s = jnp.asarray(w) / np.sum(w), jnp.asarray(10.0**log_s)
    r, _ = exact(params, OWN, s, w, lo, hi)
    assert np.all(r >= lo - 1e-15) and np.all(r <= hi + 1e-15)
    assert abs(float(r.sum()) - 1.0) < 1e-12
    nu, mu, residual = kkt(params, s, w, r, lo, hi)
    assert residual < 1e-9  # equal marginal loss on free domains, bound multipliers >= 0
    assert nu > 0


@settings(max_examples=15, deadline=None)
@given(law=laws, b=bounds, w=vec(st.floats(0.05, 1.0)), log_s=st.floats(2.0, 5.0))
def test_projected_gradient_equals_exact_optimum(law, b, w, log_s):
    params, (lo, hi) = as_params(law), make_bounds(b)
    w, s = jnp.asarray(w) / np.sum(w), jnp.asarray(10.0**log_s)
    r_exact, _ = exact(params, OWN, s, w, lo, hi)
    r_pg, iters, _ = pg(params, s, w, lo, hi)
    assert np.all(r_pg >= lo - 1e-15) and np.all(r_pg <= hi + 1e-15) and abs(float(r_pg.sum()) - 1) < 1e-12
    np.testing.assert_allclose(r_pg, r_exact, atol=1e-6)
    assert int(iters) < 20000


@pytest.mark.parametrize("capped", [False, True])
def test_projected_gradient_equals_exact_on_22_domains(capped):
    rng = np.random.default_rng(22)
    n = 22
    model = tl.BimixDouble(tl.domains(n), tl.domains(n))
    params = as_params(tl.random_bimix_params(rng, n))
    w, s = jnp.asarray(rng.dirichlet(np.ones(n))), jnp.asarray(3e4)
    lo = jnp.full(n, 1e-4)
    hi = jnp.asarray(rng.uniform(1.1 / n, 2.0 / n, n)) if capped else jnp.ones(n)
    r_exact, _ = jax.jit(bimix_optimum.bimix_exact)(params, jnp.arange(n), s, w, lo, hi)
    r_pg, _, _ = jax.jit(functools.partial(bimix_optimum.projected_gradient, model))(params, s, w, lo, hi)
    np.testing.assert_allclose(r_pg, r_exact, atol=1e-6)
    assert (not capped) or np.sum(np.asarray(r_exact) >= np.asarray(hi) - 1e-12) >= 3


def simplex_grid(n):
    """Every mixture of 3 domains on the 1/n lattice, [M, 3]."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    i, j = i[keep], j[keep]
    return np.stack([i, j, n - i - j], axis=1) / n


@pytest.mark.parametrize("constrained", [False, True])
def test_grid_search_on_3_domains_finds_nothing_better(constrained):
    rng = np.random.default_rng(3)
    params = tl.random_bimix_params(rng, 3)
    w, s = np.array([0.5, 0.3, 0.2]), 2e4
    lo = np.array([1e-4, 0.2, 1e-4]) if constrained else np.full(3, 1e-4)
    hi = np.array([0.35, 1.0, 1.0]) if constrained else np.ones(3)
    r, _ = jax.jit(bimix_optimum.bimix_exact)(as_params(params), jnp.arange(3), jnp.asarray(s), jnp.asarray(w),
                                        jnp.asarray(lo), jnp.asarray(hi))
    r = np.asarray(r)
    grid = simplex_grid(1000)
    grid = grid[np.all((grid >= lo) & (grid <= hi), axis=1)]
    f_grid = tl.bimix_objective_np(params, np.maximum(grid, 1e-300), s, w)
    best = float(tl.bimix_objective_np(params, r[None], s, w)[0])
    assert f_grid.min() >= best - 1e-12
    assert np.abs(grid[np.argmin(f_grid)] - r).max() <= 2e-3  # and the grid's best is next to it


def test_grid_search_for_a_law_with_transfer_terms():
    """Projected gradient on the Data Mixing Laws form (cross-domain terms), with a cap that binds."""
    rng = np.random.default_rng(4)
    fitted = tl.dml_fit(rng, 3)
    model = fitted.model
    params = {k: jnp.asarray(v) for k, v in fitted.params.items()}
    w = jnp.asarray([0.2, 0.5, 0.3])
    lo, hi = jnp.zeros(3), jnp.asarray([1.0, 0.3, 1.0])
    r, _, _ = jax.jit(functools.partial(bimix_optimum.projected_gradient, model))(params, jnp.asarray(1.0), w, lo, hi)
    grid = simplex_grid(1000)
    grid = grid[grid[:, 1] <= 0.3]
    L = fitted.params["c"] + fitted.params["k"] * np.exp(grid @ fitted.params["t"].T)
    best = float(bimix_optimum.objective(model, params, r, 1.0, w))
    assert (L @ np.asarray(w)).min() >= best - 1e-12
    g = jax.grad(lambda r_: bimix_optimum.objective(model, params, r_, 1.0, w))(r)
    assert bimix_optimum.kkt(g, r, lo, hi, best)[2] < 1e-7


def test_equal_exponents_have_the_closed_form():
    rng = np.random.default_rng(5)
    params = tl.random_bimix_params(rng, D)
    params["alpha"] = np.full(D, 0.3)
    w, s = np.full(D, 1 / D), 1e4
    r, loglam = exact(as_params(params), OWN, jnp.asarray(s), jnp.asarray(w), jnp.zeros(D), jnp.ones(D))
    K = w * (params["a"] * s ** (-params["beta"]) + params["c"])
    expected = K ** (1 / 1.3) / np.sum(K ** (1 / 1.3))
    np.testing.assert_allclose(r, expected, rtol=1e-12)
    # The multiplier is the common marginal loss: alpha K_i r_i^-(alpha + 1) = lambda.
    np.testing.assert_allclose(0.3 * K * np.asarray(r) ** -1.3, np.exp(float(loglam)), rtol=1e-10)


def test_unweighted_domains_sit_on_their_floor_and_absorb_what_caps_leave():
    params = as_params(tl.random_bimix_params(np.random.default_rng(6), 3))
    lo = jnp.full(3, 1e-4)
    w = jnp.asarray([1.0, 0.0, 0.0])
    r, _ = jax.jit(bimix_optimum.bimix_exact)(params, jnp.arange(3), jnp.asarray(1e4), w, lo, jnp.ones(3))
    np.testing.assert_allclose(r, [1 - 2e-4, 1e-4, 1e-4], atol=1e-12)
    # Without floors the weighted domain's cap (1) is exactly what the others leave: a flat root.
    r, _ = jax.jit(bimix_optimum.bimix_exact)(params, jnp.arange(3), jnp.asarray(1e4), w, jnp.zeros(3), jnp.ones(3))
    np.testing.assert_allclose(r, [1.0, 0.0, 0.0], atol=1e-15)
    hi = jnp.asarray([0.5, 1.0, 0.3])  # d0 capped: the rest goes to d1 and d2 by their slack
    r, _ = jax.jit(bimix_optimum.bimix_exact)(params, jnp.arange(3), jnp.asarray(1e4), w, lo, hi)
    slack = np.array([0.0, 1.0 - 1e-4, 0.3 - 1e-4])
    np.testing.assert_allclose(r, np.array([0.5, 1e-4, 1e-4]) + (0.5 - 2e-4) * slack / slack.sum(), atol=1e-12)
    assert abs(float(r.sum()) - 1) < 1e-14


def test_implicit_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    params = tl.random_bimix_params(rng, D)
    w, s = rng.dirichlet(np.ones(D)), 2e4
    lo = np.full(D, 1e-4)
    r0, _ = exact(as_params(params), OWN, jnp.asarray(s), jnp.asarray(w), jnp.asarray(lo), jnp.ones(D))
    hi = np.ones(D)
    hi[int(np.argmax(r0))] = float(np.max(r0)) * 0.8  # one cap binds, so the clipped branch is covered
    v = rng.normal(size=D)

    def readout(p, w_, hi_, solver):
        if solver == "exact":
            r, _ = bimix_optimum.bimix_exact(p, OWN, s, w_, jnp.asarray(lo), hi_)
        else:
            r, _, _ = bimix_optimum.projected_gradient(MODEL, p, s, w_, jnp.asarray(lo), hi_)
        return jnp.dot(v, r)

    args = (as_params(params), jnp.asarray(w), jnp.asarray(hi))
    grads = {sv: jax.jit(jax.grad(functools.partial(readout, solver=sv), argnums=(0, 1, 2)))(*args)
             for sv in ("exact", "pg")}
    f = jax.jit(functools.partial(readout, solver="exact"))
    eps = 1e-6
    for k in params:
        for e in range(D):
            up = {kk: np.array(vv) for kk, vv in params.items()}
            dn = {kk: np.array(vv) for kk, vv in params.items()}
            up[k][e] += eps
            dn[k][e] -= eps
            fd = (f(as_params(up), *args[1:]) - f(as_params(dn), *args[1:])) / (2 * eps)
            np.testing.assert_allclose(grads["exact"][0][k][e], fd, rtol=1e-5, atol=1e-8, err_msg=f"d/d{k}[{e}]")
    for i in range(D):
        for j, arr in ((1, w), (2, hi)):
            up, dn = np.array(arr), np.array(arr)
            up[i] += eps
            dn[i] -= eps
            a_up, a_dn = list(args), list(args)
            a_up[j], a_dn[j] = jnp.asarray(up), jnp.asarray(dn)
            fd = (f(*a_up) - f(*a_dn)) / (2 * eps)
            np.testing.assert_allclose(grads["exact"][j][i], fd, rtol=1e-5, atol=1e-8)
    # Implicit differentiation of the projected-gradient fixed point gives the same derivatives.
    for j in (0, 1, 2):
        np.testing.assert_allclose(jax.tree.leaves(grads["pg"][j]), jax.tree.leaves(grads["exact"][j]),
                                   rtol=1e-3, atol=1e-5)


def test_vmapped_exact_solver_matches_single_solves():
    rng = np.random.default_rng(8)
    batch = [tl.random_bimix_params(rng, D) for _ in range(6)]
    stacked = {k: jnp.asarray(np.stack([b[k] for b in batch])) for k in batch[0]}
    w, lo, hi = jnp.full(D, 1 / D), jnp.full(D, 1e-4), jnp.full(D, 0.35)
    r_B, _ = jax.jit(jax.vmap(bimix_optimum.bimix_exact, in_axes=(0, None, None, None, None, None)))(
        stacked, OWN, jnp.asarray(1e4), w, lo, hi)
    for b, p in enumerate(batch):
        np.testing.assert_allclose(r_B[b], exact(as_params(p), OWN, jnp.asarray(1e4), w, lo, hi)[0], atol=1e-14)
