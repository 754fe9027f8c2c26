"""Black-76 / Black-Scholes-Merton kernels against shared/reference/black_scholes_black76.json.

Every price comes from :func:`bayescal.kernels.black76_price`; every greek is ``pytensor.grad`` of
that price graph with respect to the spot/forward, volatility, time or rate input (no hand-written
greek formula anywhere). All reference cases are evaluated in one vectorised call of one compiled
function per model (the cases are independent, so the gradient of the summed price with respect
to an input vector is the vector of per-case derivatives).
"""

from __future__ import annotations

import math

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import load_reference, passes_reference
from pytensor.gradient import verify_grad

from bayescal.kernels import black76_norm_price, black76_price, norm_cdf

CASES = load_reference("black_scholes_black76.json")["cases"]
CASES_BY_ID = {c["id"]: c for c in CASES}
#: The reference cases run under PyTensor's default mode (the rewrites and backend models use);
#: property checks and verify_grad use FAST_COMPILE so a cold compile cache stays fast.
FAST = "FAST_COMPILE"

# quantity -> (output name, scale) on top of the per-model outputs below
QUANTITIES = {
    "price": ("price", 1.0),
    "price_undiscounted": ("price_undiscounted", 1.0),
    "normalised_price": ("normalised_price", 1.0),
    "delta": ("delta", 1.0),
    "gamma": ("gamma", 1.0),
    "vega": ("vega", 1.0),
    "vega_per_pct": ("vega", 0.01),
    "theta": ("theta", 1.0),
    "theta_per_day": ("theta", 1.0 / 365.0),
    "rho": ("rho", 1.0),
    "rho_per_pct": ("rho", 0.01),
    "dividend_rho": ("dividend_rho", 1.0),
    "elasticity": ("elasticity", 1.0),
}
OUTPUTS = (
    "price",
    "price_undiscounted",
    "normalised_price",
    "delta",
    "gamma",
    "vega",
    "theta",
    "rho",
    "dividend_rho",
    "elasticity",
)



def _greek_graph(model: str):
    """Compiled function: vectors of case inputs -> all outputs, greeks by pytensor.grad."""
    s = pt.dvector("spot_or_forward")
    strike = pt.dvector("strike")
    tau = pt.dvector("tau")
    r = pt.dvector("rate")
    q = pt.dvector("dividend_yield")
    vol = pt.dvector("vol")
    cp = pt.dvector("cp")
    disc = pt.exp(-r * tau)
    if model == "black_scholes_merton":
        forward = s * pt.exp((r - q) * tau)  # spot model in forward form, Merton (1973)
    else:  # black76: the futures price is an input, held fixed by every greek
        forward = s
    price = black76_price(forward, strike, tau, vol, cp, disc)
    undisc = black76_price(forward, strike, tau, vol, cp)
    total = price.sum()
    delta = pytensor.grad(total, s)
    outputs = {
        "price": price,
        "price_undiscounted": undisc,
        "normalised_price": undisc / pt.sqrt(forward * strike),  # Jaeckel's b = price/sqrt(F K)
        "delta": delta,
        "gamma": pytensor.grad(delta.sum(), s),
        "vega": pytensor.grad(total, vol),
        "theta": -pytensor.grad(total, tau),
        "rho": pytensor.grad(total, r),
        "dividend_rho": pytensor.grad(total, q, disconnected_inputs="ignore"),
        "elasticity": delta * s / price,
    }
    return pytensor.function(
        [s, strike, tau, r, q, vol, cp], [outputs[name] for name in OUTPUTS], on_unused_input="ignore"
    )


def _inputs(case: dict) -> tuple[float, ...]:
    p = case["params"]
    tau = float(p["maturity_years"])
    if "rate" in p:
        rate = float(p["rate"])
    elif "discount_factor" in p:
        rate = -math.log(float(p["discount_factor"])) / tau
    else:  # normalised / undiscounted cases carry no rate
        rate = 0.0
    spot = float(p["spot"] if case["model"] == "black_scholes_merton" else p["forward"])
    cp = 1.0 if case["option_type"] == "call" else -1.0
    return (spot, float(p["strike"]), tau, rate, float(p.get("dividend_yield", 0.0)), float(p["volatility"]), cp)


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, float]]:
    """Evaluate every case in one call per model; {case id: {output name: value}}."""
    out: dict[str, dict[str, float]] = {}
    for model in ("black_scholes_merton", "black76"):
        cases = [c for c in CASES if c["model"] == model]
        if not cases:
            continue
        columns = np.array([_inputs(c) for c in cases], dtype=np.float64).T
        values = _greek_graph(model)(*columns)
        for i, case in enumerate(cases):
            out[case["id"]] = {name: float(v[i]) for name, v in zip(OUTPUTS, values, strict=True)}
    return out


