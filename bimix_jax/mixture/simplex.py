"""Exact, differentiable Euclidean projection onto the capped probability simplex.

    P(x) = argmin_p ||p - x||^2   subject to   lo <= p <= hi,  sum(p) = 1.

The solution is `p = clip(x - tau, lo, hi)` for the scalar `tau` at which the sum is 1. The sum is a
piecewise-linear, non-increasing function of `tau` with breakpoints at `x - hi` and `x - lo`; we evaluate
it at every breakpoint (a sort and a cumulative sum, O(D log D)), pick the segment that crosses 1 and solve
the linear equation on it. No iteration and no tolerance: the result is feasible to rounding, for any
`lo`/`hi` with `sum(lo) <= 1 <= sum(hi)` and `lo <= hi` (checked on the host by `constraints.make_bounds`).

Why not the library projections: `jaxopt.projection.projection_simplex` is exact but has no box;
`jaxopt.projection.projection_box_section` has the box but finds `tau` by bisection with jaxopt's default
tolerance (its sum misses 1 by ~1e-5 even in float64), too loose for a solver that must agree with the
exact optimum to 1e-6. With `lo = 0, hi = 1` this projection equals `projection_simplex` (tested).

Gradients (w.r.t. `x`, `lo` and `hi`) come from autodiff of the closed form on the selected segment:
the active sets are piecewise constant, so this is the exact Jacobian wherever it exists
(`J = diag(f) - f f^T / |f|` on the free set `f`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def project_capped_simplex(x_D: jax.Array, lo_D: jax.Array, hi_D: jax.Array) -> jax.Array:
    """Projects x_D onto {p : lo_D <= p <= hi_D, sum(p) = 1}; jit/vmap/grad-safe."""
    dtype = jnp.result_type(x_D, lo_D, hi_D, float)
    x_D, lo_D, hi_D = jnp.broadcast_arrays(*(jnp.asarray(v, dtype) for v in (x_D, lo_D, hi_D)))
    D = x_D.shape[-1]
    # S(t) = sum_i clip(x_i - t, lo_i, hi_i) at every breakpoint t, in sorted order: S = sum(hi) left of all
    # breakpoints, and its slope is minus the number of free coordinates, which grows by one at each x - hi
    # and shrinks by one at each x - lo. (Only used to pick the segment; tau is solved exactly below.)
    br_B = jax.lax.stop_gradient(jnp.concatenate([x_D - hi_D, x_D - lo_D]))
    order_B = jnp.argsort(br_B)
    br_B = br_B[order_B]
    n_free_B = jnp.cumsum(jnp.concatenate([jnp.ones(D, x_D.dtype), -jnp.ones(D, x_D.dtype)])[order_B])
    drop_B = jnp.cumsum(n_free_B[:-1] * jnp.diff(br_B))
    sums_B = jax.lax.stop_gradient(jnp.sum(hi_D)) - jnp.concatenate([jnp.zeros(1, x_D.dtype), drop_B])
    # The root lies between the last breakpoint whose sum is >= 1 and the next one.
    k = jnp.sum(sums_B >= 1.0)
    left = jnp.where(k > 0, br_B[jnp.maximum(k - 1, 0)], br_B[0] - 1.0)
    right = jnp.where(k < 2 * D, br_B[jnp.minimum(k, 2 * D - 1)], br_B[-1] + 1.0)
    mid = 0.5 * (left + right)
    at_hi = x_D - mid >= hi_D
    at_lo = (x_D - mid <= lo_D) & ~at_hi
    free = ~(at_hi | at_lo)
    n_free = jnp.sum(free)
    fixed_mass = jnp.sum(jnp.where(at_hi, hi_D, 0.0)) + jnp.sum(jnp.where(at_lo, lo_D, 0.0))
    tau = jnp.where(
        n_free > 0, (jnp.sum(jnp.where(free, x_D, 0.0)) + fixed_mass - 1.0) / jnp.maximum(n_free, 1), mid
    )
    return jnp.where(free, x_D - tau, jnp.where(at_hi, hi_D, lo_D))
