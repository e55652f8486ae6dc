"""The trainer: train step, per-domain eval, loss table and metrics, resume rules, data parallelism."""

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bimix_jax import atomic, loss_table
from bimix_jax.data import sampler
from bimix_jax.data.tokens import DomainTokens
from bimix_jax.errors import InputError
from bimix_jax.train.evaluate import build_eval_set
from bimix_jax.model import token_losses
from bimix_jax.train import hosts
from bimix_jax.train.loop import _mesh, compiled_programs, train_run
from bimix_jax.train.state import ModelSpec, OptimSpec, RunSpec, TrainSpec, lr_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 64


def synthetic_tokens(seed: int = 0) -> DomainTokens:
    """Three domains with different periodic structure (learnable quickly), plus noise."""
    rng = np.random.default_rng(seed)

    def buf(n, period, offset):
        return ((np.arange(n) % period) * 3 + offset + rng.integers(0, 2, n)).astype(np.int32) % V

    periods = {"alpha": (7, 1), "beta": (11, 2), "gamma": (5, 3)}
    train = {d: buf(3000 + 1000 * i, *p) for i, (d, p) in enumerate(periods.items())}
    val = {d: buf(300, *p) for d, p in periods.items()}
    return DomainTokens(domains=tuple(periods), train=train, val=val, vocab_size=V, eos_id=0)


SPEC = RunSpec(ModelSpec(D=32, H=4, L=2, F=64), OptimSpec(lr=3e-3, warmup_steps=2),
               TrainSpec(steps=20, batch_size=8, seq_len=32, eval_every=10, eval_tokens=200, eval_batch_size=8,
                         checkpoint_every=10, log_every=5))
MIX = np.array([0.5, 0.5, 0.0])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    return train_run(SPEC, synthetic_tokens(), MIX, workdir, run_name="r1")


def test_another_mixture_and_seed_reuse_the_compiled_step(finished, tmp_path):
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, seed=1, eval_every=5, log_every=2))
    programs = _programs()
    # Other tests in the session may have compiled these functions for other shapes: count what this run adds.
    before = programs.train_step._cache_size(), programs.eval._cache_size()
    other = train_run(spec, synthetic_tokens(), np.array([0.0, 0.25, 0.75]), str(tmp_path / "w"), run_name="r2")
    assert before[0] >= 1 and before[1] >= 1  # the `finished` run compiled them
    # Another mixture, seed and eval schedule: no new compilation.
    assert (programs.train_step._cache_size(), programs.eval._cache_size()) == before
    assert other.realized_shares["alpha"] == 0.0 and other.realized_shares["gamma"] == pytest.approx(0.75, abs=0.05)
    # The model learns: training loss falls well below its start (log V = 4.16 nats).
    for run in (finished, other):
        records = atomic.read_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
        assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]


def _programs(spec=SPEC):
    """The run's jitted functions, shared with the `finished` run (no recompilation)."""
    return compiled_programs(spec.model.decoder(V, spec.train.seq_len), spec, _mesh(None, spec), 3)


def test_eval_matches_direct_per_domain_means(finished):
    tokens = synthetic_tokens()
    cfg, t = SPEC.model.decoder(V, SPEC.train.seq_len), SPEC.train
    params = finished.state.params
    eval_set = build_eval_set(tokens, seq_len=t.seq_len, eval_tokens=t.eval_tokens, batch_size=t.eval_batch_size)
    assert eval_set.w_NxBxL.sum() == 3 * t.eval_tokens  # every target once; padding masked
    got = np.asarray(_programs().eval(params, jax.device_put(eval_set, _programs().eval_sharding)))
    losses = jax.jit(token_losses, static_argnums=0)
    for i, d in enumerate(tokens.domains):
        val = tokens.val[d][: t.eval_tokens + 1]
        total = 0.0
        for start in range(0, t.eval_tokens, t.seq_len):  # windows share one token: every target once
            window = jnp.asarray(val[start:start + t.seq_len + 1])[None]
            total += float(jnp.sum(losses(cfg, params, window)))
        np.testing.assert_allclose(got[i], total / t.eval_tokens, rtol=1e-5)
        assert got[i] == pytest.approx(finished.final_losses[d], rel=1e-6)


