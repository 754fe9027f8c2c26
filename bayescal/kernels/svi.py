"""SVI / SSVI implied total-variance kernels (Gatheral 2004; Gatheral & Jacquier 2014).

The smile functions (``svi_raw_*``, ``ssvi_*``, :func:`butterfly_g`) are pure PyTensor: inputs may
be Python scalars, numpy arrays or PyTensor tensors, they are converted with
:func:`pytensor.tensor.as_tensor_variable`, broadcast elementwise and a PyTensor graph is returned
(differentiable in every parameter).

The SVI-JW conversions :func:`svi_jw_from_raw` and :func:`svi_raw_from_jw` are **numpy**
functions (float64, broadcasting, eager validation that raises :class:`ValueError`): they involve
branches and domain checks, and are meant for reporting and for setting up raw parameters, not for
use inside a sampled graph.

Notation: ``k = ln(K/F)`` log-moneyness, ``w(k) = iv(k)**2 * tau`` total implied variance (both
dimensionless), ``tau`` time to expiry in years.

References
----------
.. [G04] J. Gatheral (2004), "A parsimonious arbitrage-free implied volatility parameterization
   with application to the valuation of volatility derivatives", Global Derivatives & Risk
   Management, Madrid (raw SVI).
.. [GJ14] J. Gatheral, A. Jacquier (2014), "Arbitrage-free SVI volatility surfaces",
   Quantitative Finance 14(1):59-71, arXiv:1204.0646. Eq. (2.1): density function g;
   section 3.1: raw SVI; section 3.3 and Lemma 3.2: SVI-JW parameters and their inversion;
   section 4: SSVI (Definition 4.1), the Heston-like and power-law (eq. 4.5) choices of phi,
   Theorems 4.1 (calendar) and 4.2 (butterfly); the SSVI slice written as raw SVI.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytensor.tensor as pt

__all__ = [
    "SviJwParams",
    "SviRawParams",
    "butterfly_g",
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


class SviRawParams(NamedTuple):
    """Raw SVI parameters ``(a, b, rho, m, sigma)`` of one slice [GJ14]_ section 3.1."""

    a: object
    b: object
    rho: object
    m: object
    sigma: object


class SviJwParams(NamedTuple):
    """SVI-JW parameters ``(v_t, psi_t, p_t, c_t, vtilde_t)`` of one slice [GJ14]_ section 3.3.

    ``v_t`` ATM variance (per year), ``psi_t`` ATM skew, ``p_t`` / ``c_t`` put / call wing slopes,
    ``vtilde_t`` minimum variance (per year).
    """

    v_t: object
    psi_t: object
    p_t: object
    c_t: object
    vtilde_t: object


def _tensors(*xs):
    return [pt.as_tensor_variable(x) for x in xs]


# ---------------------------------------------------------------------------------------------
# Raw SVI (PyTensor)
# ---------------------------------------------------------------------------------------------


def svi_raw_total_variance(k, a, b, rho, m, sigma):
    """Raw SVI total implied variance ``w(k) = a + b (rho (k - m) + sqrt((k - m)**2 + sigma**2))``.

    All inputs broadcast elementwise; each may carry e.g. an expiry axis.

    Parameters
    ----------
    k : array_like or TensorVariable
        Log-moneyness ``ln(K/F)``.
    a : array_like or TensorVariable
        Level (total variance units), real.
    b : array_like or TensorVariable
        Wing slope, ``>= 0``.
    rho : array_like or TensorVariable
        Skew, ``|rho| < 1``.
    m : array_like or TensorVariable
        Horizontal shift (log-moneyness units).
    sigma : array_like or TensorVariable
        ATM smoothing, ``> 0``.

    Returns
    -------
    TensorVariable
        ``w(k)``, dimensionless total variance, broadcast shape. Nothing is clipped: parameters
        outside ``a + b sigma sqrt(1 - rho**2) >= 0`` give negative variances.

    Raises
    ------
    Nothing at graph build time; the parameter domain is the caller's responsibility.

    References
    ----------
    [G04]_; [GJ14]_ section 3.1, eq. (3.1).
    """
    k, a, b, rho, m, sigma = _tensors(k, a, b, rho, m, sigma)
    x = k - m
    return a + b * (rho * x + pt.sqrt(x * x + sigma * sigma))


def svi_raw_derivatives(k, a, b, rho, m, sigma):
    """Raw SVI ``w``, ``w' = dw/dk`` and ``w'' = d2w/dk2`` in closed form.

    ``w'(k) = b (rho + (k - m) / R)``, ``w''(k) = b sigma**2 / R**3`` with
    ``R = sqrt((k - m)**2 + sigma**2)``.

    Parameters
    ----------
    k, a, b, rho, m, sigma
        As in :func:`svi_raw_total_variance` (broadcast elementwise).

    Returns
    -------
    tuple of TensorVariable
        ``(w, w', w'')``, each of the broadcast shape.

    References
    ----------
    Derivatives of [GJ14]_ eq. (3.1) (elementary calculus).
    """
    k, a, b, rho, m, sigma = _tensors(k, a, b, rho, m, sigma)
    x = k - m
    r2 = x * x + sigma * sigma
    r = pt.sqrt(r2)
    w = a + b * (rho * x + r)
    dw = b * (rho + x / r)
    d2w = b * sigma * sigma / (r2 * r)
    return w, dw, d2w


def butterfly_g(k, w, dw, d2w):
    """Gatheral-Jacquier density function ``g(k)`` of a total-variance slice.

    ``g(k) = (1 - k w'/(2 w))**2 - (w'**2 / 4) (1/w + 1/4) + w''/2``; a slice is free of butterfly
    arbitrage iff ``g >= 0`` everywhere (and ``d+`` tends to ``-inf``). The risk-neutral density of
    log-moneyness is ``g(k) / sqrt(2 pi w) exp(-d2(k)**2 / 2)``.

    Parameters
    ----------
    k : array_like or TensorVariable
        Log-moneyness.
    w, dw, d2w : array_like or TensorVariable
        ``w(k)`` (``> 0``), ``w'(k)`` and ``w''(k)`` of any smile at the same points.

    Returns
    -------
    TensorVariable
        ``g(k)``, dimensionless, broadcast shape. ``w = 0`` gives ``inf``/NaN.

    References
    ----------
    [GJ14]_ eq. (2.1) and the butterfly-arbitrage characterisation of section 2.
    """
    k, w, dw, d2w = _tensors(k, w, dw, d2w)
    return (1.0 - k * dw / (2.0 * w)) ** 2 - 0.25 * dw * dw * (1.0 / w + 0.25) + 0.5 * d2w


def svi_raw_g(k, a, b, rho, m, sigma):
    """Density function ``g(k)`` [GJ14]_ eq. (2.1) of a raw SVI slice, analytic ``w'`` and ``w''``.

    Parameters
    ----------
    k, a, b, rho, m, sigma
        As in :func:`svi_raw_total_variance` (broadcast elementwise); ``w(k) > 0`` is required.

    Returns
    -------
    TensorVariable
        ``g(k)``, broadcast shape; negative values flag butterfly arbitrage.

    References
    ----------
    [GJ14]_ eq. (2.1) with the derivatives of eq. (3.1) (see :func:`svi_raw_derivatives`);
    Example 3.1 (Axel Vogt's slice) shows a raw SVI slice with ``g < 0``.
    """
    k = pt.as_tensor_variable(k)
    w, dw, d2w = svi_raw_derivatives(k, a, b, rho, m, sigma)
    return butterfly_g(k, w, dw, d2w)


# ---------------------------------------------------------------------------------------------
# SSVI (PyTensor)
# ---------------------------------------------------------------------------------------------


def ssvi_total_variance(k, theta, rho, phi):
    """SSVI total implied variance ``w(k, theta) = theta/2 (1 + rho phi k + sqrt((phi k + rho)**2 + 1 - rho**2))``.

    All inputs broadcast elementwise.

    Parameters
    ----------
    k : array_like or TensorVariable
        Log-moneyness.
    theta : array_like or TensorVariable
        ATM total implied variance ``theta_t = w(0, t) > 0``.
    rho : array_like or TensorVariable
        Spot/vol correlation parameter, ``|rho| < 1``.
    phi : array_like or TensorVariable
        Value of the curvature function at ``theta`` (``> 0``), e.g.
        :func:`ssvi_phi_power_law` or :func:`ssvi_phi_heston_like`.

    Returns
    -------
    TensorVariable
        ``w(k, theta)``, broadcast shape.

    References
    ----------
    [GJ14]_ section 4, Definition 4.1 (eq. 4.1). No calendar arbitrage under Theorem 4.1, no
    butterfly arbitrage if ``theta phi (1 + |rho|) < 4`` and ``theta phi**2 (1 + |rho|) <= 4``
    (Theorem 4.2).
    """
    k, theta, rho, phi = _tensors(k, theta, rho, phi)
    u = phi * k + rho
    return 0.5 * theta * (1.0 + rho * phi * k + pt.sqrt(u * u + (1.0 - rho * rho)))


def ssvi_g(k, theta, rho, phi):
    """Density function ``g(k)`` [GJ14]_ eq. (2.1) of an SSVI slice, analytic derivatives.

    With ``u = phi k + rho`` and ``R = sqrt(u**2 + 1 - rho**2)``:
    ``w' = theta phi / 2 (rho + u / R)`` and ``w'' = theta phi**2 (1 - rho**2) / (2 R**3)``.

    Parameters
    ----------
    k, theta, rho, phi
        As in :func:`ssvi_total_variance`.

    Returns
    -------
    TensorVariable
        ``g(k)``, broadcast shape.

    References
    ----------
    [GJ14]_ eq. (2.1) applied to Definition 4.1.
    """
    k, theta, rho, phi = _tensors(k, theta, rho, phi)
    u = phi * k + rho
    r2 = u * u + (1.0 - rho * rho)
    r = pt.sqrt(r2)
    w = 0.5 * theta * (1.0 + rho * phi * k + r)
    dw = 0.5 * theta * phi * (rho + u / r)
    d2w = 0.5 * theta * phi * phi * (1.0 - rho * rho) / (r2 * r)
    return butterfly_g(k, w, dw, d2w)


def ssvi_to_raw(theta, rho, phi):
    """Raw SVI parameters of an SSVI slice.

    ``a = theta (1 - rho**2) / 2``, ``b = theta phi / 2``, ``rho = rho``, ``m = -rho / phi``,
    ``sigma = sqrt(1 - rho**2) / phi``.

    Parameters
    ----------
    theta, rho, phi
        As in :func:`ssvi_total_variance` (``phi > 0``, ``|rho| < 1``).

    Returns
    -------
    SviRawParams
        Named tuple of TensorVariables ``(a, b, rho, m, sigma)``.

    References
    ----------
    [GJ14]_ sections 3-4: an SSVI slice is the natural SVI slice with ``Delta = mu = 0``,
    ``omega = theta``, ``zeta = phi``, rewritten in raw form.
    """
    theta, rho, phi = _tensors(theta, rho, phi)
    srho = pt.sqrt(1.0 - rho * rho)
    return SviRawParams(
        a=0.5 * theta * (1.0 - rho * rho),
        b=0.5 * theta * phi,
        rho=rho,
        m=-rho / phi,
        sigma=srho / phi,
    )


def ssvi_phi_power_law(theta, eta, gamma):
    """Power-law SSVI curvature ``phi(theta) = eta / (theta**gamma (1 + theta)**(1 - gamma))``.

    Parameters
    ----------
    theta : array_like or TensorVariable
        ATM total variance, ``> 0``.
    eta : array_like or TensorVariable
        Scale, ``> 0``; ``eta (1 + |rho|) <= 2`` guarantees no butterfly arbitrage.
    gamma : array_like or TensorVariable
        Exponent in ``(0, 1)``.

    Returns
    -------
    TensorVariable
        ``phi(theta)``, broadcast shape.

    References
    ----------
    [GJ14]_ section 4, eq. (4.5).
    """
    theta, eta, gamma = _tensors(theta, eta, gamma)
    return eta / (theta**gamma * (1.0 + theta) ** (1.0 - gamma))


def ssvi_phi_heston_like(theta, lam):
    """Heston-like SSVI curvature ``phi(theta) = 1/(lam theta) (1 - (1 - exp(-lam theta)) / (lam theta))``.

    Computed as ``(x + expm1(-x)) / x**2`` with ``x = lam theta``; the cancellation makes the
    relative error grow like ``eps / x`` for tiny ``x`` (about 1e-13 at ``x = 1e-3``).

    Parameters
    ----------
    theta : array_like or TensorVariable
        ATM total variance, ``> 0``.
    lam : array_like or TensorVariable
        ``lambda > 0``; ``lambda >= (1 + |rho|) / 4`` gives no butterfly arbitrage.

    Returns
    -------
    TensorVariable
        ``phi(theta)``, broadcast shape.

    References
    ----------
    [GJ14]_ section 4, Heston-like parameterisation of phi.
    """
    theta, lam = _tensors(theta, lam)
    x = lam * theta
    return (x + pt.expm1(-x)) / (x * x)


# ---------------------------------------------------------------------------------------------
# SVI-JW <-> raw (numpy)
# ---------------------------------------------------------------------------------------------


def _as_float_arrays(**named):
    arrays = np.broadcast_arrays(*[np.asarray(v, dtype=np.float64) for v in named.values()])
    return dict(zip(named, arrays, strict=True))


def _require(cond, message: str) -> None:
    if not np.all(cond):
        raise ValueError(message)


def _out(x):
    return x[()] if x.ndim == 0 else x


def svi_jw_from_raw(a, b, rho, m, sigma, tau):
    """SVI-JW parameters of a raw SVI slice (numpy).

    With ``w_t = a + b (-rho m + sqrt(m**2 + sigma**2))`` (ATM total variance):

    * ``v_t = w_t / tau``
    * ``psi_t = b / (2 sqrt(w_t)) (rho - m / sqrt(m**2 + sigma**2))``
    * ``p_t = b (1 - rho) / sqrt(w_t)``
    * ``c_t = b (1 + rho) / sqrt(w_t)``
    * ``vtilde_t = (a + b sigma sqrt(1 - rho**2)) / tau``

    Parameters
    ----------
    a, b, rho, m, sigma : float or array_like
        Raw SVI parameters (broadcast); ``b >= 0``, ``|rho| < 1``, ``sigma > 0``.
    tau : float or array_like
        Time to expiry in years, ``> 0``.

    Returns
    -------
    SviJwParams
        Named tuple of float64 scalars or arrays (broadcast shape) ``(v_t, psi_t, p_t, c_t,
        vtilde_t)``; ``v_t``, ``vtilde_t`` are variances per year, ``psi_t``, ``p_t``, ``c_t``
        per unit of ATM volatility ``sqrt(w_t)``.

    Raises
    ------
    ValueError
        If ``tau <= 0``, ``b < 0``, ``|rho| >= 1``, ``sigma <= 0``, the ATM total variance
        ``w_t <= 0`` or any input is not finite.

    References
    ----------
    [GJ14]_ section 3.3 (definition of the SVI-JW parameterisation).
    """
    p = _as_float_arrays(a=a, b=b, rho=rho, m=m, sigma=sigma, tau=tau)
    a, b, rho, m, sigma, tau = (p[n] for n in ("a", "b", "rho", "m", "sigma", "tau"))
    _require(np.isfinite([a, b, rho, m, sigma, tau]), "svi_jw_from_raw: inputs must be finite")
    _require(tau > 0, "svi_jw_from_raw: tau must be > 0")
    _require(b >= 0, "svi_jw_from_raw: b must be >= 0")
    _require(np.abs(rho) < 1, "svi_jw_from_raw: |rho| must be < 1")
    _require(sigma > 0, "svi_jw_from_raw: sigma must be > 0")
    r0 = np.hypot(m, sigma)
    w_t = a + b * (-rho * m + r0)
    _require(w_t > 0, "svi_jw_from_raw: ATM total variance w(0) must be > 0")
    sq = np.sqrt(w_t)
    return SviJwParams(
        v_t=_out(w_t / tau),
        psi_t=_out(b / (2.0 * sq) * (rho - m / r0)),
        p_t=_out(b * (1.0 - rho) / sq),
        c_t=_out(b * (1.0 + rho) / sq),
        vtilde_t=_out((a + b * sigma * np.sqrt(1.0 - rho * rho)) / tau),
    )


def svi_raw_from_jw(v_t, psi_t, p_t, c_t, vtilde_t, tau):
    """Raw SVI parameters of an SVI-JW slice (numpy), inverse of :func:`svi_jw_from_raw`.

    With ``w_t = v_t tau``:

    * ``b = sqrt(w_t) (c_t + p_t) / 2``
    * ``rho = 1 - p_t sqrt(w_t) / b``
    * ``beta = rho - 2 psi_t sqrt(w_t) / b``, ``alpha = sign(beta) sqrt(1/beta**2 - 1)``
    * ``m = (v_t - vtilde_t) tau / (b (-rho + sign(alpha) sqrt(1 + alpha**2) - alpha sqrt(1 - rho**2)))``
    * ``sigma = alpha m``, ``a = vtilde_t tau - b sigma sqrt(1 - rho**2)``

    For ``beta = 0`` (``m = 0``) the lemma's limit is used:
    ``sigma = (v_t - vtilde_t) tau / (b (1 - sqrt(1 - rho**2)))``.

    Parameters
    ----------
    v_t, psi_t, p_t, c_t, vtilde_t : float or array_like
        SVI-JW parameters (broadcast), see :class:`SviJwParams`; ``v_t > 0``, ``p_t, c_t >= 0``
        with ``p_t + c_t > 0``.
    tau : float or array_like
        Time to expiry in years, ``> 0``.

    Returns
    -------
    SviRawParams
        Named tuple of float64 scalars or arrays ``(a, b, rho, m, sigma)``.

    Raises
    ------
    ValueError
        If an input is not finite, ``tau <= 0``, ``v_t <= 0``, ``p_t < 0``, ``c_t < 0``,
        ``p_t + c_t = 0``, ``|beta| > 1`` (no raw SVI slice has this ATM skew), or the implied
        ``sigma`` is not positive (inconsistent ``vtilde_t``), including the undetermined case
        ``beta = 0`` with ``rho = 0``.

    References
    ----------
    [GJ14]_ Lemma 3.2 (section 3.3).
    """
    p = _as_float_arrays(v_t=v_t, psi_t=psi_t, p_t=p_t, c_t=c_t, vtilde_t=vtilde_t, tau=tau)
    v, psi, pw, cw, vt, tau = (p[n] for n in ("v_t", "psi_t", "p_t", "c_t", "vtilde_t", "tau"))
    _require(np.isfinite([v, psi, pw, cw, vt, tau]), "svi_raw_from_jw: inputs must be finite")
    _require(tau > 0, "svi_raw_from_jw: tau must be > 0")
    _require(v > 0, "svi_raw_from_jw: v_t must be > 0")
    _require((pw >= 0) & (cw >= 0) & (pw + cw > 0), "svi_raw_from_jw: need p_t, c_t >= 0 and p_t + c_t > 0")
    w_t = v * tau
    sq = np.sqrt(w_t)
    b = 0.5 * sq * (cw + pw)
    rho = 1.0 - pw * sq / b
    beta = rho - 2.0 * psi * sq / b
    _require(np.abs(beta) <= 1.0, "svi_raw_from_jw: |beta| = |rho - 2 psi_t sqrt(w_t)/b| must be <= 1")
    srho = np.sqrt(1.0 - rho * rho)
    dv = (v - vt) * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.sign(beta) * np.sqrt(1.0 / (beta * beta) - 1.0)
        denom = b * (-rho + np.sign(alpha) * np.sqrt(1.0 + alpha * alpha) - alpha * srho)
        m_gen = dv / denom
        sigma_gen = alpha * m_gen
        sigma_m0 = dv / (b * (1.0 - srho))
    m_zero = beta == 0.0
    m = np.where(m_zero, 0.0, m_gen)
    sigma = np.where(m_zero, sigma_m0, sigma_gen)
    _require(np.isfinite(sigma) & (sigma > 0), "svi_raw_from_jw: implied sigma is not positive (inconsistent vtilde_t)")
    a = vt * tau - b * sigma * srho
    return SviRawParams(a=_out(a), b=_out(b), rho=_out(rho), m=_out(m), sigma=_out(sigma))
