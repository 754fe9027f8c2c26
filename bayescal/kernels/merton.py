"""Merton (1976) lognormal jump-diffusion pricing kernels as pure PyTensor graphs.

The price is Merton's closed-form series: a Poisson-weighted sum of Black-76 prices, each term
conditioned on the number of jumps before expiry. Same conventions as :mod:`bayescal.kernels.black`:
inputs are Python scalars, numpy arrays or PyTensor tensors (converted with
:func:`pytensor.tensor.as_tensor_variable`, broadcast elementwise, numpy rules); outputs are PyTensor
graphs, differentiable in every input with :func:`pytensor.grad` (greeks of :func:`merton_price`).

Model (risk-neutral, forward measure)
-------------------------------------
``S_T = F exp(-lambda m tau - volatility**2 tau / 2 + volatility W_tau + sum_{i <= N_tau} Y_i)`` with
``N_tau`` Poisson with mean ``lambda tau`` (``lambda = jump_intensity`` per year), log jump sizes
``Y_i ~ Normal(jump_log_mean, jump_log_stdev**2)`` and the compensator ``m = E[J] - 1 =
exp(jump_log_mean + jump_log_stdev**2 / 2) - 1``, so that ``E[S_T] = F``.

Conditional on ``N_tau = n`` the terminal price is lognormal with mean
``F_n = F exp(-lambda m tau) (1 + m)**n`` and total variance ``w_n = volatility**2 tau + n jump_log_stdev**2``.
With ``Lambda = lambda (1 + m) tau`` the normalised price is [M76]_ [H98]_::

    c = C / (D F) = sum_{n >= 0} exp(-Lambda) Lambda**n / n! * c_B76(k_n, w_n, cp),
    k_n = k + lambda m tau - n ln(1 + m),        ln(1 + m) = jump_log_mean + jump_log_stdev**2 / 2,

where ``c_B76`` is :func:`bayescal.kernels.black.black76_norm_price` (the weights
``P(N = n) F_n / F`` combine into Poisson(``Lambda``) probabilities).

Truncation rule
---------------
The series is cut after a fixed number of terms ``n = 0 .. n_terms - 1`` (default
:data:`MERTON_DEFAULT_N_TERMS` = 64). Every Black term of a call lies in ``[0, 1]``, so the
truncation error of a call is at most the Poisson tail ``P(Poisson(Lambda) >= n_terms)``; a put term is
at most ``e^{k_n}`` and ``e^{k_n} P(N=n; Lambda) = e^k P(N = n; lambda tau)``, so the put error is at most
``e^k P(Poisson(lambda tau) >= n_terms)``. With 64 terms the tail is below 1e-12 for Poisson means up to
:data:`MERTON_MAX_POISSON_MEAN` = 22.68 (e.g. 22 jumps a year over one year); see
:func:`merton_poisson_tail` to size ``n_terms`` for other ranges (32 terms: mean <= 6.58; 48: <= 14.0;
96: <= 42.3; 128: <= 63.8). The rule is parameter-independent, so one compiled graph serves every
parameter value a sampler visits; outside the supported range the price is still finite but less
accurate.

References
----------
.. [M76] R.C. Merton (1976), "Option pricing when underlying stock returns are discontinuous",
   Journal of Financial Economics 3(1-2):125-144: the lognormal-jump case, priced as a
   Poisson-weighted series of Black-Scholes prices.
.. [H98] E.G. Haug (1998), The Complete Guide to Option Pricing Formulas, McGraw-Hill: Merton's
   jump-diffusion formula in the (total volatility, jump share gamma, lambda) notation of the
   reference table (``shared/reference/merton_jump_diffusion.json``).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from scipy.optimize import brentq
from scipy.special import gammainc, gammaln

from bayescal.kernels.black import _check_constant, black76_norm_price

__all__ = [
    "MERTON_DEFAULT_N_TERMS",
    "MERTON_MAX_POISSON_MEAN",
    "merton_max_poisson_mean",
    "merton_norm_price",
    "merton_poisson_tail",
    "merton_price",
]

#: Default number of series terms (jump counts 0 .. 63).
MERTON_DEFAULT_N_TERMS = 64
#: Largest Poisson mean for which 64 terms leave a tail mass below 1e-12 (``P(N >= 64) < 1e-12``).
MERTON_MAX_POISSON_MEAN = 22.68


def merton_poisson_tail(n_terms, poisson_mean):
    """Poisson tail mass ``P(N >= n_terms)``: the truncation error bound of the series (numpy).

    Equal to the regularised lower incomplete gamma function ``P(n_terms, poisson_mean)``. For calls
    pass ``poisson_mean = Lambda = jump_intensity * tau * exp(jump_log_mean + jump_log_stdev**2 / 2)``;
    for puts pass ``jump_intensity * tau`` and multiply by ``e^k`` (see the module docstring).

    Parameters
    ----------
    n_terms : int or array_like
        Number of series terms kept (``>= 1``).
    poisson_mean : float or array_like
        Poisson mean, ``>= 0``.

    Returns
    -------
    float or numpy.ndarray
        Tail mass in ``[0, 1]``, broadcast shape.

    Raises
    ------
    ValueError
        If ``n_terms < 1`` or ``poisson_mean < 0``.

    References
    ----------
    Abramowitz & Stegun (1964) 26.4.19 (Poisson CDF and the incomplete gamma function).
    """
    n = np.asarray(n_terms, dtype=np.float64)
    mean = np.asarray(poisson_mean, dtype=np.float64)
    if np.any(n < 1) or np.any(mean < 0):
        raise ValueError("merton_poisson_tail: need n_terms >= 1 and poisson_mean >= 0")
    out = gammainc(n, mean)
    return out[()] if np.ndim(out) == 0 else out


def _check_n_terms(n_terms, prefix=""):
    """Raise ``ValueError`` (message starting with ``prefix``) unless ``n_terms`` is a positive integer."""
    if isinstance(n_terms, bool) or not isinstance(n_terms, int | np.integer) or n_terms < 1:
        raise ValueError(f"{prefix}n_terms must be a positive integer; got {n_terms!r}")


def merton_max_poisson_mean(n_terms, tail=1e-12):
    """Largest Poisson mean whose tail beyond the series is at most ``tail``: what ``n_terms`` covers (numpy).

    Solves ``P(Poisson(mean) >= n_terms) = tail`` (:func:`merton_poisson_tail`, increasing in the
    mean) by Brent's method to a relative accuracy of 1e-12.

    Parameters
    ----------
    n_terms : int
        Number of series terms kept, ``>= 1``.
    tail : float, default 1e-12
        Truncation-error bound wanted (units of the forward for calls), in (0, 1).

    Returns
    -------
    float
        The Poisson mean (e.g. 22.68 for 64 terms, 42.3 for 96, 63.8 for 128).

    Raises
    ------
    ValueError
        If ``n_terms < 1`` or ``tail`` is not in (0, 1).
    """
    _check_n_terms(n_terms, "merton_max_poisson_mean: ")
    if not 0.0 < tail < 1.0:
        raise ValueError(f"merton_max_poisson_mean: tail must be in (0, 1); got {tail!r}")
    hi = float(n_terms)  # P(N >= n) at mean n is about 1/2 > tail
    return float(brentq(lambda mean: gammainc(n_terms, mean) - tail, 0.0, hi, rtol=1e-12))


def _poisson_weights(poisson_mean, n):
    """``exp(-L) L**n / n!`` for a constant float vector ``n`` (last axis), exact gradient at ``L = 0``.

    Two branches keep value and gradient finite everywhere: for ``L <= 1`` the power form
    ``exp(-L) L**n / n!`` (``L**n`` only for ``n >= 1``, so ``d/dL`` is finite at ``L = 0``); for ``L > 1``
    the log form ``exp(n ln L - L - ln n!)``, which cannot overflow. Each branch sees a safe argument
    (1 where it is not selected), so the unselected branch never produces NaN gradients.
    """
    lam = pt.shape_padright(poisson_mean)
    big = pt.gt(lam, 1.0)
    lam_hi = pt.switch(big, lam, 1.0)
    lam_lo = pt.switch(big, 1.0, lam)
    log_fact = gammaln(n + 1.0)
    pos = (n > 0).astype(np.float64)
    n_pos = np.maximum(n, 1.0)
    power = pt.power(lam_lo, n_pos) * pos + (1.0 - pos)  # lam_lo ** n, with n = 0 -> 1
    w_lo = pt.exp(-lam_lo) * power * np.exp(-log_fact)
    w_hi = pt.exp(n * pt.log(lam_hi) - lam_hi - log_fact)
    return pt.switch(big, w_hi, w_lo)


def merton_norm_price(
    k, tau, volatility, jump_intensity, jump_log_mean, jump_log_stdev, cp, n_terms=MERTON_DEFAULT_N_TERMS
):
    """Undiscounted Merton (1976) price in units of the forward, ``c = C / (D F)``.

    ``c = sum_{n < n_terms} exp(-Lambda) Lambda**n / n! * c_B76(k_n, w_n, cp)`` with
    ``Lambda = lambda (1 + m) tau``, ``k_n = k + lambda m tau - n (mu_J + delta**2 / 2)``,
    ``w_n = volatility**2 tau + n delta**2`` and ``m = exp(mu_J + delta**2 / 2) - 1`` [M76]_ [H98]_.
    Each Black term is evaluated out of the money plus intrinsic value by
    :func:`~bayescal.kernels.black.black76_norm_price`, so small prices keep relative precision.

    All array inputs broadcast elementwise (numpy rules); the series runs along an internal trailing
    axis.

    Parameters
    ----------
    k : array_like or TensorVariable
        Log-moneyness ``ln(K / F)``, dimensionless.
    tau : array_like or TensorVariable
        Time to expiry in years, ``>= 0``.
    volatility : array_like or TensorVariable
        Diffusion volatility, annualised decimal, ``>= 0``.
    jump_intensity : array_like or TensorVariable
        Jump intensity ``lambda`` (expected jumps per year), ``>= 0``.
    jump_log_mean : array_like or TensorVariable
        Mean ``mu_J`` of the log jump size ``ln J`` (dimensionless).
    jump_log_stdev : array_like or TensorVariable
        Standard deviation ``delta`` of ``ln J``, ``>= 0``.
    cp : array_like or TensorVariable
        +1 (call) or -1 (put).
    n_terms : int, default 64
        Number of series terms (jump counts ``0 .. n_terms - 1``), a Python int fixed at graph build
        time. Truncation error <= ``P(Poisson(Lambda) >= n_terms)`` for calls and
        ``e^k P(Poisson(lambda tau) >= n_terms)`` for puts; below 1e-12 for Poisson means up to 22.68
        with the default (see the module docstring and :func:`merton_poisson_tail`).

    Returns
    -------
    TensorVariable
        ``c``, broadcast shape of the inputs, dimensionless.

    Raises
    ------
    ValueError
        If ``n_terms`` is not a positive integer, or a non-symbolic ``tau``, ``volatility``,
        ``jump_intensity`` or ``jump_log_stdev`` is negative, or a non-symbolic ``cp`` is not +-1.
        Symbolic inputs are not checked (negative variances give NaN).

    References
    ----------
    [M76]_; [H98]_; Black-76 terms as in :mod:`bayescal.kernels.black`.
    """
    _check_n_terms(n_terms)
    _check_constant("tau", tau, lambda a: a >= 0.0, ">= 0")
    _check_constant("volatility", volatility, lambda a: a >= 0.0, ">= 0")
    _check_constant("jump_intensity", jump_intensity, lambda a: a >= 0.0, ">= 0")
    _check_constant("jump_log_stdev", jump_log_stdev, lambda a: a >= 0.0, ">= 0")
    _check_constant("cp", cp, lambda a: np.abs(a) == 1.0, "+1 (call) or -1 (put)")
    k, tau, vol, lam, mu, delta, cp = (
        pt.as_tensor_variable(x) for x in (k, tau, volatility, jump_intensity, jump_log_mean, jump_log_stdev, cp)
    )
    n = np.arange(int(n_terms), dtype=np.float64)

    log_mean_jump = mu + 0.5 * delta * delta  # ln(1 + m) = ln E[J]
    m = pt.expm1(log_mean_jump)  # E[J] - 1
    lam_tau = lam * tau
    poisson_mean = lam_tau * pt.exp(log_mean_jump)  # Lambda = lambda (1 + m) tau

    pad = pt.shape_padright
    k_n = pad(k + lam_tau * m) - n * pad(log_mean_jump)
    w_n = pad(vol * vol * tau) + n * pad(delta * delta)
    terms = black76_norm_price(k_n, w_n, pad(cp))
    return pt.sum(_poisson_weights(poisson_mean, n) * terms, axis=-1)


def merton_price(
    forward,
    strike,
    tau,
    volatility,
    jump_intensity,
    jump_log_mean,
    jump_log_stdev,
    cp,
    discount_factor=1.0,
    n_terms=MERTON_DEFAULT_N_TERMS,
):
    """Merton (1976) option price in quote currency, ``D * F * c(ln(K/F), ...)``.

    Thin wrapper around :func:`merton_norm_price`; its graph is differentiable in every input, so
    greeks come from :func:`pytensor.grad` (delta = dV/dF with ``D`` held, vega = dV/d volatility,
    sensitivities to the jump parameters, ``-dV/d tau`` for theta when ``F`` and ``D`` are built from
    ``tau`` by the caller). For a spot model pass ``forward = S exp((r - q) tau)`` and
    ``discount_factor = exp(-r tau)``.

    Parameters
    ----------
    forward : array_like or TensorVariable
        Forward price ``F`` for the expiry, quote currency, ``> 0``.
    strike : array_like or TensorVariable
        Strike ``K``, quote currency, ``> 0``.
    tau, volatility, jump_intensity, jump_log_mean, jump_log_stdev, cp, n_terms
        As in :func:`merton_norm_price`.
    discount_factor : array_like or TensorVariable, default 1.0
        ``D = P(0, tau)``, ``> 0``; 1 gives the undiscounted price.

    Returns
    -------
    TensorVariable
        Option price in quote currency, broadcast shape of the inputs.

    Raises
    ------
    ValueError
        If a non-symbolic ``forward``, ``strike`` or ``discount_factor`` is not positive, or for the
        reasons listed in :func:`merton_norm_price`.

    References
    ----------
    [M76]_; [H98]_.
    """
    _check_constant("forward", forward, lambda a: a > 0.0, "> 0")
    _check_constant("strike", strike, lambda a: a > 0.0, "> 0")
    _check_constant("discount_factor", discount_factor, lambda a: a > 0.0, "> 0")
    forward = pt.as_tensor_variable(forward)
    strike = pt.as_tensor_variable(strike)
    discount_factor = pt.as_tensor_variable(discount_factor)
    k = pt.log(strike) - pt.log(forward)
    c = merton_norm_price(k, tau, volatility, jump_intensity, jump_log_mean, jump_log_stdev, cp, n_terms=n_terms)
    return discount_factor * forward * c
