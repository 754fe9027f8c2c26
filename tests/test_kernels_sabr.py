"""SABR (Hagan et al. 2002) kernels against shared/reference/sabr.json plus properties.

All 48 reference cases run in one vectorised call of one compiled function (lognormal vol eq. 2.17a
for ``implied_vol_black``, the (B.67a) normal-vol expansion in ``f - K`` for ``implied_vol_normal``
(the variant the case states, pysabr's; QuantLib's log-moneyness form differs by 1.5% there), alpha
from the ATM vol for ``alpha_from_atm_vol``), under the default mode and explicitly under
``mode="NUMBA"``; property checks use the Python backend (merge rewrite only).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import load_reference, passes_reference
from pytensor.compile.mode import Mode

from bayescal.kernels.black import black76_price
from bayescal.kernels.sabr import (
    sabr_alpha_from_atm_vol,
    sabr_atm_elasticity,
    sabr_black76_price,
    sabr_lognormal_vol,
    sabr_normal_vol,
)

CASES = load_reference("sabr.json")["cases"]
CASES_BY_ID = {c["id"]: c for c in CASES}
#: Python-backend mode with only the merge rewrite: compiles in milliseconds (FAST_COMPILE's rewrites take
#: seconds on gradient graphs) and evaluates the graph as written, an independent check of the numba backend.
FAST = Mode(linker="py", optimizer="merge")
VOL_ARGS = ("forward", "strike", "tau", "alpha", "beta", "rho", "nu", "shift")
ALPHA_ARGS = ("forward", "tau", "atm_vol", "beta", "rho", "nu", "shift")


def _reference_function(mode=None):
    """Compiled: vol-case columns + alpha-case columns -> (lognormal vols, normal vols, alphas)."""
    v = [pt.dvector(n) for n in VOL_ARGS]
    a = [pt.dvector("a_" + n) for n in ALPHA_ARGS]
    outputs = [sabr_lognormal_vol(*v), sabr_normal_vol(*v), sabr_alpha_from_atm_vol(*a)]
    return pytensor.function([*v, *a], outputs, mode=mode)


def _split_cases():
    vol_cases = [c for c in CASES if c["quantity"] != "alpha_from_atm_vol"]
    alpha_cases = [c for c in CASES if c["quantity"] == "alpha_from_atm_vol"]
    return vol_cases, alpha_cases


def _columns() -> list[np.ndarray]:
    vol_cases, alpha_cases = _split_cases()
    vol_rows = [
        [c["params"][k] for k in ("forward", "strike", "maturity_years", "alpha", "beta", "rho", "nu")]
        + [c["params"].get("shift", 0.0)]
        for c in vol_cases
    ]
    alpha_rows = [
        [c["params"][k] for k in ("forward", "maturity_years", "atm_black_vol", "beta", "rho", "nu")]
        + [c["params"].get("shift", 0.0)]
        for c in alpha_cases
    ]
    return [*np.array(vol_rows, dtype=np.float64).T, *np.array(alpha_rows, dtype=np.float64).T]


def _by_case(outputs) -> dict[str, float]:
    lognormal, normal, alpha = outputs
    vol_cases, alpha_cases = _split_cases()
    out = {}
    for i, c in enumerate(vol_cases):
        out[c["id"]] = float(normal[i] if c["quantity"] == "implied_vol_normal" else lognormal[i])
    for i, c in enumerate(alpha_cases):
        out[c["id"]] = float(alpha[i])
    return out


@pytest.fixture(scope="module")
def reference_outputs() -> dict[str, list[np.ndarray]]:
    cols = _columns()
    return {
        "default": _reference_function()(*cols),
        "numba": _reference_function("NUMBA")(*cols),
        "python": _reference_function(FAST)(*cols),
    }


@pytest.fixture(scope="module")
def vol_fn():
    """Compiled (Python backend): lognormal vol, normal vol and their gradients in all eight inputs."""
    xs = [pt.dvector(n) for n in VOL_ARGS]
    ln = sabr_lognormal_vol(*xs)
    nv = sabr_normal_vol(*xs)
    return pytensor.function(xs, [ln, nv, *pytensor.grad(ln.sum(), xs), *pytensor.grad(nv.sum(), xs)], mode=FAST)


@pytest.fixture(scope="module")
def alpha_fn():
    """Compiled (Python backend): alpha from the ATM vol and its gradient in all seven inputs."""
    xs = [pt.dvector(n) for n in ALPHA_ARGS]
    a = sabr_alpha_from_atm_vol(*xs)
    return pytensor.function(xs, [a, *pytensor.grad(a.sum(), xs)], mode=FAST)


def test_reference_file_complete():
    assert len(CASES) == 48
    assert {c["model"] for c in CASES} == {"sabr_hagan2002"}
    assert {c["quantity"] for c in CASES} == {"implied_vol_black", "implied_vol_normal", "alpha_from_atm_vol"}


@pytest.mark.parametrize("case_id", list(CASES_BY_ID))
def test_reference_case(case_id: str, reference_outputs):
    case = CASES_BY_ID[case_id]
    x = _by_case(reference_outputs["default"])[case_id]
    tol = case["tolerance"]
    assert passes_reference(x, case), (
        f"{case_id}: {case['quantity']} = {x!r}, expected {case['expected_value']!r} "
        f"(|diff| = {abs(x - case['expected_value']):.3e}, tol abs {tol['abs']} rel {tol['rel']})"
    )


def test_numba_mode_equals_default_and_python_backend(reference_outputs):
    for d, n, p in zip(reference_outputs["default"], reference_outputs["numba"], reference_outputs["python"],
                       strict=True):
        np.testing.assert_array_equal(n, d)
        np.testing.assert_allclose(p, d, rtol=1e-14, atol=0)


def test_lognormal_vols_match_quantlib_values(reference_outputs):
    """Same formula as ql.sabrVolatility: agreement to 2e-13 relative (QuantLib's log form of x(z)
    loses about eps / z, which is the largest difference, at small z)."""
    values = _by_case(reference_outputs["default"])
    for case in CASES:
        if case["quantity"] != "implied_vol_normal" and case["quantlib_value"] is not None:
            assert values[case["id"]] == pytest.approx(case["quantlib_value"], rel=2e-13, abs=0)


def test_normal_vol_variant_is_b67a_not_quantlib():
    """README finding 6: the f-K expansion (pysabr) differs from QuantLib's log-moneyness normal vol."""
    case = CASES_BY_ID["sabr-normalvol-beta1-otm"]
    p = case["params"]
    x = float(sabr_normal_vol(p["forward"], p["strike"], p["maturity_years"], p["alpha"], p["beta"], p["rho"],
                              p["nu"]).eval(mode=FAST))
    assert x == pytest.approx(case["expected_value"], rel=1e-13)
    assert abs(x - case["quantlib_value"]) > 3e-5


