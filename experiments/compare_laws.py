"""Every mixing law on the same held-out protocols: a JSON report, a markdown table and a plot.

    python -m experiments.compare_laws --losses=table.csv --model_size=410M --out=compare.json \\
        --table=compare.md --plot=compare.png
    python -m experiments.compare_laws --losses=table.csv --model_size=160M --laws=bimix,bimix_backtest,ye \\
        --protocols=last_step,leave_one_out --out=compare.json

Candidates (`bimix_jax.laws.select.CANDIDATES`): bimix, bimix_backtest (first step by backtesting), ye
(bounded), ye_unbounded, ye_ridge_cv, linear, loglinear, kernel. Protocols: last_step, leave_one_out,
kfold (over mixtures, --k folds, shuffled by --seed). Metrics: R^2 of log loss (mean over eval domains),
mean relative error, Spearman of the aggregated loss, each with a 95% bootstrap interval over held-out
runs (--n_boot). A fold a law cannot fit is skipped and counted. Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", None, "Loss table CSV.")
_MODEL_SIZE = flags.DEFINE_string("model_size", None, "Rows of this model size (needed if the table has several).")
_LAWS = flags.DEFINE_list("laws", None, "Candidates to compare (default: all).")
_PROTOCOLS = flags.DEFINE_list("protocols", ["last_step", "leave_one_out", "kfold"], "Held-out protocols.")
_TARGET_STEP = flags.DEFINE_float("target_step", None, "Step of the mixture protocols (default: the largest).")
_K = flags.DEFINE_integer("k", 5, "Folds of the kfold protocol.")
_SEED = flags.DEFINE_integer("seed", 0, "Fold shuffle and bootstrap seed.")
_N_BOOT = flags.DEFINE_integer("n_boot", 200, "Bootstrap resamples of the held-out runs for the intervals.")
_OUT = flags.DEFINE_string("out", None, "Report JSON to write.")
_TABLE = flags.DEFINE_string("table", None, "Markdown table to write.")
_PLOT = flags.DEFINE_string("plot", None, "Figure to write (png, pdf, svg; by extension).")
flags.mark_flags_as_required(["losses", "out"])


def figure(results: dict):
    """R^2 of log loss and relative error per law, one group of bars per protocol, with 95% intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protos = list(results)
    names = list(next(iter(results.values())))
    fig = Figure(figsize=(5.0 + 0.9 * len(names) * len(protos) / 2, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(names), 1)
    for ax, key, label in ((axes[0], "r2_log", "held-out R² of log loss"), (axes[1], "mre_pct", "rel. error %")):
        for j, n in enumerate(names):
            xs, ys, lo, hi = [], [], [], []
            for i, p in enumerate(protos):
                s = results[p][n]
                if s.get(key) is None:
                    continue
                ci = s.get("ci95", {}).get(key, [s[key], s[key]])
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(s[key])
                lo.append(max(s[key] - ci[0], 0.0))
                hi.append(max(ci[1] - s[key], 0.0))
            ax.bar(xs, ys, width, yerr=[lo, hi], label=n, capsize=2)
        ax.set_xticks(range(len(protos)), protos, fontsize=8)
        ax.set_ylabel(label)
        if key == "r2_log":
            ax.set_ylim(max(min(-0.5, ax.get_ylim()[0]), -2.0), 1.0)
    axes[0].legend(fontsize=7)
    return fig


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import atomic, loss_table, validate
    from bimix_jax.errors import InputError
    from bimix_jax.laws import select
    from bimix_jax.pipeline import plots

    names = _LAWS.value or list(select.CANDIDATES)
    for n in names:
        select.candidate(n)
    for p in _PROTOCOLS.value:
        if p not in select.PROTOCOLS:
            raise InputError(f"--protocols: unknown protocol {p!r}; choose from {', '.join(select.PROTOCOLS)}")
    if _K.value < 2:
        raise InputError(f"--k={_K.value} must be >= 2")
    if _N_BOOT.value < 0:
        raise InputError(f"--n_boot={_N_BOOT.value} must be >= 0")
    validate.output_file("--out", _OUT.value)
    if _TABLE.value:
        validate.output_file("--table", _TABLE.value)
    if _PLOT.value:
        validate.output_file("--plot", _PLOT.value)
        plots.check_format(_PLOT.value)
    table = loss_table.read_csv(_LOSSES.value).for_model_size(_MODEL_SIZE.value)
    start = time.perf_counter()
    results = select.compare(table, names, _PROTOCOLS.value, target_step=_TARGET_STEP.value, k=_K.value,
                             seed=_SEED.value, n_boot=_N_BOOT.value)
    md = select.markdown(results)
    fig = plots.render(figure(results), _PLOT.value) if _PLOT.value else None
    atomic.write_json(_OUT.value, {"losses": _LOSSES.value, "model_size": _MODEL_SIZE.value,
                                   "target_step": _TARGET_STEP.value, "k": _K.value, "seed": _SEED.value,
                                   "n_boot": _N_BOOT.value, "results": results,
                                   "seconds": time.perf_counter() - start})
    if _TABLE.value:
        atomic.write_text(_TABLE.value, md + "\n")
    if fig is not None:
        atomic.write_bytes(_PLOT.value, fig)
    print(md)


if __name__ == "__main__":
    cli.run(main)
