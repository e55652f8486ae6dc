"""Regression laws over the mixture at one step (RegMix, Liu et al. arXiv 2407.01492), and RegMix's optimiser.

Each eval domain gets its own regressor from proportions r [D] to the loss at `FittedLaw.target_step`,
fitted on the runs measured there (no step law: many small runs, one step):

* `linear`:    L = b + w . r                       params b [E], w [E, D]
* `loglinear`: log L = b + w . r                   params b [E], w [E, D]
* `kernel`:    log L = mu + sum_n a_n k(r, x_n),  k = exp(-|r - x|^2 / (2 ls^2)), kernel ridge regression;
               params x [E, N, D] (training mixtures), a [E, N], mu [E], ls [E]. The length scale and the
               ridge are chosen per eval domain on a grid (`LS_GRID` 0.02-20, `LAM_GRID` 1e-6-1) by exact
               leave-one-out error (closed form: residual_i = a_i / [(K + lam I)^-1]_ii; one eigendecomposition
               per length scale serves every ridge and every eval domain measured on the same runs); a choice at
               an end of a grid is logged and marked in the summary (`at_grid_edge`).

RegMix's own regressor, LightGBM, is `lightgbm_law.py` (optional dependency); the kernel ridge is its smooth,
differentiable stand-in (compare_laws measures both families side by side with the parametric laws). `regmix_optimize` is RegMix's search: many Dirichlet
samples around the token distribution, the mean of the top-k by predicted loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions
from bimix_jax.laws.base import FittedLaw, Law, register

# Kernel length scales and ridges tried (exact leave-one-out choice); a choice at an end of a grid is reported.
LS_GRID = tuple(float(v) for v in np.geomspace(0.02, 20.0, 16))
LAM_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
LINEAR_RIDGE = 1e-8  # keeps the least squares well posed on the simplex (sum r = 1 duplicates the intercept)


def _rows_at(table, eval_domain: str, target: float) -> tuple[np.ndarray, np.ndarray]:
    m = (table.eval_domain == eval_domain) & np.isclose(table.step, target, rtol=1e-9)
    return table.p[m], table.loss[m]


def _ridge_fit(x_NxD: np.ndarray, y_N: np.ndarray) -> tuple[float, np.ndarray]:
    a = np.concatenate([np.ones((len(y_N), 1)), x_NxD], axis=1)
    coef = np.linalg.solve(a.T @ a + LINEAR_RIDGE * np.eye(a.shape[1]), a.T @ y_N)
    return float(coef[0]), coef[1:]


def _loo_all(x_NxD: np.ndarray, z_NxE: np.ndarray) -> np.ndarray:
    """Leave-one-out mean squared error [LS, LAM, E] of kernel ridge on the centred columns of z, for every grid
    cell: one eigendecomposition per length scale serves every ridge and every column (closed form: residual_i =
    a_i / [(K + lam I)^-1]_ii)."""
    out = np.empty((len(LS_GRID), len(LAM_GRID), z_NxE.shape[1]))
    d2 = np.sum((x_NxD[:, None, :] - x_NxD[None, :, :]) ** 2, axis=-1)
    for i, ls in enumerate(LS_GRID):
        lam_K, v = np.linalg.eigh(np.exp(-0.5 * d2 / ls ** 2))
        vz, v2 = v.T @ z_NxE, v * v
        for j, lam in enumerate(LAM_GRID):
            inv_K = 1.0 / np.maximum(lam_K + lam, 1e-300)
            a = v @ (inv_K[:, None] * vz)
            diag = v2 @ inv_K
            out[i, j] = np.mean((a / diag[:, None]) ** 2, axis=0)
    return out


def _kernel_fit(x_NxD: np.ndarray, logy_NxE: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per column of logy, the kernel ridge with the best (ls, lam) by exact leave-one-out error."""
    mu = np.mean(logy_NxE, axis=0)
    loo = _loo_all(x_NxD, logy_NxE - mu)
    out = []
    for e in range(logy_NxE.shape[1]):
        cell = np.where(np.isfinite(loo[..., e]), loo[..., e], np.inf)
        i, j = np.unravel_index(int(np.argmin(cell)), cell.shape)
        ls, lam = LS_GRID[i], LAM_GRID[j]
        k = np.exp(-0.5 * np.sum((x_NxD[:, None] - x_NxD[None]) ** 2, axis=-1) / ls ** 2)
        a = np.linalg.solve(k + lam * np.eye(len(x_NxD)), logy_NxE[:, e] - mu[e])
        edge = [name for name, idx, grid in (("ls", i, LS_GRID), ("lam", j, LAM_GRID)) if idx in (0, len(grid) - 1)]
        out.append({"x": x_NxD, "a": a, "mu": float(mu[e]), "ls": ls, "lam": lam,
                    "loo_rmse_log": float(np.sqrt(cell[i, j])), "at_grid_edge": ",".join(edge)})
    return out


