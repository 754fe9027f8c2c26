"""Whole-surface Fourier pricing for calibration: one characteristic-function grid per expiry.

The per-quote kernels (:func:`bayescal.kernels.heston.heston_norm_price`,
:func:`bayescal.kernels.bates.bates_norm_price`) choose an integration contour for every quote and
reach near machine precision anywhere, at the cost of ``n_nodes`` characteristic-function
evaluations *per quote*. A calibration evaluates the same surface thousands of times with strikes
and maturities fixed, and the characteristic function depends on the maturity only. This module
uses that structure (Lewis 2001, one straight line ``Re a = 1/2`` for every quote)::

    c(k) = 1 - exp(k/2)/pi * int_0^inf Re[M(1/2 + i t) exp(-i t k)] / (t**2 + 1/4) dt,

with ``M(a) = E[exp(a X)]``, ``X = ln(F_T/F)``. On fixed quadrature nodes ``t_j`` per expiry it is
a weighted sum::

    c_q = 1 - sum_j (C_qj Re M_ej + S_qj Im M_ej),
    C_qj = w_j exp(k_q/2) cos(t_j k_q) / (pi (t_j**2 + 1/4)),   S_qj = (same with sin),

so the characteristic function is evaluated on an ``(n_expiry, n_nodes)`` grid only and, when
``k`` is data (a numpy array), the trigonometric weights ``C`` and ``S`` are constants: each quote
costs two multiply-adds per node in the log-density and its gradient. Quotes are laid out on an
``(n_expiry, max quotes per expiry)`` grid of slots (empty slots weigh zero), so the whole sum is one
fused elementwise product and reduction, in the log-density and in its gradient.

Nodes: Gauss-Legendre in ``y = ln(1 + t/s)`` on ``[0, ln(1 + t_max/s)]`` with the scale
``s = 1/sqrt(var_scale)`` set by a *reference total variance* per expiry (in calibration: the
market's at-the-money ``iv**2 tau``), ``t_max = T_MAX_WIDTHS s``. The nodes therefore depend on the
data, never on the parameters, and the gradient is that of the quadrature exactly. The rule is
accurate when the model's total variance lies within about a factor 1/8 to 8 of ``var_scale``
(Gaussian core resolved, tail truncated below ``exp(-T_MAX_WIDTHS**2 / 16)``); the accuracy on the
calibration domain is measured in ``tests/test_kernels_surface.py`` against the per-quote kernels.
Far out-of-the-money prices are obtained as ``1 - (integral)`` here, so only their *absolute* error is
small: ~1e-15 on the tested domain, but 1.4e-11 on a 1-year put at ``k = -1.45`` under Heston with
``rho = 0.95, xi = 1.3`` (more nodes do not change it), where the price itself is 1e-11; quotes that
cheap have no bid on any exchange (the recovery simulator drops bids below 1e-8 of the forward). The
per-quote kernels keep relative accuracy in the far wings and are used for everything that is not
a likelihood (grids, greeks, reports).

References
----------
.. [L01s] A.L. Lewis (2001), "A simple option formula for general jump-diffusion and other
   exponential Levy processes", OptionCity.net, eq. (2.10) (the ``Re a = 1/2`` formula).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from bayescal.kernels._lewis_grid import lewis_mgf_grid_op
from bayescal.kernels.bates import bates_log_mgf
from bayescal.kernels.heston import heston_log_mgf

__all__ = ["bates_surface_norm_price", "heston_surface_norm_price", "lewis_nodes", "surface_norm_price"]

#: Default quadrature nodes per expiry.
DEFAULT_SURFACE_NODES = 96
#: Truncation ``t_max = T_MAX_WIDTHS / sqrt(var_scale)``.
T_MAX_WIDTHS = 40.0
#: Scale of the log map in units of ``s``: nodes are near-uniform up to ``MAP_WIDTHS s``.
MAP_WIDTHS = 0.25


def lewis_nodes(var_scale, n_nodes: int = DEFAULT_SURFACE_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes and weights on ``t in [0, t_max]`` for :func:`surface_norm_price`.

    Parameters
    ----------
    var_scale : array_like, shape (n_expiry,)
        Reference total implied variance ``iv**2 tau`` per expiry, ``> 0``.
    n_nodes : int
        Gauss-Legendre nodes per expiry, ``>= 8``.

    Returns
    -------
    t, weights : ndarray, shape (n_expiry, n_nodes)
        Nodes and weights (Jacobian of the log map included).

    Raises
    ------
    ValueError
        If a ``var_scale`` is not finite and positive or ``n_nodes < 8``.
    """
    v = np.atleast_1d(np.asarray(var_scale, dtype=float))
    if v.ndim != 1 or not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(f"var_scale must be a vector of finite positive total variances, got {v}")
    if int(n_nodes) < 8:
        raise ValueError(f"n_nodes must be >= 8, got {n_nodes}")
    x, w = np.polynomial.legendre.leggauss(int(n_nodes))
    s = 1.0 / np.sqrt(v)[:, None]
    sm = MAP_WIDTHS * s
    y_max = np.log1p(T_MAX_WIDTHS / MAP_WIDTHS)
    y = 0.5 * (x + 1.0) * y_max
    t = sm * np.expm1(y)
    weights = 0.5 * w * y_max * sm * np.exp(y)
    return t, weights


