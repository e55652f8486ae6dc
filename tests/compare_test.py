"""`compare_methods` end to end on its runlocal settings: every method, the splits, the statistics, compute, resume."""

import dataclasses
import json
import os

import numpy as np
import pytest

from bimix_jax.data.prepare import prepare_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.errors import InputError
from bimix_jax.pipeline import compare, compare_data, compare_stats
from bimix_jax.pipeline.compare_spec import CONTROLS
from bimix_jax.train import evaluate
from configs import compare_tiny


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("compare") / "w")
    return w, compare.compare_methods(compare_tiny.get_config("runlocal"), w)


def test_every_method_is_reported_with_corrected_statistics(compared):
    w, rep = compared
    cfg = compare_tiny.get_config("runlocal")
    methods = cfg.compare.methods.split(",")
    assert set(rep["methods"]) == set(methods) and sorted(rep["ranking"]) == sorted(methods)
    uni = np.asarray(rep["methods"]["uniform"]["average_loss"]["per_seed"])
    assert len(uni) == 2
    family = [m for m in methods if m != "uniform" and m not in CONTROLS]
    p = {m: rep["methods"][m]["vs_uniform"]["p"] for m in family}
    holm = compare_stats.holm(p)
    for m, e in rep["methods"].items():
        avg = np.asarray(e["average_loss"]["per_seed"])
        assert np.isclose(avg.mean(), np.mean([e["per_domain_loss"][d]["mean"] for d in rep["domains"]]))
        mix = np.asarray(list(e["mixture"].values()))
        assert np.isclose(mix.sum(), 1.0) and mix.min() >= 0
        if m != "uniform":
            v = e["vs_uniform"]
            np.testing.assert_allclose(v["per_seed"], avg - uni)
            assert 0 <= v["p"] <= v["p_holm"] <= 1 and v["ci95"][0] <= v["mean"] <= v["ci95"][1]
            if m in family:
                assert v["p_holm"] == holm[m]
            assert v["beats_uniform"] == (v["mean"] < 0 and v["p_holm"] < 0.05)
    assert rep["beat_uniform"] == [m for m in family if rep["methods"][m]["vs_uniform"]["beats_uniform"]]
    assert rep["methods"]["aioli_uniform_exploit"]["mixture"] == {d: 0.2 for d in rep["domains"]}
    for f in ("report.md", "report.json", "plots/final_loss.png", "plots/trajectories.png", "plots/loss_curves.png"):
        assert os.path.getsize(os.path.join(w, f)) > 0
    md = open(os.path.join(w, "report.md")).read()
    assert "methods beat uniform after Holm correction" in md and "Which split each method saw" in md


def test_choices_come_from_the_selection_split_and_tuning_seed(compared):
    w, rep = compared
    cfg = compare_tiny.get_config("runlocal")
    ts = cfg.compare.tuning_seed
    for name in ("uniform", "natural", "se", "ce", "je", "vne"):  # the law proxies: selection view, tuning seed
        run = json.load(open(os.path.join(w, "runs", "select", name, f"seed{ts}", "config.json")))
        assert run["data_fingerprint"].endswith(":select") and run["spec"]["train"]["seed"] == ts
    final = json.load(open(os.path.join(w, "runs", "bimix", "seed0", "config.json")))
    assert final["data_fingerprint"].endswith(":report")
    t = rep["tuning"]
    assert t["aioli"]["tuned"] and len(t["aioli"]["points"]) == 2 and t["doremi"]["tuned"]
    chosen = t["aioli"]["points"][t["aioli"]["chosen"]]
    assert chosen["selection_loss"] == min(p["selection_loss"] for p in t["aioli"]["points"])
    aioli_cfg = json.load(open(os.path.join(w, "runs", "aioli", "seed0", "method.json")))["config"]
    assert aioli_cfg["eta"] == chosen["config"]["eta"]
    assert not t["online_bimix"]["tuned"]
    for d, s in rep["splits"].items():
        assert s["reported_eval"]["tokens"] == s["selection_eval"]["tokens"] == cfg.train.eval_tokens
        assert s["reported_eval"]["split"] == "val" and s["feedback"]["split"] == "select"


