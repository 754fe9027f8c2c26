"""Bates kernel against shared/reference/bates.json, its Heston and Merton limits, gradients, backends.

One numba-compiled function prices every quote with :func:`bayescal.kernels.bates.bates_price`
and returns the gradient of the summed price with respect to every input vector (per-quote
derivatives, the quotes being independent). Besides the 7 reference cases (vanishing jumps ->
Lewis / Fang-Oosterlee Heston values; constant variance -> BENCHOP Merton values) it prices all
101-case Heston price references with ``jump_intensity = 0``, compares constant-variance Bates
with Merton's series, and checks the gradient against finite differences at 24 points.
"""

from __future__ import annotations

import math

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import load_reference, passes_reference
from scipy.special import gammaln, ndtr

from bayescal.kernels.bates import bates_log_cf, bates_norm_price, bates_price
from bayescal.kernels.heston import heston_log_cf

CASES = load_reference("bates.json")["cases"]
CASES_BY_ID = {c["id"]: c for c in CASES}
HESTON_PRICE_CASES = [c for c in load_reference("heston.json")["cases"] if c["quantity"] == "price"]
INPUTS = (
    "forward",
    "strike",
    "tau",
    "cp",
    "disc",
    "v0",
    "kappa",
    "theta",
    "xi",
    "rho",
    "jump_intensity",
    "jump_log_mean",
    "jump_log_stdev",
)
GRAD_INPUTS = tuple(n for n in INPUTS if n not in ("cp", "disc"))


@pytest.fixture(scope="module")
def kernel():
    """Numba-compiled ``rows -> (price, {input: d price / d input})``, elementwise in the quotes."""
    vs = {n: pt.dvector(n) for n in INPUTS}
    price = bates_price(*(vs[n] for n in INPUTS))
    grads = pytensor.grad(price.sum(), [vs[n] for n in GRAD_INPUTS])
    fn = pytensor.function([vs[n] for n in INPUTS], [price, *grads], mode="NUMBA")

    def run(rows):
        cols = [np.ascontiguousarray(c, dtype=np.float64) for c in np.asarray(rows, dtype=np.float64).T]
        out = fn(*cols)
        return out[0], dict(zip(GRAD_INPUTS, out[1:], strict=True))

    return run


def case_row(case: dict, jump_intensity=None) -> list[float]:
    """Forward-form input row of a Bates (or, with ``jump_intensity``, a Heston) reference case."""
    p = case["params"]
    tau = float(p["maturity_years"])
    rate, q = float(p["rate"]), float(p["dividend_yield"])
    forward = float(p["spot"]) * math.exp((rate - q) * tau)
    cp = 1.0 if case["option_type"] == "call" else -1.0
    jumps = (
        (p["jump_intensity"], p["jump_log_mean"], p["jump_log_stdev"])
        if jump_intensity is None
        else (jump_intensity, 0.0, 0.1)
    )
    return [forward, p["strike"], tau, cp, math.exp(-rate * tau), p["v0"], p["kappa"], p["theta"], p["sigma_v"],
            p["rho"], *jumps]


@pytest.fixture(scope="module")
def results(kernel) -> dict[str, float]:
    price, _ = kernel([case_row(c) for c in CASES])
    return {c["id"]: float(x) for c, x in zip(CASES, price, strict=True)}


def test_reference_file_complete():
    assert len(CASES) == 7
    assert {c["model"] for c in CASES} == {"bates"}
    assert {c["quantity"] for c in CASES} == {"price"}


@pytest.mark.parametrize("case_id", list(CASES_BY_ID))
def test_reference_case(case_id: str, results):
    case = CASES_BY_ID[case_id]
    x = results[case_id]
    tol = case["tolerance"]
    assert passes_reference(x, case), (
        f"{case_id}: price = {x!r}, expected {case['expected_value']!r} "
        f"(|diff| = {abs(x - case['expected_value']):.3e}, tol abs {tol['abs']} rel {tol['rel']})"
    )