def surface_norm_price(
    k,
    cp,
    expiry_idx,
    tau_expiry,
    log_mgf: Callable,
    params: Sequence,
    *,
    var_scale,
    n_nodes: int = DEFAULT_SURFACE_NODES,
    mgf_grid: Callable | None = None,
):
    """Undiscounted normalised prices ``C/(D F)`` of a surface from a log moment generating function.

    Parameters
    ----------
    k : array_like or TensorVariable, shape (n_quote,)
        Log-moneyness ``ln(K/F)``. A numpy array makes the trigonometric weights constants (fast
        path for calibration); a tensor is allowed (e.g. for strike greeks).
    cp : array_like or TensorVariable, shape (n_quote,)
        +1 call, -1 put.
    expiry_idx : array_like of int, shape (n_quote,)
        Expiry of each quote, indexing ``tau_expiry`` (data, numpy).
    tau_expiry : array_like or TensorVariable, shape (n_expiry,)
        Time to expiry in years per expiry, ``> 0``.
    log_mgf : callable
        ``log_mgf((a_re, a_im), tau, *params) -> (re, im)`` of ``ln E[exp(a X)]``, broadcasting
        elementwise, e.g. :func:`bayescal.kernels.heston.heston_log_mgf`.
    params : sequence of scalar TensorVariable or float
        Model parameters passed to ``log_mgf``.
    var_scale : array_like, shape (n_expiry,)
        Reference total variance per expiry, sets the nodes (:func:`lewis_nodes`).
    n_nodes : int, default 96
        Nodes per expiry.
    mgf_grid : callable, optional
        ``mgf_grid(t, tau, *params) -> (re, im)`` of ``M(1/2 + i t)`` on the ``(n_expiry, n_nodes)``
        node grid, a faster replacement of ``exp(log_mgf)`` (e.g.
        :func:`bayescal.kernels._lewis_grid.lewis_mgf_grid_op`); ``log_mgf`` is then unused.

    Returns
    -------
    TensorVariable, shape (n_quote,)
        Calls in ``[max(1 - e^k, 0), 1]``, puts in ``[max(e^k - 1, 0), e^k]`` up to quadrature error.

    Raises
    ------
    ValueError
        If ``expiry_idx`` is out of range for ``var_scale`` or shapes disagree (see also
        :func:`lewis_nodes`).

    References
    ----------
    [L01s]_ eq. (2.10); module docstring for the quadrature.
    """
    idx = np.asarray(expiry_idx)
    t, w = lewis_nodes(var_scale, n_nodes)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= t.shape[0]:
        raise ValueError(f"expiry_idx must be integers in [0, {t.shape[0]}), got range [{idx.min()}, {idx.max()}]")
    tau = pt.as_tensor_variable(np.asarray(tau_expiry, dtype=float) if not isinstance(tau_expiry, Variable)
                                else tau_expiry)
    if mgf_grid is not None:
        m_re, m_im = mgf_grid(t, tau, *params)
    else:
        ln_re, ln_im = log_mgf((0.5 + 0.0 * t, t), tau[:, None], *params)
        mod = pt.exp(ln_re)
        m_re, m_im = mod * pt.cos(ln_im), mod * pt.sin(ln_im)  # (n_expiry, n_nodes)
    symbolic_k = isinstance(k, Variable)
    if not symbolic_k:
        k = np.asarray(k, dtype=float)
        if k.shape != idx.shape:
            raise ValueError(f"k has shape {k.shape}, expiry_idx {idx.shape}")
    lib = pt if symbolic_k else np
    # Quotes laid out on an (n_expiry, n_max) grid of slots (empty slots have zero weight), so the
    # sum over nodes is one fused elementwise product and reduction for the whole surface.
    n_exp = t.shape[0]
    counts = np.bincount(idx, minlength=n_exp)
    n_max = int(counts.max())
    rank = np.empty(idx.size, dtype=np.int64)
    for e in range(n_exp):
        rank[idx == e] = np.arange(counts[e])
    slot = idx * n_max + rank
    mask = np.zeros(n_exp * n_max)
    mask[slot] = 1.0
    mask = mask.reshape(n_exp, n_max, 1)
    if symbolic_k:
        k_pad = pt.set_subtensor(pt.zeros(n_exp * n_max)[slot], k).reshape((n_exp, n_max))
    else:
        k_pad = np.zeros(n_exp * n_max)
        k_pad[slot] = k
        k_pad = k_pad.reshape(n_exp, n_max)
    kk = k_pad[:, :, None]
    wq = mask * (w / (np.pi * (t**2 + 0.25)))[:, None, :] * lib.exp(0.5 * kk)
    phase = t[:, None, :] * kk
    integral_pad = pt.sum(wq * lib.cos(phase) * m_re[:, None, :] + wq * lib.sin(phase) * m_im[:, None, :], axis=2)
    integral = integral_pad.reshape((n_exp * n_max,))[slot]
    put_shift = pt.switch(pt.lt(cp, 0), 1.0 - lib.exp(k), 0.0)
    return 1.0 - integral - put_shift


