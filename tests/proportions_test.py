"""The one home of a mixture: parsing, the one tolerance, names and aliases, conversions."""

import numpy as np
import pytest

from bimix_jax.errors import InputError
from bimix_jax.mixture import proportions

DOMAINS = ("d0", "d1", "d2", "d3", "d4")
COUNTS = {"d0": 500, "d1": 300, "d2": 200, "d3": 400, "d4": 100}


@pytest.mark.parametrize("mixture, pattern", [
    ({"d0": -0.1, "d1": 1.1}, "'d0'.*>= 0"),
    ({"d0": float("nan"), "d1": 1.0}, "finite"),
    ({"d0": float("inf")}, "finite"),
    ({"zz": 1.0}, "'zz' is not in the corpus"),
    ({"d0": 0.0}, "every weight is 0"),
    ({"d0": 0.5, "d1": 0.4}, "sum to 0.9"),
])
def test_check_weights_errors(mixture, pattern):
    with pytest.raises(InputError, match=pattern) as e:
        proportions.check_weights(mixture, DOMAINS)
    assert "\n" not in str(e.value)


def test_check_weights_fills_missing_and_normalizes():
    np.testing.assert_allclose(proportions.check_weights({"d1": 0.25, "d3": 0.75}, DOMAINS), [0, 0.25, 0, 0.75, 0])
    np.testing.assert_allclose(proportions.check_weights({"d0": 1, "d1": 3}, DOMAINS, normalize=True),
                               [0.25, 0.75, 0, 0, 0])


def test_one_tolerance_everywhere():
    tol = proportions.SUM_TOLERANCE
    ok = np.array([0.5, 0.5 + 0.9 * tol, 0, 0, 0])
    bad = np.array([0.5, 0.5 + 2 * tol, 0, 0, 0])
    proportions.check_array(ok, 5)
    assert proportions.on_simplex(ok) and not proportions.on_simplex(bad)
    with pytest.raises(InputError, match="summing to 1"):
        proportions.check_array(bad, 5)
    with pytest.raises(InputError, match="sum to"):
        proportions.check_weights(dict(zip(DOMAINS, bad)), DOMAINS)
    # The loss table and the online methods use the same tolerance.
    from bimix_jax import loss_table
    from bimix_jax.online import schedule
    assert loss_table.SUM_TOLERANCE == tol
    with pytest.raises(ValueError, match="simplex"):
        schedule.check_simplex(bad, "p")


def test_resolve_names_weights_and_aliases():
    np.testing.assert_allclose(proportions.resolve("uniform", DOMAINS), np.full(5, 0.2))
    np.testing.assert_allclose(proportions.resolve("Stratified", DOMAINS), np.full(5, 0.2))  # an alias, said once
    np.testing.assert_allclose(proportions.resolve("natural", DOMAINS, token_counts=COUNTS),
                               np.array([500, 300, 200, 400, 100]) / 1500)
    np.testing.assert_allclose(proportions.resolve(" d0=0.3, d2=0.7 ", DOMAINS), [0.3, 0, 0.7, 0, 0])
    se = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
    np.testing.assert_allclose(proportions.resolve("se", DOMAINS, named={"se": se}), se)
    with pytest.raises(InputError, match="'se' is not a mixture name here"):
        proportions.resolve("se", DOMAINS)
    with pytest.raises(InputError, match="'natural' is not a mixture name here"):
        proportions.resolve("natural", DOMAINS)  # no token counts to compute it from
    for bad, pattern in (("d0:0.3", "not a mixture"), ("d0=x", "not a number"), ("d0=0.5,d0=0.5", "twice"),
                         ("", "empty"), ("d0=0.5,d1", "not domain=weight")):
        with pytest.raises(InputError, match=pattern):
            proportions.parse(bad)


def test_precheck_before_any_data():
    proportions.precheck("uniform", None)
    proportions.precheck("code=0.5,prose=0.5", None)  # names unknown yet: checked against themselves
    with pytest.raises(InputError, match="'zz' is not in the corpus"):
        proportions.precheck("zz=1", ("code", "prose"))
    with pytest.raises(InputError, match="sum to 0.6"):
        proportions.precheck("code=0.3,prose=0.3", None)
    proportions.precheck("code=3,prose=3", None, normalize=True)


def test_dict_array_round_trip():
    r = proportions.to_array({"d2": 0.5, "d0": 0.25, "d1": 0.25, "d3": 0, "d4": 0}, DOMAINS)
    np.testing.assert_array_equal(r, [0.25, 0.25, 0.5, 0, 0])
    assert proportions.to_dict(r, DOMAINS) == {"d0": 0.25, "d1": 0.25, "d2": 0.5, "d3": 0.0, "d4": 0.0}
    with pytest.raises(InputError, match="lacks domains d3, d4"):
        proportions.to_array({"d0": 0.5, "d1": 0.5, "d2": 0}, DOMAINS)
    np.testing.assert_allclose(proportions.renormalize([-1e-12, 0.5, 0.5000001]), [0, 0.4999999, 0.5000001],
                               rtol=1e-6)


def test_a_recommended_mixture_file_goes_back_into_training(tmp_path):
    import json

    report = tmp_path / "mixture.json"
    report.write_text(json.dumps({"format": "bimix_jax.mixture_report", "mixture": {"d0": 0.75, "d2": 0.25}}))
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"d1": 0.5, "d3": 0.5}))
    np.testing.assert_allclose(proportions.resolve(str(report), DOMAINS), [0.75, 0, 0.25, 0, 0])
    np.testing.assert_allclose(proportions.resolve(str(weights), DOMAINS), [0, 0.5, 0, 0.5, 0])
    (tmp_path / "bad.json").write_text("[1, 2]")
    for path, pattern in ((tmp_path / "none.json", "does not exist"), (tmp_path / "bad.json", "holds no mixture")):
        with pytest.raises(InputError, match=pattern):
            proportions.parse(str(path))
