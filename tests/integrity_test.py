"""Checkpoint checksums (fallback to the latest verified step), loss-table plausibility, lost loss tables."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bimix_jax import loss_table
from bimix_jax.loss_table import plausibility
from bimix_jax.errors import InputError
from bimix_jax.train import manifest
from bimix_jax.train.checkpoint import UNVERIFIED_DIR, Checkpointer
from bimix_jax.train.log import RunLog
from bimix_jax.train.state import ModelSpec, OptimSpec, RunSpec, TrainSpec, TrainState


def _state(seed: int) -> TrainState:
    params = {"w": jax.random.normal(jax.random.key(seed), (64, 8)), "b": jnp.arange(8.0) + seed}
    opt = optax.adam(1e-3)
    return TrainState(params, opt.init(params), jnp.array([seed, 1], jnp.int32))


def _abstract(state):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _largest_file(folder):
    files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f != manifest.MANIFEST]
    return max(files, key=os.path.getsize)


def _flip_bit(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


@pytest.fixture
def saved(tmp_path):
    directory = str(tmp_path / "checkpoints")
    ckpt = Checkpointer(directory, keep=3)
    for s in (10, 20, 30):
        ckpt.save(s, _state(s), {"step": s})
    ckpt.close()
    return directory


@pytest.mark.parametrize("damage", ["flip_first", "flip_middle", "flip_last", "truncate", "delete_file",
                                    "delete_manifest", "extra_file"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_verified_one(saved, damage, caplog):
    folder = os.path.join(saved, "30")
    assert manifest.verify(folder) is None
    big = _largest_file(folder)
    size = os.path.getsize(big)
    if damage.startswith("flip"):
        _flip_bit(big, {"flip_first": 0, "flip_middle": size // 2, "flip_last": size - 1}[damage])
    elif damage == "truncate":
        with open(big, "r+b") as f:
            f.truncate(size - 7)
    elif damage == "delete_file":
        os.remove(big)
    elif damage == "delete_manifest":
        os.remove(os.path.join(folder, manifest.MANIFEST))
    else:
        open(os.path.join(folder, "stray"), "w").write("x")
    assert manifest.verify(folder) is not None
    ckpt = Checkpointer(saved, keep=3)
    assert ckpt.latest_step() == 20 and ckpt.all_steps() == [10, 20]
    restored, meta = ckpt.restore(20, _abstract(_state(20)))
    ckpt.close()
    assert meta["step"] == 20
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(_state(20))):
        np.testing.assert_array_equal(a, b)
    assert os.path.isdir(os.path.join(os.path.dirname(saved), UNVERIFIED_DIR, "30"))
    assert any("checkpoint" in r.message and "cannot be trusted" in r.message for r in caplog.records)


def test_restore_of_a_step_damaged_after_opening_is_refused(saved):
    ckpt = Checkpointer(saved, keep=3)
    _flip_bit(_largest_file(os.path.join(saved, "20")), 3)
    with pytest.raises(InputError, match=r"checkpoint .*/20 is corrupted or unreadable .*SHA-256"):
        ckpt.restore(20, _abstract(_state(20)))
    ckpt.close()


def test_every_checkpoint_damaged_starts_fresh_with_a_warning(saved, caplog):
    for s in (10, 20, 30):
        _flip_bit(_largest_file(os.path.join(saved, str(s))), 0)
    ckpt = Checkpointer(saved, keep=3)
    assert ckpt.latest_step() is None
    ckpt.close()
    assert any("no verified checkpoint is left" in r.message for r in caplog.records)


def _rows(loss_at=None, value=None):
    rows = []
    for s in (10, 20, 30, 40, 50, 60):
        loss = 3.0 + 10.0 / s
        if s == loss_at:
            loss = value
        rows.append({"run": "r", "step": s, "p_a": 0.5, "p_b": 0.5, "eval_domain": "a", "loss": loss})
    return rows


def test_plausibility_refuses_absurd_values_and_warns_on_outliers():
    assert plausibility.check(loss_table.from_rows(_rows()), warn=False) == []
    with pytest.raises(InputError, match=r"row 2 \(run 'r'\): loss 1e\+300 is implausible"):
        plausibility.check(loss_table.from_rows(_rows(30, 1e300)))
    warned = plausibility.check(loss_table.from_rows(_rows(40, 9.5)), warn=False)  # 3x its neighbours
    assert len(warned) == 1 and "step 40" in warned[0] and "outlier" in warned[0]
    warned = plausibility.check(loss_table.from_rows(_rows(60, 0.9)), warn=False)  # a dropped digit at the end
    assert len(warned) == 1 and "step 60" in warned[0]
    assert plausibility.check(loss_table.from_rows(_rows(40, 3.6)), warn=False) == []  # within the curve's range


def test_read_csv_names_the_line_of_an_absurd_step(tmp_path):
    path = tmp_path / "t.csv"
    rows = _rows()
    rows[4]["step"] = 1e300
    loss_table.write_csv(path, loss_table.from_rows(_rows()))
    text = path.read_text().splitlines()
    text[5] = text[5].replace("50,", "1e300,", 1)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"line 6 .*step 1e\+300 is implausible"):
        loss_table.read_csv(path)
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(text[:1] + text[1:5]).encode() + b"\n")  # BOM: read normally
    assert len(loss_table.read_csv(path)) == 4


def test_a_checkpointed_run_whose_loss_table_is_lost_is_refused(tmp_path):
    spec = RunSpec(ModelSpec(), OptimSpec(), TrainSpec(steps=40, eval_every=10))
    log = RunLog(spec, ("a", "b"), str(tmp_path), run_name="r", model_size="1K", proportions_D=np.array([0.5, 0.5]),
                 fingerprint="f", writer=True)
    try:
        for s in (10, 20, 30, 40):
            log.eval(s, np.array([3.0, 4.0]))
        log.forget_after(40)  # the table holds every evaluation: fine
        os.remove(tmp_path / "losses.csv")
        with pytest.raises(InputError, match=r"run r: .*losses.csv lacks the evaluations of steps \[10, 20, 30\]"):
            log.forget_after(40)
        log.forget_after(0)  # a fresh start needs no rows
    finally:
        log.close()


def test_a_failing_save_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", full)
    with pytest.raises(InputError, match=r"cannot save checkpoint .*checkpoints/10 \(OSError: .*No space left.*"
                                         r"free disk space .* rerun the same command") as e:
        ckpt.save(10, _state(10), {"step": 10})
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    ckpt.close()
