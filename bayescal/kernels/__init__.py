"""Pure PyTensor pricing kernels (no PyMC, no state), dimensionless forward-measure form.

Inputs are Python scalars, numpy arrays or PyTensor tensors (broadcast elementwise); outputs are
PyTensor graphs, differentiable with :func:`pytensor.grad`. The SVI-JW conversions
(:func:`svi_jw_from_raw`, :func:`svi_raw_from_jw`) are the only numpy functions.

Modules
-------
:mod:`bayescal.kernels.black`
    Black-76 normalised price ``c(k, w, cp)`` and quote-currency price (greeks by autodiff).
:mod:`bayescal.kernels.svi`
    Raw SVI, SSVI, the butterfly density function ``g`` and SVI-JW conversions.
"""

from bayescal.kernels.black import black76_norm_price, black76_price, norm_cdf
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

__all__ = [
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
