"""`python -m experiments.entropy_mixture` end to end on the embedded corpus (tiny config, runlocal)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from bimix_jax.data.prepare import load_prepared
from bimix_jax.entropy import counts as entropy_counts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "tiny.py") + ":runlocal"


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", BIMIX_JAX_CACHE_DIR="")
    return subprocess.run([sys.executable, "-m", "experiments.entropy_mixture", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    wd = str(tmp_path_factory.mktemp("entropy"))
    proc = run(f"--config={CONFIG}", f"--workdir={wd}")
    assert proc.returncode == 0, proc.stderr
    assert "ln r_JE - ln r_SE - ln r_CE" in proc.stdout
    return wd


def test_writes_entropies_mixtures_and_consistency(workdir):
    with open(os.path.join(workdir, "entropy_mixture.json")) as f:
        rep = json.load(f)
    data = load_prepared(workdir)
    toks = data.tokens
    assert rep["domains"] == list(toks.domains) and rep["proxy"] == "ce" and rep["units"] == "nats"
    for d in toks.domains:
        e = rep["entropy"][d]
        assert e["tokens"] == toks.train[d].size and e["pairs"] == toks.train[d].size - 1
        ref = entropy_counts.token_entropies(toks.train[d], toks.vocab_size)
        assert (e["se"], e["ce"], e["je"]) == pytest.approx((ref.se, ref.ce, ref.je), abs=1e-12)
        assert 0 < e["ce"] < e["se"] < e["je"] and 0 < e["vne"] <= math.log(e["vne_docs_used"]) + 1e-9
        assert e["vne_docs_used"] == len(data.corpus.documents(d, "train"))
    for m in ("se", "ce", "je", "vne"):
        assert sum(rep["mixtures"][m].values()) == pytest.approx(1.0, abs=1e-12)
        h = np.array([rep["entropy"][d][m] for d in toks.domains])
        r = np.array([rep["mixtures"][m][d] for d in toks.domains])
        np.testing.assert_allclose(np.log(r) - np.log(r[0]), h - h[0], atol=1e-12)  # softmax at T = 1
    assert rep["mixture"] == rep["mixtures"]["ce"]
    assert rep["consistency"]["spread"] < 1e-12
    assert rep["data"]["tokens_fingerprint"] == toks.fingerprint()


def test_proxy_temperature_and_out_flags(workdir, tmp_path):
    out = str(tmp_path / "sub" / "vne.json")
    proc = run(f"--config={CONFIG}", f"--workdir={workdir}", "--proxy=vne", "--temperature=2", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        rep = json.load(f)
    assert rep["proxy"] == "vne" and rep["temperature"] == 2.0 and rep["mixture"] == rep["mixtures"]["vne"]
    d0, d1 = rep["domains"][:2]
    ratio = rep["mixture"][d0] / rep["mixture"][d1]
    assert ratio == pytest.approx(math.exp((rep["entropy"][d0]["vne"] - rep["entropy"][d1]["vne"]) / 2))
