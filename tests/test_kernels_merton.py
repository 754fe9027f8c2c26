"""Merton (1976) jump-diffusion kernel against shared/reference/merton_jump_diffusion.json plus properties.

All 40 reference cases (BENCHOP problem 5, Haug 1998 table as corrected in QuantLib's test-suite) run
in one vectorised call of one compiled function (spot model: ``F = S exp((r - q) T)``,
``D = exp(-r T)``), under the default mode and explicitly under ``mode="NUMBA"``; property checks use
the Python backend (merge rewrite only) so that a cold compile cache stays fast, and so that the numba
results are also compared with an independent backend.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import load_reference, passes_reference
from pytensor.compile.mode import Mode

from bayescal.kernels.black import black76_norm_price
from bayescal.kernels.merton import (
    MERTON_DEFAULT_N_TERMS,
    MERTON_MAX_POISSON_MEAN,
    merton_max_poisson_mean,
    merton_norm_price,
    merton_poisson_tail,
    merton_price,
)

CASES = load_reference("merton_jump_diffusion.json")["cases"]
CASES_BY_ID = {c["id"]: c for c in CASES}
#: Python-backend mode with only the merge rewrite: compiles in milliseconds (FAST_COMPILE's rewrites take
#: seconds on gradient graphs) and evaluates the graph as written, an independent check of the numba backend.
FAST = Mode(linker="py", optimizer="merge")
PARAMS = ("k", "tau", "volatility", "jump_intensity", "jump_log_mean", "jump_log_stdev")


def _reference_function(mode=None):
    """Compiled: case columns (spot, strike, T, r, q, vol, lambda, mu_J, delta, cp) -> present values."""
    spot, strike, tau, r, q, vol, lam, mu, delta, cp = (pt.dvector(n) for n in "s K T r q v l m d cp".split())
    forward = spot * pt.exp((r - q) * tau)
    price = merton_price(forward, strike, tau, vol, lam, mu, delta, cp, pt.exp(-r * tau))
    return pytensor.function([spot, strike, tau, r, q, vol, lam, mu, delta, cp], price, mode=mode)


def _case_columns() -> list[np.ndarray]:
    rows = []
    for case in CASES:
        p = case["params"]
        rows.append(
            [
                p["spot"],
                p["strike"],
                p["maturity_years"],
                p["rate"],
                p["dividend_yield"],
                p["volatility"],
                p["jump_intensity"],
                p["jump_log_mean"],
                p["jump_log_stdev"],
                1.0 if case["option_type"] == "call" else -1.0,
            ]
        )
    return list(np.array(rows, dtype=np.float64).T)


@pytest.fixture(scope="module")
def reference_values() -> dict[str, np.ndarray]:
    columns = _case_columns()
    return {
        "default": _reference_function()(*columns),
        "numba": _reference_function("NUMBA")(*columns),
        "python": _reference_function(FAST)(*columns),
    }


@pytest.fixture(scope="module")
def norm_fn():
    """Compiled (Python backend) c(k, tau, params, cp) and its gradient in k, tau and every parameter."""
    xs = [pt.dvector(n) for n in PARAMS]
    cp = pt.dvector("cp")
    c = merton_norm_price(*xs, cp)
    grads = pytensor.grad(c.sum(), xs)
    return pytensor.function([*xs, cp], [c, *grads], mode=FAST)


def test_reference_file_complete():
    assert len(CASES) == 40
    assert {c["model"] for c in CASES} == {"merton_jump_diffusion"}
    assert {c["quantity"] for c in CASES} == {"price"}


@pytest.mark.parametrize("case_id", list(CASES_BY_ID))
def test_reference_case(case_id: str, reference_values):
    i = list(CASES_BY_ID).index(case_id)
    case = CASES_BY_ID[case_id]
    x = float(reference_values["default"][i])
    tol = case["tolerance"]
    assert passes_reference(x, case), (
        f"{case_id}: price = {x!r}, expected {case['expected_value']!r} "
        f"(|diff| = {abs(x - case['expected_value']):.3e}, tol abs {tol['abs']} rel {tol['rel']})"
    )


def test_numba_mode_equals_default_and_python_backend(reference_values):
    np.testing.assert_array_equal(reference_values["numba"], reference_values["default"])
    np.testing.assert_allclose(reference_values["python"], reference_values["default"], rtol=1e-13, atol=0)


def test_matches_quantlib_series(reference_values):
    """QuantLib's value (the same series with ql.blackFormula terms) agrees to round-off on every case."""
    for i, case in enumerate(CASES):
        assert reference_values["default"][i] == pytest.approx(case["quantlib_value"], rel=1e-13, abs=1e-13)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