def test_zero_intensity_passes_every_heston_price_reference(kernel):
    """Bates -> Heston: with jump_intensity = 0 all Heston price references pass at their tolerance."""
    price, _ = kernel([case_row(c, jump_intensity=0.0) for c in HESTON_PRICE_CASES])
    failed = [(c["id"], float(x)) for c, x in zip(HESTON_PRICE_CASES, price, strict=True) if not passes_reference(x, c)]
    assert not failed


def test_intensity_to_zero_is_linear(kernel):
    """|Bates(lambda) - Bates(0)| = O(lambda) with a constant bounded by the jump moments."""
    base = [100.0, 110.0, 0.8, 1.0, 0.99, 0.04, 1.5, 0.05, 0.6, -0.6, 0.0, -0.1, 0.15]
    rows = [base[:10] + [lam, -0.1, 0.15] for lam in (0.0, 1e-2, 1e-4, 1e-6, 1e-8)]
    price, _ = kernel(rows)
    diffs = np.abs(price[1:] - price[0])
    assert np.all(diffs[1:] <= 0.02 * diffs[:-1])
    assert diffs[-1] <= 1e-8 * 100.0


def _merton_call(forward, strike, tau, disc, vol, lam, mu, sig, terms=80):
    """Merton (1976) series with the drift compensated by lam (E[J] - 1); Black-76 terms.

    Given ``n`` jumps, ``ln F_T`` is Gaussian with mean forward ``F e^{-lam kbar tau + n (mu + sig**2/2)}``
    and variance ``vol**2 tau + n sig**2``; ``n ~ Poisson(lam tau)``.
    """
    kbar = math.expm1(mu + 0.5 * sig * sig)
    n = np.arange(terms)
    weights = np.exp(-lam * tau + n * math.log(lam * tau) - gammaln(n + 1))
    fwd_n = forward * np.exp(-lam * kbar * tau + n * (mu + 0.5 * sig * sig))
    s = np.sqrt(vol * vol * tau + n * sig * sig)
    d1 = np.log(fwd_n / strike) / s + 0.5 * s
    return float(disc * np.sum(weights * (fwd_n * ndtr(d1) - strike * ndtr(d1 - s))))


def test_constant_variance_is_merton(kernel):
    """xi = 0 and v0 = theta: Merton's jump diffusion (series of Black prices) to 1e-12 relative."""
    cases = [
        (100.0, 80.0, 0.25, 0.2, 1.0, -0.2, 0.3),
        (100.0, 100.0, 1.0, 0.15, 0.4, -0.5, 0.4),
        (100.0, 130.0, 2.0, 0.25, 3.0, 0.05, 0.1),
        (1.0, 0.7, 0.05, 0.4, 5.0, -0.05, 0.2),
    ]
    rows = [[f, k, t, 1.0, 0.98, vol * vol, 1.0, vol * vol, 0.0, 0.0, lam, mu, sig]
            for f, k, t, vol, lam, mu, sig in cases]
    price, _ = kernel(rows)
    ref = [_merton_call(f, k, t, 0.98, vol, lam, mu, sig) for f, k, t, vol, lam, mu, sig in cases]
    np.testing.assert_allclose(price, ref, rtol=1e-12, atol=1e-15)


