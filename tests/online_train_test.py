"""Online mixing methods inside the trainer: segments, feedback, trajectory, resume mid-probe, no recompiles."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from bimix_jax import atomic, loss_table
from bimix_jax.errors import InputError
from bimix_jax.online import aioli, bimix_online, doremi
from bimix_jax.pipeline.compare_doremi import TokenExcessDoReMi, token_losses_on
from bimix_jax.train import inputs
from bimix_jax.train import log as run_log
from bimix_jax.train import segments
from bimix_jax.train.evaluate import build_eval_set
from bimix_jax.train.loop import train_run
from tests.train_test import SPEC, V, _programs, synthetic_tokens

STEPS = 30
SPEC_ONLINE = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, steps=STEPS, checkpoint_every=5,
                                                                   eval_every=10, keep_checkpoints=10))
AIOLI = aioli.Aioli(aioli.AioliConfig(round_steps=20, sweeps=1, probe_steps=2, one_hot_factor=0.75, eta=1.0))
ONLINE_BIMIX = bimix_online.OnlineBiMix(bimix_online.OnlineBiMixConfig(round_steps=15, explore_steps=2, tilt=0.6,
                                                                       min_step=1))
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


def _kill_and_resume(method, reference, tmp_path, monkeypatch, kills):
    """Kills a run at each step of `kills` (after its checkpoint) and resumes; the result must equal `reference`."""
    w = str(tmp_path / "w")
    settle = run_log.RunLog.settle

    def dying_at(kill):
        def fn(self, count, m):
            if count == kill:
                raise KeyboardInterrupt(f"killed at {count}")
            return settle(self, count, m)
        return fn

    for kill in kills:
        monkeypatch.setattr(run_log.RunLog, "settle", dying_at(kill))
        with pytest.raises(KeyboardInterrupt):
            train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name=method.name, method=method,
                      feedback_tokens=FEEDBACK)
    monkeypatch.setattr(run_log.RunLog, "settle", settle)
    resumed = train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name=method.name, method=method,
                        feedback_tokens=FEEDBACK)
    assert _files(w) == _files(reference.workdir)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state.params), jax.tree_util.tree_leaves(reference.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = train_run(SPEC_ONLINE, synthetic_tokens(), None, w, run_name=method.name, method=method,
                      feedback_tokens=FEEDBACK)
    assert again.already_complete and again.method_summary == resumed.method_summary
    assert _files(w) == _files(reference.workdir)  # A finished run's files are left as they are.
    return resumed


def test_resume_mid_probe_and_at_a_segment_boundary_is_bit_identical(aioli_run, tmp_path, monkeypatch):
    # Step 8 resumes from the checkpoint at 5 (inside the probe of steps 4-6); step 22 from the one at 20
    # (the end of round 1's exploit segment, whose feedback must be measured again).
    resumed = _kill_and_resume(AIOLI, aioli_run, tmp_path, monkeypatch, (8, 22))
    assert resumed.resumed_from == 20


def test_online_bimix_resumes_bit_identically(tmp_path, monkeypatch):
    ref = train_run(SPEC_ONLINE, synthetic_tokens(), None, str(tmp_path / "ref"), run_name=ONLINE_BIMIX.name,
                    method=ONLINE_BIMIX, feedback_tokens=FEEDBACK)
    summary = ref.method_summary
    # Round 1: 3 exploration segments and the exploit, each with feedback, then the refit; round 2 explores 3 times
    # and its exploit ends the run (no feedback).
    assert [f["round"] for f in summary["fits"]] == [1] and len(summary["history"]) == 1 + 4 + 3
    traj = segments.read_trajectory(ref.workdir)
    assert [r["kind"] for r in traj] == ["initial"] + (["probe"] * 3 + ["train"]) * 2
    # Step 8 resumes from the checkpoint at 5 (inside an exploration segment); step 17 from the one at 15 (the end
    # of round 1, whose feedback and refit must be done again).
    resumed = _kill_and_resume(ONLINE_BIMIX, ref, tmp_path, monkeypatch, (8, 17))
    assert resumed.resumed_from == 15


def test_feedback_comes_from_the_selection_split():
    tokens = synthetic_tokens()
    select = {d: ((np.arange(400) * 7) % V).astype(np.int32) for d in tokens.domains}
    with_select = dataclasses.replace(tokens, select=select)
    t = SPEC.train
    inp = inputs.MemoryInput(with_select, t, feedback_tokens=150)
    assert all(inp.tokens.train[d] is tokens.train[d] for d in tokens.domains)  # nothing carved off training
    want = build_eval_set(dataclasses.replace(tokens, val=select), seq_len=t.seq_len, eval_tokens=150,
                          batch_size=t.eval_batch_size)
    for a, b in zip(inp.feedback_set(t), want):
        np.testing.assert_array_equal(a, b)
    carved = inputs.MemoryInput(tokens, t, feedback_tokens=150)  # without a selection split: carved off training
    assert all(carved.tokens.train[d].size == tokens.train[d].size - 151 for d in tokens.domains)
    with pytest.raises(InputError, match="selection tokens"):
        inputs.MemoryInput(with_select, t, feedback_tokens=400)


def test_doremi_proxy_measures_the_per_token_excess(aioli_run, tmp_path):
    tokens, t = synthetic_tokens(), SPEC.train
    cfg = SPEC.model.decoder(V, t.seq_len)
    feedback = inputs.MemoryInput(tokens, t, feedback_tokens=FEEDBACK).feedback_set(t)
    ref = token_losses_on(cfg, aioli_run.state.params, feedback)
    method = TokenExcessDoReMi.make(doremi.DoReMiConfig(update_every=7), cfg, feedback, ref)
    # The JAX measurement equals the numpy rule (clip per token, then average per domain).
    own = token_losses_on(cfg, _programs().init(jax.random.key(3)).params, feedback)
    want = doremi.token_excess(own.ravel(), ref.ravel(), feedback.w_NxBxL.ravel(),
                               np.repeat(feedback.domain_NxB.ravel(), t.seq_len), 3)
    np.testing.assert_allclose(method.feedback(_programs().init(jax.random.key(3)).params), want, rtol=1e-5)
    np.testing.assert_allclose(method.feedback(aioli_run.state.params), 0.0, atol=1e-7)  # against itself
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, steps=20))
    res = train_run(spec, tokens, None, str(tmp_path / "d"), run_name="doremi", method=method,
                    feedback_tokens=FEEDBACK)
    avg = np.asarray(res.method_summary["final_proportions"])
    updates = res.method_summary["updates"]
    assert np.isclose(avg.sum(), 1) and [(u["step"], u["steps"]) for u in updates] == [(7, 7), (14, 7)]
    traj = segments.read_trajectory(res.workdir)
    assert [r["feedback_losses"] for r in traj[1:3]] == [u["excess"] for u in updates]  # what observe got
    assert min(min(u["excess"]) for u in updates) >= 0


def test_online_refusals(tmp_path):
    method = ONLINE_BIMIX
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, steps=20))
    with pytest.raises(InputError, match="online.feedback_tokens"):
        train_run(spec, synthetic_tokens(), None, str(tmp_path / "x"), run_name="x", method=method)
    with pytest.raises(InputError, match="online.feedback_tokens"):
        train_run(spec, synthetic_tokens(), None, str(tmp_path / "y"), run_name="y", method=method,
                  feedback_tokens=100_000)
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
    static = train_run(spec, synthetic_tokens(), np.array([0.5, 0.5, 0.0]), str(tmp_path / "s"), run_name="s")
    with pytest.raises(InputError, match="different run"):  # A static run's workdir cannot continue as an online run.
        train_run(spec, synthetic_tokens(), None, static.workdir, run_name="s", method=AIOLI,
                  feedback_tokens=FEEDBACK)
