"""Where the declarative files live: ``models/`` (calibration specs) and ``priors/`` (prior sets).

They sit at the repository root next to the package (installed in editable mode by
``scripts/setup.sh``). ``BAYESCAL_HOME`` overrides the root.
"""

from __future__ import annotations

import os
from pathlib import Path

from bayescal.errors import SpecError


def project_root() -> Path:
    """Root holding ``models/`` and ``priors/`` (``$BAYESCAL_HOME`` or the package's parent folder).

    Raises
    ------
    SpecError
        If neither location has a ``models/`` and a ``priors/`` folder.
    """
    candidates = [Path(os.environ["BAYESCAL_HOME"])] if os.environ.get("BAYESCAL_HOME") else []
    candidates.append(Path(__file__).resolve().parents[1])
    for root in candidates:
        if (root / "models").is_dir() and (root / "priors").is_dir():
            return root
    raise SpecError(
        f"cannot find the models/ and priors/ folders in {[str(c) for c in candidates]}; "
        "install bayescal from its repository (scripts/setup.sh) or set BAYESCAL_HOME"
    )


def models_dir() -> Path:
    """The ``models/`` folder of calibration specs."""
    return project_root() / "models"


def priors_dir() -> Path:
    """The ``priors/`` folder of reviewed prior sets."""
    return project_root() / "priors"
