"""Likelihoods on implied vol, with per-quote noise that grows with the bid-ask spread.

Registered by key (``[likelihood] kind = "normal_iv"`` in a spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pymc as pm
import pytensor.tensor as pt

from bayescal.conventions import EXPIRY_DIM, QUOTE_DIM
from bayescal.errors import SpecError
from bayescal.priors import PriorSet

LIKELIHOODS: dict[str, type[IVLikelihood]] = {}

#: standard deviation of a uniform distribution on [bid, ask] in units of the half-spread
UNIFORM_SD_PER_HALF_SPREAD = 1.0 / 3.0**0.5


@dataclass(frozen=True)
class IVLikelihood:
    """Gaussian likelihood of mid implied vols around the model IV.

    ``mid_iv_i ~ Normal(iv_model_i, s_i)``, ``s_i = sqrt(sigma_obs[e(i)]**2 + (spread_weight *
    half_spread_iv_i)**2)``, where ``half_spread_iv = (ask_iv - bid_iv) / 2`` (decimal vol) and
    ``sigma_obs`` (one per expiry, prior key ``sigma_obs``) is the model-error floor. With the
    default ``spread_weight = 1/sqrt(3)`` a quote's spread term is the standard deviation of a
    uniform belief on [bid IV, ask IV], so wide far-wing markets weigh less than tight ATM ones.

    Attributes
    ----------
    spread_weight : float
        Multiplier of the half-spread in the noise scale (>= 0).
    """

    lookup_name: ClassVar[str] = "normal_iv"
    noise_parameters: ClassVar[tuple[str, ...]] = ("sigma_obs",)
    spread_weight: float = UNIFORM_SD_PER_HALF_SPREAD

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LIKELIHOODS[cls.lookup_name] = cls

    def noise(
        self, priors: PriorSet, half_spread_iv: pt.TensorVariable, expiry_idx: pt.TensorVariable
    ) -> pt.TensorVariable:
        """Per-quote noise scale (decimal vol); creates ``sigma_obs`` with dims ``expiry``."""
        from bayescal.pricing_models import with_dims

        sigma_obs = with_dims(priors.priors["sigma_obs"], (EXPIRY_DIM,)).create_variable("sigma_obs")
        return pt.sqrt(sigma_obs[expiry_idx] ** 2 + (self.spread_weight * half_spread_iv) ** 2)

    def observe(self, iv_model: pt.TensorVariable, noise: pt.TensorVariable, mid_iv: pt.TensorVariable) -> None:
        """Add the observed variable ``iv_obs`` (dims ``quote``) to the current model."""
        pm.Normal("iv_obs", mu=iv_model, sigma=noise, observed=mid_iv, dims=QUOTE_DIM)


@dataclass(frozen=True)
class StudentTIVLikelihood(IVLikelihood):
    """Robust variant: Student-t with ``nu`` degrees of freedom instead of the Gaussian (same noise scale)."""

    lookup_name: ClassVar[str] = "student_t_iv"
    nu: float = 4.0

    def observe(self, iv_model, noise, mid_iv):  # noqa: D102 (documented on the base)
        pm.StudentT("iv_obs", nu=self.nu, mu=iv_model, sigma=noise, observed=mid_iv, dims=QUOTE_DIM)


LIKELIHOODS[IVLikelihood.lookup_name] = IVLikelihood


def make_likelihood(settings: dict[str, Any]) -> IVLikelihood:
    """Build a likelihood from a spec's ``[likelihood]`` table.

    Raises
    ------
    SpecError
        Unknown ``kind`` (lists the registered ones) or unknown / invalid settings.
    """
    settings = dict(settings)
    kind = settings.pop("kind", IVLikelihood.lookup_name)
    if kind not in LIKELIHOODS:
        raise SpecError(f"unknown likelihood kind {kind!r}; registered: {sorted(LIKELIHOODS)}")
    cls = LIKELIHOODS[kind]
    unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
    if unknown:
        raise SpecError(f"likelihood {kind!r}: unknown setting(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}")
    lik = cls(**settings)
    if lik.spread_weight < 0:
        raise SpecError(f"likelihood {kind!r}: spread_weight must be >= 0 (got {lik.spread_weight})")
    return lik
