"""Machine-readable output of the benchmark scripts, read by ``benchmarks/run_all.py``.

Every script prints its tables for a reader at the terminal; with ``--json PATH`` it also writes the
same tables (cells formatted as printed) together with the raw figures the targets are checked on::

    {"script": "bench_heston.py", "argv": [...], "tables": [{"title", "columns", "rows", "notes"}],
     "figures": {...}}

``run_all.py`` renders the tables as Markdown into ``docs/benchmarks.md`` and compares the figures
with the targets of issue 8.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bayescal.atomic import write_text_atomic


class BenchResults:
    """Tables and figures of one benchmark run."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.tables: list[dict] = []
        self.figures: dict = {}

    def table(self, title: str, columns: list[str]) -> dict:
        """Start a table; append rows (lists of formatted cells) to ``table["rows"]``."""
        table = {"title": title, "columns": list(columns), "rows": [], "notes": []}
        self.tables.append(table)
        return table

    def write(self, path: str | Path | None) -> None:
        """Write the results as JSON to ``path`` atomically (nothing when ``path`` is None)."""
        if path is None:
            return
        payload = {"script": self.script, "argv": sys.argv[1:], "tables": self.tables, "figures": self.figures}
        write_text_atomic(path, json.dumps(payload, indent=1, default=float) + "\n")
