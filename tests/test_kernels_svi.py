"""SVI / SSVI kernels against shared/reference/svi_ssvi.json (Gatheral-Jacquier 2014) plus properties.

One compiled PyTensor function per kernel family (raw SVI, SSVI, the two phi choices), reused for
every case; minima of g are taken on a fine grid and refined with a bounded scalar minimiser.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import load_reference, passes_reference
from pytensor.gradient import verify_grad
from scipy.optimize import minimize_scalar

from bayescal.kernels import (
    SviJwParams,
    SviRawParams,
    butterfly_g,
    ssvi_g,
    ssvi_phi_heston_like,
    ssvi_phi_power_law,
    ssvi_to_raw,
    ssvi_total_variance,
    svi_jw_from_raw,
    svi_raw_derivatives,
    svi_raw_from_jw,
    svi_raw_g,
    svi_raw_total_variance,
)

CASES = load_reference("svi_ssvi.json")["cases"]
CASES_BY_ID = {c["id"]: c for c in CASES}

RAW_NAMES = ("a", "b", "rho", "m", "sigma")
JW_NAMES = SviJwParams._fields
#: log-moneyness windows for min g: [-5, 5] for SVI slices, [-4, 4] for SSVI (as in the case notes)
K_WINDOW = {"svi_raw": 5.0, "svi_jw": 5.0, "ssvi": 4.0}
#: The reference cases run under PyTensor's default mode (the rewrites and backend models use);
#: property checks and verify_grad use FAST_COMPILE so a cold compile cache stays fast.
FAST = "FAST_COMPILE"
VOGT = SviRawParams(a=-0.041, b=0.1331, rho=0.306, m=0.3586, sigma=0.4153)  # GJ2014 Example 3.1



class Kernels:
    """Compiled kernels, vectorised over the first axis of equal-length float64 vectors."""

    def __init__(self) -> None:
        k, a, b, rho, m, sigma, theta, phi, eta, gamma, lam = (
            pt.dvector(n) for n in ("k", "a", "b", "rho", "m", "sigma", "theta", "phi", "eta", "gamma", "lam")
        )
        self._raw = pytensor.function(
            [k, a, b, rho, m, sigma],
            [svi_raw_total_variance(k, a, b, rho, m, sigma), svi_raw_g(k, a, b, rho, m, sigma)],
        )
        self._ssvi = pytensor.function(
            [k, theta, rho, phi], [ssvi_total_variance(k, theta, rho, phi), ssvi_g(k, theta, rho, phi)]
        )
        self._power_law = pytensor.function([theta, eta, gamma], ssvi_phi_power_law(theta, eta, gamma))
        self._heston_like = pytensor.function([theta, lam], ssvi_phi_heston_like(theta, lam))

    @staticmethod
    def _vectors(*xs):
        return [np.ascontiguousarray(x, dtype=np.float64) for x in np.broadcast_arrays(*map(np.atleast_1d, xs))]

    def raw(self, k, raw):
        """(w, g) of a raw SVI slice at k."""
        return self._raw(*self._vectors(k, *raw))

    def ssvi(self, k, theta, rho, phi):
        """(w, g) of an SSVI slice at k."""
        return self._ssvi(*self._vectors(k, theta, rho, phi))

    def phi(self, params: dict, theta):
        if params["phi"] == "power_law":
            return self._power_law(*self._vectors(theta, params["eta"], params["gamma"]))
        if params["phi"] == "heston_like":
            return self._heston_like(*self._vectors(theta, params["lambda"]))
        raise AssertionError(f"unknown phi {params['phi']!r}")


@pytest.fixture(scope="module")
def kernels() -> Kernels:
    return Kernels()


def _raw_params(case: dict) -> SviRawParams:
    p = case["params"]
    if case["model"] == "svi_raw":
        return SviRawParams(*(p[n] for n in RAW_NAMES))
    if case["model"] == "svi_jw":
        return svi_raw_from_jw(*(p[n] for n in JW_NAMES), p["maturity_years"])
    raise AssertionError(case["model"])


def _min_over_k(g_of_k, half_width: float) -> float:
    """Minimum of g on [-half_width, half_width]: 20001-point grid, then a bounded refinement."""
    grid = np.linspace(-half_width, half_width, 20001)
    values = g_of_k(grid)
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = minimize_scalar(lambda x: float(g_of_k(np.array([x]))[0]), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12})
    return float(min(values[i], res.fun))


def _evaluate(case: dict, kernels: Kernels) -> float:
    p = case["params"]
    model, quantity = case["model"], case["quantity"]
    if quantity == "svi_jw_parameter":
        raw = _raw_params(case)
        return float(getattr(svi_jw_from_raw(*raw, p["maturity_years"]), p["jw_parameter"]))
    if model == "ssvi":
        if quantity == "min_g_function":
            thetas = np.asarray(p["theta_grid"], dtype=np.float64)
            phis = kernels.phi(p, thetas)
            return min(
                _min_over_k(lambda k, th=th, ph=ph: kernels.ssvi(k, th, p["rho"], ph)[1], K_WINDOW[model])
                for th, ph in zip(thetas, phis, strict=True)
            )
        theta = p["theta_atm_total_variance"]
        w, g = kernels.ssvi(p["log_moneyness"], theta, p["rho"], kernels.phi(p, theta))
        return float({"total_variance": w, "g_function": g}[quantity][0])
    raw = _raw_params(case)
    if quantity == "min_g_function":
        return _min_over_k(lambda k: kernels.raw(k, raw)[1], K_WINDOW[model])
    w, g = kernels.raw(p["log_moneyness"], raw)
    return float({"total_variance": w, "g_function": g}[quantity][0])


def test_reference_file_complete():
    assert len(CASES) == 20


@pytest.mark.parametrize("case_id", list(CASES_BY_ID))
def test_reference_case(case_id: str, kernels: Kernels):
    case = CASES_BY_ID[case_id]
    x = _evaluate(case, kernels)
    expected, tol = case["expected_value"], case["tolerance"]
    assert passes_reference(x, case), (
        f"{case_id}: {case['quantity']} = {x!r}, expected {expected!r} "
        f"({case.get('comparison', 'abs/rel')}, |diff| = {abs(x - expected):.3e}, tol {tol})"
    )
    if "computed_minimum_g" in case:  # the collector's analytic minimum over the same window
        assert x == pytest.approx(case["computed_minimum_g"], abs=1e-8)


def test_jw_to_raw_matches_derived_raw():
    """GJ2014 Lemma 3.2 inversion reproduces the raw parameters stored with the svi_jw cases."""
    checked = 0
    for case in CASES:
        if case["model"] == "svi_jw":
            raw = _raw_params(case)
            for name in RAW_NAMES:
                assert getattr(raw, name) == pytest.approx(case["params"]["derived_raw"][name], rel=1e-12, abs=1e-15)
            checked += 1
    assert checked >= 1


def test_jw_raw_round_trip():
    rng = np.random.default_rng(7)
    n = 200
    raw = SviRawParams(
        a=rng.uniform(-0.05, 0.1, n),
        b=rng.uniform(0.01, 0.5, n),
        rho=rng.uniform(-0.95, 0.95, n),
        m=rng.uniform(-0.5, 0.5, n),
        sigma=rng.uniform(0.05, 1.0, n),
    )
    # keep slices whose minimum total variance is positive
    keep = raw.a + raw.b * raw.sigma * np.sqrt(1 - raw.rho**2) > 1e-3
    raw = SviRawParams(*(x[keep] for x in raw))
    tau = rng.uniform(0.05, 3.0, keep.sum())
    jw = svi_jw_from_raw(*raw, tau)
    back = svi_raw_from_jw(*jw, tau)
    for name in RAW_NAMES:
        np.testing.assert_allclose(getattr(back, name), getattr(raw, name), rtol=1e-9, atol=1e-11)
    # scalar in, scalar out
    assert np.ndim(svi_jw_from_raw(*VOGT, 1.0).v_t) == 0


def test_jw_parameters_match_autodiff_definitions():
    """v_t = w(0)/t, psi_t = d sqrt(w)/dk at 0, p_t/c_t = -/+ lim w'(k)/sqrt(w_t), vtilde_t = min w / t."""
    tau = 0.7
    k = pt.dscalar("k")
    w = svi_raw_total_variance(k, *VOGT)
    f = pytensor.function([k], [w, pytensor.grad(pt.sqrt(w), k), pytensor.grad(w, k)], mode=FAST)
    w0, psi, _ = f(0.0)
    jw = svi_jw_from_raw(*VOGT, tau)
    sq = np.sqrt(w0)
    assert jw.v_t == pytest.approx(w0 / tau, rel=1e-14)
    assert jw.psi_t == pytest.approx(psi, rel=1e-12)
    assert jw.p_t == pytest.approx(-f(-1e8)[2] / sq, rel=1e-9)
    assert jw.c_t == pytest.approx(f(1e8)[2] / sq, rel=1e-9)
    k_min = minimize_scalar(lambda x: float(f(x)[0]), bounds=(-2, 2), method="bounded", options={"xatol": 1e-12}).x
    assert jw.vtilde_t == pytest.approx(float(f(k_min)[0]) / tau, rel=1e-10)


