r"""From small models on short runs, predict a larger model at a later step for any mixture; optimise it.

    python -m experiments.predict_nested --losses=table.csv --small_sizes=70M,160M --target_size=410M \
        --target_step=60000 --max_step=30000 --out=nested.json

Step law per small run (checkpoints <= --max_step) -> size law over the small sizes (alpha tied, E per
eval domain) -> mixing law (--law) at (--target_size, --target_step) -> the mixture minimising the mean
predicted loss (RegMix's Dirichlet search around the fitting mixtures' mean). When the table has rows of
the target size at the target step, the report scores the prediction on them (per-domain relative
error, R^2 of log loss) and ranks the optimised mixture among the observed ones. Writes --out (JSON) and
--fit (the fitted law, for experiments.optimize_mixture). Bad input: one line, exit 2, nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from experiments import cli

_LOSSES = flags.DEFINE_string("losses", None, "Loss table CSV with a model_size column.")
_SMALL = flags.DEFINE_list("small_sizes", None, "Model sizes to fit on.")
_TARGET_SIZE = flags.DEFINE_string("target_size", None, "Model size to predict.")
_TARGET_STEP = flags.DEFINE_float("target_step", None, "Step to predict at.")
_MAX_STEP = flags.DEFINE_float("max_step", None, "Use only small-run checkpoints up to this step (short runs).")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Rescale each row's proportions to sum to 1 (for sources that "
                               "rounded them).")
_LAW = flags.DEFINE_enum("law", "dml", ["dml", "kernel", "loglinear", "linear", "ye"],
                         "Mixing law on the predicted points ('ye': the older name of dml).")
_SIZES = flags.DEFINE_string("sizes", "", "Non-embedding parameter counts, size=n,... (defaults: Ye et al.'s).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the mixture search.")
_OUT = flags.DEFINE_string("out", None, "Report JSON to write.")
_FIT = flags.DEFINE_string("fit", None, "Fitted-law JSON to write (optional).")
flags.mark_flags_as_required(["losses", "small_sizes", "target_size", "target_step", "out"])


def main(argv: Sequence[str]) -> None:
    del argv
    import numpy as np

    from bimix_jax import atomic, loss_table, checks
    from bimix_jax.errors import InputError
    from bimix_jax.laws import nested
    from bimix_jax.laws.base import canonical_law_name

    law = canonical_law_name(_LAW.value)
    checks.output_file("--out", _OUT.value)
    if _FIT.value:
        checks.output_file("--fit", _FIT.value)
    checks.in_range("--target_step", _TARGET_STEP.value, low=0, low_open=True, hint="give a training step > 0")
    if _MAX_STEP.value is not None:
        checks.in_range("--max_step", _MAX_STEP.value, low=0, low_open=True, hint="give a training step > 0")

    sizes = {}
    for item in filter(None, _SIZES.value.split(",")):
        name, _, value = item.partition("=")
        sizes[name.strip()] = cli.number_or(value, "sizes")
    if _TARGET_SIZE.value in _SMALL.value:
        raise InputError(f"--target_size={_TARGET_SIZE.value} is also in --small_sizes; predict a size not fitted")
    table = loss_table.read_csv(_LOSSES.value, normalize=_NORMALIZE.value)
    out = nested.predict_nested(table, small_sizes=_SMALL.value, target_size=_TARGET_SIZE.value,
                                target_step=_TARGET_STEP.value, max_step=_MAX_STEP.value, law=law,
                                sizes=sizes)
    fitted = out["fitted"]
    prior = np.mean(out["predicted"].p, axis=0)
    r_opt, info = nested.optimize(fitted, prior / prior.sum(), seed=_SEED.value)
    report = {"small_sizes": _SMALL.value, "target_size": _TARGET_SIZE.value, "target_step": _TARGET_STEP.value,
              "max_step": _MAX_STEP.value, "law": law, "size_law": out["size_law"],
              "step_law": out["step_law"], "fitting_mixtures": out["mixtures"],
              "optimum": {"proportions": dict(zip(table.domains, r_opt.tolist())), **info}}
    if _TARGET_SIZE.value in (table.model_sizes if table.has_model_size else ()):
        obs = table.for_model_size(_TARGET_SIZE.value)
        obs = obs.subset(np.isclose(obs.step, _TARGET_STEP.value, rtol=1e-9), what="target rows")
        if len(obs):
            score = nested.score_against(fitted, obs)
            agg = {r: float(obs.loss[obs.run == r].mean()) for r in obs.runs}
            mixes = obs.mixtures()
            nearest = min(agg, key=lambda r: float(np.abs(mixes[r] - r_opt).sum()))
            report["heldout"] = {k: v for k, v in score.items() if k != "predicted"}
            report["optimum"].update({
                "observed_best_run": min(agg, key=agg.get), "observed_best_mean_loss": min(agg.values()),
                # The observed run closest to the optimum (L1) and its rank by observed mean loss (1: best).
                "nearest_observed_run": nearest, "nearest_observed_mean_loss": agg[nearest],
                "nearest_observed_rank": int(sum(v < agg[nearest] for v in agg.values())) + 1})
            print(f"{_TARGET_SIZE.value} at step {_TARGET_STEP.value:g}: mean MRE {score['mean']['mre_pct']:.2f}%, "
                  f"mean R2(log) {score['mean']['r2_log']:.3f} over {len(obs.runs)} runs")
    print("optimum: " + ", ".join(f"{d}={p:.3f}" for d, p in zip(table.domains, r_opt)))
    atomic.write_json(_OUT.value, report)
    if _FIT.value:
        fitted.save(_FIT.value)


if __name__ == "__main__":
    cli.run(main)
