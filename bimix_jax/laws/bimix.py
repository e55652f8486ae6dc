"""BiMix (Ge et al., arXiv 2405.14908): a bivariate law in the own-domain proportion and the step.

Paper form, per eval domain i: `L_i(r_i, s) = A_i / r_i^alpha_i * (B_i / s^beta_i + C_i)`. Only the
products A*B and A*C are identifiable ((A, B, C) -> (kA, B/k, C/k) changes no prediction), so we fit the
identifiable 4-parameter form

    L_e(r, s) = r_own(e)^(-alpha_e) * (a_e * s^(-beta_e) + c_e),   a = A*B, c = A*C,

with every parameter positive. `FittedLaw.params = {'a': [E], 'c': [E], 'alpha': [E], 'beta': [E]}` in
these natural units; own(e) = `train_domains.index(eval_domains[e])`, so every eval domain must be a
training domain.

Fitting (per eval domain, all domains x starts in one compiled call, see `solver`) minimises least
squares (default, the paper's objective) or the Huber loss of log-loss residuals,
`log L = logaddexp(log a' - beta * (log s - log s_ref), log c) - alpha * log r`, in unconstrained
parameters (logs of a', c, beta, and of alpha for Huber); s_ref, the geometric mean of the fitted steps,
decorrelates a' and beta (a = a' * s_ref^beta). log L is linear in alpha, so least squares eliminates it
in closed form (variable projection, see `BiMixProfiledCurve`). Starting points come from variable
projection on an (alpha, beta) grid: for fixed (alpha, beta), L r^alpha = a s^-beta + c is linear in
(a, c), solved in closed form for all 240 cells at once. alpha and beta are bounded below by
ALPHA_MIN = 1e-6 (the fitted value for a domain whose loss ignores its share).

Rows whose own proportion is 0 are excluded from a fit (the law diverges at r = 0) and counted in the
summary. `FittedLaw.predict` rejects r_own = 0 with an `InputError` for concrete inputs; inside traced
code (jit/grad) r_own = 0 yields a loss of +inf (and non-finite gradients), so optimisers must keep
proportions strictly positive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bimix_jax.errors import InputError
from bimix_jax.laws import levenberg_marquardt as lm
from bimix_jax.laws.base import FitProblem, Law, register

PARAM_NAMES = ("a", "c", "alpha", "beta")
# Start grid (variable projection cells); alpha ~ 0 means "this domain barely cares about its share".
ALPHA_GRID = np.geomspace(1e-3, 2.0, 12)
BETA_GRID = np.geomspace(0.02, 3.0, 20)
START_FLOOR = 1e-3  # floor (nats) for the grid's linear coefficients before taking logs
ALPHA_MIN = 1e-6  # lower bound of alpha (and beta): "the loss ignores this proportion (or the step)"
_LOG_MIN = float(np.log(ALPHA_MIN))


def _grid(x_NxF: np.ndarray, logy_N: np.ndarray, w_BxN: np.ndarray):
    """Variable projection on the (alpha, beta) grid: (a, c) in closed form per cell; [B, A, K] each."""
    z_AxN = np.exp(-ALPHA_GRID[:, None] * x_NxF[None, :, 0] - logy_N[None, :])  # 1 / (L r^alpha)
    xs_KxN = np.exp(-BETA_GRID[:, None] * x_NxF[None, :, 1])  # (s / s_ref)^-beta
    return lm.linear_pair_grid(z_AxN, xs_KxN, w_BxN)


@dataclasses.dataclass(frozen=True)
class BiMixCurve:
    """Per-eval-domain model, theta = (log a', log c, log alpha, log beta); x = [log r, log s - log s_ref].

    Used with the Huber loss. log alpha and log beta are bounded below by log ALPHA_MIN.
    """

    n_params: int = 4
    bounds: tuple = ((-60.0, 60.0), (-60.0, 60.0), (_LOG_MIN, 3.0), (_LOG_MIN, 3.0))

    def residual(self, theta_P, x_NxF, logy_N, w_N):
        log_a, log_c, log_alpha, log_beta = theta_P[0], theta_P[1], theta_P[2], theta_P[3]
        log_l = jnp.logaddexp(log_a - jnp.exp(log_beta) * x_NxF[:, 1], log_c) - jnp.exp(log_alpha) * x_NxF[:, 0]
        return log_l - logy_N

    def starts(self, x_NxF, logy_N, w_BxN, n_starts):
        a, c, cost = _grid(x_NxF, logy_N, w_BxN)
        i, j = lm.best_cells(cost, n_starts)
        return np.stack([lm.safe_log(lm.take(a, i, j), START_FLOOR),
                         lm.safe_log(lm.take(c, i, j), START_FLOOR),
                         np.log(ALPHA_GRID[i]), np.log(BETA_GRID[j])], axis=-1)


@dataclasses.dataclass(frozen=True)
class BiMixProfiledCurve:
    """Least-squares model with alpha eliminated: theta = (log a', log c, log beta);
    x = [log r, log s - log s_ref].

    log L = logaddexp(log a' - beta * x1, log c) - alpha * x0 is linear in alpha, so for given theta
    the best alpha is a one-variable weighted regression (variable projection) and LM solves for 3
    parameters. alpha >= ALPHA_MIN splits the problem into two smooth variants, solved from different
    starts: 'free' (alpha profiled; admissible only if it ends >= ALPHA_MIN) and 'pinned' (alpha =
    ALPHA_MIN, for domains whose loss ignores their share). The best admissible start is the
    constrained optimum; clamping alpha inside the residual instead leaves a kink that stalls LM.
    A start is pinned when its grid cell has the grid's smallest alpha; with 2+ starts both variants
    are always tried. `complete` returns (log a', log c, log alpha, log beta).
    """

    n_params: int = 3
    bounds: tuple = ((-60.0, 60.0), (-60.0, 60.0), (_LOG_MIN, 3.0))
    has_variants: bool = True  # variant 0: alpha free (profiled); 1: alpha pinned at ALPHA_MIN

    def _parts(self, theta_P, x_NxF, logy_N, w_N, variant):
        g_N = jnp.logaddexp(theta_P[0] - jnp.exp(theta_P[2]) * x_NxF[:, 1], theta_P[1]) - logy_N
        lr_N = x_NxF[:, 0]
        alpha_free = jnp.sum(w_N * g_N * lr_N) / jnp.sum(w_N * lr_N * lr_N)
        return g_N, jnp.where(variant == 1, ALPHA_MIN, alpha_free)

    def residual(self, theta_P, x_NxF, logy_N, w_N, variant):
        g_N, alpha = self._parts(theta_P, x_NxF, logy_N, w_N, variant)
        return g_N - alpha * x_NxF[:, 0]

    def feasible(self, theta_P, x_NxF, logy_N, w_N, variant):
        return self._parts(theta_P, x_NxF, logy_N, w_N, variant)[1] >= ALPHA_MIN

    def complete(self, theta_P, x_NxF, logy_N, w_N, variant):
        alpha = jnp.maximum(self._parts(theta_P, x_NxF, logy_N, w_N, variant)[1], ALPHA_MIN)
        return jnp.stack([theta_P[0], theta_P[1], jnp.log(alpha), theta_P[2]])

    def starts(self, x_NxF, logy_N, w_BxN, n_starts):
        a, c, cost = _grid(x_NxF, logy_N, w_BxN)
        i, j = lm.best_cells(cost, n_starts)
        variant = (i == 0).astype(np.int32)
        if variant.shape[1] > 1:  # Try both variants.
            same = np.all(variant == variant[:, :1], axis=1)
            variant[same, -1] = 1 - variant[same, 0]
        theta = np.stack([lm.safe_log(lm.take(a, i, j), START_FLOOR),
                          lm.safe_log(lm.take(c, i, j), START_FLOOR), np.log(BETA_GRID[j])], axis=-1)
        return theta, variant


@register
class BiMix(Law):
    """L_e(r, s) = r_own(e)^(-alpha_e) * (a_e * s^(-beta_e) + c_e); params a, c, alpha, beta: [E]."""

    name = "bimix"
    version = 1
    uses_step = True

    def __init__(self, train_domains: Sequence[str], eval_domains: Sequence[str]):
        super().__init__(train_domains, eval_domains)
        for e in self.eval_domains:
            if e not in self.train_domains:
                raise InputError(
                    f"eval domain {e!r} is not a training domain (no column p_{e}); BiMix predicts a domain from "
                    "its own proportion: use --law=dml for such domains or drop their rows"
                )
        self.own_index = np.array([self.train_domains.index(e) for e in self.eval_domains], dtype=np.int32)

    def predict(self, params: Mapping[str, jax.Array], r_D: jax.Array, s: jax.Array) -> jax.Array:
        r_E = jnp.asarray(r_D)[..., self.own_index]
        return r_E ** (-params["alpha"]) * (params["a"] * s ** (-params["beta"]) + params["c"])

    def check_params(self, params: Mapping[str, np.ndarray]) -> None:
        if set(params) != set(PARAM_NAMES):
            raise InputError(f"bimix parameters must be {', '.join(PARAM_NAMES)}, got {', '.join(sorted(params))}; "
                             "refit")
        for k in PARAM_NAMES:
            v = np.asarray(params[k])
            if v.shape != (len(self.eval_domains),):
                raise InputError(f"bimix parameter {k!r} has shape {v.shape}, expected ({len(self.eval_domains)},); "
                                 "refit")
            if not np.all(v > 0):
                raise InputError(f"bimix parameter {k!r} must be positive; refit with experiments.fit_law")

    def predictable(self, r_ND: np.ndarray, eval_domain: str) -> np.ndarray:
        return np.asarray(r_ND)[:, self.train_domains.index(eval_domain)] > 0

    def check_inputs(self, r_D: np.ndarray, s: np.ndarray) -> None:
        if r_D.shape[-1:] != (len(self.train_domains),):
            raise InputError(f"proportions have shape {r_D.shape}; expected [..., {len(self.train_domains)}] "
                             f"over {', '.join(self.train_domains)}")
        own = r_D[..., self.own_index]
        if np.any(own <= 0):
            e = self.eval_domains[int(np.argmax(np.any(own.reshape(-1, len(self.eval_domains)) <= 0, axis=0)))]
            raise InputError(f"BiMix cannot predict eval domain {e!r} at p_{e} = 0 (its loss diverges as r^-alpha); "
                             f"give p_{e} a positive proportion")
        if np.any(s <= 0):
            raise InputError(f"step {float(np.min(s)):g} must be positive")

    def fit_problem(self, table, options: lm.SolverOptions, *, step_min: float | str = 0.0) -> FitProblem:
        """step_min: checkpoints below it are not fitted; 'auto': chosen per eval domain by backtesting (`backtest`)."""
        if not (step_min == "auto" or (isinstance(step_min, (int, float)) and np.isfinite(step_min))):
            raise InputError(f"bimix step_min={step_min!r} must be a step or 'auto'")
        if step_min != "auto":
            table = table.subset(table.step >= float(step_min), what=f"rows at step >= {step_min:g}")
        xs, logys, runs, ls_ref, per_domain = [], [], [], [], {}
        for e, j in zip(self.eval_domains, self.own_index):
            rows = table.eval_domain == e
            use = rows & (table.p[:, j] > 0)
            n_zero = int(np.sum(rows & ~use))
            if not use.any():
                raise InputError(f"eval domain {e!r}: every row has p_{e} = 0; BiMix needs runs that train on {e} "
                                 "(or fit it with --law=dml)")
            if n_zero:
                logging.info("bimix: excluded %d rows of eval domain %s with p_%s = 0", n_zero, e, e)
            log_s = np.log(table.step[use])
            ref = float(np.mean(log_s))
            xs.append(np.stack([np.log(table.p[use, j]), log_s - ref], axis=1))
            logys.append(np.log(table.loss[use]))
            runs.append(table.run[use])
            ls_ref.append(ref)
            per_domain[e] = {
                "rows_used": int(use.sum()), "rows_excluded_zero_proportion": n_zero,
                "runs": len(set(table.run[use].tolist())),
                "proportions": sorted(set(np.round(table.p[use, j], 6).tolist())),
                "steps": [float(table.step[use].min()), float(table.step[use].max())],
            }
        model = BiMixProfiledCurve() if options.loss == "l2" else BiMixCurve()
        summary_extra = {}
        if step_min == "auto":
            first_E, scores = backtest(model, xs, logys, ls_ref, options)
            for g, e in enumerate(self.eval_domains):
                keep = xs[g][:, 1] + ls_ref[g] >= np.log(first_E[g]) - 1e-9
                xs[g], logys[g], runs[g] = xs[g][keep], logys[g][keep], runs[g][keep]
                per_domain[e].update({"rows_used": int(keep.sum()), "step_min": float(first_E[g]),
                                      "backtest_mre_pct": scores[g]})
            summary_extra["step_min"] = {e: float(v) for e, v in zip(self.eval_domains, first_E)}
        ls_ref_E = np.array(ls_ref)
        eval_domains = self.eval_domains

        def check_rows(g: int, keep_N: np.ndarray) -> str | None:
            e = eval_domains[g]
            n = int(np.sum(keep_N))
            if n < 4:
                return (f"eval domain {e!r}: {n} rows with p_{e} > 0, fewer than the 4 BiMix parameters "
                        f"(a, c, alpha, beta); add checkpoints or runs")
            props = np.unique(np.round(xs[g][keep_N, 0], 9))
            if props.size < 2:
                run_list = ", ".join(sorted(set(runs[g][keep_N].tolist()))[:4])
                return (f"eval domain {e!r}: every fitting row has p_{e} = {np.exp(props[0]):.6g} (runs {run_list}); "
                        f"its exponent alpha is not identifiable: add a run with another p_{e}")
            steps = np.unique(np.round(xs[g][keep_N, 1], 9))
            if steps.size < 3:
                return (f"eval domain {e!r}: the fitting rows have {steps.size} distinct steps; beta needs at least 3: "
                        "add checkpoints")
            return None

        def to_params(theta_xP: np.ndarray) -> dict[str, np.ndarray]:
            theta_xP = np.asarray(theta_xP, dtype=np.float64)
            beta = np.exp(theta_xP[..., 3])
            return {"a": np.exp(theta_xP[..., 0] + beta * ls_ref_E), "c": np.exp(theta_xP[..., 1]),
                    "alpha": np.exp(theta_xP[..., 2]), "beta": beta}

        summary = {
            "rows_used": int(sum(d["rows_used"] for d in per_domain.values())),
            "rows_excluded_zero_proportion": sum(d["rows_excluded_zero_proportion"] for d in per_domain.values()),
            "runs": len(set(np.concatenate(runs).tolist())),
            "steps": [float(min(d["steps"][0] for d in per_domain.values())),
                      float(max(d["steps"][1] for d in per_domain.values()))],
            "per_domain": per_domain,
            **summary_extra,
        }
        return FitProblem(model=model, x=tuple(xs), logy=tuple(logys), runs=tuple(runs),
                          to_params=to_params, check_rows=check_rows, summary=summary)


# Backtest of the first fitted step: hold out the last BACKTEST_HOLD of the fit data's checkpoints, fit from
# each candidate first step (a fraction of the earlier checkpoints dropped), keep the best predictor.
BACKTEST_DROP = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)  # fraction of the earlier distinct checkpoints dropped
BACKTEST_HOLD = 0.2  # fraction of the distinct checkpoints held out (the latest)


def backtest(model, xs: list[np.ndarray], logys: list[np.ndarray], ls_ref: list[float],
             options: lm.SolverOptions) -> tuple[np.ndarray, list[dict[str, float]]]:
    """First fitted step per eval domain [E], chosen by predicting the last checkpoints from the earlier ones.

    Every (candidate, domain) fit runs in one compiled call (candidates are weight vectors). Returns the
    chosen steps and, per domain, the backtest mean relative error (%) of each candidate first step.
    """
    x, logy, w = lm.pack_groups(xs, logys)
    c_n, g_n = len(BACKTEST_DROP), len(xs)
    w_CxGxN = np.zeros((c_n,) + w.shape)
    held_GxN = np.zeros(w.shape, bool)
    first = np.zeros((g_n, c_n))
    for g in range(g_n):
        step_N = np.round(np.exp(x[g, :, 1] + ls_ref[g]), 6)
        uniq = np.unique(step_N[w[g] > 0])
        n_hold = max(1, int(round(BACKTEST_HOLD * len(uniq))))
        pool = uniq[:-n_hold]
        held_GxN[g] = (w[g] > 0) & (step_N >= uniq[-n_hold])
        for c, frac in enumerate(BACKTEST_DROP):
            i = min(int(frac * len(pool)), max(len(pool) - 3, 0))  # keep >= 3 steps for beta
            first[g, c] = pool[i] if len(pool) else uniq[0]
            w_CxGxN[c, g] = w[g] * ~held_GxN[g] * (step_N >= first[g, c])
    sol = lm.solve_batched(model, x, logy, w_CxGxN, options)
    th = sol.theta  # [C, G, 4] completed: log a', log c, log alpha, log beta
    log_pred = (np.logaddexp(th[..., 0:1] - np.exp(th[..., 3:4]) * x[None, :, :, 1], th[..., 1:2])
                - np.exp(th[..., 2:3]) * x[None, :, :, 0])
    re = np.abs(np.expm1(log_pred - logy[None]))
    mre = np.where(held_GxN[None], re, 0.0).sum(-1) / np.maximum(held_GxN.sum(-1), 1)[None]  # [C, G]
    mre = np.where(np.isfinite(mre), mre, np.inf)
    best = np.argmin(mre, axis=0)
    scores = [{f"{first[g, c]:g}": float(100 * mre[c, g]) for c in range(c_n)} for g in range(g_n)]
    return first[np.arange(g_n), best], scores
