"""Benchmark: Heston log-density + gradient (numba) against QuantLib's AnalyticHestonEngine.

Run from the repository root::

    python benchmarks/bench_heston.py [--reps N] [--nodes 64] [--json PATH]

Two kernels are timed: the per-quote contour kernel (``heston_price``, used for grids and greeks)
and the whole-surface calibration kernel (``heston_surface_norm_price``, used by the likelihood).
For synthetic surfaces of 200 and 1,000 European options (10 expiries from one week to two years,
strikes spread over +-2 standard deviations of log-moneyness, calls above the forward and puts
below), and for the surface kernel also 5,000 options and 5 and 20 expiries (scaling), it prints

* the cost of one evaluation of a Gaussian price-space log-likelihood of the surface *and* its
  gradient in the five Heston parameters, compiled with numba through ``pytensor.function``
  (median over ``--reps`` calls), also in nanoseconds per option per quadrature node; called as a
  sampler calls it (``trust_input``: no per-call input validation), and also through the default
  validated call, which adds about 20 us of Python per call;
* the time QuantLib 1.44's ``AnalyticHestonEngine`` takes to price the same options once, with
  its default Gauss-Laguerre integration and with the adaptive Gauss-Lobatto integration at
  relative tolerance 1e-12 (the engine used for the reference values in ``shared/reference``),
  and the ratio of our log-density + gradient time to the former;
* the largest absolute price difference between the bayescal kernel and the adaptive QuantLib
  engine, in units of the forward (target <= 1e-8);
* for the surface kernel, the time of the same log-likelihood and gradient hand-written in numba
  (``handwritten_heston_surface.py``, checked to agree to 1e-8) and bayescal's ratio to it.

QuantLib is a benchmark dependency only (``pip install bayescal[bench]``); it is never imported by
the ``bayescal`` package.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import QuantLib as ql
from _results import BenchResults  # benchmarks/ is on sys.path when run as a script
from handwritten_heston_surface import HandwrittenHestonSurface  # benchmarks/ is on sys.path when run as a script

from bayescal.kernels.heston import DEFAULT_NODES, heston_expected_variance, heston_price
from bayescal.kernels.surface import DEFAULT_SURFACE_NODES, heston_surface_norm_price

SPOT, RATE, DIV = 100.0, 0.03, 0.01
PARAMS = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "xi": 0.6, "rho": -0.7}
EXPIRY_DAYS = np.array([7, 14, 30, 61, 91, 182, 273, 365, 548, 730])
NOISE = 1e-3  # price noise of the Gaussian likelihood, in units of the forward
#: (kernel, options, expiries): the 200- and 1,000-option surfaces of both kernels, then the surface
#: kernel's scaling in options (to 5,000) and in expiries at 200 options
CASES = [("per-quote", 200, 10), ("per-quote", 1000, 10), ("surface", 200, 10), ("surface", 1000, 10),
         ("surface", 5000, 10), ("surface", 200, 5), ("surface", 200, 20)]


def surface(n_options: int, expiry_days: np.ndarray = EXPIRY_DAYS):
    """Quotes (forward, strike, tau, cp, discount, expiry days) of a synthetic surface."""
    per_expiry = n_options // expiry_days.size
    rows = []
    for days in expiry_days:
        tau = days / 365.0
        forward = SPOT * np.exp((RATE - DIV) * tau)
        sd = np.sqrt(PARAMS["theta"] * tau)
        for z in np.linspace(-2.0, 2.0, per_expiry):
            strike = forward * np.exp(z * sd)
            rows.append((forward, strike, tau, 1.0 if z >= 0 else -1.0, np.exp(-RATE * tau), days))
    return np.array(rows)


def compile_logp(quotes: np.ndarray, n_nodes: int, kernel: str):
    """numba-compiled ``(v0, kappa, theta, xi, rho) -> [logp, dlogp/dparams...]`` and a pricer.

    ``kernel``: ``"per-quote"`` (:func:`heston_price`, contour per option) or ``"surface"`` (the
    calibration kernel, one characteristic-function grid per expiry, nodes placed from the expected
    variance at :data:`PARAMS`, standing in for the market ATM variance).
    """
    names = list(PARAMS)
    theta = [pt.dscalar(n) for n in names]
    if kernel == "surface":
        fwd, strike, tau, cp, disc = (quotes[:, j].copy() for j in range(5))
        taus, idx = np.unique(tau, return_inverse=True)
        p = PARAMS
        var = heston_expected_variance(taus, p["v0"], p["kappa"], p["theta"])
        norm = heston_surface_norm_price(np.log(strike / fwd), cp, idx, taus, *theta, var_scale=var, n_nodes=n_nodes)
        model = pt.constant(disc * fwd) * norm
    else:
        fwd, strike, tau, cp, disc = (pt.constant(quotes[:, j].copy()) for j in range(5))
        model = heston_price(fwd, strike, tau, cp, disc, *theta, n_nodes=n_nodes)
    pricer = pytensor.function(theta, model, mode="NUMBA")
    observed = pricer(*PARAMS.values())
    sigma = NOISE * quotes[:, 0]
    logp = -0.5 * pt.sum(pt.sqr((model - observed) / sigma))
    grads = pytensor.grad(logp, theta)
    return pytensor.function(theta, [logp, *grads], mode="NUMBA"), pricer


def handwritten_logp(quotes: np.ndarray, n_nodes: int, observed: np.ndarray) -> HandwrittenHestonSurface:
    """The hand-written numba peer of the surface likelihood, on the same quotes, nodes and observations."""
    fwd, strike, tau, cp, disc = (quotes[:, j].copy() for j in range(5))
    taus, idx = np.unique(tau, return_inverse=True)
    var = heston_expected_variance(taus, PARAMS["v0"], PARAMS["kappa"], PARAMS["theta"])
    return HandwrittenHestonSurface(np.log(strike / fwd), cp, idx, taus, var, disc * fwd, observed,
                                    NOISE * fwd, n_nodes)


def median_seconds(fn, args, reps: int) -> float:
    """Median wall time of ``fn(*args)`` over ``reps`` calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def quantlib_options(quotes: np.ndarray):
    """QuantLib options sharing one spot quote, with a default and an adaptive engine."""
    today = ql.Date(15, 1, 2025)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    spot = ql.SimpleQuote(SPOT)
    rates = ql.YieldTermStructureHandle(ql.FlatForward(today, RATE, dc))
    divs = ql.YieldTermStructureHandle(ql.FlatForward(today, DIV, dc))
    process = ql.HestonProcess(rates, divs, ql.QuoteHandle(spot), *(PARAMS[n] for n in ("v0", "kappa", "theta")),
                               PARAMS["xi"], PARAMS["rho"])
    model = ql.HestonModel(process)
    engines = {
        "default": ql.AnalyticHestonEngine(model),
        "adaptive": ql.AnalyticHestonEngine(model, 1e-12, 1000000),
    }
    options = []
    for _, strike, _, cp, _, days in quotes:
        payoff = ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, float(strike))
        options.append(ql.VanillaOption(payoff, ql.EuropeanExercise(today + int(days))))
    return spot, options, engines