def test_analytic_derivatives_match_autodiff():
    k = pt.dvector("k")
    kk = np.linspace(-3.0, 3.0, 41)
    # raw SVI
    w, dw, d2w = svi_raw_derivatives(k, *VOGT)
    w_ad = svi_raw_total_variance(k, *VOGT)
    dw_ad = pytensor.grad(w_ad.sum(), k)
    d2w_ad = pytensor.grad(dw_ad.sum(), k)
    g_ad = butterfly_g(k, w_ad, dw_ad, d2w_ad)
    f = pytensor.function([k], [w, dw, d2w, w_ad, dw_ad, d2w_ad, svi_raw_g(k, *VOGT), g_ad], mode=FAST)
    w, dw, d2w, w_ad, dw_ad, d2w_ad, g, g_ad = f(kk)
    np.testing.assert_allclose(w, w_ad, rtol=1e-15)
    np.testing.assert_allclose(dw, dw_ad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d2w, d2w_ad, rtol=1e-12)
    np.testing.assert_allclose(g, g_ad, rtol=1e-12, atol=1e-14)
    # SSVI
    theta, rho, phi = 0.04, -0.7, 2.5
    w_ad = ssvi_total_variance(k, theta, rho, phi)
    dw_ad = pytensor.grad(w_ad.sum(), k)
    d2w_ad = pytensor.grad(dw_ad.sum(), k)
    f = pytensor.function([k], [ssvi_g(k, theta, rho, phi), butterfly_g(k, w_ad, dw_ad, d2w_ad)], mode=FAST)
    g, g_ad = f(kk)
    np.testing.assert_allclose(g, g_ad, rtol=1e-12, atol=1e-14)


