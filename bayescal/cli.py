"""Command line: ``bayescal calibrate`` and ``bayescal report``.

``bayescal calibrate CHAIN --underlying BTC --model svi --out DIR`` reads the chain (format detected
from the columns), fits the model's default spec (``models/<model>.toml``) or ``--spec FILE``,
and writes ``result.nc``, ``summary.csv``, ``quotes.csv``, ``figures/`` and ``report.html`` into DIR.
``--demo`` calibrates the bundled BTC chain instead of CHAIN.
``bayescal fetch deribit --currency BTC --out FILE`` writes a live Deribit snapshot that calibrate reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bayescal.errors import BayescalError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayescal", description="Bayesian calibration of option pricing models.")
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="calibrate a pricing model to an option chain")
    cal.add_argument("chain", nargs="?", help="chain file (CSV); omit with --demo")
    cal.add_argument("--demo", action="store_true", help="use the bundled BTC bid/ask-IV chain (21 Oct 2021)")
    cal.add_argument("--underlying", help="underlying to keep (e.g. BTC); required if the file has several")
    cal.add_argument("--model", default="svi", help="pricing model key; its default spec is models/<model>.toml")
    cal.add_argument("--spec", help="calibration spec (TOML path or name in models/); overrides --model")
    cal.add_argument("--out", required=True, help="output folder")
    cal.add_argument("--method", choices=["nuts", "advi", "fullrank_advi", "pathfinder", "map"],
                     help="fit method (overrides the spec); all but nuts are approximations")
    cal.add_argument("--draws", type=int, help="draws per chain (overrides the spec)")
    cal.add_argument("--tune", type=int, help="tuning draws per chain (overrides the spec)")
    cal.add_argument("--chains", type=int, help="number of chains (overrides the spec)")
    cal.add_argument("--seed", type=int, help="random seed (overrides the spec)")
    cal.add_argument("--quiet", action="store_true", help="no progress bar")
    pp = sub.add_parser("prior-predictive", help="plot the smiles a spec's prior set implies against a chain")
    pp.add_argument("chain", nargs="?", help="chain file (CSV); omit with --demo")
    pp.add_argument("--demo", action="store_true", help="use the bundled BTC chain")
    pp.add_argument("--underlying", help="underlying to keep")
    pp.add_argument("--model", default="svi", help="pricing model key (default spec models/<model>.toml)")
    pp.add_argument("--spec", help="calibration spec; overrides --model")
    pp.add_argument("--priors", help="prior set to check instead of the spec's (e.g. svi/equity or a path)")
    pp.add_argument("--draws", type=int, default=500, help="prior draws")
    pp.add_argument("--out", required=True, help="output folder for the figures")
    trk = sub.add_parser("track", help="sequential calibration over windows: each posterior is the next prior")
    trk.add_argument("chains", nargs="+", help="chain files, or one folder of them (sorted by valuation time)")
    trk.add_argument("--underlying", help="underlying to keep (e.g. BTC)")
    trk.add_argument("--model", default="ssvi", help="surface model key (default spec models/<model>.toml)")
    trk.add_argument("--spec", help="calibration spec; overrides --model")
    trk.add_argument("--out", required=True, help="output folder (state, per-window results, track.nc, track.png)")
    trk.add_argument("--inflation", type=float, default=1.0, help="covariance inflation between windows (>= 1)")
    trk.add_argument("--drift", type=float, default=0.05,
                     help="random-walk sd per sqrt(day) in unconstrained units (default 0.05)")
    trk.add_argument("--student-t", type=float, default=0.0, help="degrees of freedom of a Student-t joint prior")
    trk.add_argument("--level-shift-max", type=float, default=0.05,
                     help="flag a regime change when the 1-month-and-longer ATM vols move by more than this mean "
                          "log change per sqrt(day) (default 0.05; 0 = off)")
    trk.add_argument("--warm-tune", type=int, default=300,
                     help="warm start: tuning draws of a window whose prior is the previous posterior, chains "
                          "started at its means (default 300; 0 = cold start with the spec's tune)")
    trk.add_argument("--draws", type=int, help="draws per chain (overrides the spec)")
    trk.add_argument("--tune", type=int, help="tuning draws per chain (overrides the spec)")
    trk.add_argument("--chains-per-fit", type=int, dest="n_chains", help="chains per window (overrides the spec)")
    from bayescal.batch import add_batch_parser

    add_batch_parser(sub)
    cmp_ = sub.add_parser("compare", help="compare results fitted to the same quotes by PSIS-LOO")
    cmp_.add_argument("runs", nargs="+", help="run folders (holding result.nc) or result files")
    cmp_.add_argument("--out", help="also write the table to this CSV file")
    fet = sub.add_parser("fetch", help="fetch a live option-chain snapshot (Deribit public REST API v2)")
    fet.add_argument("venue", choices=["deribit"], help="venue")
    fet.add_argument("--currency", default="BTC", help="BTC or ETH (inverse options)")
    fet.add_argument("--out", required=True, help="CSV file to write (snapshot format read by calibrate)")
    fet.add_argument("--base-url", help="API base URL (default $BAYESCAL_DERIBIT_URL or https://www.deribit.com/api/v2)")
    fet.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    fet.add_argument("--retries", type=int, default=3, help="extra tries per request, with backoff (default 3)")
    rep = sub.add_parser("report", help="(re)write summary, figures and report.html from a result")
    rep.add_argument("run_dir", help="folder holding result.nc")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayescal`` console script; returns the exit code (2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "prior-predictive":
            return _prior_predictive(args)
        if args.command == "track":
            return _track(args)
        if args.command == "batch":
            from bayescal.batch import run_batch_command

            return run_batch_command(args)
        if args.command == "fetch":
            return _fetch(args)
        return _report(args)
    except (BayescalError, FileNotFoundError) as exc:
        print(f"bayescal: error: {exc}", file=sys.stderr)
        return 2


def _calibrate(args: argparse.Namespace) -> int:
    from bayescal.inference import fit
    from bayescal.market import bundled_demo_chain, read_chain
    from bayescal.report import write_outputs
    from bayescal.spec import load_spec

    if args.demo == bool(args.chain):
        raise BayescalError("give exactly one of CHAIN or --demo")
    start = time.perf_counter()
    chain = bundled_demo_chain() if args.demo else Path(args.chain)
    spec = load_spec(args.spec or args.model).with_fit(
        method=args.method, draws=args.draws, tune=args.tune, chains=args.chains, random_seed=args.seed
    )
    quotes = read_chain(chain, underlying=args.underlying)
    print(f"bayescal: {quotes.sizes['quote']} {quotes.attrs['underlying']} quotes from {chain} "
          f"({quotes.attrs['format']}), valuation time {quotes.attrs['valuation_time']}")
    print(f"bayescal: source statuses: {_status_line(json.loads(quotes.attrs.get('read_report', '{}')))}")
    print(f"bayescal: fitting spec {spec.name!r} ({spec.model}, priors {spec.prior_set.name}) with "
          f"{spec.fit.chains} chains x {spec.fit.draws} draws ...", flush=True)
    result = fit(spec, quotes, progressbar=not args.quiet)
    out = Path(args.out)
    result_path = result.save(out / "result.nc")
    paths = write_outputs(result, out)
    paths["result"] = result_path
    _print_summary(result, paths, time.perf_counter() - start)
    return 0 if result.convergence["status"] != "fail" else 1


def _result_path(run: str) -> Path:
    path = Path(run)
    return path / "result.nc" if path.is_dir() else path


def _prior_predictive(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bayescal.inference import prior_predictive
    from bayescal.market import bundled_demo_chain, read_chain
    from bayescal.priors import load_prior_set
    from bayescal.report import write_prior_predictive
    from bayescal.spec import load_spec

    if args.demo == bool(args.chain):
        raise BayescalError("give exactly one of CHAIN or --demo")
    spec = load_spec(args.spec or args.model)
    if args.priors:
        prior_set = load_prior_set(args.priors)
        if prior_set.model != spec.model:
            raise BayescalError(f"prior set {prior_set.name!r} is for model {prior_set.model!r}, not {spec.model!r}")
        spec = replace(spec, prior_set=prior_set)
    quotes = read_chain(bundled_demo_chain() if args.demo else Path(args.chain), underlying=args.underlying)
    used, prior = prior_predictive(spec, quotes, draws=args.draws)
    paths = write_prior_predictive(spec, used, prior, args.out)
    print(f"bayescal: {len(paths)} prior-predictive smile figures ({spec.prior_set.name}, {args.draws} draws) "
          f"in {args.out}")
    return 0


def _track(args: argparse.Namespace) -> int:
    import numpy as np

    from bayescal.report import write_track_figure
    from bayescal.sequential import UpdateSettings, run_track
    from bayescal.spec import load_spec

    files: list[Path] = []
    for item in args.chains:
        path = Path(item)
        files.extend(sorted(path.glob("*.csv")) if path.is_dir() else [path])
    spec = load_spec(args.spec or args.model).with_fit(draws=args.draws, tune=args.tune, chains=args.n_chains)
    settings = UpdateSettings(inflation=args.inflation, drift_sd_per_day=args.drift, student_t_nu=args.student_t,
                              warm_tune=args.warm_tune, level_shift_max=args.level_shift_max)
    tree = run_track(files, spec, args.out, underlying=args.underlying, settings=settings)
    figure = write_track_figure(tree, Path(args.out) / "track.png")
    ds = tree.to_dataset()
    statuses, counts = np.unique(ds["status"].to_numpy(), return_counts=True)
    flagged = [str(t)[:10] for t in ds["valuation_time"].to_numpy()[ds["conflict"].to_numpy()]]
    print(f"bayescal: {ds.sizes['window']} windows; status "
          f"{', '.join(f'{s} {n}' for s, n in zip(statuses, counts, strict=True))}; conflicts flagged at {flagged}")
    print(f"bayescal: track written to {Path(args.out) / 'track.nc'}, figure {figure}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from bayescal.comparison import compare_results
    from bayescal.results import CalibrationResult

    results = {}
    for run in args.runs:
        result = CalibrationResult.load(_result_path(run))
        label = f"{result.idata.attrs['model']} ({Path(run).name})"
        results[label] = result
    table = compare_results(results)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table)
    if args.out:
        from bayescal.atomic import write_text_atomic

        write_text_atomic(Path(args.out), table.to_csv())
        print(f"bayescal: table written to {args.out}")
    return 0


def _status_line(counts: dict[str, int]) -> str:
    """``ok 245, capped_iv 65``: counts per status name, ``ok`` first."""
    ordered = sorted(counts.items(), key=lambda item: (item[0] != "ok", -item[1], item[0]))
    return ", ".join(f"{name} {n}" for name, n in ordered) or "none"


def _fetch(args: argparse.Namespace) -> int:
    from bayescal.market.fetch import fetch_deribit_snapshot

    info = fetch_deribit_snapshot(args.currency, args.out, url=args.base_url, timeout=args.timeout,
                                  retries=args.retries)
    print(f"bayescal: {info['rows']} {args.currency.upper()} options from {info['base_url']} at {info['timestamp']} "
          f"written to {info['path']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bayescal.report import write_outputs
    from bayescal.results import CalibrationResult

    run = Path(args.run_dir)
    if run.is_dir() and (run / "track.nc").exists():
        from bayescal.report import write_track_report

        paths = write_track_report(run)
        print(f"bayescal: track report written to {paths['report']}")
        return 0
    result_file = _result_path(args.run_dir)
    result = CalibrationResult.load(result_file)
    paths = write_outputs(result, result_file.parent)
    print(f"bayescal: report written to {paths['report']}")
    return 0


def _print_summary(result, paths: dict[str, Path], wall: float) -> None:
    from bayescal.market.filters import filter_report, status_counts
    from bayescal.report import expiry_table

    conv, quality = result.convergence, result.fit_quality
    quotes = result.quotes
    removed = [f"{f['filter']} {f['removed']}" for f in filter_report(quotes) if f["removed"]]
    arbitrage = json.loads(quotes.attrs.get("arbitrage_report", "{}"))
    per_expiry = expiry_table(result)
    lines = [
        "",
        "=" * 72,
        f" quotes: {quotes.sizes['quote']} read, {quality['n_quotes']} used in "
        f"{per_expiry.sizes['expiry']} expiries; removed: {', '.join(removed) or 'none'}",
        f" statuses: {_status_line(status_counts(quotes))}; static-arbitrage flags on quotes: "
        f"{arbitrage.get('flagged', 0)} ({'dropped' if arbitrage.get('dropped') else 'kept'})",
        f" convergence: {conv['status'].upper()}  max R-hat {conv['max_rhat']:.4f}, min bulk ESS "
        f"{conv['min_ess_bulk']:.0f}, min tail ESS {conv['min_ess_tail']:.0f}, divergences {conv['divergences']}"
        if conv["status"] != "approximate"
        else f" APPROXIMATE FIT ({result.idata.attrs['fit_method']}): no MCMC diagnostics, bands may be too narrow",
    ]
    lines += [f"   - {r}" for r in conv["reasons"]]
    lines += [
        f" fit: RMSE {quality['rmse_vol_points']:.3f} vol points (max {quality['max_abs_error_vol_points']:.2f}"
        + (f"; likelihood's iv_model {quality['rmse_likelihood_iv_vol_points']:.3f}, max deviation from exact "
           f"inversion {quality['likelihood_iv_max_deviation_vol_points']:.1e}"
           if "rmse_likelihood_iv_vol_points" in quality else "") + "); "
        f"94% predictive interval overlaps bid-ask on {100 * quality['pp_overlap_share']:.1f}% of quotes",
        f" static arbitrage: {100 * quality['arbitrage_free_share']:.1f}% of posterior draws free of butterfly and "
        f"calendar arbitrage (butterfly {100 * quality['butterfly_free_share']:.1f}%, "
        f"calendar {100 * quality['calendar_free_share']:.1f}%)",
    ]
    if "kernel_max_abs_error" in quality:
        lines.append(f" likelihood kernel vs exact per-quote kernel on {quality['kernel_draws_checked']} draws: max "
                     f"{quality['kernel_max_abs_error']:.1e} x forward "
                     f"({quality['kernel_max_iv_error_vol_points']:.1e} vol points)")
    lines += [
        f" wall time: {wall:.1f} s (fit incl. compilation {result.timings['fit_seconds']:.1f} s"
        + (f", sampling {result.timings['sampling_seconds']:.1f} s" if "sampling_seconds" in result.timings else "")
        + ")",
        f" result:  {paths['result']}",
        f" summary: {paths['summary']}",
        f" figures: {paths['figures']}/",
        f" report:  {paths['report']}",
        "=" * 72,
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