# ---------------------------------------------------------------------------------------------
# Limits and smoothness
# ---------------------------------------------------------------------------------------------


def _vol(vol_fn, forward, strike, tau, alpha, beta, rho, nu, shift=0.0):
    cols = np.broadcast_arrays(*(np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in
                                 (forward, strike, tau, alpha, beta, rho, nu, shift)))
    return vol_fn(*[np.ascontiguousarray(c) for c in cols])


def test_beta_one_nu_zero_is_flat_alpha(vol_fn):
    strikes = np.array([0.2, 0.5, 0.99, 1.0, 1.01, 2.0, 5.0])
    for tau in (0.0, 1.0, 30.0):
        for rho in (-0.9, 0.0, 0.7):
            out = _vol(vol_fn, 1.0, strikes, tau, 0.35, 1.0, rho, 0.0)
            np.testing.assert_allclose(out[0], 0.35, rtol=1e-15, atol=0)
    # nu -> 0 continuously
    out = _vol(vol_fn, 1.0, strikes, 2.0, 0.35, 1.0, -0.5, 1e-9)
    np.testing.assert_allclose(out[0], 0.35, rtol=1e-8, atol=0)  # O(nu |ln(K/F)| / alpha)


def test_at_the_money_finite_smooth_and_equal_to_atm_formula(vol_fn):
    """K = F hits z = 0 exactly: finite value equal to the ATM expression, finite gradients, and the
    value/slope approach K = F continuously from both sides."""
    f, tau, alpha, rho, nu = 0.03, 2.0, 0.04, -0.3, 0.5
    for beta in (0.0, 0.5, 1.0):
        for shift in (0.0, 0.02):
            out = _vol(vol_fn, f, f, tau, alpha, beta, rho, nu, shift)
            fs = f + shift
            atm = alpha / fs ** (1 - beta) * (1 + tau * ((1 - beta) ** 2 * alpha**2 / (24 * fs ** (2 - 2 * beta))
                                                         + rho * beta * nu * alpha / (4 * fs ** (1 - beta))
                                                         + (2 - 3 * rho**2) * nu**2 / 24))
            assert out[0][0] == pytest.approx(atm, rel=1e-15)
            atm_n = alpha * fs**beta * (1 + tau * (-beta * (2 - beta) * alpha**2 / (24 * fs ** (2 - 2 * beta))
                                                   + rho * alpha * nu * beta / (4 * fs ** (1 - beta))
                                                   + (2 - 3 * rho**2) * nu**2 / 24))
            assert out[1][0] == pytest.approx(atm_n, rel=1e-15)
            assert all(np.isfinite(g[0]) for g in out[2:])
            eps = np.array([-1e-3, -1e-6, -1e-9, -1e-12, 0.0, 1e-12, 1e-9, 1e-6, 1e-3])
            near = _vol(vol_fn, f, f * (1 + eps), tau, alpha, beta, rho, nu, shift)
            for value, slope in ((near[0], near[2 + 1]), (near[1], near[10 + 1])):  # vol and d vol / d strike
                assert np.all(np.isfinite(value)) and np.all(np.isfinite(slope))
                # Lipschitz through K = F: |v(K) - v(F)| <= 2 |slope| |K - F| (+ round-off)
                dv = np.abs(value - value[4])
                assert np.all(dv <= 2.0 * np.abs(slope[4]) * np.abs(eps) * f + 1e-15 * value[4])
                np.testing.assert_allclose(slope[3:6], slope[4], rtol=1e-6, atol=1e-12 * abs(slope[4]) + 1e-14)


