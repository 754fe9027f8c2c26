"""Elementary functions that the loop vectoriser can turn into SIMD code (numba, float64).

numba lowers ``exp``, ``log``, ``sin``, ``cos`` and ``atan2`` to calls into the C math library,
one element at a time: a loop that contains one is vectorised everywhere else and then calls the
scalar routine for each lane (LLVM's vector math libraries, SVML or glibc's libmvec, are not
available to the ``llvmlite`` wheels). The functions here are written from additions,
multiplications, divisions, square roots, rounding, comparisons and bit casts only, every
branch a select, so that a loop calling them vectorises completely (AVX2: four lanes).

Accuracy (measured in ``tests/test_kernels_surface.py`` against numpy on wide random samples):
a few units in the last place for the ranges stated in each docstring. The methods are the
textbook ones: Cody-Waite argument reduction and Taylor polynomials of sufficient degree on the
reduced interval [M06]_.

References
----------
.. [M06] J.-M. Muller (2006), "Elementary Functions: Algorithms and Implementation", 2nd ed.,
   Birkhauser, ch. 11 (range reduction) and ch. 3 (polynomial approximation).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["vatan2", "vexp", "vexp_parts", "vlog", "vsincos"]

_INLINE = {"inline": "always", "fastmath": {"contract"}, "error_model": "numpy"}


@intrinsic
def _bits_to_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64 (a no-op instruction)."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _f64_to_bits(typingctx, x):
    """Reinterpret the bits of a float64 as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


#: 1.5 * 2**52: adding it to an integer-valued float |n| < 2**51 leaves n in the low mantissa bits
_SHIFTER = 6755399441055744.0
_SHIFTER_BITS = np.int64(0x4338000000000000)
#: 2**52 as a float and as the bits of the float 2**52
_TWO52 = 4503599627370496.0
_TWO52_BITS = np.int64(0x4330000000000000)


@numba.njit(**_INLINE)
def _to_int(n):
    """Integer-valued float64 ``|n| < 2**51`` to int64 (AVX2 has no packed double-to-int64 conversion)."""
    return _f64_to_bits(n + _SHIFTER) - _SHIFTER_BITS


@numba.njit(**_INLINE)
def _to_float(k):
    """int64 ``0 <= k < 2**52`` to float64, the inverse trick of :func:`_to_int`."""
    return _bits_to_f64(k | _TWO52_BITS) - _TWO52


# ln 2 split so that n * _LN2_HI is exact for |n| < 2**11
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOG2E = 1.4426950408889634
# pi/2 in three parts of 33 bits each: n * part exact for |n| < 2**20
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050650619224932e-11
_PIO2_3 = 2.02226624879595063154e-21
_TWO_OVER_PI = 0.6366197723675814


@numba.njit(**_INLINE)
def vexp_parts(x):
    """``(2**n, p)`` with ``exp(x) = 2**n (1 + p)``: ``exp`` and ``expm1`` without cancellation.

    ``x`` is clamped to ``[-708, 709]``; ``x = n ln2 + r`` with ``|r| <= ln2/2`` (Cody-Waite),
    ``p = exp(r) - 1`` by its Taylor polynomial of degree 13 (truncation below 5e-18 relative),
    ``2**n`` built from the exponent bits. ``expm1(x) = (2**n - 1) + 2**n p`` is exact for ``n = 0``.
    """
    x = min(max(x, -708.0), 709.0)
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    # Estrin's scheme: a dependency chain of depth 5 instead of Horner's 13 (the loops are latency-bound)
    r2 = r * r
    r4 = r2 * r2
    b0 = r + (0.5 + r * (1.0 / 6.0)) * r2
    b1 = (1.0 / 24.0 + r * (1.0 / 120.0)) + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2
    b2 = (1.0 / 40320.0 + r * (1.0 / 362880.0)) + (1.0 / 3628800.0 + r * (1.0 / 39916800.0)) * r2
    b3 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0)
    p = (b0 + b1 * r4) + (b2 + b3 * r4) * (r4 * r4)
    return _bits_to_f64((_to_int(n) + 1023) << 52), p


@numba.njit(**_INLINE)
def vexp(x):
    """``exp(x)`` for float64 ``x`` (see :func:`vexp_parts`; results in the normal range)."""
    s, p = vexp_parts(x)
    return s + s * p