def _grid(n: int = 200, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(-1.5, 1.0, n),  # k
        rng.uniform(0.01, 3.0, n),  # tau
        rng.uniform(0.01, 0.6, n),  # volatility
        rng.uniform(0.0, 5.0, n),  # jump intensity
        rng.uniform(-0.6, 0.3, n),  # jump log mean
        rng.uniform(0.0, 0.5, n),  # jump log stdev
    ]


def test_put_call_parity_and_bounds(norm_fn):
    cols = _grid()
    k = cols[0]
    call = norm_fn(*cols, np.ones_like(k))[0]
    put = norm_fn(*cols, -np.ones_like(k))[0]
    # parity holds up to the truncated Poisson tail (< 1e-12 here: Lambda <= 15 * 1.4)
    np.testing.assert_allclose(call - put, -np.expm1(k), rtol=0, atol=1e-13)
    assert np.all(call >= np.maximum(-np.expm1(k), 0.0) - 1e-15)
    assert np.all(call <= 1.0)
    assert np.all(put >= np.maximum(np.expm1(k), 0.0) - 1e-15)
    assert np.all(put <= np.exp(k) + 1e-15)


def test_black_limit_as_intensity_vanishes(norm_fn):
    """lambda -> 0: Merton -> Black-76 with the diffusion variance; exactly Black at lambda = 0."""
    k, tau, vol, _, mu, delta = _grid(60, seed=3)
    black = black76_norm_price(k, vol * vol * tau, 1.0).eval(mode=FAST)
    exact = norm_fn(k, tau, vol, np.zeros_like(k), mu, delta, np.ones_like(k))
    np.testing.assert_array_equal(exact[0], black)
    assert all(np.all(np.isfinite(g)) for g in exact[1:])
    for lam in (1e-6, 1e-10):
        c = norm_fn(k, tau, vol, np.full_like(k, lam), mu, delta, np.ones_like(k))[0]
        # first-order effect: lambda tau (E[J] |dc/dk| + ...) = O(lambda tau)
        assert np.max(np.abs(c - black)) <= 10.0 * lam * np.max(tau)
        assert np.max(np.abs(c - black)) > 0.0


def test_intensity_gradient_at_zero_is_one_sided_derivative(norm_fn):
    """dc/dlambda at lambda = 0 (exact weights, no NaN) equals the forward difference."""
    k, tau, vol, _, mu, delta = (x[:20] for x in _grid(20, seed=11))
    one = np.ones_like(k)
    g0 = norm_fn(k, tau, vol, 0.0 * one, mu, delta, one)[1 + PARAMS.index("jump_intensity")]
    h = 1e-5
    c0 = norm_fn(k, tau, vol, 0.0 * one, mu, delta, one)[0]
    c1 = norm_fn(k, tau, vol, h * one, mu, delta, one)[0]
    c2 = norm_fn(k, tau, vol, 2 * h * one, mu, delta, one)[0]
    fd = (-3.0 * c0 + 4.0 * c1 - c2) / (2.0 * h)  # second-order one-sided difference
    np.testing.assert_allclose(g0, fd, rtol=1e-6, atol=1e-10)


