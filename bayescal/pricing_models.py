"""Pricing-model registry: each model binds a pure kernel to its parameters, supports and priors.

A model is registered by subclassing :class:`PricingModel` with a ``lookup_name``; specs refer to
models by that key, never by import path. Adding a model is one small class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pymc_extras.prior import Prior

from bayescal.conventions import EXPIRY_DIM
from bayescal.errors import SpecError
from bayescal.kernels.svi import svi_raw_total_variance
from bayescal.priors import PriorSet

REGISTRY: dict[str, type[PricingModel]] = {}


class PricingModel(ABC):
    """Base class: a pricing model as a piece of a PyMC model.

    Class attributes
    ----------------
    lookup_name : str
        Registry key used in specs (``model = "svi"``).
    parameters : tuple of str
        Names of the sampled parameters; a prior set must cover exactly these (plus the
        likelihood's noise parameters).
    supports : dict of str to str
        Support of each sampled parameter (``positive``, ``real``, ``correlation``, ``open_unit``).
    per_expiry : bool
        Whether every parameter has one value per expiry (dimension ``expiry``).
    """

    lookup_name: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]]
    supports: ClassVar[dict[str, str]]
    per_expiry: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if set(cls.parameters) != set(cls.supports):
            raise TypeError(f"{cls.__name__}: parameters and supports disagree")
        REGISTRY[cls.lookup_name] = cls

    @abstractmethod
    def implied_vol(self, priors: PriorSet, k: pt.TensorVariable, tau: pt.TensorVariable,
                    expiry_idx: pt.TensorVariable, tau_expiry: pt.TensorVariable) -> pt.TensorVariable:
        """Create the parameters (inside a ``pm.Model`` context) and return the model IV per quote."""

    @abstractmethod
    def implied_vol_on_grid(self, posterior: xr.Dataset, expiry: int, k: np.ndarray, tau: float) -> np.ndarray:
        """Model IV of every posterior draw on a log-moneyness grid, shape (chain, draw, n_k)."""


def with_dims(prior: Prior, dims: tuple[str, ...]) -> Prior:
    """A copy of ``prior`` with the given dims (prior-set files carry no dims)."""
    copy = prior.deepcopy()
    copy.dims = dims
    return copy


def get_pricing_model(key: str) -> PricingModel:
    """Instantiate a registered pricing model by key.

    Raises
    ------
    SpecError
        Naming the key and listing the registered ones.
    """
    if key not in REGISTRY:
        raise SpecError(f"unknown pricing model {key!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[key]()


class SviRaw(PricingModel):
    """Raw SVI per expiry (Gatheral 2004), sampled in a well-conditioned, arbitrage-minded parameterisation.

    Raw SVI total variance ``w(k) = a + b (rho (k - m) + sqrt((k - m)**2 + sigma**2))`` is not
    sampled directly: its natural-scale parameters give a badly conditioned posterior (see
    ``docs/models.md``). Per expiry with ``s = sqrt(tau)`` we sample

    ========================  ==============================================  ==========
    ``vmin``                  minimum total variance / tau (annualised)       positive
    ``wing_left``             left wing slope over width, ``b (1 - rho) / sigma``   positive
    ``wing_right``            right wing slope over width, ``b (1 + rho) / sigma``  positive
    ``m_scaled``              vertex location ``m`` / s                        real
    ``sigma_scaled``          curvature width ``sigma`` / s                    positive
    ========================  ==============================================  ==========

    and map back exactly: ``sigma = s sigma_scaled``, ``b = sigma (wing_left + wing_right) / 2``,
    ``rho = (wing_right - wing_left) / (wing_right + wing_left)``, ``m = s m_scaled`` and
    ``a = tau vmin - sigma**2 sqrt(wing_left wing_right)`` (since ``b sigma sqrt(1 - rho**2) =
    sigma**2 sqrt(wing_left wing_right)``). Positivity of the sampled parameters gives ``b >= 0``,
    ``|rho| < 1``, ``sigma > 0`` and ``a + b sigma sqrt(1 - rho**2) = tau vmin >= 0``
    (non-negative minimum variance, Gatheral & Jacquier 2014, section 3.1) by construction.

    Why these coordinates: a chain whose strikes do not reach far past the vertex pins the level
    and the curvature at the vertex, ``w''(m) = b / sigma``, but not ``b`` and ``sigma`` apart;
    in raw coordinates (or wing slopes plus sigma) that leaves a ridge along which slopes and
    sigma grow together (posterior correlation 0.95 on the 2025-12-30 BTC chain, with
    divergences). ``wing_left + wing_right = 2 w''(m)`` is what the data fix, and ``sigma_scaled``
    alone moves along the ridge, which a diagonal mass matrix handles. The wing slopes
    ``b (1 -/+ rho)`` are the asymptotic slopes of ``w``; Lee's (2004) moment bound requires them
    to be at most 2, which the default priors make overwhelmingly likely. The sqrt(tau) scalings
    follow the short-maturity scaling of the smile in ``k / sqrt(tau)``, so one prior serves all
    expiries. The raw parameters are stored as deterministics ``svi_a, svi_b, svi_rho, svi_m,
    svi_sigma``.
    """

    lookup_name = "svi"
    parameters = ("vmin", "wing_left", "wing_right", "m_scaled", "sigma_scaled")
    supports: ClassVar[dict[str, str]] = {
        "vmin": "positive", "wing_left": "positive", "wing_right": "positive",
        "m_scaled": "real", "sigma_scaled": "positive",
    }
    prefix = "svi"

    def implied_vol(self, priors, k, tau, expiry_idx, tau_expiry):  # noqa: D102 (documented on the base)
        p = {name: with_dims(priors.priors[name], (EXPIRY_DIM,)).create_variable(f"{self.prefix}_{name}")
             for name in self.parameters}
        s = pt.sqrt(tau_expiry)
        wl, wr = p["wing_left"], p["wing_right"]
        sigma = pm.Deterministic(f"{self.prefix}_sigma", s * p["sigma_scaled"], dims=EXPIRY_DIM)
        b = pm.Deterministic(f"{self.prefix}_b", sigma * (wl + wr) / 2, dims=EXPIRY_DIM)
        rho = pm.Deterministic(f"{self.prefix}_rho", (wr - wl) / (wr + wl), dims=EXPIRY_DIM)
        m = pm.Deterministic(f"{self.prefix}_m", s * p["m_scaled"], dims=EXPIRY_DIM)
        a = pm.Deterministic(
            f"{self.prefix}_a", tau_expiry * p["vmin"] - sigma**2 * pt.sqrt(wl * wr), dims=EXPIRY_DIM
        )
        w = svi_raw_total_variance(k, a[expiry_idx], b[expiry_idx], rho[expiry_idx], m[expiry_idx], sigma[expiry_idx])
        return pt.sqrt(w / tau)

    @cached_property
    def _w_function(self) -> Any:
        k = pt.vector("k")
        a, b, rho, m, sigma = (pt.tensor(n, shape=(None, 1), dtype="float64") for n in ("a", "b", "rho", "m", "sigma"))
        return pytensor.function([k, a, b, rho, m, sigma], svi_raw_total_variance(k, a, b, rho, m, sigma))

    def implied_vol_on_grid(self, posterior, expiry, k, tau):  # noqa: D102 (documented on the base)
        raw = [
            posterior[f"{self.prefix}_{n}"].isel({EXPIRY_DIM: expiry}).to_numpy()
            for n in ("a", "b", "rho", "m", "sigma")
        ]
        shape = raw[0].shape
        flat = [r.reshape(-1, 1) for r in raw]
        w = self._w_function(np.asarray(k, float), *flat)
        return np.sqrt(np.clip(w, 0.0, None) / tau).reshape(*shape, -1)