def test_lr_schedules():
    o = OptimSpec(lr=1.0, warmup_steps=10, schedule="exponential", final_lr_fraction=0.1)
    f = lr_schedule(o, 110)
    np.testing.assert_allclose([f(0), f(5), f(10), f(60), f(110)], [0, 0.5, 1, 10 ** -0.5, 0.1], rtol=1e-5)
    f = lr_schedule(dataclasses.replace(o, schedule="cosine"), 110)
    np.testing.assert_allclose([f(10), f(60), f(110)], [1, 0.55, 0.1], rtol=1e-5)


def test_loss_table_rows_and_metrics(finished):
    w = finished.workdir
    table = loss_table.read_csv(os.path.join(w, "losses.csv"))
    assert table.domains == ("alpha", "beta", "gamma")
    assert len(table) == 2 * 3  # evals at steps 10 and 20, three domains each
    assert set(table.step) == {10, 20}
    np.testing.assert_array_equal(np.unique(table.tokens), [10 * 8 * 32, 20 * 8 * 32])
    np.testing.assert_allclose(table.p, np.tile(MIX, (6, 1)))
    assert set(table.model_size) == {finished.model_size} and finished.model_size.endswith("K")
    last = {e: x for e, x, s in zip(table.eval_domain, table.loss, table.step) if s == 20}
    assert last == pytest.approx(finished.final_losses)
    first = {e: x for e, x, s in zip(table.eval_domain, table.loss, table.step) if s == 10}
    assert last["alpha"] < first["alpha"] and last["beta"] < first["beta"]
    # gamma has weight 0: never sampled, and the realized shares show it.
    assert finished.realized_shares["gamma"] == 0.0
    assert finished.realized_shares["alpha"] == pytest.approx(0.5, abs=0.05)
    records = atomic.read_jsonl(os.path.join(w, "metrics.jsonl"))
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    for r in records:
        assert {"train_loss", "lr", "tokens_per_s", "share_alpha", "share_gamma"} <= set(r)
        assert np.isfinite(r["train_loss"]) and r["share_gamma"] == 0
    assert atomic.read_json(os.path.join(w, "config.json"))["proportions"] == {"alpha": 0.5, "beta": 0.5, "gamma": 0.0}


def test_finished_run_is_not_retrained(finished):
    before = open(os.path.join(finished.workdir, "losses.csv")).read()
    again = train_run(SPEC, synthetic_tokens(), MIX, finished.workdir, run_name="r1")
    assert again.already_complete and again.resumed_from == 20
    assert open(os.path.join(finished.workdir, "losses.csv")).read() == before
    for a, b in zip(jax.tree_util.tree_leaves(finished.state), jax.tree_util.tree_leaves(again.state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change, field", [
    (dict(spec=dataclasses.replace(SPEC, optim=dataclasses.replace(SPEC.optim, lr=1e-3))), "spec.optim.lr"),
    (dict(proportions_D=np.array([0.4, 0.6, 0.0])), "proportions.alpha"),
    (dict(tokens=synthetic_tokens(seed=1)), "data_fingerprint"),
    (dict(run_name="other"), "run_name"),
])
def test_workdir_with_another_run_is_refused(finished, change, field):
    args = {**dict(spec=SPEC, tokens=synthetic_tokens(), proportions_D=MIX, run_name="r1"), **change}
    with pytest.raises(InputError, match=f"holds a different run \\({field}"):
        train_run(args["spec"], args["tokens"], args["proportions_D"], finished.workdir, run_name=args["run_name"])


