"""Shared fixtures: paths to ../shared (real chains and published references)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
SNAPSHOT = DATA / "deribit_options_snapshot_20251230T173115Z.csv"
DAILY = DATA / "deribit_daily_2026-02"
REFERENCE = SHARED / "reference"


def load_reference(name: str) -> dict[str, Any]:
    """A published-reference file of ``../shared/reference`` (see its README for the fields)."""
    return json.loads((REFERENCE / name).read_text())


def passes_reference(x: float, case: dict[str, Any]) -> bool:
    """The reference README's pass rule: ``|x - expected| <= abs + rel |expected|``, or the lower bound."""
    tol = case["tolerance"]
    expected = case["expected_value"]
    if case.get("comparison") == "lower_bound":
        return x >= expected - tol["abs"]
    return abs(x - expected) <= tol["abs"] + tol["rel"] * abs(expected)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-chain folder; a missing folder is an error, never a silent skip."""
    if not DATA.is_dir():
        pytest.fail(f"shared data folder {DATA} is missing: tests read real chains from ../shared/data")
    return DATA
