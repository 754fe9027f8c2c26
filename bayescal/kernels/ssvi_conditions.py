"""SSVI no-arbitrage conditions of Gatheral & Jacquier (2014) as margins (positive = satisfied).

Complements :mod:`bayescal.kernels.svi` (which evaluates SSVI total variance and the density
function ``g``, but not the parameter conditions of the theorems). Pure PyTensor: inputs are Python
scalars, numpy arrays or PyTensor tensors, broadcast elementwise; every margin is a differentiable
graph, so it can serve as a constraint, a penalty (e.g. ``softplus(-margin)``) or a check.

Notation: SSVI ``w(k, theta) = theta/2 (1 + rho phi k + sqrt((phi k + rho)**2 + 1 - rho**2))`` with
``theta = theta_t`` the ATM total variance of expiry ``t`` and ``phi = phi(theta) > 0``
(:func:`bayescal.kernels.svi.ssvi_total_variance`).

References
----------
.. [GJ14] J. Gatheral, A. Jacquier (2014), "Arbitrage-free SVI volatility surfaces", Quantitative
   Finance 14(1):59-71, arXiv:1204.0646. Theorem 4.1 (calendar spread arbitrage: ``d theta_t / dt >= 0``
   and ``0 <= d(theta phi(theta))/d theta <= (1 + sqrt(1 - rho**2)) phi(theta) / rho**2``, the upper bound
   infinite for ``rho = 0``); Theorem 4.2 (butterfly arbitrage: ``theta phi (1 + |rho|) < 4`` and
   ``theta phi**2 (1 + |rho|) <= 4``).
"""

from __future__ import annotations

from typing import NamedTuple

import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import graph_replace

__all__ = [
    "SsviButterflyMargins",
    "SsviCalendarMargins",
    "ssvi_butterfly_margins",
    "ssvi_calendar_margins",
    "ssvi_calendar_margins_from_phi",
    "ssvi_theta_monotonicity_margin",
]


class SsviButterflyMargins(NamedTuple):
    """Margins of [GJ14]_ Theorem 4.2 (both must hold; the first strictly)."""

    #: ``4 - theta phi (1 + |rho|)``; the theorem needs ``> 0``.
    theta_phi: object
    #: ``4 - theta phi**2 (1 + |rho|)``; the theorem needs ``>= 0``.
    theta_phi_squared: object


class SsviCalendarMargins(NamedTuple):
    """Margins of [GJ14]_ Theorem 4.1, condition 2 (both ``>= 0``)."""

    #: ``d(theta phi(theta)) / d theta``; needs ``>= 0``.
    lower: object
    #: ``(1 + sqrt(1 - rho**2)) phi - rho**2 d(theta phi)/d theta`` (the upper bound multiplied by
    #: ``rho**2 >= 0``, so that ``rho = 0``, where the bound is infinite, is finite); needs ``>= 0``.
    upper: object


def ssvi_butterfly_margins(theta, rho, phi):
    """Sufficient no-butterfly-arbitrage conditions of an SSVI slice, [GJ14]_ Theorem 4.2.

    The slice ``w(., theta)`` is free of butterfly arbitrage if ``theta phi (1 + |rho|) < 4`` and
    ``theta phi**2 (1 + |rho|) <= 4``. Returned as margins ``4 - theta phi (1 + |rho|)`` (needs ``> 0``)
    and ``4 - theta phi**2 (1 + |rho|)`` (needs ``>= 0``). The conditions are sufficient, not necessary
    (a slice violating them can still have ``g(k) >= 0``, see
    :func:`bayescal.kernels.svi.ssvi_g`).

    All inputs broadcast elementwise.

    Parameters
    ----------
    theta : array_like or TensorVariable
        ATM total implied variance ``theta_t > 0`` (dimensionless).
    rho : array_like or TensorVariable
        SSVI correlation, ``|rho| < 1``.
    phi : array_like or TensorVariable
        ``phi(theta) > 0`` at the same ``theta`` (e.g. :func:`bayescal.kernels.svi.ssvi_phi_power_law`).

    Returns
    -------
    SsviButterflyMargins
        Named tuple ``(theta_phi, theta_phi_squared)`` of TensorVariables (broadcast shape,
        dimensionless); positive means satisfied. ``|rho|`` has no derivative at ``rho = 0``
        (PyTensor returns 0 there).

    References
    ----------
    [GJ14]_ Theorem 4.2.
    """
    theta, rho, phi = (pt.as_tensor_variable(x) for x in (theta, rho, phi))
    one_plus = 1.0 + pt.abs(rho)
    return SsviButterflyMargins(
        theta_phi=4.0 - theta * phi * one_plus,
        theta_phi_squared=4.0 - theta * phi * phi * one_plus,
    )


