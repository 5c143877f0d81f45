"""Shared fixtures: the test data folder, one real model per test session, the scorer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("MALSORI_TESTDATA", REPO.parent / "shared" / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not (TESTDATA / "manifest.tsv").is_file():
        pytest.fail(f"test data not found at {TESTDATA}; set MALSORI_TESTDATA or put shared/ beside the repo")
    return TESTDATA


@pytest.fixture(scope="session")
def manifest(testdata):
    from malsori.evaluation import load_manifest

    return load_manifest(testdata)


@pytest.fixture(scope="session")
def transcriber():
    """The real bundled base model, loaded once for the whole test session."""
    from malsori.engine import EngineConfig, Transcriber

    return Transcriber(EngineConfig(model="base"))
