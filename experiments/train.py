r"""Trains one run (a fixed mixture, or an online method's schedule) and writes its loss table; rerun to resume.

    python -m experiments.train --config=configs/tiny.py --workdir=workdirs/tiny
    python -m experiments.train --config=configs/tiny.py --config.mixture=code=0.5,prose=0.5 --workdir=workdirs/mix
    python -m experiments.train --config=configs/proxy.py --config.data.path=/data/store --workdir=workdirs/proxy

Writes `<workdir>/losses.csv` (the loss table), `metrics.jsonl`, `config.json`, `checkpoints/` and, for an
in-memory corpus, the prepared data under `data/` (a token store, `data.source=store`, is read in place). On every
host of a pod run the same command with BIMIX_JAX_DISTRIBUTED=1. Bad input is one line on stderr and exit code 2,
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
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created; rerun to resume).")
flags.mark_flags_as_required(["config", "workdir"])



def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import checks
    from bimix_jax.train import loop as train_loop  # After cli.run has set up JAX.

    checks.output_dir("--workdir", _WORKDIR.value)
    cli.quiet_orbax_logs()
    result = train_loop.train_from_config(_CONFIG.value, _WORKDIR.value)
    state = "was already complete" if result.already_complete else "finished"
    print(f"run {result.run_name} ({result.model_size} non-embedding parameters) {state} at step {result.steps}; "
          f"loss table {os.path.join(result.workdir, train_loop.LOSSES_FILE)}")
    for domain, loss in result.final_losses.items():
        print(f"  {domain:>16s}  {loss:.4f}")


if __name__ == "__main__":
    cli.run(main)
