"""pipeline.law: bimix | dml | auto in the fit stage (auto: cross-validated before the last checkpoint)."""

import numpy as np
import pytest

from bimix_jax.errors import InputError
from bimix_jax.pipeline import stages
from bimix_jax.pipeline.spec import PipelineSpec
from tests.dml_law_test import make_table

OPTIONS = stages.fit_options(4, "l2", 0.05)


def test_spec_accepts_the_laws_and_refuses_others():
    assert PipelineSpec(law="auto").law == "auto"
    with pytest.raises(InputError, match="pipeline.law='nope' must be one of bimix, dml, auto"):
        PipelineSpec(law="nope")


@pytest.mark.slow
def test_auto_picks_the_true_law_without_the_last_checkpoints():
    steps = np.geomspace(1000, 60000, 6).round()
    mixtures = [(0.5, 0.25, 0.25), (0.25, 0.5, 0.25), (0.25, 0.25, 0.5), (0.6, 0.2, 0.2), (0.2, 0.3, 0.5),
                (0.3, 0.1, 0.6), (0.4, 0.4, 0.2)]
    table = make_table(mixtures=mixtures, steps=steps, step_curve=True, noise=0.002, seed=1)
    table = table.for_eval_domains(("code", "books", "web"))
    out = stages.fit_stage(table, min_step=0.0, options=OPTIONS, leave_one_out=False, law="auto",
                           target_step=float(steps[-1]))
    choice = out["law_choice"]
    assert choice["chosen"] == "dml" and out["law"]["law"] == "dml"  # The data follow the Data Mixing Law.
    assert choice["scores"]["dml"]["r2_log"] > choice["scores"]["bimix"]["r2_log"]
    assert out["law"]["target_step"] == steps[-1]
