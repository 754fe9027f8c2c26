"""Variance Gamma (Madan, Carr & Chang 1998) pricing kernels: COS method in real arithmetic.

Pure PyTensor, same conventions as :mod:`bayescal.kernels.black`: inputs are Python scalars, numpy
arrays or PyTensor tensors (converted with :func:`pytensor.tensor.as_tensor_variable`, broadcast
elementwise); outputs are PyTensor graphs, differentiable in every input with :func:`pytensor.grad`.
The characteristic function is written with explicit real and imaginary float64 parts: PyTensor 3
cannot differentiate through complex numbers (``shared/design/stack-notes.md``).

Model
-----
``X_t = theta G_t + sigma W(G_t)`` with ``G`` a gamma process of unit mean rate and variance rate ``nu``;
``ln S_T = ln F + omega tau + X_tau`` with ``omega = ln(1 - theta nu - sigma**2 nu / 2) / nu`` so that
``E[S_T] = F`` [MCC98]_ (``shared/reference/README.md``: ``ln S_T = ln S_0 + (r - q + omega) T + X_T``).
Requires ``1 - theta nu - sigma**2 nu / 2 > 0``.

Characteristic function of ``Y = ln(S_T / F)`` [MCC98]_::

    phi(u) = exp(i u omega tau) (1 - i u theta nu + sigma**2 nu u**2 / 2)**(-tau / nu)
    Re ln phi = -(tau / (2 nu)) log1p(sigma**2 nu u**2 + (sigma**2 nu u**2 / 2)**2 + (theta nu u)**2)
    Im ln phi = u omega tau + (tau / nu) atan(theta nu u / (1 + sigma**2 nu u**2 / 2))

(the base ``A + iB`` has ``A = 1 + sigma**2 nu u**2 / 2 > 0``, so its argument is ``atan(B / A)``).

COS method [FO08]_
------------------
Put in units of the forward, ``p = E[(e^k - e^Y)^+]``, on the truncation range ``[a, b]``::

    p ~ sum'_{j < N} Re(phi(u_j) e^{-i u_j a}) V_j,   u_j = j pi / (b - a),
    V_j = 2 / (b - a) (e^k psi_j(a, d) - chi_j(a, d)),   d = clip(k, a, b),
    chi_j(a, d) = [cos(u_j (d - a)) e^d - e^a + u_j sin(u_j (d - a)) e^d] / (1 + u_j**2),
    psi_j(a, d) = sin(u_j (d - a)) / u_j  (j > 0),  d - a  (j = 0),

(``sum'`` halves the first term). Calls follow from put-call parity ``c = p + 1 - e^k`` (the put
payoff is bounded, which keeps the COS sum insensitive to the width of the range, as recommended in
[FO08]_). The range is built from the cumulants of ``Y`` [FO08]_::

    [a, b] = [c1 - L sqrt(c2 + sqrt(c4)), c1 + L sqrt(c2 + sqrt(c4))],
    c1 = (omega + theta) tau,  c2 = (sigma**2 + nu theta**2) tau,
    c4 = 3 (sigma**4 nu + 2 theta**4 nu**3 + 4 sigma**2 theta**2 nu**2) tau,

with ``L = truncation_width`` (default 12). Gradients flow through ``[a, b]`` as well, so
:func:`pytensor.grad` gives the exact derivative of the computed approximation.

Accuracy (measured against 30-40 digit references of ``shared/reference/variance_gamma.json``, in
units of ``D F``): the density of ``Y`` has a singularity ``|y - omega tau|**(2 tau / nu - 1)`` when
``tau / nu < 1/2`` and ``|phi(u)|`` decays only like ``u**(-2 tau / nu)``, so the COS series converges
geometrically for long maturities but only algebraically for short ones. With the default
``n_terms = 4096`` and ``L = 12``: error <= 3e-13 for ``tau / nu >= 5`` (T = 1, nu <= 0.2),
<= 3e-12 for ``tau / nu >= 3``, about 1e-10 for ``tau / nu`` near 1 and up to about 1e-7 for
``tau / nu`` between 0.125 and 0.25 (Carr-Madan nu = 2, T = 0.25; an independent gamma-mixture
quadrature confirms the same size); ``n_terms = 16384`` brings the latter to a few 1e-9.
``n_terms = 256`` is enough for about 1e-10 once ``tau / nu >= 3``. Below ``tau / nu`` of about 0.1
the method needs impractically many terms. The cost is ``O(options * n_terms)`` elementwise
operations (about 10 ms for 200 options and 4096 terms, value or gradient, numba, one core).

References
----------
.. [MCC98] D.B. Madan, P.P. Carr, E.C. Chang (1998), "The variance gamma process and option pricing",
   European Finance Review 2(1):79-105 (the process, its characteristic function and the
   martingale correction omega).
.. [FO08] F. Fang, C.W. Oosterlee (2008), "A novel pricing method for European options based on
   Fourier-cosine series expansions", SIAM J. Sci. Comput. 31(2):826-848 (COS formula, the chi/psi
   payoff coefficients, put-plus-parity for calls, the cumulant-based truncation range and the
   cumulants of VG).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from bayescal.kernels.black import _check_constant

__all__ = [
    "VG_DEFAULT_N_TERMS",
    "VG_DEFAULT_TRUNCATION_WIDTH",
    "vg_log_cf",
    "vg_norm_price",
    "vg_price",
]

#: Default number of cosine terms of the COS expansion.
VG_DEFAULT_N_TERMS = 4096
#: Default half-width ``L`` of the truncation range, in cumulant "standard deviations".
VG_DEFAULT_TRUNCATION_WIDTH = 12.0


def _omega(sigma, nu, theta):
    """Martingale correction ``omega = ln(1 - theta nu - sigma**2 nu / 2) / nu`` (log1p form)."""
    return pt.log1p(-theta * nu - 0.5 * sigma * sigma * nu) / nu


def vg_log_cf(u, tau, sigma, nu, theta):
    """Real and imaginary parts of ``ln phi(u)``, the log characteristic function of ``ln(S_T / F)``.

    ``Re = -(tau / (2 nu)) log1p(sigma**2 nu u**2 + (sigma**2 nu u**2 / 2)**2 + (theta nu u)**2)`` and
    ``Im = u omega tau + (tau / nu) atan(theta nu u / (1 + sigma**2 nu u**2 / 2))``, i.e.
    ``phi(u) = exp(i u omega tau) (1 - i u theta nu + sigma**2 nu u**2 / 2)**(-tau/nu)`` [MCC98]_ written
    without complex numbers (``log1p`` keeps full precision as ``nu -> 0``).

    All inputs broadcast elementwise.

    Parameters
    ----------
    u : array_like or TensorVariable
        Real Fourier argument (per unit of log-price).
    tau : array_like or TensorVariable
        Time to expiry in years, ``>= 0``.
    sigma : array_like or TensorVariable
        Volatility of the Brownian motion in gamma time, ``>= 0``.
    nu : array_like or TensorVariable
        Variance rate of the gamma time change, ``> 0``.
    theta : array_like or TensorVariable
        Drift in gamma time (skew), with ``1 - theta nu - sigma**2 nu / 2 > 0``.

    Returns
    -------
    tuple of TensorVariable
        ``(re, im)`` with ``phi(u) = exp(re) (cos(im) + i sin(im))``; NaN if the martingale condition
        fails.

    References
    ----------
    [MCC98]_ (characteristic function of the VG process and omega).
    """
    u, tau, sigma, nu, theta = (pt.as_tensor_variable(x) for x in (u, tau, sigma, nu, theta))
    half_s2nu_u2 = 0.5 * sigma * sigma * nu * u * u
    theta_nu_u = theta * nu * u
    re = -(tau / (2.0 * nu)) * pt.log1p(2.0 * half_s2nu_u2 + half_s2nu_u2 * half_s2nu_u2 + theta_nu_u * theta_nu_u)
    im = u * _omega(sigma, nu, theta) * tau + (tau / nu) * pt.arctan(theta_nu_u / (1.0 + half_s2nu_u2))
    return re, im


def _check_martingale(sigma, nu, theta) -> None:
    if any(isinstance(x, Variable) for x in (sigma, nu, theta)):
        return
    s, n, t = (np.asarray(x, dtype=np.float64) for x in (sigma, nu, theta))
    if not np.all(1.0 - t * n - 0.5 * s * s * n > 0.0):
        raise ValueError("variance gamma needs 1 - theta nu - sigma**2 nu / 2 > 0 (finite E[S_T])")


def vg_norm_price(
    k,
    tau,
    sigma,
    nu,
    theta,
    cp,
    n_terms=VG_DEFAULT_N_TERMS,
    truncation_width=VG_DEFAULT_TRUNCATION_WIDTH,
):
    """Undiscounted Variance Gamma price in units of the forward, ``c = C / (D F)``, by COS.

    The put is the COS sum of the module docstring [FO08]_ on the cumulant range; the call is
    ``put + 1 - e^k`` (put-call parity, ``-expm1(k)`` exact near ``k = 0``).

    All array inputs broadcast elementwise; the cosine sum runs along an internal trailing axis.

    Parameters
    ----------
    k : array_like or TensorVariable
        Log-moneyness ``ln(K / F)``, dimensionless.
    tau : array_like or TensorVariable
        Time to expiry in years, ``> 0``.
    sigma : array_like or TensorVariable
        VG ``sigma``, annualised decimal, ``> 0``.
    nu : array_like or TensorVariable
        VG ``nu``, variance rate of the gamma clock (years), ``> 0``.
    theta : array_like or TensorVariable
        VG ``theta``, drift in gamma time; ``1 - theta nu - sigma**2 nu / 2 > 0``.
    cp : array_like or TensorVariable
        +1 (call) or -1 (put).
    n_terms : int, default 4096
        Number of cosine terms ``N`` (Python int, fixed at graph build time). See the module
        docstring for the error as a function of ``tau / nu``.
    truncation_width : float, default 12.0
        ``L`` of the truncation range ``c1 +- L sqrt(c2 + sqrt(c4))``.

    Returns
    -------
    TensorVariable
        ``c``, broadcast shape of the inputs, dimensionless. The absolute error is that of the COS
        approximation (module docstring), so deep out-of-the-money prices below about 1e-12 carry no
        relative precision.

    Raises
    ------
    ValueError
        If ``n_terms`` is not a positive integer or ``truncation_width <= 0``; if non-symbolic
        ``tau``, ``sigma`` or ``nu`` are not positive, ``cp`` is not +-1, or (all three non-symbolic)
        ``1 - theta nu - sigma**2 nu / 2 <= 0``. Symbolic inputs are not checked: a violated
        martingale condition gives NaN.

    References
    ----------
    [MCC98]_ (model); [FO08]_ (COS method, truncation range, VG cumulants).
    """
    if isinstance(n_terms, bool) or not isinstance(n_terms, int | np.integer) or n_terms < 1:
        raise ValueError(f"n_terms must be a positive integer; got {n_terms!r}")
    if not float(truncation_width) > 0.0:
        raise ValueError(f"truncation_width must be > 0; got {truncation_width!r}")
    _check_constant("tau", tau, lambda a: a > 0.0, "> 0")
    _check_constant("sigma", sigma, lambda a: a > 0.0, "> 0")
    _check_constant("nu", nu, lambda a: a > 0.0, "> 0")
    _check_constant("cp", cp, lambda a: np.abs(a) == 1.0, "+1 (call) or -1 (put)")
    _check_martingale(sigma, nu, theta)
    k, tau, sigma, nu, theta, cp = (pt.as_tensor_variable(x) for x in (k, tau, sigma, nu, theta, cp))
    pad = pt.shape_padright

    # truncation range from the cumulants of Y = ln(S_T / F)
    s2 = sigma * sigma
    th2 = theta * theta
    c1 = (_omega(sigma, nu, theta) + theta) * tau
    c2 = (s2 + nu * th2) * tau
    c4 = 3.0 * (s2 * s2 * nu + 2.0 * th2 * th2 * nu**3 + 4.0 * s2 * th2 * nu * nu) * tau
    half_width = float(truncation_width) * pt.sqrt(c2 + pt.sqrt(c4))
    a = c1 - half_width
    width = 2.0 * half_width  # b - a
    d = pt.clip(k, a, a + width)

    j = np.arange(int(n_terms), dtype=np.float64)
    first = (j == 0).astype(np.float64)
    weight = 1.0 - 0.5 * first  # sum' halves the j = 0 term
    u = j * np.pi / pad(width)  # (..., N)
    re, im = vg_log_cf(u, pad(tau), pad(sigma), pad(nu), pad(theta))
    cf_a = pt.exp(re) * pt.cos(im - u * pad(a))  # Re(phi(u) e^{-i u a})

    x = u * pad(d - a)
    cos_x = pt.cos(x)
    sin_x = pt.sin(x)
    e_d = pad(pt.exp(d))
    chi = (cos_x * e_d - pad(pt.exp(a)) + u * sin_x * e_d) / (1.0 + u * u)
    psi = sin_x / (u + first) + first * pad(d - a)  # sin(u (d - a)) / u, and d - a for j = 0
    v = (2.0 / pad(width)) * (pad(pt.exp(k)) * psi - chi)

    put = pt.sum(weight * cf_a * v, axis=-1)
    return put + pt.switch(pt.gt(cp, 0.0), -pt.expm1(k), 0.0)


def vg_price(
    forward,
    strike,
    tau,
    sigma,
    nu,
    theta,
    cp,
    discount_factor=1.0,
    n_terms=VG_DEFAULT_N_TERMS,
    truncation_width=VG_DEFAULT_TRUNCATION_WIDTH,
):
    """Variance Gamma option price in quote currency, ``D * F * c(ln(K/F), ...)``.

    Thin wrapper around :func:`vg_norm_price`; differentiable in every input, so greeks come from
    :func:`pytensor.grad`. For a spot model pass ``forward = S exp((r - q) tau)`` and
    ``discount_factor = exp(-r tau)``.

    Parameters
    ----------
    forward : array_like or TensorVariable
        Forward price ``F``, quote currency, ``> 0``.
    strike : array_like or TensorVariable
        Strike ``K``, quote currency, ``> 0``.
    tau, sigma, nu, theta, cp, n_terms, truncation_width
        As in :func:`vg_norm_price`.
    discount_factor : array_like or TensorVariable, default 1.0
        ``D = P(0, tau)``, ``> 0``.

    Returns
    -------
    TensorVariable
        Option price in quote currency, broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If a non-symbolic ``forward``, ``strike`` or ``discount_factor`` is not positive, or for the
        reasons listed in :func:`vg_norm_price`.

    References
    ----------
    [MCC98]_; [FO08]_.
    """
    _check_constant("forward", forward, lambda a: a > 0.0, "> 0")
    _check_constant("strike", strike, lambda a: a > 0.0, "> 0")
    _check_constant("discount_factor", discount_factor, lambda a: a > 0.0, "> 0")
    forward = pt.as_tensor_variable(forward)
    strike = pt.as_tensor_variable(strike)
    discount_factor = pt.as_tensor_variable(discount_factor)
    k = pt.log(strike) - pt.log(forward)
    c = vg_norm_price(k, tau, sigma, nu, theta, cp, n_terms=n_terms, truncation_width=truncation_width)
    return discount_factor * forward * c
