"""The colabs run headlessly (nbclient, the installed ipykernel) with the runlocal settings, and are stored clean."""

import os
import re

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = ("quickstart.ipynb", "fit_your_losses.ipynb", "online_mixing.ipynb")


def _execute(name: str, env: dict, timeout: int = 240) -> str:
    """Runs the notebook (cwd: colabs/) with `env` set for its parameter cell; returns its text output."""
    from nbclient import NotebookClient

    nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the test process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": COLABS}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            text.append(out.get("text", "") if out["output_type"] == "stream" else "")
            if out["output_type"] == "display_data":
                text.append("<" + ",".join(sorted(out["data"])) + ">")
    return "".join(text)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "os.environ.get(" in code[0].source  # the first code cell holds the parameters


@pytest.mark.slow  # the whole runlocal pipeline, as tests/pipeline_test.py runs it
def test_quickstart_runs_the_pipeline(tmp_path):
    out = _execute("quickstart.ipynb", {"BIMIX_WORKDIR": str(tmp_path / "w"), "BIMIX_CONFIG_ARG": "runlocal",
                                        "JAX_PLATFORMS": "cpu"})
    assert "the recommended mixture sums to 1.000000" in out
    assert out.count("<image/png,text/plain>") == 4
    assert re.search(r" 1\. +\w+ +observed \d\.\d{4}", out) and "<- recommended" in out
    assert os.path.isfile(tmp_path / "w" / "report.md")


@pytest.mark.slow  # a whole runlocal comparison, as tests/compare_test.py runs it
def test_online_mixing_compares_methods(tmp_path):
    out = _execute("online_mixing.ipynb", {"BIMIX_WORKDIR": str(tmp_path / "w"), "BIMIX_CONFIG_ARG": "runlocal",
                                           "BIMIX_METHODS": "uniform,aioli", "BIMIX_SEEDS": "0",
                                           "JAX_PLATFORMS": "cpu"})
    assert re.search(r"[01] of 1 methods beat uniform", out)
    assert "aioli round 1 (step 10)" in out and out.count("<image/png,text/plain>") == 3
    assert os.path.isfile(tmp_path / "w" / "report.md")


def test_fit_your_losses_compares_laws_and_optimizes(tmp_path, pile3_path):
    out = _execute("fit_your_losses.ipynb", {"BIMIX_TABLE": pile3_path, "BIMIX_MODEL_SIZE": "160M",
                                             "BIMIX_WORKDIR": str(tmp_path / "w"), "JAX_PLATFORMS": "cpu"})
    for law in ("bimix", "dml"):
        assert re.search(rf"{law}: .*\(sums to 1\.000000\)", out), out[-3000:]
        assert re.search(rf" *{law}: \d+ held-out points at step 60000, mean relative error", out)
    assert out.count("<image/png,text/plain>") == 3
    assert not os.path.exists(tmp_path / "w")  # the real table was used; no fallback pipeline ran


@pytest.mark.slow  # the fallback: no table, so the notebook makes one with the runlocal pipeline
def test_fit_your_losses_without_the_table_makes_one(tmp_path):
    out = _execute("fit_your_losses.ipynb", {"BIMIX_TABLE": str(tmp_path / "absent.csv"),
                                             "BIMIX_WORKDIR": str(tmp_path / "w"), "JAX_PLATFORMS": "cpu"})
    assert "is absent: making a loss table with the tiny pipeline (runlocal)" in out
    assert re.search(r"bimix: .*\(sums to 1\.000000\)", out)
    assert os.path.isfile(tmp_path / "w" / "losses.csv")


def test_tokenizer_trains_when_stderr_has_no_file_descriptor(monkeypatch):
    """Jupyter's sys.stderr has no fileno(); sentencepiece's log redirection needs one (regression)."""
    import io
    import sys

    from bimix_jax.data.tokenizer import train_tokenizer

    notebook_stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", notebook_stderr)
    tok = train_tokenizer({"a": ["hello world " * 50], "b": ["1 + 2 = 3\n" * 50]}, vocab_size=300, sample_chars=1000)
    assert tok.vocab_size >= 259 and sys.stderr is notebook_stderr
