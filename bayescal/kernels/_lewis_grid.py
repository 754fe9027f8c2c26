"""Heston and Bates moment generating functions on the surface kernel's node grid, with their gradient.

:func:`bayescal.kernels.surface.heston_surface_norm_price` needs ``M(1/2 + i t) = E[exp(a X)]`` on an
``(n_expiry, n_nodes)`` grid and, for NUTS, its derivatives in ``(v0, kappa, theta, xi, rho)``. As a
PyTensor graph (:func:`bayescal.kernels.heston.heston_log_mgf` differentiated in reverse mode) the
grid and its gradient cost about 400 ns per point on the development machine; the op here computes
the same quantities in one numba loop, about 50 ns per point (``benchmarks/bench_heston.py``):

* the characteristic function in real arithmetic, the same "little Heston trap" form as
  :func:`~bayescal.kernels.heston.heston_log_mgf` ([AMST07]_), with ``q = a**2 - a = -(t**2 + 1/4)``
  real on the line ``Re a = 1/2``;
* its derivatives by forward-mode tangents in only *two* directions: the parameters enter
  ``ln M = kappa theta A(beta, xi**2) + v0 D(beta, xi**2)`` through ``beta = kappa - rho xi a``
  (complex) and ``xi**2`` besides the two multipliers, so with ``L_beta = d ln M/d beta`` and
  ``L_x = d ln M/d xi**2``::

      d/dv0 = D,  d/dkappa = theta A + L_beta,  d/dtheta = kappa A,
      d/dxi = -rho a L_beta + 2 xi L_x,  d/drho = -xi a L_beta;

* Bates adds the compensated lognormal jump term of :func:`bayescal.kernels.bates.bates_log_mgf`
  ([B96g]_) and its three closed-form derivatives;
* elementary functions from :mod:`bayescal.kernels._vecmath`, so the loop over nodes vectorises.

The ``log1p(y)/y`` factor and its derivative switch to their Taylor series for ``|y| < 1e-3``
(truncation below 1e-15). Values agree with the graph to 2e-15 and gradients to 5e-13 relative
(``tests/test_kernels_surface.py``). The op's pullback contracts the stored derivatives with the
cotangent of ``M`` (no second pass); second derivatives are not implemented.
Derivatives with respect to ``tau`` are not implemented (``tau`` is data in every calibration); the
nodes ``t`` must be constants. The same compiled loop serves the numba backend and, through
``perform``, every other backend.

References
----------
.. [AMST07] H. Albrecher, P. Mayer, W. Schoutens, J. Tistaert (2007), "The little Heston trap",
   Wilmott Magazine, January, 83-92.
.. [B96g] D.S. Bates (1996), "Jumps and stochastic volatility: exchange rate processes implicit in
   Deutsche Mark options", Review of Financial Studies 9(1), 69-107.
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, grad_not_implemented, grad_undefined
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

from bayescal.kernels._vecmath import vatan2, vexp_parts, vlog, vsincos

__all__ = ["LewisGrid", "lewis_mgf_grid", "lewis_mgf_grid_op"]

_INL = {"inline": "always", "error_model": "numpy", "fastmath": {"contract"}}
#: below this ``|y|`` the series of ``log1p(y)/y`` and of its derivative are used
_SERIES_Y = 1e-3


@numba.njit(**_INL)
def _cmul(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


@numba.njit(**_INL)
def _cinv(ar, ai):
    s = 1.0 / (ar * ar + ai * ai)
    return ar * s, -ai * s


@numba.njit(**_INL)
def _csqrt(xr, xi):
    """Principal square root without cancellation (as :func:`bayescal.kernels._complex.csqrt`)."""
    m = np.sqrt(0.5 * (np.sqrt(xr * xr + xi * xi) + abs(xr)))
    other = 0.5 * xi / max(m, 1e-300)
    sgn = 1.0 if xi >= 0.0 else -1.0
    pos = xr >= 0.0
    return (m if pos else abs(other)), (other if pos else sgn * m)


@numba.njit(**_INL)
def _cexp_expm1(zr, zi):
    """``exp(z)`` and ``expm1(z)`` (real/imag), the latter without cancellation near 0 (as
    :func:`bayescal.kernels._complex.cexpm1`: ``Re = expm1(x) cos y - (1 - cos y)``)."""
    s2n, p = vexp_parts(zr)
    ex = s2n + s2n * p
    em1x = (s2n - 1.0) + s2n * p
    sn, cs = vsincos(zi)
    # 1 - cos y = sin**2/(1 + cos) for cos > 0 (no cancellation near 0)
    one_m_cos = sn * sn / (1.0 + cs) if cs > 0.0 else 1.0 - cs
    return ex * cs, ex * sn, em1x * cs - one_m_cos, ex * sn


@numba.njit(**_INL)
def _log1p_real(u):
    """``log1p(u)`` for ``u > -1`` with full relative accuracy (Goldberg's correction)."""
    v = 1.0 + u
    return vlog(v) + (u - (v - 1.0)) / v


@numba.njit(**_INL)
def _tangent(ddr_, ddi_, dinr, dini, dx2, common):
    """Directional derivative of ``ln M`` given ``dd`` and ``d(1/(beta + d))`` (``dx2``: change of xi**2)."""
    (q, tau, x2, kt, v0, invr, invi, rr, ri, gr, gi, er, ei, omer, omei, idenr, ideni, bdr, bdi,
     idr, idi, wr, wi, ellr, elli, dlr, dli) = common
    drr, dri = q * dinr, q * dini
    t1r, t1i = _cmul(drr, dri, invr, invi)
    t2r, t2i = _cmul(rr, ri, dinr, dini)
    dgr = dx2 * (rr * invr - ri * invi) + x2 * (t1r + t2r)
    dgi = dx2 * (rr * invi + ri * invr) + x2 * (t1i + t2i)
    # de = -tau e dd
    edr, edi = _cmul(er, ei, ddr_, ddi_)
    der, dei = -tau * edr, -tau * edi
    dgxr, dgxi = _cmul(dgr, dgi, er, ei)
    gdxr, gdxi = _cmul(gr, gi, der, dei)
    ddenr, ddeni = -(dgxr + gdxr), -(dgxi + gdxi)
    # d[r (1 - e)] = dr (1 - e) - r de
    u1r, u1i = _cmul(drr, dri, omer, omei)
    u2r, u2i = _cmul(rr, ri, der, dei)
    dnr, dni = u1r - u2r, u1i - u2i
    bdd_r, bdd_i = _cmul(bdr, bdi, ddenr, ddeni)
    dbdr, dbdi = _cmul(dnr - bdd_r, dni - bdd_i, idenr, ideni)  # dD
    wdr, wdi = _cmul(wr, wi, ddr_, ddi_)
    dwr, dwi = _cmul(0.5 * dnr - wdr, 0.5 * dni - wdi, idr, idi)  # dw
    dyr, dyi = dx2 * wr + x2 * dwr, dx2 * wi + x2 * dwi
    v1r, v1i = _cmul(dwr, dwi, ellr, elli)
    v2r, v2i = _cmul(dlr, dli, dyr, dyi)
    v3r, v3i = _cmul(wr, wi, v2r, v2i)
    dlwr, dlwi = v1r + v3r, v1i + v3i
    dar, dai = drr * tau - 2.0 * dlwr, dri * tau - 2.0 * dlwi
    return kt * dar + v0 * dbdr, kt * dai + v0 * dbdi


@numba.njit(**_INL)
def _point(t, tau, v0, kappa, theta, xi, rho):
    """``ln M`` and its derivatives in the five parameters at ``a = 1/2 + i t`` (real/imag pairs)."""
    x2 = xi * xi
    q = -(t * t + 0.25)
    br, bi = kappa - 0.5 * rho * xi, -rho * xi * t
    dr, di = _csqrt(br * br - bi * bi - x2 * q, 2.0 * br * bi)
    invr, invi = _cinv(br + dr, bi + di)
    rr, ri = q * invr, q * invi
    gr, gi = _cmul(rr, ri, invr, invi)
    gr, gi = x2 * gr, x2 * gi
    # e = exp(-tau d), ome = 1 - e = -expm1(-tau d) without cancellation
    zx, zy = -tau * dr, -tau * di
    er, ei, em1r, em1i = _cexp_expm1(zx, zy)
    omer, omei = -em1r, -em1i
    ger, gei = _cmul(gr, gi, er, ei)
    idenr, ideni = _cinv(1.0 - ger, -gei)
    nr, ni = _cmul(rr, ri, omer, omei)  # r (1 - e)
    bdr, bdi = _cmul(nr, ni, idenr, ideni)  # D
    idr, idi = _cinv(dr, di)
    wr, wi = _cmul(nr, ni, 0.5 * idr, 0.5 * idi)
    yr, yi = x2 * wr, x2 * wi
    # ell = log1p(y)/y and dell/dy
    small = yr * yr + yi * yi < _SERIES_Y * _SERIES_Y
    y2r, y2i = _cmul(yr, yi, yr, yi)
    y3r, y3i = _cmul(y2r, y2i, yr, yi)
    y4r, y4i = _cmul(y2r, y2i, y2r, y2i)
    y5r, y5i = _cmul(y4r, y4i, yr, yi)
    s_ellr = 1.0 - 0.5 * yr + y2r / 3.0 - 0.25 * y3r + 0.2 * y4r - y5r / 6.0
    s_elli = -0.5 * yi + y2i / 3.0 - 0.25 * y3i + 0.2 * y4i - y5i / 6.0
    s_dlr = -0.5 + 2.0 / 3.0 * yr - 0.75 * y2r + 0.8 * y3r - 5.0 / 6.0 * y4r
    s_dli = 2.0 / 3.0 * yi - 0.75 * y2i + 0.8 * y3i - 5.0 / 6.0 * y4i
    ysr = 1.0 if small else yr
    ysi = 0.0 if small else yi
    lnr = 0.5 * _log1p_real(ysr * (2.0 + ysr) + ysi * ysi)
    lni = vatan2(ysi, 1.0 + ysr)
    iyr, iyi = _cinv(ysr, ysi)
    l_ellr, l_elli = _cmul(lnr, lni, iyr, iyi)
    i1yr, i1yi = _cinv(1.0 + ysr, ysi)
    l_dlr, l_dli = _cmul(i1yr - l_ellr, i1yi - l_elli, iyr, iyi)
    ellr = s_ellr if small else l_ellr
    elli = s_elli if small else l_elli
    dlr = s_dlr if small else l_dlr
    dli = s_dli if small else l_dli
    lwr, lwi = _cmul(wr, wi, ellr, elli)
    ar_, ai_ = rr * tau - 2.0 * lwr, ri * tau - 2.0 * lwi  # A
    kt = kappa * theta
    lmr, lmi = kt * ar_ + v0 * bdr, kt * ai_ + v0 * bdi
    # --- tangents: direction beta (d beta = 1) and direction x2 (d xi**2 = 1) ---
    inv2r, inv2i = _cmul(invr, invi, invr, invi)
    # beta
    ddbr, ddbi = _cmul(br, bi, idr, idi)
    dinvbr, dinvbi = _cmul(-inv2r, -inv2i, 1.0 + ddbr, ddbi)
    # x2
    ddxr, ddxi = -0.5 * q * idr, -0.5 * q * idi
    dinvxr, dinvxi = _cmul(-inv2r, -inv2i, ddxr, ddxi)
    common = (q, tau, x2, kt, v0, invr, invi, rr, ri, gr, gi, er, ei, omer, omei, idenr, ideni, bdr, bdi,
              idr, idi, wr, wi, ellr, elli, dlr, dli)
    lbr, lbi = _tangent(ddbr, ddbi, dinvbr, dinvbi, 0.0, common)
    lxr, lxi = _tangent(ddxr, ddxi, dinvxr, dinvxi, 1.0, common)
    # chain to the parameters: d beta/d kappa = 1, d beta/d xi = -rho a, d beta/d rho = -xi a
    abr, abi = _cmul(0.5, t, lbr, lbi)  # a L_beta
    return (lmr, lmi, bdr, bdi, theta * ar_ + lbr, theta * ai_ + lbi, kappa * ar_, kappa * ai_,
            -rho * abr + 2.0 * xi * lxr, -rho * abi + 2.0 * xi * lxi, -xi * abr, -xi * abi)


@numba.njit(**_INL)
def _jump_point(t, tau, lam, mu, sig):
    """Compensated lognormal jump term of ``ln M`` (Bates 1996) at ``a = 1/2 + i t`` and its derivatives.

    ``lam tau [expm1(a mu + a**2 sig**2/2) - a expm1(mu + sig**2/2)]`` as
    :func:`bayescal.kernels.bates.bates_log_mgf` (exponent's real part capped at 700); derivatives in
    ``lam, mu, sig``: ``tau [.]``, ``lam tau a (e^z - E J)``, ``lam tau sig (a**2 e^z - a E J)``.
    """
    hv = 0.5 * sig * sig
    a2r, a2i = 0.25 - t * t, t  # a**2
    zr = min(mu * 0.5 + hv * a2r, 700.0)
    zi = mu * t + hv * a2i
    ezr, ezi, jr, ji = _cexp_expm1(zr, zi)  # e^z, expm1(z)
    s2m, pm = vexp_parts(mu + hv)
    mean_j = s2m + s2m * pm  # E[J]
    mean_jm1 = (s2m - 1.0) + s2m * pm
    lt = lam * tau
    br, bi = jr - 0.5 * mean_jm1, ji - t * mean_jm1
    # a (e^z - E J) and a**2 e^z - a E J
    umr, umi = _cmul(0.5, t, ezr - mean_j, ezi)
    a2er, a2ei = _cmul(a2r, a2i, ezr, ezi)
    usr, usi = a2er - 0.5 * mean_j, a2ei - t * mean_j
    return (lt * br, lt * bi, tau * br, tau * bi, lt * umr, lt * umi, lt * sig * usr, lt * sig * usi)


@numba.njit(error_model="numpy", fastmath={"contract"}, cache=True)
def lewis_mgf_grid(params, tau, t):
    """``M = E[exp(a X)]`` at ``a = 1/2 + i t`` on the node grid and ``dM/dparams`` (numba), Heston or Bates.

    Parameters
    ----------
    params : ndarray, shape (5,) or (8,)
        ``v0, kappa, theta, xi, rho`` (Heston), then ``jump_intensity, jump_log_mean,
        jump_log_stdev`` (Bates).
    tau : ndarray, shape (n_expiry,)
        Time to expiry in years per grid row.
    t : ndarray, shape (n_expiry, n_nodes)
        Nodes (imaginary part of ``a``).

    Returns
    -------
    m_re, m_im : ndarray, shape (n_expiry, n_nodes)
    dm_re, dm_im : ndarray, shape (n_params, n_expiry, n_nodes)
        Derivatives in the parameters, in the order of ``params``.
    """
    n_params = params.size
    v0, kappa, theta, xi, rho = params[0], params[1], params[2], params[3], params[4]
    n_exp, n_nodes = t.shape
    m_re = np.empty((n_exp, n_nodes))
    m_im = np.empty((n_exp, n_nodes))
    dm_re = np.empty((n_params, n_exp, n_nodes))
    dm_im = np.empty((n_params, n_exp, n_nodes))
    # three branch-free passes over each row (a branch inside one loop would stop its vectorisation):
    # ln M and d ln M of Heston, then the jump term's, then M = exp(ln M) and dM = M d ln M
    for e in range(n_exp):
        te = tau[e]
        for j in range(n_nodes):
            (m_re[e, j], m_im[e, j], dm_re[0, e, j], dm_im[0, e, j], dm_re[1, e, j], dm_im[1, e, j],
             dm_re[2, e, j], dm_im[2, e, j], dm_re[3, e, j], dm_im[3, e, j], dm_re[4, e, j],
             dm_im[4, e, j]) = _point(t[e, j], te, v0, kappa, theta, xi, rho)
        if n_params == 8:
            lam, mu, sig = params[5], params[6], params[7]
            for j in range(n_nodes):
                jmr, jmi, dm_re[5, e, j], dm_im[5, e, j], dm_re[6, e, j], dm_im[6, e, j], dm_re[7, e, j], \
                    dm_im[7, e, j] = _jump_point(t[e, j], te, lam, mu, sig)
                m_re[e, j] += jmr
                m_im[e, j] += jmi
        for j in range(n_nodes):
            s2n, p = vexp_parts(m_re[e, j])
            mod = s2n + s2n * p
            sn, cs = vsincos(m_im[e, j])
            m_re[e, j], m_im[e, j] = mod * cs, mod * sn
        for i in range(n_params):
            for j in range(n_nodes):
                dm_re[i, e, j], dm_im[i, e, j] = _cmul(m_re[e, j], m_im[e, j], dm_re[i, e, j], dm_im[i, e, j])
    return m_re, m_im, dm_re, dm_im


def _source_version() -> int:
    """Cache salt for PyTensor's numba cache: changes whenever this kernel's or _vecmath's source does."""
    from pathlib import Path

    here = Path(__file__).resolve()
    text = here.read_bytes() + (here.parent / "_vecmath.py").read_bytes()
    return int(hashlib.sha256(text).hexdigest()[:12], 16)


class LewisGrid(Op):
    """PyTensor op: ``(params, tau, t) -> (m_re, m_im, dm_re, dm_im)`` of :func:`lewis_mgf_grid`.

    ``n_params``: 5 (Heston) or 8 (Bates).

    The pullback of ``(m_re, m_im)`` contracts ``dm`` with the cotangents (first order only); the
    gradient in ``tau`` is not implemented and ``t`` has none (constant nodes).
    """

    __props__ = ("n_params",)

    def __init__(self, n_params: int) -> None:
        if n_params not in (5, 8):
            raise ValueError(f"LewisGrid: n_params must be 5 (Heston) or 8 (Bates), got {n_params}")
        self.n_params = int(n_params)

    def make_node(self, params, tau, t):
        params = pt.as_tensor_variable(params, dtype="float64")
        tau = pt.as_tensor_variable(tau, dtype="float64")
        t = pt.as_tensor_variable(t, dtype="float64")
        if params.type.ndim != 1 or tau.type.ndim != 1 or t.type.ndim != 2:
            raise TypeError(f"LewisGrid expects params ({self.n_params},), tau (n,), t (n, m); got ndims "
                            f"{params.type.ndim}, {tau.type.ndim}, {t.type.ndim}")
        grid = pt.tensor(dtype="float64", shape=t.type.shape)
        jac = pt.tensor(dtype="float64", shape=(self.n_params, *t.type.shape))
        return Apply(self, [params, tau, t], [grid, grid.type(), jac, jac.type()])

    def perform(self, node, inputs, output_storage):
        params, tau, t = (np.ascontiguousarray(x, dtype=np.float64) for x in inputs)
        if params.shape != (self.n_params,):
            raise ValueError(f"LewisGrid: expected {self.n_params} parameters, got shape {params.shape}")
        for store, value in zip(output_storage, lewis_mgf_grid(params, tau, t), strict=True):
            store[0] = value

    def infer_shape(self, fgraph, node, input_shapes):
        t_shape = tuple(input_shapes[2])
        return [t_shape, t_shape, (self.n_params, *t_shape), (self.n_params, *t_shape)]

    def pullback(self, inputs, outputs, cotangents):
        params, tau, t = inputs
        g_re, g_im, g_dre, g_dim = cotangents
        if not (_disconnected(g_dre) and _disconnected(g_dim)):
            grad_params = grad_not_implemented(self, 0, params, "second derivatives of the Lewis grid")
        else:
            grad_params = pt.zeros_like(params)
            if not _disconnected(g_re):
                grad_params = grad_params + pt.sum(outputs[2] * g_re[None], axis=(1, 2))
            if not _disconnected(g_im):
                grad_params = grad_params + pt.sum(outputs[3] * g_im[None], axis=(1, 2))
        return [grad_params,
                grad_not_implemented(self, 1, tau, "the Lewis grid's derivative in tau (data in calibration)"),
                grad_undefined(self, 2, t, "the Lewis grid's nodes are constants")]


def _disconnected(x) -> bool:
    return isinstance(x.type, DisconnectedType)


@register_funcify_default_op_cache_key(LewisGrid)
def _numba_lewis_grid(op, node=None, **kwargs):
    return lewis_mgf_grid, _source_version()


def lewis_mgf_grid_op(t, tau, *params):
    """``(re, im)`` of ``M(1/2 + i t)`` on the node grid as a differentiable PyTensor expression.

    Parameters
    ----------
    t : ndarray, shape (n_expiry, n_nodes)
        Constant nodes.
    tau : array_like or TensorVariable, shape (n_expiry,)
        Time to expiry in years.
    *params : scalar TensorVariable or float
        Heston ``v0, kappa, theta, xi, rho`` (as :func:`bayescal.kernels.heston.heston_log_mgf`),
        optionally followed by Bates' ``jump_intensity, jump_log_mean, jump_log_stdev`` (as
        :func:`bayescal.kernels.bates.bates_log_mgf`).

    Returns
    -------
    tuple of TensorVariable, shape (n_expiry, n_nodes)
        Real and imaginary parts of ``M``.

    Raises
    ------
    ValueError
        If the number of parameters is not 5 or 8.

    References
    ----------
    [AMST07]_, [B96g]_; module docstring.
    """
    stacked = pt.stack([pt.as_tensor_variable(x, dtype="float64") for x in params])
    m_re, m_im, _, _ = LewisGrid(len(params))(stacked, tau, np.asarray(t, dtype=np.float64))
    return m_re, m_im
