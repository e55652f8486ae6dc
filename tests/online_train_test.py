"""Online mixing methods inside the trainer: segments, feedback, trajectory, resume mid-probe, no recompiles."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from bimix_jax import atomic, loss_table
from bimix_jax.errors import InputError
from bimix_jax.online import aioli, doremi
from bimix_jax.train import log as run_log
from bimix_jax.train import segments
from bimix_jax.train.loop import train_run
from tests.train_test import SPEC, _programs, synthetic_tokens

STEPS = 30
SPEC_ONLINE = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, steps=STEPS, checkpoint_every=5,
                                                                   eval_every=10, keep_checkpoints=10))
AIOLI = aioli.Aioli(aioli.AioliConfig(round_steps=20, sweeps=1, probe_steps=2, one_hot_factor=0.75, eta=1.0))
FEEDBACK = 200


def _files(workdir):
    out = {}
    for name in (run_log.LOSSES_FILE, segments.TRAJECTORY_FILE, segments.METHOD_FILE):
        with open(os.path.join(workdir, name), "rb") as f:
            out[name] = f.read()
    return out


@pytest.fixture(scope="module")
def aioli_run(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("aioli") / "w")
    return train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name="aioli", method=AIOLI,
                     feedback_tokens=FEEDBACK)


def test_schedule_trajectory_and_cumulative_shares(aioli_run):
    w = aioli_run.workdir
    traj = segments.read_trajectory(w)
    assert traj[0]["kind"] == "initial" and traj[0]["end"] == 0
    segs = traj[1:]
    assert [s["kind"] for s in segs] == ["probe"] * 3 + ["train"] + ["probe"] * 3 + ["train"]
    assert segs[0]["start"] == 0 and segs[-1]["end"] == STEPS
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
    for s in segs:  # The sampler realises each segment's mixture: rows per domain = floor/ceil of B r per step.
        rows, want = np.asarray(s["realized_rows"]), np.asarray(s["requested"]) * 8 * (s["end"] - s["start"])
        assert rows.sum() == 8 * (s["end"] - s["start"]) and np.all(np.abs(rows - want) <= s["end"] - s["start"])
        assert (s["feedback_losses"] is None) == (s["end"] == STEPS)
    summary = atomic.read_json(os.path.join(w, segments.METHOD_FILE))
    assert len(summary["rounds"]) == 2 and np.isclose(np.sum(summary["rounds"][0]["A"]), 1.0)
    assert np.isclose(sum(summary["final_proportions"]), 1.0)
    table = loss_table.read_csv(os.path.join(w, run_log.LOSSES_FILE))
    assert table.has_cumulative and table.cumulative.all()
    total = np.zeros(3)
    for s in segs:
        total += s["realized_rows"]
    last = table.p[table.step == STEPS][0]
    np.testing.assert_allclose(last, total / total.sum(), rtol=1e-6)
    assert not np.allclose(table.p[table.step == 10][0], last)  # The share changes: online rows are cumulative.


def test_new_proportions_never_recompile(aioli_run):
    assert _programs(SPEC_ONLINE).train_step._cache_size() == 1  # 8 segments, 4 distinct mixtures, 1 compile.


def test_resume_mid_probe_and_at_a_segment_boundary_is_bit_identical(aioli_run, tmp_path, monkeypatch):
    w = str(tmp_path / "w")
    settle = run_log.RunLog.settle

    def dying_at(kill):
        def fn(self, count, m):
            if count == kill:
                raise KeyboardInterrupt(f"killed at {count}")
            return settle(self, count, m)
        return fn

    # Step 8 resumes from the checkpoint at 5 (inside the probe of steps 4-6); step 22 from the one at 20
    # (the end of round 1's exploit segment, whose feedback must be measured again).
    for kill in (8, 22):
        monkeypatch.setattr(run_log.RunLog, "settle", dying_at(kill))
        with pytest.raises(KeyboardInterrupt):
            train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name="aioli", method=AIOLI,
                      feedback_tokens=FEEDBACK)
    monkeypatch.setattr(run_log.RunLog, "settle", settle)
    resumed = train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name="aioli", method=AIOLI,
                        feedback_tokens=FEEDBACK)
    assert resumed.resumed_from == 20
    assert _files(w) == _files(aioli_run.workdir)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state.params), jax.tree_util.tree_leaves(aioli_run.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name="aioli", method=AIOLI,
                      feedback_tokens=FEEDBACK)
    assert again.already_complete and again.method_summary == resumed.method_summary
    assert _files(w) == _files(aioli_run.workdir)  # A finished run's files are left as they are.


def test_doremi_proxy_and_refusals(tmp_path):
    ref = (3.0, 3.0, 3.0)
    method = doremi.DoReMi(ref, doremi.DoReMiConfig(update_every=7))
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, steps=20))
    res = train_run(spec, synthetic_tokens(), None, str(tmp_path / "d"), run_name="doremi", method=method,
                    feedback_tokens=FEEDBACK)
    avg = np.asarray(res.method_summary["final_proportions"])
    assert np.isclose(avg.sum(), 1) and len(res.method_summary["updates"]) == 2  # after steps 7 and 14
    with pytest.raises(InputError, match="online.feedback_tokens"):
        train_run(spec, synthetic_tokens(), None, str(tmp_path / "x"), run_name="x", method=method)
    with pytest.raises(InputError, match="online.feedback_tokens"):
        train_run(spec, synthetic_tokens(), None, str(tmp_path / "y"), run_name="y", method=method,
                  feedback_tokens=100_000)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
    # A static run's workdir cannot be continued as an online run.
    with pytest.raises(InputError, match="different run"):
        train_run(spec, synthetic_tokens(), None, res.workdir, run_name="doremi", method=AIOLI,
                  feedback_tokens=FEEDBACK)
