r"""The best training mixture under a fitted law, with constraints, reference mixtures and bootstrap intervals.

    python -m experiments.optimize_mixture --fit=fit.json --steps=60000 --out=mixture.json
    python -m experiments.optimize_mixture --fit=fit.json --steps=60000 --weights=github=1,pile_cc=2 \
        --floors=books3=0.05 --caps=github=0.3 --reference=github=0.2,books3=0.3,pile_cc=0.5 --out=mixture.json
    python -m experiments.optimize_mixture --fit=fit.json --token_budget=2e10 --tokens_per_step=1048576 \
        --domain_tokens=github=3e9,books3=8e9,pile_cc=5e10 --max_epochs=4 --out=mixture.json
    python -m experiments.optimize_mixture --fit=fit.json --steps=60000 --losses=table.csv --bootstrap=100 \
        --out=mixture.json --export_dir=mixture_exports

Writes the report JSON (`--out`; format in README "Mixture optimizer") and, with `--export_dir`, the
mixture as weights.json, megatron_blend.txt and sampling_weights.json. Computes in float64. Bad input
(unknown domains, negative or infeasible values, a fit file of another law version, a corrupted file,
bootstrap without a loss table) is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags

from experiments import cli

_FIT = flags.DEFINE_string("fit", None, "Fitted law JSON from experiments.fit_law.")
_OUT = flags.DEFINE_string("out", None, "Report JSON to write.")
_STEPS = flags.DEFINE_float("steps", None, "Target training step s of the objective (default: --token_budget / "
                            "--tokens_per_step, or the step a step-less law was fitted at).")
_TOKENS_PER_STEP = flags.DEFINE_float("tokens_per_step", None,
                                       "Tokens per step, to turn --token_budget into steps.")
_WEIGHTS = flags.DEFINE_string("weights", "", "Objective weights per eval domain, d=w,... (default: equal; "
                               "unlisted domains get 0; normalised).")
_FLOORS = flags.DEFINE_string("floors", "", "Minimum proportion per training domain, d=x,...")
_CAPS = flags.DEFINE_string("caps", "", "Maximum proportion per training domain, d=x,...")
_MIN_FLOOR = flags.DEFINE_float("min_floor", None, "Lower bound of every proportion (default: 1e-4 for bimix, "
                                "whose loss diverges at 0; 0 otherwise).")
_DOMAIN_TOKENS = flags.DEFINE_string("domain_tokens", "", "Available training tokens per domain, d=n,...")
_TOKEN_BUDGET = flags.DEFINE_float("token_budget", None, "Total training tokens of the target run.")
_MAX_EPOCHS = flags.DEFINE_float("max_epochs", None, "Repetition cap: r_d <= max_epochs * tokens_d / budget.")
_REFERENCE = flags.DEFINE_string("reference", "", "A mixture d=x,... over all training domains to compare the optimum "
                                 "with (uniform always; natural token shares when --domain_tokens covers every domain).")
_BASELINE = flags.DEFINE_string("baseline", "", "Old name of --reference (still read).")
_SOLVER = flags.DEFINE_enum("solver", "auto", ["auto", "exact", "projected_gradient"],
                            "auto: exact for bimix, projected gradient otherwise.")
_LOSSES = flags.DEFINE_string("losses", "",
                              "Loss table the law was fitted on (bootstrap; fitted-range warnings).")
_MODEL_SIZE = flags.DEFINE_string("model_size", None, "Model size rows of --losses to use (default: the fit's).")
_NORMALIZE = flags.DEFINE_bool("normalize", False, "Rescale each row's proportions in --losses to sum to 1 (for "
                               "sources that rounded them).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 0, "Bootstrap replicates over runs (needs --losses); 0 = none.")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap resampling seed.")
_TEMPLATE = flags.DEFINE_string("megatron_template", "{domain}_text_document",
                                "Megatron data prefix per domain; {domain} is replaced by the domain name.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "", "Also write weights.json, megatron_blend.txt, "
                                  "sampling_weights.json here.")
flags.mark_flags_as_required(["fit", "out"])


def main(argv: Sequence[str]) -> None:
    del argv
    import jax

    jax.config.update("jax_enable_x64", True)  # The optimizer is tiny; float64 makes it exact to 1e-12.
    import numpy as np

    from bimix_jax import atomic, loss_table, checks
    from bimix_jax.errors import InputError
    from bimix_jax.laws import FittedLaw
    from bimix_jax.mixture import constraints, export, optimize, uncertainty

    parse = constraints.parse_domain_values
    checks.input_file("--fit", _FIT.value, "fit file")
    checks.output_file("--out", _OUT.value)
    if _EXPORT_DIR.value:
        checks.output_dir("--export_dir", _EXPORT_DIR.value)
        for name in ("weights.json", "megatron_blend.txt", "sampling_weights.json"):
            checks.output_file("--export_dir", os.path.join(_EXPORT_DIR.value, name))
    if _LOSSES.value:
        checks.input_file("--losses", _LOSSES.value, "loss table CSV")
    if _BOOTSTRAP.value < 0:
        raise InputError(f"--bootstrap={_BOOTSTRAP.value} must be >= 0")
    if _BOOTSTRAP.value and not _LOSSES.value:
        raise InputError("--bootstrap needs --losses=TABLE.csv (the loss table the law was fitted on)")
    export.check_template(_TEMPLATE.value)
    fitted = FittedLaw.load(_FIT.value)
    step = optimize.resolve_step(fitted, _STEPS.value, token_budget=_TOKEN_BUDGET.value,
                                 tokens_per_step=_TOKENS_PER_STEP.value)
    min_floor = optimize.default_min_floor(fitted.law) if _MIN_FLOOR.value is None else _MIN_FLOOR.value
    bounds = constraints.make_bounds(
        fitted.train_domains, floors=parse(_FLOORS.value, "--floors"), caps=parse(_CAPS.value, "--caps"),
        domain_tokens=parse(_DOMAIN_TOKENS.value, "--domain_tokens"), token_budget=_TOKEN_BUDGET.value,
        max_epochs=_MAX_EPOCHS.value, min_floor=min_floor)
    weights = parse(_WEIGHTS.value, "--weights")
    reference = parse(cli.renamed(_BASELINE, "reference") or _REFERENCE.value, "--reference")
    table, prange = None, None
    if _LOSSES.value:
        table = loss_table.read_csv(_LOSSES.value, model_size=_MODEL_SIZE.value or None,
                                    normalize=_NORMALIZE.value)
        if tuple(table.domains) != tuple(fitted.train_domains):
            raise InputError(f"--losses has training domains {', '.join(table.domains)}, the fit file "
                             f"{', '.join(fitted.train_domains)}; pass the table the law was fitted on")
        size = _MODEL_SIZE.value or fitted.summary.get("model_size")
        if size and table.has_model_size:
            table = table.for_model_size(size)
        prange = {d: (float(table.p[:, i].min()), float(table.p[:, i].max()))
                  for i, d in enumerate(table.domains)}
    report = optimize.optimize_mixture(
        fitted, step=step, weights=weights, bounds=bounds, reference=reference, solver=_SOLVER.value,
        proportion_range=prange, megatron_template=_TEMPLATE.value)
    report["fit_file"] = _FIT.value
    if _BOOTSTRAP.value:
        refs = {n: np.array([m[d] for d in fitted.train_domains]) for n, m in report["references"].items()}
        report["bootstrap"] = uncertainty.bootstrap_optimum(
            table, fitted, n_boot=_BOOTSTRAP.value, seed=_SEED.value, step=step,
            weights_E=np.array([report["weights"][e] for e in fitted.eval_domains]), bounds=bounds,
            references=refs, solver=_SOLVER.value, model_size=_MODEL_SIZE.value or None)
    atomic.write_json(_OUT.value, report)
    if _EXPORT_DIR.value:
        export.write_exports(_EXPORT_DIR.value, report["export"])
    _print(report)
    print(f"wrote {_OUT.value}" + (f" and {_EXPORT_DIR.value}/" if _EXPORT_DIR.value else ""))


def _print(report: dict) -> None:
    boot = report.get("bootstrap")
    print(f"{report['law']} law, step {report['step']:g}, solver {report['solver']['name']}")
    print(f"{'domain':>16s} {'optimum':>9s} {'bound':>10s}" + (f" {'5%..95%':>17s}" if boot else ""))
    for d, r in report["mixture"].items():
        tags = ",".join(report["binding"].get(d, []))
        line = f"{d:>16s} {r:9.5f} {tags:>10s}"
        if boot and boot["mixture"][d]:
            q = boot["mixture"][d]
            line += f" {q[0]:8.5f}..{q[-1]:7.5f}"
        print(line)
    losses = report["predicted_loss"]
    totals = ", ".join(f"{n} {v['total']:.5f}" for n, v in losses.items())
    print(f"predicted weighted loss: {totals}")
    for w in report["warnings"]:
        print(f"warning: {w}")


if __name__ == "__main__":
    cli.run(main)
