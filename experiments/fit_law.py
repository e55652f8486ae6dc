r"""Fits a mixing law to a loss table; optionally scores it on held-out runs or checkpoints.

Laws: bimix, dml (the Data Mixing Law), and the regression laws linear, loglinear, kernel (one step, closed
form) and lightgbm (RegMix's regressor; optional dependency: pip install -e '.[regmix]').

    python -m experiments.fit_law --losses=table.csv --law=bimix --model_size=160M --out=fit.json
    python -m experiments.fit_law --losses=table.csv --law=bimix --model_size=70M --holdout=mixtures \
        --out=fit.json --plot=fit.png
    python -m experiments.fit_law --losses=table.csv --law=dml --model_size=410M --target_step=60000 \
        --holdout=mixtures --holdout_runs=run_a,run_b --out=fit.json
    python -m experiments.fit_law --losses=table.csv --law=kernel --model_size=410M --target_step=60000 \
        --out=kernel.json
    python -m experiments.fit_law --losses=regmix_1M.csv --normalize --law=lightgbm --search_samples=100000 \
        --search_weights=pile_cc=1 --out=lightgbm.json

Writes `--out`, a fitted-law file (`bimix_jax.laws.FittedLaw` JSON: parameters per eval domain, fit data
summary, convergence report, and with `--holdout` the held-out metrics per domain), and with `--plot` a
figure of observed vs fitted curves (plus held-out predictions vs observations). With `--search_samples`
(regression laws) it also runs RegMix's search for the optimum: Dirichlet samples around the fitting mixtures'
mean, the mean of the `--search_top_k` best by the `--search_weights`-weighted predicted loss; the result is in the
summary (`regmix_search`). The law written is
always the fit on the whole table; the held-out metrics come from a separate fit on the protocol's
fitting rows. Bad input is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", None, "Loss table CSV (run, step, p_<domain>..., eval_domain, loss).")
_REGRESSION_LAWS = ("linear", "loglinear", "kernel", "lightgbm")  # laws/regression.py, laws/lightgbm_law.py
_LAW = flags.DEFINE_enum("law", None, ["bimix", "dml", *_REGRESSION_LAWS, "ye"],
                         "Law to fit: bimix, dml (Data Mixing Law; 'ye' is its older name), or a RegMix-style "
                         "regression over the mixture at one step (linear, loglinear, kernel, lightgbm).")
_OUT = flags.DEFINE_string("out", None, "Fitted-law JSON to write.")
_MODEL_SIZE = flags.DEFINE_string("model_size", None, "Fit only rows of this model size (needed if the table has "
                                  "several).")
_EVAL_DOMAINS = flags.DEFINE_list("eval_domains", None, "Eval domains to fit (default: all in the table).")
_HOLDOUT = flags.DEFINE_enum("holdout", None, ["last_step", "mixtures"], "Held-out evaluation protocol.")
_HOLDOUT_RUNS = flags.DEFINE_list("holdout_runs", None, "Runs to hold out with --holdout=mixtures (default: "
                                  "crc32 of the proportions divisible by 4).")
_TARGET_STEP = flags.DEFINE_float("target_step", None, "dml and regression laws: the step the law is fitted at "
                                  "(default: the largest step in the table).")
_STEP_MIN = flags.DEFINE_string("step_min", None, "dml: checkpoints below this step are not used by the step law; "
                                "bimix: the first fitted step, or 'auto' (chosen by backtesting in the fit data).")
_DML_BOUNDED = flags.DEFINE_bool("dml_bounded", True, "dml: keep 0 <= c < the smallest observed loss of each domain.")
_DML_RIDGE = flags.DEFINE_string("dml_ridge", None, "dml: ridge strength on the exponents t, or 'cv' (k-fold CV).")
_YE_BOUNDED = flags.DEFINE_bool("ye_bounded", True, "Old name of --dml_bounded (still read).")
_YE_RIDGE = flags.DEFINE_string("ye_ridge", None, "Old name of --dml_ridge (still read).")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Rescale each row's proportions to sum to 1 (for sources that "
                               "rounded them).")
_PLOT = flags.DEFINE_string("plot", None, "Figure to write (png, pdf, svg; by extension).")
_N_STARTS = flags.DEFINE_integer("n_starts", 4, "Solver starts per eval domain.")
_LOSS = flags.DEFINE_enum("loss", "l2", ["l2", "huber"], "Fit objective on log loss.")
_HUBER_DELTA = flags.DEFINE_float("huber_delta", 0.05, "Huber threshold on log-loss residuals.")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "Solver precision.")
_N_BOOT = flags.DEFINE_integer("n_boot", 0, "Bootstrap replicates over runs (quantiles go in the summary).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap and search seed.")
_SEARCH = flags.DEFINE_integer("search_samples", 0, "Regression laws: RegMix's search for the optimum with this many "
                               "Dirichlet samples (0: no search).")
_SEARCH_TOP_K = flags.DEFINE_integer("search_top_k", 128, "RegMix's search: average the mixtures of this many best "
                                     "samples (RegMix: 128).")
_SEARCH_WEIGHTS = flags.DEFINE_string("search_weights", "", "RegMix's search objective: weights per eval domain, "
                                      "d=w,... (default: equal).")
flags.mark_flags_as_required(["losses", "law", "out"])


def _search(fitted, table):
    """RegMix's search for the optimum under a regression law; the result goes in the summary."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from bimix_jax.laws import regression
    from bimix_jax.mixture import constraints, optimize

    from bimix_jax.laws.base import get_law

    weights = constraints.parse_domain_values(_SEARCH_WEIGHTS.value, "--search_weights")
    w_all = optimize.eval_weights(fitted, weights)
    keep = w_all > 0  # Only the eval domains the objective weighs are predicted (trees are costly).
    domains = tuple(e for e, k in zip(fitted.eval_domains, keep) if k)
    model = get_law(fitted.law)(fitted.train_domains, domains)
    params = {k: jnp.asarray(np.asarray(v)[keep]) for k, v in fitted.params.items()}
    w_E = jnp.asarray(w_all[keep])
    at = np.isclose(table.step, fitted.target_step, rtol=1e-9)
    prior = np.mean(np.stack(list(table.subset(at).mixtures().values())), axis=0)
    r, info = regression.regmix_optimize(lambda x: model.predict(params, x, 0.0) @ w_E, prior / prior.sum(),
                                         n_samples=_SEARCH.value, top_k=_SEARCH_TOP_K.value, seed=_SEED.value)
    pred = np.asarray(model.predict(params, jnp.asarray(r), 0.0))
    search = {"mixture": dict(zip(fitted.train_domains, r.tolist())), "weights": dict(zip(domains,
                                                                                             np.asarray(w_E).tolist())),
              "predicted_loss": dict(zip(domains, pred.tolist())), "prior": "mean of the fitted mixtures", **info}
    print("RegMix search: " + ", ".join(f"{d}={p:.3f}" for d, p in search["mixture"].items() if p >= 0.001)
          + f" (others < 0.001); predicted weighted loss {float(pred @ np.asarray(w_E)):.4f}")
    return dataclasses.replace(fitted, summary={**fitted.summary, "regmix_search": search})


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import atomic, loss_table, checks
    from bimix_jax.errors import InputError

    from bimix_jax.laws.base import canonical_law_name

    law = canonical_law_name(_LAW.value)
    bounded = _DML_BOUNDED.value if not _YE_BOUNDED.present else cli.renamed(_YE_BOUNDED, "dml_bounded")
    ridge = _DML_RIDGE.value if not _YE_RIDGE.present else cli.renamed(_YE_RIDGE, "dml_ridge")
    regression = law in _REGRESSION_LAWS
    law_options = {}
    if _TARGET_STEP.value is not None:
        if law == "bimix":
            raise InputError("--target_step applies to --law=dml and the regression laws only; drop it")
        checks.in_range("--target_step", _TARGET_STEP.value, low=0, low_open=True, hint="give a step > 0")
        law_options["target_step"] = _TARGET_STEP.value
    if _SEARCH.value and not regression:
        raise InputError("--search_samples applies to the regression laws (linear, loglinear, kernel, lightgbm); "
                         "optimise other laws with experiments.optimize_mixture")
    if _SEARCH.value:
        checks.in_range("--search_samples", _SEARCH.value, low=1, high=10_000_000, integer=True, hint="pick 100000")
        checks.in_range("--search_top_k", _SEARCH_TOP_K.value, low=1, high=_SEARCH.value, integer=True,
                        hint="pick e.g. 128, at most --search_samples")
    if regression and (_STEP_MIN.value is not None or _N_BOOT.value or _HOLDOUT.value):
        raise InputError(f"--step_min, --n_boot and --holdout do not apply to --law={law} (one step, closed-form fit); "
                         "drop them (experiments.compare_laws scores the regression laws on held-out mixtures)")
    if _STEP_MIN.value is not None:
        law_options["step_min"] = cli.number_or(_STEP_MIN.value, "step_min", "auto" if law == "bimix" else None)
    if ridge is not None or not bounded:
        if law != "dml":
            raise InputError("--dml_ridge and --dml_bounded apply to --law=dml only; drop them")
        law_options["bounded"] = bounded
        if ridge is not None:
            law_options["ridge"] = cli.number_or(ridge, "dml_ridge", "cv")
    if _HOLDOUT_RUNS.value and _HOLDOUT.value != "mixtures":
        raise InputError("--holdout_runs needs --holdout=mixtures")
    if _N_BOOT.value < 0:
        raise InputError(f"--n_boot={_N_BOOT.value} must be >= 0")
    checks.input_file("--losses", _LOSSES.value, "loss table CSV")
    checks.output_file("--out", _OUT.value)
    if _PLOT.value is not None:
        checks.output_file("--plot", _PLOT.value)
    checks.in_range("--n_starts", _N_STARTS.value, low=1, high=256, integer=True, hint="pick e.g. 4")
    checks.in_range("--huber_delta", _HUBER_DELTA.value, low=0, low_open=True, hint="pick e.g. 0.05")
    options = dict(model_size=_MODEL_SIZE.value, n_starts=_N_STARTS.value, loss=_LOSS.value,
                   huber_delta=_HUBER_DELTA.value, dtype=_DTYPE.value, **law_options)

    start = time.perf_counter()
    table = loss_table.read_csv(_LOSSES.value, normalize=_NORMALIZE.value)
    from bimix_jax.laws import fit  # After the table checks: a bad table fails fast.
    from bimix_jax.laws import protocols

    if _HOLDOUT_RUNS.value:  # Fail before fitting.
        protocols.check_runs(table.for_model_size(_MODEL_SIZE.value), _HOLDOUT_RUNS.value)
    if _PLOT.value:
        from bimix_jax.pipeline import plots

        plots.check_format(_PLOT.value)

    eval_opts = {"eval_domains": _EVAL_DOMAINS.value} if _EVAL_DOMAINS.value else {}
    if _N_BOOT.value:
        fitted, _ = fit.fit_bootstrap(table, law, n_boot=_N_BOOT.value, seed=_SEED.value, **options, **eval_opts)
    else:
        fitted = fit.fit_law(table, law, **options, **eval_opts)
    fit_s = time.perf_counter() - start
    report = None
    if _HOLDOUT.value:
        sub = table.for_eval_domains(_EVAL_DOMAINS.value) if _EVAL_DOMAINS.value else table
        report = protocols.evaluate(sub, law, _HOLDOUT.value, holdout_runs=_HOLDOUT_RUNS.value, **options)
    fitted = protocols.attach(fitted, report)
    if _SEARCH.value:
        fitted = _search(fitted, table)
    figure = None
    if _PLOT.value:
        rows = table.for_model_size(_MODEL_SIZE.value)
        figure = plots.render(plots.fit_figure(rows, fitted, report), _PLOT.value)
    total_s = time.perf_counter() - start

    fitted.save(_OUT.value)
    if figure is not None:
        atomic.write_bytes(_PLOT.value, figure)
    print(fit.describe(fitted))
    print(f"fit {fit_s:.2f} s, total {total_s:.2f} s; wrote {_OUT.value}" + (f" and {_PLOT.value}" if figure else ""))


if __name__ == "__main__":
    cli.run(main)
