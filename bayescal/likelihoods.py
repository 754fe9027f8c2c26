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
from bayescal.registry import register

LIKELIHOODS: dict[str, type[IVLikelihood]] = {}

#: How price-model outputs become model IVs (see :meth:`IVLikelihood.model_iv_from_price`).
PRICE_TO_IV = ("exact", "vega_map")

#: Noise-floor layouts: one ``sigma_obs`` per expiry, or one for the whole chain.
NOISE_FLOORS = ("per_expiry", "shared")

#: standard deviation of a uniform distribution on [bid, ask] in units of the half-spread
UNIFORM_SD_PER_HALF_SPREAD = 1.0 / 3.0**0.5


@dataclass(frozen=True)
class IVLikelihood:
    """Gaussian likelihood of mid implied vols around the model IV.

    ``mid_iv_i ~ Normal(iv_model_i, s_i)``, ``s_i = sqrt(sigma_obs[e(i)]**2 + (spread_weight *
    half_spread_iv_i)**2)``, where ``half_spread_iv = (ask_iv - bid_iv) / 2`` (decimal vol) and
    ``sigma_obs`` (prior key ``sigma_obs``; one per expiry by default) is the model-error floor. With
    the default ``spread_weight = 1/sqrt(3)`` a quote's spread term is the standard deviation of a
    uniform belief on [bid IV, ask IV], so wide far-wing markets weigh less than tight ATM ones.
    ``spread_weight = 0`` with ``noise_floor = "shared"`` gives every quote the same noise: the
    posterior mode is then the least-squares IV fit of the deterministic peers (QuantLib's or
    financepy's calibrators) regularized by the priors.

    Price-output models (Heston, Bates, Merton) reach the IV observable through
    :meth:`model_iv_from_price`, by default the exact Black-76 implied vol of the model price.

    Attributes
    ----------
    spread_weight : float
        Multiplier of the half-spread in the noise scale (>= 0).
    noise_floor : {"per_expiry", "shared"}
        ``"per_expiry"`` (default): one ``sigma_obs`` per expiry, so an expiry the model cannot fit
        (e.g. the shortest one for a diffusion) does not drag the others; ``"shared"``: one for all.
    price_to_iv : {"exact", "vega_map"}
        How a price model's output becomes a model IV: ``"exact"`` (default) inverts the model price
        in the graph (:func:`bayescal.kernels.black76_norm_implied_vol`); ``"vega_map"`` uses the
        first-order map around the mid, ``mid_iv + (c_model - c_mid) / vega_mid`` (cheaper, but it
        understates errors where the model is far from the quote, e.g. short-dated wings).
    """

    lookup_name: ClassVar[str] = "normal_iv"
    noise_parameters: ClassVar[tuple[str, ...]] = ("sigma_obs",)
    spread_weight: float = UNIFORM_SD_PER_HALF_SPREAD
    price_to_iv: str = "exact"
    noise_floor: str = "per_expiry"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(LIKELIHOODS, cls, "likelihood")

    def noise(
        self, priors: PriorSet, half_spread_iv: pt.TensorVariable, expiry_idx: pt.TensorVariable
    ) -> pt.TensorVariable:
        """Per-quote noise scale (decimal vol); creates ``sigma_obs`` (dims ``expiry``, or scalar if shared)."""
        from bayescal.pricing_models import with_dims

        if self.noise_floor == "shared":  # a copy: creating a variable stores state on the Prior
            floor = with_dims(priors.priors["sigma_obs"], ()).create_variable("sigma_obs")
        else:
            floor = with_dims(priors.priors["sigma_obs"], (EXPIRY_DIM,)).create_variable("sigma_obs")[expiry_idx]
        return pt.sqrt(floor**2 + (self.spread_weight * half_spread_iv) ** 2)

    def model_iv_from_price(self, c_model: pt.TensorVariable, k: pt.TensorVariable, tau: pt.TensorVariable,
                            cp: pt.TensorVariable, c_mid: pt.TensorVariable, mid_iv: pt.TensorVariable,
                            vega_mid: pt.TensorVariable) -> pt.TensorVariable:
        """Model IV per quote from a model price ``c_model = C / (D F)`` (shape (n_quote,)).

        ``vega_map``: ``mid_iv + (c_model - c_mid) / vega_mid`` (``vega_mid = phi(d1) sqrt(tau)`` at the
        mid IV, the vega of ``c`` per unit vol). ``exact``: :func:`bayescal.kernels.black76_norm_implied_vol`
        started from that value; its gradient is the implicit-function derivative ``1 / vega`` at
        the model IV (Black 1976; Jaeckel 2015). A model price without a meaningful implied vol
        (time value below 1e-12 of ``sqrt(F K)``, e.g. slightly negative from a Fourier kernel's
        rounding) continues linearly from the boundary vol with slope ``1 / vega_mid``, like the
        vega map.

        Parameters
        ----------
        c_model : TensorVariable, shape (n_quote,)
            Model price in units of the forward, undiscounted.
        k, tau, cp : TensorVariable, shape (n_quote,)
            Log-moneyness ``ln(K/F)``, time to expiry (years), +1 call / -1 put.
        c_mid, mid_iv, vega_mid : TensorVariable or numpy.ndarray, shape (n_quote,)
            Market mid price (units of the forward), mid IV (decimal) and vega of ``c`` per unit vol
            at the mid.

        Returns
        -------
        TensorVariable, shape (n_quote,)
            Model implied vol (decimal). Raises nothing itself; see
            :func:`bayescal.kernels.black76_norm_implied_vol` for its ``ValueError`` cases.
        """
        from bayescal.kernels.black import black76_norm_implied_vol

        vega_map = mid_iv + (c_model - c_mid) / vega_mid
        if self.price_to_iv == "vega_map":
            return vega_map
        return black76_norm_implied_vol(c_model, k, tau, cp, vega_map, continuation_vega=vega_mid)

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
    problems = []
    if not lik.spread_weight >= 0:
        problems.append(f"spread_weight must be >= 0 (got {lik.spread_weight!r})")
    if lik.price_to_iv not in PRICE_TO_IV:
        problems.append(f"price_to_iv must be one of {list(PRICE_TO_IV)} (got {lik.price_to_iv!r})")
    if lik.noise_floor not in NOISE_FLOORS:
        problems.append(f"noise_floor must be one of {list(NOISE_FLOORS)} (got {lik.noise_floor!r})")
    if problems:
        raise SpecError(f"likelihood {kind!r}: " + "; ".join(problems))
    return lik
