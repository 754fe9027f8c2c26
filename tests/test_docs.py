"""The documentation site builds with ``mkdocs build --strict`` (every warning an error) and says what the code does."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO

DOCS = REPO / "docs"


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for page in ("index.html", "getting-started/index.html", "concepts/index.html", "conventions/index.html",
                 "data/index.html", "models/index.html", "priors/index.html", "reports/index.html",
                 "notebooks/index.html", "cli/index.html", "benchmarks/index.html", "api/kernels/index.html",
                 "api/pricing_models/index.html", "api/inference/index.html", "api/sequential/index.html",
                 "api/market/index.html", "api/report/index.html"):
        assert (site / page).is_file(), page
    # API pages are generated from the docstrings (mkdocstrings), the CLI page from the parser
    api = (site / "api/pricing_models/index.html").read_text()
    assert "get_pricing_model" in api and "implied_vol_on_grid" in api
    assert "run_track" in (site / "api/sequential/index.html").read_text()
    assert "heston_norm_price" in (site / "api/kernels/index.html").read_text()
    cli = (site / "cli/index.html").read_text()
    assert "bayescal-cli-reference" not in cli
    for command in ("calibrate", "report", "track", "compare", "prior-predictive", "fetch"):
        assert f"bayescal {command}" in cli, command
    assert "--underlying" in cli and "--chains-per-fit" in cli
    assert not (site / "hooks").exists()
    # the prior-sets page is generated from priors/<model>/<set>.toml: every file is on it
    priors = (site / "priors/index.html").read_text()
    assert "bayescal-prior-sets" not in priors
    missing = [f.relative_to(REPO).as_posix() for f in sorted((REPO / "priors").glob("*/*.toml"))
               if f.relative_to(REPO).as_posix() not in priors]
    assert not missing, f"prior-sets page does not list {missing}"


def _commands(markdown: str) -> list[str]:
    """Lines of the shell code blocks that run something (comments and blanks dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_getting_started_has_the_readme_commands():
    readme = _commands((REPO / "README.md").read_text().split("## What it does")[0])
    assert len(readme) == 2, readme
    page = _commands((DOCS / "getting-started.md").read_text())
    assert page[:2] == readme


def test_docs_cover_the_registered_models():
    from bayescal.pricing_models import REGISTRY

    models = (DOCS / "models.md").read_text()
    missing = [key for key in REGISTRY if f"`{key}`" not in models]
    assert not missing, f"docs/models.md does not mention registered model(s) {missing}"