class _Regression(Law):
    """Shared plumbing: fitted at one step, per eval domain, directly (no Levenberg-Marquardt)."""

    uses_step = False
    min_runs: int = 3

    def check_inputs(self, r_D: np.ndarray, s: np.ndarray) -> None:
        if r_D.shape[-1:] != (len(self.train_domains),):
            raise InputError(f"proportions have shape {r_D.shape}; expected [..., {len(self.train_domains)}]")

    def fit_direct(self, table, *, target_step: float | None = None, **options) -> FittedLaw:
        """Fits every eval domain on the rows measured at `target_step` (default: the table's largest step)."""
        unknown = sorted(k for k in options if k not in ("n_starts", "maxiter", "loss", "huber_delta", "dtype",
                                                         "ftol", "xtol", "gtol", "damping"))
        if unknown:
            raise InputError(f"law {self.name} takes no option {unknown[0]!r}; remove it")
        target = float(np.max(table.step)) if target_step is None else float(target_step)
        summary = {"target_step": target, "domains": {}}
        xs, ys = [], []
        for e in self.eval_domains:
            x, y = _rows_at(table, e, target)
            if len(np.unique(np.round(x, 9), axis=0)) < self.min_runs:
                raise InputError(f"eval domain {e!r}: {len(x)} runs measured at step {target:g}; the {self.name} "
                                 f"law needs at least {self.min_runs}: add runs or choose another --target_step")
            xs.append(x)
            ys.append(y)
        per = self.fit_domains(xs, ys)
        for e, y, p in zip(self.eval_domains, ys, per):
            summary["domains"][e] = {"runs": int(len(y)), **{k: (v if isinstance(v, str) else float(v))
                                                             for k, v in p.items() if np.ndim(v) == 0}}
        params = self.stack(per)
        return FittedLaw(self.name, self.version, self.train_domains, self.eval_domains, params, target, summary)

    def fit_domain(self, x_NxD: np.ndarray, y_N: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def fit_domains(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per eval domain's (mixtures, losses), its parameters (override to share work across domains)."""
        return [self.fit_domain(x, y) for x, y in zip(xs, ys)]

    def stack(self, per: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([np.asarray(p[k], float) for p in per]) for k in self.param_names}


@register
class Linear(_Regression):
    """L_e(r) = b_e + w_e . r at the target step; params b [E], w [E, D]."""

    name = "linear"
    param_names = ("b", "w")

    def fit_domain(self, x_NxD, y_N):
        b, w = _ridge_fit(x_NxD, y_N)
        return {"b": b, "w": w}

    def predict(self, params, r_D, s):
        del s
        return params["b"] + jnp.asarray(r_D) @ jnp.swapaxes(params["w"], -1, -2)


@register
class LogLinear(_Regression):
    """log L_e(r) = b_e + w_e . r at the target step; params b [E], w [E, D]."""

    name = "loglinear"
    param_names = ("b", "w")

    def fit_domain(self, x_NxD, y_N):
        b, w = _ridge_fit(x_NxD, np.log(y_N))
        return {"b": b, "w": w}

    def predict(self, params, r_D, s):
        del s
        return jnp.exp(params["b"] + jnp.asarray(r_D) @ jnp.swapaxes(params["w"], -1, -2))


@register
class Kernel(_Regression):
    """log L_e(r) = mu_e + sum_n a_en exp(-|r - x_en|^2 / (2 ls_e^2)); params x [E, N, D], a [E, N], mu, ls [E]."""

    name = "kernel"
    param_names = ("x", "a", "mu", "ls")
    min_runs = 4

    def fit_domain(self, x_NxD, y_N):
        return _kernel_fit(np.asarray(x_NxD, float), np.log(np.asarray(y_N, float))[:, None])[0]

    def fit_domains(self, xs, ys):
        """Domains measured on the same mixtures share the eigendecompositions (one per length scale)."""
        out: list = [None] * len(xs)
        groups: dict[bytes, list[int]] = {}
        for k, x in enumerate(xs):
            groups.setdefault(np.ascontiguousarray(x, float).tobytes() + bytes(str(x.shape), "ascii"), []).append(k)
        for idx in groups.values():
            logy = np.stack([np.log(np.asarray(ys[k], float)) for k in idx], axis=1)
            for k, p in zip(idx, _kernel_fit(np.asarray(xs[idx[0]], float), logy)):
                out[k] = p
        edge = [(e, p["at_grid_edge"], p["ls"], p["lam"]) for e, p in zip(self.eval_domains, out) if p["at_grid_edge"]]
        for e, which, ls, lam in edge:
            logging.warning("kernel law, eval domain %s: the leave-one-out choice (ls=%g, lam=%g) sits at the edge "
                            "of the %s grid; the best setting may lie beyond it", e, ls, lam, which)
        return out

    def stack(self, per):
        n = max(len(p["a"]) for p in per)  # Pad rows with a = 0 (no contribution).

        def pad(v: np.ndarray, k: str) -> np.ndarray:
            return np.concatenate([v, np.zeros((n - len(v),) + v.shape[1:])]) if k in ("x", "a") else v

        return {k: np.stack([pad(np.asarray(p[k], float), k) for p in per]) for k in self.param_names}

    def predict(self, params, r_D, s):
        del s
        r = jnp.asarray(r_D)
        d2 = jnp.sum((r[..., None, None, :] - params["x"]) ** 2, axis=-1)  # [..., E, N]
        k = jnp.exp(-0.5 * d2 / params["ls"][..., None] ** 2)
        return jnp.exp(params["mu"] + jnp.sum(k * params["a"], axis=-1))


def regmix_optimize(loss_fn: Callable[[jax.Array], jax.Array], prior_D: np.ndarray, *, n_samples: int = 100_000,
                    top_k: int = 100, seed: int = 0, scales: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0)
                    ) -> tuple[np.ndarray, dict]:
    """RegMix's search: Dirichlet samples around `prior_D` (the token distribution) at several concentration
    scales, `loss_fn` [M, D] -> [M] predicted target loss, the mean of the `top_k` lowest. Returns (r_D, info)."""
    prior = proportions.check_array(prior_D, np.size(prior_D), field="the RegMix prior")
    rng = np.random.default_rng(seed)
    alpha = np.maximum(prior, 1e-3) * len(prior)
    per = -(-n_samples // len(scales))
    samples = np.concatenate([rng.dirichlet(alpha * s, size=per) for s in scales])[:n_samples]
    samples = np.clip(samples, 0.0, None)
    samples /= samples.sum(axis=1, keepdims=True)
    with jax.enable_x64(True):
        pred = np.asarray(jax.jit(loss_fn)(jnp.asarray(samples)))
    order = np.argsort(np.where(np.isfinite(pred), pred, np.inf))[:top_k]
    r = samples[order].mean(axis=0)
    return r, {"n_samples": int(len(samples)), "top_k": int(top_k), "top_k_pred_mean": float(pred[order].mean()),
               "best_pred": float(pred[order[0]])}
