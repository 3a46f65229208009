"""Shared test setup: the datasets live outside the repo, in ../shared/data (or $JAXICL_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("JAXICL_DATA_DIR", REPO.parent / "shared" / "data"))
os.environ.setdefault("JAXICL_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2").exists():
        pytest.fail(f"datasets not found at {DATA_DIR}; set JAXICL_DATA_DIR")
    return DATA_DIR
