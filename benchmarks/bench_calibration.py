"""Benchmark: Heston calibration of a real chain, bayescal (NUTS, MAP, Pathfinder, ADVI) vs a Levenberg-Marquardt fit.

Run from the repository root (benchmark extra installed: ``pip install -e ".[bench]"``)::

    python benchmarks/bench_calibration.py [CHAIN] [--underlying BTC] [--spec heston] [--starts 4] [--repeats 3]
        [--methods nuts,map,map_lsq,pathfinder,advi] [--draws N] [--synthetic N] [--json PATH]

Default chain: the 2025-12-30 Deribit BTC snapshot in ``../shared/data``. The quotes are the ones
the spec's filters keep (out-of-the-money, tau >= 2 days, ...), identical for every method.

The peer is the usual deterministic fit: MINPACK's Levenberg-Marquardt (``scipy.optimize.least_squares``,
``method="lm"``) on implied-vol residuals ``iv_model - iv_mid``, with prices from QuantLib's
``AnalyticHestonEngine`` (default Gauss-Laguerre integration) and parameters mapped to
``(log v0, log kappa, log theta, log xi, atanh rho)``; best of ``--starts`` starting points. QuantLib's
own ``HestonModel.calibrate`` is not used because its helpers only know whole-day maturities (no
intraday support in the Python wheels), and the shortest Deribit expiries are 2-3 days with a
fractional day. Instead each expiry is priced *exactly* with QuantLib through Heston's time scaling:
over a clock ``s = c t`` the model is again Heston with ``(v0, kappa, theta, xi)/c`` and the same
``rho``, so ``c = ceil(365 tau)/(365 tau)`` puts every expiry on a whole day.

Printed per method (median of ``--repeats`` runs, default 3; the first run's wall time is shown too, as
it fills the compilation caches): wall time, bayescal's split into compilation + fit and post-fit
checks (posterior predictive, log-likelihood, fit quality, arbitrage, kernel check), NUTS's sampling
time alone (tuning and draws; ``--draws`` overrides the spec's draws per chain), the implied-vol RMSE
in vol points of the point estimate (LM optimum; posterior median of each parameter for bayescal)
priced with the same QuantLib function, the RMSE of the posterior-mean exact IV, the RMSE of the
likelihood's own model IV, convergence, and the ratio of each time to the LM time. After the NUTS
fit, the cost of one log-density + gradient evaluation at the posterior mean is printed for both
links of model prices to IVs (``price_to_iv = "exact"`` and ``"vega_map"``). ``--json PATH`` also
writes the table and the figures for ``run_all.py``.
The LM fit minimises exactly the unweighted IV RMSE; bayescal's likelihood weighs quotes by their
bid-ask spread and a per-expiry noise floor, so it trades RMSE on wide-spread quotes for the rest.
``--synthetic N`` replaces the real chain by a simulated Heston surface of ``N`` quotes (10 expiries
from 7 days to 2 years, ``N/10`` strikes each; :func:`bayescal.studies.simulated_chain`) from the known
parameters ``SYNTHETIC_TRUTH``, with IV noise like real spreads; the truth is printed with the estimates.
The method ``map_lsq`` (in the default list) is MAP on the LM's own objective: the spec's likelihood
with ``spread_weight = 0`` and ``noise_floor = "shared"``, every quote weighed alike, under the priors.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import QuantLib as ql
from _results import BenchResults  # benchmarks/ is on sys.path when run as a script
from scipy.optimize import least_squares

from bayescal.inference import fit
from bayescal.market import filter_quotes, read_chain, used_quotes
from bayescal.market.implied_vol import implied_vol_black76
from bayescal.spec import load_spec
from bayescal.studies import simulated_chain

DEFAULT_CHAIN = Path(__file__).resolve().parents[1].parent / "shared/data/deribit_options_snapshot_20251230T173115Z.csv"
NAMES = ("v0", "kappa", "theta", "xi", "rho")
FAILED_IV_RESIDUAL = 1.0  # residual (100 vol points) where QuantLib's price has no implied vol
EXACT_IV_DRAWS = 100  # posterior draws priced by QuantLib for the exact posterior-mean IV
#: known Heston parameters of the ``--synthetic`` surfaces (inside the crypto prior's bulk)
SYNTHETIC_TRUTH = {"v0": 0.30, "kappa": 2.0, "theta": 0.35, "xi": 1.5, "rho": -0.3}
SYNTHETIC_EXPIRY_DAYS = np.array([7, 14, 30, 61, 91, 182, 273, 365, 548, 730])


class QuantLibHeston:
    """Normalised Heston prices of fixed quotes with QuantLib's analytic engine (exact fractional tau)."""

    def __init__(self, k: np.ndarray, tau: np.ndarray, cp: np.ndarray) -> None:
        self.k, self.tau, self.cp = k, tau, cp
        self.today = ql.Date(30, 12, 2025)
        ql.Settings.instance().evaluationDate = self.today
        dc = ql.Actual365Fixed()
        self.curve = ql.YieldTermStructureHandle(ql.FlatForward(self.today, 0.0, dc))
        self.spot = ql.QuoteHandle(ql.SimpleQuote(1.0))
        self.groups = []
        for t in np.unique(tau):
            rows = np.flatnonzero(tau == t)
            days = max(1, math.ceil(365.0 * t - 1e-9))
            options = []
            for i in rows:
                kind = ql.Option.Call if cp[i] > 0 else ql.Option.Put
                payoff = ql.PlainVanillaPayoff(kind, float(np.exp(k[i])))
                options.append(ql.VanillaOption(payoff, ql.EuropeanExercise(self.today + days)))
            self.groups.append((rows, days / (365.0 * t), options))

    def prices(self, v0: float, kappa: float, theta: float, xi: float, rho: float) -> np.ndarray:
        out = np.empty(self.k.size)
        for rows, c, options in self.groups:
            process = ql.HestonProcess(self.curve, self.curve, self.spot, v0 / c, kappa / c, theta / c, xi / c, rho)
            engine = ql.AnalyticHestonEngine(ql.HestonModel(process))
            for i, opt in zip(rows, options, strict=True):
                opt.setPricingEngine(engine)
                out[i] = opt.NPV()
        return out

    def iv(self, params) -> np.ndarray:
        iv, status = implied_vol_black76(self.prices(*params), 1.0, np.exp(self.k), self.tau, self.cp)
        return np.where(status == 0, iv, np.nan)


