import os

import numpy as np
import pytest

from bimix_jax import loss_table as lt
from bimix_jax.errors import InputError


def _row(run="a", step=1, eval_domain="x", loss=2.0, px=0.5, py=0.5, **kw):
    return dict(run=run, step=step, eval_domain=eval_domain, loss=loss, p_x=px, p_y=py, **kw)


def test_reads_real_table_and_roundtrips_exactly(pile3_path, tmp_path):
    table = lt.read_csv(pile3_path)
    assert table.domains == ("github", "books3", "pile_cc")
    assert set(table.model_sizes) == {"70M", "160M", "410M"}
    t160 = table.for_model_size("160M")
    assert set(t160.model_size) == {"160M"} and len(t160.runs) == 6
    out = tmp_path / "t.csv"
    lt.write_csv(out, t160)
    back = lt.read_csv(out)
    np.testing.assert_array_equal(back.loss, t160.loss)  # repr() floats: bit-exact
    np.testing.assert_array_equal(back.p, t160.p)
    np.testing.assert_array_equal(back.step, t160.step)
    assert list(back.run) == list(t160.run)


def test_mixtures_and_eval_domain_order():
    table = lt.from_rows([_row(eval_domain="z"), _row(eval_domain="y"), _row(run="b", px=1.0, py=0.0)])
    assert table.eval_domains == ("x", "y", "z")  # training domains first, in column order
    np.testing.assert_array_equal(table.mixtures()["b"], [1.0, 0.0])


@pytest.mark.parametrize(
    "bad, needle",
    [
        (_row(step=0), "step"),
        (_row(step=-3), "step"),
        (_row(loss="abc"), "'loss' holds 'abc'"),
        (_row(loss=0.0), "loss"),
        (_row(loss="nan"), "loss"),
        (_row(px=0.7), "sum to"),
        (_row(px=-0.5, py=1.5), "p_x"),
        (_row(run=""), "run"),
        (_row(eval_domain=""), "eval_domain"),
    ],
)
def test_bad_rows_are_one_line_errors(bad, needle):
    with pytest.raises(InputError, match=needle) as err:
        lt.from_rows([bad])
    assert "\n" not in str(err.value)


def test_run_with_changing_proportions_is_rejected():
    with pytest.raises(InputError, match="run 'a'.*change between rows"):
        lt.from_rows([_row(), _row(step=2, px=0.4, py=0.6)])


def test_duplicate_measurement_is_rejected():
    with pytest.raises(InputError, match="duplicate measurement"):
        lt.from_rows([_row(), _row(loss=3.0)])


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("run,step,eval_domain,p_x\na,1,x,1\n")
    with pytest.raises(InputError, match="missing column 'loss'"):
        lt.read_csv(path)
    path.write_text("run,step,eval_domain,loss\na,1,x,2\n")
    with pytest.raises(InputError, match="no p_<domain>"):
        lt.read_csv(path)


def test_ragged_row_names_its_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("run,step,eval_domain,loss,p_x\na,1,x,2,1\na,2,x\n")
    with pytest.raises(InputError, match="line 3"):
        lt.read_csv(path)


def test_append_replaces_same_key_and_never_duplicates(tmp_path):
    path = tmp_path / "t.csv"
    lt.append_rows(path, [_row(), _row(eval_domain="y")])
    lt.append_rows(path, [_row(), _row(eval_domain="y")])  # The same evaluation, re-run after a resume.
    assert len(lt.read_csv(path)) == 2
    lt.append_rows(path, [_row(step=2, loss=1.5)])
    table = lt.read_csv(path)
    assert len(table) == 3 and sorted(table.step.tolist()) == [1, 1, 2]


def test_append_refuses_other_domains(tmp_path):
    path = tmp_path / "t.csv"
    lt.append_rows(path, [_row()])
    with pytest.raises(InputError, match="another table"):
        lt.append_rows(path, [dict(run="b", step=1, eval_domain="x", loss=1.0, p_x=1.0)])


def test_drop_rows_after(tmp_path):
    path = tmp_path / "t.csv"
    lt.append_rows(path, [_row(step=s) for s in (1, 2, 3)] + [_row(run="b", step=3)])
    lt.drop_rows_after(path, "a", 2)
    table = lt.read_csv(path)
    assert sorted(zip(table.run.tolist(), table.step.tolist())) == [("a", 1), ("a", 2), ("b", 3)]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    lt.append_rows(path, [_row()])
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(InputError, match="No space left"):
        lt.append_rows(path, [_row(step=2)])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # No temporary file left behind.


@pytest.mark.parametrize("text, value", [("70M", 7e7), ("1.3B", 1.3e9), ("410000000", 4.1e8), ("2k", 2e3)])
def test_parse_model_size(text, value):
    assert lt.parse_model_size(text) == pytest.approx(value)


def test_parse_model_size_rejects_garbage():
    with pytest.raises(InputError, match="model_size"):
        lt.parse_model_size("big")


def test_rounded_proportions_need_normalize(tmp_path):
    path = tmp_path / "rounded.csv"
    path.write_text("run,step,p_x,p_y,eval_domain,loss\na,1,0.333,0.666,x,2.0\nb,1,0.5,0.5,x,2.1\n")
    with pytest.raises(InputError, match=r"line 2 \(run 'a'\): proportions sum to 0.999, .*--normalize"):
        lt.read_csv(path)
    table = lt.read_csv(path, normalize=True)
    np.testing.assert_allclose(table.mixtures()["a"], [1 / 3, 2 / 3])
    np.testing.assert_array_equal(table.mixtures()["b"], [0.5, 0.5])  # already summing to 1: untouched
