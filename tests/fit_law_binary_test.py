"""experiments.fit_law end to end: outputs on good input; one-line errors, exit 2, nothing written on bad input."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax.laws import FittedLaw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("code", "web")
MIXTURES = [(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2), (0.5, 0.5)]
STEPS = [500, 1000, 2000, 4000, 8000, 16000, 32000, 64000]  # Fit and last_step fit share padded shapes.


def rows(mixtures=MIXTURES, steps=STEPS, size="10M"):
    out = []
    for k, mix in enumerate(mixtures):
        for s in steps:
            for e, dom in enumerate(DOMAINS):
                loss = mix[e] ** -(0.05 + 0.05 * e) * (300.0 * s ** -0.6 + 2.0 + e)
                out.append({"run": f"{size}_run{k}", "model_size": size, "step": s, "p_code": mix[0],
                            "p_web": mix[1], "eval_domain": dom, "loss": round(loss, 6)})
    return out


def write(path, table_rows, columns=None):
    columns = columns or list(table_rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table_rows)
    return str(path)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def run(args, cache_dir):
    env = dict(os.environ, BIMIX_JAX_CACHE_DIR=cache_dir, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.fit_law", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bimix_fit_with_holdout_and_plot(tmp_path, cache_dir):
    table = write(tmp_path / "t.csv", rows())
    out, plot = tmp_path / "fit.json", tmp_path / "fit.png"
    res = run([f"--losses={table}", "--law=bimix", "--holdout=last_step", f"--out={out}", f"--plot={plot}"],
              cache_dir)
    assert res.returncode == 0, res.stderr
    fitted = FittedLaw.load(out)
    assert fitted.law == "bimix" and fitted.eval_domains == DOMAINS and fitted.summary["model_size"] == "10M"
    np.testing.assert_allclose(fitted.params["beta"], [0.6, 0.6], rtol=1e-4)
    held = fitted.summary["holdout"]
    assert held["protocol"] == "last_step" and held["worst"]["max_re_pct"] < 0.01
    assert fitted.summary["domains"]["web"]["holdout"]["n"] == len(MIXTURES)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bimix law, model size 10M" in res.stdout and "held out (last_step)" in res.stdout


def _edit(column, value, where=lambda i, r: i == 3):
    def edit(table_rows):
        return [dict(r, **{column: value}) if where(i, r) else r for i, r in enumerate(table_rows)]
    return edit


BAD = {
    "missing_column": (lambda r: [{k: v for k, v in x.items() if k != "loss"} for x in r], [],
                       "missing column 'loss'"),
    "non_numeric_loss": (_edit("loss", "abc"), [], "column 'loss' holds 'abc'"),
    "non_positive_loss": (_edit("loss", "-1"), [], "loss '-1' must be a positive"),
    "non_positive_step": (_edit("step", "0"), [], "step '0' must be a positive number"),
    "proportions_not_summing_to_1": (_edit("p_code", "0.9", lambda i, r: r["run"] == "10M_run0"), [],
                                     "proportions sum to 1.7"),
    "proportions_changing_in_run": (lambda r: [dict(x, p_code=0.3, p_web=0.7) if x["run"] == "10M_run0" and i > 4
                                                else x for i, x in enumerate(r)], [],
                                    "proportions change between rows"),
    "two_model_sizes": (lambda r: r + rows(size="20M"), [], "pick one with --model_size"),
    "unknown_model_size": (lambda r: r, ["--model_size=1B"], "no rows with model_size=1B"),
    "single_proportion": (lambda r: [x for x in r if x["run"] in ("10M_run4",)] + [
        dict(x, run="10M_run5") for x in r if x["run"] == "10M_run4"], [], "alpha is not identifiable"),
    "target_step_with_bimix": (lambda r: r, ["--target_step=100"], "--target_step applies to --law=ye only"),
    "unknown_holdout_run": (lambda r: r, ["--holdout=mixtures", "--holdout_runs=nope"],
                            "--holdout_runs: run 'nope' is not in loss table"),
    "bad_plot_format": (lambda r: r, ["--plot=fit.xyz"], "unsupported image format 'xyz'"),
    "unknown_law": (lambda r: r, ["--law=regmix"], "--law=regmix: value should be one of"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, cache_dir):
    edit, extra, message = BAD[case]
    table = write(tmp_path / "t.csv", edit(rows()))
    out = tmp_path / "fit.json"
    extra = [a.replace("--plot=", f"--plot={tmp_path}/") for a in extra]
    args = [f"--losses={table}", "--law=bimix", f"--out={out}"] + extra
    args = [a for a in args if not (a == "--law=bimix" and any(x.startswith("--law=") for x in extra))]
    res = run(args, cache_dir)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == res.stderr.strip().splitlines()[-1], res.stderr
    assert message in errors[0], errors[0]
    assert sorted(os.listdir(tmp_path)) == ["t.csv"]  # Nothing written.


def test_missing_table_file(tmp_path, cache_dir):
    res = run([f"--losses={tmp_path}/none.csv", "--law=bimix", f"--out={tmp_path}/fit.json"], cache_dir)
    assert res.returncode == 2 and "does not exist; check the path" in res.stderr
    assert os.listdir(tmp_path) == []
