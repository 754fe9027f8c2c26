"""Command line: ``bayescal calibrate`` and ``bayescal report``.

``bayescal calibrate CHAIN --underlying BTC --model svi --out DIR`` reads the chain (format detected
from the columns), fits the model's default spec (``models/<model>.toml``) or ``--spec FILE``,
and writes ``result.nc``, ``summary.csv``, ``quotes.csv``, ``figures/`` and ``report.html`` into DIR.
``--demo`` calibrates the bundled BTC chain instead of CHAIN.
"""

from __future__ import annotations

import argparse
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
    cal.add_argument("--draws", type=int, help="draws per chain (overrides the spec)")
    cal.add_argument("--tune", type=int, help="tuning draws per chain (overrides the spec)")
    cal.add_argument("--chains", type=int, help="number of chains (overrides the spec)")
    cal.add_argument("--seed", type=int, help="random seed (overrides the spec)")
    cal.add_argument("--quiet", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="(re)write summary, figures and report.html from a result")
    rep.add_argument("run_dir", help="folder holding result.nc")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayescal`` console script; returns the exit code (2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "calibrate":
            return _calibrate(args)
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
        draws=args.draws, tune=args.tune, chains=args.chains, random_seed=args.seed
    )
    quotes = read_chain(chain, underlying=args.underlying)
    print(f"bayescal: {quotes.sizes['quote']} {quotes.attrs['underlying']} quotes from {chain} "
          f"({quotes.attrs['format']}), valuation time {quotes.attrs['valuation_time']}")
    print(f"bayescal: fitting spec {spec.name!r} ({spec.model}, priors {spec.prior_set.name}) with "
          f"{spec.fit.chains} chains x {spec.fit.draws} draws ...", flush=True)
    result = fit(spec, quotes, progressbar=not args.quiet)
    out = Path(args.out)
    result_path = result.save(out / "result.nc")
    paths = write_outputs(result, out)
    paths["result"] = result_path
    _print_summary(result, paths, time.perf_counter() - start)
    return 0 if result.convergence["status"] != "fail" else 1


def _report(args: argparse.Namespace) -> int:
    from bayescal.report import write_outputs
    from bayescal.results import CalibrationResult

    run = Path(args.run_dir)
    result_file = run / "result.nc" if run.is_dir() else run
    result = CalibrationResult.load(result_file)
    paths = write_outputs(result, result_file.parent)
    print(f"bayescal: report written to {paths['report']}")
    return 0


def _print_summary(result, paths: dict[str, Path], wall: float) -> None:
    from bayescal.market.filters import filter_report
    from bayescal.report import expiry_table

    conv, quality = result.convergence, result.fit_quality
    quotes = result.quotes
    removed = [f"{f['filter']} {f['removed']}" for f in filter_report(quotes) if f["removed"]]
    per_expiry = expiry_table(result)
    lines = [
        "",
        "=" * 72,
        f" quotes: {quotes.sizes['quote']} read, {quality['n_quotes']} used in "
        f"{per_expiry.sizes['expiry']} expiries; removed: {', '.join(removed) or 'none'}",
        f" convergence: {conv['status'].upper()}  max R-hat {conv['max_rhat']:.4f}, min bulk ESS "
        f"{conv['min_ess_bulk']:.0f}, min tail ESS {conv['min_ess_tail']:.0f}, divergences {conv['divergences']}",
    ]
    lines += [f"   - {r}" for r in conv["reasons"]]
    lines += [
        f" fit: RMSE {quality['rmse_vol_points']:.3f} vol points (max {quality['max_abs_error_vol_points']:.2f}); "
        f"94% predictive interval overlaps bid-ask on {100 * quality['pp_overlap_share']:.1f}% of quotes",
        f" wall time: {wall:.1f} s (sampling incl. compilation {result.timings['sample_and_compile_seconds']:.1f} s)",
        f" result:  {paths['result']}",
        f" summary: {paths['summary']}",
        f" figures: {paths['figures']}/",
        f" report:  {paths['report']}",
        "=" * 72,
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