@numba.njit(**_INLINE)
def vsincos(x):
    """``(sin x, cos x)`` for float64 ``|x| < 1.6e6`` (three-part Cody-Waite reduction by pi/2).

    ``x = n pi/2 + r``, ``|r| <= pi/4``; Taylor polynomials of degree 17 (sin) and 18 (cos),
    truncation below 1e-19; the quadrant ``n mod 4`` swaps and negates.
    """
    n = math.floor(x * _TWO_OVER_PI + 0.5)
    r = ((x - n * _PIO2_1) - n * _PIO2_2) - n * _PIO2_3
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    # sin r = r (1 + r2 S(r2)), cos r = 1 + r2 C(r2); Estrin's scheme in r2
    s_lo = (-1.0 / 6.0 + r2 * (1.0 / 120.0)) + (-1.0 / 5040.0 + r2 * (1.0 / 362880.0)) * r4
    s_hi = ((-1.0 / 39916800.0 + r2 * (1.0 / 6227020800.0))
            + (-1.0 / 1307674368000.0 + r2 * (1.0 / 355687428096000.0)) * r4)
    s = r + r * r2 * (s_lo + s_hi * r8)
    c_lo = (-0.5 + r2 * (1.0 / 24.0)) + (-1.0 / 720.0 + r2 * (1.0 / 40320.0)) * r4
    c_hi = (-1.0 / 3628800.0 + r2 * (1.0 / 479001600.0)) + (-1.0 / 87178291200.0 + r2 * (1.0 / 20922789888000.0)) * r4
    c = 1.0 + r2 * (c_lo + (c_hi - r8 * (1.0 / 6402373705728000.0)) * r8)
    q = _to_int(n) & 3
    swap = (q & 1) == 1
    sin_x = c if swap else s
    cos_x = s if swap else c
    sin_x = -sin_x if q >= 2 else sin_x
    cos_x = -cos_x if (q == 1 or q == 2) else cos_x
    return sin_x, cos_x


_SQRT2 = 1.4142135623730951
_MANT = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)


@numba.njit(**_INLINE)
def vlog(x):
    """Natural logarithm of float64 ``x`` in ``[1e-300, 1e300]`` (clamped below).

    ``x = 2**e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))``; ``ln m = 2 atanh(s)``, ``s = (m-1)/(m+1)``,
    ``|s| <= 0.172``, by its series to ``s**21`` (truncation below 1e-18).
    """
    x = max(x, 1e-300)
    bits = _f64_to_bits(x)
    fe = _to_float(bits >> 52) - 1023.0
    m = _bits_to_f64((bits & _MANT) | _ONE_BITS)
    big = m > _SQRT2
    m = 0.5 * m if big else m
    fe = fe + 1.0 if big else fe
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    s4 = s2 * s2
    s8 = s4 * s4
    # 2 atanh(s) = 2 s + 2 s s2 P(s2), P = sum 1/(2j + 3) s2**j, Estrin's scheme
    p_lo = (1.0 / 3.0 + s2 * (1.0 / 5.0)) + (1.0 / 7.0 + s2 * (1.0 / 9.0)) * s4
    p_mid = (1.0 / 11.0 + s2 * (1.0 / 13.0)) + (1.0 / 15.0 + s2 * (1.0 / 17.0)) * s4
    p_hi = 1.0 / 19.0 + s2 * (1.0 / 21.0)
    p = p_lo + (p_mid + p_hi * s8) * s8
    return fe * _LN2_HI + (2.0 * s + (2.0 * s * s2 * p + fe * _LN2_LO))


_TAN_PI_16 = 0.19891236737965800691
_TAN_3PI_16 = 0.66817863791929891999
_TAN_PI_8 = 0.41421356237309504880
_PI_8 = 0.39269908169872415481
_PI_4 = 0.78539816339744830962
_PI_2 = 1.57079632679489661923
_PI = 3.14159265358979323846


@numba.njit(**_INLINE)
def vatan2(y, x):
    """``atan2(y, x)`` in ``(-pi, pi]`` for float64, ``atan2(0, 0) = 0``.

    ``z = min(|x|, |y|)/max(|x|, |y|)`` in ``[0, 1]`` is reduced to ``|u| <= tan(pi/16)`` with
    ``atan z = k pi/8 + atan((z - tan(k pi/8))/(1 + z tan(k pi/8)))``, ``k`` in ``{0, 1, 2}``;
    ``atan u`` by its odd series to ``u**25`` (truncation below 1e-19); octant and quadrant by
    reflection.
    """
    ax, ay = abs(x), abs(y)
    hi = max(ax, ay)
    lo = min(ax, ay)
    z = lo / max(hi, 1e-300)
    k1 = z >= _TAN_PI_16
    k2 = z >= _TAN_3PI_16
    tk = 1.0 if k2 else (_TAN_PI_8 if k1 else 0.0)
    ck = _PI_4 if k2 else (_PI_8 if k1 else 0.0)
    u = (z - tk) / (1.0 + z * tk)
    u2 = u * u
    u4 = u2 * u2
    u8 = u4 * u4
    # atan u = u + u u2 P(u2), P = sum (-1)**(j+1)/(2j + 3) u2**j, Estrin's scheme
    p_lo = (-1.0 / 3.0 + u2 * (1.0 / 5.0)) + (-1.0 / 7.0 + u2 * (1.0 / 9.0)) * u4
    p_mid = (-1.0 / 11.0 + u2 * (1.0 / 13.0)) + (-1.0 / 15.0 + u2 * (1.0 / 17.0)) * u4
    p_hi = (-1.0 / 19.0 + u2 * (1.0 / 21.0)) + (-1.0 / 23.0 + u2 * (1.0 / 25.0)) * u4
    p = p_lo + (p_mid + p_hi * u8) * u8
    a = ck + (u + u * u2 * p)
    a = _PI_2 - a if ay > ax else a
    a = _PI - a if x < 0.0 else a
    return -a if y < 0.0 else a
