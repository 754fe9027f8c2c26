"""Hand-written numba peer of bayescal's Heston surface likelihood kernel (benchmark only).

Same method as :func:`bayescal.kernels.surface.heston_surface_norm_price` inside a Gaussian
price-space log-likelihood: Lewis (2001) line ``Re a = 1/2``, the same nodes per expiry
(:func:`bayescal.kernels.surface.lewis_nodes`), the same stable characteristic function
(:func:`bayescal.kernels.heston.heston_log_mgf`, Albrecher et al. 2007 form) and the same constant
trigonometric weights per quote and node. The gradient in ``(v0, kappa, theta, xi, rho)`` is
written out by hand: forward-mode tangents of the characteristic function on the
``(n_expiry, n_nodes)`` grid (complex arithmetic, chain rule through every intermediate), and the
reverse (adjoint) sum over quotes, so each quote costs two multiply-adds per node in the value and
two in the gradient, as in the PyTensor graph. Compiled with the fast-math flags PyTensor's numba
backend uses.

It exists to measure how far the PyTensor-generated kernel is from what a person would write by
hand for the same method (``benchmarks/bench_heston.py`` prints the ratio); bayescal never imports it.
"""

from __future__ import annotations

import cmath

import numba
import numpy as np

from bayescal.kernels.surface import lewis_nodes

N_PARAMS = 5
#: the fast-math flags PyTensor's numba backend compiles with (``numba__fastmath = True``, its default)
FASTMATH = {"arcp", "contract", "afn", "reassoc", "nsz"}


@numba.njit(cache=True, fastmath=FASTMATH)
def _mgf_grid(params, tau_expiry, t, m_re, m_im, dm_re, dm_im):
    """``M = E[exp(a X)]`` at ``a = 1/2 + i t`` and ``dM/dparams`` on the (n_expiry, n_nodes) grid."""
    v0, kappa, theta, xi, rho = params[0], params[1], params[2], params[3], params[4]
    x2 = xi * xi
    dx2 = np.zeros(N_PARAMS)
    dx2[3] = 2.0 * xi
    dkt = np.zeros(N_PARAMS)
    dkt[1] = theta
    dkt[2] = kappa
    kt = kappa * theta
    dbeta = np.empty(N_PARAMS, dtype=np.complex128)
    for e in range(t.shape[0]):
        tau = tau_expiry[e]
        for j in range(t.shape[1]):
            a = complex(0.5, t[e, j])
            q = a * a - a
            beta = kappa - rho * xi * a
            dbeta[0] = 0.0
            dbeta[1] = 1.0
            dbeta[2] = 0.0
            dbeta[3] = -rho * a
            dbeta[4] = -xi * a
            d = cmath.sqrt(beta * beta - x2 * q)
            inv_d = 1.0 / d
            inv = 1.0 / (beta + d)
            r = q * inv
            g = x2 * r * inv
            e_ = cmath.exp(-tau * d)
            ome = 1.0 - e_
            inv_den = 1.0 / (1.0 - g * e_)
            num = r * ome
            big_d = num * inv_den
            w = 0.5 * num * inv_d
            y = x2 * w
            if abs(y) < 1e-4:
                ell = 1.0 - y / 2.0 + y * y / 3.0
                dell_dy = -0.5 + 2.0 * y / 3.0
            else:
                inv_y = 1.0 / y
                ell = cmath.log(1.0 + y) * inv_y
                dell_dy = (1.0 / (1.0 + y) - ell) * inv_y
            lw = w * ell
            log_m = kt * (r * tau - 2.0 * lw) + v0 * big_d
            m = cmath.exp(log_m)
            m_re[e, j] = m.real
            m_im[e, j] = m.imag
            for p in range(N_PARAMS):
                dd = (beta * dbeta[p] - 0.5 * dx2[p] * q) * inv_d
                dinv = -(dbeta[p] + dd) * inv * inv
                dr = q * dinv
                dg = dx2[p] * r * inv + x2 * (dr * inv + r * dinv)
                de = -tau * dd * e_
                dden = -(dg * e_ + g * de)
                dnum = dr * ome - r * de
                dbig_d = (dnum - big_d * dden) * inv_den
                dw = (0.5 * dnum - w * dd) * inv_d
                dy = dx2[p] * w + x2 * dw
                dlw = dw * ell + w * dell_dy * dy
                dlog_m = dkt[p] * (r * tau - 2.0 * lw) + kt * (dr * tau - 2.0 * dlw) + v0 * dbig_d
                if p == 0:
                    dlog_m += big_d
                dm = m * dlog_m
                dm_re[p, e, j] = dm.real
                dm_im[p, e, j] = dm.imag


