"""The code base passes the project's ruff rules (pyflakes, pycodestyle, isort, bugbear, pyupgrade)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "bayescal", "tests", "notebooks"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
