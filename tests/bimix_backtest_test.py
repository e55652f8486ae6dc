"""BiMix's first fitted step chosen by backtesting inside the fit data."""

import numpy as np

from bimix_jax import loss_table
from bimix_jax.laws import fit_law
from bimix_jax.laws.bimix import BACKTEST_DROP
from tests.bimix_law_test import DOMAINS, MIXTURES, STEPS, TRUE, bimix_loss


def warmup_table():
    """The law holds from step 3000 on; earlier checkpoints sit well above it (a warmup transient)."""
    rows = []
    for k, mix in enumerate(MIXTURES):
        for s in STEPS:
            for e, dom in enumerate(DOMAINS):
                loss = bimix_loss(TRUE, np.array(mix), s, e) * (1.0 + 0.3 * np.exp(-s / 600.0))
                rows.append({"run": f"run{k}", "step": float(s), **{f"p_{d}": m for d, m in zip(DOMAINS, mix)},
                             "eval_domain": dom, "loss": loss})
    return loss_table.from_rows(rows)


def test_backtest_drops_the_transient_and_extrapolates_better():
    table = warmup_table()
    late = 1e6
    want = np.array([bimix_loss(TRUE, np.array(MIXTURES[0]), late, e) for e in range(3)])
    auto = fit_law(table, "bimix", step_min="auto")
    plain = fit_law(table, "bimix")
    chosen = auto.summary["step_min"]
    assert set(chosen) == set(DOMAINS)
    for e in DOMAINS:
        d = auto.summary["domains"][e]["data"]
        assert d["step_min"] == chosen[e] > STEPS[0]  # The transient is dropped ...
        assert 2 <= len(d["backtest_mre_pct"]) <= len(BACKTEST_DROP)
        assert min(d["backtest_mre_pct"].values()) == d["backtest_mre_pct"][f"{chosen[e]:g}"]
    err_auto = np.abs(np.asarray(auto.predict(MIXTURES[0], late)) / want - 1)
    err_plain = np.abs(np.asarray(plain.predict(MIXTURES[0], late)) / want - 1)
    assert np.all(err_auto < err_plain) and np.all(err_auto < 0.01)  # ... and the far step is predicted better.