def test_reference_file_complete():
    assert len(CASES) == 68
    assert {c["model"] for c in CASES} <= {"black_scholes_merton", "black76"}
    assert {c["quantity"] for c in CASES} <= set(QUANTITIES)


@pytest.mark.parametrize("case_id", list(CASES_BY_ID))
def test_reference_case(case_id: str, results):
    case = CASES_BY_ID[case_id]
    name, scale = QUANTITIES[case["quantity"]]
    x = results[case_id][name] * scale
    expected = case["expected_value"]
    tol = case["tolerance"]
    assert passes_reference(x, case), (
        f"{case_id}: {case['quantity']} = {x!r}, expected {expected!r} "
        f"(|diff| = {abs(x - expected):.3e}, tol abs {tol['abs']} rel {tol['rel']})"
    )


def test_normalised_price_from_jaeckel_variables():
    """b(x, s) with x = ln(F/K), s = sigma sqrt(T) straight from the case params."""
    for case in CASES:
        if case["quantity"] != "normalised_price":
            continue
        p = case["params"]
        cp = 1.0 if case["option_type"] == "call" else -1.0
        k, w = -p["x"], p["s"] ** 2
        b = float((black76_norm_price(k, w, cp) * np.exp(-k / 2.0)).eval(mode=FAST))
        assert passes_reference(b, case), (case["id"], b, case["expected_value"])


# ---------------------------------------------------------------------------------------------
# Properties of the normalised price c(k, w, cp)
# ---------------------------------------------------------------------------------------------

K_GRID = np.linspace(-3.0, 3.0, 61)
W_GRID = np.array([1e-6, 1e-3, 0.01, 0.04, 0.25, 1.0, 4.0])


@pytest.fixture(scope="module")
def norm_price_fn():
    """Compiled c(k, w, cp) with its gradient in k and w (elementwise)."""
    k = pt.dvector("k")
    w = pt.dvector("w")
    cp = pt.dvector("cp")
    c = black76_norm_price(k, w, cp)
    dk, dw = pytensor.grad(c.sum(), [k, w])
    return pytensor.function([k, w, cp], [c, dk, dw], mode=FAST)


def _grid():
    kk, ww = np.meshgrid(K_GRID, W_GRID, indexing="ij")
    return kk.ravel(), ww.ravel()


def test_put_call_parity_and_bounds(norm_price_fn):
    k, w = _grid()
    call = norm_price_fn(k, w, np.ones_like(k))[0]
    put = norm_price_fn(k, w, -np.ones_like(k))[0]
    assert np.all(np.abs((call - put) + np.expm1(k)) <= 4e-16 * (1.0 + np.exp(k)))
    ulps = 4e-16 * (1.0 + np.exp(k))  # a few ulps of the intrinsic value
    assert np.all(call >= np.maximum(-np.expm1(k), 0.0) - ulps)
    assert np.all(call <= 1.0)
    assert np.all(put >= np.maximum(np.expm1(k), 0.0) - ulps)
    assert np.all(put <= np.exp(k) + ulps)


def test_increasing_in_total_variance(norm_price_fn):
    k, w = _grid()
    for cp in (1.0, -1.0):
        c, _, dw = norm_price_fn(k, w, np.full_like(k, cp))
        assert np.all(dw >= 0.0)
        c = c.reshape(len(K_GRID), len(W_GRID))
        assert np.all(np.diff(c, axis=1) >= 0.0)
        # strictly for out-of-the-money options (all time value) wherever it has not underflowed
        otm = c[cp * K_GRID >= 0.0]
        resolved = otm[:, 1:] > 1e-250
        assert resolved.sum() > 0.75 * resolved.size
        assert np.all(np.diff(otm, axis=1)[resolved] > 0.0)


