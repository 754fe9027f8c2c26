"""The notebooks run end to end (small draw counts), so they cannot drift from the API."""

from __future__ import annotations

import runpy

import pytest
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, capsys):
    monkeypatch.setenv("BAYESCAL_DRAWS", "200")
    namespace = runpy.run_path(str(path), run_name="__main__")
    assert "result" in namespace
    assert namespace["result"].convergence["status"] in ("ok", "warn")
    assert "vol points" in capsys.readouterr().out
