"""bayescal's compilation mode: applied inside the block (to PyMC's and nutpie's compiles too), restored after."""

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile import mode as pytensor_mode

from bayescal.compilation import EXCLUDED_REWRITES, compilation, compile_mode
from bayescal.kernels.heston import heston_norm_price


def test_mode_swapped_inside_block_and_restored():
    numba_before = pytensor_mode.predefined_modes["NUMBA"]
    config_before = pytensor.config.mode
    with compilation():
        # nutpie asks for "NUMBA" by name, PyMC and pytensor.function with no mode use config.mode
        for mode in (pytensor_mode.get_mode("NUMBA"), pytensor_mode.get_mode(None)):
            assert set(EXCLUDED_REWRITES) <= set(mode.provided_optimizer.exclude)
    assert pytensor_mode.predefined_modes["NUMBA"] is numba_before
    assert pytensor.config.mode == config_before
    assert not set(EXCLUDED_REWRITES) & set(pytensor_mode.get_mode("NUMBA").provided_optimizer.exclude)


def test_mode_restored_after_an_error():
    numba_before = pytensor_mode.predefined_modes["NUMBA"]
    try:
        with compilation():
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert pytensor_mode.predefined_modes["NUMBA"] is numba_before


def test_excluded_rewrite_changes_no_value_or_gradient():
    """The Heston price and its gradient under bayescal's mode equal the default numba mode's."""
    k = pt.vector("k")
    tau = pt.vector("tau")
    params = [pt.scalar(n) for n in ("v0", "kappa", "theta", "xi", "rho")]
    price = heston_norm_price(k, tau, pt.ones_like(k), *params)
    outputs = [price, *pt.grad(pt.sum(price), params)]
    args = (np.linspace(-0.5, 0.5, 11), np.full(11, 0.25), 0.04, 1.5, 0.05, 0.8, -0.6)
    reference = pytensor.function([k, tau, *params], outputs, mode="NUMBA")(*args)
    ours = pytensor.function([k, tau, *params], outputs, mode=compile_mode())(*args)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ours[1:], reference[1:], rtol=1e-10, atol=1e-14)


def test_stop_gradient_survives_pymc_pregrad_rewrites():
    """PyMC canonicalizes a log density before differentiating it, which removes pytensor's
    ``disconnected_grad`` (a ViewOp): the gradient of ``cut(x**2) + x`` at 3 is then 7, not 1.
    bayescal's ``stop_gradient`` stays cut there and compiles as the identity in every backend."""
    from pymc.pytensorf import rewrite_pregrad
    from pytensor.gradient import disconnected_grad

    from bayescal.kernels._gradient import stop_gradient

    x = pt.scalar("x")
    grads = {cut.__name__: pytensor.function([x], pt.grad(rewrite_pregrad(cut(x**2) + x), x))(3.0)
             for cut in (disconnected_grad, stop_gradient)}
    assert grads == {"disconnected_grad": 7.0, "stop_gradient": 1.0}
    for mode in ("NUMBA", "FAST_RUN", "FAST_COMPILE"):
        value, grad = pytensor.function([x], [stop_gradient(x**2) * 2, pt.grad(stop_gradient(x**2) * x, x)],
                                        mode=mode)(3.0)
        assert (value, grad) == (18.0, 9.0)
