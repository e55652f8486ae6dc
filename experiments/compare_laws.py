r"""Every mixing law on the same held-out protocols, and transfer across scale: JSON, markdown tables, a plot.

    python -m experiments.compare_laws --losses=table.csv --model_size=410M --out=compare.json \
        --table=compare.md --plot=compare.png
    python -m experiments.compare_laws --losses=table.csv --model_size=160M --laws=bimix,bimix_backtest,dml \
        --protocols=last_step,leave_one_out --out=compare.json
    python -m experiments.compare_laws --losses=regmix_1M.csv --normalize --laws=linear,kernel,lightgbm \
        --protocols=split --test_runs='1M_test_*' --out=regmix.json --table=regmix.md
    python -m experiments.compare_laws --losses=table.csv --transfer --protocols= --out=transfer.json

Candidates (`bimix_jax.laws.select.CANDIDATES`): bimix, bimix_backtest (first step by backtesting), dml
(bounded), dml_unbounded, dml_ridge_cv, linear, loglinear, kernel, and lightgbm (RegMix's regressor; optional
dependency, named explicitly: it is not in the default list). Protocols: last_step, leave_one_out, kfold (over
mixtures, --k folds, shuffled by --seed), split (hold out the runs matching --test_runs once, RegMix's
protocol). Metrics: R^2 of log loss (mean over eval domains), mean relative error, Spearman of the aggregated
loss, each with a 95% bootstrap interval over held-out runs (--n_boot); per eval domain Spearman and R^2.
--transfer: for every pair of model sizes with the same mixtures at one step, the Spearman of their losses per
eval domain (does a small size rank mixtures like a larger one?). A fold a law cannot fit is skipped and
counted. Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", None, "Loss table CSV.")
_MODEL_SIZE = flags.DEFINE_string("model_size", None, "Rows of this model size (needed if the table has several).")
_LAWS = flags.DEFINE_list("laws", None, "Candidates to compare (default: all).")
_PROTOCOLS = flags.DEFINE_list("protocols", ["last_step", "leave_one_out", "kfold"], "Held-out protocols "
                                "(last_step, leave_one_out, kfold, split; empty with --transfer alone).")
_TEST_RUNS = flags.DEFINE_list("test_runs", None, "split protocol: glob patterns of the held-out runs, e.g. 1M_test_*.")
_TRANSFER = flags.DEFINE_bool("transfer", False, "Also measure transfer across scale (needs several model sizes).")
_TRANSFER_STEP = flags.DEFINE_float("transfer_step", None, "Step of the transfer comparison (default: the largest "
                                    "step with enough common mixtures).")
_TARGET_STEP = flags.DEFINE_float("target_step", None, "Step of the mixture protocols (default: the largest).")
_K = flags.DEFINE_integer("k", 5, "Folds of the kfold protocol.")
_SEED = flags.DEFINE_integer("seed", 0, "Fold shuffle and bootstrap seed.")
_N_BOOT = flags.DEFINE_integer("n_boot", 200, "Bootstrap resamples of the held-out runs for the intervals.")
_OUT = flags.DEFINE_string("out", None, "Report JSON to write.")
_TABLE = flags.DEFINE_string("table", None, "Markdown table to write.")
_PLOT = flags.DEFINE_string("plot", None, "Figure to write (png, pdf, svg; by extension).")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Rescale each row's proportions to sum to 1 (for sources that "
                               "rounded them).")
flags.mark_flags_as_required(["losses", "out"])


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import atomic, loss_table, checks
    from bimix_jax.errors import InputError
    from bimix_jax.laws import select, transfer
    from bimix_jax.laws.base import canonical_law_name
    from bimix_jax.pipeline import plots

    names = ([canonical_law_name(n) for n in _LAWS.value] if _LAWS.value
             else [n for n in select.CANDIDATES if n != "lightgbm"])
    for n in names:
        select.candidate(n)
    for p in _PROTOCOLS.value:
        if p not in select.PROTOCOLS:
            raise InputError(f"--protocols: unknown protocol {p!r}; choose from {', '.join(select.PROTOCOLS)}")
    if not _PROTOCOLS.value and not _TRANSFER.value:
        raise InputError("--protocols is empty and --transfer is off: nothing to measure; name a protocol")
    if "split" in _PROTOCOLS.value and not _TEST_RUNS.value:
        raise InputError("--protocols=split needs --test_runs (glob patterns of the held-out runs, e.g. 1M_test_*)")
    if _K.value < 2:
        raise InputError(f"--k={_K.value} must be >= 2")
    if _N_BOOT.value < 0:
        raise InputError(f"--n_boot={_N_BOOT.value} must be >= 0")
    checks.output_file("--out", _OUT.value)
    if _TABLE.value:
        checks.output_file("--table", _TABLE.value)
    if _PLOT.value:
        checks.output_file("--plot", _PLOT.value)
        plots.check_format(_PLOT.value)
    full = loss_table.read_csv(_LOSSES.value, normalize=_NORMALIZE.value)
    start = time.perf_counter()
    results, md = {}, ""
    if _PROTOCOLS.value:
        table = full.for_model_size(_MODEL_SIZE.value)
        results = select.compare(table, names, _PROTOCOLS.value, target_step=_TARGET_STEP.value, k=_K.value,
                                 seed=_SEED.value, n_boot=_N_BOOT.value, test_runs=_TEST_RUNS.value)
        md = select.markdown(results) + "\n\nPer eval domain, Spearman / R² of log loss:\n\n" + \
            select.per_domain_markdown(results)
    moved = None
    if _TRANSFER.value:
        moved = transfer.transfer(full, step=_TRANSFER_STEP.value, n_boot=_N_BOOT.value or 200, seed=_SEED.value)
        md += ("\n\n" if md else "") + "Transfer across scale, Spearman [95% CI over mixtures] and permutation p-value:\n\n" + \
            transfer.markdown(moved)
    fig = plots.render(plots.law_comparison_figure(results), _PLOT.value) if _PLOT.value and results else None
    atomic.write_json(_OUT.value, {"losses": _LOSSES.value, "model_size": _MODEL_SIZE.value,
                                   "target_step": _TARGET_STEP.value, "k": _K.value, "seed": _SEED.value,
                                   "n_boot": _N_BOOT.value, "test_runs": _TEST_RUNS.value, "results": results,
                                   "transfer": moved, "seconds": time.perf_counter() - start})
    if _TABLE.value:
        atomic.write_text(_TABLE.value, md + "\n")
    if fig is not None:
        atomic.write_bytes(_PLOT.value, fig)
    print(md)


if __name__ == "__main__":
    cli.run(main)
