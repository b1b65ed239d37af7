"""Shared fixtures: the development data and reference fixtures live in ../shared (never in the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"development cases not found at {path}")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = SHARED / "fixtures"
    if not path.is_dir():
        pytest.skip(f"reference fixtures not found at {path}")
    return path
