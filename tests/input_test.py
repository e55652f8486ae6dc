"""Mixture input: exact block counts, per-process slices, no repeats within an epoch, resume, stages."""

import numpy as np
import pytest

from bimix_jax.data.input import ArraySource, MixtureInput, block_counts, stage_rows
from bimix_jax.errors import InputError

S = 7  # seq_len; windows hold S + 1 = 8 tokens


def _sources(sizes=(8 * 50, 8 * 13 + 5, 8 * 200)):
    # Token value encodes (domain, position), so every row can be traced to its window.
    return {f"d{i}": ArraySource((np.arange(n, dtype=np.int32) + 100_000 * i)) for i, n in enumerate(sizes)}


def test_block_counts_are_exact_and_unbiased():
    assert block_counts(np.array([0.25, 0.5, 0.25]), 8).tolist() == [2, 4, 2]
    assert block_counts(np.array([0.25, 0.5, 0.25]), 8, block=5, u=0.7).tolist() == [2, 4, 2]  # integer counts
    r = np.array([0.3, 0.0, 0.7])
    for u in (0.0, 0.37, 0.99):
        blocks = np.stack([block_counts(r, 16, b, u) for b in range(50)])
        assert set(blocks[:, 0]) <= {4, 5} and set(blocks[:, 2]) <= {11, 12} and np.all(blocks[:, 1] == 0)
        assert np.all(blocks.sum(axis=1) == 16)
        # Over any prefix of blocks every domain stays within one row of its expected count: no domain is favoured.
        assert np.all(np.abs(np.cumsum(blocks, axis=0) - np.outer(np.arange(1, 51) * 16, r)) < 1 + 1e-9)
    # Equal weights over 8 rows in blocks of 7: 56 rows hold 56/3 = 18.67 of each, within one row.
    third = np.ones(3) / 3
    np.testing.assert_array_equal(stage_rows(third, 56, 0.5), [19, 18, 19])
    assert np.all(np.abs(stage_rows(third, 56, 0.1) - 56 / 3) < 1)


def test_batches_blocks_slices_epochs():
    mi = MixtureInput(_sources(), seq_len=S, batch_size=8, schedule=[(0, [0.25, 0.25, 0.5])], seed=3, block_size=16)
    n_D = mi.num_windows()
    assert n_D.tolist() == [50, 13, 200]
    seen = {d: [] for d in range(3)}
    for step in range(40):
        full = mi.batch(step)
        parts = [mi.batch(step, p, 4) for p in range(4)]
        np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), full["x"])
        np.testing.assert_array_equal(np.concatenate([p["domain"] for p in parts]), full["domain"])
        # Each row is a whole window of its own domain.
        x = full["x"]
        assert np.all(x // 100_000 == full["domain"][:, None])
        assert np.all((x % 100_000)[:, 0] % (S + 1) == 0) and np.all(np.diff(x, axis=1) == 1)
        for d, w in zip(full["domain"], (x[:, 0] % 100_000) // (S + 1)):
            seen[int(d)].append(int(w))
        if step % 2 == 1:  # A block is two steps: exactly 4, 4, 8 rows per domain.
            both = np.concatenate([mi.batch(step - 1)["domain"], full["domain"]])
            assert np.bincount(both, minlength=3).tolist() == [4, 4, 8]
    for d, ws in seen.items():  # Without replacement within each epoch; every window once per full epoch.
        n = int(n_D[d])
        for e in range(len(ws) // n + 1):
            chunk = ws[e * n:(e + 1) * n]
            assert len(set(chunk)) == len(chunk)
            if len(chunk) == n:
                assert sorted(chunk) == list(range(n))
    u = mi.usage(40)
    assert [u[d]["windows_drawn"] for d in mi.domains] == [len(seen[i]) for i in range(3)] == [80, 80, 160]
    assert u["d1"]["repetitions"] == 6 and u["d1"]["epochs"] == pytest.approx(80 / 13)
    assert mi.usage(41)["d0"]["windows_drawn"] == 80 + int(np.sum(mi.batch(40)["domain"] == 0))


def test_iterate_resumes_and_stages_continue_epochs():
    mi = MixtureInput(_sources(), seq_len=S, batch_size=4, schedule=[(0, [1.0, 0.0, 0.0])], seed=0)
    mi = mi.with_stage(10, [0.0, 0.5, 0.5])
    mi = mi.with_stage(6, [0.5, 0.5, 0.0])  # Replaces the later stage: [(0, ...), (6, ...)].
    assert [s[0] for s in mi.schedule] == [0, 6]
    run = list(mi.iterate(0, 30, threads=2, prefetch=4))
    resumed = list(mi.iterate(17, 13, process_index=1, process_count=2))
    for a, b in zip(run[17:], resumed):
        np.testing.assert_array_equal(a["x"][2:], b["x"])
    assert all(np.all(b["domain"] == 0) for b in run[:6])
    d0 = [int(w) for b in run for w, d in zip(b["x"][:, 0] % 100_000 // 8, b["domain"]) if d == 0]
    assert len(set(d0[:50])) == min(50, len(d0))  # Epoch of d0 continues across the stage change.
    assert mi.usage(30)["d0"]["windows_drawn"] == len(d0) == 24 + 48


def test_bad_schedules_are_refused():
    with pytest.raises(InputError, match="start at step 0"):
        MixtureInput(_sources(), seq_len=S, batch_size=4, schedule=[(1, [1, 0, 0])])
    with pytest.raises(InputError, match="multiple of 2 steps"):
        MixtureInput(_sources(), seq_len=S, batch_size=4, block_size=8, schedule=[(0, [1, 0, 0]), (3, [0, 1, 0])])
    with pytest.raises(InputError, match="must be 3 weights >= 0 summing to 1"):
        MixtureInput(_sources(), seq_len=S, batch_size=4, schedule=[(0, [1, 0])])
    with pytest.raises(InputError, match="fewer than seq_len"):
        MixtureInput({"a": ArraySource(np.zeros(5, np.int32))}, seq_len=S, batch_size=4, schedule=[(0, [1.0])])
