"""K runs in one vmapped step: equal to separate runs, same files, resume rules, SIGKILL, binary.

Data parallel with vmap is tested with the single-run case in `train_test.py` (one 8-device process)."""

import dataclasses
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bimix_jax import atomic, loss_table
from bimix_jax.errors import InputError
from bimix_jax.train.loop import _mesh, train_run
from bimix_jax.train.many import group_programs, train_many_from_config, train_runs
from configs import tiny
from train_test import SPEC, synthetic_tokens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSPEC = SPEC  # 20 steps, checkpoints and evals at 10 and 20 (the programs of train_test's runs are reused)
MIXES = np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [0.2, 0.3, 0.5]])
NAMES = ["a", "b", "c"]
SEEDS = [0, 1, 2]
# vmapped and separate runs differ only in float32 summation order. Measured here: validation losses <= 7.5e-8
# relative, parameters after 20 steps <= 8.5e-7 of each leaf's largest entry (tiny config, K=4, 100 steps: 1.4e-7).
LOSS_RTOL = 1e-5


def _group(root, vmap=True, **kwargs):
    return train_runs(GSPEC, synthetic_tokens(), MIXES, [os.path.join(root, n) for n in NAMES], run_names=NAMES,
                      seeds=SEEDS, vmap=vmap, **kwargs)


@pytest.fixture(scope="module")
def vmapped(tmp_path_factory):
    return _group(str(tmp_path_factory.mktemp("vmapped")))


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    return _group(str(tmp_path_factory.mktemp("separate")), vmap=False)