def to_params(x: np.ndarray) -> tuple[float, ...]:
    return (*np.exp(x[:4]), float(np.tanh(x[4])))


def lm_fit(pricer: QuantLibHeston, mid: np.ndarray, starts: int, seed: int = 0):
    """Best-of-``starts`` MINPACK LM fit; returns (params, rmse in vol points, seconds, evaluations)."""
    rng = np.random.default_rng(seed)
    atm_var = float(np.median(mid) ** 2)

    def residuals(x):
        iv = pricer.iv(to_params(x))
        return np.where(np.isfinite(iv), iv - mid, FAILED_IV_RESIDUAL)

    best, n_eval = None, 0
    t0 = time.perf_counter()
    for s in range(starts):
        jitter = rng.normal(0.0, 0.5, 5) if s else np.zeros(5)
        x0 = np.array([np.log(atm_var), np.log(2.0), np.log(atm_var), np.log(1.0), 0.0]) + jitter
        res = least_squares(residuals, x0, method="lm", xtol=1e-10, ftol=1e-10, max_nfev=2000)
        n_eval += res.nfev
        if best is None or res.cost < best.cost:
            best = res
    seconds = time.perf_counter() - t0
    rmse = 100 * float(np.sqrt(np.mean(residuals(best.x) ** 2)))
    return to_params(best.x), rmse, seconds, n_eval


