r"""From small models on short runs, predict a larger model at a later step for any mixture; optimise it.

    python -m experiments.predict_nested --losses=table.csv --small_sizes=70M,160M --target_size=410M \
        --target_step=60000 --max_step=30000 --out=nested.json
    python -m experiments.predict_nested --losses=table.csv --small_sizes=70M,160M --target_size=410M \
        --target_step=60000 --max_step=30000 --weights=github=1,books3=1,pile_cc=2 --caps=github=0.5 \
        --n_boot=100 --points=points.csv --plots=nested_plots --out=nested.json --fit=dml410.json

Step law per small run on checkpoints in [--min_step, --max_step] (--min_step=auto: chosen by backtesting
inside the fit data; the exponent tied per --step_tie) -> size law over the small sizes (--size_law, its
exponent tied per --size_tie) -> mixing law (--law) at (--target_size, --target_step) -> the mixture
minimising the --weights-weighted mean predicted loss under --floors/--caps (the project's optimizer, with its
warnings). With --n_boot, every point gets a 5-95% interval from a bootstrap over the fitting mixtures
through all three laws. When the table has target-size rows at the target step, the report scores the
prediction on them (mean and worst relative error, R^2 of log loss, the weighted mean loss per run: bias and
Spearman). Writes --out (JSON), --fit (the mixing law, for experiments.optimize_mixture), --points (one CSV
row per prediction: stage, run, size, step, domain, observed, predicted, interval) and --plots (a folder:
step_law.png, size_law.png, predicted_vs_observed.png). Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", None, "Loss table CSV with a model_size column.")
_SMALL = flags.DEFINE_list("small_sizes", None, "Model sizes to fit on (at least two).")
_TARGET_SIZE = flags.DEFINE_string("target_size", None, "Model size to predict.")
_TARGET_STEP = flags.DEFINE_float("target_step", None, "Step to predict at.")
_MAX_STEP = flags.DEFINE_float("max_step", None, "Use only small-run checkpoints up to this step (short runs).")
_MIN_STEP = flags.DEFINE_string("min_step", "auto", "First checkpoint the step laws use: a step, 'auto' (chosen "
                                "by backtesting inside the fit data) or 'none' (all).")
_STEP_TIE = flags.DEFINE_enum("step_tie", "domain_size", ["curve", "domain_size", "domain"],
                              "Step-law exponent: per curve (run x eval domain), or tied per eval domain and size, "
                              "or per eval domain over all sizes.")
_SIZE_LAW = flags.DEFINE_enum("size_law", "power", ["power", "floor"],
                              "power: L = B N^-alpha; floor: L = E + B N^-alpha with E per eval domain (Ye et al.).")
_SIZE_TIE = flags.DEFINE_enum("size_tie", "domain", ["domain", "all"], "Size exponent per eval domain or shared.")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Rescale each row's proportions to sum to 1 (for sources that "
                               "rounded them).")
_LAW = flags.DEFINE_enum("law", "dml", ["dml", "dml_unbounded", "dml_ridge_cv", "kernel", "loglinear", "linear",
                                        "ye"], "Mixing law on the predicted points ('ye': the older name of dml).")
_SIZES = flags.DEFINE_string("sizes", "", "Non-embedding parameter counts, size=n,... (defaults: Ye et al.'s).")
_RUNS = flags.DEFINE_list("runs", None, "Fit only small runs whose id matches one of these glob patterns.")
_WEIGHTS = flags.DEFINE_string("weights", "", "Objective weights per eval domain, d=w,... or a weights.json "
                               "(default: equal; unlisted domains get 0).")
_FLOORS = flags.DEFINE_string("floors", "", "Minimum proportion per training domain, d=x,...")
_CAPS = flags.DEFINE_string("caps", "", "Maximum proportion per training domain, d=x,...")
_DOMAIN_TOKENS = flags.DEFINE_string("domain_tokens", "", "Available training tokens per domain, d=n,...")
_TOKEN_BUDGET = flags.DEFINE_float("token_budget", None, "Total training tokens of the target run.")
_MAX_EPOCHS = flags.DEFINE_float("max_epochs", None, "Repetition cap: r_d <= max_epochs * tokens_d / budget.")
_N_BOOT = flags.DEFINE_integer("n_boot", 0, "Bootstrap replicates over the fitting mixtures (0: no intervals).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_OUT = flags.DEFINE_string("out", None, "Report JSON to write.")
_FIT = flags.DEFINE_string("fit", None, "Fitted-law JSON to write (optional).")
_POINTS = flags.DEFINE_string("points", None, "Per-point predictions CSV to write (optional).")
_PLOTS = flags.DEFINE_string("plots", None, "Folder to write the three figures into (optional).")
flags.mark_flags_as_required(["losses", "small_sizes", "target_size", "target_step", "out"])

POINT_COLUMNS = ("stage", "run", "model_size", "step", "eval_domain", "observed", "predicted", "lo", "hi", "source")


def _options():
    from bimix_jax.laws import nested
    from bimix_jax.laws.base import canonical_law_name

    text = _MIN_STEP.value.strip().lower()
    min_step = None if text == "none" else "auto" if text == "auto" else cli.number_or(text, "min_step")
    opts = nested.NestedOptions(min_step=min_step, max_step=_MAX_STEP.value, step_tie=_STEP_TIE.value,
                                size_form=_SIZE_LAW.value, size_tie=_SIZE_TIE.value, law=canonical_law_name(_LAW.value))
    for flag, v in (("--min_step", min_step if not isinstance(min_step, str) else None), ("--max_step", _MAX_STEP.value)):
        if v is not None and not v > 0:
            from bimix_jax.errors import InputError

            raise InputError(f"{flag}={v:g} must be a training step > 0")
    opts.check()
    return opts


def _checks() -> None:
    from bimix_jax import checks
    from bimix_jax.errors import InputError

    for flag, path in (("--out", _OUT.value), ("--fit", _FIT.value), ("--points", _POINTS.value)):
        if flag == "--out" or path is not None:
            checks.output_file(flag, path)
    if _PLOTS.value is not None:
        if not _PLOTS.value.strip():
            raise InputError("--plots is empty; give a folder to write the figures into")
        if os.path.isfile(_PLOTS.value):
            raise InputError(f"--plots={_PLOTS.value} is a file, not a folder; give a folder")
    checks.in_range("--target_step", _TARGET_STEP.value, low=0, low_open=True, hint="give a training step > 0")
    if _N_BOOT.value and not 2 <= _N_BOOT.value <= 10_000:
        raise InputError(f"--n_boot={_N_BOOT.value} must be 0 or in [2, 10000]; pick e.g. 100")
    if _TARGET_SIZE.value in _SMALL.value:
        raise InputError(f"--target_size={_TARGET_SIZE.value} is also in --small_sizes; predict a size not fitted "
                         "(experiments.backtest_nested scores a fitted size)")


def _optimum(fitted, table, result):
    import numpy as np

    from bimix_jax.errors import InputError
    from bimix_jax.mixture import constraints, optimize, proportions

    weights = proportions.parse(_WEIGHTS.value, field="--weights") if _WEIGHTS.value else None
    if isinstance(weights, str):
        raise InputError(f"--weights={_WEIGHTS.value}: give eval-domain weights d=w,... or a weights.json")
    bounds = constraints.make_bounds(
        fitted.train_domains, floors=constraints.parse_domain_values(_FLOORS.value, "--floors"),
        caps=constraints.parse_domain_values(_CAPS.value, "--caps"),
        domain_tokens=constraints.parse_domain_values(_DOMAIN_TOKENS.value, "--domain_tokens"),
        token_budget=_TOKEN_BUDGET.value, max_epochs=_MAX_EPOCHS.value)
    p = result["predicted"].p
    fitted_range = {d: (float(p[:, i].min()), float(p[:, i].max())) for i, d in enumerate(fitted.train_domains)}
    report = optimize.optimize_mixture(fitted, step=float(_TARGET_STEP.value), weights=weights, bounds=bounds,
                                       proportion_range=fitted_range)
    report.pop("export", None)
    return report, weights, np.array([report["weights"][e] for e in fitted.eval_domains]), bounds


def _points_csv(points) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=POINT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for p in points:
        w.writerow({k: ("" if p.get(k) is None else p.get(k)) for k in POINT_COLUMNS})
    return buf.getvalue()


def main(argv: Sequence[str]) -> None:
    del argv
    import jax
    import numpy as np

    from bimix_jax import atomic, loss_table
    from bimix_jax.laws import nested, nested_uncertainty, sizelaw

    jax.config.update("jax_enable_x64", True)  # The optimizer is tiny; float64 makes it exact to 1e-12.
    _checks()
    opts = _options()
    sizes = sizelaw.parse_counts(_SIZES.value)
    table = loss_table.read_csv(_LOSSES.value, normalize=_NORMALIZE.value)
    kw = dict(small_sizes=_SMALL.value, target_size=_TARGET_SIZE.value, target_step=_TARGET_STEP.value)
    result = nested.predict_nested(table, **kw, options=opts, sizes=sizes, runs=_RUNS.value)
    fitted = result["fitted"]
    optimum, weights, w_E, bounds = _optimum(fitted, table, result)
    points = nested.point_rows(result, table, _TARGET_SIZE.value, _TARGET_STEP.value)
    report = {"small_sizes": _SMALL.value, "target_size": _TARGET_SIZE.value, "target_step": _TARGET_STEP.value,
              "options": {k: v for k, v in vars(opts).items()}, "law": fitted.law, "step_law": result["step_law"],
              "size_law": result["size_law"], "fitting_mixtures": result["mixtures"], "optimum": optimum}
    if _N_BOOT.value:
        boot = nested_uncertainty.bootstrap(table, result, target_size=_TARGET_SIZE.value,
                                            target_step=_TARGET_STEP.value, options=opts, n_boot=_N_BOOT.value,
                                            seed=_SEED.value, sizes=sizes)
        nested_uncertainty.attach_intervals(points, result, boot, table, _TARGET_STEP.value)
        r_opt = np.array([optimum["mixture"][d] for d in fitted.train_domains])
        total_B = nested_uncertainty.predict_mixtures(boot, r_opt[None], _TARGET_STEP.value)[:, 0] @ w_E
        report["bootstrap"] = {"n_boot": _N_BOOT.value, "seed": _SEED.value, "unit": "mixture",
                               "redrawn": boot["redrawn"], "percentiles": list(nested_uncertainty.PERCENTILES),
                               "mixing_fits_at_maxiter": boot["mixing_fits_at_maxiter"],
                               "optimum_total_loss": nested_uncertainty.interval(total_B)}
    target = nested.observed_at(table, _TARGET_SIZE.value, _TARGET_STEP.value)
    lines = []
    if target is not None:
        keep = [e for e in target.eval_domains if e in fitted.eval_domains]
        target = target.for_eval_domains(keep)
        score = nested.score_against(fitted, target, weights)
        report["heldout"] = {k: v for k, v in score.items() if k != "predicted"}
        agg, worst = score["aggregate"], score["worst_point"]
        r2 = score["mean"]["r2_log"]
        lines.append(f"{_TARGET_SIZE.value} at step {_TARGET_STEP.value:g}, {len(target.runs)} observed runs: mean "
                     f"relative error {score['mean']['mre_pct']:.2f}%, worst point {worst['re_pct']:.1f}% ({worst['run']}"
                     f", {worst['eval_domain']})" + (f", mean R2(log) {r2:.3f}" if r2 is not None else ""))
        r_opt = np.array([optimum["mixture"][d] for d in fitted.train_domains])
        near = nested.nearest_observed(target, r_opt, optimum["weights"])
        report["optimum"]["nearest_observed"] = near
        if near:
            lines.append(f"optimum's nearest observed run: {near['nearest_run']} (L1 {near['nearest_l1']:.3f}), ranked "
                         f"{near['nearest_rank']} of {near['runs']} by observed weighted loss (best: {near['best_run']})")
        if agg.get("runs"):
            sp = agg["spearman"]
            lines.append(f"weighted mean loss per run: bias {agg['bias_nats']:+.4f} nats, mean abs error "
                         f"{agg['mae_nats']:.4f} nats" + (f", Spearman {sp:.2f}" if sp is not None else ""))
    alpha = result["size_law"]["alpha"]
    alpha = f"{alpha:.3f}" if not isinstance(alpha, dict) else \
        f"{min(alpha.values()):.3f}-{max(alpha.values()):.3f} over {len(alpha)} eval domains"
    lines.append(f"first fitted step {result['step_law']['min_step']:g} ({opts.min_step or 'all'}); size law "
                 f"{result['size_law']['form']}, exponent {alpha}")
    lines.append("optimum: " + ", ".join(f"{d}={p:.3f}" for d, p in optimum["mixture"].items()) +
                 f"; predicted weighted loss {optimum['predicted_loss']['optimum']['total']:.4f}")
    lines += [f"warning: {w}" for w in optimum["warnings"]]
    figures = {}
    if _PLOTS.value is not None:
        from bimix_jax.pipeline import nested_plots, plots

        n_of = {s: sizelaw.n_params(s, sizes) for s in _SMALL.value}
        figures = {"step_law.png": nested_plots.step_figure(table, result, _TARGET_STEP.value),
                   "size_law.png": nested_plots.size_figure(result, target, n_of, _TARGET_SIZE.value),
                   "predicted_vs_observed.png": nested_plots.scatter(points, f"{_TARGET_SIZE.value} at step "
                                                                               f"{_TARGET_STEP.value:g}")}
        figures = {k: plots.render(f, k) for k, f in figures.items()}
    atomic.write_json(_OUT.value, report)
    if _FIT.value:
        fitted.save(_FIT.value)
    if _POINTS.value:
        atomic.write_text(_POINTS.value, _points_csv(points))
    if figures:
        os.makedirs(_PLOTS.value, exist_ok=True)
        for name, data in figures.items():
            atomic.write_bytes(os.path.join(_PLOTS.value, name), data)
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