def test_series_branch_boundary_is_seamless(vol_fn):
    """z / x(z) switches to its series at |z| = 1e-6: values on both sides agree to round-off."""
    f, tau, alpha, beta, rho, nu = 1.0, 1.0, 0.2, 1.0, -0.6, 0.4
    z = np.array([-1.2e-6, -1.0001e-6, -0.9999e-6, 0.9999e-6, 1.0001e-6, 1.2e-6])
    strikes = f * np.exp(-z * alpha / nu)  # z = (nu / alpha) ln(f / K) for beta = 1
    out = _vol(vol_fn, f, strikes, tau, alpha, beta, rho, nu)
    slope = out[2 + 1]
    secant = np.diff(out[0]) / np.diff(strikes)
    np.testing.assert_allclose(secant[[0, 1, 3, 4]], 0.5 * (slope[:-1] + slope[1:])[[0, 1, 3, 4]], rtol=1e-4)
    assert np.all(np.abs(np.diff(out[0])) <= np.abs(slope[:-1] * np.diff(strikes)) * 1.01 + 1e-16)


def test_extreme_z_no_overflow_or_cancellation(vol_fn):
    """Large |z| with rho near +-1: x(z) via asinh stays finite (the log form would lose digits)."""
    strikes = np.array([1e-4, 1e-2, 0.5, 2.0, 1e2, 1e4])
    for rho in (-0.999, 0.999):
        out = _vol(vol_fn, 1.0, strikes, 1.0, 0.2, 0.7, rho, 2.0)
        assert np.all(np.isfinite(out[0])) and np.all(out[0] > 0)
        assert all(np.all(np.isfinite(g)) for g in out[2:10])


def test_against_quantlib_random_points(vol_fn):
    ql = pytest.importorskip("QuantLib")
    rng = np.random.default_rng(11)
    n = 200
    f = np.exp(rng.uniform(np.log(0.005), np.log(100.0), n))
    k = f * np.exp(rng.normal(0.0, 0.5, n))
    tau, alpha = rng.uniform(0.05, 20.0, n), rng.uniform(0.05, 0.8, n)
    beta, rho, nu = rng.uniform(0.0, 1.0, n), rng.uniform(-0.95, 0.95, n), rng.uniform(0.0, 1.5, n)
    alpha = alpha * f ** (1 - beta)  # Black vols of order alpha / f**(1 - beta)
    ours = _vol(vol_fn, f, k, tau, alpha, beta, rho, nu)[0]
    ref = np.array([ql.sabrVolatility(*map(float, (k[i], f[i], tau[i], alpha[i], beta[i], nu[i], rho[i])))
                    for i in range(n)])
    np.testing.assert_allclose(ours, ref, rtol=1e-11, atol=0)


