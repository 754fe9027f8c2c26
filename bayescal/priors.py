"""Reviewed prior sets: TOML files in ``priors/`` using pymc-extras' ``Prior.to_dict`` schema.

A file looks like::

    schema_version = 1
    model = "svi"
    name = "crypto"
    description = "..."

    [priors.vmin]
    dist = "LogNormal"
    kwargs = { mu = -1.386, sigma = 0.75 }
    rationale = "minimum implied vol around 50%, 24%-106% at two sd"

Every prior carries a one-line ``rationale``. Loading runs no code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymc_extras.prior import Prior

from bayescal.errors import SpecError
from bayescal.paths import priors_dir


@dataclass(frozen=True)
class PriorSet:
    """A named set of priors for one pricing model (plus its likelihood's noise parameters).

    Attributes
    ----------
    name : str
        Prior-set reference, e.g. ``"svi/crypto"``.
    model : str
        Pricing-model registry key it is written for.
    priors : dict of str to pymc_extras.prior.Prior
        One prior per parameter (without dims; the model adds them).
    rationale : dict of str to str
        One line per parameter.
    description : str
        What the set is for.
    """

    name: str
    model: str
    priors: dict[str, Prior]
    rationale: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form, the same schema as the TOML files."""
        return {
            "schema_version": 1,
            "model": self.model,
            "name": self.name,
            "description": self.description,
            "priors": {
                key: {**prior.to_dict(), "rationale": self.rationale.get(key, "")}
                for key, prior in self.priors.items()
            },
        }


def resolve_prior_path(ref: str | Path) -> Path:
    """Path of a prior set given as a file path or as a reference ``"<model>/<name>"`` under ``priors/``."""
    path = Path(ref)
    if path.suffix == ".toml" and path.is_file():
        return path
    candidate = priors_dir() / f"{ref}.toml"
    if candidate.is_file():
        return candidate
    available = sorted(str(p.relative_to(priors_dir()).with_suffix("")) for p in priors_dir().rglob("*.toml"))
    raise SpecError(f"prior set {str(ref)!r} not found; available: {available}")


def load_prior_set(ref: str | Path) -> PriorSet:
    """Load and validate a prior-set TOML file.

    Parameters
    ----------
    ref : str or Path
        A ``.toml`` path or a reference ``"<model>/<name>"`` relative to ``priors/``.

    Returns
    -------
    PriorSet

    Raises
    ------
    SpecError
        Listing every problem: unreadable TOML, missing fields, a prior pymc-extras rejects, a
        prior without rationale.
    """
    path = resolve_prior_path(ref)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from exc
    problems: list[str] = []
    if raw.get("schema_version") != 1:
        problems.append(f"schema_version must be 1 (got {raw.get('schema_version')!r})")
    for key in ("model", "name"):
        if not isinstance(raw.get(key), str):
            problems.append(f"missing string field {key!r}")
    entries = raw.get("priors")
    priors: dict[str, Prior] = {}
    rationale: dict[str, str] = {}
    if not isinstance(entries, dict) or not entries:
        problems.append("missing [priors.<parameter>] tables")
        entries = {}
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            problems.append(f"priors.{key}: expected a table")
            continue
        entry = dict(entry)
        note = entry.pop("rationale", "")
        if not str(note).strip():
            problems.append(f"priors.{key}: missing one-line rationale")
        try:
            priors[key] = Prior.from_dict(entry)
        except Exception as exc:  # pymc-extras raises several types; report them all the same way
            problems.append(f"priors.{key}: {type(exc).__name__}: {exc}")
        rationale[key] = str(note)
    if problems:
        raise SpecError(f"prior set {path}:\n  - " + "\n  - ".join(problems))
    name = str(path.relative_to(priors_dir()).with_suffix("")) if path.is_relative_to(priors_dir()) else str(path)
    return PriorSet(name=name, model=raw["model"], priors=priors, rationale=rationale,
                    description=str(raw.get("description", "")))