def test_decreasing_and_convex_in_strike(norm_price_fn):
    """Call price in units of F as a function of K = F e^k: C' <= 0 and C'' >= 0."""
    strikes = np.linspace(0.2, 3.0, 281)  # F = 1
    k = np.log(strikes)
    for w in (0.001, 0.04, 0.5):
        c, dk, _ = norm_price_fn(k, np.full_like(k, w), np.ones_like(k))
        dc_dstrike = dk / strikes  # chain rule dk/dK = 1/K
        assert np.all(dc_dstrike <= 0.0)
        assert np.all(dc_dstrike >= -1.0 - 1e-15)
        assert np.all(np.diff(c) <= 0.0)
        assert np.all(np.diff(c, 2) >= -1e-15)


def test_matches_textbook_formula_and_autodiff_delta(norm_price_fn):
    """c against cp (N(cp d1) - e^k N(cp d2)) (math.erfc) and dc/dk against -cp e^k N(cp d2)."""
    k, w = _grid()
    for cp in (1.0, -1.0):
        c, dk, _ = norm_price_fn(k, w, np.full_like(k, cp))
        s = np.sqrt(w)
        d1 = -k / s + s / 2
        d2 = d1 - s
        ncdf = np.vectorize(lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0)))
        ref = cp * (ncdf(cp * d1) - np.exp(k) * ncdf(cp * d2))
        scale = 1.0 + np.exp(k)
        assert np.all(np.abs(c - ref) <= 1e-12 * np.abs(ref) + 2e-15 * scale)
        delta_ref = -cp * np.exp(k) * ncdf(cp * d2)
        assert np.all(np.abs(dk - delta_ref) <= 1e-10 * np.abs(delta_ref) + 1e-15 * scale)


def test_verify_grad_k_and_w():
    rng = np.random.default_rng(20240101)
    k0 = np.array([-1.2, -0.3, -0.05, 0.02, 0.4, 1.5])
    w0 = np.array([0.3, 0.05, 0.01, 0.02, 0.12, 0.9])
    for cp in (1.0, -1.0):
        verify_grad(
            lambda k, w, cp=cp: black76_norm_price(k, w, cp), [k0, w0], rng=rng, abs_tol=1e-7, rel_tol=1e-6, mode=FAST
        )


def test_finite_value_and_gradient_far_strikes_tiny_variance(norm_price_fn):
    k = np.array([-5.0, 5.0, -5.0, 5.0, -5.0, 5.0, 0.0, 0.0, -5.0, 5.0])
    w = np.array([1e-8, 1e-8, 1e-8, 1e-8, 0.04, 0.04, 1e-8, 0.0, 0.0, 0.0])
    for cp in (1.0, -1.0):
        c, dk, dw = norm_price_fn(k, w, np.full_like(k, cp))
        assert np.all(np.isfinite(c)) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dw))
        intrinsic = np.maximum(-cp * np.expm1(k), 0.0)
        tiny = w <= 1e-8
        np.testing.assert_allclose(c[tiny & (k != 0)], intrinsic[tiny & (k != 0)], rtol=1e-15, atol=0)
    # ATM with tiny variance: c = 2 N(sqrt(w)/2) - 1 ~ sqrt(w / (2 pi))
    c_atm = norm_price_fn(np.array([0.0]), np.array([1e-8]), np.array([1.0]))[0][0]
    assert c_atm == pytest.approx(math.sqrt(1e-8 / (2 * math.pi)), rel=1e-7)


def test_gradient_of_quote_price_is_finite_at_extremes():
    forward, strike, tau, iv = pt.dscalars("forward", "strike", "tau", "iv")
    price = black76_price(forward, strike, tau, iv, 1.0, 0.9)
    f = pytensor.function(
        [forward, strike, tau, iv], [price, *pytensor.grad(price, [forward, strike, tau, iv])], mode=FAST
    )
    for k in (-5.0, 5.0):
        for w in (1e-8, 0.04):
            values = f(100.0, 100.0 * math.exp(k), 0.25, math.sqrt(w / 0.25))
            assert all(np.isfinite(v) for v in values)