def ssvi_calendar_margins(theta, rho, phi, dphi_dtheta):
    """Calendar-spread conditions on ``phi``, [GJ14]_ Theorem 4.1 condition 2, as margins.

    The SSVI surface is free of calendar spread arbitrage iff ``theta_t`` is non-decreasing in ``t``
    (see :func:`ssvi_theta_monotonicity_margin`) and, for all ``theta > 0``,
    ``0 <= d(theta phi(theta))/d theta <= (1 + sqrt(1 - rho**2)) phi(theta) / rho**2`` (no upper bound
    for ``rho = 0``). With ``D = d(theta phi)/d theta = phi + theta dphi/dtheta`` this returns
    ``lower = D`` and ``upper = (1 + sqrt(1 - rho**2)) phi - rho**2 D`` (the upper condition multiplied by
    ``rho**2``, which keeps its sign and makes ``rho = 0`` finite). Evaluate on a grid of ``theta``
    covering the surface's ATM variances (the theorem quantifies over all ``theta``).

    Parameters
    ----------
    theta : array_like or TensorVariable
        ATM total variance(s) ``> 0``.
    rho : array_like or TensorVariable
        SSVI correlation, ``|rho| < 1``.
    phi : array_like or TensorVariable
        ``phi(theta)``.
    dphi_dtheta : array_like or TensorVariable
        ``phi'(theta)`` (see :func:`ssvi_calendar_margins_from_phi` to get it by autodiff).

    Returns
    -------
    SsviCalendarMargins
        Named tuple ``(lower, upper)`` of TensorVariables (broadcast shape); ``>= 0`` means satisfied.

    References
    ----------
    [GJ14]_ Theorem 4.1.
    """
    theta, rho, phi, dphi = (pt.as_tensor_variable(x) for x in (theta, rho, phi, dphi_dtheta))
    d_theta_phi = phi + theta * dphi
    rho2 = rho * rho
    return SsviCalendarMargins(
        lower=d_theta_phi,
        upper=(1.0 + pt.sqrt(1.0 - rho2)) * phi - rho2 * d_theta_phi,
    )


def ssvi_calendar_margins_from_phi(theta, rho, phi_fn):
    """:func:`ssvi_calendar_margins` with ``phi'(theta)`` obtained by :func:`pytensor.grad`.

    ``phi_fn`` must act elementwise (e.g. ``lambda th: ssvi_phi_power_law(th, eta, gamma)``); the
    derivative is taken on a fresh symbolic copy of ``theta`` and substituted back, so ``theta`` may
    be a constant array or any tensor (the result stays differentiable in the parameters of
    ``phi_fn`` and in ``theta``).

    Parameters
    ----------
    theta : array_like or TensorVariable
        ATM total variances ``> 0`` (e.g. a grid).
    rho : array_like or TensorVariable
        SSVI correlation, ``|rho| < 1``.
    phi_fn : callable
        ``phi_fn(theta) -> TensorVariable`` of the same shape as ``theta``, elementwise in ``theta``.

    Returns
    -------
    SsviCalendarMargins
        As :func:`ssvi_calendar_margins`.

    References
    ----------
    [GJ14]_ Theorem 4.1.
    """
    theta = pt.as_tensor_variable(theta)
    dummy = theta.type()
    phi_dummy = pt.as_tensor_variable(phi_fn(dummy))
    dphi_dummy = pytensor.grad(phi_dummy.sum(), dummy)
    phi, dphi = graph_replace([phi_dummy, dphi_dummy], {dummy: theta}, strict=False)
    return ssvi_calendar_margins(theta, rho, phi, dphi)


def ssvi_theta_monotonicity_margin(theta, axis=-1):
    """``theta_{i+1} - theta_i`` along the expiry axis, [GJ14]_ Theorem 4.1 condition 1 (``>= 0``).

    Parameters
    ----------
    theta : array_like or TensorVariable
        ATM total variances ordered by increasing expiry along ``axis``.
    axis : int, default -1
        The expiry axis.

    Returns
    -------
    TensorVariable
        Differences, one fewer element along ``axis``; ``>= 0`` everywhere means the ATM total
        variance is non-decreasing in expiry.

    References
    ----------
    [GJ14]_ Theorem 4.1 (``d theta_t / dt >= 0``).
    """
    return pt.diff(pt.as_tensor_variable(theta), axis=axis)
