"""Parameter-recovery studies on simulated chains: does the 94% interval cover the truth 94% of the time?

For each seed the true parameters (and the noise floor ``sigma_obs``) are one draw from the spec's
prior set (simulation-based calibration, Talts et al. 2018), a chain is simulated from the pricing
model on a fixed quote grid (expiries 1 week to 1 year, strikes from -2.5 to +2 ATM standard
deviations, out-of-the-money side, bid-ask spreads like a liquid crypto chain, mids drawn from the
likelihood's noise model) and the spec is fitted.
Averaged over prior draws, a correct posterior covers each true parameter with its central 94%
interval at exactly 94%; a systematically lower rate means a biased or overconfident fit.

Command (not part of the test suite; one NUTS fit per model and seed)::

    python -m bayescal.studies --model heston --seeds 20 --out runs/recovery_heston.json
    python -m bayescal.studies --model heston --seeds 1 --track-windows 20 --out runs/track_heston.json

References
----------
S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman (2018), "Validating Bayesian inference
algorithms with simulation-based calibration", arXiv:1804.06788.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import xarray as xr

from bayescal.atomic import write_text_atomic
from bayescal.errors import SpecError
from bayescal.inference import build_model, fit, sample_prior
from bayescal.market.filters import filter_quotes, used_quotes
from bayescal.market.implied_vol import implied_vol_black76
from bayescal.market.quotes import make_quotes, prices_from_iv
from bayescal.pricing_models import PricingModel, get_pricing_model
from bayescal.priors import from_unconstrained, to_unconstrained, unconstrained_transform
from bayescal.results import CalibrationResult
from bayescal.sequential import UpdateSettings, carried_parameters, run_track
from bayescal.spec import CalibrationSpec, load_spec

__all__ = ["DEFAULT_TAUS", "prior_truth", "recovery_run", "simulated_chain", "track_recovery_run"]

#: Expiries of the simulated grid, in years (1 week, 1 month, 3 months, 6 months, 1 year).
DEFAULT_TAUS = np.array([7, 30, 91, 182, 365]) / 365.0
#: Strikes per expiry and their range in ATM standard deviations ``z = k / (iv_atm sqrt(tau))``.
N_STRIKES = 15
Z_RANGE = (-2.5, 2.0)
FORWARD = 50_000.0
VALUATION = pd.Timestamp("2026-01-01T08:00:00Z")
#: Smallest bid a simulated quote keeps, in units of the forward: far below any exchange's tick (Deribit's
#: is 1e-4 of the underlying on BTC and ETH options), above the surface kernels' absolute error (1.4e-11
#: on a 1-year put at k = -1.45 with Heston rho 0.95, where the model price is 1e-11 and its IV is noise).
MIN_BID = 1e-8


def _model_iv(pricing: PricingModel, truth: dict[str, np.ndarray], k: np.ndarray, tau: np.ndarray,
              idx: np.ndarray) -> np.ndarray:
    """Model implied vols of quotes (exact per-quote kernel), NaN where a price has no implied vol."""
    cp = np.where(k >= 0, 1.0, -1.0)
    inputs = {n: (np.asarray(v)[idx] if n in pricing.per_expiry_inputs else np.asarray(v)) for n, v in truth.items()}
    out = pricing.kernel(pt.as_tensor_variable(k), pt.as_tensor_variable(tau), pt.as_tensor_variable(cp),
                         **{n: pt.as_tensor_variable(v) for n, v in inputs.items()})
    value = np.asarray(pytensor.function([], out)())
    if pricing.output == "iv":
        return value
    iv, status = implied_vol_black76(value, 1.0, np.exp(k), tau, cp)
    return np.where(status == 0, iv, np.nan)


def simulated_chain(model_key: str, truth: dict[str, np.ndarray], rng: np.random.Generator,
                    taus: np.ndarray = DEFAULT_TAUS, settings: dict[str, Any] | None = None,
                    noise: tuple[np.ndarray, float] | None = None,
                    valuation: pd.Timestamp = VALUATION, n_strikes: int = N_STRIKES) -> xr.Dataset:
    """Quotes simulated from a pricing model with known kernel inputs.

    Parameters
    ----------
    model_key : str
        Registered pricing model.
    truth : dict of str to ndarray
        Kernel inputs (:attr:`PricingModel.kernel_inputs`); per-expiry inputs have shape (n_expiry,).
    rng : numpy.random.Generator
        Noise source.
    taus : ndarray, shape (n_expiry,)
        Expiries in years.
    settings : dict, optional
        Model settings (e.g. SABR's ``beta``).
    noise : (sigma_obs, spread_weight), optional
        Draw the mids from the likelihood's own noise model,
        ``sd = sqrt(sigma_obs[expiry]**2 + (spread_weight * half_spread)**2)`` (``sigma_obs`` shape
        (n_expiry,)), as simulation-based calibration requires. Default: ``sd = half_spread / 2``.
    valuation : pandas.Timestamp
        Valuation time (expiries are ``valuation + tau``).
    n_strikes : int
        Strikes per expiry, evenly spaced in ``z`` (ATM standard deviations) over ``Z_RANGE``.

    Returns
    -------
    xarray.Dataset
        Canonical quotes (:func:`bayescal.market.quotes.make_quotes`) whose half spread in IV is
        ``h = 0.004 + 0.01 |z|`` (``z`` the strike in ATM standard deviations) and whose mid IV, the
        IV of the mid price that the likelihood observes, is the model IV plus normal noise (see
        ``noise``): bid and ask vols are ``c -+ h`` with ``c`` from :func:`_spread_centre`. Quotes
        whose model price has no implied vol (far-wing underflow) get no bid and no ask, and quotes
        whose bid is below :data:`MIN_BID` of the forward get no bid (no exchange quotes such a bid),
        so the filters report them (status ``no_bid``).
    """
    pricing = get_pricing_model(model_key, **(settings or {}))
    n_exp = taus.size
    idx0 = np.arange(n_exp)
    atm = _model_iv(pricing, truth, np.zeros(n_exp), taus, idx0)
    atm = np.where(np.isfinite(atm), atm, 0.5)
    z = np.linspace(*Z_RANGE, n_strikes)
    idx = np.repeat(idx0, n_strikes)
    zz = np.tile(z, n_exp)
    k = zz * atm[idx] * np.sqrt(taus[idx])
    tau = taus[idx]
    iv = _model_iv(pricing, truth, k, tau, idx)
    half = 0.004 + 0.01 * np.abs(zz)
    if noise is None:
        sd = 0.5 * half
    else:
        sigma_obs, weight = noise
        sd = np.sqrt(np.broadcast_to(np.asarray(sigma_obs, float), (n_exp,))[idx] ** 2 + (weight * half) ** 2)
    mid = iv + rng.normal(0.0, sd)
    strike = FORWARD * np.exp(k)
    cp = np.where(k >= 0, 1, -1)
    expiry = [valuation + pd.Timedelta(seconds=round(t * 365 * 86400)) for t in tau]
    frame = pd.DataFrame({
        "instrument": [f"SIM-{e}-{i}" for e, i in zip(idx, np.tile(np.arange(n_strikes), n_exp), strict=True)],
        "expiry": expiry, "strike": strike, "cp": cp, "forward": FORWARD, "discount_factor": 1.0,
    })
    args = (np.full(k.size, FORWARD), strike, tau, cp.astype(float), np.ones(k.size))
    centre = _spread_centre(mid, half, args)
    bid_iv, ask_iv = centre - half, centre + half
    with np.errstate(invalid="ignore"):
        bid = prices_from_iv(np.where(bid_iv > 0, bid_iv, np.nan), *args)
        frame["bid"] = np.where(bid >= MIN_BID * FORWARD, bid, np.nan)
        frame["ask"] = prices_from_iv(ask_iv, *args)
    return make_quotes(frame, valuation_time=valuation, underlying="SIM", source=f"simulated {model_key}",
                       fmt="simulated", premium_note="simulated", tau=tau,
                       bid_iv=np.where(np.isfinite(frame["bid"]), bid_iv, np.nan),
                       ask_iv=np.where(np.isfinite(frame["ask"]), ask_iv, np.nan))


def _spread_centre(mid_iv: np.ndarray, half: np.ndarray, args: tuple) -> np.ndarray:
    """IV ``c`` at which bid and ask vols ``c -+ half`` have a mid price whose IV is ``mid_iv``.

    The likelihood observes the IV of the mid price. Centring the spread on ``mid_iv`` in IV instead
    puts that IV up to 0.5 vol points above ``mid_iv`` in the wings, where out-of-the-money prices are
    convex in the vol. Solved by bisection on ``[mid_iv - half, mid_iv + half]`` (the mid price rises
    with ``c``; a vol at or below 0 prices the out-of-the-money quote at 0), 60 halvings.
    """
    def price(iv):
        with np.errstate(invalid="ignore"):
            return np.where(iv > 0, prices_from_iv(np.where(iv > 0, iv, np.nan), *args), 0.0)

    target = price(mid_iv)
    lo, hi = mid_iv - half, mid_iv + half
    for _ in range(60):
        c = 0.5 * (lo + hi)
        above = 0.5 * (price(c - half) + price(c + half)) > target
        lo, hi = np.where(above, lo, c), np.where(above, c, hi)
    return 0.5 * (lo + hi)


def prior_truth(spec: CalibrationSpec, seed: int, taus: np.ndarray = DEFAULT_TAUS) -> dict[str, dict[str, np.ndarray]]:
    """One draw from the spec's prior: ``{"parameters", "kernel_inputs", "sigma_obs"}`` (per-expiry arrays).

    The model is built on a template chain (flat 60% smiles on the simulation grid) only to get
    its variables; the draw does not depend on the template's quotes.
    """
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    flat = simulated_chain("black76", {"iv": np.full(taus.size, 0.6)}, np.random.default_rng(0), taus)
    prior = sample_prior(build_model(spec, used_quotes(filter_quotes(flat, spec.filters))), 1, seed)
    take = {n: prior[pricing.name(n)].isel(chain=0, draw=0).to_numpy() for n in
            set(pricing.parameters) | set(pricing.kernel_inputs)}
    return {"parameters": {n: take[n] for n in pricing.parameters},
            "kernel_inputs": {n: take[n] for n in pricing.kernel_inputs},
            "sigma_obs": prior["sigma_obs"].isel(chain=0, draw=0).to_numpy()}


def recovery_run(spec: CalibrationSpec, seed: int, taus: np.ndarray = DEFAULT_TAUS,
                 truth: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit one simulated chain whose truth is a prior draw; report coverage per parameter scalar.

    Parameters
    ----------
    spec : CalibrationSpec
        The calibration to study.
    seed : int
        Seed of the prior draw (:func:`prior_truth`), of the chain's noise and of the fit.
    taus : ndarray, shape (n_expiry,)
        Expiries of the simulated chain (years).
    truth : dict, optional
        A given truth in :func:`prior_truth`'s format (``parameters``, ``kernel_inputs``,
        ``sigma_obs``) instead of the seed's prior draw: tests pin the draws they were written for.

    Returns
    -------
    dict
        ``seed``, ``convergence`` (gate dict), ``n_quotes``, and ``parameters``: a list of
        ``{"name", "index", "truth", "lo", "hi", "inside"}`` for every scalar of every sampled
        parameter (central 94% interval).
    """
    if truth is None:
        truth = prior_truth(spec, seed, taus)
    truth = {"parameters": {n: np.asarray(v, dtype=float) for n, v in truth["parameters"].items()},
             "kernel_inputs": {n: np.asarray(v, dtype=float) for n, v in truth["kernel_inputs"].items()},
             "sigma_obs": np.asarray(truth["sigma_obs"], dtype=float)}
    rng = np.random.default_rng(10_000 + seed)
    chain = simulated_chain(spec.model, truth["kernel_inputs"], rng, taus, spec.model_settings,
                            noise=(truth["sigma_obs"], spec.likelihood.spread_weight))
    result = fit(spec.with_fit(random_seed=seed), chain, progressbar=False, arbitrage_check=False)
    post = result.posterior
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    rows = []
    for name in pricing.parameters:
        draws = post[pricing.name(name)]
        lo = np.atleast_1d(draws.quantile(0.03, ("chain", "draw")).to_numpy())
        hi = np.atleast_1d(draws.quantile(0.97, ("chain", "draw")).to_numpy())
        true = np.atleast_1d(truth["parameters"][name])
        for i in range(true.size):
            rows.append({"name": name, "index": i, "truth": float(true[i]), "lo": float(lo[i]), "hi": float(hi[i]),
                         "inside": bool(lo[i] <= true[i] <= hi[i])})
    return {"seed": seed, "convergence": result.convergence, "n_quotes": int(result.fit_quality["n_quotes"]),
            "kernel_max_iv_error_vol_points": result.fit_quality.get("kernel_max_iv_error_vol_points"),
            "parameters": rows}


def track_recovery_run(spec: CalibrationSpec, seed: int, out_dir: str | Path, windows: int = 20,
                       settings: UpdateSettings | None = None, taus: np.ndarray = DEFAULT_TAUS) -> dict[str, Any]:
    """Sequential recovery: a daily path of drifting true parameters, tracked window by window.

    The truth follows the random walk the sequential prior assumes: the first window's carried
    parameters are a prior draw, then each day every carried parameter moves by
    ``N(0, drift_sd_per_day**2)`` in its unconstrained space (:func:`bayescal.priors.unconstrained_transform`).
    Each window's noise floor ``sigma_obs`` is a fresh draw from the base prior, and its chain is
    simulated as in :func:`recovery_run`. :func:`bayescal.sequential.run_track` then fits the windows
    in turn (posterior -> prior, warm starts, conflict checks) and the 94% band of every carried
    parameter in every window is checked against the truth.

    Returns
    -------
    dict
        ``seed``, ``windows`` (per window: ``status``, ``conflict``, ``warm_start``, ``fit_seconds``,
        ``max_rhat``, ``divergences``) and ``parameters``: ``{"name", "window", "truth", "lo", "hi",
        "inside"}`` per carried parameter and window.

    Raises
    ------
    SpecError
        If the model has nothing to carry between windows or per-expiry parameters (the simulated
        drift moves carried parameters, mapped to kernel inputs by :meth:`PricingModel.input_values`).
    """
    settings = settings or UpdateSettings(drift_sd_per_day=0.05)
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    names = carried_parameters(spec.model, spec.model_settings)
    if set(names) != set(pricing.parameters):
        raise SpecError(f"track recovery needs a model whose parameters are all carried "
                        f"({spec.model!r}: parameters {pricing.parameters}, carried {names})")
    transforms = {n: unconstrained_transform(spec.prior_set.priors[n]) for n in names}
    truth = prior_truth(spec, seed, taus)["parameters"]
    z = {n: float(to_unconstrained(np.asarray(truth[n], float), transforms[n])) for n in names}
    rng = np.random.default_rng(20_000 + seed)
    chains, path = [], []
    for w in range(windows):
        if w:
            z = {n: v + settings.drift_sd_per_day * rng.normal() for n, v in z.items()}
        values = {n: np.asarray(float(pytensor.function([], from_unconstrained(pt.constant(v), transforms[n]))()))
                  for n, v in z.items()}
        sigma_obs = prior_truth(spec, 1_000 * seed + w, taus)["sigma_obs"]
        chains.append(simulated_chain(spec.model, pricing.input_values(values), rng, taus, spec.model_settings,
                                      noise=(sigma_obs, spec.likelihood.spread_weight),
                                      valuation=VALUATION + pd.Timedelta(days=w)))
        path.append({n: float(v) for n, v in values.items()})
    tree = run_track(chains, spec.with_fit(random_seed=seed), out_dir, settings=settings, log=lambda line: None,
                     arbitrage_check=False)
    ds = tree.to_dataset()
    rows, per_window = [], []
    for w in range(windows):
        result = CalibrationResult.load(Path(out_dir) / f"window_{w:02d}.nc")
        post, conv = result.posterior, result.convergence
        per_window.append({"status": str(ds["status"][w].item()), "conflict": bool(ds["conflict"][w].item()),
                           "warm_start": bool(ds["warm_start"][w].item()),
                           "fit_seconds": float(ds["fit_seconds"][w].item()), "max_rhat": conv["max_rhat"],
                           "divergences": conv["divergences"]})
        for n in names:
            draws = post[pricing.name(n)]
            lo, hi = (float(draws.quantile(q, ("chain", "draw"))) for q in (0.03, 0.97))
            rows.append({"name": n, "window": w, "truth": path[w][n], "lo": lo, "hi": hi,
                         "inside": bool(lo <= path[w][n] <= hi)})
    return {"seed": seed, "windows": per_window, "parameters": rows}


def _binomial_interval(k: int, n: int) -> tuple[float, float]:
    """Central 95% interval of a binomial(n, 0.94) count, as rates (normal approximation)."""
    sd = np.sqrt(0.94 * 0.06 / n)
    return 0.94 - 1.96 * sd, 0.94 + 1.96 * sd


def main(argv: list[str] | None = None) -> int:
    """Command line: run a recovery study and write its JSON atomically."""
    parser = argparse.ArgumentParser(prog="python -m bayescal.studies", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="spec name in models/ (e.g. heston)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--track-windows", type=int, default=0,
                        help="sequential study instead: a daily path of this many windows per seed "
                             "(see track_recovery_run); fits are kept in a folder beside --out")
    parser.add_argument("--drift", type=float, default=0.05, help="track study: random-walk sd per sqrt(day)")
    args = parser.parse_args(argv)
    spec = load_spec(args.model).with_fit(draws=args.draws, tune=args.tune)
    if args.track_windows:
        return _track_study(spec, args)
    runs = []
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run = recovery_run(spec, seed)
        runs.append(run)
        conv = run["convergence"]
        inside = [p["inside"] for p in run["parameters"]]
        print(f"seed {seed}: {sum(inside)}/{len(inside)} inside, R-hat {conv['max_rhat']:.4f}, "
              f"divergences {conv['divergences']}, status {conv['status']}", flush=True)
    cells = [p for r in runs for p in r["parameters"]]
    rate = float(np.mean([p["inside"] for p in cells]))
    by_name = {n: float(np.mean([p["inside"] for p in cells if p["name"] == n])) for n in dict.fromkeys(
        p["name"] for p in cells)}
    summary = {
        "model": args.model, "seeds": args.seeds, "draws": args.draws, "tune": args.tune,
        "coverage": rate, "coverage_by_parameter": by_name, "n_intervals": len(cells),
        "binomial_95_band": _binomial_interval(sum(p["inside"] for p in cells), len(cells)),
        "max_rhat": max(r["convergence"]["max_rhat"] for r in runs),
        "divergences": [r["convergence"]["divergences"] for r in runs],
        "status": [r["convergence"]["status"] for r in runs],
        "wall_seconds": time.perf_counter() - t0, "runs": runs,
    }
    write_text_atomic(args.out, json.dumps(summary, indent=1))
    lo, hi = summary["binomial_95_band"]
    print(f"{args.model}: coverage {rate:.3f} over {len(cells)} intervals (95% band for a true 0.94: "
          f"{lo:.3f}-{hi:.3f}); by parameter {by_name}; max R-hat {summary['max_rhat']:.4f}; "
          f"divergent fits {sum(d > 0 for d in summary['divergences'])}/{args.seeds}")
    return 0


def _track_study(spec: CalibrationSpec, args: argparse.Namespace) -> int:
    """Sequential coverage study over seeds (one simulated path of ``--track-windows`` windows each)."""
    settings = UpdateSettings(drift_sd_per_day=args.drift)
    runs = []
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        folder = args.out.with_suffix("") / f"seed_{seed:03d}"
        run = track_recovery_run(spec, seed, folder, args.track_windows, settings)
        runs.append(run)
        inside = [p["inside"] for p in run["parameters"]]
        w = run["windows"]
        print(f"seed {seed}: {sum(inside)}/{len(inside)} inside; status "
              f"{[x['status'] for x in w]}; conflicts {sum(x['conflict'] for x in w)}; max R-hat "
              f"{max(x['max_rhat'] for x in w):.4f}; divergences {sum(x['divergences'] for x in w)}; "
              f"seconds per window {np.mean([x['fit_seconds'] for x in w]):.1f}", flush=True)
    cells = [p for r in runs for p in r["parameters"]]
    rate = float(np.mean([p["inside"] for p in cells]))
    by_name = {n: float(np.mean([p["inside"] for p in cells if p["name"] == n]))
               for n in dict.fromkeys(p["name"] for p in cells)}
    summary = {"model": args.model, "seeds": args.seeds, "windows": args.track_windows, "drift": args.drift,
               "draws": args.draws, "tune": args.tune, "coverage": rate, "coverage_by_parameter": by_name,
               "n_intervals": len(cells), "binomial_95_band": _binomial_interval(sum(p["inside"] for p in cells),
                                                                                 len(cells)),
               "wall_seconds": time.perf_counter() - t0, "runs": runs}
    write_text_atomic(args.out, json.dumps(summary, indent=1))
    lo, hi = summary["binomial_95_band"]
    print(f"{args.model} track: coverage {rate:.3f} over {len(cells)} intervals (95% band for a true 0.94: "
          f"{lo:.3f}-{hi:.3f}); by parameter {by_name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
