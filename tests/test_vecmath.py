"""The vectorisable elementary functions of :mod:`bayescal.kernels._vecmath` against numpy (glibc libm).

Bounds in units in the last place (ulp) of the numpy value, on wide random samples; the Heston grid
kernel uses these functions, so their accuracy is that of its characteristic function.
"""

from __future__ import annotations

import numba
import numpy as np

from bayescal.kernels._vecmath import vatan2, vexp, vexp_parts, vlog, vsincos

RNG = np.random.default_rng(11)
N = 200_000


@numba.njit(error_model="numpy", fastmath={"contract"})
def _apply(kind, x, y, out1, out2):
    for i in range(x.size):
        if kind == 0:
            out1[i] = vexp(x[i])
        elif kind == 1:
            s, p = vexp_parts(x[i])
            out1[i] = (s - 1.0) + s * p
        elif kind == 2:
            out1[i], out2[i] = vsincos(x[i])
        elif kind == 3:
            out1[i] = vlog(x[i])
        else:
            out1[i] = vatan2(y[i], x[i])


def run(kind, x, y=None):
    out1, out2 = np.empty_like(x), np.empty_like(x)
    _apply(kind, x, x if y is None else y, out1, out2)
    return out1, out2


def ulps(value, reference):
    return np.max(np.abs(value - reference) / np.spacing(np.abs(reference)))


def test_exp_and_expm1():
    x = RNG.uniform(-700.0, 700.0, N)
    assert ulps(run(0, x)[0], np.exp(x)) <= 2.0
    small = RNG.uniform(-0.3, 0.3, N) * 10.0 ** RNG.uniform(-12, 0, N)
    assert ulps(run(1, small)[0], np.expm1(small)) <= 2.0
    assert ulps(run(1, x / 100)[0], np.expm1(x / 100)) <= 4.0  # (2**n - 1) + 2**n p rounds twice
    assert run(0, np.array([0.0]))[0][0] == 1.0
    # clamped: no overflow to inf, no underflow below the normal range
    big = run(0, np.array([-800.0, 800.0]))[0]
    assert np.isfinite(big).all() and big[0] > 0


def test_sincos():
    x = RNG.uniform(-3.5, 3.5, N)
    s, c = run(2, x)
    # relative accuracy away from the zeros; near a zero the reduction's absolute error (~1e-21) shows
    for value, reference in ((s, np.sin(x)), (c, np.cos(x))):
        away = np.abs(reference) >= 0.01
        assert ulps(value[away], reference[away]) <= 2.0
        assert np.max(np.abs(value - reference)) <= 2.3e-16  # one ulp of 1
    wide = RNG.uniform(-2e4, 2e4, N)  # the grid's phases stay far below the 1.6e6 reduction limit
    s, c = run(2, wide)
    assert np.max(np.abs(s - np.sin(wide))) <= 4e-16 and np.max(np.abs(c - np.cos(wide))) <= 4e-16
    quadrants = np.array([0.0, np.pi / 2, np.pi, -np.pi / 2, 3 * np.pi / 2])
    s, c = run(2, quadrants)
    np.testing.assert_allclose(s, np.sin(quadrants), atol=1e-15)
    np.testing.assert_allclose(c, np.cos(quadrants), atol=1e-15)


def test_log():
    x = np.exp(RNG.uniform(-690.0, 690.0, N))
    assert ulps(run(3, x)[0], np.log(x)) <= 2.0
    near_one = 1.0 + RNG.uniform(-1e-3, 1e-3, N)
    assert ulps(run(3, near_one)[0], np.log(near_one)) <= 2.0
    assert run(3, np.array([1.0]))[0][0] == 0.0


def test_atan2():
    scale = np.exp(RNG.uniform(-20, 20, (2, N)))
    y, x = RNG.standard_normal((2, N)) * scale
    assert ulps(run(4, x, y)[0], np.arctan2(y, x)) <= 2.0
    # axes, the origin (0 by convention) and the branch cut: (-pi, pi]
    xs = np.array([1.0, 0.0, -1.0, 0.0, 0.0, -1.0])
    ys = np.array([0.0, 1.0, 0.0, -1.0, 0.0, -1e-300])
    np.testing.assert_allclose(run(4, xs, ys)[0], [0.0, np.pi / 2, np.pi, -np.pi / 2, 0.0, -np.pi], atol=1e-15)
