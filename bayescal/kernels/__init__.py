"""Pure PyTensor pricing kernels (no PyMC, no state), dimensionless forward-measure form.

Inputs are Python scalars, numpy arrays or PyTensor tensors (broadcast elementwise); outputs are
PyTensor graphs, differentiable with :func:`pytensor.grad`. The SVI-JW conversions
(:func:`svi_jw_from_raw`, :func:`svi_raw_from_jw`) are the only numpy functions.

Modules
-------
:mod:`bayescal.kernels.black`
    Black-76 normalised price ``c(k, w, cp)``, quote-currency price (greeks by autodiff) and the
    differentiable implied vol of a normalised price (likelihoods of price models).
:mod:`bayescal.kernels.svi`
    Raw SVI, SSVI, the butterfly density function ``g`` and SVI-JW conversions.
:mod:`bayescal.kernels.ssvi_conditions`
    SSVI no-arbitrage margins (Gatheral & Jacquier 2014, Theorems 4.1 and 4.2).
:mod:`bayescal.kernels.heston`, :mod:`bayescal.kernels.bates`
    Heston (1993) and Bates (1996) by a Lewis-type Fourier integral in real arithmetic.
:mod:`bayescal.kernels.merton`
    Merton (1976) jump-diffusion, Poisson series of Black-76 prices.
:mod:`bayescal.kernels.variance_gamma`
    Variance Gamma (Madan, Carr & Chang 1998) by COS (Fang & Oosterlee 2008).
:mod:`bayescal.kernels.sabr`
    Hagan et al. (2002) lognormal and normal implied vols, alpha from ATM vol.
"""

from bayescal.kernels.bates import bates_log_cf, bates_log_mgf, bates_norm_price, bates_price
from bayescal.kernels.black import black76_norm_implied_vol, black76_norm_price, black76_price, norm_cdf
from bayescal.kernels.heston import heston_greeks, heston_log_cf, heston_log_mgf, heston_norm_price, heston_price
from bayescal.kernels.merton import (
    MERTON_DEFAULT_N_TERMS,
    MERTON_MAX_POISSON_MEAN,
    merton_max_poisson_mean,
    merton_norm_price,
    merton_poisson_tail,
    merton_price,
)
from bayescal.kernels.sabr import (
    sabr_alpha_from_atm_vol,
    sabr_atm_elasticity,
    sabr_black76_price,
    sabr_lognormal_vol,
    sabr_normal_vol,
)
from bayescal.kernels.ssvi_conditions import (
    SsviButterflyMargins,
    SsviCalendarMargins,
    ssvi_butterfly_margins,
    ssvi_calendar_margins,
    ssvi_calendar_margins_from_phi,
    ssvi_theta_monotonicity_margin,
)
from bayescal.kernels.svi import (
    SviJwParams,
    SviRawParams,
    butterfly_g,
    ssvi_g,
    ssvi_phi_heston_like,
    ssvi_phi_power_law,
    ssvi_to_raw,
    ssvi_total_variance,
    svi_jw_from_raw,
    svi_raw_derivatives,
    svi_raw_from_jw,
    svi_raw_g,
    svi_raw_total_variance,
)
from bayescal.kernels.variance_gamma import (
    VG_DEFAULT_N_TERMS,
    VG_DEFAULT_TRUNCATION_WIDTH,
    vg_log_cf,
    vg_norm_price,
    vg_price,
)

__all__ = [
    "bates_log_cf",
    "bates_log_mgf",
    "bates_norm_price",
    "bates_price",
    "black76_norm_implied_vol",
    "heston_greeks",
    "heston_log_cf",
    "heston_log_mgf",
    "heston_norm_price",
    "heston_price",
    "MERTON_DEFAULT_N_TERMS",
    "MERTON_MAX_POISSON_MEAN",
    "merton_max_poisson_mean",
    "VG_DEFAULT_N_TERMS",
    "VG_DEFAULT_TRUNCATION_WIDTH",
    "SsviButterflyMargins",
    "SsviCalendarMargins",
    "merton_norm_price",
    "merton_poisson_tail",
    "merton_price",
    "sabr_alpha_from_atm_vol",
    "sabr_atm_elasticity",
    "sabr_black76_price",
    "sabr_lognormal_vol",
    "sabr_normal_vol",
    "ssvi_butterfly_margins",
    "ssvi_calendar_margins",
    "ssvi_calendar_margins_from_phi",
    "ssvi_theta_monotonicity_margin",
    "vg_log_cf",
    "vg_norm_price",
    "vg_price",
    "SviJwParams",
    "SviRawParams",
    "black76_norm_price",
    "black76_price",
    "butterfly_g",
    "norm_cdf",
    "ssvi_g",
    "ssvi_phi_heston_like",
    "ssvi_phi_power_law",
    "ssvi_to_raw",
    "ssvi_total_variance",
    "svi_jw_from_raw",
    "svi_raw_derivatives",
    "svi_raw_from_jw",
    "svi_raw_g",
    "svi_raw_total_variance",
]
