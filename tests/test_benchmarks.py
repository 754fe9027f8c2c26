"""``benchmarks/run_all.py``: the one command that runs the benchmarks and regenerates ``docs/benchmarks.md``.

The benchmarks themselves are not part of the test suite (they take about 35 minutes); these tests
run the command on reduced sizes against a copy of the page, and check that the committed page was
written by it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import BEGIN, BENCHES, END, split_doc  # noqa: E402 (benchmarks/ is not a package)

DOC = ROOT / "docs" / "benchmarks.md"


def test_run_all_rewrites_only_its_blocks(tmp_path):
    original = DOC.read_text()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(original)
    subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick", "--only", "implied_vol", "--doc", str(doc)],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    new = doc.read_text()
    # the hand-written text around the generated section is kept byte for byte
    assert new.startswith(original.split(BEGIN)[0] + BEGIN)
    assert new.endswith(END + original.split(END, 1)[1])
    _, old_blocks, _ = split_doc(original)
    _, blocks, _ = split_doc(new)
    assert "quick run" in blocks["implied_vol"] and "quick run" not in old_blocks.get("implied_vol", "")
    assert "| 20,000 |" in blocks["implied_vol"]  # the quick size's row, with its measured figures
    for key, body in old_blocks.items():  # the benchmarks not rerun keep their blocks
        if key != "implied_vol":
            assert blocks[key] == body
    # the targets table is recomputed from the figures of every block, the new one included
    section = new.split(BEGIN)[1].split(END)[0]
    assert "| IV max error <= 1e-12 (well-conditioned quotes) | 20,000 random quotes |" in section
    assert "| gradient <= 5 ns per option and node at 200 options |" in section


def test_committed_page_is_a_full_generated_run():
    _, blocks, _ = split_doc(DOC.read_text())
    assert set(blocks) == {b.key for b in BENCHES}
    for key, body in blocks.items():
        assert "quick run" not in body, key
        assert "<!-- figures: {" in body, key
