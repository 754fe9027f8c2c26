"""Pricing-model registry: each model binds a pure kernel to its parameters, supports and priors.

A model is registered by subclassing :class:`PricingModel` with a ``lookup_name``; specs refer to
models by that key, never by import path. Adding a model is one small class: it declares the
parameters a prior set must cover, creates them (and any deterministic transforms) in
:meth:`PricingModel.create_parameters`, and evaluates its kernel in :meth:`PricingModel.kernel`.
The shared machinery (gathering per-expiry parameters per quote, the link to the implied-vol
likelihood, evaluation on a strike grid for bands) lives here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pymc_extras.prior import Prior

from bayescal.compilation import compile_mode, defined_in_bayescal, recipe_function
from bayescal.conventions import EXPIRY_DIM
from bayescal.errors import SpecError
from bayescal.kernels.bates import bates_norm_price
from bayescal.kernels.heston import heston_norm_price
from bayescal.kernels.merton import merton_max_poisson_mean, merton_norm_price
from bayescal.kernels.sabr import sabr_alpha_from_atm_vol, sabr_atm_elasticity, sabr_lognormal_vol
from bayescal.kernels.surface import DEFAULT_SURFACE_NODES, bates_surface_norm_price, heston_surface_norm_price
from bayescal.kernels.svi import ssvi_phi_power_law, ssvi_total_variance, svi_raw_total_variance
from bayescal.market.filters import near_money_iv
from bayescal.market.implied_vol import implied_vol_black76
from bayescal.priors import PriorSet
from bayescal.registry import register

REGISTRY: dict[str, type[PricingModel]] = {}
#: Compiled kernel functions by (model, settings, purpose): see :meth:`PricingModel.compiled`.
_COMPILED: dict[tuple[str, str, str], Any] = {}

#: maximum number of posterior draws used for strike-grid bands of price-output models
GRID_MAX_DRAWS = 1000


def with_dims(prior: Prior, dims: tuple[str, ...]) -> Prior:
    """A copy of ``prior`` with the given dims (prior-set files carry no dims)."""
    copy = prior.deepcopy()
    copy.dims = dims
    return copy


class PricingModel(ABC):
    """Base class: a pricing model as a piece of a PyMC model.

    Class attributes
    ----------------
    lookup_name : str
        Registry key used in specs (``model = "svi"``); also the prefix of PyMC variable names.
    parameters : tuple of str
        Sampled parameters; a prior set must cover exactly these (plus the likelihood's noise).
    per_expiry : frozenset of str
        Sampled parameters that have one value per expiry (dimension ``expiry``).
    supports : dict of str to str
        Support of each sampled parameter (``positive``, ``real``, ``correlation`` and ``signed_unit``
        for (-1, 1), ``unit`` for (0, 1)).
    kernel_inputs : tuple of str
        Names of the (sampled or deterministic) variables the kernel takes, stored in the
        posterior as ``<lookup_name>_<name>``.
    per_expiry_inputs : frozenset of str
        Kernel inputs with dimension ``expiry`` (gathered per quote with ``expiry_idx``).
    output : str
        ``"iv"`` (the kernel returns implied vol) or ``"norm_price"`` (undiscounted price / forward).
    """

    lookup_name: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]]
    per_expiry: ClassVar[frozenset[str]] = frozenset()
    supports: ClassVar[dict[str, str]]
    kernel_inputs: ClassVar[tuple[str, ...]]
    per_expiry_inputs: ClassVar[frozenset[str]] = frozenset()
    output: ClassVar[str] = "iv"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if set(cls.parameters) != set(cls.supports) or not cls.per_expiry <= set(cls.parameters):
            raise TypeError(f"{cls.__name__}: parameters, supports and per_expiry disagree")
        if cls.output not in ("iv", "norm_price"):
            raise TypeError(f"{cls.__name__}: output must be 'iv' or 'norm_price'")
        register(REGISTRY, cls, "pricing model")

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self.settings_defaults()))
        if unknown:
            raise SpecError(
                f"model {self.lookup_name!r}: unknown setting(s) {unknown}; valid: {sorted(self.settings_defaults())}"
            )
        self.settings = {**self.settings_defaults(), **settings}

    @classmethod
    def settings_defaults(cls) -> dict[str, Any]:
        """Model settings a spec may set in its ``[model_settings]`` table (none by default)."""
        return {}

    # --- what a model implements -------------------------------------------------------------------
    def sample_parameters(self, priors: PriorSet) -> dict[str, pt.TensorVariable]:
        """Create every sampled parameter from the prior set (inside a ``pm.Model`` context).

        Parameters covered by the prior set's joint prior (sequential updating) come from it and are
        stored as deterministics of the same names; the others from their marginal priors.

        Raises
        ------
        SpecError
            If the joint prior covers a per-expiry parameter (expiries change between windows).
        """
        joint = priors.joint
        from_joint: dict[str, pt.TensorVariable] = {}
        if joint is not None:
            bad = sorted(set(joint.variables) & self.per_expiry)
            if bad:
                raise SpecError(f"joint prior covers per-expiry parameter(s) {bad} of model {self.lookup_name!r}")
            from_joint = joint.create_variables(self.lookup_name)
        return {
            name: from_joint[name] if name in from_joint else
            with_dims(priors.priors[name], (EXPIRY_DIM,) if name in self.per_expiry else ())
            .create_variable(self.name(name))
            for name in self.parameters
        }

    @abstractmethod
    def create_parameters(self, priors: PriorSet, tau_expiry: pt.TensorVariable) -> dict[str, pt.TensorVariable]:
        """Create the parameters and return the kernel inputs (each stored as ``<prefix>_<name>``)."""

    @abstractmethod
    def kernel(self, k: pt.TensorVariable, tau: pt.TensorVariable, cp: pt.TensorVariable,
               **inputs: pt.TensorVariable) -> pt.TensorVariable:
        """Model output (IV or normalised price) per quote from per-quote kernel inputs."""

    def input_values(self, parameters: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Kernel-input values (numpy) from sampled-parameter values, for simulating chains from a truth.

        The default serves models whose kernel inputs are sampled parameters; models with derived
        inputs that do not depend on the expiries (:class:`LognormalJumps`) override it.

        Raises
        ------
        SpecError
            If a kernel input is not a parameter and the model has no map to it.
        """
        missing = sorted(set(self.kernel_inputs) - set(parameters))
        if missing:
            raise SpecError(f"model {self.lookup_name!r}: kernel input(s) {missing} are not sampled parameters "
                            f"and the model has no map from {sorted(parameters)} to them")
        return {n: parameters[n] for n in self.kernel_inputs}

    # --- shared machinery ----------------------------------------------------------------------------
    def name(self, parameter: str) -> str:
        """PyMC variable name of a parameter or kernel input."""
        return f"{self.lookup_name}_{parameter}"

    def deterministic(self, name: str, value: pt.TensorVariable, per_expiry: bool) -> pt.TensorVariable:
        """Register a kernel input as a deterministic (stored in the posterior)."""
        return pm.Deterministic(self.name(name), value, dims=EXPIRY_DIM if per_expiry else None)

    def model_output(self, priors: PriorSet, k: pt.TensorVariable, tau: pt.TensorVariable, cp: pt.TensorVariable,
                     expiry_idx: pt.TensorVariable, tau_expiry: pt.TensorVariable,
                     quotes: xr.Dataset | None = None) -> pt.TensorVariable:
        """Create the parameters and return the model output per quote (see :attr:`output`).

        ``quotes`` (the used quotes, numpy-backed) lets a model build a likelihood-specific fast
        graph from the data (see :class:`HestonSurface`); the default ignores it.
        """
        inputs = self.create_parameters(priors, tau_expiry)
        gathered = {n: (v[expiry_idx] if n in self.per_expiry_inputs else v) for n, v in inputs.items()}
        return self.kernel(k, tau, cp, **gathered)

    #: True when :meth:`model_output` uses a likelihood-specific kernel that differs from :meth:`kernel`
    #: (checked after every fit by :meth:`likelihood_kernel_check`).
    separate_likelihood_kernel: ClassVar[bool] = False

    def likelihood_kernel_check(self, posterior: xr.Dataset, constant_data: xr.Dataset,
                                max_draws: int = 40) -> dict[str, float]:
        """Largest difference between the likelihood's prices and :meth:`kernel` on posterior draws.

        Only for models with :attr:`separate_likelihood_kernel`; others return ``{}``. Compares the
        stored ``norm_price_model`` with the per-quote kernel on up to ``max_draws`` evenly thinned
        draws.

        Returns
        -------
        dict
            ``kernel_max_abs_error`` (units of the forward) and ``kernel_max_iv_error_vol_points``
            (the same divided by the quote's Black vega at the mid, x100), ``kernel_draws_checked``.
        """
        if not self.separate_likelihood_kernel:
            return {}
        stacked = posterior.stack(sample=("chain", "draw"))
        keep = np.unique(np.linspace(0, stacked.sizes["sample"] - 1, max_draws).round().astype(int))
        params = {n: stacked[self.name(n)].to_numpy()[keep][:, None] for n in self.kernel_inputs}
        k, tau, cp = (constant_data[n].to_numpy()[None, :] for n in ("k", "tau", "cp"))
        exact = self._check_function(k, tau, cp, *(params[n] for n in self.kernel_inputs))
        fast = stacked["norm_price_model"].to_numpy().T[keep]
        diff = np.abs(np.asarray(exact) - fast)
        return {"kernel_max_abs_error": float(diff.max()),
                "kernel_max_iv_error_vol_points": float(100 * np.max(diff / constant_data["vega_mid"].to_numpy())),
                "kernel_draws_checked": int(keep.size)}

    def compiled(self, purpose: str, build: Callable[[], Any]) -> Any:
        """The compiled function ``build()`` for ``purpose``, built once per process per model and settings.

        The post-fit checks and greeks compile data-independent graphs of the model's kernel (quotes
        and parameters are inputs), so repeated fits (tracks, studies, benchmarks) reuse them. Models
        defined in bayescal also cache them across processes by model, settings and purpose
        (:func:`bayescal.compilation.recipe_function`), which skips building the graphs.
        """
        key = (self.lookup_name, repr(sorted(self.settings.items())), purpose)
        if key not in _COMPILED:
            if defined_in_bayescal(self):
                recipe = ("pricing model", f"{type(self).__module__}.{type(self).__qualname__}", *key)
                _COMPILED[key] = recipe_function(recipe, build)
            else:  # code outside bayescal is not in the recipe cache's source fingerprint
                _COMPILED[key] = build()
        return _COMPILED[key]

    @property
    def _check_function(self) -> Any:
        return self.compiled("kernel_check", self._build_check_function)

    @property
    def _grid_function(self) -> Any:
        return self.compiled("grid", self._build_grid_function)

    def _build_check_function(self) -> Any:
        k, tau, cp = (pt.tensor(n, shape=(1, None), dtype="float64") for n in ("k", "tau", "cp"))
        params = {n: pt.tensor(n, shape=(None, 1), dtype="float64") for n in self.kernel_inputs}
        out = self.kernel(k, tau, cp, **params)
        return pytensor.function([k, tau, cp, *params.values()], out, on_unused_input="ignore", mode=compile_mode())

    def _build_grid_function(self) -> Any:
        k = pt.vector("k")
        cp = pt.vector("cp")
        tau = pt.scalar("tau")
        params = {n: pt.tensor(n, shape=(None, 1), dtype="float64") for n in self.kernel_inputs}
        out = self.kernel(k[None, :], tau, cp[None, :], **params)
        return pytensor.function([k, tau, cp, *params.values()], out, on_unused_input="ignore", mode=compile_mode())

    def _build_grid_derivatives_function(self) -> Any:
        # k and cp per (draw, grid point): elementwise inputs give elementwise derivatives
        k, cp = pt.matrix("k"), pt.matrix("cp")
        tau = pt.scalar("tau")
        params = {n: pt.tensor(n, shape=(None, 1), dtype="float64") for n in self.kernel_inputs}
        out = self.kernel(k, tau, cp, **params)
        d_k = pt.grad(out.sum(), k)
        d_kk = pt.grad(d_k.sum(), k)
        return pytensor.function([k, tau, cp, *params.values()], [out, d_k, d_kk], on_unused_input="ignore",
                                 mode=compile_mode())

    def expiry_draws(self, posterior: xr.Dataset, expiry: int, max_draws: int | None = None) -> list[np.ndarray]:
        """The kernel inputs of posterior draws for one expiry, in :attr:`kernel_inputs` order.

        Parameters
        ----------
        posterior : xarray.Dataset
            Posterior draws (chain, draw, ...).
        expiry : int
            Expiry index (selects per-expiry parameters).
        max_draws : int, optional
            At most this many evenly thinned draws (all draws when ``None``).

        Returns
        -------
        list of numpy.ndarray, each shape (n_draws_used, 1)
        """
        draws = []
        for n in self.kernel_inputs:
            var = posterior[self.name(n)]
            if n in self.per_expiry_inputs:
                var = var.isel({EXPIRY_DIM: expiry})
            draws.append(var.to_numpy().reshape(-1, 1))
        n_draws = draws[0].shape[0]
        if max_draws is not None and n_draws > max_draws:
            keep = np.linspace(0, n_draws - 1, max_draws).round().astype(int)
            draws = [v[keep] for v in draws]
        return draws

    def implied_vol_on_grid(self, posterior: xr.Dataset, expiry: int, k: np.ndarray, tau: float,
                            max_draws: int = GRID_MAX_DRAWS) -> np.ndarray:
        """Model IV of posterior draws on a log-moneyness grid, shape (n_draws_used, n_k).

        IV-output models use every draw; price-output models use at most ``max_draws`` (default
        :data:`GRID_MAX_DRAWS`) evenly thinned draws and invert prices with :func:`bayescal.market.implied_vol_black76`
        (out-of-the-money side; grid points whose price has no IV are NaN).
        """
        k = np.asarray(k, float)
        cp = np.where(k >= 0, 1.0, -1.0)
        thin = max_draws if self.output == "norm_price" else None
        out = self._grid_function(k, float(tau), cp, *self.expiry_draws(posterior, expiry, thin))
        if self.output == "iv":
            return np.asarray(out)
        iv, _ = implied_vol_black76(np.asarray(out), 1.0, np.exp(k)[None, :], tau, cp[None, :])
        return iv

    def norm_price_on_grid(self, posterior: xr.Dataset, expiry: int, k: np.ndarray, tau: float,
                           max_draws: int = GRID_MAX_DRAWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Out-of-the-money normalised prices of posterior draws on a grid, with their first two k-derivatives.

        Price-output models only. The derivatives are the kernel graph's own (automatic
        differentiation; for the Fourier kernels the integrals of the integrand times ``1 - a`` and
        ``(1 - a)**2``), exact to the kernel's accuracy, unlike finite differences of prices on the
        grid, which amplify the quadrature's round-off by the inverse squared grid step.

        Parameters
        ----------
        posterior : xarray.Dataset
            Posterior draws (chain, draw, ...).
        expiry : int
            Expiry index (selects per-expiry parameters).
        k : numpy.ndarray, shape (n_k,)
            Log-moneyness grid ``ln(K/F)``; puts below 0, calls at and above.
        tau : float
            Time to expiry in years.
        max_draws : int
            At most this many evenly thinned draws.

        Returns
        -------
        (c, dc_dk, d2c_dk2) : tuple of numpy.ndarray, each shape (n_draws_used, n_k)
            ``C / (D F)`` and its derivatives with respect to ``k`` at fixed ``tau``.

        Raises
        ------
        TypeError
            For IV-output models.
        """
        if self.output != "norm_price":
            raise TypeError(f"{self.lookup_name}: norm_price_on_grid is for price-output models "
                            f"(output {self.output!r})")
        draws = self.expiry_draws(posterior, expiry, max_draws)
        k = np.broadcast_to(np.asarray(k, float), (draws[0].shape[0], np.size(k)))
        fn = self.compiled("grid_derivatives", self._build_grid_derivatives_function)
        return tuple(np.asarray(x) for x in fn(k, float(tau), np.where(k >= 0, 1.0, -1.0), *draws))


def get_pricing_model(key: str, **settings: Any) -> PricingModel:
    """Instantiate a registered pricing model by key.

    Raises
    ------
    SpecError
        Naming the key and listing the registered ones, or naming unknown settings.
    """
    if key not in REGISTRY:
        raise SpecError(f"unknown pricing model {key!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[key](**settings)


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
    per_expiry = frozenset(parameters)
    supports: ClassVar[dict[str, str]] = {
        "vmin": "positive", "wing_left": "positive", "wing_right": "positive",
        "m_scaled": "real", "sigma_scaled": "positive",
    }
    kernel_inputs = ("a", "b", "rho", "m", "sigma")
    per_expiry_inputs = frozenset(kernel_inputs)

    def create_parameters(self, priors, tau_expiry):  # noqa: D102 (documented on the base)
        p = self.sample_parameters(priors)
        s = pt.sqrt(tau_expiry)
        wl, wr = p["wing_left"], p["wing_right"]
        sigma = s * p["sigma_scaled"]
        values = {
            "a": tau_expiry * p["vmin"] - sigma**2 * pt.sqrt(wl * wr),
            "b": sigma * (wl + wr) / 2,
            "rho": (wr - wl) / (wr + wl),
            "m": s * p["m_scaled"],
            "sigma": sigma,
        }
        return {n: self.deterministic(n, v, per_expiry=True) for n, v in values.items()}

    def kernel(self, k, tau, cp, *, a, b, rho, m, sigma):  # noqa: D102 (documented on the base)
        return pt.sqrt(svi_raw_total_variance(k, a, b, rho, m, sigma) / tau)


class Black76Flat(PricingModel):
    """One flat Black-76 implied vol per expiry (the null model of a smile).

    ``iv(k, tau_e) = iv_e``. Useful as the baseline in model comparison and as a sanity check
    of the data path (Black 1976).
    """

    lookup_name = "black76"
    parameters = ("iv",)
    per_expiry = frozenset(parameters)
    supports: ClassVar[dict[str, str]] = {"iv": "positive"}
    kernel_inputs = ("iv",)
    per_expiry_inputs = frozenset(kernel_inputs)

    def create_parameters(self, priors, tau_expiry):  # noqa: D102 (documented on the base)
        return self.sample_parameters(priors)

    def kernel(self, k, tau, cp, *, iv):  # noqa: D102 (documented on the base)
        return iv + pt.zeros_like(k)


class SsviPowerLaw(PricingModel):
    """SSVI surface with power-law phi (Gatheral & Jacquier 2014, Definition 4.1 and eq. 4.5).

    ``w(k, theta_t) = theta_t / 2 (1 + rho phi k + sqrt((phi k + rho)**2 + 1 - rho**2))`` with
    ``phi(theta) = eta / (theta**gamma (1 + theta)**(1 - gamma))``. The ATM total variances
    ``theta_t`` are built increasing in expiry (calendar no-arbitrage needs ``theta_t``
    non-decreasing, GJ2014 Theorem 4.1): ``theta_1 = tau_1 fwd_var_1`` and ``theta_i =
    theta_(i-1) + (tau_i - tau_(i-1)) fwd_var_i`` with positive annualised forward variances
    ``fwd_var`` (sampled, one per expiry). ``rho``, ``eta`` and ``gamma`` are shared by the surface.
    With ``gamma`` in (0, 1/2] the surface is free of calendar arbitrage, and of butterfly
    arbitrage if ``eta (1 + |rho|) <= 2`` (GJ2014 Remark after Corollary 4.1); the posterior share
    meeting that bound is reported, not imposed.
    """

    lookup_name = "ssvi"
    parameters = ("fwd_var", "rho", "eta", "gamma")
    per_expiry = frozenset({"fwd_var"})
    supports: ClassVar[dict[str, str]] = {"fwd_var": "positive", "rho": "correlation", "eta": "positive",
                                          "gamma": "unit"}
    kernel_inputs = ("theta", "rho", "eta", "gamma")
    per_expiry_inputs = frozenset({"theta"})

    def create_parameters(self, priors, tau_expiry):  # noqa: D102 (documented on the base)
        p = self.sample_parameters(priors)
        dtau = pt.concatenate([tau_expiry[:1], tau_expiry[1:] - tau_expiry[:-1]])
        theta = self.deterministic("theta", pt.cumsum(dtau * p["fwd_var"]), per_expiry=True)
        return {"theta": theta, "rho": p["rho"], "eta": p["eta"], "gamma": p["gamma"]}

    def kernel(self, k, tau, cp, *, theta, rho, eta, gamma):  # noqa: D102 (documented on the base)
        phi = ssvi_phi_power_law(theta, eta, gamma)
        return pt.sqrt(ssvi_total_variance(k, theta, rho, phi) / tau)


#: Scale of the SABR prior's wall beyond the attainable ATM vol (vol units): 1 vol point costs 50 nats.
ATTAINABLE_SCALE = 1e-3
#: Second SABR wall: the ATM vol's elasticity in alpha (1 at short expiries, 0 at the fold) is kept
#: above MIN_ATM_ELASTICITY; 0.1 below it costs 12.5 nats. It removes 0.6% of crypto prior draws at 1 year.
MIN_ATM_ELASTICITY = 0.5
ELASTICITY_SCALE = 0.02


class SabrPerExpiry(PricingModel):
    """SABR per expiry with beta fixed by the spec, Hagan et al. (2002) lognormal implied vol (eq. 2.17a).

    The kernel is evaluated in normalised terms: forward 1 and strike ``exp(k)``, so ``alpha`` is in
    units of ``F**(1 - beta)``. Sampled per expiry: the ATM Black vol ``atm_vol > 0``, ``rho`` in
    (-1, 1) and ``nu > 0`` (vol of vol, per sqrt year); ``alpha`` is the deterministic root of the
    ATM cubic on its first branch (:func:`bayescal.kernels.sabr.sabr_alpha_from_atm_vol` with
    ``unattainable="fold"``). Sampling ``alpha`` directly gave chains in a spurious second mode
    (``alpha`` ~15 times the truth with a large noise floor, where the expansion's ATM vol falls again
    with ``alpha``); the ATM vol is also what the quotes pin best, so the posterior is closer to
    independent in these coordinates. Where the expansion cannot reach ``atm_vol`` with the sampled
    ``rho, nu`` (strong negative ``rho`` with a large ``nu**2 tau``), ``alpha`` sits at the fold and the
    model ATM vol is the largest the expansion allows. Two prior walls (Potentials): the ATM vol must be
    attained (``sabr_attainable``), and its elasticity in ``alpha``
    (:func:`bayescal.kernels.sabr.sabr_atm_elasticity`, 0 at the fold) must stay near or above
    ``MIN_ATM_ELASTICITY`` (``sabr_expansion_valid``): near the fold the expansion's ``tau`` correction
    is as large as its leading term, and a chain of the recovery study sat there with a huge noise
    floor. Setting: ``beta`` in [0, 1].
    """

    lookup_name = "sabr"
    parameters = ("atm_vol", "rho", "nu")
    per_expiry = frozenset(parameters)
    supports: ClassVar[dict[str, str]] = {"atm_vol": "positive", "rho": "correlation", "nu": "positive"}
    kernel_inputs = ("alpha", "rho", "nu")
    per_expiry_inputs = frozenset(kernel_inputs)

    @classmethod
    def settings_defaults(cls) -> dict[str, Any]:  # noqa: D102 (documented on the base)
        return {"beta": 1.0}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if not 0.0 <= float(self.settings["beta"]) <= 1.0:
            raise SpecError(f"model 'sabr': beta must be in [0, 1] (got {self.settings['beta']})")

    def create_parameters(self, priors, tau_expiry):  # noqa: D102 (documented on the base)
        p = self.sample_parameters(priors)
        beta = float(self.settings["beta"])
        alpha = sabr_alpha_from_atm_vol(1.0, tau_expiry, p["atm_vol"], beta, p["rho"], p["nu"], unattainable="fold")
        # beyond the fold the likelihood no longer depends on atm_vol (a plateau that traps chains):
        # a steep Gaussian wall in the shortfall of the model ATM vol, zero wherever atm_vol is attained
        shortfall = p["atm_vol"] - sabr_lognormal_vol(1.0, 1.0, tau_expiry, alpha, beta, p["rho"], p["nu"])
        pm.Potential(self.name("attainable"), -0.5 * pt.sum(pt.sqr(shortfall / ATTAINABLE_SCALE)))
        # near the fold the tau correction of the ATM vol is as large as its leading term: a second wall
        # keeps alpha where the expansion's ATM vol still moves with it (elasticity >= MIN_ATM_ELASTICITY)
        elasticity = sabr_atm_elasticity(1.0, tau_expiry, alpha, beta, p["rho"], p["nu"])
        gap = pt.maximum(MIN_ATM_ELASTICITY - elasticity, 0.0)
        pm.Potential(self.name("expansion_valid"), -0.5 * pt.sum(pt.sqr(gap / ELASTICITY_SCALE)))
        return {"alpha": self.deterministic("alpha", alpha, per_expiry=True), "rho": p["rho"], "nu": p["nu"]}

    def kernel(self, k, tau, cp, *, alpha, rho, nu):  # noqa: D102 (documented on the base)
        return sabr_lognormal_vol(1.0, pt.exp(k), tau, alpha, float(self.settings["beta"]), rho, nu)


#: Jump parameters of the lognormal-jump models (Merton, Bates), the inputs of :func:`lognormal_jump_sizes`:
#: ``jump_intensity`` and ``jump_mean_ratio`` are sampled, ``jump_variance_rate`` derived (:meth:`variance_rates`).
JUMP_PARAMETERS = ("jump_intensity", "jump_variance_rate", "jump_mean_ratio")
#: Kernel inputs of the jumps: intensity (per year), mean and standard deviation of the log jump size.
JUMP_KERNEL_INPUTS = ("jump_intensity", "jump_log_mean", "jump_log_stdev")


def lognormal_jump_sizes(jump_intensity, jump_variance_rate, jump_mean_ratio):
    """Mean and standard deviation of the log jump size from the sampled jump parameters.

    ``jump_variance_rate = lambda (mu_J**2 + sigma_J**2)`` is the variance the jumps add to the log
    forward per year (the second cumulant rate of the compound Poisson part, e.g. Cont & Tankov 2004,
    Proposition 3.13) and ``jump_mean_ratio = mu_J / sqrt(mu_J**2 + sigma_J**2)`` in (-1, 1) the
    direction of the jumps, so that with ``s = sqrt(jump_variance_rate / lambda)``::

        mu_J = jump_mean_ratio s,   sigma_J = sqrt((1 - jump_mean_ratio) (1 + jump_mean_ratio)) s

    Works on numpy arrays and PyTensor variables alike (operators only).

    Parameters
    ----------
    jump_intensity : array_like or TensorVariable
        ``lambda`` > 0, jumps per year.
    jump_variance_rate : array_like or TensorVariable
        > 0, per year.
    jump_mean_ratio : array_like or TensorVariable
        In [-1, 1].

    Returns
    -------
    tuple
        ``(jump_log_mean, jump_log_stdev)``, broadcast shapes of the inputs.

    Raises
    ------
    Nothing: inputs are not checked (the priors keep them in their supports; values outside give
    NaN in numpy and PyTensor alike).

    Notes
    -----
    Why these coordinates: quotes pin the jump variance rate (0.59 +- 0.04 in a Bates recovery fit)
    while the intensity ranges over 7-27 along a curved ridge of fewer large against many small jumps
    in ``(lambda, mu_J, sigma_J)``. Here that ridge lies along ``lambda`` alone.
    """
    size = (jump_variance_rate / jump_intensity) ** 0.5
    return jump_mean_ratio * size, ((1.0 - jump_mean_ratio) * (1.0 + jump_mean_ratio)) ** 0.5 * size


def merton_variance_split(total_volatility, jump_variance_share):
    """Diffusion volatility and jump variance rate from the total variance rate and the jumps' share.

    The variance rate of the log forward of a jump-diffusion is the diffusion's plus the jumps'
    (second cumulant rate, e.g. Cont & Tankov 2004, Proposition 3.13)::

        total_volatility**2 = volatility**2 + jump_variance_rate,
        volatility = sqrt(1 - jump_variance_share) total_volatility,
        jump_variance_rate = jump_variance_share total_volatility**2

    Works on numpy arrays and PyTensor variables alike (operators only).

    Parameters
    ----------
    total_volatility : array_like or TensorVariable
        ``sqrt(volatility**2 + lambda (mu_J**2 + sigma_J**2))`` > 0, per sqrt(year).
    jump_variance_share : array_like or TensorVariable
        In (0, 1): the jumps' part of the variance rate.

    Returns
    -------
    tuple
        ``(volatility, jump_variance_rate)``, broadcast shapes of the inputs.

    Raises
    ------
    Nothing: inputs are not checked (the priors keep them in their supports).

    Notes
    -----
    Why these coordinates: quotes pin the total variance rate (0.4% in log terms in a Merton
    recovery fit) while the split between diffusion and many small jumps is weakly identified; in
    ``(log volatility, log jump_variance_rate)`` that split is a curve (correlation -0.97), here it
    lies along ``jump_variance_share`` alone.
    """
    return (1.0 - jump_variance_share) ** 0.5 * total_volatility, jump_variance_share * total_volatility**2


#: Exponent of the smooth minimum in :func:`bates_variance_split` (the cap on the jump variance rate).
SMOOTH_MIN_POWER = 4.0


def bates_variance_split(total_v0, total_theta, jump_variance_share):
    """Heston variances and jump variance rate of Bates from the total variance rates and the jumps' share.

    The variance rate of the log forward under Bates is the Heston variance plus the jumps' second
    cumulant rate (e.g. Cont & Tankov 2004, Proposition 3.13), now and in the long run::

        total_v0 = v0 + jump_variance_rate,   total_theta = theta + jump_variance_rate.

    ``jump_variance_rate`` must stay below both totals for ``v0`` and ``theta`` to be positive; it is
    the share of a smooth minimum of the two (p = :data:`SMOOTH_MIN_POWER`)::

        jump_variance_rate = jump_variance_share (total_v0**-p + total_theta**-p)**(-1/p),
        v0 = total_v0 - jump_variance_rate,   theta = total_theta - jump_variance_rate.

    The smooth minimum is at most the true one (2**(-1/p) = 0.84 of it when the totals are equal, the
    true minimum when one total is far below the other), so ``v0, theta > 0`` for every share in (0, 1)
    without a kink in the graph. Works on numpy arrays and PyTensor variables alike (operators only).

    Parameters
    ----------
    total_v0, total_theta : array_like or TensorVariable
        > 0, per year: the instantaneous and the long-run variance rates of the log forward.
    jump_variance_share : array_like or TensorVariable
        In (0, 1): the jumps' part of the smooth minimum of the totals.

    Returns
    -------
    tuple
        ``(v0, theta, jump_variance_rate)``, broadcast shapes of the inputs.

    Raises
    ------
    Nothing: inputs are not checked (the priors keep them in their supports).

    Notes
    -----
    Why these coordinates: quotes pin the total variance rates while the split between Heston
    variance and many small jumps is weakly identified (the jumps can take over the Heston variance,
    Merton's ridge in :func:`merton_variance_split`). Sampled as ``(v0, theta, jump_variance_rate)``,
    every divergent trajectory of a Bates recovery fit started at that end (intensity +2.6 sd, v0
    -3.8 to -4.7 sd); in these coordinates the same chains mixed (R-hat 1.0147 -> 1.0030, bulk ESS
    363 -> 2042; 3 divergences -> 0 on another seed), see docs/models.md.
    """
    power = SMOOTH_MIN_POWER
    rate = jump_variance_share * (total_v0**-power + total_theta**-power) ** (-1.0 / power)
    return total_v0 - rate, total_theta - rate, rate


class LognormalJumps:
    """Mixin (listed before a :class:`PricingModel` base) for models with compound Poisson lognormal
    jumps given by :data:`JUMP_PARAMETERS`; those not sampled (``jump_variance_rate`` in Merton and
    Bates) are derived by :meth:`variance_rates` from the sampled parameters and stored.

    Adds the kernel inputs ``jump_log_mean`` and ``jump_log_stdev`` (stored as deterministics) to the
    sampled parameters, see :func:`lognormal_jump_sizes`.
    """

    def variance_rates(self, p: dict) -> dict:
        """Derived variance-rate parameters (numpy or PyTensor) from sampled ones; none by default."""
        return {}

    def sample_parameters(self, priors: PriorSet) -> dict[str, pt.TensorVariable]:  # noqa: D102 (base)
        p = super().sample_parameters(priors)
        p |= {n: self.deterministic(n, v, per_expiry=False) for n, v in self.variance_rates(p).items()}
        mean, stdev = lognormal_jump_sizes(*(p[n] for n in JUMP_PARAMETERS))
        return {**p, "jump_log_mean": self.deterministic("jump_log_mean", mean, per_expiry=False),
                "jump_log_stdev": self.deterministic("jump_log_stdev", stdev, per_expiry=False)}

    def input_values(self, parameters: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # noqa: D102 (base)
        p = {n: np.asarray(v, float) for n, v in parameters.items()}
        p |= self.variance_rates(p)
        mean, stdev = lognormal_jump_sizes(*(p[n] for n in JUMP_PARAMETERS))
        out = {**p, "jump_log_mean": mean, "jump_log_stdev": stdev}
        return {n: out[n] for n in self.kernel_inputs}


#: Merton's series-validity wall (log units of the longest expiry's Poisson mean): it starts
#: SERIES_WALL_MARGIN below the mean that ``n_terms`` covers to 1e-12 and rises as a Gaussian of width
#: SERIES_WALL_SCALE, so its curvature in ln(jump_intensity), 25, stays near the posterior's (a wall 1
#: Poisson-mean unit wide, curvature ~1,800 there, threw NUTS trajectories across the posterior: 13
#: divergences in a recovery fit).
SERIES_WALL_MARGIN = 0.6
SERIES_WALL_SCALE = 0.2


class MertonSurface(LognormalJumps, PricingModel):
    """Merton (1976) jump-diffusion for the whole surface (one parameter set for every expiry).

    Undiscounted normalised price by the Poisson series of Black-76 prices
    (:func:`bayescal.kernels.merton.merton_norm_price`, ``n_terms`` terms, see below). Sampled:
    ``total_volatility`` (per sqrt(year)) and ``jump_variance_share`` (in (0, 1)), which give the
    diffusion ``volatility`` and the ``jump_variance_rate`` by :func:`merton_variance_split`, and
    ``jump_intensity`` (per year) and ``jump_mean_ratio``; the kernel takes ``volatility``,
    ``jump_intensity`` and ``jump_log_mean`` and ``jump_log_stdev`` of the log jump size from
    :func:`lognormal_jump_sizes` (all stored). The drift is compensated. Linked to the IV
    likelihood through the exact implied vol of the model price
    (:meth:`bayescal.likelihoods.IVLikelihood.model_iv_from_price`).

    Setting ``n_terms`` (default 128) sizes the series. The series is accurate to 1e-12 while the
    Poisson means of calls and puts, ``Lambda = jump_intensity * tau * max(1 + m, 1)``, stay at or
    below ``covered`` = :func:`~bayescal.kernels.merton.merton_max_poisson_mean` of ``n_terms``
    (63.8 for 128 terms); past it, prices fall short by up to the Poisson tail, a cliff in the
    likelihood. A Potential ``merton_series_valid`` (a prior term) keeps the sampler where the
    series holds::

        -0.5 (max(ln(Lambda_max / covered) + SERIES_WALL_MARGIN, 0) / SERIES_WALL_SCALE)**2

    with ``Lambda_max`` that of the longest expiry: zero up to 35 jumps a year at a 1-year longest
    expiry for 128 terms, -4.5 nats at ``covered``, -14 where the tail reaches 1e-3.
    """

    lookup_name = "merton"
    parameters = ("total_volatility", "jump_variance_share", "jump_intensity", "jump_mean_ratio")
    supports: ClassVar[dict[str, str]] = {"total_volatility": "positive", "jump_variance_share": "unit",
                                          "jump_intensity": "positive", "jump_mean_ratio": "signed_unit"}
    kernel_inputs = ("volatility", *JUMP_KERNEL_INPUTS)
    output = "norm_price"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        n_terms = self.settings["n_terms"]
        if isinstance(n_terms, bool) or not isinstance(n_terms, int) or n_terms < 1:
            raise SpecError(f"model {self.lookup_name!r}: n_terms must be a positive integer, got {n_terms!r}")

    @classmethod
    def settings_defaults(cls):  # noqa: D102 (documented on the base)
        return {"n_terms": 128}

    def variance_rates(self, p):  # noqa: D102 (documented on LognormalJumps)
        volatility, rate = merton_variance_split(p["total_volatility"], p["jump_variance_share"])
        return {"volatility": volatility, "jump_variance_rate": rate}

    def create_parameters(self, priors, tau_expiry):  # noqa: D102 (documented on the base)
        p = self.sample_parameters(priors)
        # calls weigh the terms by Poisson(lambda (1 + m) tau), puts by Poisson(lambda tau) (kernel docstring)
        log_growth = pt.maximum(p["jump_log_mean"] + 0.5 * p["jump_log_stdev"] ** 2, 0.0)
        log_mean = pt.log(p["jump_intensity"] * pt.max(tau_expiry)) + log_growth
        start = np.log(merton_max_poisson_mean(self.settings["n_terms"])) - SERIES_WALL_MARGIN
        excess = pt.maximum(log_mean - start, 0.0)
        pm.Potential(self.name("series_valid"), -0.5 * pt.sqr(excess / SERIES_WALL_SCALE))
        return {n: p[n] for n in self.kernel_inputs}

    def kernel(self, k, tau, cp, *, volatility, jump_intensity, jump_log_mean, jump_log_stdev):  # noqa: D102
        return merton_norm_price(k, tau, volatility, jump_intensity, jump_log_mean, jump_log_stdev, cp,
                                 n_terms=self.settings["n_terms"])


def expiry_tau(quotes: xr.Dataset) -> np.ndarray:
    """Time to expiry (years) per expiry of used quotes, shape (n_expiry,), in ``expiry_idx`` order."""
    idx, tau = quotes["expiry_idx"].to_numpy(), quotes["tau"].to_numpy()
    return np.array([tau[np.flatnonzero(idx == e)[0]] for e in range(int(idx.max()) + 1)])


def market_atm_iv(quotes: xr.Dataset) -> np.ndarray:
    """Market at-the-money implied vol per expiry of used quotes, shape (n_expiry,), in ``expiry_idx`` order.

    :func:`bayescal.market.filters.near_money_iv` of each expiry's quotes; used to place quadrature
    nodes and by the sequential level-shift check, never as an observation.
    """
    idx = quotes["expiry_idx"].to_numpy()
    k, iv = quotes["k"].to_numpy(), quotes["mid_iv"].to_numpy()
    out = np.empty(int(idx.max()) + 1)
    for e in range(out.size):
        rows = np.flatnonzero(idx == e)
        out[e] = near_money_iv(k[rows], iv[rows])
    return out


def atm_total_variance(quotes: xr.Dataset) -> np.ndarray:
    """Market at-the-money total variance ``iv**2 tau`` per expiry, shape (n_expiry,).

    :func:`market_atm_iv` squared times tau; used only to place quadrature nodes
    (:func:`bayescal.kernels.surface.lewis_nodes`), never as an observation.
    """
    return market_atm_iv(quotes) ** 2 * expiry_tau(quotes)


class HestonSurface(PricingModel):
    """Heston (1993) stochastic volatility for the whole surface (one parameter set for every expiry).

    Parameters ``v0, kappa, theta, xi, rho`` (variances per year); ``rho`` may be positive. Feller's
    condition ``2 kappa theta >= xi**2`` is never a hard bound: setting ``feller_scale > 0`` adds
    the soft prior term ``log sigmoid((2 kappa theta - xi**2) / feller_scale)`` (0 = off, the default).

    Two kernels, one model: the likelihood uses
    :func:`bayescal.kernels.surface.heston_surface_norm_price` (one characteristic-function grid per
    expiry, nodes placed from the market ATM variance, ``n_nodes`` per expiry, default 96), and
    everything else (strike grids, greeks, arbitrage checks) the per-quote
    :func:`bayescal.kernels.heston.heston_norm_price` (adaptive contour, near machine precision).
    Their difference on the calibration domain is measured in ``tests/test_kernels_surface.py``.
    """

    lookup_name = "heston"
    parameters = ("v0", "kappa", "theta", "xi", "rho")
    supports: ClassVar[dict[str, str]] = {"v0": "positive", "kappa": "positive", "theta": "positive",
                                          "xi": "positive", "rho": "correlation"}
    kernel_inputs = parameters
    output = "norm_price"
    separate_likelihood_kernel = True
    _surface_kernel = staticmethod(heston_surface_norm_price)

    @classmethod
    def settings_defaults(cls) -> dict[str, Any]:  # noqa: D102 (documented on the base)
        return {"feller_scale": 0.0, "n_nodes": DEFAULT_SURFACE_NODES}

    def create_parameters(self, priors, tau_expiry):  # noqa: D102 (documented on the base)
        p = self.sample_parameters(priors)
        scale = float(self.settings["feller_scale"])
        if scale < 0:
            raise SpecError(f"model {self.lookup_name!r}: feller_scale must be >= 0, got {scale}")
        if scale > 0:
            margin = 2 * p["kappa"] * p["theta"] - p["xi"] ** 2
            pm.Potential(self.name("feller_soft"), pt.log(pt.sigmoid(margin / scale)))
        return {n: p[n] for n in self.kernel_inputs}

    def model_output(self, priors, k, tau, cp, expiry_idx, tau_expiry, quotes=None):  # noqa: D102 (base)
        if quotes is None:
            return super().model_output(priors, k, tau, cp, expiry_idx, tau_expiry)
        inputs = self.create_parameters(priors, tau_expiry)
        return self._surface_kernel(
            quotes["k"].to_numpy(), quotes["cp"].to_numpy(), quotes["expiry_idx"].to_numpy(), tau_expiry,
            *(inputs[n] for n in self.kernel_inputs), var_scale=atm_total_variance(quotes),
            n_nodes=int(self.settings["n_nodes"]),
        )

    def kernel(self, k, tau, cp, *, v0, kappa, theta, xi, rho):  # noqa: D102 (documented on the base)
        return heston_norm_price(k, tau, cp, v0, kappa, theta, xi, rho)


class BatesSurface(LognormalJumps, HestonSurface):
    """Bates (1996): Heston plus lognormal jumps for the whole surface.

    Sampled: ``total_v0`` and ``total_theta`` (the instantaneous and long-run variance rates of the log
    forward, per year), ``kappa, xi, rho`` as Heston, ``jump_intensity`` (per year),
    ``jump_variance_share`` (in (0, 1)) and ``jump_mean_ratio``. Heston's ``v0`` and ``theta`` and the
    ``jump_variance_rate`` follow by :func:`bates_variance_split`, then ``jump_log_mean`` and
    ``jump_log_stdev`` of the log jump size by :func:`lognormal_jump_sizes` (all stored; drift
    compensated). Likelihood kernel :func:`bayescal.kernels.surface.bates_surface_norm_price`,
    per-quote kernel :func:`bayescal.kernels.bates.bates_norm_price`; settings as
    :class:`HestonSurface` (the Feller term uses the derived ``theta``).
    """

    lookup_name = "bates"
    parameters = ("total_v0", "kappa", "total_theta", "xi", "rho", "jump_intensity", "jump_variance_share",
                  "jump_mean_ratio")
    supports: ClassVar[dict[str, str]] = {
        "total_v0": "positive", "kappa": "positive", "total_theta": "positive", "xi": "positive",
        "rho": "correlation", "jump_intensity": "positive", "jump_variance_share": "unit",
        "jump_mean_ratio": "signed_unit"}
    kernel_inputs = (*HestonSurface.parameters, *JUMP_KERNEL_INPUTS)
    _surface_kernel = staticmethod(bates_surface_norm_price)

    def variance_rates(self, p):  # noqa: D102 (documented on LognormalJumps)
        v0, theta, rate = bates_variance_split(p["total_v0"], p["total_theta"], p["jump_variance_share"])
        return {"v0": v0, "theta": theta, "jump_variance_rate": rate}

    def kernel(self, k, tau, cp, *, v0, kappa, theta, xi, rho, jump_intensity, jump_log_mean,  # noqa: D102
               jump_log_stdev):
        return bates_norm_price(k, tau, cp, v0, kappa, theta, xi, rho, jump_intensity, jump_log_mean,
                                jump_log_stdev)