def test_compute_is_accounted(compared):
    _, rep = compared
    cfg = compare_tiny.get_config("runlocal")
    per_step = cfg.train.batch_size * cfg.train.seq_len
    budget = cfg.train.steps * per_step
    c = {m: e["compute"] for m, e in rep["methods"].items()}
    assert c["uniform"]["extra_train_tokens"] == 0 and c["uniform"]["multiplier"] == 1.0
    assert c["bimix"]["extra_train_tokens"] == 6 * budget  # the six static methods' selection-view proxies
    assert c["doremi"]["extra_train_tokens"] == 2 * budget  # reference + the chosen proxy
    assert c["doremi"]["tuning_train_tokens"] == 3 * budget  # the other proxy + two scoring runs
    assert c["aioli"]["tuning_train_tokens"] == 2 * budget
    a = cfg.online.aioli
    rounds = len(rep["aioli_rounds"]["aioli"])
    assert rounds == 2 and c["aioli"]["probe_tokens"] == rounds * a.sweeps * 5 * a.probe_steps * per_step
    assert len(rep["aioli_rounds"]["aioli_static"]) == 1
    short = round(cfg.train.steps * cfg.compare.restricted_fraction)
    assert c["aioli_restricted"]["extra_train_tokens"] == 2 * short * per_step
    assert c["aioli_restricted"]["prior_tokens"] == short * per_step
    fb = c["aioli"]["feedback_eval_tokens"]
    assert fb > 0 and np.isclose(c["aioli"]["multiplier"], 1 + fb / 3 / budget)
    for r in rep["aioli_rounds"]["aioli"]:
        assert np.isclose(np.sum(r["A"]), 1.0) and np.isclose(np.sum(r["p"]), 1.0)
    eq = rep["equal_compute"]
    assert len(eq["uniform_long"]["per_seed"]) == 2 and set(eq["methods"]) == set(rep["methods"]) - {"uniform"}
    assert eq["methods"]["bimix"]["uniform_at"] == 2.0 and eq["methods"]["natural"]["uniform_at"] == 1.0


def test_rerun_resumes_to_the_same_report(compared):
    w, rep = compared
    before = open(os.path.join(w, "report.json")).read()
    again = compare.compare_methods(compare_tiny.get_config("runlocal"), w)
    assert open(os.path.join(w, "report.json")).read() == before
    assert json.loads(before)["ranking"] == again["ranking"]
    assert len(json.load(open(os.path.join(w, compare.TIMING_FILE)))) == 2


def _other_validation(prepared):
    """The same corpus with other validation documents: each domain's documents reversed in order and in text."""
    tok = prepared.tokens
    val = {}
    for d in tok.domains:
        ends = np.flatnonzero(tok.val[d] == tok.eos_id)
        docs = np.split(tok.val[d], ends[:-1] + 1)
        val[d] = np.concatenate([np.append(doc[:-1][::-1], tok.eos_id) for doc in docs[::-1]]).astype(np.int32)
    return dataclasses.replace(prepared, tokens=dataclasses.replace(tok, val=val))


def test_changing_the_reported_split_changes_no_choice(compared, tmp_path):
    w, rep = compared
    cfg = compare_tiny.get_config("runlocal")
    prepared = prepare_data(DataSpec.from_config(cfg.data), w)  # the fixture's cached corpus
    other = compare.compare_methods(cfg, str(tmp_path / "w"), data=_other_validation(prepared))
    for m in rep["methods"]:
        assert other["methods"][m]["mixture"] == rep["methods"][m]["mixture"], m
    assert other["tuning"] == rep["tuning"] and other["laws"] == rep["laws"]
    assert other["aioli_rounds"] == rep["aioli_rounds"] and other["online_bimix_fits"] == rep["online_bimix_fits"]
    assert other["methods"]["uniform"]["average_loss"] != rep["methods"]["uniform"]["average_loss"]


def test_spread_windows_cover_the_split_without_overlap():
    wins = evaluate.spread_windows(1000, 100, 32, what="x")
    assert [n for _, n in wins] == [32, 32, 32, 4] and wins[0][0] == 0 and wins[-1][0] + 5 == 1000
    assert all(a + n + 1 <= b for (a, n), (b, _) in zip(wins, wins[1:]))
    with pytest.raises(InputError, match="separate windows"):
        evaluate.spread_windows(100, 100, 32, what="x")
    buf = np.array([5, 6, 0, 7, 0, 8, 9, 9, 0], np.int32)  # three documents (eos 0)
    assert compare_data.coverage(buf, 0, [(0, 2)]) == 1 and compare_data.coverage(buf, 0, [(0, 8)]) == 3