#: (label, k, tau, v0, kappa, theta, xi, rho, lambda, mu_J, sigma_J)
GRAD_POINTS = [
    ("base-atm", 0.0, 1.0, 0.04, 1.5, 0.04, 0.5, -0.7, 0.5, -0.1, 0.15),
    ("base-otm-call", 0.3, 0.5, 0.04, 2.0, 0.05, 0.4, -0.6, 1.0, 0.02, 0.1),
    ("base-otm-put", -0.3, 0.75, 0.06, 1.0, 0.05, 0.6, -0.5, 0.2, -0.3, 0.25),
    ("long", 0.4, 10.0, 0.0175, 1.5768, 0.0398, 0.5751, -0.5711, 0.1, -0.2, 0.2),
    ("short-1d", 0.005, 1.0 / 365.0, 0.04, 2.0, 0.04, 0.5, -0.7, 2.0, -0.05, 0.05),
    ("short-1w-put", -0.08, 7.0 / 365.0, 0.09, 3.0, 0.06, 0.8, -0.6, 1.0, -0.2, 0.2),
    ("short-0.01", 0.05, 0.01, 0.01, 4.0, 0.25, 1.0, -0.5, 0.5, 0.0, 0.1),
    ("short-2w-many-jumps", 0.04, 14.0 / 365.0, 0.25, 2.0, 0.3, 1.5, -0.3, 5.0, -0.02, 0.08),
    ("high-xi-1.8", 0.18, 1.0, 0.1, 4.0, 0.22, 1.8, -0.75, 0.3, -0.1, 0.3),
    ("high-xi-2.5", -0.2, 0.5, 0.05, 1.0, 0.05, 2.5, -0.4, 0.5, -0.15, 0.2),
    ("high-xi-pos-rho", 0.3, 2.0, 0.0225, 0.1, 0.01, 2.0, 0.5, 0.2, 0.05, 0.1),
    ("high-xi-deep-put", -0.8, 1.5, 0.04, 2.0, 0.04, 2.0, -0.8, 0.4, -0.4, 0.3),
    ("rho-0.95", -0.2, 1.0, 0.04, 1.0, 0.04, 1.0, -0.95, 0.5, -0.1, 0.15),
    ("rho+0.95", 0.2, 1.0, 0.04, 1.0, 0.04, 1.0, 0.95, 0.5, 0.1, 0.15),
    ("rho-0.95-long", 0.0, 5.0, 0.04, 0.5, 0.04, 1.2, -0.95, 0.1, -0.2, 0.2),
    ("rho+0.95-short", -0.03, 0.05, 0.09, 2.0, 0.09, 0.9, 0.95, 1.0, 0.0, 0.05),
    ("feller-1", 0.1, 1.0, 0.0175, 1.5768, 0.0398, 0.5751, -0.5711, 0.3, -0.1, 0.1),
    ("feller-2", -0.35, 10.0, 0.04, 0.5, 0.04, 1.0, -0.9, 0.05, -0.3, 0.3),
    ("feller-3", 0.5, 3.0, 0.01, 0.3, 0.02, 0.7, -0.2, 0.5, 0.1, 0.2),
    ("feller-4", -0.15, 0.25, 0.02, 0.2, 0.03, 0.9, 0.0, 1.0, -0.1, 0.1),
    ("deep-otm-call", 0.9, 0.5, 0.04, 1.5, 0.04, 0.5, -0.7, 0.5, 0.1, 0.2),
    ("big-down-jumps", -0.5, 0.5, 0.02, 2.0, 0.02, 0.3, -0.5, 0.2, -0.6, 0.3),
    ("tiny-xi", 0.1, 1.0, 0.04, 1.0, 0.05, 1e-3, -0.5, 0.4, -0.5, 0.4),
    ("high-vol", -0.5, 2.0, 0.5, 1.0, 0.4, 1.5, -0.3, 1.0, -0.2, 0.3),
]
STENCIL = np.array([-2.0, -1.0, 1.0, 2.0])
STENCIL_W = np.array([1.0, -8.0, 8.0, -1.0]) / 12.0


def test_gradient_matches_finite_differences(kernel):
    """Reverse-mode derivatives in all 11 differentiable inputs vs 4th-order central differences.

    Relative error ``<= 1e-6`` with respect to ``max(|fd|, 1e-6)`` (price units, F = 100).
    """
    base = np.array([[100.0, 100.0 * math.exp(k), tau, 1.0 if k >= 0 else -1.0, 0.97, *par]
                     for _, k, tau, *par in GRAD_POINTS])
    _, grads = kernel(base)
    ad = np.column_stack([grads[n] for n in GRAD_INPUTS])
    rows, steps = [], np.empty(ad.shape)
    for i, b in enumerate(base):
        for j, name in enumerate(GRAD_INPUTS):
            col = INPUTS.index(name)
            steps[i, j] = h = 1e-4 * (1.0 if name in ("rho", "jump_log_mean") else abs(b[col]))
            for sgn in STENCIL:
                r = b.copy()
                r[col] += sgn * h
                rows.append(r)
    price, _ = kernel(np.array(rows))
    fd = (price.reshape(len(base), len(GRAD_INPUTS), len(STENCIL)) @ STENCIL_W) / steps
    rel = np.abs(ad - fd) / np.maximum(np.abs(fd), 1e-6)
    assert np.all(np.isfinite(ad))
    worst = np.unravel_index(np.argmax(rel), rel.shape)
    assert rel.max() <= 1e-6, (
        f"worst relative error {rel.max():.2e} at {GRAD_POINTS[worst[0]][0]} d/d{GRAD_INPUTS[worst[1]]}: "
        f"autodiff {ad[worst]!r} vs fd {fd[worst]!r}"
    )


