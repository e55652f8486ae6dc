"""The nested prediction of Data Mixing Laws (Ye et al. §4): step law -> size law -> mixing law.

From small models on short runs, predict a larger model at a later step for any mixture:

1. step law per (size, run, eval domain), L(s) = E + (B/s)^beta on checkpoints <= `max_step`
   (`steplaw.py`), evaluated at `target_step` (a run measured there within `max_step` keeps its loss);
2. size law per (mixture, eval domain) over the small sizes, L(N) = E + (N0/N)^alpha with alpha tied over
   all curves and E per eval domain (`sizelaw.py`), evaluated at the target size's N;
3. the mixing law (default: the bounded Data Mixing Law) fitted on those predicted points; it predicts the target
   size at the target step for any mixture, and `optimize` searches its best mixture.
Mixtures are matched across sizes by their proportions (rounded to 6 decimals).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError
from bimix_jax.laws import fit as fit_lib
from bimix_jax.laws import levenberg_marquardt as lm
from bimix_jax.laws import protocols, regression, sizelaw, steplaw
from bimix_jax.laws.base import FittedLaw


def mixture_key(p_D: np.ndarray) -> str:
    return "-".join(f"{round(float(p), 6):g}" for p in p_D)


def predict_nested(table: lt.LossTable, *, small_sizes: Sequence[str], target_size: str, target_step: float,
                   max_step: float | None = None, law: str = "dml", tie_e: bool = True,
                   sizes: Mapping[str, float] | None = None, options: lm.SolverOptions = lm.SolverOptions()
                   ) -> dict[str, Any]:
    """Fits the three nested laws; returns {'fitted': FittedLaw at (target_size, target_step), 'predicted':
    LossTable of the size-law points, 'size_law', 'step_law' reports}."""
    if not table.has_model_size:
        raise InputError(f"loss table {table.source} has no model_size column; the nested prediction needs sizes")
    missing = [s for s in small_sizes if s not in table.model_sizes]
    if missing:
        raise InputError(f"model size {missing[0]!r} is not in {table.source}; choose from "
                         f"{', '.join(table.model_sizes)}")
    n_target = sizelaw.n_params(target_size, sizes)
    curves, direct = [], []  # step-law curves; (key, domain, size, loss) observed at the target step
    meta = {}
    for size in small_sizes:
        sub = table.for_model_size(size)
        if max_step is not None:
            sub = sub.subset(sub.step <= max_step, what=f"{size} rows at step <= {max_step:g}")
        mixes = sub.mixtures()
        for run in sub.runs:
            key = mixture_key(mixes[run])
            meta[key] = mixes[run]
            for e in sub.eval_domains:
                m = (sub.run == run) & (sub.eval_domain == e)
                if not m.any():
                    continue
                at = np.isclose(sub.step[m], target_step, rtol=1e-9)
                if at.any():
                    direct.append((key, e, size, float(sub.loss[m][at][0])))
                else:
                    curves.append(((key, size), e, sub.step[m], sub.loss[m]))
    fits = steplaw.fit_step_laws([(f"{k[1]}:{k[0]}", e, s, y) for k, e, s, y in curves], target_step, options)
    points = [(c[0][0], c[1], c[0][1], float(v)) for c, v in zip(curves, fits.prediction)] + direct
    size_fit = sizelaw.fit_size_law([((key, e), e, sizelaw.n_params(size, sizes), y) for key, e, size, y in points],
                               tie_e=tie_e)
    pred = size_fit.predict(n_target)
    domains = table.domains
    rows = [{"run": f"{target_size}_nested_{key}", "model_size": target_size, "step": float(target_step),
             **{f"p_{d}": float(p) for d, p in zip(domains, meta[key])}, "eval_domain": e, "loss": float(y)}
            for (key, e), y in zip(size_fit.curves, pred)]
    predicted = lt.from_rows(rows)
    fitted = fit_lib.fit_law(predicted, law, target_step=float(target_step))
    return {"fitted": fitted, "predicted": predicted,
            "size_law": {"alpha": size_fit.alpha, "rms_rel": size_fit.rms_rel, "tie_e": tie_e, "n_target": n_target,
                         "curves": {f"{k}/{e}": {"E": float(E), "N0": float(n0), "predicted": float(y)}
                                    for (k, e), E, n0, y in zip(size_fit.curves, size_fit.E, size_fit.N0, pred)}},
            "step_law": {"curves": int(fits.run.size), "all_converged": bool(np.all(fits.converged)),
                         "max_rmse_log": float(np.max(fits.rmse_log)) if fits.run.size else None},
            "mixtures": len(meta), "observed_at_target_step": len(direct)}


def score_against(fitted: FittedLaw, observed: lt.LossTable) -> dict[str, Any]:
    """Prediction error of `fitted` on the observed rows (same step): per domain and mean over domains."""
    pred = protocols.predict_rows(fitted, observed)
    per = {e: protocols.metrics(observed.loss[observed.eval_domain == e], pred[observed.eval_domain == e])
           for e in observed.eval_domains}
    return {"per_domain": per, **protocols.summarise(per, observed.loss, pred), "predicted": pred}


def optimize(fitted: FittedLaw, prior_D: np.ndarray, *, weights_E: np.ndarray | None = None, n_samples: int = 50_000,
             top_k: int = 100, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The mixture minimising the weighted mean predicted loss (RegMix's Dirichlet search around `prior_D`)."""
    import jax.numpy as jnp

    e = len(fitted.eval_domains)
    w = np.full(e, 1.0 / e) if weights_E is None else np.asarray(weights_E, float) / np.sum(weights_E)
    model = fitted.model
    params = {k: np.asarray(v) for k, v in fitted.params.items()}
    step = fitted.target_step or 0.0
    return regression.regmix_optimize(
        lambda r: model.predict({k: jnp.asarray(v) for k, v in params.items()}, r, step) @ jnp.asarray(w),
        prior_D, n_samples=n_samples, top_k=top_k, seed=seed)