def _metrics(workdir):
    return atomic.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _leaves(workdir, step):
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_vmapped_runs_equal_separate_runs_and_files(vmapped, separate):
    assert [r.run_name for r in vmapped] == NAMES and not any(r.already_complete for r in vmapped)
    for g, s in zip(vmapped, separate):
        assert sorted(os.listdir(g.workdir)) == sorted(os.listdir(s.workdir)) == [
            "checkpoints", "config.json", "losses.csv", "metrics.jsonl"]
        assert atomic.read_json(os.path.join(g.workdir, "config.json")) == atomic.read_json(
            os.path.join(s.workdir, "config.json"))
        assert sorted(os.listdir(os.path.join(g.workdir, "checkpoints"))) == ["10", "20"]
        tg, ts = (loss_table.read_csv(os.path.join(r.workdir, "losses.csv")) for r in (g, s))
        for column in ("run", "step", "tokens", "eval_domain", "model_size", "p"):
            np.testing.assert_array_equal(getattr(tg, column), getattr(ts, column))
        assert len(tg) == 2 * 3  # evals at 10 and 20; three domains
        np.testing.assert_allclose(tg.loss, ts.loss, rtol=LOSS_RTOL)
        mg, ms = _metrics(g.workdir), _metrics(s.workdir)
        assert [r["step"] for r in mg] == [r["step"] for r in ms] == [5, 10, 15, 20]
        for rg, rs in zip(mg, ms):
            assert set(rg) == set(rs)
            assert {k: v for k, v in rg.items() if k.startswith("share_")} == {
                k: v for k, v in rs.items() if k.startswith("share_")}  # the same batches were drawn
            np.testing.assert_allclose([rg["train_loss"], rg["lr"]], [rs["train_loss"], rs["lr"]], rtol=LOSS_RTOL)
        assert g.final_losses == pytest.approx(s.final_losses, rel=LOSS_RTOL)
        assert g.realized_shares == s.realized_shares
        for a, b in zip(jax.tree_util.tree_leaves(g.state), jax.tree_util.tree_leaves(s.state), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    # Different seeds and mixtures give different runs; the zero-weight domain is never drawn.
    assert vmapped[0].final_losses != vmapped[1].final_losses
    assert vmapped[0].realized_shares["gamma"] == 0.0 and vmapped[1].realized_shares["alpha"] == 0.0


def test_group_compiles_once_and_is_resumable_by_train_run(vmapped):
    programs = group_programs(GSPEC.model.decoder(64, GSPEC.train.seq_len), GSPEC, _mesh(None, GSPEC), 3)
    assert programs.train_step._cache_size() == 1 and programs.eval._cache_size() == 1
    before = {r.run_name: open(os.path.join(r.workdir, "losses.csv")).read() for r in vmapped}
    again = _group(os.path.dirname(vmapped[0].workdir))
    assert all(r.already_complete and r.resumed_from == 20 for r in again)
    assert {r.run_name: open(os.path.join(r.workdir, "losses.csv")).read() for r in again} == before
    # Each run's workdir is an ordinary run: train_run recognises it as finished, with the group's state.
    spec_b = dataclasses.replace(GSPEC, train=dataclasses.replace(GSPEC.train, seed=1))
    alone = train_run(spec_b, synthetic_tokens(), MIXES[1], vmapped[1].workdir, run_name="b")
    assert alone.already_complete
    for a, b in zip(jax.tree_util.tree_leaves(alone.state), jax.tree_util.tree_leaves(vmapped[1].state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # compiles the group program for K=2 (several seconds on CPU)
def test_runs_that_finished_are_left_out_of_the_resumed_group(vmapped, tmp_path):
    root = str(tmp_path / "g")
    shutil.copytree(os.path.dirname(vmapped[0].workdir), root)
    # Run a lost its last checkpoint (resumes at 10), run b lost both (starts again), run c is complete.
    shutil.rmtree(os.path.join(root, "a", "checkpoints", "20"))
    for step in ("10", "20"):
        shutil.rmtree(os.path.join(root, "b", "checkpoints", step))
    got = _group(root)
    assert [r.resumed_from for r in got] == [10, None, 20]
    assert [r.already_complete for r in got] == [False, False, True]
    for old, new in zip(vmapped, got):
        t_old, t_new = (loss_table.read_csv(os.path.join(r.workdir, "losses.csv")) for r in (old, new))
        np.testing.assert_array_equal(t_new.step, t_old.step)  # no row lost or duplicated
        np.testing.assert_array_equal(t_new.eval_domain, t_old.eval_domain)
        # a and b now train as a group of two: the same numbers up to summation order.
        np.testing.assert_allclose(t_new.loss, t_old.loss, rtol=LOSS_RTOL)
        assert [r["step"] for r in _metrics(new.workdir)] == [5, 10, 15, 20]
        # Run a finished 10 iterations before b and was frozen meanwhile: its state is that of step 20.
        for x, y in zip(jax.tree_util.tree_leaves(new.state), jax.tree_util.tree_leaves(old.state)):
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6)
        assert sorted(os.listdir(os.path.join(new.workdir, "checkpoints"))) == ["10", "20"]


def test_bad_inputs_write_nothing(vmapped, tmp_path):
    tokens = synthetic_tokens()
    dirs = [str(tmp_path / n) for n in NAMES]
    cases = [
        (dict(proportions_KxD=np.array([MIXES[0], MIXES[1], [0.5, 0.6, 0.0]])), "mixture of run c"),
        (dict(proportions_KxD=np.array([MIXES[0], MIXES[1], [np.nan, 0.5, 0.5]])), "mixture of run c"),
        (dict(proportions_KxD=MIXES[:2]), "expected 3 rows"),
        (dict(run_names=["a", "b", "a"]), "run name 'a' is given twice"),
        (dict(workdirs=[dirs[0], dirs[1], dirs[0] + "/"]), "is given twice"),
        (dict(seeds=[0, 1]), "seeds has 2 entries for 3 workdirs"),
        (dict(seeds=[0, 1, 1.5]), "seed 1.5 is not an integer"),
        (dict(workdirs=[dirs[0], dirs[1], vmapped[0].workdir]), r"a holds a different run \(proportions.alpha"),
    ]
    for change, message in cases:
        args = {**dict(proportions_KxD=MIXES, workdirs=dirs, run_names=NAMES, seeds=SEEDS), **change}
        with pytest.raises(InputError, match=message):
            train_runs(GSPEC, tokens, args["proportions_KxD"], args["workdirs"], run_names=args["run_names"],
                       seeds=args["seeds"])
        assert not any(os.path.exists(d) for d in dirs), change


_KILLED_GROUP = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from train_many_test import GSPEC, MIXES, NAMES, SEEDS, synthetic_tokens
    from bimix_jax.train import log as run_log
    from bimix_jax.train.many import train_runs
    save = run_log.RunLog.save
    def save_then_die(log, count, state):  # SIGKILL once run a has saved step 10, before b and c save theirs
        save(log, count, state)
        if log.run_name == "a" and count == 10:
            log.ckpt.wait()
            os.kill(os.getpid(), signal.SIGKILL)
    run_log.RunLog.save = save_then_die
    train_runs(GSPEC, synthetic_tokens(), MIXES, [os.path.join(sys.argv[2], n) for n in NAMES], run_names=NAMES,
               seeds=SEEDS)
""")


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_sigkill_then_resume_is_bit_identical(vmapped, tmp_path):
    root = tmp_path / "killed"
    out = subprocess.run([sys.executable, "-c", _KILLED_GROUP, REPO, str(root)], cwd=REPO, capture_output=True,
                         text=True, timeout=240, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert [(root / n / "checkpoints" / "10").exists() for n in NAMES] == [True, False, False]
    assert all((root / n / "losses.csv").exists() for n in NAMES)  # step-10 rows of b and c: dropped on resume

    resumed = _group(str(root))  # the rerun (in this process, which has the group's program compiled)
    assert [r.resumed_from for r in resumed] == [10, None, None]
    for old in vmapped:  # the same group of three, uninterrupted
        new = root / old.run_name
        assert (new / "losses.csv").read_text() == open(os.path.join(old.workdir, "losses.csv")).read()
        strip = lambda records: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "data_wait_ms_per_step")} for r in records]  # noqa: E731
        assert strip(_metrics(new)) == strip(_metrics(old.workdir))
        assert filecmp.cmp(new / "config.json", os.path.join(old.workdir, "config.json"), shallow=False)
        for a, b in zip(_leaves(old.workdir, 20), _leaves(new, 20), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_from_config_checks_inputs_before_writing(tmp_path):
    config = tiny.get_config("runlocal")
    workdir = tmp_path / "sweep"
    with pytest.raises(InputError, match="no mixtures given"):
        train_many_from_config(config, str(workdir), [])
    with pytest.raises(InputError, match="--run_names has 1 names for 2 mixtures"):
        train_many_from_config(config, str(workdir), ["uniform", "natural"], run_names=["x"])
    with pytest.raises(InputError, match="run name 'data' cannot be a folder name"):
        train_many_from_config(config, str(workdir), ["uniform", "natural"], run_names=["x", "data"])
    with pytest.raises(InputError, match="mixture 1: domain 'cod' is not in the corpus"):
        train_many_from_config(config, str(workdir), ["uniform", "cod=1"])
    assert not workdir.exists()


def _binary(tmp_path, *flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR=str(tmp_path / "jax_cache"))
    cmd = [sys.executable, "-m", "experiments.train_many", "--config=configs/tiny.py:runlocal",
           f"--workdir={tmp_path / 'sweep'}", "--mixtures=uniform", "--mixtures=code=1", "--run_names=u,c", *flags]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)


def test_binary_bad_flag_is_one_line(tmp_path):
    out = _binary(tmp_path, "--seeds=0,x")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: --seeds=0,x: every seed must be an integer, e.g. --seeds=0,1,2"
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow  # prepares the corpus and compiles the runlocal group (about 10 s)
def test_binary_trains_runs_in_their_folders(tmp_path):
    workdir = tmp_path / "sweep"
    out = _binary(tmp_path, "--seeds=0,1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("finished at step 20") == 2
    assert sorted(os.listdir(workdir)) == ["c", "data", "u"]
    table = loss_table.read_csv(workdir / "c" / "losses.csv")
    assert set(table.run) == {"c"} and np.all(table.p[:, table.domains.index("code")] == 1.0)
    config = atomic.read_json(workdir / "u" / "config.json")
    assert config["spec"]["train"]["seed"] == 0 and config["config"]["mixture"] == "uniform"
    out = _binary(tmp_path, "--seeds=0,1")  # rerun: nothing to do
    assert out.returncode == 0 and out.stdout.count("was already complete at step 20") == 2, out.stderr[-3000:]