def test_truncation_rule():
    """64 terms leave a Poisson tail < 1e-12 up to a mean of 22.68; the price agrees with 160 terms."""
    assert MERTON_DEFAULT_N_TERMS == 64
    assert merton_poisson_tail(64, MERTON_MAX_POISSON_MEAN) < 1e-12
    assert merton_poisson_tail(64, 23.0) > 1e-12
    assert merton_poisson_tail(np.array([32, 48]), np.array([6.5, 14.0])).max() < 1e-12
    # Lambda = lambda tau E[J] = 22.6 (at the edge of the supported range), calls and puts
    k = np.array([-0.5, 0.0, 0.4, -0.5, 0.0, 0.4])
    cp = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    args = (k, 1.0, 0.2, 22.0, 0.01, 0.1, cp)
    c64 = merton_norm_price(*args).eval(mode=FAST)
    c160 = merton_norm_price(*args, n_terms=160).eval(mode=FAST)
    np.testing.assert_allclose(c64, c160, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="n_terms"):
        merton_norm_price(0.0, 1.0, 0.2, 1.0, 0.0, 0.1, 1, n_terms=0)


def test_max_poisson_mean_inverts_the_tail():
    """The covered Poisson mean solves P(N >= n_terms) = 1e-12: 22.69 for 64 terms (the constant), 42.3 for 96;
    past it the 96-term price departs from a 200-term one by more than 1e-12, inside it not."""
    covered = {n: merton_max_poisson_mean(n) for n in (32, 48, 64, 96, 128)}
    np.testing.assert_allclose([covered[n] for n in (32, 48, 64, 96, 128)], [6.579, 14.014, 22.689, 42.286, 63.764],
                               atol=1e-3)
    assert MERTON_MAX_POISSON_MEAN <= covered[64] < MERTON_MAX_POISSON_MEAN + 0.01
    for n, mean in covered.items():
        assert merton_poisson_tail(n, mean) == pytest.approx(1e-12, rel=1e-9)
    assert merton_max_poisson_mean(96, tail=1e-8) > covered[96]
    cp = np.array([1.0, -1.0])
    for lam, worst in ((41.0, 1e-12), (60.0, 1e-6)):  # tau 1, E[J] = exp(0.01 + 0.005): Lambda 41.6 and 60.9
        c96 = merton_norm_price(0.0, 1.0, 0.2, lam, 0.01, 0.1, cp, n_terms=96).eval(mode=FAST)
        c200 = merton_norm_price(0.0, 1.0, 0.2, lam, 0.01, 0.1, cp, n_terms=200).eval(mode=FAST)
        assert (np.abs(c96 - c200).max() < worst) == (lam < 42.0)
    for bad in ({"n_terms": 0}, {"n_terms": 2.5}, {"n_terms": 64, "tail": 0.0}, {"n_terms": 64, "tail": 1.0}):
        with pytest.raises(ValueError, match="merton_max_poisson_mean"):
            merton_max_poisson_mean(**bad)


# ---------------------------------------------------------------------------------------------
# Gradient checks: autodiff against 5-point central differences
# ---------------------------------------------------------------------------------------------


def _gradient_points() -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """24 points: 14 random + 10 hard regimes; returns (columns, cp, finite-difference steps)."""
    rng = np.random.default_rng(2024)
    rows = [
        [rng.uniform(-0.8, 0.6), rng.uniform(0.05, 2.0), rng.uniform(0.05, 0.5), rng.uniform(0.1, 4.0),
         rng.uniform(-0.4, 0.2), rng.uniform(0.02, 0.4), (-1.0) ** i]
        for i in range(14)
    ]
    rows += [
        [0.0, 1.0, 0.2, 22.0, -0.02, 0.05, 1.0],  # Lambda at the edge of the truncation rule
        [0.3, 0.02, 0.01, 2.0, -0.3, 0.3, -1.0],  # tiny diffusion, short expiry: jump-dominated
        [-1.2, 0.25, 0.15, 1.0, -0.8, 0.6, -1.0],  # deep OTM put, large negative jumps
        [1.0, 0.1, 0.2, 0.5, 0.2, 0.1, 1.0],  # deep OTM call, short expiry
        [0.0, 5.0, 0.6, 3.0, -0.1, 0.5, -1.0],  # long expiry, high vol
        [0.05, 0.5, 0.25, 1e-6, -0.1, 0.2, 1.0],  # near-zero intensity
        [-0.1, 1.0, 0.3, 10.0, 0.0, 0.01, -1.0],  # tiny jump dispersion
        [0.2, 0.5, 0.02, 8.0, 0.05, 0.02, 1.0],  # many small positive jumps, low vol
        [-0.4, 2.0, 0.1, 0.2, -1.0, 0.8, -1.0],  # rare crash jumps
        [0.0, 0.01, 0.3, 5.0, -0.1, 0.1, 1.0],  # one trading day
    ]
    *cols, cp = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
    k, tau, vol, lam, mu, delta = cols
    sd = np.sqrt(vol * vol * tau + lam * tau * (mu * mu + delta * delta))  # scale of the log-price
    steps = [1e-3 * sd, 1e-3 * tau, 1e-3 * vol, 1e-3 * np.maximum(lam, 1e-3), np.full_like(mu, 1e-4),
             1e-3 * np.maximum(delta, 0.01)]
    return cols, cp, steps