def test_evaluation_sets_first_and_spread():
    from tests.train_test import synthetic_tokens

    tok = synthetic_tokens()
    first = evaluate.build_eval_set(tok, seq_len=16, eval_tokens=100, batch_size=4)
    # 7 consecutive windows per domain sharing one token (6 x 16 + 4 predictions), 21 rows padded to 6 x 4.
    assert first.x_NxBxS.shape == (6, 4, 17) and first.tokens_D.tolist() == [100.0] * 3
    x, w, dom = first.x_NxBxS.reshape(-1, 17), first.w_NxBxL.reshape(-1, 16), first.domain_NxB.reshape(-1)
    for i, d in enumerate(tok.domains):
        rows = np.flatnonzero((dom == i) & (w.sum(axis=1) > 0))
        for k, r in enumerate(rows):
            window = tok.val[d][16 * k:min(16 * k + 17, 101)]
            np.testing.assert_array_equal(x[r, :window.size], window)
            assert w[r].sum() == window.size - 1
    spread = evaluate.split_eval_set(tok.domains, lambda d: tok.val[d].size, lambda d, o, n: tok.val[d][o:o + n],
                                     tokens=100, seq_len=16, batch_size=4, spread=True)
    assert spread.tokens_D.tolist() == [100.0] * 3
    offsets = [o for o, _ in evaluate.spread_windows(tok.val["alpha"].size, 100, 16, what="x")]
    assert offsets[-1] + 5 == tok.val["alpha"].size  # the last window ends at the split's end
    np.testing.assert_array_equal(spread.x_NxBxS.reshape(-1, 17)[1], tok.val["alpha"][offsets[1]:offsets[1] + 17])


def test_paired_t_test_matches_the_closed_form():
    d = np.array([-0.1, -0.05, -0.08])
    out = compare_stats.paired_test(d)
    # t = mean / (sd / sqrt(3)); with 2 degrees of freedom, p = 1 - |t| / sqrt(t^2 + 2).
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    assert np.isclose(out["t"], t) and np.isclose(out["p"], 1 - abs(t) / np.sqrt(t * t + 2), rtol=1e-5)


def test_holm_and_bootstrap():
    adj = compare_stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": float("nan")})
    assert np.isclose(adj["a"], 0.03) and np.isclose(adj["c"], 0.06) and np.isclose(adj["b"], 0.06)
    assert np.isnan(adj["d"])
    d = np.array([-0.03, -0.01, -0.02, -0.04, -0.02])
    lo, hi = compare_stats.bootstrap_ci(d)
    assert lo < d.mean() < hi and lo >= d.min() and hi <= d.max() and compare_stats.bootstrap_ci(d) == [lo, hi]
    fam = compare_stats.compare_family({"good": d, "flat": np.array([0.01, -0.01, 0.0, 0.02, -0.02])})
    assert fam["good"]["beats_uniform"] and not fam["flat"]["beats_uniform"] and fam["good"]["lower_at"] == 5


def test_equal_compute_interpolates_uniform_in_log_compute():
    u1, u2 = np.array([3.0, 3.1]), np.array([2.8, 2.9])
    out = compare_stats.equal_compute({"m": np.array([2.9, 3.0]), "big": np.array([2.95, 3.05])},
                                      {"m": np.sqrt(2), "big": 7.0}, u1, u2, 2.0)
    assert np.isclose(out["m"]["diff"], 0.0, atol=1e-12) and out["m"]["uniform_equivalent"] == "1.41"
    assert out["big"]["uniform_at"] == 2.0 and out["big"]["verdict"].startswith("worse than uniform at 2x")


@pytest.mark.parametrize("field,value,match", [
    ("methods", "uniform,aioli,nope", "compare.methods"),
    ("methods", "aioli,natural", "uniform"),
    ("seeds", "0,0", "repeat"),
    ("tuning_seed", 1, "tuning_seed=1 is a reported seed"),
    ("restricted_fraction", 1.5, "restricted_fraction"),
    ("methods", "uniform,natural,se,ce,bimix,dml", "needs at least 6 of them"),
    ("aioli_grid", "eta=1;zeta=2", "compare.aioli_grid: point 2"),
    ("doremi_grid", "eta=x", "not a number"),
    ("aioli_grid", "round_steps=5", "compare.aioli_grid: point 1"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, field, value, match):
    cfg = compare_tiny.get_config("runlocal")
    cfg.compare[field] = value
    with pytest.raises(InputError, match=match):
        compare.compare_methods(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_a_corpus_without_selection_split_is_refused(tmp_path):
    cfg = compare_tiny.get_config("runlocal")
    cfg.data.select_fraction, cfg.data.min_select_docs = 0.0, 0
    with pytest.raises(InputError, match="needs a selection split"):
        compare.compare_methods(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
