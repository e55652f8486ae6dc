r"""Trains K candidate mixtures of one config at once (one vmapped step); rerunning the command resumes them.

    python -m experiments.train_many --config=configs/tiny.py --workdir=workdirs/sweep \
        --mixtures=uniform --mixtures=natural --mixtures=code=0.5,prose=0.5
    python -m experiments.train_many --config=configs/tiny.py --workdir=workdirs/seeds \
        --mixtures=uniform --mixtures=uniform --mixtures=uniform --seeds=0,1,2 --run_names=u0,u1,u2
    python -m experiments.train_many --config=configs/tiny.py --workdir=workdirs/sweep --mixtures=uniform \
        --mixtures=natural --novmap   # one after another (the reference)

Run k is written to `<workdir>/<run name k>/` exactly as `experiments.train` writes a run (`losses.csv`,
`metrics.jsonl`, `config.json`, `checkpoints/`); the prepared corpus is shared under `<workdir>/data/`.
`config.mixture` and `config.run_name` are ignored. Bad input is one line on stderr and exit code 2,
with nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py[:runlocal].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent folder of the runs (created; rerun to resume).")
_MIXTURES = flags.DEFINE_multi_string("mixtures", [], "One training mixture per run ('uniform', 'natural' or "
                                      "'domain=weight,...'); repeat the flag.")
_RUN_NAMES = flags.DEFINE_list("run_names", [], "Run names, one per mixture (default mix0, mix1, ...); also the "
                               "sub-folder names.")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds, one per mixture (default: config.train.seed for every run).")
_VMAP = flags.DEFINE_bool("vmap", True, "Train the runs in one vmapped program; --novmap trains them in turn.")
flags.mark_flags_as_required(["config", "workdir"])



def _seeds() -> list[int] | None:
    if not _SEEDS.value:
        return None
    try:
        return [int(s) for s in _SEEDS.value]
    except ValueError:
        cli.fail(f"--seeds={','.join(_SEEDS.value)}: every seed must be an integer, e.g. --seeds=0,1,2")


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import checks
    from bimix_jax.train import loop as train_loop, many as train_many  # After cli.run has set up JAX.

    checks.output_dir("--workdir", _WORKDIR.value)
    cli.quiet_orbax_logs()
    results = train_many.train_many_from_config(_CONFIG.value, _WORKDIR.value, _MIXTURES.value,
                                                run_names=_RUN_NAMES.value or None, seeds=_seeds(),
                                                vmap=_VMAP.value)
    for r in results:
        state = "was already complete" if r.already_complete else "finished"
        losses = ", ".join(f"{d} {x:.4f}" for d, x in r.final_losses.items())
        print(f"run {r.run_name} ({r.model_size} non-embedding parameters) {state} at step {r.steps}: {losses}; "
              f"loss table {os.path.join(r.workdir, train_loop.LOSSES_FILE)}")


if __name__ == "__main__":
    cli.run(main)
