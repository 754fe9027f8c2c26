"""SSVI no-arbitrage margins (Gatheral & Jacquier 2014, Theorems 4.1 and 4.2) against direct checks."""

from __future__ import annotations

import numpy as np

from bayescal.arbitrage import butterfly_g_numeric
from bayescal.kernels import ssvi_butterfly_margins, ssvi_phi_power_law, ssvi_total_variance


def _slice(k, theta, rho, eta, gamma):
    phi = ssvi_phi_power_law(theta, eta, gamma).eval()
    return ssvi_total_variance(k, theta, rho, phi).eval(), phi


def test_butterfly_margins_agree_with_the_density():
    """Positive margins (sufficient, Theorem 4.2) -> g >= 0 on the grid; with eta large enough to violate
    them, this slice does have g < 0 somewhere."""
    k = np.linspace(-3, 3, 3001)
    for eta, expect_free in ((0.8, True), (6.0, False)):
        theta, rho, gamma = 0.5, -0.4, 0.3
        w, phi = _slice(k, theta, rho, eta, gamma)
        margins = ssvi_butterfly_margins(theta, rho, phi)
        positive = all(float(np.asarray(m.eval() if hasattr(m, "eval") else m)) > 0 for m in margins)
        g = butterfly_g_numeric(k, w)
        assert positive == expect_free
        assert (g[5:-5].min() >= -1e-9) == expect_free