def check_gradients(fn, cols, extra, steps, names, rtol=1e-6, noise_factor=10.0):
    """Autodiff gradients of ``fn`` against 5-point central differences; returns the worst relative error.

    ``fn(*cols, *extra) -> [values, d/dcol_0, d/dcol_1, ...]`` elementwise over independent points.
    Criterion per component: ``|ad - fd| <= rtol |ad| + noise`` with ``noise = noise_factor eps |value| / h``
    (the round-off of the difference quotient). The returned worst relative error ``|ad - fd| / |ad|`` is
    taken over the components the differences resolve (``rtol |ad| > noise``), at least 90% of them.
    """
    values, *ad = fn(*cols, *extra)
    eps = np.finfo(np.float64).eps
    worst, resolved, total = 0.0, 0, 0
    for j, h in enumerate(steps):
        def f(shift, j=j, h=h):
            return fn(*[c + shift * h if i == j else c for i, c in enumerate(cols)], *extra)[0]

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


def test_gradient_matches_central_differences(norm_fn):
    cols, cp, steps = _gradient_points()
    assert len(cp) >= 20
    assert check_gradients(norm_fn, cols, [cp], steps, PARAMS) <= 1e-6


def test_quote_currency_greeks_by_autodiff():
    forward, strike, tau, vol, disc = pt.dscalars("F", "K", "T", "v", "D")
    price = merton_price(forward, strike, tau, vol, 1.0, -0.1, 0.2, 1.0, disc)
    delta, vega = pytensor.grad(price, [forward, vol])
    f = pytensor.function([forward, strike, tau, vol, disc], [price, delta, vega], mode=FAST)
    p, d, v = f(100.0, 95.0, 0.5, 0.2, 0.98)
    c = merton_norm_price(np.log(95.0 / 100.0), 0.5, 0.2, 1.0, -0.1, 0.2, 1.0).eval(mode=FAST)
    assert p == pytest.approx(0.98 * 100.0 * c, rel=1e-14)
    h = 1e-4
    assert d == pytest.approx((f(100.0 + h, 95.0, 0.5, 0.2, 0.98)[0] - f(100.0 - h, 95.0, 0.5, 0.2, 0.98)[0]) / (2 * h),
                              rel=1e-7)
    assert 0.0 < d < 0.98 and v > 0.0


def test_broadcasting_and_validation():
    c = merton_norm_price(np.linspace(-0.2, 0.2, 3)[:, None], np.array([0.5, 1.0]), 0.2, 1.0, -0.1, 0.1, 1)
    assert c.eval(mode=FAST).shape == (3, 2)
    with pytest.raises(ValueError, match="jump_intensity"):
        merton_norm_price(0.0, 1.0, 0.2, -1.0, 0.0, 0.1, 1)
    with pytest.raises(ValueError, match="cp"):
        merton_norm_price(0.0, 1.0, 0.2, 1.0, 0.0, 0.1, 0)
    with pytest.raises(ValueError, match="strike"):
        merton_price(100.0, 0.0, 1.0, 0.2, 1.0, 0.0, 0.1, 1)
    with pytest.raises(ValueError):
        merton_poisson_tail(0, 1.0)
