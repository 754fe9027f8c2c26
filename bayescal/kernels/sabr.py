"""SABR implied-volatility kernels: Hagan, Kumar, Lesniewski & Woodward (2002) expansions.

Pure PyTensor, same conventions as :mod:`bayescal.kernels.black`: inputs are Python scalars, numpy
arrays or PyTensor tensors (converted with :func:`pytensor.tensor.as_tensor_variable`, broadcast
elementwise); outputs are PyTensor graphs, differentiable in every input with :func:`pytensor.grad`.

Model: ``dF = alpha_t F**beta dW``, ``d alpha_t = nu alpha_t dZ``, ``dW dZ = rho dt``; shifted SABR
applies the same dynamics to ``F + shift`` (formulas evaluated at ``f = F + shift``, ``K + shift``).
Parameters: ``alpha > 0`` (initial vol, units ``F**(1 - beta)`` per sqrt(year)), ``0 <= beta <= 1``,
``-1 < rho < 1``, ``nu >= 0`` (vol of vol per sqrt(year)), ``tau`` in years.

Numerics shared by all formulas
-------------------------------
* ``z / x(z)`` with ``x(z) = ln((sqrt(1 - 2 rho z + z**2) + z - rho) / (1 - rho))`` is evaluated through
  the identity ``x(z) = asinh(z (1 + rho (z - 2 rho) / (s + 1)) / (1 - rho**2))``, ``s = sqrt(1 - 2 rho z
  + z**2)`` (difference of two ``asinh``; no cancellation for small ``z`` and no ``log`` of a tiny
  number for large negative ``z``). For ``|z| < 1e-6`` the series ``1 - rho z / 2 + (2 - 3 rho**2) z**2
  / 12`` is used (truncation error below 1e-18), so ``K = F`` and ``nu = 0`` are smooth and NaN-free,
  value and gradient (the unused branch sees a safe argument).
* ``(1 - beta)(f - K) / (f**(1 - beta) - K**(1 - beta)) = f**beta E(-L) / E(-(1 - beta) L)`` with
  ``L = ln(f / K)`` and ``E(x) = expm1(x) / x`` (``E(0) = 1``, series below ``|x| < 1e-5``), which is
  smooth through ``K = F`` and through ``beta = 1`` (where it equals ``(f - K) / ln(f / K)``).

References
----------
.. [H02] P.S. Hagan, D. Kumar, A.S. Lesniewski, D.E. Woodward (2002), "Managing smile risk",
   Wilmott Magazine, September 2002, 84-108: eq. (2.17a) (lognormal/Black implied vol) with
   (2.17b) for ``x(z)``, and Appendix B eq. (B.67a) (normal implied vol as an expansion in
   ``f - K``).
.. [P] ynouri/pysabr, ``hagan_2002_lognormal_sabr.alpha`` (ATM cubic for alpha) and
   ``hagan_2002_normal_sabr.normal_vol`` (the same B.67a variant, source of the reference normal-vol
   case in ``shared/reference/sabr.json``).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt

from bayescal.kernels._gradient import stop_gradient
from bayescal.kernels.black import _check_constant, black76_norm_price

__all__ = [
    "sabr_alpha_from_atm_vol",
    "sabr_atm_elasticity",
    "sabr_black76_price",
    "sabr_lognormal_vol",
    "sabr_normal_vol",
]

_Z_SERIES = 1e-6
_E_SERIES = 1e-5


def _tensors(*xs):
    return [pt.as_tensor_variable(x) for x in xs]


def _check_params(alpha, beta, rho, nu) -> None:
    _check_constant("alpha", alpha, lambda a: a > 0.0, "> 0")
    _check_constant("beta", beta, lambda a: (a >= 0.0) & (a <= 1.0), "in [0, 1]")
    _check_constant("rho", rho, lambda a: np.abs(a) < 1.0, "in (-1, 1)")
    _check_constant("nu", nu, lambda a: a >= 0.0, ">= 0")


def _z_over_x(z, rho):
    """``z / x(z)`` of [H02]_ eq. (2.17b), smooth at ``z = 0`` (see the module docstring)."""
    small = pt.lt(pt.abs(z), _Z_SERIES)
    zs = pt.switch(small, 1.0, z)  # safe argument for the closed form
    s = pt.sqrt(1.0 - 2.0 * rho * zs + zs * zs)
    x = pt.arcsinh(zs * (1.0 + rho * (zs - 2.0 * rho) / (s + 1.0)) / (1.0 - rho * rho))
    series = 1.0 - 0.5 * rho * z + (2.0 - 3.0 * rho * rho) * z * z / 12.0
    return pt.switch(small, series, zs / x)


def _expm1_ratio(x):
    """``E(x) = expm1(x) / x`` with ``E(0) = 1`` (series ``1 + x/2 + x**2/6 + x**3/24`` for small ``x``)."""
    small = pt.lt(pt.abs(x), _E_SERIES)
    xs = pt.switch(small, 1.0, x)
    series = 1.0 + x * (0.5 + x * (1.0 / 6.0 + x / 24.0))
    return pt.switch(small, series, pt.expm1(xs) / xs)


def sabr_lognormal_vol(forward, strike, tau, alpha, beta, rho, nu, shift=0.0):
    """Hagan et al. (2002) Black (lognormal) implied volatility, eq. (2.17a).

    With ``f = forward + shift``, ``K = strike + shift``, ``L = ln(f / K)``, ``P = (f K)**((1 - beta)/2)``::

        sigma_B = alpha / (P [1 + (1-beta)**2 L**2 / 24 + (1-beta)**4 L**4 / 1920]) * z / x(z)
                  * {1 + [(1-beta)**2 alpha**2 / (24 P**2) + rho beta nu alpha / (4 P)
                          + (2 - 3 rho**2) nu**2 / 24] tau},
        z = (nu / alpha) P L

    [H02]_. ``z / x(z)`` is evaluated stably and smoothly through ``z = 0`` (``K = F`` or ``nu = 0``), see
    the module docstring; at ``K = F`` the formula reduces to the ATM expression
    ``alpha / f**(1-beta) {1 + [...] tau}`` with finite derivatives. ``beta = 1, nu = 0`` gives the flat
    smile ``sigma_B = alpha``.

    All inputs broadcast elementwise.

    Parameters
    ----------
    forward : array_like or TensorVariable
        Forward ``F``; ``F + shift > 0``.
    strike : array_like or TensorVariable
        Strike ``K``; ``K + shift > 0``.
    tau : array_like or TensorVariable
        Time to expiry in years, ``>= 0``.
    alpha : array_like or TensorVariable
        SABR ``alpha > 0``.
    beta : array_like or TensorVariable
        CEV exponent in ``[0, 1]``.
    rho : array_like or TensorVariable
        Correlation in ``(-1, 1)``.
    nu : array_like or TensorVariable
        Vol of vol, ``>= 0``.
    shift : array_like or TensorVariable, default 0.0
        Displacement applied to forward and strike (shifted SABR; then the result is the shifted
        Black vol).

    Returns
    -------
    TensorVariable
        Black implied volatility (annualised decimal, of the shifted forward when ``shift != 0``),
        broadcast shape. Non-positive shifted forwards/strikes give NaN.

    Raises
    ------
    ValueError
        If a non-symbolic ``alpha <= 0``, ``beta`` outside ``[0, 1]``, ``|rho| >= 1``, ``nu < 0`` or
        ``tau < 0``. Symbolic inputs are not checked.

    References
    ----------
    [H02]_ eqs. (2.17a)-(2.17b).
    """
    _check_params(alpha, beta, rho, nu)
    _check_constant("tau", tau, lambda a: a >= 0.0, ">= 0")
    forward, strike, tau, alpha, beta, rho, nu, shift = _tensors(forward, strike, tau, alpha, beta, rho, nu, shift)
    log_f = pt.log(forward + shift)
    log_k = pt.log(strike + shift)
    big_l = log_f - log_k
    omb = 1.0 - beta
    p = pt.exp(0.5 * omb * (log_f + log_k))  # (f K)**((1 - beta)/2)
    c = omb * omb * big_l * big_l
    denom = p * (1.0 + c / 24.0 + c * c / 1920.0)
    z = (nu / alpha) * p * big_l
    corr = 1.0 + tau * (
        omb * omb * alpha * alpha / (24.0 * p * p)
        + 0.25 * rho * beta * nu * alpha / p
        + (2.0 - 3.0 * rho * rho) * nu * nu / 24.0
    )
    return alpha / denom * _z_over_x(z, rho) * corr


def sabr_normal_vol(forward, strike, tau, alpha, beta, rho, nu, shift=0.0):
    """Hagan et al. (2002) normal (Bachelier) implied volatility, Appendix B eq. (B.67a).

    This is the expansion in ``f - K`` (the variant of pysabr's ``hagan_2002_normal_sabr``; the
    reference case ``sabr-normalvol-beta1-otm`` targets it). QuantLib's ``VolatilityType.Normal``
    uses Hagan's log-moneyness form instead and differs by up to about 1.5% relative away from the
    money (``shared/reference/README.md``, finding 6). With ``f = forward + shift``,
    ``K = strike + shift``, ``f_av = sqrt(f K)``::

        sigma_N = alpha (1 - beta)(f - K) / (f**(1-beta) - K**(1-beta)) * zeta / x(zeta)
                  * {1 + [-beta (2 - beta) alpha**2 / (24 f_av**(2 - 2 beta))
                          + rho alpha nu beta / (4 f_av**(1 - beta)) + (2 - 3 rho**2) nu**2 / 24] tau},
        zeta = (nu / alpha) (f - K) / f_av**beta

    [H02]_ (B.67a). The ratio ``(1-beta)(f-K)/(f**(1-beta)-K**(1-beta))`` is evaluated as
    ``f**beta E(-L)/E(-(1-beta)L)``, smooth through ``K = F`` (value ``f**beta``) and ``beta = 1``
    (value ``(f - K)/ln(f/K)``); ``zeta / x(zeta)`` as in :func:`sabr_lognormal_vol`.

    Parameters
    ----------
    forward, strike, tau, alpha, beta, rho, nu, shift
        As in :func:`sabr_lognormal_vol` (``f = forward + shift > 0``, ``K = strike + shift > 0``).

    Returns
    -------
    TensorVariable
        Normal implied volatility in forward units per sqrt(year), broadcast shape.

    Raises
    ------
    ValueError
        As :func:`sabr_lognormal_vol`.

    References
    ----------
    [H02]_ eq. (B.67a); [P]_ (same variant).
    """
    _check_params(alpha, beta, rho, nu)
    _check_constant("tau", tau, lambda a: a >= 0.0, ">= 0")
    forward, strike, tau, alpha, beta, rho, nu, shift = _tensors(forward, strike, tau, alpha, beta, rho, nu, shift)
    log_f = pt.log(forward + shift)
    log_k = pt.log(strike + shift)
    big_l = log_f - log_k
    omb = 1.0 - beta
    ratio = pt.exp(beta * log_f) * _expm1_ratio(-big_l) / _expm1_ratio(-omb * big_l)
    log_fav = 0.5 * (log_f + log_k)
    zeta = (nu / alpha) * (forward - strike) * pt.exp(-beta * log_fav)
    fav_omb = pt.exp(omb * log_fav)  # f_av**(1 - beta)
    corr = 1.0 + tau * (
        -beta * (2.0 - beta) * alpha * alpha / (24.0 * fav_omb * fav_omb)
        + 0.25 * rho * alpha * nu * beta / fav_omb
        + (2.0 - 3.0 * rho * rho) * nu * nu / 24.0
    )
    return alpha * ratio * _z_over_x(zeta, rho) * corr


def _largest_real_root_monic_cubic(a, b, c):
    """Largest real root of ``y**3 + a y**2 + b y + c`` (trigonometric / hyperbolic closed form).

    With ``y = t - a/3`` the cubic is ``t**3 + p t + q`` (``p = b - a**2/3``, ``q = 2a**3/27 - ab/3 + c``);
    for ``p < 0`` and three real roots ``t = 2 r cos(arccos(-q / (2 r**3)) / 3)`` with ``r = sqrt(-p/3)``
    (the ``k = 0`` root is the largest), for ``p < 0`` and one real root
    ``t = -2 sign(q) r cosh(arccosh(|q| / (2 r**3)) / 3)``, for ``p > 0``
    ``t = -2 s sinh(arcsinh(q / (2 s**3)) / 3)`` with ``s = sqrt(p/3)``, and ``t = -cbrt(q)`` for ``p = 0``
    (Abramowitz & Stegun 1964, 3.8.2, in trigonometric/hyperbolic form). Values only: callers stop its
    gradient.
    """
    p = b - a * a / 3.0
    q = 2.0 * a * a * a / 27.0 - a * b / 3.0 + c
    tiny = 1e-100
    r = pt.sqrt(pt.maximum(-p / 3.0, tiny))
    ratio = q / (2.0 * r * r * r)
    three_real = pt.le(4.0 * p * p * p + 27.0 * q * q, 0.0)
    t_trig = 2.0 * r * pt.cos(pt.arccos(pt.clip(-ratio, -1.0, 1.0)) / 3.0)
    t_cosh = -2.0 * pt.sign(q) * r * pt.cosh(pt.arccosh(pt.maximum(pt.abs(ratio), 1.0)) / 3.0)
    s = pt.sqrt(pt.maximum(p / 3.0, tiny))
    t_sinh = -2.0 * s * pt.sinh(pt.arcsinh(q / (2.0 * s * s * s)) / 3.0)
    t_zero = -pt.sign(q) * pt.abs(q) ** (1.0 / 3.0)
    t = pt.switch(
        pt.lt(p, 0.0), pt.switch(three_real, t_trig, t_cosh), pt.switch(pt.gt(p, 0.0), t_sinh, t_zero)
    )
    return t - a / 3.0


def _atm_cubic_coefficients(tau, beta, rho, nu):
    """``(c1, c2, c3)`` of the [H02]_ eq. (2.17a) ATM vol ``x (c1 + c2 x + c3 x**2)``, ``x = alpha / f**(1 - beta)``."""
    c1 = 1.0 + (2.0 - 3.0 * rho * rho) * nu * nu * tau / 24.0
    c2 = 0.25 * rho * beta * nu * tau
    c3 = (1.0 - beta) * (1.0 - beta) * tau / 24.0
    return c1, c2, c3


def sabr_alpha_from_atm_vol(forward, tau, atm_vol, beta, rho, nu, shift=0.0, unattainable="nan"):
    """SABR ``alpha`` reproducing a given ATM Black volatility under [H02]_ eq. (2.17a).

    At ``K = F`` eq. (2.17a) reads ``sigma_ATM = x {1 + [(1-beta)**2 x**2 / 24 + rho beta nu x / 4 +
    (2 - 3 rho**2) nu**2 / 24] tau}`` with ``x = alpha / f**(1 - beta)`` (``f = forward + shift``): the cubic
    ``P(x) = c3 x**3 + c2 x**2 + c1 x - sigma_ATM = 0`` with ``c3 = (1-beta)**2 tau / 24``,
    ``c2 = rho beta nu tau / 4``, ``c1 = 1 + (2 - 3 rho**2) nu**2 tau / 24`` (the cubic of [P]_, here in the
    dimensionless ``x``). The root returned is the **smallest positive root**, the branch that tends to
    ``sigma_ATM / c1`` as ``tau -> 0``. It is found as ``x = 1 / y`` with ``y`` the largest real root of
    the reciprocal cubic ``sigma_ATM y**3 - c1 y**2 - c2 y - c3`` (leading coefficient ``sigma_ATM > 0``,
    so ``beta = 1`` or ``nu = 0``, where ``c3`` or ``c2`` vanish, are not degenerate), in closed form
    (trigonometric/hyperbolic Cardano), then polished by three Newton steps on ``P``. The gradient is
    stopped through the closed form; one last Newton step from the stopped root carries the
    implicit-function derivative ``dx/dparam = -(dP/dparam) / P'(x)`` exactly (the value is unchanged at
    convergence). Where ``P`` has no positive root (only possible for ``beta = 1`` with
    ``c2 <= 0`` and either ``c1 <= 0`` or ``c1**2 + 4 sigma_ATM c2 < 0``: the expansion's ATM vol has a
    maximum in ``alpha`` below ``sigma_ATM``), or the polished root leaves a residual above 1e-9 times
    the sum of the magnitudes of its terms, the result depends on ``unattainable``:

    * ``"nan"``: NaN.
    * ``"fold"``: the result stays on the **first increasing branch** of ``P``, the one connected to
      ``alpha -> 0``. Where ``P`` has a positive stationary point (``c1 <= 0``, or ``c2 < 0`` with
      ``c2**2 >= 3 c3 c1``), the smallest one, ``x_fold = c1 / (-c2 + sqrt(c2**2 - 3 c3 c1))``
      (floored at ``1e-8``), is the ``alpha`` of the largest ATM vol that branch reaches. A root beyond
      the fold (possible for ``beta < 1``: a far branch where the expansion's ATM vol rises again) and
      a missing root both give ``x_fold``. The root tends to ``x_fold`` as the requested vol tends to the
      largest attainable one, so the result is continuous in every input; value and gradient are
      finite everywhere, which a sampler needs when ``sigma_ATM`` is a parameter.

    Parameters
    ----------
    forward : array_like or TensorVariable
        Forward ``F``; ``F + shift > 0``.
    tau : array_like or TensorVariable
        Time to expiry in years, ``>= 0``.
    atm_vol : array_like or TensorVariable
        ATM Black volatility (of the shifted forward when ``shift != 0``), ``> 0``.
    beta, rho, nu, shift
        As in :func:`sabr_lognormal_vol`.
    unattainable : {"nan", "fold"}, default "nan"
        Result where no positive root is found (see above).

    Returns
    -------
    TensorVariable
        ``alpha``, broadcast shape, units ``F**(1 - beta)`` per sqrt(year).

    Raises
    ------
    ValueError
        If a non-symbolic ``atm_vol <= 0``, ``beta`` outside ``[0, 1]``, ``|rho| >= 1``, ``nu < 0`` or
        ``tau < 0``, or ``unattainable`` is not ``"nan"`` or ``"fold"``. Symbolic inputs are not checked.

    References
    ----------
    [H02]_ eq. (2.17a) at ``K = f``; [P]_ (``alpha`` from the ATM vol as a cubic root); Abramowitz &
    Stegun (1964) 3.8.2 (roots of a cubic).
    """
    if unattainable not in ("nan", "fold"):
        raise ValueError(f"unattainable must be 'nan' or 'fold' (got {unattainable!r})")
    _check_constant("atm_vol", atm_vol, lambda a: a > 0.0, "> 0")
    _check_constant("beta", beta, lambda a: (a >= 0.0) & (a <= 1.0), "in [0, 1]")
    _check_constant("rho", rho, lambda a: np.abs(a) < 1.0, "in (-1, 1)")
    _check_constant("nu", nu, lambda a: a >= 0.0, ">= 0")
    _check_constant("tau", tau, lambda a: a >= 0.0, ">= 0")
    forward, tau, atm_vol, beta, rho, nu, shift = _tensors(forward, tau, atm_vol, beta, rho, nu, shift)
    omb = 1.0 - beta
    c1, c2, c3 = _atm_cubic_coefficients(tau, beta, rho, nu)

    def residual(x):
        return ((c3 * x + c2) * x + c1) * x - atm_vol

    def slope(x):
        return (3.0 * c3 * x + 2.0 * c2) * x + c1

    y = _largest_real_root_monic_cubic(-c1 / atm_vol, -c2 / atm_vol, -c3 / atm_vol)
    ok = pt.gt(y, 0.0)
    x = pt.switch(ok, 1.0 / pt.switch(ok, y, 1.0), np.nan)
    for _ in range(3):
        x = x - residual(x) / slope(x)
    x0 = stop_gradient(x)
    scale = (pt.abs(c3 * x0) * x0 + pt.abs(c2) * x0) * x0 + pt.abs(c1) * x0 + atm_vol  # sum of |terms| of P
    found = pt.and_(pt.gt(x0, 0.0), pt.le(pt.abs(residual(x0)), 1e-9 * scale))
    x0 = pt.switch(found, x0, 1.0)  # a finite point where nothing was found: no NaN reaches the gradient
    x = x0 - residual(x0) / slope(x0)  # value unchanged at convergence; carries the implicit gradient
    if unattainable == "nan":
        x = pt.switch(found, x, np.nan)
    else:
        # smallest positive root of P'(x) = 3 c3 x**2 + 2 c2 x + c1, in the cancellation-free form; it
        # exists iff c1 <= 0 (fold at 0) or c2 < 0 with a real pair of stationary points. The floors
        # keep the branch finite (value and gradient) where it is not selected.
        disc = c2 * c2 - 3.0 * c3 * c1
        has_fold = pt.or_(pt.le(c1, 0.0), pt.and_(pt.lt(c2, 0.0), pt.ge(disc, 0.0)))
        fold = pt.maximum(pt.maximum(c1, 0.0) / pt.maximum(pt.sqrt(pt.maximum(disc, 1e-24)) - c2, 1e-12), 1e-8)
        first_branch = pt.and_(found, pt.or_(pt.invert(has_fold), pt.le(x0, fold)))
        x = pt.switch(first_branch, x, fold)
    return x * pt.exp(omb * pt.log(forward + shift))


def sabr_atm_elasticity(forward, tau, alpha, beta, rho, nu, shift=0.0):
    """Elasticity ``d ln sigma_ATM / d ln alpha`` of the [H02]_ eq. (2.17a) ATM vol in ``alpha``.

    With ``x = alpha / f**(1 - beta)`` and the coefficients of :func:`sabr_alpha_from_atm_vol`,
    ``sigma_ATM = x (c1 + c2 x + c3 x**2)``, so::

        e = (c1 + 2 c2 x + 3 c3 x**2) / (c1 + c2 x + c3 x**2).

    ``e = 1`` as ``tau -> 0`` (the ATM vol is ``alpha / f**(1 - beta)``), ``e = 0`` at the fold of the
    expansion (the largest ATM vol its first branch reaches), and ``e`` falls towards 0 as the
    ``tau`` correction grows to the size of the leading term, i.e. where the small-time expansion is
    no longer accurate.

    Parameters
    ----------
    forward, tau, alpha, beta, rho, nu, shift
        As in :func:`sabr_lognormal_vol`; scalars, arrays or tensors, broadcast.

    Returns
    -------
    TensorVariable
        ``e``, dimensionless, broadcast shape. Inputs are not checked (a prior term of sampled
        parameters uses it).

    References
    ----------
    [H02]_ eq. (2.17a) at ``K = f``.
    """
    forward, tau, alpha, beta, rho, nu, shift = _tensors(forward, tau, alpha, beta, rho, nu, shift)
    x = alpha / pt.exp((1.0 - beta) * pt.log(forward + shift))
    c1, c2, c3 = _atm_cubic_coefficients(tau, beta, rho, nu)
    return (c1 + (2.0 * c2 + 3.0 * c3 * x) * x) / (c1 + (c2 + c3 * x) * x)


def sabr_black76_price(forward, strike, tau, alpha, beta, rho, nu, cp, discount_factor=1.0, shift=0.0):
    """Option price in quote currency from the Hagan (2002) lognormal vol: ``D (f) c_B76(ln(K'/f), sigma_B**2 tau)``.

    ``f = forward + shift``, ``K' = strike + shift``, ``sigma_B`` from :func:`sabr_lognormal_vol`; the
    shifted Black-76 price equals the price of the option on ``F`` with strike ``K`` (the payoff
    ``(F - K)^+ = (f - K')^+``). Differentiable in every input (greeks by :func:`pytensor.grad`, e.g.
    the SABR delta ``dV/dF`` includes the smile shift through ``sigma_B(F)``).

    Parameters
    ----------
    forward, strike, tau, alpha, beta, rho, nu, shift
        As in :func:`sabr_lognormal_vol`.
    cp : array_like or TensorVariable
        +1 (call) or -1 (put).
    discount_factor : array_like or TensorVariable, default 1.0
        ``D = P(0, tau)``, ``> 0``.

    Returns
    -------
    TensorVariable
        Price in quote currency, broadcast shape.

    Raises
    ------
    ValueError
        As :func:`sabr_lognormal_vol`, or a non-symbolic ``discount_factor <= 0`` or ``cp`` not +-1.

    References
    ----------
    [H02]_ (implied vol); Black (1976) via :func:`bayescal.kernels.black.black76_norm_price`.
    """
    _check_constant("discount_factor", discount_factor, lambda a: a > 0.0, "> 0")
    vol = sabr_lognormal_vol(forward, strike, tau, alpha, beta, rho, nu, shift)
    forward, strike, tau, shift, discount_factor = _tensors(forward, strike, tau, shift, discount_factor)
    f = forward + shift
    k = pt.log(strike + shift) - pt.log(f)
    return discount_factor * f * black76_norm_price(k, vol * vol * tau, cp)
