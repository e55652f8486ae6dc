"""Solvers for the best mixture under a fitted law: pure JAX, jit/vmap-able, differentiable.

    minimize  f(r) = sum_e w_e L_e(r, s)   subject to   lo <= r <= hi,  sum(r) = 1.

* `projected_gradient`: any law. jaxopt `ProjectedGradient` (FISTA with backtracking line search) with the
  exact capped-simplex projection of `simplex.py`; differentiable by implicit differentiation of the
  projected-gradient fixed point (jaxopt's default).
* `bimix_exact`: the BiMix optimum from the Lagrange conditions. With `K_i = w_i (a_i s^-beta_i + c_i)`
  the objective is `sum_i K_i r_i^-alpha_i`; stationarity gives
  `r_i(lam) = clip((alpha_i K_i / lam)^(1 / (alpha_i + 1)), lo_i, hi_i)`, non-increasing in `lam`, so
  `sum_i r_i(lam) = 1` is a one-dimensional root, found by bisection in `log lam` to machine precision.
  Gradients w.r.t. the law's parameters, the weights and the bounds flow through the root by implicit
  differentiation (jaxopt `implicit_diff.custom_root`). Training domains without a weighted eval domain
  (`K_i = 0`) sit on their floor; if the weighted domains cannot absorb the rest (their caps), they sit on
  their caps and the remainder is spread over the unweighted ones in proportion to their slack.
* `kkt`: the multiplier and the per-domain bound multipliers at a candidate point, from the gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import jaxopt

from bimix_jax.laws.base import Law
from bimix_jax.mixture.simplex import project_capped_simplex


BISECTION_STEPS = 120  # halvings of the log-lambda bracket: far below float64 resolution


def default_tol(dtype) -> float:
    """Projected-gradient stopping tolerance (relative KKT residual) for the working precision."""
    return 1e-9 if jnp.finfo(dtype).bits == 64 else 1e-5


def objective(
    model: Law, params: Mapping[str, jax.Array], r_D: jax.Array, s: jax.Array, w_E: jax.Array
) -> jax.Array:
    """The weighted predicted loss sum_e w_e L_e(r, s) (a scalar)."""
    return jnp.dot(w_E, model.predict(params, r_D, s))


def _extended_objective(model, params, r_D, s, w_E, lo_D, hi_D):
    """f on the box, extended linearly outside it: f(c) + <grad f(c), r - c> with c = clip(r, lo, hi).

    FISTA evaluates the gradient at extrapolated points that can leave the feasible set, where a law may
    be undefined (BiMix at r <= 0). The extension is C^1 and equals f on the box, so the iterates and
    the optimum are unchanged.
    """
    c_D = jnp.clip(r_D, lo_D, hi_D)
    f, df = jax.jvp(lambda r: objective(model, params, r, s, w_E), (c_D,), (r_D - c_D,))
    return f + df


def projected_gradient(
    model: Law,
    params: Mapping[str, jax.Array],
    s: jax.Array,
    w_E: jax.Array,
    lo_D: jax.Array,
    hi_D: jax.Array,
    *,
    maxiter: int = 20000,
    tol: float | None = None,
    ftol: float | None = None,
    patience: int = 200,
    acceleration: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Minimizes the weighted loss of any law over the capped simplex. Returns (r_D, iterations, residual).

    FISTA (jaxopt `ProjectedGradient`, backtracking line search) with gradient-based adaptive restart.
    Stops when the relative KKT residual of the iterate (`kkt`) is below `tol`, or when the objective has
    not improved by a relative `ftol` (default 10 machine epsilons) for `patience` iterations: the line
    search compares function values, so once the decrease per step falls below rounding the iterate
    only wanders within about sqrt(eps) of the optimum (~1e-8 in float64). (jaxopt's own error, the
    distance between iterates, can be 0 for an accelerated step that projects back onto the previous
    iterate, so it is not used to stop.) Differentiable w.r.t. every argument by implicit
    differentiation of the projected-gradient fixed point. Batches of laws go through `jax.lax.map`
    (`optimize.programs`): under `jax.vmap` this solver hung on jax 0.10.2's CPU backend for some batch sizes.
    """
    D = lo_D.shape[-1]
    tol = default_tol(lo_D.dtype) if tol is None else tol
    ftol = 10 * jnp.finfo(lo_D.dtype).eps if ftol is None else ftol
    solver = jaxopt.ProjectedGradient(
        fun=lambda r, p, s_, w, lo, hi: _extended_objective(model, p, r, s_, w, lo, hi),
        projection=lambda x, bounds: project_capped_simplex(x, *bounds),
        maxiter=maxiter,
        maxls=60,  # BiMix is steep near its floor: allow step sizes down to 2^-60.
        acceleration=acceleration,
    )

    def run(init_D, bounds, p, s_, w, lo, hi):
        args = (bounds, p, s_, w, lo, hi)
        value_and_grad = jax.value_and_grad(lambda x_D: objective(model, p, x_D, s_, w))

        def residual(x_D):
            f, g_D = value_and_grad(x_D)
            return f, kkt(g_D, x_D, lo, hi, f)[2]

        def cond(carry):
            _, state, _, res, stalled = carry
            return (state.iter_num < maxiter) & (res > tol) & (stalled < patience)

        def body(carry):
            x_D, state, best, _, stalled = carry
            y_D = state.velocity if acceleration else x_D
            new_D, state = solver.update(x_D, state, *args)
            if acceleration:  # Gradient-based adaptive restart (O'Donoghue & Candes, 2015).
                restart = jnp.dot(y_D - new_D, new_D - x_D) > 0
                state = state._replace(t=jnp.where(restart, jnp.ones_like(state.t), state.t),
                                       velocity=jnp.where(restart, new_D, state.velocity))
            f_new, res = residual(new_D)
            improved = f_new < best - ftol * jnp.abs(best)
            return new_D, state, jnp.minimum(best, f_new), res, jnp.where(improved, 0, stalled + 1)

        f0, res0 = residual(init_D)
        carry = (init_D, solver.init_state(init_D, *args), f0, res0, 0)
        x_D, state, _, res, _ = jax.lax.while_loop(cond, body, carry)
        return x_D, (state.iter_num, res)

    run = jaxopt.implicit_diff.custom_root(solver.optimality_fun, has_aux=True)(run)
    init_D = project_capped_simplex(jnp.full((D,), 1.0 / D, lo_D.dtype), lo_D, hi_D)
    r_D, (iters, res) = run(init_D, (lo_D, hi_D), params, s, w_E, lo_D, hi_D)
    return r_D, iters, res