def test_norm_cdf_tail_accuracy():
    # relative accuracy in the far lower tail (no 1 - N(-x) cancellation); the tolerance allows
    # for the conditioning of erfc (relative error ~ x**2 * eps from rounding the argument)
    x = np.array([-37.0, -20.0, -8.0, -1.0, 0.0, 1.0, 8.0])
    ref = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    np.testing.assert_allclose(norm_cdf(x).eval(mode=FAST), ref, rtol=1e-12, atol=0)


def test_rejects_invalid_constant_inputs():
    with pytest.raises(ValueError, match="cp"):
        black76_norm_price(0.0, 0.04, 0)
    with pytest.raises(ValueError, match="w"):
        black76_norm_price(0.0, -0.04, 1)
    with pytest.raises(ValueError, match="forward"):
        black76_price(0.0, 100.0, 1.0, 0.2, 1)
    with pytest.raises(ValueError, match="discount_factor"):
        black76_price(100.0, 100.0, 1.0, 0.2, 1, discount_factor=-1.0)


def test_broadcasting():
    k = np.linspace(-0.5, 0.5, 3)[:, None]
    w = np.array([0.01, 0.04, 0.09, 0.16])
    c = black76_norm_price(k, w, np.array([1, -1, 1, -1])).eval(mode=FAST)
    assert c.shape == (3, 4)
    p = black76_price(100.0, np.array([[90.0], [110.0]]), np.array([0.5, 1.0, 2.0]), 0.3, 1).eval(mode=FAST)
    assert p.shape == (2, 3)
    assert np.all(np.isfinite(p))


# --- differentiable implied vol (likelihood link of price models) -------------------------------------------


def _iv_cases(n: int, seed: int):
    """Random well-conditioned quotes: |k| <= 2, 1 day to 10 years, vols 1%-500%, normalised time value
    between 1e-11 and 1e-11 below its bound (the solve's range is 1e-12)."""
    from bayescal.market.implied_vol import black76_price as np_black76_price

    rng = np.random.default_rng(seed)
    k = rng.uniform(-2.0, 2.0, n)
    tau = np.exp(rng.uniform(np.log(1 / 365), np.log(10.0), n))
    iv = np.exp(rng.uniform(np.log(0.01), np.log(5.0), n))
    cp = rng.choice([-1.0, 1.0], n)
    c = np_black76_price(1.0, np.exp(k), tau, iv, cp)
    intrinsic = np.maximum(cp * (1 - np.exp(k)), 0.0)
    b_max = np.exp(-np.abs(k) / 2)
    beta = (c - intrinsic) / np.exp(k / 2)
    # conditioning: the price must carry the vol (time value not lost to rounding against c or the bound)
    keep = (beta > 1e-11) & ((c - intrinsic) > 1e-6 * c) & ((b_max - beta) > 1e-6 * b_max)
    return k[keep], tau[keep], iv[keep], cp[keep], c[keep]


@pytest.fixture(scope="module", params=["NUMBA", "CVM", "FAST_COMPILE"])
def implied_vol_fn(request):
    """Compiled (iv, d iv / d c) of black76_norm_implied_vol: numba backend, C backend, Python."""
    from bayescal.kernels import black76_norm_implied_vol

    c, k, tau, cp, start = (pt.dvector(n) for n in ("c", "k", "tau", "cp", "start"))
    iv = black76_norm_implied_vol(c, k, tau, cp, start)
    return pytensor.function([c, k, tau, cp, start], [iv, pytensor.grad(iv.sum(), c)], mode=request.param)


@pytest.mark.parametrize("start_factor", [1.0, 1 / 3, 0.5, 2.0, 3.0, np.nan])
def test_implied_vol_round_trip(implied_vol_fn, start_factor):
    """Inverting Black prices returns the vol to 1e-9 relative from starts off by up to a factor 3 (or none)."""
    k, tau, iv, cp, c = _iv_cases(20_000, seed=11)
    out, _ = implied_vol_fn(c, k, tau, cp, iv * start_factor)
    assert k.size > 8_000
    assert np.max(np.abs(out / iv - 1.0)) < 1e-9


