"""Shared fixtures: paths to ../shared (real chains and published references)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
SNAPSHOT = DATA / "deribit_options_snapshot_20251230T173115Z.csv"
DAILY = DATA / "deribit_daily_2026-02"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-chain folder; a missing folder is an error, never a silent skip."""
    if not DATA.is_dir():
        pytest.fail(f"shared data folder {DATA} is missing: tests read real chains from ../shared/data")
    return DATA