def time_quantlib(spot, options, engine, reps: int) -> tuple[float, np.ndarray]:
    """Median seconds to price all options once (the spot quote is nudged to force recalculation)."""
    for opt in options:
        opt.setPricingEngine(engine)
    times = []
    for i in range(reps):
        spot.setValue(SPOT * (1.0 + 1e-12 * (i % 2)))
        t0 = time.perf_counter()
        prices = np.array([opt.NPV() for opt in options])
        times.append(time.perf_counter() - t0)
    spot.setValue(SPOT)
    prices = np.array([opt.NPV() for opt in options])
    return float(np.median(times)), prices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions (median reported)")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="quadrature nodes per option (per-quote)")
    parser.add_argument("--surface-nodes", type=int, default=DEFAULT_SURFACE_NODES,
                        help="quadrature nodes per expiry (surface kernel)")
    parser.add_argument("--json", type=Path, help="also write the table and figures as JSON (for run_all.py)")
    args = parser.parse_args()
    results = BenchResults("bench_heston.py")
    table = results.table(
        f"Heston log-density + gradient (numba) vs QuantLib AnalyticHestonEngine; {PARAMS}, expiries 7d..2y, "
        "strikes +-2 sd",
        ["kernel", "options", "expiries", "nodes", "compile s", "logp+grad ms", "validated call ms",
         "ns / option / node", "hand-written ms", "bayescal / hand", "QL default ms", "ratio to QL", "QL adaptive ms",
         "max error / F"])
    results.figures["cases"] = []

    header = (
        f"{'kernel':>9} {'options':>7} {'expiries':>8} {'nodes':>5} {'compile s':>9} {'logp+grad ms':>12} "
        f"{'checked':>7} "
        f"{'ns/opt/node':>11} {'hand ms':>8} {'/hand':>6} {'QL default ms':>13} {'ratio':>6} {'QL adaptive ms':>14} "
        f"{'max|err|/F':>10}"
    )
    print(f"Heston {PARAMS}, S={SPOT}, r={RATE}, q={DIV}; expiries 7d..2y, strikes +-2 sd")
    print(header)
    print("-" * len(header))
    for kernel, n_options, n_expiries in CASES:
        nodes = args.nodes if kernel == "per-quote" else args.surface_nodes
        days = EXPIRY_DAYS if n_expiries == EXPIRY_DAYS.size else np.round(np.geomspace(7, 730, n_expiries))
        quotes = surface(n_options, days)
        t0 = time.perf_counter()
        fn, pricer = compile_logp(quotes, nodes, kernel)
        fn(*PARAMS.values())  # first call: numba compilation
        compile_s = time.perf_counter() - t0
        point = np.array(list(PARAMS.values())) * 1.01
        t_checked = median_seconds(fn, point, args.reps)
        # as a sampler calls it: without pytensor.function's per-call input validation (nutpie calls the
        # compiled code directly, without even this Python layer)
        fn.trust_input = True
        t_ours = median_seconds(fn, [np.asarray(x) for x in point], args.reps)
        fn.trust_input = False
        ours = pricer(*PARAMS.values())
        hand_ms = ratio_hand = ""
        if kernel == "surface":
            hand = handwritten_logp(quotes, nodes, ours)
            value, grad = hand(point)
            reference = fn(*point)
            agree = np.max(np.abs(np.array([value, *grad]) - np.array(reference, dtype=float))
                           / np.maximum(np.abs(np.array(reference, dtype=float)), 1.0))
            if agree > 1e-8:
                raise RuntimeError(f"hand-written kernel disagrees with bayescal's by {agree:.1e} (relative)")
            t_hand = median_seconds(hand, (point,), args.reps)
            hand_ms, ratio_hand = f"{1e3 * t_hand:.3f}", f"{t_ours / t_hand:.2f}"

        spot, options, engines = quantlib_options(quotes)
        reps_ql = max(3, args.reps // 5)
        t_default, _ = time_quantlib(spot, options, engines["default"], reps_ql)
        t_adaptive, ql_prices = time_quantlib(spot, options, engines["adaptive"], reps_ql)
        err = np.max(np.abs(ours - ql_prices) / quotes[:, 0])
        ns = 1e9 * t_ours / (quotes.shape[0] * nodes)
        cells = [kernel, f"{quotes.shape[0]}", f"{len(days)}", f"{nodes}", f"{compile_s:.1f}",
                 f"{1e3 * t_ours:.3f}", f"{1e3 * t_checked:.3f}", f"{ns:.1f}", hand_ms, ratio_hand,
                 f"{1e3 * t_default:.2f}", f"{t_ours / t_default:.2f}", f"{1e3 * t_adaptive:.2f}", f"{err:.1e}"]
        table["rows"].append(cells)
        results.figures["cases"].append({
            "kernel": kernel, "options": int(quotes.shape[0]), "expiries": len(days), "nodes": nodes,
            "seconds": t_ours, "validated_call_seconds": t_checked, "ns_per_option_node": ns,
            "hand_seconds": t_hand if kernel == "surface" else None,
            "ql_default_seconds": t_default, "max_error_over_forward": float(err)})
        widths = [9, 7, 8, 5, 9, 12, 7, 11, 8, 6, 13, 6, 14, 10]
        print(" ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    table["notes"] = [
        "logp+grad: one call of the compiled function as a sampler makes it (pytensor.function with trust_input, "
        "median); validated call: the same through pytensor.function's default per-call input checks (about 20 us "
        "of Python); ratio to QL: bayescal log-density + 5-parameter gradient / QuantLib's default engine pricing "
        "the options once; hand-written: the same likelihood and gradient written by hand in numba "
        "(benchmarks/handwritten_heston_surface.py, checked to agree to 1e-8); max error against QuantLib's "
        "adaptive engine (relative tolerance 1e-12)."]
    print(table["notes"][0])
    results.write(args.json)


if __name__ == "__main__":
    main()
