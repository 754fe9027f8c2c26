"""Complex arithmetic on ``(re, im)`` pairs of real PyTensor tensors (differentiable).

PyTensor 3 evaluates complex128 graphs but cannot differentiate through ``real``/``imag``/``abs``/
``angle`` of a complex variable (see ``shared/design/stack-notes.md``). The pricing kernels
therefore carry every complex quantity as a pair of float64 tensors ``(re, im)``; each helper
below is built from real elementwise ops only, so :func:`pytensor.grad` works through it (and it
compiles under every backend: numba, C, JAX).

Conventions
-----------
* A complex number is a ``tuple`` ``(re, im)`` of tensors (or anything
  :func:`pytensor.tensor.as_tensor_variable` accepts); helpers return such tuples. Shapes
  broadcast elementwise (numpy rules).
* Branches are the principal ones: :func:`csqrt` has ``Re >= 0`` (``sqrt(-1) = +i``),
  :func:`clog` / :func:`clog1p` have imaginary part in ``(-pi, pi]``. Where a *continuous* branch
  along an integration path is needed, the caller must arrange the argument so that it never
  crosses the negative real axis (the Heston kernel does this with the "little Heston trap"
  form, Albrecher et al. 2007).
* Accuracy: :func:`csqrt` avoids the cancellation of the textbook ``sqrt((|z| + x)/2)`` formula
  for ``x < 0``; :func:`cexpm1` and :func:`clog1p` keep full relative accuracy near 0. Branches are
  selected with ``switch`` on *sanitised* operands, so the unused branch is never NaN/inf (which
  would poison gradients through ``0 * NaN``).
* Overflow: magnitudes are not rescaled (no Smith division); the kernels keep operands well
  inside the double range.

References
----------
.. [K87] W. Kahan (1987), "Branch cuts for complex elementary functions, or much ado about
   nothing's sign bit", in The State of the Art in Numerical Analysis, Clarendon Press, 165-211
   (principal branches; cancellation-free complex square root).
.. [AS64] M. Abramowitz, I.A. Stegun (1964), Handbook of Mathematical Functions, 4.2-4.3
   (complex exponential and logarithm in real form).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt

__all__ = [
    "cabs2",
    "cadd",
    "cconj",
    "cdiv",
    "cexp",
    "cexpm1",
    "cinv",
    "clog",
    "clog1p",
    "clog1p_over",
    "cmul",
    "cneg",
    "cscale",
    "csqrt",
    "csquare",
    "csub",
]

#: Below this modulus :func:`clog1p_over` returns its limit 1 (relative error < 1e-150 there).
_LOG1P_TINY = np.float64(1e-150)
_TINY = np.float64(1e-300)


def _t(x):
    return pt.as_tensor_variable(x)


def cadd(z, w):
    """``z + w``."""
    return _t(z[0]) + _t(w[0]), _t(z[1]) + _t(w[1])


def csub(z, w):
    """``z - w``."""
    return _t(z[0]) - _t(w[0]), _t(z[1]) - _t(w[1])


def cneg(z):
    """``-z``."""
    return -_t(z[0]), -_t(z[1])


def cconj(z):
    """Complex conjugate ``conj(z)``."""
    return _t(z[0]), -_t(z[1])


def cscale(c, z):
    """``c * z`` for a *real* ``c``."""
    c = _t(c)
    return c * _t(z[0]), c * _t(z[1])


def cmul(z, w):
    """``z * w`` (four real products)."""
    a, b = _t(z[0]), _t(z[1])
    c, d = _t(w[0]), _t(w[1])
    return a * c - b * d, a * d + b * c


def csquare(z):
    """``z**2``."""
    a, b = _t(z[0]), _t(z[1])
    return (a - b) * (a + b), 2.0 * a * b


def cabs2(z):
    """``|z|**2`` (real tensor)."""
    a, b = _t(z[0]), _t(z[1])
    return a * a + b * b


def cinv(z):
    """``1 / z``; ``z = 0`` gives inf/NaN."""
    a, b = _t(z[0]), _t(z[1])
    r = 1.0 / (a * a + b * b)
    return a * r, -b * r


def cdiv(z, w):
    """``z / w`` (textbook formula, no rescaling); ``w = 0`` gives inf/NaN."""
    a, b = _t(z[0]), _t(z[1])
    c, d = _t(w[0]), _t(w[1])
    r = 1.0 / (c * c + d * d)
    return (a * c + b * d) * r, (b * c - a * d) * r


def cexp(z):
    """``exp(z) = e^x (cos y + i sin y)``."""
    x, y = _t(z[0]), _t(z[1])
    m = pt.exp(x)
    return m * pt.cos(y), m * pt.sin(y)


def cexpm1(z):
    """``exp(z) - 1`` with full relative accuracy for small ``|z|``.

    Real part ``expm1(x) cos y - 2 sin(y/2)**2``, imaginary part ``e^x sin y`` [AS64]_.
    """
    x, y = _t(z[0]), _t(z[1])
    s = pt.sin(0.5 * y)
    return pt.expm1(x) * pt.cos(y) - 2.0 * s * s, pt.exp(x) * pt.sin(y)


def clog(z):
    """Principal logarithm ``ln|z| + i arg z``, ``arg`` in ``(-pi, pi]``; ``z = 0`` gives -inf."""
    x, y = _t(z[0]), _t(z[1])
    return 0.5 * pt.log(x * x + y * y), pt.arctan2(y, x)


def clog1p(z):
    """Principal ``log(1 + z)``, accurate for small ``|z|``.

    ``ln|1 + z| = log1p(2x + x**2 + y**2) / 2`` and ``arg(1 + z) = atan2(y, 1 + x)``.
    """
    x, y = _t(z[0]), _t(z[1])
    return 0.5 * pt.log1p(x * (2.0 + x) + y * y), pt.arctan2(y, 1.0 + x)


def clog1p_over(z):
    """``log(1 + z) / z`` (principal branch), equal to 1 at ``z = 0``.

    :func:`clog1p` keeps full relative accuracy for small ``|z|``, so the quotient is accurate down
    to ``|z| ~ 1e-150``; below that (where ``|z|**2`` would underflow) the limit 1 is returned, via
    a sanitised operand so that neither branch of the ``switch`` (nor its gradient) is NaN.
    """
    x, y = _t(z[0]), _t(z[1])
    tiny = pt.lt(pt.abs(x) + pt.abs(y), _LOG1P_TINY)
    xs = pt.switch(tiny, 1.0, x)
    ys = pt.switch(tiny, 0.0, y)
    ratio = cdiv(clog1p((xs, ys)), (xs, ys))
    return pt.switch(tiny, 1.0, ratio[0]), pt.switch(tiny, 0.0, ratio[1])


def csqrt(z):
    """Principal square root (``Re >= 0``; ``sqrt(-1) = +i``), without cancellation.

    With ``m = sqrt((|z| + |x|)/2)``: for ``x >= 0`` the root is ``m + i y/(2m)``, for ``x < 0`` it
    is ``|y|/(2m) + i sign(y) m`` with ``sign(0) = +1`` [K87]_. The derivative is infinite at
    ``z = 0`` (as for the real square root).
    """
    x, y = _t(z[0]), _t(z[1])
    m = pt.sqrt(0.5 * (pt.sqrt(x * x + y * y) + pt.abs(x)))
    ms = pt.maximum(m, _TINY)
    other = 0.5 * y / ms  # signed; its modulus is the smaller component
    sgn = pt.switch(pt.ge(y, 0.0), 1.0, -1.0)
    pos = pt.ge(x, 0.0)
    return pt.switch(pos, m, pt.abs(other)), pt.switch(pos, other, sgn * m)
