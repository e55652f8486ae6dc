"""Transfer across scale: rank agreement of the same mixtures at two sizes, its p-value, the proxy-size note,
and the RegMix split protocol of compare_laws (per-domain Spearman)."""

import numpy as np
import pytest

from bimix_jax import loss_table
from bimix_jax.errors import InputError
from bimix_jax.laws import select, transfer


def _table(order_large):
    """Four mixtures at 10M and 100M; the 100M losses rank the mixtures as `order_large` says."""
    rows = []
    mixes = [(0.1, 0.9), (0.3, 0.7), (0.6, 0.4), (0.8, 0.2)]
    for size, scale in (("10M", 1.0), ("100M", 0.8)):
        for k, (a, b) in enumerate(mixes):
            rank = k if size == "10M" else order_large[k]
            for e in ("a", "b"):
                rows.append({"run": f"{size}_{k}", "model_size": size, "step": 1000, "p_a": a, "p_b": b,
                             "eval_domain": e, "loss": scale * (3.0 + 0.1 * rank + (0.05 if e == "b" else 0))})
    return loss_table.from_rows(rows)


def test_same_ranking_transfers_and_reversed_does_not():
    same = transfer.transfer(_table([0, 1, 2, 3]), n_boot=50)["pairs"][0]
    assert (same["small"], same["large"], same["mixtures"]) == ("10M", "100M", 4)
    assert same["mean_loss"]["spearman"] == pytest.approx(1.0)
    assert same["per_domain"]["a"]["p_value"] == pytest.approx(1 / 24)  # exact: one of 4! orderings
    rev = transfer.transfer(_table([3, 2, 1, 0]), n_boot=50)["pairs"][0]
    assert rev["mean_loss"]["spearman"] == pytest.approx(-1.0) and rev["mean_loss"]["p_value"] == pytest.approx(1.0)
    assert "10M -> 100M" in transfer.markdown({"pairs": [same]})


def test_transfer_needs_two_sizes_with_common_mixtures():
    one = _table([0, 1, 2, 3])
    with pytest.raises(InputError, match="two sizes"):
        transfer.transfer(one.for_model_size("10M"))
    with pytest.raises(InputError, match="share fewer than"):
        transfer.pair(one, "10M", "100M", step=5.0)


def test_proxy_note_warns_below_the_published_size():
    assert transfer.proxy_note("1M")["below_reliable"] and "1M" not in transfer.proxy_note("1M")["text"][:10]
    assert not transfer.proxy_note("160M")["below_reliable"]
    assert transfer.proxy_note(2.0e7)["proxy_params"] == 2.0e7


def test_real_runs_rank_alike_from_160m_to_410m(pile3_path):
    res = transfer.transfer(loss_table.read_csv(pile3_path), n_boot=50)
    p = next(p for p in res["pairs"] if (p["small"], p["large"]) == ("160M", "410M"))
    assert p["step"] == 60000 and p["mixtures"] == 5 and p["mean_loss"]["spearman"] == pytest.approx(1.0)


def test_split_protocol_holds_out_the_named_runs():
    rng = np.random.default_rng(0)
    rows = []
    for k in range(30):
        a = rng.uniform(0.05, 0.95)
        for e, loss in (("a", 3.0 - a), ("b", 2.0 + a ** 2)):
            rows.append({"run": f"{'test' if k % 3 == 0 else 'train'}_{k}", "step": 10, "p_a": a, "p_b": 1 - a,
                         "eval_domain": e, "loss": loss})
    table = loss_table.from_rows(rows)
    res = select.compare(table, ["kernel"], ("split",), n_boot=20, test_runs=["test_*"])["split"]["kernel"]
    assert res["n_runs"] == 10 and res["folds"] == 1
    assert res["per_domain"]["a"]["spearman"] == pytest.approx(1.0) and res["per_domain"]["b"]["r2_log"] > 0.99
    with pytest.raises(InputError, match="--test_runs"):
        select.compare(table, ["kernel"], ("split",), test_runs=["nothing*"])
