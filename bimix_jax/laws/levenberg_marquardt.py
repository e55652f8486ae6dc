"""Many small least-squares curve fits in one compiled call: jaxopt Levenberg-Marquardt, vmapped.

The generic engine under every law. A *curve model* (BiMix per eval domain, Data Mixing Law per eval domain, the
step law per (run, eval domain)) maps an unconstrained parameter vector `theta_P` and per-row features
`x_NxF` to log-loss residuals. A fit problem is G independent groups, each with its own rows, padded to a
common N with weight 0. `solve`:

1. (on the host, numpy) `model.starts(x, logy, w, S)`: S starting points per group, from a cheap
   vectorised grid whose linear parameters are solved in closed form (variable projection: a few small
   matmuls per group); keeping it out of the compiled program saves about a quarter of its compile time;
2. in ONE jitted program, Levenberg-Marquardt (`jaxopt.LevenbergMarquardt`: autodiff Jacobian,
   Cholesky normal equations, gain-ratio damping) from every start: one `lax.while_loop` whose body is
   the LM update vmapped over all (replicate x) group x start problems. Each problem stops on its own
   (accepted step with relative cost decrease < ftol, step < xtol, gradient < gtol, or damping blow-up)
   and is then frozen; the loop ends when all are done or at maxiter;
3. the best admissible start per group, with its diagnostics.

Residuals are `sqrt(w) * rho(pred_log - log y)` with rho the identity (`loss='l2'`: the paper's least
squares, on log loss) or the Huber rescaling `sign(e) sqrt(2 H_delta(e))` (`loss='huber'`), whose squares
sum to the Huber loss. Weights are row multiplicities: 0 for padding, resample counts for the bootstrap
(`solve_batched`: a leading replicate axis on the weights, still one program and one loop).

Only `n_starts`, `loss` and `dtype` (and the shapes) select the compiled program; tolerances, maxiter,
damping and the Huber delta are traced scalars, so changing them does not recompile. Numbers are float64
by default (scoped with `jax.enable_x64`, no global switch); float32 is an option (see the README for
measured speed and accuracy).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np

from bimix_jax.errors import InputError

LOSSES = ("l2", "huber")
DTYPES = ("float64", "float32")
# Unconstrained parameters are clipped into this box inside residuals so that no trial step of the
# solver can produce inf/nan (jaxopt blends accepted/rejected steps arithmetically: a nan would stick).
THETA_BOX = 60.0


class CurveModel(Protocol):
    """A per-group model in unconstrained parameters. Instances must be hashable (static under jit).

    Optional members:
    * `bounds`, ((lo, hi), ...) per parameter: parameters are clipped into them inside the residual
      (the Jacobian column vanishes beyond a bound, so the solver settles there);
    * `complete(theta_P, x, logy, w, variant) -> theta_Q`: the full parameter vector when the model
      eliminates some parameters in closed form (variable projection); without it theta is returned;
    * `penalty(theta_P, x, w) -> [K]`: extra residuals appended to the weighted ones (a ridge);
    * `has_variants = True`: `starts` then returns (theta0 [B, S, P], variant [B, S] int), each start solves
      the model's problem variant (e.g. an exponent pinned at its bound), `residual` and `complete`
      take it as a last argument, and `feasible(theta_P, x, logy, w, variant) -> bool` tells which
      results are admissible (the best admissible start wins).
    """

    n_params: int

    def residual(self, theta_P: jax.Array, x_NxF: jax.Array, logy_N: jax.Array, w_N: jax.Array) -> jax.Array:
        """Predicted minus observed log loss [N] (w: row weights, 0 on padding)."""

    def starts(self, x_NxF: np.ndarray, logy_N: np.ndarray, w_BxN: np.ndarray, n_starts: int) -> np.ndarray:
        """Starting points [B, n_starts, P] of one group for B weight vectors (numpy, host; w = 0: padding)."""


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """How to fit. Only n_starts, loss and dtype shape the compiled program; the rest are traced values."""

    n_starts: int = 4  # LM runs per group, from the best cells of the law's start grid
    maxiter: int = 60  # LM iterations per start (each problem stops earlier on its own criteria)
    loss: str = "l2"  # 'l2': least squares of log loss; 'huber': Huber loss of log loss
    huber_delta: float = 0.05  # Huber threshold on log-loss residuals (0.05 = 5% relative error)
    ftol: float = 1e-8  # stop when an accepted step lowers the cost by less than ftol * cost
    xtol: float = 1e-10  # stop when the step tried is below xtol * (xtol + ||theta||)
    gtol: float = 1e-12  # stop when ||J^T r|| <= gtol * (1 + cost)
    # Initial LM damping relative to max diag(J^T J). jaxopt damps with mu * I (no per-parameter scaling),
    # so a large value stalls poorly scaled parameters; the gain-ratio rule raises it when steps fail.
    damping: float = 1e-6
    dtype: str = "float64"  # 'float64' or 'float32' (stopping tolerances are floored at 1e-6 in float32)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise InputError(f"loss {self.loss!r} is not supported; choose one of {', '.join(LOSSES)}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype {self.dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        if not (isinstance(self.n_starts, int) and 1 <= self.n_starts <= 256):
            raise InputError(f"n_starts={self.n_starts!r} must be an integer in [1, 256]; pick e.g. 4")
        if not (isinstance(self.maxiter, int) and 1 <= self.maxiter <= 10_000):
            raise InputError(f"maxiter={self.maxiter!r} must be an integer in [1, 10000]; pick e.g. 60")
        if not (self.huber_delta > 0 and np.isfinite(self.huber_delta)):
            raise InputError(f"huber_delta={self.huber_delta!r} must be a positive number; pick e.g. 0.05")

    @property
    def effective_ftol(self) -> float:
        return max(self.ftol, 1e-6) if self.dtype == "float32" else self.ftol

    @property
    def effective_xtol(self) -> float:
        return max(self.xtol, 1e-6) if self.dtype == "float32" else self.xtol


class Solution(NamedTuple):
    """Result of `solve` (numpy arrays; `solve_batched` adds a leading replicate axis)."""

    theta: np.ndarray  # [G, P] best start's parameters
    cost: np.ndarray  # [G] 0.5 * sum(w * rho^2) at theta (inf: no admissible start)
    grad_norm: np.ndarray  # [G] ||J^T r|| at theta
    iterations: np.ndarray  # [G] LM iterations of the best start
    converged: np.ndarray  # [G] the best start met a stopping criterion before maxiter and is finite
    start_cost: np.ndarray  # [G, S] final cost of every start (inf: inadmissible or non-finite)
    start_theta: np.ndarray  # [G, S, P] final parameters of every start


# --------------------------------------------------------------------------------------------------
# Helpers for start generators (numpy, on the host: cheap, and no compile time).


def linear_pair_grid(z_AxN: np.ndarray, x_KxN: np.ndarray, w_BxN: np.ndarray) -> tuple[np.ndarray, ...]:
    """Variable projection of a two-term positive linear model on a grid, in closed form, per weight vector.

    For every weight vector b and grid cell (i, j) minimises over a, c >= 0 the weighted squared relative
    error `sum_n w_bn (1 - (a x_jn + c) z_in)^2` of the model `y_n = a x_jn + c` when z_in = 1 / y_n
    times row n's fixed factor under hypothesis i (BiMix: y = L r^alpha_i, x = s^-beta_j). Relative errors
    approximate the log-loss residuals of the fit. Every sum is a matrix product, so the grid costs a few
    [B,A,N]x[N,K] products. Returns a, c and the cost, each [B, A, K].
    """
    zw = z_AxN[None] * w_BxN[:, None, :]
    z2w = z_AxN[None] * zw
    a00 = z2w @ (x_KxN * x_KxN).T
    a01 = z2w @ x_KxN.T
    a11 = np.sum(z2w, axis=2, keepdims=True)
    b0 = zw @ x_KxN.T
    b1 = np.sum(zw, axis=2, keepdims=True)
    total = np.sum(w_BxN, axis=1)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        det = a00 * a11 - a01 * a01
        a = (a11 * b0 - a01 * b1) / det
        c = (a00 * b1 - a01 * b0) / det
        both = total - 2.0 * (a * b0 + c * b1) + a * a * a00 + 2.0 * a * c * a01 + c * c * a11
        ok = (a > 0) & (c > 0) & (det > 0)
        a_only, cost_a = b0 / a00, total - b0 * b0 / a00  # c = 0
        c_only, cost_c = b1 / a11, total - b1 * b1 / a11  # a = 0
    use_a = cost_a < cost_c
    a = np.where(ok, a, np.where(use_a, a_only, 0.0))
    c = np.where(ok, c, np.where(use_a, 0.0, c_only))
    cost = np.where(ok, both, np.where(use_a, cost_a, cost_c))
    return a, c, np.where(np.isfinite(cost), cost, np.inf)


def best_cells(cost_BxAxK: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j), each [B, n], of the n lowest-cost cells of each grid, best first (ties: lowest index)."""
    flat = np.argsort(cost_BxAxK.reshape(cost_BxAxK.shape[0], -1), axis=1, kind="stable")[:, :n]
    return flat // cost_BxAxK.shape[2], flat % cost_BxAxK.shape[2]


