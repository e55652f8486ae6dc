"""The bad-input catalog: every case of every binary exits 2 with exactly one `error:` line naming the
field, no traceback, and writes nothing (neither in its own folders nor in the current directory).

All cases run through the binaries' real entry points (`cli.run(main)` with the case's argv) in ONE
subprocess (`tests/badinput_lib.py`), so the catalog costs one interpreter start, not one per case.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax.data.prepare import prepare_data
from bimix_jax.data.spec import DataSpec
from bimix_jax.laws.base import FittedLaw

from tests.badinput_catalog import CATALOG, REPO, bad_tables, table_rows, write_table


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinput")
    fx = {"dir": str(root / "adir"), "file": str(root / "afile")}
    os.makedirs(fx["dir"])
    open(fx["file"], "w").write("not a folder\n")
    rows = table_rows()
    fx["table"] = write_table(root / "table.csv", rows)
    fx["sizes_table"] = write_table(root / "sizes.csv", [{**r, "model_size": m, "run": f"{m}_{r['run']}",
                                                           "loss": round(r["loss"] * f, 6)}
                                                          for m, f in (("1M", 1.0), ("2M", 0.95), ("4M", 0.9))
                                                          for r in rows])
    for name, (bad_rows, columns) in bad_tables(rows).items():
        fx[f"t_{name}"] = write_table(root / f"t_{name}.csv", bad_rows, columns)
    fx["corpus"] = str(root / "corpus")
    os.makedirs(fx["corpus"])
    open(os.path.join(fx["corpus"], "full.txt"), "w").write(
        "\n\n".join(f"document {i} says hello to the world." for i in range(200)))
    open(os.path.join(fx["corpus"], "empty.txt"), "w").close()
    fx["src"] = str(root / "src")
    os.makedirs(fx["src"])
    with open(os.path.join(fx["src"], "a.jsonl"), "w") as f:
        f.write('{"text": "def f(x): return x"}\n')
    params = {"a": np.array([30.0, 30.0]), "c": np.array([2.0, 3.0]), "alpha": np.array([0.1, 0.1]),
              "beta": np.array([0.5, 0.5])}
    fx["fit"] = str(root / "fit.json")
    FittedLaw("bimix", 1, ("code", "web"), ("code", "web"), params).save(fx["fit"])
    good = json.load(open(fx["fit"]))
    for name, content in [("duplicate", json.dumps({**good, "train_domains": ["code", "code"]})),
                          ("truncated", json.dumps(good)[:50]), ("version", json.dumps({**good, "version": 99})),
                          ("other", json.dumps({"hello": 1}))]:
        fx[f"fit_{name}"] = str(root / f"fit_{name}.json")
        open(fx[f"fit_{name}"], "w").write(content)
    # A workdir whose prepared tokens were truncated (a crash of another program, a full disk, a bad copy).
    sys.path.insert(0, REPO)
    from configs import tiny

    fx["prepared"] = str(root / "prepared")
    prepare_data(DataSpec.from_config(tiny.get_config("runlocal").data), fx["prepared"])
    npz = os.path.join(fx["prepared"], "data", "tokens.npz")
    with open(npz, "r+b") as f:
        f.truncate(os.path.getsize(npz) // 2)
    fx["tokenizer"] = os.path.join(fx["prepared"], "data", "tokenizer.model")

    cases = []
    for binary, cid, argv, _ in CATALOG:
        new = str(root / "new" / binary / cid)
        args = [a.format(**fx, new=new) for a in argv]
        cases.append({"id": f"{binary}/{cid}", "binary": binary, "argv": args, "watch": [str(root)]})
    with open(root / "cases.json", "w") as f:
        json.dump(cases, f)
    repo_before = sorted(os.listdir(REPO))
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR="")
    proc = subprocess.run([sys.executable, "-m", "tests.badinput_lib", str(root / "cases.json"),
                           str(root / "results.json")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(REPO)) == repo_before  # nothing written into the current directory
    with open(root / "results.json") as f:
        out = json.load(f)
    for cid, r in out.items():
        r["written"] = [p for p in r["written"] if "cases.json" not in p and "results.json" not in p]
    return out, fx


def _check(results, binary, cid, message):
    out, fx = results
    r = out[f"{binary}/{cid}"]
    lines = r["stderr"].strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert r["code"] == 2, r["stderr"][-2000:]
    assert len(errors) == 1 and errors[0] == lines[-1], r["stderr"][-2000:]
    assert message.format(**fx) in errors[0], errors[0]
    assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
    assert not r["written"], r["written"]


def _cases(binary):
    return [pytest.param(cid, msg, id=cid) for b, cid, _, msg in CATALOG if b == binary]


def _binary_test(binary):
    """One parametrized test over the catalog's cases of `binary`."""

    @pytest.mark.parametrize("cid, message", _cases(binary))
    def test(results, cid, message):
        _check(results, binary, cid, message)

    test.__name__ = f"test_{binary}"
    return test


BINARIES = list(dict.fromkeys(b for b, *_ in CATALOG))
globals().update({f"test_{b}": _binary_test(b) for b in BINARIES})  # test_train, test_fit_law, ...


def test_catalog_covers_every_binary():
    binaries = {f[:-3] for f in os.listdir(os.path.join(REPO, "experiments"))
                if f.endswith(".py") and not f.startswith(("bench_", "_")) and f not in ("cli.py", "baselines.py")}
    assert binaries == set(BINARIES)