def test_implied_vol_gradient_is_inverse_vega(implied_vol_fn):
    """d iv / d c = 1 / vega (implicit function theorem), and it matches central differences of the value."""
    k, tau, iv, cp, c = _iv_cases(2_000, seed=12)
    keep = iv < 2.0
    k, tau, iv, cp, c = k[keep], tau[keep], iv[keep], cp[keep], c[keep]
    value, grad = implied_vol_fn(c, k, tau, cp, iv)
    s = iv * np.sqrt(tau)
    vega = np.exp(-0.5 * (-k / s + 0.5 * s) ** 2) / np.sqrt(2 * np.pi) * np.sqrt(tau)
    np.testing.assert_allclose(grad, 1.0 / vega, rtol=1e-9)
    well = (vega > 0.05) & (c > 1e-3)
    h = 1e-6 * c[well]
    up, _ = implied_vol_fn(c[well] + h, k[well], tau[well], cp[well], iv[well])
    down, _ = implied_vol_fn(c[well] - h, k[well], tau[well], cp[well], iv[well])
    np.testing.assert_allclose((up - down) / (2 * h), grad[well], rtol=1e-5)


def test_implied_vol_beyond_bounds_is_finite_continuous_and_increasing(implied_vol_fn):
    """Prices below intrinsic / above the bound continue linearly from the bound's vol; no NaN anywhere."""
    from bayescal.kernels.black import IV_SOLVE_MAX, IV_SOLVE_MIN

    k = np.full(7, 0.01)  # |k| / 37 < iv_min sqrt(tau): the vol bound is iv_min itself
    tau = np.full(7, 0.25)
    cp = np.array([1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
    lower = float(black76_norm_price(0.01, IV_SOLVE_MIN**2 * 0.25, 1.0).eval())
    upper = float(black76_norm_price(0.01, IV_SOLVE_MAX**2 * 0.25, 1.0).eval())
    # OTM call at and below its lower bound price, below zero; ITM put below intrinsic; call above its bound
    c = np.array([lower, 0.5 * lower, -1e-3, np.expm1(0.01) - 1e-4, np.expm1(0.01) - 2e-4, upper, 1.0 + 1e-3])
    out, grad = implied_vol_fn(c, k, tau, cp, np.full(7, 0.5))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad)) and np.all(grad > 0)
    assert out[0] == pytest.approx(IV_SOLVE_MIN, rel=1e-9)
    assert out[1] < out[0] and out[2] < out[1]
    assert out[4] < out[3] < IV_SOLVE_MIN
    assert out[5] == pytest.approx(IV_SOLVE_MAX, rel=1e-9) and out[6] > out[5]
    # the continuation is the first-order map from the bound: iv_min + (c - c_B(iv_min)) / vega(iv_min)
    assert out[1] == pytest.approx(IV_SOLVE_MIN + (c[1] - lower) * grad[0], rel=1e-9)


def test_implied_vol_rejects_bad_constants():
    from bayescal.kernels import black76_norm_implied_vol

    with pytest.raises(ValueError, match="iv_min"):
        black76_norm_implied_vol(0.1, 0.0, 1.0, 1.0, 0.5, iv_min=1.0, iv_max=0.5)
    with pytest.raises(ValueError, match="tau"):
        black76_norm_implied_vol(0.1, 0.0, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="cp"):
        black76_norm_implied_vol(0.1, 0.0, 1.0, 0.0, 0.5)


def test_implied_vol_continuation_vega_sets_the_slope_beyond_the_bounds():
    """With continuation_vega, a price without a meaningful implied vol (negative, or a time value below
    1e-12) continues from the boundary vol with slope 1 / continuation_vega; inside, the vol is exact."""
    from bayescal.kernels import black76_norm_implied_vol

    c = pt.dvector("c")
    iv = black76_norm_implied_vol(c, 0.3, 0.05, 1.0, 0.6, continuation_vega=0.02)
    f = pytensor.function([c], [iv, pytensor.grad(iv.sum(), c)], mode="NUMBA")
    inside = float(black76_norm_price(0.3, 0.6**2 * 0.05, 1.0).eval())
    out, grad = f(np.array([-2e-6, -1e-6, 1e-14, inside]))
    assert out[1] - out[0] == pytest.approx(1e-6 / 0.02, rel=1e-6)
    np.testing.assert_allclose(grad[:3], 50.0)
    assert out[0] < out[1] < out[2] < out[3]
    assert out[3] == pytest.approx(0.6, rel=1e-12)