def test_ssvi_slice_is_raw_svi(kernels: Kernels):
    kk = np.linspace(-3.0, 3.0, 61)
    for theta, rho, phi in [(0.04, -0.7, 5.0), (0.3, 0.2, 1.1), (1.5, -0.3, 0.4)]:
        raw = SviRawParams(*(float(x.eval(mode=FAST)) for x in ssvi_to_raw(theta, rho, phi)))
        w_raw, g_raw = kernels.raw(kk, raw)
        w_ssvi, g_ssvi = kernels.ssvi(kk, theta, rho, phi)
        np.testing.assert_allclose(w_ssvi, w_raw, rtol=1e-13)
        np.testing.assert_allclose(g_ssvi, g_raw, rtol=1e-10, atol=1e-12)
        assert w_ssvi[kk.size // 2] == pytest.approx(theta, rel=1e-14)  # w(0) = theta


def test_ssvi_property_cases_calendar_and_theorem_4_2(kernels: Kernels):
    """Cases promising no calendar arbitrage: w(k, theta) non-decreasing in theta (Theorem 4.1), and
    the Theorem 4.2 sufficient conditions hold on the theta grid."""
    kk = np.linspace(-4.0, 4.0, 801)
    checked = 0
    for case in CASES:
        p = case["params"]
        if case["model"] != "ssvi" or "theta_grid" not in p:
            continue
        thetas = np.asarray(p["theta_grid"], dtype=np.float64)
        phis = kernels.phi(p, thetas)
        w = np.stack([kernels.ssvi(kk, th, p["rho"], ph)[0] for th, ph in zip(thetas, phis, strict=True)])
        calendar_ok = bool(np.all(np.diff(w, axis=0) >= -1e-15))
        assert calendar_ok == (not case["expected_property"]["calendar_arbitrage"])
        if not case["expected_property"]["butterfly_arbitrage"]:
            assert np.all(thetas * phis * (1 + abs(p["rho"])) < 4)
            assert np.all(thetas * phis**2 * (1 + abs(p["rho"])) <= 4)
        checked += 1
    assert checked >= 1


def test_vogt_slice_has_butterfly_arbitrage(kernels: Kernels):
    """GJ2014 Example 3.1: the Vogt slice has g < 0 somewhere; its JW repair (Example 5.1) does not."""
    assert _min_over_k(lambda k: kernels.raw(k, VOGT)[1], 5.0) < 0.0


def test_verify_grad_raw_svi_all_parameters():
    rng = np.random.default_rng(11)
    k = np.array([-1.5, -0.2, 0.0, 0.4, 2.0])
    points = [
        [np.full(5, -0.041), np.full(5, 0.1331), np.full(5, 0.306), np.full(5, 0.3586), np.full(5, 0.4153)],
        [np.full(5, 0.02), np.full(5, 0.4), np.full(5, -0.6), np.full(5, -0.1), np.full(5, 0.05)],
    ]
    for pt_values in points:
        verify_grad(
            lambda a, b, rho, m, sigma: svi_raw_total_variance(k, a, b, rho, m, sigma), pt_values, rng=rng, mode=FAST
        )
    # and w.r.t. k (and the g function w.r.t. all parameters)
    verify_grad(lambda kk: svi_raw_total_variance(kk, *VOGT), [k], rng=rng, mode=FAST)
    verify_grad(lambda a, b, rho, m, sigma: svi_raw_g(k, a, b, rho, m, sigma), points[0], rng=rng, mode=FAST)


def test_heston_like_phi_small_argument(kernels: Kernels):
    """phi = (x + expm1(-x)) / x**2 (x = lambda theta) against its series 1/2 - x/6 + x**2/24."""
    lam = 0.375
    theta = np.array([1e-7, 1e-5, 1e-3])
    x = lam * theta
    phi = kernels.phi({"phi": "heston_like", "lambda": lam}, theta)
    np.testing.assert_allclose(phi, 0.5 - x / 6 + x**2 / 24, rtol=1e-8)
    power = kernels.phi({"phi": "power_law", "eta": 1.0, "gamma": 0.5}, np.array([0.04]))
    assert power[0] == pytest.approx(1.0 / (0.04**0.5 * 1.04**0.5), rel=1e-15)


@pytest.mark.parametrize(
    ("jw", "match"),
    [
        ((0.02, -0.1, 0.7, 0.9, 0.01, 0.0), "tau"),
        ((-0.02, -0.1, 0.7, 0.9, 0.01, 1.0), "v_t"),
        ((0.02, -0.1, -0.7, 0.9, 0.01, 1.0), "p_t"),
        ((0.02, 5.0, 0.7, 0.9, 0.01, 1.0), "beta"),
        ((0.02, -0.1, 0.7, 0.9, 0.03, 1.0), "sigma"),
        ((0.02, np.nan, 0.7, 0.9, 0.01, 1.0), "finite"),
    ],
)
def test_svi_raw_from_jw_rejects_invalid(jw, match):
    with pytest.raises(ValueError, match=match):
        svi_raw_from_jw(*jw)


def test_svi_jw_from_raw_rejects_invalid():
    with pytest.raises(ValueError, match="rho"):
        svi_jw_from_raw(0.01, 0.1, 1.0, 0.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        svi_jw_from_raw(0.01, 0.1, 0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="w\\(0\\)"):
        svi_jw_from_raw(-1.0, 0.1, 0.0, 0.0, 0.1, 1.0)


def test_broadcasting_over_an_expiry_axis():
    k = np.linspace(-1.0, 1.0, 5)
    a = np.array([[0.01], [0.02]])  # one row per expiry
    w = svi_raw_total_variance(k, a, 0.1, -0.3, 0.0, 0.2).eval(mode=FAST)
    assert w.shape == (2, 5)
    np.testing.assert_allclose(w[1] - w[0], 0.01, rtol=1e-12)
    theta = np.array([[0.02], [0.05]])
    g = ssvi_g(k, theta, -0.5, ssvi_phi_power_law(theta, 0.8, 0.4)).eval(mode=FAST)
    assert g.shape == (2, 5)