def test_alpha_from_atm_vol_round_trip_and_smallest_root(alpha_fn, vol_fn):
    rng = np.random.default_rng(5)
    n = 300
    f = np.exp(rng.uniform(np.log(0.005), np.log(100.0), n))
    tau, atm = rng.uniform(0.0, 30.0, n), np.exp(rng.uniform(np.log(0.02), np.log(2.0), n))
    beta, rho, nu = rng.uniform(0.0, 1.0, n), rng.uniform(-0.95, 0.95, n), rng.uniform(0.0, 1.5, n)
    beta[:40], beta[40:80], nu[80:100], tau[100:110] = 1.0, 0.0, 0.0, 0.0
    shift = np.where(np.arange(n) % 3 == 0, 0.01, 0.0)
    alpha = alpha_fn(f, tau, atm, beta, rho, nu, shift)[0]
    for i in np.flatnonzero(np.isnan(alpha)):  # NaN only where the cubic has no positive root
        c = [(1 - beta[i]) ** 2 * tau[i] / 24, rho[i] * beta[i] * nu[i] * tau[i] / 4,
             1 + (2 - 3 * rho[i] ** 2) * nu[i] ** 2 * tau[i] / 24, -atm[i]]
        roots = np.roots(np.trim_zeros(c, "f"))
        assert not np.any((np.abs(roots.imag) < 1e-9) & (roots.real > 0)), i
    ok = ~np.isnan(alpha)
    assert ok.mean() > 0.95
    vols = _vol(vol_fn, f[ok], f[ok], tau[ok], alpha[ok], beta[ok], rho[ok], nu[ok], shift[ok])[0]
    # round trip to 1e-12 relative, times the cancellation in the cubic when its terms dwarf sigma_ATM
    # (roots x of several hundred with rho < 0, where c3 x**3 and c2 x**2 nearly cancel)
    x = alpha[ok] / (f[ok] + shift[ok]) ** (1 - beta[ok])
    c3, c2 = (1 - beta[ok]) ** 2 * tau[ok] / 24, rho[ok] * beta[ok] * nu[ok] * tau[ok] / 4
    c1 = 1 + (2 - 3 * rho[ok] ** 2) * nu[ok] ** 2 * tau[ok] / 24
    cancellation = (np.abs(c3) * x**3 + np.abs(c2) * x**2 + np.abs(c1) * x) / atm[ok]
    assert np.all(np.abs(vols - atm[ok]) <= 1e-12 * atm[ok] * cancellation)
    assert np.mean(cancellation < 10.0) > 0.9
    for i in np.flatnonzero(ok):  # the smallest positive root of the cubic in x = alpha / f**(1 - beta)
        c = [(1 - beta[i]) ** 2 * tau[i] / 24, rho[i] * beta[i] * nu[i] * tau[i] / 4,
             1 + (2 - 3 * rho[i] ** 2) * nu[i] ** 2 * tau[i] / 24, -atm[i]]
        roots = np.roots(np.trim_zeros(c, "f"))
        positive = np.sort(roots.real[(np.abs(roots.imag) <= 1e-7 * np.abs(roots)) & (roots.real > 0)])
        x = alpha[i] / (f[i] + shift[i]) ** (1 - beta[i])
        assert x == pytest.approx(positive[0], rel=1e-10), i


# ---------------------------------------------------------------------------------------------
# Gradient checks: autodiff against 5-point central differences
# ---------------------------------------------------------------------------------------------