def gradient_seconds(spec, used, posterior, link: str, repeats: int = 5, n: int = 1000) -> float:
    """Seconds per log-density + gradient evaluation (numba, as nutpie) at the posterior mean; min of repeats."""
    import dataclasses

    from bayescal.inference import build_model

    spec = dataclasses.replace(spec, likelihood=dataclasses.replace(spec.likelihood, price_to_iv=link))
    model = build_model(spec, used)
    values = []
    for rv in model.free_RVs:  # the same order as model.value_vars
        mean = posterior[rv.name].mean(("chain", "draw")).to_numpy()
        transform = model.rvs_to_transforms[rv]
        values.append(np.ravel(transform.forward(mean, *rv.owner.inputs).eval() if transform else mean))
    f = model.logp_dlogp_function(ravel_inputs=True, mode="NUMBA")
    f.set_extra_values({})
    x = np.concatenate(values)
    f(x)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            f(x)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chain", nargs="?", type=Path, default=DEFAULT_CHAIN)
    parser.add_argument("--underlying", default="BTC")
    parser.add_argument("--spec", default="heston")
    parser.add_argument("--starts", type=int, default=4, help="LM starting points (best kept)")
    parser.add_argument("--methods", default="nuts,map,map_lsq,pathfinder,advi",
                        help="fit methods; map_lsq: MAP with every quote weighed alike (the LM objective)")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="fit a simulated Heston surface of N quotes from known parameters instead of CHAIN")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (median reported; the first "
                        "run fills the compilation caches)")
    parser.add_argument("--draws", type=int, help="NUTS draws per chain (default: the spec's)")
    parser.add_argument("--json", type=Path, help="also write the table and figures as JSON (for run_all.py)")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    if args.draws:
        spec = spec.with_fit(draws=args.draws)
    if args.synthetic:
        truth = {n: np.asarray(v) for n, v in SYNTHETIC_TRUTH.items()}
        quotes = simulated_chain("heston", truth, np.random.default_rng(0), SYNTHETIC_EXPIRY_DAYS / 365.0,
                                 n_strikes=args.synthetic // SYNTHETIC_EXPIRY_DAYS.size)
        source = f"simulated Heston surface, truth {SYNTHETIC_TRUTH}"
    else:
        quotes = read_chain(args.chain, underlying=args.underlying)
        source = args.chain.name
    used = used_quotes(filter_quotes(quotes, spec.filters))
    k, tau, cp, mid = (used[n].to_numpy() for n in ("k", "tau", "cp", "mid_iv"))
    print(f"{source}: {k.size} quotes in {np.unique(tau).size} expiries (spec {args.spec!r} filters)")
    pricer = QuantLibHeston(k, tau, cp)

    lm_runs = [lm_fit(pricer, mid, args.starts) for _ in range(args.repeats)]
    params, rmse, _, n_eval = lm_runs[-1]
    t_lm = float(np.median([run[2] for run in lm_runs]))
    print(f"LM (MINPACK + QuantLib AnalyticHestonEngine): {dict(zip(NAMES, np.round(params, 4), strict=True))}, "
          f"{n_eval} residual evaluations, median of {args.repeats} runs")
    results = BenchResults("bench_calibration.py")
    results.figures.update(source=source, n_quotes=int(k.size), lm_seconds=t_lm, lm_rmse=rmse, lm_evaluations=n_eval,
                           lm_estimates=dict(zip(NAMES, params, strict=True)), methods={})
    if args.synthetic:
        results.figures["truth"] = SYNTHETIC_TRUTH
    columns = ["method", "wall s", "wall / LM", "fit s", "fit / LM", "sampling s", "sampling / LM", "post s",
               "cold s", "RMSE at point", "RMSE of mean IV", "RMSE lik", "R-hat", "bulk ESS", "ESS / s", "div",
               "status", "estimates " + ", ".join(NAMES)]
    widths = [22, 7, 6, 7, 6, 8, 6, 7, 7, 8, 9, 9, 7, 6, 6, 4, 0]
    table = results.table(f"{source}: {k.size} quotes in {np.unique(tau).size} expiries; LM {t_lm:.1f} s, "
                          f"{n_eval} residual evaluations (median of {args.repeats} runs)", columns)

    def console(cells):  # the last cell (estimates) goes on its own line
        print(" ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells[:-1], widths,
                                                                                             strict=True))))
        if cells[-1]:
            print(f"   {columns[-1]}: {cells[-1]}")

    def emit(cells):
        table["rows"].append(cells)
        console(cells)

    console(["method", "wall s", "/LM", "fit s", "/LM", "sample s", "/LM", "post s", "cold s", "RMSE pt", "RMSE mean",
             "RMSE lik", "R-hat", "ESS", "ESS/s", "div", "status", ""])
    emit(["LM + QuantLib", f"{t_lm:.1f}", "1.00", f"{t_lm:.1f}", "1.00", "", "", "", "", f"{rmse:.3f}", "", "", "",
          "", "", "", "point", ", ".join(f"{x:.4g}" for x in params)])
    for method in args.methods.split(","):
        if method == "map_lsq":
            method_spec = spec.with_fit(method="map").with_likelihood(spread_weight=0.0, noise_floor="shared")
        else:
            method_spec = spec.with_fit(method=method)
        walls, fits, samplings = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = fit(method_spec, quotes, progressbar=False)
            walls.append(time.perf_counter() - t0)
            fits.append(result.timings["fit_seconds"])
            samplings.append(result.timings.get("sampling_seconds", math.nan))
        wall, t_fit, t_sampling = float(np.median(walls)), float(np.median(fits)), float(np.median(samplings))
        post_fit = float(np.median([r - f for r, f in zip(walls, fits, strict=True)]))
        post = result.posterior
        median = tuple(float(post[f"{spec.model}_{n}"].median()) for n in NAMES)
        iv = pricer.iv(median)
        rmse_point = 100 * float(np.sqrt(np.nanmean((iv - mid) ** 2)))
        stacked = post.stack(sample=("chain", "draw"))
        keep = np.linspace(0, stacked.sizes["sample"] - 1, EXACT_IV_DRAWS).round().astype(int)
        draws = np.stack([pricer.iv(tuple(float(stacked[f"{spec.model}_{n}"][j]) for n in NAMES)) for j in keep])
        rmse_exact_mean = 100 * float(np.sqrt(np.nanmean((np.nanmean(draws, axis=0) - mid) ** 2)))
        conv, quality = result.convergence, result.fit_quality
        nuts = method == "nuts"
        label = {"nuts": f"NUTS {method_spec.fit.chains} x {method_spec.fit.draws}", "map": "MAP + Laplace",
                 "map_lsq": "MAP, LM objective"}.get(method, method)
        emit([label, f"{wall:.1f}", f"{wall / t_lm:.2f}", f"{t_fit:.1f}", f"{t_fit / t_lm:.2f}",
              f"{t_sampling:.1f}" if nuts else "", f"{t_sampling / t_lm:.2f}" if nuts else "",
              f"{post_fit:.1f}", f"{walls[0]:.1f}", f"{rmse_point:.3f}", f"{rmse_exact_mean:.3f}",
              f"{quality['rmse_likelihood_iv_vol_points']:.3f}",
              f"{conv['max_rhat']:.4f}" if nuts else "", f"{conv['min_ess_bulk']:.0f}" if nuts else "",
              f"{conv['min_ess_bulk'] / wall:.1f}" if nuts else "", f"{conv['divergences']:d}" if nuts else "",
              conv["status"], ", ".join(f"{x:.4g}" for x in median)])
        figures = {"wall_seconds": wall, "fit_seconds": t_fit, "sampling_seconds": t_sampling,
                   "post_seconds": post_fit, "cold_seconds": walls[0], "rmse_point": rmse_point,
                   "rmse_mean_iv": rmse_exact_mean, "status": conv["status"],
                   "medians": dict(zip(NAMES, median, strict=True))}
        if nuts:
            figures.update(draws=method_spec.fit.draws, chains=method_spec.fit.chains, max_rhat=conv["max_rhat"],
                           min_ess_bulk=conv["min_ess_bulk"], divergences=conv["divergences"])
            for link in ("exact", "vega_map"):
                figures[f"gradient_seconds_{link}"] = gradient_seconds(spec, used, post, link)
                print(f"   log-density + gradient at the posterior mean, price_to_iv={link!r}: "
                      f"{1e6 * figures[f'gradient_seconds_{link}']:.0f} us")
        results.figures["methods"][method] = figures
    table["notes"] = [
        "wall s: whole bayescal fit (model build, compilation, fit, post-fit checks), median of the runs; fit s: "
        "compilation and fit only; sampling s: NUTS's tuning and draws alone; post s: posterior predictive, "
        "log-likelihood, fit quality, arbitrage and kernel checks; cold s: the first run (compilation caches filled "
        "then); / LM: ratio to the LM time.",
        "RMSE at point: implied-vol RMSE (vol points) of the point estimate priced by QuantLib (LM optimum, "
        f"posterior medians); RMSE of mean IV: posterior mean of the exact model IV over {EXACT_IV_DRAWS} draws "
        "(QuantLib); RMSE lik: posterior mean of the likelihood's own model IV; estimates: LM optimum or posterior "
        "medians.",
    ]
    if "nuts" in results.figures["methods"]:
        m = results.figures["methods"]["nuts"]
        table["notes"].append(f"One log-density + gradient at the NUTS posterior mean: "
                              f"{1e6 * m['gradient_seconds_exact']:.0f} us (exact in-graph IVs), "
                              f"{1e6 * m['gradient_seconds_vega_map']:.0f} us (vega map).")
    for note in table["notes"]:
        print(note)
    results.write(args.json)

if __name__ == "__main__":
    main()