def test_corrupted_checkpoint_falls_back_to_the_previous_verified_one(finished, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(finished.workdir, workdir)
    state_dir = os.path.join(workdir, "checkpoints", "20", "state")
    for root, _, files in os.walk(state_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    again = train_run(SPEC, synthetic_tokens(), MIX, workdir, run_name="r1")  # checkpoint 20 fails its SHA-256
    assert again.resumed_from == 10 and not again.already_complete
    assert os.path.isdir(os.path.join(workdir, "checkpoints_unverified", "20"))
    assert open(os.path.join(workdir, "losses.csv")).read() == open(os.path.join(finished.workdir, "losses.csv")).read()
    for a, b in zip(jax.tree_util.tree_leaves(again.state.params), jax.tree_util.tree_leaves(finished.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_inputs_write_nothing(tmp_path):
    workdir = str(tmp_path / "w")
    with pytest.raises(InputError, match="'gamma'.*seq_len"):
        short = synthetic_tokens()
        short.train["gamma"] = short.train["gamma"][:20]
        train_run(SPEC, short, MIX, workdir, run_name="r")
    with pytest.raises(InputError, match="summing to 1"):
        train_run(SPEC, synthetic_tokens(), np.array([0.5, 0.6, 0.0]), workdir, run_name="r")
    with pytest.raises(InputError, match="microbatches"):
        RunSpec(SPEC.model, SPEC.optim, dataclasses.replace(SPEC.train, microbatches=3))
    assert not os.path.exists(workdir)


def test_diverging_loss_stops_with_a_clear_error(tmp_path):
    spec = RunSpec(SPEC.model, OptimSpec(lr=1e9, grad_clip=0.0, schedule="constant"), SPEC.train)
    with pytest.raises(InputError, match="train loss is (nan|inf) at step .*optim.lr"):
        train_run(spec, synthetic_tokens(), MIX, str(tmp_path / "w"), run_name="r")


def test_microbatches_match_one_big_batch(finished):
    repl = _programs().abstract_state.rows_D.sharding  # place inputs as `train_run` does: no recompilation
    compiled_before = _programs().train_step._cache_size()
    data = hosts.place(sampler.train_buffers(synthetic_tokens(), SPEC.train.seq_len), repl)
    r_D = hosts.place(np.asarray(MIX, np.float32), repl)
    key = jax.random.wrap_key_data(hosts.place(jax.random.key_data(jax.random.key(1)), repl))
    sliced_spec = dataclasses.replace(SPEC, train=dataclasses.replace(SPEC.train, microbatches=2))
    whole = _programs().train_step(_programs().init(jax.random.key(0)), data, key, 0, r_D)[0]
    sliced = _programs(sliced_spec).train_step(_programs().init(jax.random.key(0)), data, key, 0, r_D)[0]
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(sliced)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert compiled_before >= 1 and _programs().train_step._cache_size() == compiled_before


_DATA_PARALLEL = textwrap.dedent("""
    import os, sys
    import jax, numpy as np
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from train_test import SPEC, MIX, synthetic_tokens
    from bimix_jax.train.loop import train_run
    from bimix_jax.train.many import train_runs
    assert len(jax.devices()) == 8, jax.devices()
    run = train_run(SPEC, synthetic_tokens(), MIX, os.path.join(sys.argv[2], "eight"), run_name="r1")
    def whole_on_8(state):  # Every leaf is below 2^18 elements: each of the 8 devices holds all of it.
        return all(len(x.addressable_shards) == 8 and all(s.data.shape == x.shape for s in x.addressable_shards)
                   for x in jax.tree_util.tree_leaves(state))
    assert len(run.state.params["embed"]["embedding"].sharding.device_set) == 8 and whole_on_8(run.state)
    np.savez(os.path.join(sys.argv[2], "state.npz"), *map(np.asarray, jax.tree_util.tree_leaves(run.state)))
    # Two runs in one vmapped step, each run's batch rows sharded over the 8 devices; run r1 is the run above.
    group = train_runs(SPEC, synthetic_tokens(), np.array([MIX, [0.0, 0.25, 0.75]]),
                       [os.path.join(sys.argv[2], "group", n) for n in ("r1", "r2")], run_names=["r1", "r2"],
                       seeds=[0, 1])
    assert len(group[0].state.params["embed"]["embedding"].sharding.device_set) == 8 and whole_on_8(group[0].state)
    np.savez(os.path.join(sys.argv[2], "group.npz"), *map(np.asarray, jax.tree_util.tree_leaves(group[0].state)))
""")


def test_eight_devices_match_one_device(finished, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _DATA_PARALLEL, REPO, str(tmp_path)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(tmp_path / "state.npz") as z:
        eight = [z[f"arr_{i}"] for i in range(len(z.files))]
    one = jax.tree_util.tree_leaves(finished.state)
    assert len(one) == len(eight)
    for a, b in zip(one, eight):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=2e-6)
    one_losses = loss_table.read_csv(os.path.join(finished.workdir, "losses.csv")).loss
    np.testing.assert_allclose(loss_table.read_csv(tmp_path / "eight" / "losses.csv").loss, one_losses, rtol=1e-5)
    # Data parallel with vmap: the group's run r1 on 8 devices matches r1 trained alone on one device.
    with np.load(tmp_path / "group.npz") as z:
        grouped = [z[f"arr_{i}"] for i in range(len(z.files))]
    for a, b in zip(one, grouped, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(loss_table.read_csv(tmp_path / "group" / "r1" / "losses.csv").loss, one_losses,
                               rtol=1e-5)
