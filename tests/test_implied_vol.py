"""Black-76 implied-vol inversion and pricing (:mod:`bayescal.market.implied_vol`).

Checks: every case of ``shared/reference/implied_vol.json`` with its published tolerance; round
trips on a (log-moneyness, total std) grid and in Jaeckel's hard regimes; status codes and
structural errors; put-call parity and put-call symmetry; an independent cross-check against
``py_lets_be_rational`` (Jaeckel's algorithm, pure Python) on random quotes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_reference, passes_reference
from scipy.special import erfinv

from bayescal.conventions import IVStatus
from bayescal.market.implied_vol import black76_price, implied_vol_black76

REFERENCE_DATA = load_reference("implied_vol.json")
CASES = REFERENCE_DATA["cases"]
EPS = np.finfo(np.float64).eps


def _condition(forward, strike, tau, iv, cp, discount_factor=1.0):
    """Relative condition number of the vol w.r.t. the premium: ``price / (iv * dprice/d iv)``.

    ``eps * condition`` is the vol error caused by one rounding of the premium itself.
    """
    forward, strike, tau, iv = (np.asarray(a, float) for a in (forward, strike, tau, iv))
    s = iv * np.sqrt(tau)
    x = np.log(forward / strike)
    h, t = x / s, 0.5 * s
    vega_s = np.exp(-0.5 * (h * h + t * t)) / math.sqrt(2.0 * math.pi)  # db/ds, b = OTM price/(D sqrt(FK))
    price = black76_price(forward, strike, tau, iv, cp, discount_factor)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # vega underflow: ill-conditioned
        return price / (discount_factor * np.sqrt(forward * strike) * s * vega_s)


def _reference_inputs(case):
    p = case["params"]
    tau = p["maturity_years"]
    if "spot" in p:  # Black-Scholes-Merton on spot: F = S exp((r - q) T), D = exp(-r T)
        forward = p["spot"] * math.exp((p["rate"] - p.get("dividend_yield", 0.0)) * tau)
        discount = math.exp(-p["rate"] * tau)
    else:
        forward = p["forward"]
        discount = p.get("discount_factor", math.exp(-p.get("rate", 0.0) * tau))
    cp = 1 if case["option_type"] == "call" else -1
    return p["price"], forward, p["strike"], tau, cp, discount


def test_reference_file_has_all_cases():
    assert len(CASES) == REFERENCE_DATA["n_cases"] >= 12
    assert {c["quantity"] for c in CASES} == {"implied_vol"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_reference_case(case):
    iv, status = implied_vol_black76(*_reference_inputs(case))
    assert int(status) == IVStatus.OK
    assert passes_reference(float(iv), case), (float(iv), case["expected_value"], case["tolerance"])


def test_reference_cases_vectorised_equal_scalar():
    """All cases in one call give bit-identical results to one call per case."""
    columns = list(zip(*[_reference_inputs(c) for c in CASES], strict=True))
    iv_all, status_all = implied_vol_black76(*[np.array(col, float) for col in columns])
    assert np.all(status_all == IVStatus.OK)
    for i, case in enumerate(CASES):
        iv_one, _ = implied_vol_black76(*_reference_inputs(case))
        assert iv_all[i] == float(iv_one)


# ------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------
def test_round_trip_grid():
    """k in [-3, 3], s = iv sqrt(tau) in [1e-4, 3], calls and puts, discounted, tau != 1."""
    k = np.linspace(-3.0, 3.0, 61)
    s = np.geomspace(1e-4, 3.0, 41)
    kk, ss, cp = np.meshgrid(k, s, np.array([1.0, -1.0]), indexing="ij")
    forward, tau, discount = 1234.5, 0.37, 0.96
    strike = forward * np.exp(kk)
    iv_true = ss / math.sqrt(tau)
    price = black76_price(forward, strike, tau, iv_true, cp, discount)
    iv, status = implied_vol_black76(price, forward, strike, tau, cp, discount)
    assert iv.shape == status.shape == kk.shape

    intrinsic = discount * np.maximum(cp * (forward - strike), 0.0)
    otm_norm = (price - intrinsic) / (discount * np.sqrt(forward * strike))
    cond = _condition(forward, strike, tau, iv_true, cp, discount)
    well = (cond <= 100.0) & (otm_norm > 1e-280)
    assert well.sum() > 1500  # the rest: underflowing wings, deep ITM, premiums near their bound
    assert np.all(status[well] == IVStatus.OK)
    rel = np.abs(iv[well] / iv_true[well] - 1.0)
    assert rel.max() < 1e-12
    # the whole grid: either a vol within its conditioning, or a reason (the rest of the grid is
    # BELOW_INTRINSIC: OTM premiums that underflow, ITM time values below one ulp of the premium)
    ok = status == IVStatus.OK
    assert set(np.unique(status)) == {IVStatus.OK, IVStatus.BELOW_INTRINSIC}
    assert np.array_equal(np.isnan(iv), ~ok)
    normal = ok & (otm_norm > 1e-290)  # subnormal premiums carry fewer than 53 bits
    rel_all = np.abs(iv[normal] / iv_true[normal] - 1.0)
    assert np.all(rel_all <= 1e-13 + 50.0 * EPS * cond[normal])


HARD = {
    # id: (forward, strike, tau, iv, cp)
    "tiny-vol-atm-call": (100.0, 100.0, 1.0, 1e-6, 1),
    "tiny-vol-atm-put": (100.0, 100.0, 1.0, 1e-6, -1),
    "tiny-vol-near-atm": (100.0, 100.00001, 1.0, 1e-6, 1),
    "tiny-vol-itm-put": (100.0, 100.00001, 1.0, 1e-6, -1),
    "tiny-vol-wing": (100.0, 100.001, 1.0, 1e-6, 1),
    "one-hour-atm": (100.0, 100.0, 1.0 / 8760.0, 0.25, 1),
    "one-hour-otm-put": (100.0, 99.0, 1.0 / 8760.0, 0.25, -1),
    "one-hour-itm-call": (100.0, 99.5, 1.0 / 8760.0, 0.25, 1),
    "vol2-16y-call": (100.0, 100.0, 16.0, 2.0, 1),
    "vol2-16y-otm-call": (100.0, 300.0, 16.0, 2.0, 1),
    "vol2-16y-itm-put": (100.0, 300.0, 16.0, 2.0, -1),
    "deep-itm-call": (100.0, 50.0, 1.0, 0.2, 1),
    "deep-itm-put": (100.0, 200.0, 0.5, 0.15, -1),
    "far-otm-call": (100.0, 1000.0, 1.0, 0.3, 1),
    "far-otm-put-tiny-price": (100.0, 1.0, 1.0, 0.4, -1),
    "huge-s": (100.0, 120.0, 30.0, 3.0, 1),
}


@pytest.mark.parametrize("inputs", HARD.values(), ids=HARD.keys())
def test_round_trip_hard_regimes(inputs):
    forward, strike, tau, iv_true, cp = inputs
    price = black76_price(forward, strike, tau, iv_true, cp)
    iv, status = implied_vol_black76(price, forward, strike, tau, cp)
    assert int(status) == IVStatus.OK
    cond = float(_condition(forward, strike, tau, iv_true, cp))
    assert abs(float(iv) / iv_true - 1.0) <= 1e-14 + 20.0 * EPS * (1.0 + cond)


PRICE_CASES = [
    c for c in load_reference("black_scholes_black76.json")["cases"]
    if c["model"] == "black76" and c["quantity"] in ("price", "price_undiscounted", "normalised_price")
]


@pytest.mark.parametrize("case", PRICE_CASES, ids=[c["id"] for c in PRICE_CASES])
def test_black76_price_reference(case):
    p = case["params"]
    tau = p["maturity_years"]
    discount = math.exp(-p.get("rate", 0.0) * tau) if case["quantity"] == "price" else 1.0
    cp = 1 if case["option_type"] == "call" else -1
    value = float(black76_price(p["forward"], p["strike"], tau, p["volatility"], cp, discount))
    if case["quantity"] == "normalised_price":  # Jaeckel's b = price / sqrt(F K)
        value /= math.sqrt(p["forward"] * p["strike"])
    expected = case["expected_value"]
    assert abs(value - expected) <= case["tolerance"]["abs"] + case["tolerance"]["rel"] * abs(expected)


def test_black76_price_limits():
    f, k, d = 100.0, 90.0, 0.95
    assert black76_price(f, k, 1.0, 0.0, 1, d) == d * 10.0
    assert black76_price(f, k, 0.0, 0.3, -1, d) == 0.0
    assert black76_price(f, k, 1.0, np.inf, 1, d) == pytest.approx(d * f, rel=1e-15)
    assert black76_price(f, k, 1.0, np.inf, -1, d) == pytest.approx(d * k, rel=1e-15)
    bad = black76_price([f, -1.0, f, f], [k, k, k, 0.0], [1.0, 1.0, -1.0, 1.0], [np.nan, 0.2, 0.2, 0.2], 1)
    assert np.all(np.isnan(bad))
    # a far-OTM premium below 1e-270 is still computed (through ln b) and inverts back
    f, k = 1e10, 1e10 * math.exp(3.6)
    p = black76_price(f, k, 1.0, 0.1, 1)
    assert 0.0 < p < 1e-270
    iv, status = implied_vol_black76(p, f, k, 1.0, 1)
    assert int(status) == IVStatus.OK
    assert abs(float(iv) / 0.1 - 1.0) < 1e-14


# ------------------------------------------------------------------------------------------
# status codes and structural errors
# ------------------------------------------------------------------------------------------
def test_status_below_intrinsic():
    f, k, d = 100.0, 80.0, 0.9
    intrinsic = d * (f - k)
    prices = [intrinsic * (1.0 - 1e-9), intrinsic, -1.0, 0.0, 0.0]
    strikes = [k, k, 120.0, 120.0, 80.0]
    cps = [1, 1, 1, 1, -1]
    iv, status = implied_vol_black76(prices, f, strikes, 1.0, cps, d)
    assert status.tolist() == [IVStatus.BELOW_INTRINSIC] * 5
    assert np.all(np.isnan(iv))


def test_status_above_upper_bound():
    f, k, d = 100.0, 80.0, 0.9
    prices = [d * f, d * f * 1.5, d * k, d * 150.0 * 1.01, d * f * (1.0 - 1e-9)]
    strikes = [k, 150.0, k, 150.0, k]
    cps = [1, 1, -1, -1, 1]
    iv, status = implied_vol_black76(prices, f, strikes, 1.0, cps, d)
    assert status[:4].tolist() == [IVStatus.ABOVE_UPPER_BOUND] * 4
    assert np.all(np.isnan(iv[:4]))
    # just below the bound is a (huge) valid vol
    assert status[4] == IVStatus.OK
    assert iv[4] > 5.0
    assert float(black76_price(f, k, 1.0, iv[4], 1, d)) == pytest.approx(prices[4], rel=1e-14)


def test_status_not_finite_and_nonpositive_tau():
    n = 11
    price = np.full(n, 5.0)
    forward = np.full(n, 100.0)
    strike = np.full(n, 100.0)
    tau = np.full(n, 1.0)
    disc = np.full(n, 1.0)
    price[0] = np.nan
    price[1] = np.inf
    forward[2] = np.nan
    forward[3] = -np.inf
    strike[4] = np.nan
    tau[5] = np.nan
    tau[6] = np.inf
    tau[7] = 0.0
    tau[8] = -0.5
    disc[9] = np.nan
    # quote 10 stays valid
    iv, status = implied_vol_black76(price, forward, strike, tau, 1, disc)
    assert status[:10].tolist() == [IVStatus.NOT_FINITE] * 10
    assert np.all(np.isnan(iv[:10]))
    assert status[10] == IVStatus.OK
    # at K = F the normalised price is erf(s/sqrt(8)): 5/100 = erf(s/sqrt(8))
    assert iv[10] == pytest.approx(2.0 * math.sqrt(2.0) * erfinv(0.05), rel=1e-14)


def test_status_nonpositive_forward_strike_discount():
    iv, status = implied_vol_black76(5.0, [0.0, -100.0, 100.0, 100.0], [100.0, 100.0, 0.0, 100.0], 1.0, 1,
                                     [1.0, 1.0, 1.0, 0.0])
    assert status.tolist() == [IVStatus.NOT_FINITE] * 4
    assert np.all(np.isnan(iv))


def test_bad_quote_does_not_touch_its_neighbours():
    f = 100.0
    strikes = np.array([80.0, 100.0, 120.0, 100.0])
    good = black76_price(f, strikes, 0.5, 0.3, 1)
    prices = good.copy()
    prices[3] = -1.0
    iv, status = implied_vol_black76(prices, f, strikes, 0.5, 1)
    assert status.tolist() == [0, 0, 0, IVStatus.BELOW_INTRINSIC]
    for i in range(3):
        iv_i, _ = implied_vol_black76(good[i], f, strikes[i], 0.5, 1)
        # equal to the quote inverted alone, up to the last bits: numpy's SIMD loops and their scalar
        # remainder can round exp/log differently (1 ulp with numpy 2.5)
        np.testing.assert_array_max_ulp(iv[i], float(iv_i), maxulp=4)
        assert iv[i] == pytest.approx(0.3, rel=1e-14)


@pytest.mark.parametrize("scale", [1e-300, 1e-8, 1.0, 1e8, 1e300])
def test_scale_invariance(scale):
    """Forward, strike and premium in any unit give the same vol (no overflow in F/K, sqrt(F K))."""
    forward, strike = 100.0 * scale, np.array([60.0, 95.0, 100.0, 130.0]) * scale
    price = black76_price(forward, strike, 0.75, 0.45, [1, -1, 1, -1], 0.98)
    iv, status = implied_vol_black76(price, forward, strike, 0.75, [1, -1, 1, -1], 0.98)
    assert np.all(status == IVStatus.OK)
    np.testing.assert_allclose(iv, 0.45, rtol=1e-13, atol=0)


def test_output_types_and_broadcasting():
    iv, status = implied_vol_black76(5.637197779701664, 100.0, 100.0, 0.5, 1)
    assert iv.shape == () and status.shape == ()
    assert iv.dtype == np.float64 and status.dtype == np.int8
    strikes = np.array([[90.0, 100.0, 110.0, 120.0]])
    vols = np.array([[0.1], [0.2], [0.5]])
    prices = black76_price(100.0, strikes, 0.25, vols, -1)
    assert prices.shape == (3, 4)
    iv, status = implied_vol_black76(prices, 100.0, strikes, 0.25, -1)
    assert iv.shape == status.shape == (3, 4)
    np.testing.assert_allclose(iv, np.broadcast_to(vols, (3, 4)), rtol=1e-13)


@pytest.mark.parametrize(
    "args",
    [
        ([1.0, 2.0, 3.0], 100.0, [100.0, 110.0], 1.0, 1),  # shapes do not broadcast
        (1.0, 100.0, 100.0, 1.0, 0),
        (1.0, 100.0, 100.0, 1.0, [1, 2]),
        (1.0, 100.0, 100.0, 1.0, np.nan),
    ],
    ids=["shapes", "cp-zero", "cp-two", "cp-nan"],
)
def test_structural_errors_raise(args):
    with pytest.raises(ValueError):
        implied_vol_black76(*args)
    price, forward, strike, tau, cp = args
    with pytest.raises(ValueError):
        black76_price(forward, strike, tau, price, cp)


# ------------------------------------------------------------------------------------------
# symmetries
# ------------------------------------------------------------------------------------------
def test_put_call_parity():
    f, d, tau, vol = 100.0, 0.97, 0.8, 0.35
    strikes = np.linspace(40.0, 250.0, 43)
    call = black76_price(f, strikes, tau, vol, 1, d)
    put = black76_price(f, strikes, tau, vol, -1, d)
    np.testing.assert_allclose(call - put, d * (f - strikes), rtol=0, atol=4 * EPS * d * f)
    iv_c, st_c = implied_vol_black76(call, f, strikes, tau, 1, d)
    iv_p, st_p = implied_vol_black76(put, f, strikes, tau, -1, d)
    assert np.all(st_c == IVStatus.OK) and np.all(st_p == IVStatus.OK)
    np.testing.assert_allclose(iv_c, vol, rtol=1e-12)
    np.testing.assert_allclose(iv_p, vol, rtol=1e-12)


def test_put_call_symmetry():
    """A put on forward F struck at K is a call on forward K struck at F (Jaeckel 2015, sec. 2)."""
    rng = np.random.default_rng(20240601)
    f = rng.uniform(50.0, 150.0, 200)
    k = f * np.exp(rng.uniform(-1.5, 1.5, 200))
    tau = rng.uniform(0.01, 3.0, 200)
    vol = rng.uniform(0.05, 1.2, 200)
    put = black76_price(f, k, tau, vol, -1)
    call_mirror = black76_price(k, f, tau, vol, 1)
    # equal up to the rounding of ln(K/F) vs ln(F/K), amplified by |ln b| in the wings
    tol = 8.0 * EPS * (1.0 + np.abs(np.log(put / np.sqrt(f * k)))) * put
    assert np.all(np.abs(put - call_mirror) <= tol)
    iv_p, st_p = implied_vol_black76(put, f, k, tau, -1)
    iv_c, st_c = implied_vol_black76(put, k, f, tau, 1)
    np.testing.assert_array_equal(st_p, st_c)
    ok = st_p == IVStatus.OK
    assert ok.sum() > 180  # the others: deep ITM puts whose time value is below one ulp of the premium
    np.testing.assert_allclose(iv_p[ok], iv_c[ok], rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------
# independent cross-check: py_lets_be_rational (Jaeckel's "Let's be rational", undiscounted)
# ------------------------------------------------------------------------------------------
def test_cross_check_py_lets_be_rational():
    lbr = pytest.importorskip("py_lets_be_rational")
    rng = np.random.default_rng(7)
    n = 600
    forward = rng.uniform(20.0, 5000.0, n)
    strike = forward * np.exp(rng.uniform(-1.2, 1.2, n))
    tau = np.exp(rng.uniform(np.log(1.0 / 365.0), np.log(5.0), n))
    vol = rng.uniform(0.03, 1.5, n)
    cp = rng.choice([-1, 1], n)
    price_lbr = np.array(
        [lbr.black(float(f), float(k), float(v), float(t), float(q)) for f, k, v, t, q in
         zip(forward, strike, vol, tau, cp, strict=True)]
    )
    cond = _condition(forward, strike, tau, vol, cp)
    well = (cond <= 100.0) & (price_lbr > 1e-12 * forward)
    assert well.sum() >= 300

    # prices agree with Jaeckel's normalised Black function
    price = black76_price(forward, strike, tau, vol, cp)
    np.testing.assert_allclose(price[well], price_lbr[well], rtol=1e-13, atol=0)

    # both inversions of the same (py_lets_be_rational) prices agree, and recover the vol
    iv, status = implied_vol_black76(price_lbr, forward, strike, tau, cp)
    lbr_iv = lbr.implied_volatility_from_a_transformed_rational_guess
    quotes = zip(price_lbr[well], forward[well], strike[well], tau[well], cp[well], strict=True)
    iv_lbr = np.array([lbr_iv(float(p), float(f), float(k), float(t), float(q)) for p, f, k, t, q in quotes])
    assert np.all(status[well] == IVStatus.OK)
    assert np.max(np.abs(iv[well] / iv_lbr - 1.0)) < 1e-12
    assert np.max(np.abs(iv[well] / vol[well] - 1.0)) < 1e-12


def test_blocks_and_threads_do_not_change_the_result(monkeypatch):
    """Large inputs are solved in blocks on several threads: the same vols to an ulp (numpy's SIMD loops round
    an element differently depending on its position in the array, nothing else differs)."""
    import bayescal.market.implied_vol as ivm

    rng = np.random.default_rng(11)
    n = 5000
    forward = rng.uniform(20.0, 5000.0, n)
    strike = forward * np.exp(rng.uniform(-1.5, 1.5, n))
    tau = np.exp(rng.uniform(np.log(1.0 / 365.0), np.log(5.0), n))
    cp = rng.choice([-1.0, 1.0], n)
    price = black76_price(forward, strike, tau, rng.uniform(0.02, 2.0, n), cp)
    price[::97], price[5::101], forward[7::89] = np.nan, -1.0, -5.0  # bad quotes in every block
    iv_one, status_one = implied_vol_black76(price, forward, strike, tau, cp)
    assert {IVStatus.NOT_FINITE, IVStatus.BELOW_INTRINSIC} <= set(status_one.tolist())
    monkeypatch.setattr(ivm, "_CHUNK", 512)
    monkeypatch.setattr(ivm, "_THREADS", 3)
    iv_blocks, status_blocks = implied_vol_black76(price, forward, strike, tau, cp)
    np.testing.assert_array_equal(status_blocks, status_one)
    np.testing.assert_allclose(iv_blocks, iv_one, rtol=4 * np.finfo(float).eps, atol=0)
    assert (status_one == IVStatus.OK).mean() > 0.8  # the rest: deep ITM time value below rounding
