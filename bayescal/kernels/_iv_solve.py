"""Black-76 implied-vol solve as a PyTensor Op with a numba implementation (no gradient).

The Op returns, per quote, the implied vol ``iv*`` of a normalised price, the Black price
``c_B(iv*)``, the vega ``dc_B / d iv`` there and a flag ``beyond`` (1.0 where the price lies beyond
what the solve accepts: a normalised time value ``beta`` below :data:`B_FLOOR` or within
:data:`B_FLOOR` of the upper bound, or a root beyond the vol bounds; ``iv*`` is then the solution at
that boundary, else 0.0). It carries no gradient of its own:
:func:`bayescal.kernels.black.black76_norm_implied_vol` adds the implicit-function derivative in the
graph. Every quote iterates until converged (usually 2-3 Halley steps from a start near the root),
which a fixed unrolled graph cannot do; the same compiled loop serves PyTensor's numba backend
(nutpie) and the Python/C backends (through ``perform``).

Method (this module's own, following [J15]_ section 2): the quote is reduced to the normalised
out-of-the-money premium ``beta = time value * e^(-k/2)`` at ``x = -|k|``; the objective is
``ln b(s) - ln beta`` below ``b_max / 2`` (``b_max = e^(x/2)``) and ``ln(b_max - beta) - ln(b_max - b(s))``
above, solved in ``u = ln s`` (``s = iv sqrt(tau)``) by Halley steps with ``b''/b' = (h^2 - t^2)/s``
(``h = x/s``, ``t = s/2``), kept inside a bracket that every evaluation narrows, with bisection
when a step leaves it.

References
----------
.. [J15] P. Jaeckel (2015), "Let's be rational", Wilmott 2015(75):40-53.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

#: Smallest normalised OTM premium (``time value / sqrt(F K)``) and smallest distance to the upper
#: bound that are inverted; beyond them the boundary's vol is returned with ``beyond = 1``. Pricing
#: kernels are accurate to about 1e-10 of the forward, so smaller premiums carry no information.
B_FLOOR = 1e-12
#: Lower bound on ``h = -|k| / s``: below it the OTM premium is below about 1e-300 (no information).
H_MIN = -37.0
_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: Halley step in ``u = ln s`` below which the evaluated point is returned: the Newton step that
#: :func:`bayescal.kernels.black.black76_norm_implied_vol` adds in the graph leaves an error of
#: order ``step**2`` (relative, about 1e-14 or less).
_U_TOL = 1e-7
_MAX_ITER = 100
#: Salt of PyTensor's numba cache key for the Op (the key covers only the Op class and its props, and
#: a cached caller does not see changes of the numba functions it calls): a hash of this file.
_NUMBA_CACHE_VERSION = int(hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:15], 16)


@numba.njit(cache=True, fastmath=False)
def _otm_black(x: float, s: float, upper: bool) -> tuple[float, float, float, float]:
    """``b``, ``b_max - b``, ``b' = db/ds`` and ``(h^2 - t^2)`` at ``(x <= 0, s > 0)``; the complement
    comes from tail probabilities where ``upper`` (accurate as ``b -> b_max``)."""
    h = x / s
    t = 0.5 * s
    ex = math.exp(0.5 * x)
    low = 0.5 * math.erfc(-(h - t) * _SQRT1_2) / ex
    if upper:
        tail = 0.5 * math.erfc((h + t) * _SQRT1_2)  # N(-d1)
        comp = ex * tail + low
        b = ex - comp
    else:
        b = ex * 0.5 * math.erfc(-(h + t) * _SQRT1_2) - low
        comp = ex - b
    vega = math.exp(-0.5 * (h * h + t * t)) * _INV_SQRT_2PI
    return b, comp, vega, h * h - t * t


@numba.njit(cache=True, fastmath=False)
def _solve_one(c: float, k: float, tau: float, cp: float, iv_start: float,
               iv_min: float, iv_max: float) -> tuple[float, float, float, float]:
    """``(iv*, c_B(iv*), vega(iv*), beyond)`` of one quote; the first three belong to the last
    evaluated point, ``beyond`` is 1.0 where the price lies beyond a bound (see module docstring)."""
    root_tau = math.sqrt(tau)
    x = -abs(k)
    half_k = math.exp(0.5 * k)
    intrinsic = max(-cp * math.expm1(k), 0.0)
    b_max = math.exp(0.5 * x)
    u_min = math.log(max(iv_min * root_tau, x / H_MIN))
    u_max = math.log(iv_max * root_tau)
    beta = (c - intrinsic) / half_k
    beyond = 0.0
    if not beta >= B_FLOOR:  # no time value to speak of, below intrinsic value, or NaN
        beta, beyond = B_FLOOR, 1.0
    elif b_max - beta < B_FLOOR:  # at or above the upper price bound
        beta, beyond = b_max - B_FLOOR, 1.0
    upper = beta > 0.5 * b_max
    target = math.log(b_max - beta) if upper else math.log(beta)
    lo, hi = u_min, u_max
    u = math.log(iv_start * root_tau) if iv_start > 0.0 and iv_start < math.inf else 0.5 * (lo + hi)
    u = min(max(u, lo), hi)
    b = vega = 0.0
    u_eval = u
    for _ in range(_MAX_ITER):
        u_eval = u
        s = math.exp(u)
        b, comp, vega, curv = _otm_black(x, s, upper)
        if upper:
            g = target - math.log(comp)
            g1 = s * vega / comp
            g2 = g1 * (1.0 + curv + g1)
        else:
            g = math.log(b) - target
            g1 = s * vega / b
            g2 = g1 * (1.0 + curv - g1)
        if (u == u_min and g > 0.0) or (u == u_max and g < 0.0):
            beyond = 1.0  # the root lies beyond a vol bound: the bound is the answer
            break
        if g == 0.0:
            break
        if g < 0.0:
            lo = u
        else:
            hi = u
        newton = g / g1
        denom = 1.0 - 0.5 * newton * g2 / g1
        step = newton / denom if denom > 0.5 else newton
        if abs(step) < _U_TOL:
            break
        u_new = u - step
        if u_new <= lo:  # left the bracket: try the bound itself once, then bisect
            u_new = u_min if lo == u_min and u != u_min else 0.5 * (lo + hi)
        elif u_new >= hi:
            u_new = u_max if hi == u_max and u != u_max else 0.5 * (lo + hi)
        u = u_new
    return math.exp(u_eval) / root_tau, b * half_k + intrinsic, vega * half_k * root_tau, beyond


@numba.njit(cache=True, fastmath=False)
def solve_implied_vol(c, k, tau, cp, iv_start, iv_min, iv_max):
    """Flat float64 arrays (equal length) -> ``(iv*, c_B(iv*), vega(iv*), beyond)`` (module docstring)."""
    n = c.shape[0]
    iv = np.empty(n)
    price = np.empty(n)
    vega = np.empty(n)
    beyond = np.empty(n)
    for i in range(n):
        iv[i], price[i], vega[i], beyond[i] = _solve_one(c[i], k[i], tau[i], cp[i], iv_start[i], iv_min, iv_max)
    return iv, price, vega, beyond


class ImpliedVolSolve(Op):
    """``(c, k, tau, cp, iv_start) -> (iv*, c_B(iv*), vega(iv*), beyond)``, elementwise on equal shapes.

    No gradient (every output is disconnected from every input); see
    :func:`bayescal.kernels.black.black76_norm_implied_vol` for the differentiable wrapper.
    """

    __props__ = ("iv_min", "iv_max")

    def __init__(self, iv_min: float, iv_max: float) -> None:
        self.iv_min = float(iv_min)
        self.iv_max = float(iv_max)

    def make_node(self, *inputs) -> Apply:
        inputs = [pt.as_tensor_variable(i).astype("float64") for i in inputs]
        if len(inputs) != 5:
            raise TypeError(f"ImpliedVolSolve takes 5 inputs (c, k, tau, cp, iv_start); got {len(inputs)}")
        ndim = inputs[0].ndim
        if any(i.ndim != ndim for i in inputs):
            raise TypeError("ImpliedVolSolve inputs must have equal ndim (broadcast them first)")
        return Apply(self, inputs, [inputs[0].type() for _ in range(4)])

    def perform(self, node, inputs, output_storage) -> None:
        shape = np.shape(inputs[0])
        flat = [np.ascontiguousarray(np.asarray(i, dtype=np.float64).reshape(-1)) for i in inputs]
        outs = solve_implied_vol(*flat, self.iv_min, self.iv_max)
        for storage, out in zip(output_storage, outs, strict=True):
            storage[0] = out.reshape(shape)

    def infer_shape(self, node, input_shapes):
        return [input_shapes[0]] * 4

    def connection_pattern(self, node):
        return [[False] * 4 for _ in node.inputs]

    def grad(self, inputs, output_grads):
        return [disconnected_type() for _ in inputs]


def _register_numba() -> None:
    from pytensor.link.numba.dispatch.basic import numba_njit, register_funcify_default_op_cache_key

    @register_funcify_default_op_cache_key(ImpliedVolSolve)
    def _funcify(op, node=None, **kwargs):
        iv_min, iv_max = op.iv_min, op.iv_max

        @numba_njit
        def implied_vol_solve(c, k, tau, cp, iv_start):
            shape = c.shape
            iv, price, vega, beyond = solve_implied_vol(
                np.ascontiguousarray(c).reshape(-1), np.ascontiguousarray(k).reshape(-1),
                np.ascontiguousarray(tau).reshape(-1), np.ascontiguousarray(cp).reshape(-1),
                np.ascontiguousarray(iv_start).reshape(-1), iv_min, iv_max)
            return iv.reshape(shape), price.reshape(shape), vega.reshape(shape), beyond.reshape(shape)

        return implied_vol_solve, _NUMBA_CACHE_VERSION


_register_numba()
