"""A gradient stop that survives the rewrites PyMC applies before it differentiates.

:func:`pytensor.gradient.disconnected_grad` is a ``ViewOp``, and the ``canonicalize`` rewrite
``local_view_op`` removes every ``ViewOp``. PyMC canonicalizes the log density before taking its
gradient (``pymc.pytensorf.rewrite_pregrad``), so inside a PyMC model ``disconnected_grad`` is
gone by the time the gradient is built, and the gradient flows through what it was meant to cut
(for SABR, the closed-form cubic root, whose derivative is 0/0 at a double root: NaN at ``rho = 0``,
``beta = 1``). :func:`stop_gradient` is the same identity as a ``TypeCastingOp`` that is not a
``ViewOp``, which no rewrite removes; the numba and C backends compile it as the identity.
"""

from __future__ import annotations

import pytensor.tensor as pt
from pytensor.compile.ops import TypeCastingOp
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply


class StopGradient(TypeCastingOp):
    """Identity in value; its output is disconnected from its input for every gradient."""

    def make_node(self, x) -> Apply:
        x = pt.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def infer_shape(self, node, input_shapes):
        return input_shapes

    def connection_pattern(self, node):
        return [[False]]

    def pullback(self, inputs, outputs, output_grads):
        return [disconnected_type()]

    def pushforward(self, inputs, outputs, eval_points):
        return [disconnected_type()]


_stop_gradient = StopGradient()


def stop_gradient(x):
    """``x`` with its gradient cut, also inside PyMC models (see the module docstring).

    Parameters
    ----------
    x : array_like or TensorVariable
        Any tensor.

    Returns
    -------
    TensorVariable
        ``x`` (same value, shape and dtype); gradients do not flow through it.
    """
    return _stop_gradient(x)