def test_put_call_parity_and_monotone_in_strike(kernel):
    strikes = 100.0 * np.exp(np.linspace(-1.5, 1.2, 28))
    settings = (
        (0.05, (0.04, 2.0, 0.04, 0.8, -0.7, 3.0, -0.05, 0.1)),
        (2.0, (0.09, 0.5, 0.06, 1.5, -0.9, 0.2, -0.4, 0.3)),
    )
    for tau, par in settings:
        rows = [[100.0, k, tau, cp, 0.95, *par] for cp in (1.0, -1.0) for k in strikes]
        price, _ = kernel(rows)
        call, put = price[: strikes.size], price[strikes.size :]
        np.testing.assert_allclose(call - put, 0.95 * (100.0 - strikes), rtol=0, atol=1e-12)
        assert np.all(np.diff(call) <= 1e-12) and np.all(call >= 0.95 * np.maximum(100.0 - strikes, 0) - 1e-12)


def test_c_backend_matches_numba(kernel):
    """The C backend (mode CVM) gives the numba prices on the reference and gradient cases."""
    rows = np.array([case_row(c) for c in CASES]
                    + [[100.0, 100.0 * math.exp(k), tau, 1.0, 0.97, *par] for _, k, tau, *par in GRAD_POINTS])
    vs = [pt.dvector(n) for n in INPUTS]
    with pytensor.config.change_flags(cmodule__remove_gxx_opt=True):  # unoptimised gcc: short cold compile
        cvm = pytensor.function(vs, bates_price(*vs), mode=pytensor.compile.mode.get_mode("CVM"))
        c_prices = cvm(*[np.ascontiguousarray(c) for c in rows.T])
    price, _ = kernel(rows)
    np.testing.assert_allclose(c_prices, price, rtol=1e-12, atol=1e-15)


def test_log_cf_multiplies_the_heston_cf():
    """ln phi_Bates(u) - ln phi_Heston(u) is the compensated lognormal jump exponent."""
    u = np.array([0.0, 0.7, 3.0, 20.0])
    heston = (0.8, 0.04, 1.5, 0.04, 0.6, -0.7)
    lam, mu, sig = 0.7, -0.15, 0.2
    u_re = pt.dvector("u_re")
    outs = [*bates_log_cf(u_re, 0.0 * u_re, *heston, lam, mu, sig), *heston_log_cf(u_re, 0.0 * u_re, *heston)]
    b_re, b_im, h_re, h_im = pytensor.function([u_re], outs, mode="FAST_COMPILE")(u)
    jump = 0.8 * lam * (np.exp(1j * u * mu - 0.5 * sig * sig * u * u) - 1.0 - 1j * u * math.expm1(mu + 0.5 * sig * sig))
    np.testing.assert_allclose(b_re - h_re, jump.real, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(b_im - h_im, jump.imag, rtol=1e-13, atol=1e-16)


def test_rejects_bad_constant_inputs():
    with pytest.raises(ValueError, match="jump_intensity"):
        bates_norm_price(0.0, 1.0, 1.0, 0.04, 1.0, 0.04, 0.5, -0.5, -1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="jump_log_stdev"):
        bates_norm_price(0.0, 1.0, 1.0, 0.04, 1.0, 0.04, 0.5, -0.5, 1.0, 0.0, -0.1)
    with pytest.raises(ValueError, match="cp"):
        bates_norm_price(0.0, 1.0, 2.0, 0.04, 1.0, 0.04, 0.5, -0.5, 1.0, 0.0, 0.1)
