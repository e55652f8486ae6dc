r"""The whole BiMix job: candidates -> proxy runs -> law -> best mixture -> its run -> report. Rerun to resume.

    python -m experiments.run_pipeline --config=configs/pipeline_tiny.py --workdir=workdirs/pipeline_tiny
    python -m experiments.run_pipeline --config=configs/pipeline_tiny.py:runlocal --workdir=/tmp/p   # seconds
    python -m experiments.run_pipeline --config=configs/pipeline_tiny.py --config.pipeline.vmap=True \
        --workdir=workdirs/pipeline_vmap

Writes `<workdir>/report.md`, `report.json` and `plots/*.png`, with everything needed to reproduce them
(`pipeline.json`, `provenance.json`, `data/`, `runs/<candidate>/`, `runs/optimized/`, `losses*.csv`,
`fit.json`, `mixture.json`, `mixture_exports/`, `stages/`); see `bimix_jax/pipeline/run.py`. Bad input (a
config override, a workdir holding another config's runs, a corrupted checkpoint, an unwritable
workdir) is one line on stderr and exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pipeline_tiny.py[:runlocal].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the pipeline (created; rerun to resume).")
flags.mark_flags_as_required(["config", "workdir"])



def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import checks
    from bimix_jax.pipeline import run as pipeline  # After cli.run has set up JAX.

    checks.output_dir("--workdir", _WORKDIR.value)
    cli.quiet_orbax_logs()
    result = pipeline.run_pipeline(_CONFIG.value, _WORKDIR.value)
    rep = result.report
    print("recommended mixture: " + ", ".join(f"{d}={p:.4f}" for d, p in result.mixture.items())
          + f" (sum {sum(result.mixture.values()):.6f})")
    print("observed average validation loss at the last step:")
    for row in rep["comparison"]:
        mark = "  <- recommended" if row["is_recommended"] else ""
        print(f"  {row['rank']:2d}. {row['run']:>12s}  {row['observed_average']:.4f}{mark}")
    print(rep["verdict"])
    print(f"report: {result.paths['report_md']}")


if __name__ == "__main__":
    cli.run(main)