def heston_surface_norm_price(k, cp, expiry_idx, tau_expiry, v0, kappa, theta, xi, rho, *, var_scale,
                              n_nodes: int = DEFAULT_SURFACE_NODES):
    """Heston (1993) surface prices ``C/(D F)`` on one node grid per expiry (calibration kernel).

    Parameters as :func:`surface_norm_price` for the surface, and as
    :func:`bayescal.kernels.heston.heston_norm_price` for ``v0, kappa, theta, xi, rho``. With scalar
    parameters the characteristic-function grid and its parameter gradient come from one vectorised
    numba loop (:mod:`bayescal.kernels._lewis_grid`; its derivative in ``tau_expiry`` is not
    implemented); parameters that broadcast against the expiries use the generic graph (the same
    values to 2e-15).

    Returns
    -------
    TensorVariable, shape (n_quote,)

    Raises
    ------
    ValueError
        See :func:`surface_norm_price`.

    References
    ----------
    [L01s]_; characteristic function of Albrecher et al. (2007), see
    :func:`bayescal.kernels.heston.heston_log_mgf`.
    """
    params = (v0, kappa, theta, xi, rho)
    return surface_norm_price(k, cp, expiry_idx, tau_expiry, heston_log_mgf, params, var_scale=var_scale,
                              n_nodes=n_nodes, mgf_grid=_grid_op_if_scalar(params))


def bates_surface_norm_price(k, cp, expiry_idx, tau_expiry, v0, kappa, theta, xi, rho, jump_intensity,
                             jump_log_mean, jump_log_stdev, *, var_scale, n_nodes: int = DEFAULT_SURFACE_NODES):
    """Bates (1996) surface prices ``C/(D F)`` on one node grid per expiry (calibration kernel).

    Parameters as :func:`heston_surface_norm_price` plus the lognormal jumps of
    :func:`bayescal.kernels.bates.bates_norm_price` (``jump_intensity`` per year, ``jump_log_mean``,
    ``jump_log_stdev`` of the log jump size). Scalar parameters use the numba grid op, as
    :func:`heston_surface_norm_price`.

    Returns
    -------
    TensorVariable, shape (n_quote,)

    Raises
    ------
    ValueError
        See :func:`surface_norm_price`.

    References
    ----------
    [L01s]_; :func:`bayescal.kernels.bates.bates_log_mgf` (Bates 1996).
    """
    params = (v0, kappa, theta, xi, rho, jump_intensity, jump_log_mean, jump_log_stdev)
    return surface_norm_price(k, cp, expiry_idx, tau_expiry, bates_log_mgf, params, var_scale=var_scale,
                              n_nodes=n_nodes, mgf_grid=_grid_op_if_scalar(params))


def _grid_op_if_scalar(params) -> Callable | None:
    """The numba grid op for scalar parameters (every calibration; several times faster with its
    gradient), ``None`` (the generic graph) for parameters that broadcast per expiry."""
    scalar = all(pt.as_tensor_variable(x).type.ndim == 0 for x in params)
    return lewis_mgf_grid_op if scalar else None