def take(v_BxAxK: np.ndarray, i_Bxn: np.ndarray, j_Bxn: np.ndarray) -> np.ndarray:
    """v[b, i[b, k], j[b, k]] -> [B, n]."""
    return v_BxAxK[np.arange(v_BxAxK.shape[0])[:, None], i_Bxn, j_Bxn]


def safe_log(x: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    return np.log(np.maximum(x, floor))


def pad_rows(n: int) -> int:
    """Padded row count: a power of two up to 128, then a multiple of 128 (few distinct shapes)."""
    if n <= 128:
        return max(8, 1 << (max(n, 1) - 1).bit_length())
    return -(-n // 128) * 128


def pack_groups(xs: list[np.ndarray], logys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads per-group rows to [G, N, F], [G, N], weights [G, N] (0 on padding rows, which copy row 0)."""
    n = pad_rows(max(len(y) for y in logys))
    g, f = len(xs), xs[0].shape[1]
    x = np.empty((g, n, f))
    logy = np.empty((g, n))
    w = np.zeros((g, n))
    for i, (xi, yi) in enumerate(zip(xs, logys)):
        k = len(yi)
        x[i] = xi[0]
        logy[i] = yi[0]
        x[i, :k] = xi
        logy[i, :k] = yi
        w[i, :k] = 1.0
    return x, logy, w


# --------------------------------------------------------------------------------------------------
# The compiled program.


def _bounds(model: CurveModel, dtype) -> tuple[jax.Array, jax.Array]:
    b = np.array(getattr(model, "bounds", None) or [(-THETA_BOX, THETA_BOX)] * model.n_params, dtype=float)
    return jnp.asarray(b[:, 0], dtype), jnp.asarray(b[:, 1], dtype)


def _clip(model: CurveModel, theta_P: jax.Array) -> jax.Array:
    lo, hi = _bounds(model, theta_P.dtype)
    return jnp.clip(theta_P, lo, hi)


def _variants(model: CurveModel) -> bool:
    return bool(getattr(model, "has_variants", False))


def _residual(model: CurveModel, loss: str, delta: float, theta_P, x_NxF, logy_N, sw_N, variant):
    theta_P = _clip(model, theta_P)
    extra = (variant,) if _variants(model) else ()
    e_N = model.residual(theta_P, x_NxF, logy_N, sw_N * sw_N, *extra)
    if loss == "huber":
        big = jnp.abs(e_N) > delta
        safe = jnp.where(big, jnp.abs(e_N), 2.0 * delta)
        e_N = jnp.where(big, jnp.sign(e_N) * jnp.sqrt(2.0 * delta * safe - delta * delta), e_N)
    r_N = e_N * sw_N
    r_N = jnp.where(jnp.isfinite(r_N), r_N, 1e6 * sw_N)
    if hasattr(model, "penalty"):  # Extra residuals, e.g. a ridge on some parameters.
        r_N = jnp.concatenate([r_N, model.penalty(theta_P, x_NxF, sw_N * sw_N)])
    return r_N


class _Tolerances(NamedTuple):
    """The numeric options, passed as traced scalars: changing them does not recompile."""

    maxiter: jax.Array
    huber_delta: jax.Array
    ftol: jax.Array
    xtol: jax.Array
    gtol: jax.Array
    damping: jax.Array

    @classmethod
    def of(cls, opts: SolverOptions, dtype) -> _Tolerances:
        return cls(np.int32(opts.maxiter), *(dtype(v) for v in (
            opts.huber_delta, opts.effective_ftol, opts.effective_xtol, opts.gtol, opts.damping)))


def _lm(model: CurveModel, loss: str, tol: _Tolerances) -> jaxopt.LevenbergMarquardt:
    return jaxopt.LevenbergMarquardt(
        residual_fun=functools.partial(_residual, model, loss, tol.huber_delta), materialize_jac=True,
        solver="cholesky", implicit_diff=False, jit=False, damping_parameter=tol.damping,
    )


def _solve_all(model: CurveModel, loss: str, tol: _Tolerances, theta0_BxGxSxP, variant_BxGxS, x_GxNxF, logy_GxN,
               w_BxGxN) -> dict[str, jax.Array]:
    """Every (replicate, group, start) problem, in one while loop whose body is the vmapped LM update.

    The problems are flattened to one batch axis and the loop runs outside vmap (rather than vmapping a
    per-problem while loop): both keep tracing and compilation cheap. Each problem still stops on its own:
    once done, its parameters and solver state are frozen.
    """
    b, g, s, p = theta0_BxGxSxP.shape
    grp = jnp.broadcast_to(jnp.arange(g)[None, :, None], (b, g, s)).reshape(-1)
    rep = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, g, s)).reshape(-1)
    args = (x_GxNxF[grp], logy_GxN[grp], jnp.sqrt(w_BxGxN)[rep, grp], variant_BxGxS.reshape(-1))
    lm = _lm(model, loss, tol)
    theta = _clip(model, jnp.nan_to_num(theta0_BxGxSxP.reshape(-1, p)))
    state = jax.vmap(lm.init_state)(theta, *args)
    state = state._replace(increase_factor=jnp.full(theta.shape[:-1], 2.0, theta.dtype))
    update = jax.vmap(lm.update)
    ftol, xtol, gtol = tol.ftol, tol.xtol, tol.gtol
    norm = lambda v: jnp.sqrt(jnp.sum(v * v, axis=-1))  # noqa: E731

    def cond(carry):
        it, _, _, _, done = carry
        return (it < tol.maxiter) & ~jnp.all(done)

    def body(carry):
        it, iters, theta, state, done = carry
        theta_new, state_new = update(theta, state, *args)
        decrease = state.value - state_new.value
        flat = (decrease > 0) & (decrease <= ftol * state.value)
        # The step tried (accepted or not) no longer moves the parameters.
        tiny_step = norm(state_new.delta) <= xtol * (xtol + norm(theta))
        stationary = state_new.error <= gtol * (1.0 + state_new.value)
        # Damping far above the curvature: steps are vanishing gradient steps, nothing left to gain.
        stuck = state_new.damping_factor > 1e10 * (1.0 + jnp.max(jnp.diagonal(state_new.jtj, 0, -2, -1), -1))
        active = ~done

        def keep(new, old):
            if new is None:
                return None
            return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - active.ndim)), new, old)

        theta = keep(theta_new, theta)
        state = jax.tree.map(keep, state_new, state, is_leaf=lambda v: v is None)
        return it + 1, iters + active, theta, state, done | (active & (flat | tiny_step | stationary | stuck))

    done = state.error <= gtol * (1.0 + state.value)
    zeros = jnp.zeros(done.shape, jnp.int32)
    _, iters, theta, state, done = jax.lax.while_loop(cond, body, (jnp.asarray(0), zeros, theta, state, done))

    theta = _clip(model, theta)
    cost = jnp.where(jnp.isfinite(state.value) & jnp.all(jnp.isfinite(theta), axis=-1), state.value, jnp.inf)
    if _variants(model):
        ok = jax.vmap(lambda th, x, y, sw, v: model.feasible(th, x, y, sw * sw, v))(theta, *args)
        cost = jnp.where(ok, cost, jnp.inf)
    if hasattr(model, "complete"):
        extra = _variants(model)
        full = lambda th, x, y, sw, v: model.complete(th, x, y, sw * sw, *((v,) if extra else ()))  # noqa: E731
        theta = jax.vmap(full)(theta, *args)
    unflat = lambda v: v.reshape((b, g, s) + v.shape[1:])  # noqa: E731
    theta, cost, iters, done, error = map(unflat, (theta, cost, iters, done, state.error))
    converged = done & jnp.isfinite(cost)
    best = jnp.argmin(cost, axis=-1)[..., None]  # [B, G, 1]: the best admissible start

    def pick(v):
        return jnp.take_along_axis(v, best.reshape(best.shape + (1,) * (v.ndim - 3)), axis=2)[:, :, 0]

    return dict(theta=pick(theta), cost=pick(cost), grad_norm=pick(error), iterations=pick(iters),
                converged=pick(converged), start_cost=cost, start_theta=theta)


@functools.partial(jax.jit, static_argnames=("model", "loss"))
def _solve_jit(model, loss, tol, theta0, variant, x_GxNxF, logy_GxN, w_BxGxN):
    return _solve_all(model, loss, tol, theta0, variant, x_GxNxF, logy_GxN, w_BxGxN)


def _starts(model: CurveModel, n_starts: int, x_GxNxF, logy_GxN, w_BxGxN) -> tuple[np.ndarray, np.ndarray]:
    """Starting points [B, G, S, P] and variants [B, G, S] from the model's host-side generator."""
    thetas, variants = [], []
    for g in range(x_GxNxF.shape[0]):
        out = model.starts(x_GxNxF[g], logy_GxN[g], w_BxGxN[:, g], n_starts)
        theta, variant = out if _variants(model) else (out, np.zeros(out.shape[:2], np.int32))
        thetas.append(theta)
        variants.append(variant)
    return np.stack(thetas, axis=1), np.stack(variants, axis=1).astype(np.int32)


def _call(model: CurveModel, opts: SolverOptions, x, logy, w_BxGxN) -> dict[str, np.ndarray]:
    theta0, variant = _starts(model, opts.n_starts, np.asarray(x, float), np.asarray(logy, float),
                              np.asarray(w_BxGxN, float))
    dt = np.float64 if opts.dtype == "float64" else np.float32
    with jax.enable_x64(opts.dtype == "float64"):  # numpy in, so no conversion programs get compiled.
        out = _solve_jit(model, opts.loss, _Tolerances.of(opts, dt), theta0.astype(dt), variant,
                         np.asarray(x, dt), np.asarray(logy, dt), np.asarray(w_BxGxN, dt))
        out = jax.device_get(out)
    return {k: np.asarray(v) for k, v in out.items()}


def solve(model: CurveModel, x_GxNxF: np.ndarray, logy_GxN: np.ndarray, w_GxN: np.ndarray,
          opts: SolverOptions = SolverOptions()) -> Solution:
    """Fits every group from `opts.n_starts` starts in one compiled call (see the module docstring)."""
    out = _call(model, opts, x_GxNxF, logy_GxN, np.asarray(w_GxN)[None])
    return Solution(**{k: v[0] for k, v in out.items()})


def solve_batched(model: CurveModel, x_GxNxF: np.ndarray, logy_GxN: np.ndarray, w_BxGxN: np.ndarray,
                  opts: SolverOptions = SolverOptions()) -> Solution:
    """`solve` for B weight vectors at once (bootstrap replicates): every field gets a leading [B] axis."""
    return Solution(**_call(model, opts, x_GxNxF, logy_GxN, w_BxGxN))
