"""The bad-input catalog: every case of every binary exits 2 with exactly one `error:` line naming the
field, no traceback, and writes nothing (neither in its own folders nor in the current directory).

All cases run through the binaries' real entry points (`cli.run(main)` with the case's argv) in ONE
subprocess (`tests/badinput_lib.py`), so the catalog costs one interpreter start, not one per case.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax.data.prepare import prepare_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.laws.base import FittedLaw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/tiny.py:runlocal"
PIPE = "--config=configs/pipeline_tiny.py:runlocal"
CMP = "--config=configs/compare_tiny.py:runlocal"
NESTED = ["--losses={sizes_table}", "--small_sizes=1M,2M", "--target_size=4M", "--target_step=800"]
NSIZES = "--sizes=1M=1e6,2M=2e6,4M=4e6"
STORE = ["--sources=code={src}/*.jsonl", "--tokenizer={tokenizer}"]
FIT = ["--law=bimix", "--out={new}"]  # after --losses
OPT = ["--steps=100", "--out={new}"]  # after --fit


def _table_rows():
    rows = []
    for k, mix in enumerate([(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2)]):
        for s in (100, 200, 400, 800):
            for e, dom in enumerate(("code", "web")):
                loss = mix[e] ** -0.1 * (30.0 * s ** -0.5 + 2.0 + e)
                rows.append({"run": f"r{k}", "model_size": "1M", "step": s, "p_code": mix[0], "p_web": mix[1],
                             "eval_domain": dom, "loss": round(loss, 6)})
    return rows


def _write_table(path, rows, columns=None):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns or list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _bad_tables(rows):
    """{name: (rows, columns)} of malformed loss tables, each one edit of the good `rows`."""
    def edit(column, value, where=lambda i, r: i == 3):
        return [dict(r, **{column: value}) if where(i, r) else r for i, r in enumerate(rows)], None

    def without(column):
        return rows, [c for c in rows[0] if c != column]

    return {
        "no_loss": without("loss"),
        "no_run": without("run"),
        "abc_loss": edit("loss", "abc"),
        "negative_loss": edit("loss", "-1"),
        "nan_loss": edit("loss", "nan", lambda i, r: i == 5),
        "huge_loss": edit("loss", 1e300, lambda i, r: i == 5),
        "zero_step": edit("step", "0"),
        "huge_step": edit("step", 1e300, lambda i, r: i == 5),
        "sum": edit("p_code", "0.9", lambda i, r: r["run"] == "r0"),  # 0.9 + 0.8
        "changing": ([dict(r, p_code=0.3, p_web=0.7) if r["run"] == "r0" and i > 4 else r
                      for i, r in enumerate(rows)], None),
        "two_sizes": (rows + [dict(r, model_size="2M", run=r["run"] + "_2M") for r in rows], None),
        "single": ([r for r in rows if r["run"] == "r3"] + [dict(r, run="r4") for r in rows if r["run"] == "r3"],
                   None),
    }


# (binary, id, argv, what the error line must contain). {x} are fixture paths; {new} a path that must not appear.
CATALOG = [
    # train
    ("train", "workdir_empty", [TINY, "--workdir="], "--workdir is empty"),
    ("train", "workdir_is_file", [TINY, "--workdir={file}"], "is a file, not a folder"),
    ("train", "workdir_parent_is_file", [TINY, "--workdir={file}/w"], "is a file, not a folder"),
    ("train", "b1_one", [TINY, "--workdir={new}", "--config.optim.b1=1.0"], "optim.b1=1.0"),
    ("train", "online_bimix_tilt_zero", [TINY, "--workdir={new}", "--config.online.method=online_bimix",
                                         "--config.online.online_bimix.tilt=0"],
     "online.online_bimix.tilt must lie in (0, 1]"),
    ("train", "b2_above_one", [TINY, "--workdir={new}", "--config.optim.b2=1.5"], "optim.b2=1.5"),
    ("train", "eps_negative", [TINY, "--workdir={new}", "--config.optim.eps=-1"], "optim.eps=-1"),
    ("train", "lr_nan", [TINY, "--workdir={new}", "--config.optim.lr=nan"], "optim.lr"),
    ("train", "weight_decay_negative", [TINY, "--workdir={new}", "--config.optim.weight_decay=-1"], "weight_decay"),
    ("train", "steps_zero", [TINY, "--workdir={new}", "--config.train.steps=0"], "train.steps=0"),
    ("train", "warmup_too_long", [TINY, "--workdir={new}", "--config.optim.warmup_steps=20"], "optim.warmup_steps"),
    ("train", "microbatches", [TINY, "--workdir={new}", "--config.train.microbatches=3"], "microbatches"),
    ("train", "vocab_too_large", [TINY, "--workdir={new}", "--config.data.vocab_size=200000"],
     "data.vocab_size=200000 is more than this corpus yields"),
    ("train", "config_arg_typo", ["--config=configs/tiny.py:runlocall", "--workdir={new}"], "known: runlocal"),
    ("train", "config_field_typo", [TINY, "--workdir={new}", "--config.train.stepz=3"], "names no config field"),
    ("train", "config_missing", ["--config=configs/nope.py", "--workdir={new}"], "configs/nope.py"),
    ("train", "mixture_duplicate_domain", [TINY, "--workdir={new}", "--config.mixture=code=0.5,code=0.5"],
     "'code' appears twice"),
    ("train", "mixture_sum", [TINY, "--workdir={new}", "--config.mixture=code=0.7,prose=0.7"], "sum to 1.4"),
    ("train", "truncated_tokens", [TINY, "--workdir={prepared}"], "tokens.npz is corrupted"),
    ("train", "mixture_unknown_domain", [TINY, "--workdir={new}", "--config.data.domains=code,prose",
                                         "--config.mixture=code=0.5,poetry=0.5"], "'poetry' is not in the corpus"),
    ("train", "mixture_unknown_after_preparation", [TINY, "--workdir={new}", "--config.mixture=code=0.5,poetry=0.5"],
     "'poetry' is not in the corpus"),
    ("train", "mixture_negative", [TINY, "--workdir={new}", "--config.mixture=code=-1,prose=2"], "'code' is -1.0"),
    ("train", "corpus_folder_missing", [TINY, "--workdir={new}", "--config.data.source=folder",
                                        "--config.data.path={dir}/nonexistent"], "data.path={dir}/nonexistent"),
    ("train", "corpus_domain_empty", [TINY, "--workdir={new}", "--config.data.source=folder",
                                      "--config.data.path={corpus}"], "'empty'"),
    ("train", "positional_argument", [TINY, "--workdir={new}", "extra"], "unexpected positional"),
    # train_many
    ("train_many", "workdir_empty", [TINY, "--workdir=", "--mixtures=uniform"], "--workdir is empty"),
    ("train_many", "no_mixtures", [TINY, "--workdir={new}"], "no mixtures given"),
    ("train_many", "seeds_not_int", [TINY, "--workdir={new}", "--mixtures=uniform", "--seeds=a"], "--seeds=a"),
    ("train_many", "run_names_count", [TINY, "--workdir={new}", "--mixtures=uniform", "--run_names=a,b"],
     "--run_names has 2 names"),
    ("train_many", "run_name_data", [TINY, "--workdir={new}", "--mixtures=uniform", "--run_names=data"],
     "cannot be a folder name"),
    ("train_many", "b2_above_one", [TINY, "--workdir={new}", "--mixtures=uniform", "--config.optim.b2=1.5"],
     "optim.b2=1.5"),
    ("train_many", "mixture_negative", [TINY, "--workdir={new}", "--mixtures=code=-1,prose=2"], "mixture 0"),
    # entropy_mixture
    ("entropy_mixture", "workdir_empty", [TINY, "--workdir="], "--workdir is empty"),
    ("entropy_mixture", "out_is_dir", [TINY, "--workdir={new}", "--out={dir}"], "--out={dir} is a directory"),
    ("entropy_mixture", "out_parent_is_file", [TINY, "--workdir={new}", "--out={file}/e.json"], "is a file"),
    ("entropy_mixture", "temperature_zero", [TINY, "--workdir={new}", "--temperature=0"], "temperature"),
    ("entropy_mixture", "sequence_length_one", [TINY, "--workdir={new}", "--sequence_length=1"], "--sequence_length"),
    ("entropy_mixture", "vne_max_docs_zero", [TINY, "--workdir={new}", "--vne_max_docs=0"], "--vne_max_docs"),
    ("entropy_mixture", "proxy_unknown", [TINY, "--workdir={new}", "--proxy=xe"], "--proxy"),
    ("entropy_mixture", "val_fraction", [TINY, "--workdir={new}", "--config.data.val_fraction=1.5"],
     "data.val_fraction"),
    # fit_law
    ("fit_law", "losses_is_dir", ["--losses={dir}", *FIT], "is a directory"),
    ("fit_law", "losses_missing", ["--losses={dir}/none.csv", *FIT], "does not exist"),
    ("fit_law", "out_empty", ["--losses={table}", "--law=bimix", "--out="], "--out is empty"),
    ("fit_law", "search_on_bimix", ["--losses={table}", *FIT, "--search_samples=1000"], "--search_samples"),
    ("fit_law", "search_top_k_above", ["--losses={table}", "--law=kernel", "--out={new}", "--search_samples=10",
                                       "--search_top_k=20"], "--search_top_k"),
    ("fit_law", "out_is_dir", ["--losses={table}", "--law=bimix", "--out={dir}"], "is a directory"),
    ("fit_law", "plot_is_dir", ["--losses={table}", *FIT, "--plot={dir}"],
     "--plot={dir} is a directory"),
    ("fit_law", "loss_1e300", ["--losses={t_huge_loss}", *FIT], "loss 1e+300 is implausible"),
    ("fit_law", "step_1e300", ["--losses={t_huge_step}", *FIT], "step 1e+300 is implausible"),
    ("fit_law", "loss_nan", ["--losses={t_nan_loss}", *FIT], "loss 'nan'"),
    ("fit_law", "missing_column", ["--losses={t_no_run}", *FIT], "missing column 'run'"),
    ("fit_law", "n_boot_negative", ["--losses={table}", *FIT, "--n_boot=-1"], "--n_boot"),
    ("fit_law", "n_starts_zero", ["--losses={table}", *FIT, "--n_starts=0"], "--n_starts"),
    ("fit_law", "huber_delta_zero", ["--losses={table}", *FIT, "--huber_delta=0"],
     "--huber_delta"),
    ("fit_law", "target_step_bimix", ["--losses={table}", *FIT, "--target_step=5"],
     "--target_step applies to --law=dml and the regression laws only"),
    ("fit_law", "holdout_runs_alone", ["--losses={table}", *FIT, "--holdout_runs=r0"],
     "--holdout_runs"),
    ("fit_law", "model_size_absent", ["--losses={table}", *FIT, "--model_size=9B"],
     "model_size=9B"),
    ("fit_law", "law_unknown", ["--losses={table}", "--law=aioli", "--out={new}"], "--law=aioli: value should be"),
    ("fit_law", "missing_loss_column", ["--losses={t_no_loss}", *FIT],
     "missing column 'loss'"),
    ("fit_law", "non_numeric_loss", ["--losses={t_abc_loss}", *FIT],
     "column 'loss' holds 'abc'"),
    ("fit_law", "non_positive_loss", ["--losses={t_negative_loss}", *FIT],
     "loss '-1' must be a positive"),
    ("fit_law", "non_positive_step", ["--losses={t_zero_step}", *FIT],
     "step '0' must be a positive number"),
    ("fit_law", "proportions_not_summing_to_1", ["--losses={t_sum}", *FIT],
     "proportions sum to 1.7"),
    ("fit_law", "proportions_changing_in_run", ["--losses={t_changing}", *FIT],
     "proportions change between rows"),
    ("fit_law", "two_model_sizes", ["--losses={t_two_sizes}", *FIT],
     "pick one with --model_size"),
    ("fit_law", "single_proportion", ["--losses={t_single}", *FIT],
     "alpha is not identifiable"),
    ("fit_law", "unknown_holdout_run", ["--losses={table}", *FIT, "--holdout=mixtures",
                                        "--holdout_runs=nope"], "--holdout_runs: run 'nope' is not in loss table"),
    ("fit_law", "plot_format", ["--losses={table}", "--law=bimix", "--out={new}/f.json", "--plot={new}/f.xyz"],
     "unsupported image format 'xyz'"),
    ("fit_law", "regression_with_step_min", ["--losses={table}", "--law=kernel", "--out={new}", "--step_min=200"],
     "do not apply to --law=kernel"),
    ("fit_law", "regression_with_holdout", ["--losses={table}", "--law=linear", "--out={new}", "--holdout=mixtures"],
     "do not apply to --law=linear"),
    ("fit_law", "regression_step_unmeasured", ["--losses={table}", "--law=linear", "--out={new}",
                                               "--target_step=300"], "choose another --target_step"),
    # optimize_mixture
    ("optimize_mixture", "fit_is_dir", ["--fit={dir}", *OPT], "--fit={dir} is a directory"),
    ("optimize_mixture", "fit_missing", ["--fit={dir}/none.json", *OPT], "does not exist"),
    ("optimize_mixture", "out_empty", ["--fit={fit}", "--steps=100", "--out="], "--out is empty"),
    ("optimize_mixture", "export_dir_is_file", ["--fit={fit}", *OPT, "--export_dir={file}"],
     "--export_dir={file} is a file"),
    ("optimize_mixture", "bootstrap_without_losses", ["--fit={fit}", *OPT, "--bootstrap=5"],
     "--bootstrap needs --losses"),
    ("optimize_mixture", "bootstrap_negative", ["--fit={fit}", *OPT, "--bootstrap=-1"],
     "--bootstrap=-1"),
    ("optimize_mixture", "floors_infeasible", ["--fit={fit}", *OPT,
                                               "--floors=code=0.6,web=0.6"], "floors"),
    ("optimize_mixture", "weights_unknown", ["--fit={fit}", *OPT, "--weights=zzz=1"],
     "--weights"),
    ("optimize_mixture", "caps_negative", ["--fit={fit}", *OPT, "--caps=code=-1"], "--caps"),
    ("optimize_mixture", "fit_duplicate_domain", ["--fit={fit_duplicate}", *OPT],
     "train domain 'code' is listed twice"),
    ("optimize_mixture", "fit_corrupted", ["--fit={table}", *OPT], "fit file"),
    ("optimize_mixture", "fit_truncated", ["--fit={fit_truncated}", *OPT],
     "is unreadable or corrupted"),
    ("optimize_mixture", "fit_version", ["--fit={fit_version}", *OPT],
     "version 99, this code reads version 1"),
    ("optimize_mixture", "fit_other_json", ["--fit={fit_other}", *OPT],
     "is not a fitted-law file"),
    ("optimize_mixture", "domain_tokens_unknown", ["--fit={fit}", *OPT,
                                                   "--domain_tokens=nope=5"], "--domain_tokens: unknown domain 'nope'"),
    ("optimize_mixture", "caps_not_number", ["--fit={fit}", *OPT, "--caps=code=x"],
     "is not a number"),
    # run_pipeline
    ("run_pipeline", "workdir_empty", [PIPE, "--workdir="], "--workdir is empty"),
    ("run_pipeline", "candidates_empty", [PIPE, "--workdir={new}", "--config.pipeline.candidates="],
     "pipeline.candidates"),
    ("run_pipeline", "one_candidate", [PIPE, "--workdir={new}", "--config.pipeline.candidates=se"],
     "at least 2 mixtures"),
    ("run_pipeline", "candidate_twice", [PIPE, "--workdir={new}", "--config.pipeline.candidates=se,se"],
     "names 'se' twice"),
    ("run_pipeline", "extra_sums_to_two", [PIPE, "--workdir={new}",
                                           "--config.pipeline.extra_candidates=x:code=1,prose=1"],
     "pipeline.extra_candidates (x): weights sum to 2"),
    ("run_pipeline", "b1_one", [PIPE, "--workdir={new}", "--config.optim.b1=1.0"], "optim.b1=1.0"),
    ("run_pipeline", "min_floor_zero", [PIPE, "--workdir={new}", "--config.pipeline.min_floor=0.0"],
     "pipeline.min_floor"),
    ("run_pipeline", "fit_loss_unknown", [PIPE, "--workdir={new}", "--config.pipeline.fit_loss=abs"],
     "pipeline.fit_loss"),
    ("run_pipeline", "bootstrap_negative", [PIPE, "--workdir={new}", "--config.pipeline.bootstrap=-1"],
     "pipeline.bootstrap"),
    ("run_pipeline", "workdir_is_file", [PIPE, "--workdir={file}"], "is a file, not a folder"),
    ("run_pipeline", "field_typo", [PIPE, "--workdir={new}", "--config.pipeline.candidatez=se"],
     "--config.pipeline.candidatez names no config field"),
    ("run_pipeline", "bootstrap_not_int", [PIPE, "--workdir={new}", "--config.pipeline.bootstrap=many"],
     "--config.pipeline.bootstrap"),
    ("run_pipeline", "candidate_unknown", [PIPE, "--workdir={new}", "--config.pipeline.candidates=natural,foo"],
     "pipeline.candidates: 'foo' is not a candidate; choose from"),
    # compare_methods
    ("compare_methods", "workdir_empty", [CMP, "--workdir="], "--workdir is empty"),
    ("compare_methods", "workdir_is_file", [CMP, "--workdir={file}"], "is a file, not a folder"),
    ("compare_methods", "methods_empty", [CMP, "--workdir={new}", "--config.compare.methods="], "compare.methods"),
    ("compare_methods", "method_unknown", [CMP, "--workdir={new}", "--config.compare.methods=bimix,zzz"],
     "compare.methods: 'zzz' is unknown"),
    ("compare_methods", "seeds_not_int", [CMP, "--workdir={new}", "--config.compare.seeds=0,x"],
     "compare.seeds must be integers, like '0,1,2,3,4'"),
    ("compare_methods", "seeds_empty", [CMP, "--workdir={new}", "--config.compare.seeds="], "compare.seeds"),
    ("compare_methods", "feedback_tokens_zero", [CMP, "--workdir={new}", "--config.online.feedback_tokens=0"],
     "online.feedback_tokens"),
    ("compare_methods", "b2_above_one", [CMP, "--workdir={new}", "--config.optim.b2=1.5"], "optim.b2=1.5"),
    ("compare_methods", "config_arg_typo", ["--config=configs/compare_tiny.py:runlocall", "--workdir={new}"],
     "known: runlocal"),
    ("compare_methods", "tuning_seed_reported", [CMP, "--workdir={new}", "--config.compare.tuning_seed=1"],
     "compare.tuning_seed=1 is a reported seed"),
    ("compare_methods", "aioli_grid_field", [CMP, "--workdir={new}", "--config.compare.aioli_grid=eta=1;zeta=2"],
     "compare.aioli_grid: point 2 ('zeta=2') sets 'zeta'"),
    ("compare_methods", "doremi_grid_value", [CMP, "--workdir={new}", "--config.compare.doremi_grid=eta=fast"],
     "compare.doremi_grid: point 1 sets eta='fast', not a number"),
    ("compare_methods", "online_bimix_grid_range", [CMP, "--workdir={new}",
                                                    "--config.compare.online_bimix_grid=tilt=0.5;tilt=2"],
     "compare.online_bimix_grid: point 2: online_bimix.tilt must lie in (0, 1]"),
    ("compare_methods", "online_bimix_setting", [CMP, "--workdir={new}", "--config.online.online_bimix.floor=0.5"],
     "online_bimix.floor must lie in [0, 1/m)"),
    ("compare_methods", "final_eval_every_zero", [CMP, "--workdir={new}", "--config.compare.final_eval_every=0"],
     "compare.final_eval_every=0"),
    ("compare_methods", "equal_compute_negative", [CMP, "--workdir={new}", "--config.compare.equal_compute=-1"],
     "compare.equal_compute=-1"),
    ("compare_methods", "select_fraction_too_big", [CMP, "--workdir={new}", "--config.data.select_fraction=0.97"],
     "data.select_fraction=0.97 must lie in [0, 1 - data.val_fraction)"),
    ("compare_methods", "no_selection_split", [CMP, "--workdir={new}", "--config.data.select_fraction=0",
                                               "--config.data.min_select_docs=0"], "needs a selection split"),
    ("compare_methods", "eval_tokens_beyond_split", [CMP, "--workdir={new}", "--config.train.eval_tokens=100000"],
     "train.eval_tokens on the val split"),
    # compare_laws
    ("compare_laws", "losses_is_dir", ["--losses={dir}", "--out={new}"], "is a directory"),
    ("compare_laws", "out_empty", ["--losses={table}", "--out="], "--out is empty"),
    ("compare_laws", "table_is_dir", ["--losses={table}", "--out={new}", "--table={dir}"], "--table={dir}"),
    ("compare_laws", "plot_parent_is_file", ["--losses={table}", "--out={new}", "--plot={file}/p.png"], "--plot"),
    ("compare_laws", "law_unknown", ["--losses={table}", "--out={new}", "--laws=zzz"], "'zzz'"),
    ("compare_laws", "protocol_unknown", ["--losses={table}", "--out={new}", "--protocols=foo"], "--protocols"),
    ("compare_laws", "k_one", ["--losses={table}", "--out={new}", "--k=1"], "--k=1"),
    ("compare_laws", "n_boot_negative", ["--losses={table}", "--out={new}", "--n_boot=-1"], "--n_boot=-1"),
    ("compare_laws", "model_size_absent", ["--losses={table}", "--out={new}", "--model_size=9B"], "model_size=9B"),
    ("compare_laws", "split_without_test_runs", ["--losses={table}", "--out={new}", "--protocols=split"],
     "--test_runs"),
    ("compare_laws", "nothing_to_measure", ["--losses={table}", "--out={new}", "--protocols="], "nothing to measure"),
    ("compare_laws", "transfer_one_size", ["--losses={table}", "--out={new}", "--protocols=", "--transfer"],
     "two sizes"),
    ("compare_laws", "test_runs_match_none", ["--losses={table}", "--out={new}", "--protocols=split",
                                              "--laws=linear", "--test_runs=zzz*"], "--test_runs=zzz*"),
    # predict_nested
    ("predict_nested", "out_empty", [*NESTED, "--out="], "--out is empty"),
    ("predict_nested", "fit_parent_is_file", [*NESTED, "--out={new}", "--fit={file}/f.json"], "--fit"),
    ("predict_nested", "target_step_negative", [*NESTED[:3], "--target_step=-5", "--out={new}"], "--target_step"),
    ("predict_nested", "max_step_zero", [*NESTED, "--out={new}", "--max_step=0"], "--max_step"),
    ("predict_nested", "target_also_small", [*NESTED[:2], "--target_size=1M", NESTED[3], "--out={new}"],
     "--target_size=1M is also in --small_sizes"),
    ("predict_nested", "size_absent", [NESTED[0], "--small_sizes=1M,9B", *NESTED[2:], "--out={new}"], "'9B'"),
    ("predict_nested", "sizes_not_number", [*NESTED, "--out={new}", "--sizes=1M=abc"], "--sizes"),
    ("predict_nested", "min_step_word", [*NESTED, "--out={new}", "--min_step=soon"], "--min_step"),
    ("predict_nested", "min_step_above_max", [*NESTED, "--out={new}", "--min_step=500", "--max_step=400"],
     "min_step=500 is not below max_step=400"),
    ("predict_nested", "n_boot_one", [*NESTED, "--out={new}", "--n_boot=1"], "--n_boot=1"),
    ("predict_nested", "plots_is_file", [*NESTED, "--out={new}", "--plots={file}"], "--plots"),
    ("predict_nested", "points_is_dir", [*NESTED, "--out={new}", "--points={dir}"], "--points"),
    ("predict_nested", "one_small_size", [NESTED[0], "--small_sizes=1M", *NESTED[2:], "--out={new}", NSIZES],
     "at least two small model sizes"),
    ("predict_nested", "runs_no_match", [*NESTED, "--out={new}", NSIZES, "--runs=zzz*"], "--runs=zzz*"),
    ("predict_nested", "one_mixture", [*NESTED, "--out={new}", NSIZES, "--runs=*_r0"], "1 mixture"),
    ("predict_nested", "too_few_steps", [*NESTED, "--out={new}", NSIZES, "--max_step=200"], "checkpoint"),
    ("predict_nested", "weights_unknown", [*NESTED, "--out={new}", NSIZES, "--weights=zzz=1"], "'zzz'"),
    ("predict_nested", "caps_infeasible", [*NESTED, "--out={new}", NSIZES, "--caps=code=0.1,web=0.1"], "--caps"),
    # backtest_nested
    ("backtest_nested", "out_empty", ["--losses={sizes_table}", "--splits=1M+2M<=400->4M@800", "--out="],
     "--out is empty"),
    ("backtest_nested", "split_syntax", ["--losses={sizes_table}", "--splits=1M->4M", "--out={new}"],
     "SIZES<=MAX_STEP->SIZE@STEP"),
    ("backtest_nested", "split_size_absent", ["--losses={sizes_table}", "--splits=1M+2M<=400->9B@800",
                                              "--out={new}"], "'9B'"),
    # gpu_check (JAX_PLATFORMS=cpu here: without --smoke it has no accelerator to check)
    ("gpu_check", "no_accelerator", [], "pass --smoke"),
    ("gpu_check", "parts_unknown", ["--smoke", "--parts=step,foo"], "--parts: unknown part 'foo'"),
    ("gpu_check", "group_sizes_zero", ["--smoke", "--group_sizes=0"], "--group_sizes=0"),
    ("gpu_check", "steps_zero", ["--smoke", "--steps=0"], "--steps=0"),
    ("gpu_check", "dir_missing", ["--smoke", "--dir={dir}/none"], "--dir={dir}/none"),
    ("gpu_check", "config_missing", ["--smoke", "--config=configs/nope.py"], "configs/nope.py"),
    # prepare_store
    ("prepare_store", "out_empty", [*STORE, "--out="], "--out is empty"),
    ("prepare_store", "out_is_file", [*STORE, "--out={file}"], "is a file, not a folder"),
    ("prepare_store", "tokenizer_missing", [STORE[0], "--tokenizer={dir}/none.model", "--out={new}"],
     "--tokenizer={dir}/none.model does not exist"),
    ("prepare_store", "tokenizer_not_a_model", [STORE[0], "--tokenizer={file}", "--out={new}"], "check --tokenizer"),
    ("prepare_store", "record_tokens_one", [*STORE, "--out={new}", "--record_tokens=1"], "--record_tokens=1"),
    ("prepare_store", "val_fraction_one", [*STORE, "--out={new}", "--val_fraction=1"], "--val_fraction=1"),
    ("prepare_store", "workers_zero", [*STORE, "--out={new}", "--workers=0"], "--workers=0"),
    ("prepare_store", "sources_no_match", ["--sources=code={dir}/*.jsonl", "--tokenizer={tokenizer}", "--out={new}"],
     "no file matches"),
    ("prepare_store", "sources_not_pairs", ["--sources=code", "--tokenizer={tokenizer}", "--out={new}"],
     "is not domain=glob"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinput")
    fx = {"dir": str(root / "adir"), "file": str(root / "afile")}
    os.makedirs(fx["dir"])
    open(fx["file"], "w").write("not a folder\n")
    rows = _table_rows()
    fx["table"] = _write_table(root / "table.csv", rows)
    fx["sizes_table"] = _write_table(root / "sizes.csv", [{**r, "model_size": m, "run": f"{m}_{r['run']}",
                                                           "loss": round(r["loss"] * f, 6)}
                                                          for m, f in (("1M", 1.0), ("2M", 0.95), ("4M", 0.9))
                                                          for r in rows])
    for name, (table_rows, columns) in _bad_tables(rows).items():
        fx[f"t_{name}"] = _write_table(root / f"t_{name}.csv", table_rows, columns)
    fx["corpus"] = str(root / "corpus")
    os.makedirs(fx["corpus"])
    open(os.path.join(fx["corpus"], "full.txt"), "w").write(
        "\n\n".join(f"document {i} says hello to the world." for i in range(200)))
    open(os.path.join(fx["corpus"], "empty.txt"), "w").close()
    fx["src"] = str(root / "src")
    os.makedirs(fx["src"])
    with open(os.path.join(fx["src"], "a.jsonl"), "w") as f:
        f.write('{"text": "def f(x): return x"}\n')
    params = {"a": np.array([30.0, 30.0]), "c": np.array([2.0, 3.0]), "alpha": np.array([0.1, 0.1]),
              "beta": np.array([0.5, 0.5])}
    fx["fit"] = str(root / "fit.json")
    FittedLaw("bimix", 1, ("code", "web"), ("code", "web"), params).save(fx["fit"])
    good = json.load(open(fx["fit"]))
    for name, content in [("duplicate", json.dumps({**good, "train_domains": ["code", "code"]})),
                          ("truncated", json.dumps(good)[:50]), ("version", json.dumps({**good, "version": 99})),
                          ("other", json.dumps({"hello": 1}))]:
        fx[f"fit_{name}"] = str(root / f"fit_{name}.json")
        open(fx[f"fit_{name}"], "w").write(content)
    # A workdir whose prepared tokens were truncated (a crash of another program, a full disk, a bad copy).
    sys.path.insert(0, REPO)
    from configs import tiny

    fx["prepared"] = str(root / "prepared")
    prepare_data(DataSpec.from_config(tiny.get_config("runlocal").data), fx["prepared"])
    npz = os.path.join(fx["prepared"], "data", "tokens.npz")
    with open(npz, "r+b") as f:
        f.truncate(os.path.getsize(npz) // 2)
    fx["tokenizer"] = os.path.join(fx["prepared"], "data", "tokenizer.model")

    cases = []
    for binary, cid, argv, _ in CATALOG:
        new = str(root / "new" / binary / cid)
        args = [a.format(**fx, new=new) for a in argv]
        cases.append({"id": f"{binary}/{cid}", "binary": binary, "argv": args, "watch": [str(root)]})
    with open(root / "cases.json", "w") as f:
        json.dump(cases, f)
    repo_before = sorted(os.listdir(REPO))
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR="")
    proc = subprocess.run([sys.executable, "-m", "tests.badinput_lib", str(root / "cases.json"),
                           str(root / "results.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(REPO)) == repo_before  # nothing written into the current directory
    with open(root / "results.json") as f:
        out = json.load(f)
    for cid, r in out.items():
        r["written"] = [p for p in r["written"] if "cases.json" not in p and "results.json" not in p]
    return out, fx


def _check(results, binary, cid, message):
    out, fx = results
    r = out[f"{binary}/{cid}"]
    lines = r["stderr"].strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert r["code"] == 2, r["stderr"][-2000:]
    assert len(errors) == 1 and errors[0] == lines[-1], r["stderr"][-2000:]
    assert message.format(**fx) in errors[0], errors[0]
    assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
    assert not r["written"], r["written"]


def _cases(binary):
    return [pytest.param(cid, msg, id=cid) for b, cid, _, msg in CATALOG if b == binary]


def _binary_test(binary):
    """One parametrized test over the catalog's cases of `binary`."""

    @pytest.mark.parametrize("cid, message", _cases(binary))
    def test(results, cid, message):
        _check(results, binary, cid, message)

    test.__name__ = f"test_{binary}"
    return test


BINARIES = list(dict.fromkeys(b for b, *_ in CATALOG))
globals().update({f"test_{b}": _binary_test(b) for b in BINARIES})  # test_train, test_fit_law, ...


def test_catalog_covers_every_binary():
    binaries = {f[:-3] for f in os.listdir(os.path.join(REPO, "experiments"))
                if f.endswith(".py") and not f.startswith(("bench_", "_")) and f not in ("cli.py", "baselines.py")}
    assert binaries == set(BINARIES)
