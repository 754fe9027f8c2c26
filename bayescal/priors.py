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

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc_extras.prior import Prior

from bayescal.errors import SpecError
from bayescal.paths import priors_dir

POSITIVE_DISTS = frozenset({"LogNormal", "HalfNormal", "Gamma", "HalfCauchy", "HalfStudentT", "Exponential",
                            "InverseGamma", "Weibull"})


def unconstrained_transform(prior: Prior) -> tuple[str, float, float]:
    """The map a parameter with this prior is sampled through: ``("log", 0, 0)`` for positive supports,
    ``("interval", lower, upper)`` for bounded ones, ``("identity", 0, 0)`` for the real line.

    Raises
    ------
    SpecError
        If the support of the distribution is not known to bayescal.
    """
    kwargs = prior.to_dict().get("kwargs", {})
    if "lower" in kwargs and "upper" in kwargs:
        return "interval", float(kwargs["lower"]), float(kwargs["upper"])
    if prior.distribution == "Beta":
        return "interval", 0.0, 1.0
    if prior.distribution in POSITIVE_DISTS:
        return "log", 0.0, 0.0
    if prior.distribution in ("Normal", "StudentT", "Cauchy"):
        return "identity", 0.0, 0.0
    raise SpecError(f"support of prior distribution {prior.distribution!r} unknown to the joint-prior transforms")


def to_unconstrained(values: np.ndarray, transform: tuple[str, float, float]) -> np.ndarray:
    """Constrained parameter values -> unconstrained (log / logit of the interval / identity)."""
    kind, lo, hi = transform
    if kind == "log":
        return np.log(values)
    if kind == "interval":
        u = (np.asarray(values) - lo) / (hi - lo)
        return np.log(u) - np.log1p(-u)
    return np.asarray(values, float)


def from_unconstrained(z: pt.TensorVariable, transform: tuple[str, float, float]) -> pt.TensorVariable:
    """Inverse of :func:`to_unconstrained`, in PyTensor."""
    kind, lo, hi = transform
    if kind == "log":
        return pt.exp(z)
    if kind == "interval":
        return lo + (hi - lo) * pt.sigmoid(z)
    return z


@dataclass(frozen=True)
class JointPrior:
    """A joint (multivariate normal or Student-t) prior over scalar parameters in unconstrained space.

    Built by :func:`bayescal.sequential.posterior_to_prior` from one window's posterior; keeps the
    correlations (e.g. Heston kappa-theta) that independent marginals lose.

    Attributes
    ----------
    variables : tuple of str
        Parameter names (prior-set keys), scalar parameters only.
    transforms : tuple of (str, float, float)
        Per variable, the unconstrained map (see :func:`unconstrained_transform`).
    mean : numpy.ndarray, shape (d,)
    cov : numpy.ndarray, shape (d, d)
        Symmetric positive definite.
    nu : float
        Degrees of freedom of a multivariate Student-t; ``0`` means Gaussian.
    note : str
        Provenance (window, inflation, drift, conflict fallback ...).
    """

    variables: tuple[str, ...]
    transforms: tuple[tuple[str, float, float], ...]
    mean: np.ndarray
    cov: np.ndarray
    nu: float = 0.0
    note: str = ""

    def create_variables(self, prefix: str) -> dict[str, pt.TensorVariable]:
        """Create the parameters (non-centred: ``z = mean + L eps``) inside a ``pm.Model`` context.

        The parameters are registered as deterministics named ``<prefix>_<variable>``, so the
        posterior has the same variable names whichever prior was used.
        """
        chol = np.linalg.cholesky(self.cov)
        eps = pm.Normal(f"{prefix}_joint_eps", 0.0, 1.0, shape=len(self.variables))
        if self.nu > 0:
            mix = pm.Gamma(f"{prefix}_joint_scale", alpha=self.nu / 2, beta=self.nu / 2)
            eps = eps / pt.sqrt(mix)
        z = pt.as_tensor_variable(self.mean) + pt.dot(pt.as_tensor_variable(chol), eps)
        return {
            name: pm.Deterministic(f"{prefix}_{name}", from_unconstrained(z[i], transform))
            for i, (name, transform) in enumerate(zip(self.variables, self.transforms, strict=True))
        }

    def to_dict(self) -> dict[str, Any]:
        """TOML-serialisable form (the ``[joint]`` table of a prior-set file)."""
        return {
            "variables": list(self.variables),
            "transforms": [list(t) for t in self.transforms],
            "mean": [float(v) for v in self.mean],
            "cov": [[float(v) for v in row] for row in self.cov],
            "nu": float(self.nu),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JointPrior:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        SpecError
            Listing every problem (lengths, a covariance that is not symmetric positive definite).
        """
        problems = []
        try:
            variables = tuple(str(v) for v in raw["variables"])
            transforms = tuple((str(t[0]), float(t[1]), float(t[2])) for t in raw["transforms"])
            mean = np.asarray(raw["mean"], float)
            cov = np.asarray(raw["cov"], float)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SpecError(f"joint prior: malformed table ({type(exc).__name__}: {exc})") from exc
        d = len(variables)
        if len(transforms) != d or mean.shape != (d,) or cov.shape != (d, d):
            problems.append(f"joint prior: {d} variables but transforms {len(transforms)}, mean {mean.shape}, "
                            f"cov {cov.shape}")
        elif not np.allclose(cov, cov.T) or np.any(np.linalg.eigvalsh(cov) <= 0):
            problems.append("joint prior: covariance is not symmetric positive definite")
        if not np.all(np.isfinite(mean)) or not np.all(np.isfinite(cov)):
            problems.append("joint prior: non-finite mean or covariance")
        if problems:
            raise SpecError("\n".join(problems))
        return cls(variables, transforms, mean, cov, float(raw.get("nu", 0.0)), str(raw.get("note", "")))


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
    joint : JointPrior or None
        A joint prior that replaces the marginals of the parameters it covers (sequential updating).
    """

    name: str
    model: str
    priors: dict[str, Prior]
    rationale: dict[str, str] = field(default_factory=dict)
    description: str = ""
    joint: JointPrior | None = None

    def covered(self) -> set[str]:
        """Every parameter the set gives a prior for (marginals and joint)."""
        return set(self.priors) | set(self.joint.variables if self.joint else ())

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form, the same schema as the TOML files."""
        out = {
            "schema_version": 1,
            "model": self.model,
            "name": self.name,
            "description": self.description,
            "priors": {
                key: {**prior.to_dict(), "rationale": self.rationale.get(key, "")}
                for key, prior in self.priors.items()
            },
        }
        if self.joint is not None:
            out["joint"] = self.joint.to_dict()
        return out


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
    joint = None
    if "joint" in raw:
        try:
            joint = JointPrior.from_dict(raw["joint"])
        except SpecError as exc:
            problems.append(str(exc))
    if problems:
        raise SpecError(f"prior set {path}:\n  - " + "\n  - ".join(problems))
    name = str(path.relative_to(priors_dir()).with_suffix("")) if path.is_relative_to(priors_dir()) else str(path)
    return PriorSet(name=name, model=raw["model"], priors=priors, rationale=rationale,
                    description=str(raw.get("description", "")), joint=joint)