def check_gradients(fn, cols, extra, steps, names, rtol=1e-6, noise_factor=10.0, outputs=(0, None)):
    """Autodiff gradients of ``fn`` against 5-point central differences; returns the worst relative error.

    ``fn(*cols, *extra)`` returns a list; ``outputs = (value index, first gradient index)`` (``None``: the
    gradients follow the value). Criterion per component: ``|ad - fd| <= rtol |ad| + noise`` with
    ``noise = noise_factor eps |value| / h`` (the round-off of the difference quotient). The returned
    worst relative error ``|ad - fd| / |ad|`` is taken over the components the differences resolve
    (``rtol |ad| > noise``), at least 90% of them.
    """
    vi, gi = outputs
    gi = vi + 1 if gi is None else gi
    res = fn(*cols, *extra)
    values, ad = res[vi], res[gi:gi + len(cols)]
    eps = np.finfo(np.float64).eps
    worst, resolved, total = 0.0, 0, 0
    for j, h in enumerate(steps):
        if h is None:
            continue

        def f(shift, j=j, h=h):
            return fn(*[c + shift * h if i == j else c for i, c in enumerate(cols)], *extra)[vi]

        fd = (8.0 * (f(1.0) - f(-1.0)) - (f(2.0) - f(-2.0))) / (12.0 * h)
        err = np.abs(ad[j] - fd)
        noise = noise_factor * eps * np.abs(values) / h
        bad = err > rtol * np.abs(ad[j]) + noise
        assert not np.any(bad), (names[j], np.flatnonzero(bad), ad[j][bad], fd[bad])
        clean = rtol * np.abs(ad[j]) > noise
        resolved += int(clean.sum())
        total += clean.size
        if clean.any():
            worst = max(worst, float(np.max(err[clean] / np.abs(ad[j][clean]))))
    assert resolved >= 0.9 * total
    return worst


def _vol_points() -> tuple[list[np.ndarray], list]:
    """24 points: 12 random + 12 hard regimes (ATM, z at the series switch, beta 0/1, |rho| -> 1, nu = 0,
    huge nu**2 tau, shifted negative strike)."""
    rng = np.random.default_rng(99)
    rows = []
    for _ in range(12):
        f, beta = float(np.exp(rng.uniform(np.log(0.01), np.log(50.0)))), rng.uniform(0.0, 1.0)
        alpha = rng.uniform(0.1, 0.6) * f ** (1 - beta)
        rows.append([f, f * np.exp(rng.normal(0.0, 0.4)), rng.uniform(0.1, 10.0), alpha, beta,
                     rng.uniform(-0.9, 0.9), rng.uniform(0.05, 1.0), 0.0])
    rows += [
        [0.03, 0.03, 2.0, 0.04, 0.5, -0.3, 0.5, 0.0],  # exactly ATM
        [1.0, 1.0 * np.exp(-2e-6), 1.0, 0.2, 1.0, -0.6, 0.1, 0.0],  # z ~ 1e-6: series switch
        [1.0, 1.0 + 1e-9, 5.0, 0.25, 0.3, -0.8, 0.3, 0.0],  # within 1e-9 of ATM
        [4.35, 4.0, 10.0, 0.68, 0.0, -0.0286, 0.3691, 0.0],  # beta = 0 (Korn-Tang)
        [0.025, 0.01, 2.0, 0.118, 1.0, 0.2, 0.3, 0.0],  # beta = 1 OTM (pysabr normal-vol case)
        [1.0, 0.5, 10.0, 0.25, 0.6, -0.97, 0.3, 0.0],  # rho -> -1
        [1.0, 1.8, 10.0, 0.25, 0.6, 0.97, 0.3, 0.0],  # rho -> +1
        [0.03, 0.01, 10.0, 0.02, 0.7, 0.0, 0.0, 0.0],  # nu = 0
        [1.0, 2.5, 30.0, 0.2, 0.5, -0.4, 1.5, 0.0],  # huge nu**2 tau
        [0.025271, -0.004729, 10.0, 0.0253, 0.5, -0.2463, 0.2908, 0.03],  # shifted, negative strike
        [0.039, 0.03, 1.0, 0.3, 0.6, 0.01, 0.02, 0.0],  # QuantLib test-suite: vols above 100%
        [100.0, 60.0, 0.02, 0.4, 0.9, -0.5, 2.5, 0.0],  # one week, steep smile
    ]
    cols = [np.array(c, dtype=np.float64) for c in zip(*rows, strict=True)]
    f, k, tau, alpha, beta, rho, nu, shift = cols
    steps = [1e-4 * (f + shift), 1e-4 * (f + shift), 1e-3 * tau, 1e-3 * alpha, np.full_like(beta, 1e-4),
             np.full_like(rho, 1e-5), 1e-3 * np.maximum(nu, 0.01), None]
    return cols, steps


def test_lognormal_vol_gradient_matches_central_differences(vol_fn):
    cols, steps = _vol_points()
    assert len(cols[0]) >= 20
    assert check_gradients(vol_fn, cols, [], steps, VOL_ARGS, outputs=(0, 2)) <= 1e-6


