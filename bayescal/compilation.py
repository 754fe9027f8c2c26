"""How bayescal compiles PyTensor graphs: one mode for every fit, prediction and check.

The pricing graphs (a Fourier surface kernel with its gradient, an in-graph implied-vol inversion)
are large, and PyTensor spends most of their compilation time in graph rewriting, not in numba.
One canonicalisation, ``local_greedy_distributor`` (it factors products out of sums to save
multiplications), was 45% of that time on the Heston surface graph of the 2025-12-30 BTC chain:
log-density + gradient compiled in 14.5 s with it and 8.1 s without, with the same log density to the
last digit and the same cost per gradient evaluation (498 and 488 us). It is left out.

:func:`compilation` applies the mode to everything compiled inside the block, including compilations
inside PyMC, pymc-extras and nutpie (nutpie asks PyTensor for the ``"NUMBA"`` mode by name, so the
block swaps that entry of PyTensor's mode table and restores it on exit).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import pytensor
from pytensor.compile import mode as pytensor_mode

EXCLUDED_REWRITES = ("local_greedy_distributor",)


def compile_mode() -> pytensor_mode.Mode:
    """PyTensor's numba mode without the rewrites in :data:`EXCLUDED_REWRITES`."""
    return pytensor_mode.NUMBA.excluding(*EXCLUDED_REWRITES)


@contextlib.contextmanager
def compilation() -> Iterator[None]:
    """Compile every PyTensor function created inside the block with :func:`compile_mode`.

    Also silences numba's "Cannot cache compiled function ... large global arrays" warning: the surface
    kernel's trigonometric weights are graph constants, and above about 1 MB (e.g. 700 SPX quotes x 96
    nodes) numba keeps such a function out of its on-disk cache and warns on every compile. The function
    is compiled and correct; only the cross-process cache is skipped.

    Not thread-safe: the block changes process-wide PyTensor settings (restored on exit).
    """
    from numba.core.errors import NumbaWarning

    mode = compile_mode()
    saved = pytensor_mode.predefined_modes["NUMBA"]
    pytensor_mode.predefined_modes["NUMBA"] = mode
    try:
        with pytensor.config.change_flags(mode=mode), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Cannot cache compiled function", category=NumbaWarning)
            yield
    finally:
        pytensor_mode.predefined_modes["NUMBA"] = saved
