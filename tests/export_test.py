"""Exported mixtures: weights that sum to exactly 1, Megatron blend strings, tf.data/grain weight lists."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimix_jax.errors import InputError
from bimix_jax.mixture import export

MIX = {"github": 0.25, "books3": 0.0001, "pile_cc": 0.7499}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30).filter(lambda x: sum(x) > 1e-3),
       st.integers(2, 8))
def test_rounding_keeps_the_sum_and_stays_within_one_unit(x, decimals):
    r = np.asarray(x) / np.sum(x)
    rounded = export.round_to_sum(r, decimals)
    units = np.rint(rounded * 10**decimals)
    assert int(units.sum()) == 10**decimals  # sums to exactly 1 at this precision
    np.testing.assert_allclose(rounded, units / 10**decimals, atol=1e-15)
    assert np.all(np.abs(rounded - r) < 10.0**-decimals + 1e-12)
    assert np.all(rounded[r == 0] == 0)


def test_megatron_blend_round_trips():
    blend = export.megatron_blend(MIX, "/data/pile/{domain}_text_document", decimals=4)
    assert blend == ("0.2500 /data/pile/github_text_document 0.0001 /data/pile/books3_text_document "
                     "0.7499 /data/pile/pile_cc_text_document")
    parts = blend.split()
    weights, prefixes = [float(w) for w in parts[::2]], parts[1::2]  # Megatron's "w1 p1 w2 p2 ..." pairs
    assert prefixes == [f"/data/pile/{d}_text_document" for d in MIX] and sum(weights) == pytest.approx(1.0)
    # Zero-weight domains are left out; the default template is Megatron's preprocess_data.py prefix.
    assert export.megatron_blend({"a": 1.0, "b": 0.0}) == "1.000000 a_text_document"


@pytest.mark.parametrize("template, match", [("data/x", "must contain {domain}"), ("{dom}", "not a valid"),
                                             ("{domain}{0}", "not a valid")])
def test_bad_template(template, match):
    with pytest.raises(InputError, match=match):
        export.megatron_blend(MIX, template)


def test_sampling_weights_follow_the_given_dataset_order():
    order = ["pile_cc", "github", "books3"]
    assert export.sampling_weights(MIX, order) == [0.7499, 0.25, 0.0001]
    assert export.sampling_weights(MIX) == [0.25, 0.0001, 0.7499]
    with pytest.raises(InputError, match="does not list"):
        export.sampling_weights(MIX, ["github", "books3"])


def test_export_all_and_files(tmp_path):
    out = export.export_all(MIX)
    assert out["weights"] == MIX and out["sampling_weights"]["domains"] == list(MIX)
    paths = export.write_exports(tmp_path / "exp", out)
    assert json.loads(open(paths[0]).read()) == MIX
    assert open(paths[1]).read().strip() == out["megatron_blend"]
    assert json.loads(open(paths[2]).read())["weights"] == [0.25, 0.0001, 0.7499]