def test_normal_vol_gradient_matches_central_differences(vol_fn):
    cols, steps = _vol_points()
    assert check_gradients(vol_fn, cols, [], steps, VOL_ARGS, outputs=(1, 10)) <= 1e-6


def test_alpha_gradient_matches_central_differences(alpha_fn):
    rng = np.random.default_rng(3)
    rows = [[float(np.exp(rng.uniform(np.log(0.01), np.log(50.0)))), rng.uniform(0.1, 20.0),
             rng.uniform(0.05, 1.0), rng.uniform(0.0, 1.0), rng.uniform(-0.9, 0.9), rng.uniform(0.0, 1.2), 0.0]
            for _ in range(14)]
    rows += [
        [2.0, 1.5, 0.6, 0.0, 0.0, 0.0, 0.0],  # pysabr flat beta = 0
        [0.02, 1.5, 0.6, 1.0, 0.0, 0.0, 0.0],  # beta = 1, nu = 0: alpha = atm vol
        [0.015, 10.0, 0.2, 0.5, -0.2, 0.3, 0.0],  # pysabr 10y
        [0.02, 30.0, 1.5, 0.0, -0.5, 0.8, 0.0],  # large cubic term
        [1.0, 2.0, 0.4, 1.0, -0.9, 1.0, 0.0],  # beta = 1, rho < 0: concave quadratic
        [0.01, 5.0, 0.3, 0.5, 0.9, 1.5, 0.01],  # shifted
        [1.0, 0.0, 0.3, 0.4, -0.3, 0.5, 0.0],  # tau = 0: alpha = atm f**(1 - beta)
        [50.0, 1.0, 0.05, 0.2, -0.95, 0.2, 0.0],  # low vol, |rho| -> 1
        [0.05, 10.0, 0.3, 0.8, -0.7, 0.9, 0.0],  # three real roots region
        [0.03, 3.0, 0.25, 0.3, 0.3, 0.4, 0.0],
    ]
    cols = [np.array(c, dtype=np.float64) for c in zip(*rows, strict=True)]
    f, tau, atm, beta, rho, nu, shift = cols
    steps = [1e-4 * f, np.maximum(1e-3 * tau, 1e-4), 1e-4 * atm, np.full_like(beta, 1e-4), np.full_like(rho, 1e-5),
             np.maximum(1e-3 * nu, 1e-5), None]
    # tau = 0 and nu = 0 are domain edges, but the cubic is a polynomial in both: central differences
    # through them are valid
    assert not np.any(np.isnan(alpha_fn(*cols)[0]))
    assert check_gradients(alpha_fn, cols, [], steps, ALPHA_ARGS) <= 1e-6


