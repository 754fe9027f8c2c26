"""Benchmark: Black-76 implied-vol inversion throughput and accuracy against py_lets_be_rational.

Run from the repository root::

    python benchmarks/bench_implied_vol.py [--sizes 100000,1000000] [--reps 3] [--peer-quotes 20000] [--json PATH]

Random quotes (forward 20-5,000, ``ln(K/F)`` uniform in [-1.2, 1.2], tau log-uniform from one day to
5 years, vol uniform in [0.03, 1.5], calls and puts) are priced with ``black76_price`` and inverted
with ``bayescal.market.implied_vol_black76`` (all quotes at once, numpy). Printed per size: the
median wall time over ``--reps`` inversions, quotes per second, and the largest relative vol error
on well-conditioned quotes (vega-relative price condition number <= 100 and premium above
1e-12 of the forward, the domain on which 1e-12 is attainable in double precision; the share of
such quotes is printed). The peer, ``py_lets_be_rational`` (P. Jaeckel's "Let's be rational",
pure-Python port, one quote per call), inverts ``--peer-quotes`` of them; its throughput and the
ratio of ours to it are printed. Targets (issue 8): >= 1e6 quotes/s, max error <= 1e-12.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from _results import BenchResults  # benchmarks/ is on sys.path when run as a script

from bayescal.market.implied_vol import black76_price, implied_vol_black76


def random_quotes(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    forward = rng.uniform(20.0, 5000.0, n)
    strike = forward * np.exp(rng.uniform(-1.2, 1.2, n))
    tau = np.exp(rng.uniform(np.log(1.0 / 365.0), np.log(5.0), n))
    vol = rng.uniform(0.03, 1.5, n)
    cp = rng.choice([-1.0, 1.0], n)
    price = black76_price(forward, strike, tau, vol, cp)
    return {"forward": forward, "strike": strike, "tau": tau, "vol": vol, "cp": cp, "price": price}


def well_conditioned(q: dict[str, np.ndarray]) -> np.ndarray:
    """Condition number of the inversion (|d price / d vol| * vol / price) <= 100, price > 1e-12 F."""
    f, k, t, v = q["forward"], q["strike"], q["tau"], q["vol"]
    s = v * np.sqrt(t)
    d1 = np.log(f / k) / s + 0.5 * s
    vega = f * np.exp(-0.5 * d1 * d1) / np.sqrt(2 * np.pi) * np.sqrt(t)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # vega underflows far from the money
        cond = q["price"] / (vega * v)
    return (cond <= 100.0) & (q["price"] > 1e-12 * f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peer-quotes", type=int, default=20000)
    parser.add_argument("--json", type=Path, help="also write the table and figures as JSON (for run_all.py)")
    args = parser.parse_args()
    results = BenchResults("bench_implied_vol.py")
    table = results.table("Black-76 implied-vol inversion (random quotes, calls and puts)",
                          ["quotes", "median s", "quotes / s", "max relative vol error (well-conditioned)",
                           "well-conditioned share"])
    results.figures["sizes"] = []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    header = f"{'quotes':>9} {'median s':>9} {'quotes/s':>11} {'max rel vol err (well)':>23} {'well share':>10}"
    print(header)
    print("-" * len(header))
    ours_rate = None
    for n in (int(x) for x in args.sizes.split(",")):
        q = random_quotes(n)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            iv, _status = implied_vol_black76(q["price"], q["forward"], q["strike"], q["tau"], q["cp"])
            times.append(time.perf_counter() - t0)
        well = well_conditioned(q)
        err = np.max(np.abs(iv[well] / q["vol"][well] - 1.0))
        ours_rate = n / float(np.median(times))
        print(f"{n:>9} {np.median(times):>9.3f} {ours_rate:>11.3g} {err:>23.2e} {well.mean():>10.3f}")
        table["rows"].append([f"{n:,}", f"{np.median(times):.3f}", f"{ours_rate:.3g}", f"{err:.2e}",
                              f"{well.mean():.3f}"])
        results.figures["sizes"].append({"quotes": n, "quotes_per_second": ours_rate, "max_rel_error": float(err)})
    try:
        import py_lets_be_rational as lbr
    except ImportError:
        print("py_lets_be_rational not installed: peer skipped (pip install -e '.[test]')")
        results.write(args.json)
        return
    q = random_quotes(args.peer_quotes, seed=2)
    inv = lbr.implied_volatility_from_a_transformed_rational_guess
    t0 = time.perf_counter()
    iv_lbr = np.array([inv(float(p), float(f), float(k), float(t), float(c)) for p, f, k, t, c in
                       zip(q["price"], q["forward"], q["strike"], q["tau"], q["cp"], strict=True)])
    peer = time.perf_counter() - t0
    well = well_conditioned(q)
    err = np.max(np.abs(iv_lbr[well] / q["vol"][well] - 1.0))
    peer_rate = args.peer_quotes / peer
    print(f"py_lets_be_rational: {args.peer_quotes} quotes in {peer:.2f} s = {peer_rate:.3g} quotes/s, "
          f"max rel vol err (well) {err:.2e}; bayescal / peer throughput ratio {ours_rate / peer_rate:.1f}")
    table["rows"].append([f"py_lets_be_rational, {args.peer_quotes:,}", f"{peer:.2f}", f"{peer_rate:.3g}", f"{err:.2e}",
                          f"{well.mean():.3f}"])
    table["notes"] = [f"bayescal / py_lets_be_rational throughput: {ours_rate / peer_rate:.1f}x (the peer is pure "
                      "Python, one quote per call); well-conditioned: vega-relative condition <= 100 and premium "
                      "above 1e-12 of the forward."]
    results.figures["peer_quotes_per_second"] = peer_rate
    results.write(args.json)


if __name__ == "__main__":
    main()
