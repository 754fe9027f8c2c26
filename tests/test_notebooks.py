"""The notebooks are valid jupytext scripts without outputs and run end to end at CI size, so they cannot drift
from the API.

CI size: ``BAYESCAL_DRAWS=400`` (each notebook then uses 2 chains), the February track on its first
three days (``BAYESCAL_WINDOWS=3``: the third day gets the first carried prior when the second passes the
gate) and the LOO comparison on Heston, Bates, SSVI and SVI (``BAYESCAL_LOO_MODELS``; a requested model
that fails to fit fails the notebook). They run in this process (``runpy``) from ``notebooks/`` as the
working directory, as Jupyter would.
"""

from __future__ import annotations

import runpy

import jupytext
import nbformat
import pytest
from conftest import REPO

from bayescal.results import CalibrationResult

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
EXPECTED = {"quickstart.py", "heston_bates_ssvi_loo.py", "feb2026_track.py", "prior_sensitivity.py"}
CI_ENV = {"BAYESCAL_DRAWS": "400", "BAYESCAL_WINDOWS": "3", "BAYESCAL_LOO_MODELS": "heston,bates,ssvi,svi"}


def test_expected_notebooks_exist():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_jupytext_percent_script(path):
    text = path.read_text()
    notebook = jupytext.reads(text, fmt="py:percent")
    nbformat.validate(notebook)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# "), \
        "a notebook opens with a markdown title cell"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.get("outputs") for c in code), "no outputs are committed"
    assert "BAYESCAL_DRAWS" in text, "every notebook reads BAYESCAL_DRAWS"
    assert ".ipynb" not in {p.suffix for p in path.parent.iterdir()}, "commit the .py script, not an .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, capsys, tmp_path):
    for key, value in CI_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BAYESCAL_OUT", str(tmp_path / "out"))
    monkeypatch.chdir(path.parent)
    namespace = runpy.run_path(str(path), run_name="__main__")
    assert isinstance(namespace.get("result"), CalibrationResult), "a notebook leaves its main fit in `result`"
    assert namespace["result"].convergence["status"] in ("ok", "warn", "fail")
    assert "vol points" in capsys.readouterr().out