def test_alpha_implicit_gradient_identity(alpha_fn, vol_fn):
    """d alpha / d atm_vol = 1 / (d sigma_ATM / d alpha) at the solved alpha."""
    f, tau, atm, beta, rho, nu = (np.array([x]) for x in (0.03, 5.0, 0.3, 0.5, -0.4, 0.6))
    zero = np.zeros(1)
    a, *grads = alpha_fn(f, tau, atm, beta, rho, nu, zero)
    out = vol_fn(f, f, tau, a, beta, rho, nu, zero)
    dvol_dalpha = out[2 + VOL_ARGS.index("alpha")]
    assert grads[ALPHA_ARGS.index("atm_vol")][0] == pytest.approx(1.0 / dvol_dalpha[0], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Price wrapper and validation
# ---------------------------------------------------------------------------------------------


def test_sabr_black76_price_and_parity():
    forward = pt.dscalar("F")
    k = np.array([-0.004729, 0.015271, 0.035271])
    args = (10.0, 0.0253, 0.5, -0.2463, 0.2908)
    call = sabr_black76_price(forward, k, *args, 1.0, 0.9, shift=0.03)
    put = sabr_black76_price(forward, k, *args, -1.0, 0.9, shift=0.03)
    vol = sabr_lognormal_vol(forward, k, *args, shift=0.03)
    ref = black76_price(forward + 0.03, k + 0.03, 10.0, vol, 1.0, 0.9)
    fn = pytensor.function([forward], [call, put, ref, pytensor.grad(call[1], forward)], mode=FAST)
    f = 0.025271
    c, p, r, delta = fn(f)
    np.testing.assert_allclose(c - p, 0.9 * (f - k), rtol=0, atol=1e-16)
    np.testing.assert_allclose(c, r, rtol=1e-14)
    assert 0.0 < float(delta) < 1.0


def test_validation_and_broadcasting():
    with pytest.raises(ValueError, match="rho"):
        sabr_lognormal_vol(1.0, 1.0, 1.0, 0.2, 0.5, 1.0, 0.3)
    with pytest.raises(ValueError, match="beta"):
        sabr_normal_vol(1.0, 1.0, 1.0, 0.2, 1.5, 0.0, 0.3)
    with pytest.raises(ValueError, match="alpha"):
        sabr_lognormal_vol(1.0, 1.0, 1.0, 0.0, 0.5, 0.0, 0.3)
    with pytest.raises(ValueError, match="atm_vol"):
        sabr_alpha_from_atm_vol(1.0, 1.0, -0.2, 0.5, 0.0, 0.3)
    vols = sabr_lognormal_vol(1.0, np.array([[0.8], [1.0], [1.2]]), np.array([0.5, 2.0]), 0.2, 0.5, -0.3, 0.4)
    assert vols.eval(mode=FAST).shape == (3, 2)


@pytest.fixture(scope="module")
def fold_fn():
    """Compiled (Python backend): alpha with ``unattainable="fold"``, its ATM vol and the gradient."""
    xs = [pt.dvector(n) for n in ALPHA_ARGS]
    a = sabr_alpha_from_atm_vol(*xs, unattainable="fold")
    atm = sabr_lognormal_vol(xs[0], xs[0], xs[1], a, xs[3], xs[4], xs[5], xs[6])
    return pytensor.function(xs, [a, atm, *pytensor.grad(a.sum(), xs[2:6])], mode=FAST)


def test_alpha_fold_branch_beta_one(fold_fn):
    """beta = 1, rho = -0.9, nu = 2, tau = 1: the expansion's ATM vol alpha (c1 + c2 alpha) peaks at
    c1**2 / (4 |c2|) = 0.478779 (c1 = 0.928333, c2 = -0.45) at alpha = c1 / (2 |c2|) = 1.031481."""
    vols = np.array([0.30, 0.46, 0.478, 0.4787, 0.50, 0.90])
    n = vols.size
    args = [np.full(n, 1.0), np.full(n, 1.0), vols, np.full(n, 1.0), np.full(n, -0.9), np.full(n, 2.0), np.zeros(n)]
    alpha, atm, *grads = fold_fn(*args)
    c1, c2 = 1.0 + (2.0 - 3.0 * 0.81) * 4.0 / 24.0, -0.9 * 2.0 / 4.0
    peak_alpha, peak_vol = c1 / (-2.0 * c2), c1**2 / (-4.0 * c2)
    np.testing.assert_allclose([peak_alpha, peak_vol], [1.031481481, 0.478779321], rtol=1e-9)
    reached = vols < peak_vol
    np.testing.assert_allclose(atm[reached], vols[reached], rtol=1e-12)  # the root reproduces the ATM vol
    np.testing.assert_allclose(alpha[~reached], peak_alpha, rtol=1e-12)  # beyond the peak: the fold
    np.testing.assert_allclose(atm[~reached], peak_vol, rtol=1e-12)
    assert np.all(np.diff(alpha) >= 0) and np.all(alpha[reached] < peak_alpha)  # first branch, continuous
    assert np.all(np.isfinite(np.stack(grads)))
    # the nan mode keeps its meaning
    nan_mode = sabr_alpha_from_atm_vol(1.0, 1.0, 0.5, 1.0, -0.9, 2.0).eval(mode=FAST)
    assert np.isnan(nan_mode)


def test_alpha_fold_keeps_the_first_branch_for_beta_below_one(fold_fn):
    """beta = 0.5, rho = -0.9, nu = 5, tau = 1, atm_vol 0.5: the cubic's only positive root (alpha ~53)
    is on the far branch where the ATM vol rises again; the fold mode returns the first branch's peak."""
    args = [np.array([v]) for v in (1.0, 1.0, 0.5, 0.5, -0.9, 5.0, 0.0)]
    far = sabr_alpha_from_atm_vol(*args).eval(mode=FAST)
    assert far[0] > 50.0
    alpha, atm, *grads = fold_fn(*args)
    c3, c2, c1 = 0.25 / 24.0, 0.25 * -0.9 * 0.5 * 5.0, 1.0 + (2.0 - 3.0 * 0.81) * 25.0 / 24.0
    x = c1 / (-c2 + np.sqrt(c2 * c2 - 3.0 * c3 * c1))
    np.testing.assert_allclose(3 * c3 * x * x + 2 * c2 * x + c1, 0.0, atol=1e-12)  # a stationary point of P
    np.testing.assert_allclose(alpha, x, rtol=1e-12)
    assert atm[0] < 0.5 and np.all(np.isfinite(np.stack(grads)))
    with pytest.raises(ValueError, match="unattainable"):
        sabr_alpha_from_atm_vol(1.0, 1.0, 0.5, 0.5, 0.0, 0.3, unattainable="clip")


def test_atm_elasticity_matches_differences_and_vanishes_at_the_fold(fold_fn):
    """``d ln sigma_ATM / d ln alpha`` equals central differences of the expansion's ATM vol, is 1 at
    ``tau = 0`` and 0 at the fold (the beta = 1 case above, and the first-branch peak for beta = 0.5)."""
    rng = np.random.default_rng(4)
    n = 40
    f, tau = rng.uniform(0.5, 2.0, n), rng.uniform(0.0, 2.0, n)
    alpha, beta = rng.uniform(0.05, 0.8, n), rng.uniform(0.0, 1.0, n)
    rho, nu, shift = rng.uniform(-0.9, 0.9, n), rng.uniform(0.0, 2.0, n), rng.uniform(0.0, 0.3, n)
    e = sabr_atm_elasticity(f, tau, alpha, beta, rho, nu, shift).eval(mode=FAST)
    h = 1e-5

    def log_atm(a):
        return np.log(sabr_lognormal_vol(f, f, tau, a, beta, rho, nu, shift).eval(mode=FAST))

    differences = (log_atm(alpha * np.exp(h)) - log_atm(alpha * np.exp(-h))) / (2 * h)
    np.testing.assert_allclose(e, differences, rtol=1e-7, atol=1e-8)
    assert sabr_atm_elasticity(1.0, 0.0, 0.3, 0.5, -0.5, 1.0).eval(mode=FAST) == pytest.approx(1.0, abs=1e-15)
    for beta_, nu_, vol in ((1.0, 2.0, 0.9), (0.5, 5.0, 0.5)):  # both beyond the fold
        args = [np.array([v]) for v in (1.0, 1.0, vol, beta_, -0.9, nu_, 0.0)]
        fold_alpha = fold_fn(*args)[0]
        assert sabr_atm_elasticity(1.0, 1.0, fold_alpha, beta_, -0.9, nu_).eval(mode=FAST)[0] == pytest.approx(
            0.0, abs=1e-9)


def test_model_gradient_finite_where_the_atm_cubic_has_a_double_root():
    """The SABR model's log-density gradient at rho = 0, nu = 1 (beta = 1): the reciprocal ATM cubic has a
    double root at 0 there, where the closed form's arccos has a 0/0 derivative. Its gradient is stopped
    (the last Newton step carries the implicit derivative), and the stop must survive PyMC's pre-gradient
    rewrites: with pytensor's disconnected_grad the gradient was NaN for 1-4 of the 5 expiries."""
    from bayescal.compilation import compilation
    from bayescal.inference import build_model
    from bayescal.market.filters import filter_quotes, used_quotes
    from bayescal.spec import load_spec
    from bayescal.studies import DEFAULT_TAUS, simulated_chain

    spec = load_spec("sabr")
    n = DEFAULT_TAUS.size
    truth = {"alpha": np.full(n, 0.6), "rho": np.full(n, -0.2), "nu": np.full(n, 1.5)}
    chain = simulated_chain("sabr", truth, np.random.default_rng(1))
    model = build_model(spec, used_quotes(filter_quotes(chain, spec.filters)))
    point = model.initial_point() | {"sabr_rho_interval__": np.zeros(n), "sabr_nu_log__": np.zeros(n)}
    with compilation():
        dlogp = model.compile_dlogp(mode="NUMBA")
    for atm_vol in (0.5, 0.664, 0.8):  # which expiries hit the 0/0 exactly depends on rounding
        grad = dlogp(point | {"sabr_atm_vol_log__": np.full(n, np.log(atm_vol))})
        assert np.all(np.isfinite(grad)), (atm_vol, np.flatnonzero(~np.isfinite(grad)))
