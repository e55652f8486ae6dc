"""Every mixing method side by side on one model, one token budget and the same seeds.

    python -m experiments.compare_methods --config=configs/compare_tiny.py --workdir=workdirs/compare_tiny

Writes `report.md`, `report.json` and `plots/` into the workdir, with one run per method and seed under
`runs/<method>/seed<k>/`; see `bimix_jax/pipeline/compare.py`. Rerun the same command to resume. Bad input
(a config field, a workdir holding another comparison) prints one `error:` line and exits 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/compare_tiny.py[:runlocal].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the comparison (created; rerun to resume).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
    del argv
    from bimix_jax import checks
    from bimix_jax.pipeline import compare  # After cli.run has set up JAX.

    cli.quiet_orbax_logs()
    workdir = checks.output_dir("--workdir", _WORKDIR.value)
    rep = compare.compare_methods(_CONFIG.value, workdir)
    best = rep["ranking"][0]
    n = sum(e["role"] == "method" for e in rep["methods"].values())
    print(f"best: {best} (average loss {rep['methods'][best]['average_loss']['mean']:.4f}); "
          f"{len(rep['beat_uniform'])} of {n} methods beat uniform after Holm correction "
          f"({', '.join(rep['beat_uniform']) or 'none'}); this invocation took {rep['wall_s_this_invocation']:.0f} s; "
          f"report: {workdir}/report.md")


if __name__ == "__main__":
    cli.run(main)
