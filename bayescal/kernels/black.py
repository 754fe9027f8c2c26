"""Black-76 pricing kernels as pure PyTensor graphs (forward measure, dimensionless form).

Every function here is pure: no PyMC, no state. Inputs may be Python scalars, numpy arrays or
PyTensor tensors; they are converted with :func:`pytensor.tensor.as_tensor_variable`, broadcast
elementwise (numpy rules) and the result is a PyTensor graph. Evaluate with ``.eval()`` or compile
with :func:`pytensor.function`; differentiate with :func:`pytensor.grad` (this is how greeks are
obtained, see :func:`black76_price`).

Notation (see :mod:`bayescal.conventions`)
------------------------------------------
``k = ln(K / F)``
    log-moneyness (dimensionless).
``w = iv**2 * tau``
    total implied variance (dimensionless).
``cp``
    +1 for a call, -1 for a put.
``c = C / (D * F)``
    undiscounted price in units of the forward (dimensionless), ``D`` the discount factor.

References
----------
.. [B76] F. Black (1976), "The pricing of commodity contracts", Journal of Financial Economics
   3(1-2):167-179, the Black-76 formula for options on a forward/futures price.
.. [J15] P. Jaeckel (2015), "Let's be rational", Wilmott 2015(75):40-53, section 2 (normalised
   Black function, put-call symmetry; out-of-the-money evaluation plus intrinsic value).
.. [H70] A.S. Householder (1970), "The numerical treatment of a single nonlinear equation",
   McGraw-Hill (Halley's method, the second-order Householder iteration).
.. [BSM] R.C. Merton (1973), "Theory of rational option pricing", Bell Journal of Economics and
   Management Science 4(1):141-183 (continuous dividend yield: F = S exp((r - q) tau)).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

__all__ = ["black76_norm_implied_vol", "black76_norm_price", "black76_price", "norm_cdf"]

_SQRT1_2 = float(np.sqrt(0.5))
#: Total variances in ``[0, _W_FLOOR)`` are raised to this value (smallest positive normal double).
_W_FLOOR = float(np.finfo(np.float64).tiny)


def _check_constant(name: str, value, ok, requirement: str) -> None:
    """Validate a *non-symbolic* input eagerly; symbolic inputs cannot be checked at graph build time."""
    if isinstance(value, Variable):
        return
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(ok(arr)):
        raise ValueError(f"{name} must be {requirement}; got {value!r}")


def norm_cdf(x):
    """Standard normal cumulative distribution function ``N(x)``, accurate in the lower tail.

    Computed as ``N(x) = erfc(-x / sqrt(2)) / 2``, which keeps full *relative* precision for
    ``x -> -inf`` (down to the underflow of ``erfc`` near ``x = -38.5``) and absolute precision of
    one ulp near ``N = 1``; ``1 - Phi`` is never formed. The gradient is the normal density
    (PyTensor's ``Erfc`` op carries its own gradient ``-2/sqrt(pi) exp(-z**2)``).

    Parameters
    ----------
    x : array_like or TensorVariable
        Any shape.

    Returns
    -------
    TensorVariable
        Same shape as ``x``, values in ``[0, 1]``.

    References
    ----------
    Abramowitz & Stegun (1964), chapters 7 and 26 (``Phi(x) = erfc(-x/sqrt 2)/2``); the same
    identity is used by ``scipy.special.ndtr``.
    """
    x = pt.as_tensor_variable(x)
    return 0.5 * pt.erfc(-x * _SQRT1_2)


def black76_norm_price(k, w, cp):
    """Undiscounted Black-76 price in units of the forward, ``c = C / (D F)``.

    ``c = cp * (N(cp d1) - e^k N(cp d2))`` with ``d1,2 = -k / sqrt(w) +/- sqrt(w) / 2`` [B76]_.

    Numerics: the out-of-the-money side (call for ``k >= 0``, put for ``k < 0``) is always
    evaluated with the formula above, so its (small) time value is formed from tail
    probabilities with full relative precision; an in-the-money option is then obtained by
    put-call parity, ``c_call - c_put = 1 - e^k``, adding the intrinsic value
    ``cp * (1 - e^k) = -cp * expm1(k)`` [J15]_. Total variances in ``[0, 2.2e-308)`` are raised to
    the smallest positive normal double, so ``w = 0`` returns the intrinsic value
    ``max(cp (1 - e^k), 0)`` (with zero gradient in ``w``) instead of NaN. The value and the
    gradient are finite for far strikes and tiny variances (e.g. ``|k| = 5``, ``w = 1e-8``);
    OTM prices below about 1e-300 underflow to 0.

    Shapes broadcast elementwise (numpy rules).

    Parameters
    ----------
    k : array_like or TensorVariable
        Log-moneyness ``ln(K / F)``, dimensionless, any real value.
    w : array_like or TensorVariable
        Total implied variance ``iv**2 * tau``, dimensionless, ``>= 0``.
    cp : array_like or TensorVariable
        +1 (call) or -1 (put). Integer or float dtype.

    Returns
    -------
    TensorVariable
        Broadcast shape of the inputs; ``c`` in ``[max(cp (1 - e^k), 0), 1]`` for calls and
        ``[max(e^k - 1, 0), e^k]`` for puts.

    Raises
    ------
    ValueError
        If ``cp`` is given as a non-symbolic value other than +1/-1, or ``w`` is given as a
        non-symbolic value that is negative or NaN. Symbolic inputs cannot be checked when the
        graph is built: a symbolic ``w < 0`` yields NaN; a symbolic ``cp`` other than +-1 yields a
        meaningless number.

    References
    ----------
    [B76]_ (formula); [J15]_ section 2 (normalised form, parity-based evaluation).
    """
    _check_constant("cp", cp, lambda a: np.abs(a) == 1.0, "+1 (call) or -1 (put)")
    _check_constant("w", w, lambda a: a >= 0.0, "a total variance >= 0")
    k = pt.as_tensor_variable(k)
    w = pt.as_tensor_variable(w)
    cp = pt.as_tensor_variable(cp)

    w_pos = pt.switch(pt.and_(pt.ge(w, 0.0), pt.lt(w, _W_FLOOR)), _W_FLOOR, w)
    s = pt.sqrt(w_pos)
    d1 = -k / s + 0.5 * s
    d2 = d1 - s
    # out-of-the-money side: +1 (call) for k >= 0, -1 (put) for k < 0
    otm = pt.switch(pt.ge(k, 0.0), 1.0, -1.0)
    time_value = otm * (norm_cdf(otm * d1) - pt.exp(k) * norm_cdf(otm * d2))
    intrinsic = -cp * pt.expm1(k)  # cp * (1 - e^k), exact near k = 0
    return time_value + pt.switch(pt.eq(cp, otm), 0.0, intrinsic)


def black76_price(forward, strike, tau, iv, cp, discount_factor=1.0):
    """Black-76 option price in quote currency, ``D * F * c(ln(K/F), iv**2 tau, cp)``.

    Thin wrapper around :func:`black76_norm_price` whose graph is differentiable in every
    input, so greeks come from :func:`pytensor.grad`: delta = dV/dF (with ``D`` held),
    gamma = d2V/dF2, vega = dV/d iv, ``-dV/d tau`` for theta (build ``D`` and ``F`` from ``tau`` in
    the caller if they depend on it), rho through ``discount_factor = exp(-r tau)``. For a
    Black-Scholes-Merton spot model pass ``forward = S exp((r - q) tau)`` and
    ``discount_factor = exp(-r tau)`` [BSM]_.

    Shapes broadcast elementwise (numpy rules).

    Parameters
    ----------
    forward : array_like or TensorVariable
        Forward price ``F`` for the expiry, quote currency, ``> 0``.
    strike : array_like or TensorVariable
        Strike ``K``, quote currency, ``> 0``.
    tau : array_like or TensorVariable
        Time to expiry in years, ``>= 0``.
    iv : array_like or TensorVariable
        Black-76 implied volatility, annualised decimal, ``>= 0``.
    cp : array_like or TensorVariable
        +1 (call) or -1 (put).
    discount_factor : array_like or TensorVariable, default 1.0
        ``D = P(0, tau)``, ``> 0``; 1 gives the undiscounted (forward) price.

    Returns
    -------
    TensorVariable
        Option price in quote currency, broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If a non-symbolic ``forward``, ``strike`` or ``discount_factor`` is not positive, a
        non-symbolic ``tau`` or ``iv`` is negative, or a non-symbolic ``cp`` is not +-1
        (symbolic inputs are not checked, see :func:`black76_norm_price`).

    References
    ----------
    [B76]_ (price); [BSM]_ (spot model mapped to the forward form).
    """
    _check_constant("forward", forward, lambda a: a > 0.0, "> 0")
    _check_constant("strike", strike, lambda a: a > 0.0, "> 0")
    _check_constant("tau", tau, lambda a: a >= 0.0, ">= 0")
    _check_constant("iv", iv, lambda a: a >= 0.0, ">= 0")
    _check_constant("discount_factor", discount_factor, lambda a: a > 0.0, "> 0")
    forward = pt.as_tensor_variable(forward)
    strike = pt.as_tensor_variable(strike)
    tau = pt.as_tensor_variable(tau)
    iv = pt.as_tensor_variable(iv)
    discount_factor = pt.as_tensor_variable(discount_factor)
    k = pt.log(strike) - pt.log(forward)
    w = pt.square(iv) * tau
    return discount_factor * forward * black76_norm_price(k, w, cp)


#: Default vol bounds (annualised decimal) of :func:`black76_norm_implied_vol`.
IV_SOLVE_MIN = 0.005
IV_SOLVE_MAX = 10.0


def black76_norm_implied_vol(c, k, tau, cp, iv_start, *, continuation_vega=None, iv_min=IV_SOLVE_MIN,
                             iv_max=IV_SOLVE_MAX):
    """Black-76 implied vol of a normalised price ``c = C / (D F)`` as a differentiable graph.

    The inverse of :func:`black76_norm_price` in its first argument, for use inside a likelihood
    (model prices -> model implied vols). The value comes from a compiled per-quote solve
    (:class:`bayescal.kernels._iv_solve.ImpliedVolSolve`, numba; Halley steps in ``ln s`` on the
    out-of-the-money premium, [J15]_ section 2, each quote iterated to convergence inside a
    bracket), which carries no gradient; the graph adds the implicit-function derivative
    ``d iv / d c = 1 / vega``:

        ``iv = iv* + (c - c_B(iv*)) / vega(iv*)``,   ``iv*``, ``c_B(iv*)``, ``vega(iv*)`` held constant,

    with ``c_B`` the Black price and ``vega = dc_B / d iv``. At the converged ``iv*`` the
    correction is at rounding level, so value and gradient are the exact implied vol and its
    derivative, consistent with each other.

    Bounds: the normalised OTM premium ``beta = time value / sqrt(F K)`` is inverted between 1e-12
    and 1e-12 below its upper bound ``e^(-|k|/2)`` (:data:`bayescal.kernels._iv_solve.B_FLOOR`;
    pricing kernels are accurate to about 1e-10 of the forward, so smaller premiums carry no
    information), and ``s = iv sqrt(tau)`` is kept in ``[max(iv_min sqrt(tau), |k|/37),
    iv_max sqrt(tau)]``. A price beyond them (including one below intrinsic value, as a Fourier
    kernel's rounding can give deep out of the money) gets the boundary's vol plus a linear
    continuation ``(c - c_B) / v`` with ``v = continuation_vega`` (default: the vega at the
    boundary, which can be tiny and make the continuation very steep): finite, continuous and
    increasing in ``c``, never NaN for a finite price, with the matching gradient.

    Shapes broadcast elementwise (numpy rules).

    Parameters
    ----------
    c : array_like or TensorVariable
        Undiscounted price in units of the forward (any real value; see Bounds).
    k : array_like or TensorVariable
        Log-moneyness ``ln(K / F)``.
    tau : array_like or TensorVariable
        Time to expiry in years, ``> 0``.
    cp : array_like or TensorVariable
        +1 (call) or -1 (put).
    iv_start : array_like or TensorVariable
        Starting vol per quote (annualised decimal), e.g. the first-order estimate from the market
        mid; clipped to the bounds (non-positive or NaN: the middle of the bracket). No gradient.
    continuation_vega : array_like or TensorVariable, optional
        Positive slope ``dc / d iv`` of the continuation beyond the bounds (e.g. the vega at the
        market mid); default the vega at the boundary. No gradient.
    iv_min, iv_max : float
        Vol bounds of the solve (annualised decimal), ``0 < iv_min < iv_max``.

    Returns
    -------
    TensorVariable
        Implied vol (annualised decimal), broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If the bounds are not ``0 < iv_min < iv_max``, or a non-symbolic ``cp`` is not +-1 or
        ``tau`` not positive.

    References
    ----------
    [B76]_ (price), [J15]_ (normalised OTM form, per-branch objectives), [H70]_ (Halley's method).
    """

    from bayescal.kernels._gradient import stop_gradient
    from bayescal.kernels._iv_solve import ImpliedVolSolve

    if not 0.0 < iv_min < iv_max:
        raise ValueError(f"need 0 < iv_min < iv_max; got iv_min={iv_min!r}, iv_max={iv_max!r}")
    _check_constant("cp", cp, lambda a: np.abs(a) == 1.0, "+1 (call) or -1 (put)")
    _check_constant("tau", tau, lambda a: a > 0.0, "> 0")
    c, k, tau, cp, iv_start = pt.broadcast_arrays(*(pt.as_tensor_variable(v) for v in (c, k, tau, cp, iv_start)))
    iv, price, vega, beyond = ImpliedVolSolve(iv_min, iv_max)(stop_gradient(c), k, tau, cp, iv_start)
    if continuation_vega is not None:
        vega = pt.switch(pt.gt(beyond, 0.0), stop_gradient(pt.as_tensor_variable(continuation_vega)), vega)
    return iv + (c - price) / vega