@numba.njit(cache=True, fastmath=FASTMATH)
def _logp_grad(params, tau_expiry, t, wc, ws, slot_quote, scale, shift, observed, inv_var, work):
    """Gaussian log-likelihood of ``scale * c + shift`` against ``observed`` and its gradient."""
    m_re, m_im, dm_re, dm_im, g_re, g_im = work
    _mgf_grid(params, tau_expiry, t, m_re, m_im, dm_re, dm_im)
    n_exp, n_max, n_nodes = wc.shape
    logp = 0.0
    for e in range(n_exp):
        for j in range(n_nodes):
            g_re[e, j] = 0.0
            g_im[e, j] = 0.0
        for s in range(n_max):
            i = slot_quote[e, s]
            if i < 0:
                continue
            acc = 0.0
            for j in range(n_nodes):
                acc += wc[e, s, j] * m_re[e, j] + ws[e, s, j] * m_im[e, j]
            resid = scale[i] * (1.0 - acc) + shift[i] - observed[i]
            logp -= 0.5 * resid * resid * inv_var[i]
            adj = resid * inv_var[i] * scale[i]  # d logp / d acc
            for j in range(n_nodes):
                g_re[e, j] += adj * wc[e, s, j]
                g_im[e, j] += adj * ws[e, s, j]
    grad = np.zeros(N_PARAMS)
    for p in range(N_PARAMS):
        total = 0.0
        for e in range(n_exp):
            for j in range(n_nodes):
                total += g_re[e, j] * dm_re[p, e, j] + g_im[e, j] * dm_im[p, e, j]
        grad[p] = total
    return logp, grad


class HandwrittenHestonSurface:
    """Log-likelihood + gradient of a Heston price surface, hand-written in numba.

    Parameters
    ----------
    k, cp, expiry_idx : ndarray, shape (n_quote,)
        Log-moneyness, +1 call / -1 put, expiry index into ``tau_expiry``.
    tau_expiry, var_scale : ndarray, shape (n_expiry,)
        Time to expiry (years) and the reference total variance that places the nodes.
    scale : ndarray, shape (n_quote,)
        Quote price per unit normalised price (``D F``).
    observed, sigma : ndarray, shape (n_quote,)
        Observed prices and their noise (same units as ``scale``).
    n_nodes : int
        Nodes per expiry.
    """

    def __init__(self, k, cp, expiry_idx, tau_expiry, var_scale, scale, observed, sigma, n_nodes):
        t, w = lewis_nodes(var_scale, n_nodes)
        n_exp = t.shape[0]
        counts = np.bincount(expiry_idx, minlength=n_exp)
        n_max = int(counts.max())
        self.slot_quote = np.full((n_exp, n_max), -1, dtype=np.int64)
        wc = np.zeros((n_exp, n_max, n_nodes))
        ws = np.zeros((n_exp, n_max, n_nodes))
        for e in range(n_exp):
            for s, i in enumerate(np.flatnonzero(expiry_idx == e)):
                self.slot_quote[e, s] = i
                base = w[e] / (np.pi * (t[e] ** 2 + 0.25)) * np.exp(0.5 * k[i])
                wc[e, s] = base * np.cos(t[e] * k[i])
                ws[e, s] = base * np.sin(t[e] * k[i])
        self.t, self.wc, self.ws = t, wc, ws
        self.tau_expiry = np.asarray(tau_expiry, dtype=float)
        self.scale = np.asarray(scale, dtype=float)
        self.shift = np.where(cp < 0, -self.scale * (1.0 - np.exp(k)), 0.0)
        self.observed = np.asarray(observed, dtype=float)
        self.inv_var = 1.0 / np.asarray(sigma, dtype=float) ** 2
        self.work = (np.empty_like(t), np.empty_like(t), np.empty((N_PARAMS, *t.shape)),
                     np.empty((N_PARAMS, *t.shape)), np.empty_like(t), np.empty_like(t))

    def __call__(self, params):
        """``(logp, grad)`` at ``params = (v0, kappa, theta, xi, rho)``; ``grad`` shape (5,)."""
        return _logp_grad(np.asarray(params, dtype=float), self.tau_expiry, self.t, self.wc, self.ws,
                          self.slot_quote, self.scale, self.shift, self.observed, self.inv_var, self.work)
