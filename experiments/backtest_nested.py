r"""Backtests of the nested prediction: every variant on splits whose targets the table measured.

    python -m experiments.backtest_nested --losses=../shared/data/pile3_github_books3_pilecc.csv \
        --splits='70M+160M<=15000->160M@30000,70M+160M<=20000->160M@40000' --variants=step --out=bt.json
    python -m experiments.backtest_nested --losses=../shared/data/pile3_github_books3_pilecc.csv \
        --splits='70M+160M<=15000->410M@30000' --variants=size --out=bt.json --table=bt.md

A split `SIZES<=MAX_STEP->SIZE@STEP` fits the step laws of the small sizes on checkpoints up to MAX_STEP and
predicts SIZE at STEP (SIZE may be a small size: the step extrapolation alone). --variants: `step` (first
fitted step x exponent tie, with the paper's size and mixing laws), `size` (size law x mixing law on the
default step stage), `all`. Prints one table per (split, variant): the level error of the step x size
extrapolation on fitting mixtures observed at the target, and the mixing law's error on every observed
target run; then each variant's mean over the splits. Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", None, "Loss table CSV with a model_size column.")
_SPLITS = flags.DEFINE_list("splits", None, "Splits SIZES<=MAX_STEP->SIZE@STEP, e.g. 70M+160M<=15000->160M@30000.")
_VARIANTS = flags.DEFINE_enum("variants", "all", ["step", "size", "all"], "Which variants to score.")
_SIZES = flags.DEFINE_string("sizes", "", "Non-embedding parameter counts, size=n,... (defaults: Ye et al.'s).")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Rescale each row's proportions to sum to 1 (for sources that "
                               "rounded them).")
_OUT = flags.DEFINE_string("out", None, "Report JSON to write.")
_TABLE = flags.DEFINE_string("table", None, "Markdown tables to write (optional).")
flags.mark_flags_as_required(["losses", "splits", "out"])


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import atomic, checks, loss_table
    from bimix_jax.errors import InputError
    from bimix_jax.laws import nested_backtest as nb
    from bimix_jax.laws import sizelaw

    checks.output_file("--out", _OUT.value)
    if _TABLE.value:
        checks.output_file("--table", _TABLE.value)
    splits = [nb.Split.parse(s) for s in _SPLITS.value]
    variants = {"step": {"previous default": nb.PREVIOUS, **nb.STEP_VARIANTS},
                "size": {"previous default": nb.PREVIOUS, **nb.SIZE_VARIANTS}, "all": nb.VARIANTS}[_VARIANTS.value]
    sizes = sizelaw.parse_counts(_SIZES.value)
    table = loss_table.read_csv(_LOSSES.value, normalize=_NORMALIZE.value)
    for s in splits:
        for size in (*s.small_sizes, s.target_size):
            if not table.has_model_size or size not in table.model_sizes:
                raise InputError(f"--splits: model size {size!r} of {s.name} is not in {_LOSSES.value}")
    for size in {x for s in splits for x in (*s.small_sizes, s.target_size)}:
        sizelaw.n_params(size, sizes)
    rows = nb.backtest(table, splits, variants, sizes=sizes)
    md = nb.markdown(rows) + "\n\n" + nb.summary_markdown(rows)
    atomic.write_json(_OUT.value, {"losses": _LOSSES.value, "splits": [s.name for s in splits], "rows": rows,
                                   "summary": nb.summary(rows)})
    if _TABLE.value:
        atomic.write_text(_TABLE.value, md + "\n")
    print(md)


if __name__ == "__main__":
    cli.run(main)
