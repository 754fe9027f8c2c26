"""Calibration specs: declarative TOML files in ``models/`` (model key, prior set, likelihood, filters, fit).

Loading a spec runs no code (registry keys, never import paths). A malformed spec raises one
:class:`~bayescal.errors.SpecError` listing every problem.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bayescal.errors import QuoteValidationError, SpecError
from bayescal.likelihoods import IVLikelihood, make_likelihood
from bayescal.market.filters import FilterSettings
from bayescal.paths import models_dir
from bayescal.priors import PriorSet, load_prior_set

FIT_METHODS = ("nuts", "advi", "fullrank_advi", "pathfinder", "map")


#: nutpie mass-matrix adaptations a spec may choose (nutpie's experimental "flow" is left out).
NUTS_ADAPTATIONS = ("diag", "draw_diag", "low_rank")
#: Where NUTS chains start (before nutpie's U(-1, 1) jitter in the unconstrained space).
NUTS_INITS = ("support_point", "map")


@dataclass(frozen=True)
class FitConfig:
    """Sampler settings (``[fit]`` table).

    Attributes
    ----------
    method : str
        ``"nuts"`` (nutpie, default), or an approximation: ``"advi"``, ``"fullrank_advi"`` (PyMC),
        ``"pathfinder"`` (pymc-extras), ``"map"`` (MAP + Laplace: the Gaussian at the
        unconstrained mode with the finite-difference Hessian of the exact gradient).
    chains, draws, tune : int
        Chains, kept draws per chain, and tuning draws per chain (NUTS). Approximate methods draw
        ``chains * draws`` samples in one chain.
    advi_iterations : int
        ADVI optimisation steps.
    learning_rate : float
        Adam learning rate of ADVI (the stack notes: the default optimiser had not converged).
    pathfinder_paths : int
        Number of Pathfinder paths.
    target_accept : float
        NUTS target acceptance rate in (0, 1).
    adaptation : str
        nutpie's mass-matrix adaptation: ``"diag"`` (default; from draw and gradient variances),
        ``"draw_diag"`` (draw variances, as Stan and PyMC) or ``"low_rank"`` (diagonal plus a
        low-rank correction that adapts to strong posterior correlations, e.g. Heston's kappa
        against theta).
    init : str
        Where NUTS chains start, before nutpie's U(-1, 1) jitter of every unconstrained coordinate:
        ``"support_point"`` (default; the priors' support points, as PyMC) or ``"map"`` (the MAP
        found by L-BFGS-B from the support points, as the ``map`` method's first step). ``"map"``
        is for posteriors with a minor mode that traps chains started far from the main one (Bates
        on the BTC chain, docs/models.md); R-hat still sees chains that leave the MAP's mode.
        Explicit ``initvals`` of :func:`bayescal.inference.fit` take precedence.
    random_seed : int
        Seed of the whole fit (sampling and posterior predictive).
    """

    method: str = "nuts"
    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    target_accept: float = 0.9
    adaptation: str = "diag"
    init: str = "support_point"
    random_seed: int = 20251230
    advi_iterations: int = 30000
    learning_rate: float = 0.01
    pathfinder_paths: int = 4

    def problems(self) -> list[str]:
        """Every invalid setting, as messages (empty when valid)."""
        out = []
        if self.method not in FIT_METHODS:
            out.append(f"fit.method {self.method!r} unknown; valid: {sorted(FIT_METHODS)}")
        for name in ("chains", "draws", "tune", "advi_iterations", "pathfinder_paths"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                out.append(f"fit.{name} must be a positive integer (got {value!r})")
        if not self.learning_rate > 0:
            out.append(f"fit.learning_rate must be > 0 (got {self.learning_rate!r})")
        if not 0 < self.target_accept < 1:
            out.append(f"fit.target_accept must be in (0, 1) (got {self.target_accept!r})")
        if self.adaptation not in NUTS_ADAPTATIONS:
            out.append(f"fit.adaptation {self.adaptation!r} unknown; valid: {list(NUTS_ADAPTATIONS)}")
        if self.init not in NUTS_INITS:
            out.append(f"fit.init {self.init!r} unknown; valid: {list(NUTS_INITS)}")
        return out


@dataclass(frozen=True)
class CalibrationSpec:
    """A frozen calibration spec.

    Attributes
    ----------
    name, description : str
    model : str
        Pricing-model registry key.
    model_settings : dict
        Settings of the pricing model (``[model_settings]`` table), e.g. SABR's fixed ``beta``.
    prior_set : PriorSet
    likelihood : IVLikelihood
    filters : FilterSettings
    fit : FitConfig
    source : str
        File it was read from (``""`` when built in code).
    """

    name: str
    model: str
    prior_set: PriorSet
    likelihood: IVLikelihood
    filters: FilterSettings = field(default_factory=FilterSettings)
    fit: FitConfig = field(default_factory=FitConfig)
    model_settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-serialisable form (the priors are embedded, not referenced)."""
        return {
            "schema_version": 1,
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "model_settings": self.model_settings,
            "priors": self.prior_set.to_dict(),
            "likelihood": {"kind": self.likelihood.lookup_name, **asdict(self.likelihood)},
            "filters": self.filters.to_dict(),
            "fit": asdict(self.fit),
        }

    @property
    def spec_id(self) -> str:
        """sha256[:16] of the canonical JSON form: identifies what was fitted."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_fit(self, **overrides: Any) -> CalibrationSpec:
        """A copy with some fit settings overridden (``None`` values are ignored).

        Raises
        ------
        SpecError
            If the resulting fit settings are invalid.
        """
        fit = replace(self.fit, **{k: v for k, v in overrides.items() if v is not None})
        if fit.problems():
            raise SpecError("invalid fit override(s):\n  - " + "\n  - ".join(fit.problems()))
        return replace(self, fit=fit)

    def with_likelihood(self, **overrides: Any) -> CalibrationSpec:
        """A copy with some likelihood settings overridden (same kind; ``None`` values are ignored).

        Raises
        ------
        SpecError
            If the resulting likelihood settings are invalid (:func:`bayescal.likelihoods.make_likelihood`).
        """
        settings = {"kind": self.likelihood.lookup_name, **asdict(self.likelihood)}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return replace(self, likelihood=make_likelihood(settings))


def resolve_spec_path(ref: str | Path) -> Path:
    """Path of a spec given as a file or as a name in ``models/`` (``"svi"`` -> ``models/svi.toml``)."""
    path = Path(ref)
    if path.suffix == ".toml" and path.is_file():
        return path
    candidate = models_dir() / f"{ref}.toml"
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in models_dir().glob("*.toml"))
    raise SpecError(f"spec {str(ref)!r} not found; available in {models_dir()}: {available}")


_TOP_KEYS = {"schema_version", "name", "description", "model", "model_settings", "priors", "likelihood", "filters",
             "fit"}


def load_spec(ref: str | Path) -> CalibrationSpec:
    """Load and validate a calibration spec.

    Parameters
    ----------
    ref : str or Path
        A ``.toml`` path or a spec name in ``models/``.

    Returns
    -------
    CalibrationSpec

    Raises
    ------
    SpecError
        One error listing every problem (unknown keys, unknown model or likelihood, a prior set
        that does not cover the model's parameters exactly once, invalid fit settings, ...).
    """
    from bayescal.pricing_models import (
        REGISTRY,  # registry import kept local: pricing models import PyMC
    )

    path = resolve_spec_path(ref)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from exc
    problems: list[str] = []
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; valid: {sorted(_TOP_KEYS)}")
    if raw.get("schema_version") != 1:
        problems.append(f"schema_version must be 1 (got {raw.get('schema_version')!r})")
    model = raw.get("model")
    if model not in REGISTRY:
        problems.append(f"model {model!r} unknown; registered: {sorted(REGISTRY)}")
    prior_set = likelihood = filters = fit = None
    try:
        prior_set = load_prior_set(raw.get("priors", f"{model}/default"))
    except SpecError as exc:
        problems.append(str(exc))
    try:
        likelihood = make_likelihood(raw.get("likelihood", {}))
    except SpecError as exc:
        problems.append(str(exc))
    try:
        filters = FilterSettings.from_dict(raw.get("filters", {}))
    except (QuoteValidationError, TypeError) as exc:
        problems.append(f"filters: {exc}")
    try:
        fit = FitConfig(**raw.get("fit", {}))
        problems.extend(fit.problems())
    except TypeError as exc:
        problems.append(f"fit: {exc}; valid keys: {sorted(FitConfig.__dataclass_fields__)}")
    model_settings = raw.get("model_settings", {})
    if model in REGISTRY:
        try:
            REGISTRY[model](**model_settings)
        except SpecError as exc:
            problems.append(str(exc))
    if prior_set is not None and likelihood is not None and model in REGISTRY:
        needed = set(REGISTRY[model].parameters) | set(likelihood.noise_parameters)
        have = set(prior_set.priors)
        if prior_set.model != model:
            problems.append(f"prior set {prior_set.name!r} is written for model {prior_set.model!r}, not {model!r}")
        if needed - have:
            problems.append(f"prior set {prior_set.name!r} lacks priors for {sorted(needed - have)}")
        if have - needed:
            problems.append(f"prior set {prior_set.name!r} has priors for unknown parameters {sorted(have - needed)}")
    if problems:
        raise SpecError(f"spec {path}:\n  - " + "\n  - ".join(problems))
    return CalibrationSpec(
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        model=model,
        prior_set=prior_set,
        likelihood=likelihood,
        filters=filters,
        fit=fit,
        model_settings=dict(model_settings),
        source=str(path),
    )
