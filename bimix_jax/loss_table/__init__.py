"""The loss table: the contract between training runs and the mixing-law fitters.

One row per measurement, as CSV with a header (column order is free when reading):

| column        | meaning                                                                  |
|---------------|--------------------------------------------------------------------------|
| `run`         | run id; every row of a run has the same mixture (and model size)         |
| `model_size`  | optional; nominal model size (`70M`, `160M`, or a number of parameters)  |
| `step`        | optimizer step of the measurement, > 0                                   |
| `tokens`      | optional; training tokens seen at that step                              |
| `p_<domain>`  | the run's training proportion of `<domain>`; >= 0, sum to 1 per run      |
| `mixture`     | optional; `fixed` (default) or `cumulative` (see below)                  |
| `eval_domain` | validation domain of the measurement (need not be a training domain)     |
| `loss`        | mean per-token cross-entropy in nats, > 0                                |

A run's rows are either all `fixed`, and then every row has the same proportions (a static run), or all
`cumulative`: the run's mixture changed during training (an online method) and each row's `p_` columns hold
the realised share of each domain's training rows from the start up to that step, which may differ between
rows. The mixing laws read both the same way: the proportions the model was trained on up to the step.

A table is checked completely when it is built, so a malformed table is rejected (one-line
`InputError` naming the row or run, the column and the fix) before any work starts. Writes are atomic
(`bimix_jax.atomic`): a killed writer never leaves a partial row, and `append_rows` replaces rows with
the same `(run, step, eval_domain)` key instead of duplicating them.
"""

from bimix_jax.loss_table.csv_io import append_rows, drop_rows_after, read_csv, write_csv
from bimix_jax.loss_table.rows import concat, from_rows
from bimix_jax.loss_table.table import (DOMAIN_NAME, MIXTURE_KINDS, OPTIONAL_COLUMNS, PROPORTION_PREFIX,
                                        REQUIRED_COLUMNS, SUM_TOLERANCE, LossTable, check_domain_name,
                                        parse_model_size)

__all__ = ["DOMAIN_NAME", "MIXTURE_KINDS", "OPTIONAL_COLUMNS", "PROPORTION_PREFIX", "REQUIRED_COLUMNS",
           "SUM_TOLERANCE", "LossTable", "append_rows", "check_domain_name", "concat", "drop_rows_after",
           "from_rows", "parse_model_size", "read_csv", "write_csv"]
