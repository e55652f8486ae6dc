"""Shared test fixtures. Tests run on CPU; real measurements come from ../shared/data when present."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("BIMIX_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def shared_table(name: str) -> str:
    """Path of a real loss table in ../shared/data; skips the test when it is absent."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is absent (third-party measurements are not shipped with the repository)")
    return path


@pytest.fixture
def pile3_path() -> str:
    return shared_table("pile3_github_books3_pilecc.csv")


@pytest.fixture
def pile2_path() -> str:
    return shared_table("pile2_github_pilecc.csv")