def bimix_coefficients(
    params: Mapping[str, jax.Array], own_E: jax.Array, D: int, s: jax.Array, w_E: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per training domain (K_D, alpha_D) of the objective sum_i K_i r_i^-alpha_i (K = 0: no eval domain)."""
    K_E = w_E * (params["a"] * s ** (-params["beta"]) + params["c"])
    K_D = jnp.zeros((D,), K_E.dtype).at[own_E].add(K_E)
    alpha_D = jnp.ones((D,), K_E.dtype).at[own_E].set(params["alpha"])
    return K_D, alpha_D


def _raw_r(loglam, logaK_D, alpha_D, pos_D):
    z_D = jnp.where(pos_D > 0, (logaK_D - loglam) / (alpha_D + 1.0), 0.0)
    return jnp.where(pos_D > 0, jnp.exp(z_D), 0.0)


def _excess(loglam, logaK_D, alpha_D, pos_D, lo_D, hi_D):
    return jnp.sum(jnp.clip(_raw_r(loglam, logaK_D, alpha_D, pos_D), lo_D, hi_D)) - 1.0


def _solve_1d(matvec, b):
    """Solves the 1x1 implicit-differentiation system; a flat root (derivative 0) gets gradient 0."""
    slope = matvec(jnp.ones_like(b))
    return jnp.where(slope != 0, b / jnp.where(slope != 0, slope, 1.0), 0.0)


def _bisect_loglam(bracket, logaK_D, alpha_D, pos_D, lo_D, hi_D, *, maxiter):
    """Bisection on the non-increasing excess(log lambda) over `bracket` = [low, high] (to float precision).

    Keeps excess(low) >= 0 >= excess(high); unlike jaxopt's Bisection it accepts excess(low) == 0, which
    happens whenever the weighted domains' caps sum to exactly what the others leave.
    """
    args = (logaK_D, alpha_D, pos_D, lo_D, hi_D)

    def body(_, lh):
        low, high = lh
        mid = 0.5 * (low + high)
        above = _excess(mid, *args) > 0  # the root lies above mid
        return jnp.where(above, mid, low), jnp.where(above, high, mid)

    low, high = jax.lax.fori_loop(0, maxiter, body, (bracket[0], bracket[1]))
    return 0.5 * (low + high)


def _solve_loglam(bracket, *args, maxiter):
    solve = jaxopt.implicit_diff.custom_root(_excess, solve=_solve_1d)(
        lambda init, *a: _bisect_loglam(jax.lax.stop_gradient(bracket), *a, maxiter=maxiter))
    return solve(jnp.zeros((), bracket.dtype), *args)


def bimix_exact_from_coefficients(
    K_D: jax.Array, alpha_D: jax.Array, lo_D: jax.Array, hi_D: jax.Array, *, maxiter: int = BISECTION_STEPS
) -> tuple[jax.Array, jax.Array]:
    """argmin sum_i K_i r_i^-alpha_i over the capped simplex (K, alpha >= 0). Returns (r_D, log lambda)."""
    D = K_D.shape[-1]
    aK_D = alpha_D * K_D
    pos_D = (aK_D > 0).astype(K_D.dtype)
    logaK_D = jnp.log(jnp.where(pos_D > 0, aK_D, 1.0))
    # Bracket in log lambda: below `low` every weighted r_i(lam) >= hi_i; above `high` every one is <= its
    # floor (or <= the free mass / D where the floor is 0), so the excess changes sign in between.
    tiny = jnp.finfo(K_D.dtype).tiny
    small_D = jnp.where(lo_D > 0, lo_D, jnp.maximum((1.0 - jnp.sum(lo_D)) / D, tiny))
    big = jnp.finfo(K_D.dtype).max
    low = jnp.min(jnp.where(pos_D > 0, logaK_D - (alpha_D + 1.0) * jnp.log(jnp.maximum(hi_D, tiny)), big))
    high = jnp.max(jnp.where(pos_D > 0, logaK_D - (alpha_D + 1.0) * jnp.log(small_D), -big))
    any_pos = jnp.any(pos_D > 0)
    low = jax.lax.stop_gradient(jnp.where(any_pos, low - 1.0, 0.0))
    high = jax.lax.stop_gradient(jnp.where(any_pos, high + 1.0, 1.0))
    loglam = _solve_loglam(jnp.stack([low, high]), logaK_D, alpha_D, pos_D, lo_D, hi_D, maxiter=maxiter)
    # Weighted domains capped below 1 in total: they all sit on their caps (lambda below the bracket) and the
    # unweighted ones take the rest, in proportion to their slack.
    short = jnp.sum(jnp.where(pos_D > 0, hi_D, lo_D)) < 1.0
    loglam = jnp.where(short, low, loglam)
    r_D = jnp.clip(_raw_r(loglam, logaK_D, alpha_D, pos_D), lo_D, hi_D)
    slack_D = jnp.where(pos_D > 0, 0.0, hi_D - lo_D)
    fill_D = (1.0 - jnp.sum(r_D)) * slack_D / jnp.maximum(jnp.sum(slack_D), tiny)
    r_D = jnp.where(short, r_D + fill_D, r_D)
    return r_D, loglam


def bimix_exact(
    params: Mapping[str, jax.Array],
    own_E: jax.Array,
    s: jax.Array,
    w_E: jax.Array,
    lo_D: jax.Array,
    hi_D: jax.Array,
    *,
    maxiter: int = BISECTION_STEPS,
) -> tuple[jax.Array, jax.Array]:
    """The exact BiMix optimum for params {'a','c','alpha','beta'} [E]; own_E [E] maps eval -> training domain."""
    K_D, alpha_D = bimix_coefficients(params, own_E, lo_D.shape[-1], s, w_E)
    return bimix_exact_from_coefficients(K_D, alpha_D, lo_D, hi_D, maxiter=maxiter)


def kkt(g_D: jax.Array, r_D: jax.Array, lo_D: jax.Array, hi_D: jax.Array, scale: jax.Array | float = 1.0, *,
        rtol: float = 1e-6, atol: float = 1e-9):
    """KKT quantities at r_D for gradient g_D of the objective.

    Returns (nu, mu_D, residual): nu is the simplex multiplier (-g_i on free domains, averaged), mu_D the
    bound multipliers (at a floor g_i + nu, at a cap -(g_i + nu); 0 on free domains), both >= 0 at an
    optimum; mu_i is the predicted-loss decrease per unit relaxation of domain i's binding bound. The
    residual is the largest violation (spread of g over free domains, negative multipliers) divided by
    max(|nu|, scale); pass the objective's value as `scale` to measure it relative to the loss.
    """
    at_lo = r_D <= lo_D * (1 + rtol) + atol
    at_hi = (r_D >= hi_D * (1 - rtol) - atol) & ~at_lo
    free = ~(at_lo | at_hi)
    n_free = jnp.sum(free)
    nu = jnp.where(n_free > 0, -jnp.sum(jnp.where(free, g_D, 0.0)) / jnp.maximum(n_free, 1), -jnp.mean(g_D))
    mu_D = jnp.where(at_lo, g_D + nu, jnp.where(at_hi, -(g_D + nu), 0.0))
    stationarity = jnp.max(jnp.where(free, jnp.abs(g_D + nu), 0.0))
    violation = jnp.maximum(stationarity, jnp.max(jnp.maximum(-mu_D, 0.0)))
    return nu, mu_D, violation / jnp.maximum(jnp.maximum(jnp.abs(nu), jnp.abs(scale)), 1e-30)
