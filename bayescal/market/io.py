"""Chain-file readers with format detection, and :func:`read_chain`, the one entry point.

Each reader turns one venue's file into the canonical quotes Dataset of
:func:`bayescal.market.quotes.make_quotes`. :func:`read_chain` detects the format from the first
lines (CBOE quote tables) or from the header columns (every other format), and raises
:class:`~bayescal.errors.UnknownFormatError` listing every known format otherwise. The generic
reader is never guessed: it runs when a column map is given (``column_map=`` or a
``<file stem>.columns.toml`` next to the file). Formats, units and conversions: ``docs/data.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.errors import QuoteValidationError, UnknownFormatError
from bayescal.market._parse import (
    DEFAULT_STALE_AFTER_SECONDS,
    ReadOptions,
    coin_to_quote,
    iso_times,
    labels,
    numeric,
    option_types,
    read_csv_text,
    resolve_valuation_time,
    select_underlying,
)
from bayescal.market.cboe import read_cboe_quote_table, sniff_cboe
from bayescal.market.deribit import (
    BOOK_SUMMARY_COLUMNS,
    PREMIUM_NOTE,
    TICKER_COLUMNS,
    read_deribit_book_summary,
    read_deribit_ticker,
)
from bayescal.market.generic import read_generic
from bayescal.market.quotes import elapsed_seconds, make_quotes, prices_from_iv
from bayescal.market.tardis import TARDIS_REQUIRED, read_tardis_options_chain

DEMO_CHAIN_NAME = "btc_20211021_bidask_iv.csv"
#: Valuation date of the bundled demo chain, as its source names it ("BTC implied vols of 21Oct2021").
DEMO_VALUATION_TIME = "2021-10-21T08:00:00+00:00"


@dataclass(frozen=True)
class ChainFormat:
    """A known chain-file format: its name, how it is recognised, and its reader.

    Attributes
    ----------
    name, description : str
    required_columns : frozenset of str
        Header columns that identify the format (and that its reader needs).
    reader : callable
        ``reader(path, frame_or_text, options) -> xarray.Dataset``.
    sniff : callable, optional
        ``sniff(first_lines) -> bool`` for formats recognised from their first lines rather than
        their columns (the reader then receives the file's text, not a frame).
    """

    name: str
    description: str
    required_columns: frozenset[str]
    reader: Callable[..., xr.Dataset]
    sniff: Callable[[list[str]], bool] | None = None


def read_deribit_snapshot(path: Path, frame: pd.DataFrame, opts: ReadOptions) -> xr.Dataset:
    """Read a Deribit book-summary snapshot (``deribit_options_snapshot_*.csv``, also what ``bayescal fetch`` writes).

    Premiums (``bid_price``, ``ask_price``) are in coin units; they are converted to USD by
    multiplying by the per-expiry forward (``underlying`` column, Deribit's ``underlying_price``).
    The USD premium so obtained is the forward-measure Black-76 value, so the discount factor is 1.
    The valuation time follows ``opts.valuation_time`` over the ``timestamp`` column (default the
    latest; the collector writes its run start on every row, and the spread is recorded in attrs).
    Expiries are read from ``expiry_datetime`` (08:00 UTC) and tau is ACT/365F to the second (the
    file's own ``time_to_maturity`` uses 365.25-day years and is not used). Timestamps must carry a
    UTC offset.

    Raises
    ------
    QuoteParseError, QuoteValidationError
        For unparseable values (column and rows named), or several underlyings without a choice.
    """
    source = str(path)
    frame, name = select_underlying(frame, labels(frame, "currency", source), opts.underlying, source)
    stamps = iso_times(frame, "timestamp", source)
    valuation_time, policy = resolve_valuation_time(opts.valuation_time, stamps, source, "timestamp")
    forward = numeric(frame, "underlying", source)
    canonical = pd.DataFrame(
        {
            "instrument": labels(frame, "instrument_name", source),
            "expiry": iso_times(frame, "expiry_datetime", source),
            "strike": numeric(frame, "strike", source),
            "cp": option_types(frame, "option_type", source),
            "bid": coin_to_quote(numeric(frame, "bid_price", source), forward),
            "ask": coin_to_quote(numeric(frame, "ask_price", source), forward),
            "forward": forward,
            "discount_factor": np.ones(len(frame)),
        }
    )
    extra = {}
    if "implied_volatility" in frame:
        extra["venue_mark_iv"] = (numeric(frame, "implied_volatility", source),
                                  {"units": "decimal", "description": "Deribit mark_iv / 100 (file column)"})
    valid = stamps[~stamps.isna()]
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="deribit_snapshot",
        premium_note=PREMIUM_NOTE,
        quote_time=stamps,
        stale_after_seconds=opts.stale_after_seconds,
        source_row=frame.index.to_numpy() + 1,
        extra_vars=extra,
        extra_attrs={"timestamp_spread_seconds": float(elapsed_seconds(valid.min(), [valid.max()])[0]) if len(valid)
                     else 0.0, "valuation_time_policy": policy},
    )


def read_bidask_iv(path: Path, frame: pd.DataFrame, opts: ReadOptions) -> xr.Dataset:
    """Read a bid/ask implied-vol chain (``slice_id, ttm_years, forward, discount_factor, strike,
    option_type, bid_iv, ask_iv``), the format of the bundled demo chain.

    The file gives tau directly (``ttm_years``) and no timestamps, so tau is taken as given and the
    expiry is reconstructed as valuation time + tau (ACT/365F). Premiums are computed from the
    vols (decimal) with Black-76 so the chain has the same variables as every other format. The
    valuation time is the bundled chain's date, an explicit ``opts.valuation_time``, or a
    placeholder (the epoch) recorded as such.

    Raises
    ------
    QuoteParseError
        For unparseable values (column and rows named).
    """
    source = str(path)
    name = (opts.underlying or "BTC").upper()
    is_demo = path.name == DEMO_CHAIN_NAME
    explicit = opts.valuation_time is not None and not (
        isinstance(opts.valuation_time, str) and opts.valuation_time.strip().lower() in ("max", "min", "median"))
    if explicit:
        valuation_time, _ = resolve_valuation_time(opts.valuation_time, None, source, "-")
    else:
        # the format carries tau but no timestamps: only the bundled chain's date is known (from its source)
        valuation_time = pd.Timestamp(DEMO_VALUATION_TIME if is_demo else "1970-01-01T00:00:00+00:00")
    tau = numeric(frame, "ttm_years", source)
    forward = numeric(frame, "forward", source)
    strike = numeric(frame, "strike", source)
    discount = numeric(frame, "discount_factor", source)
    cp = option_types(frame, "option_type", source)
    bid_iv = numeric(frame, "bid_iv", source)
    ask_iv = numeric(frame, "ask_iv", source)
    slices = frame["slice_id"].astype("string").fillna("?").to_numpy()
    with np.errstate(all="ignore"):
        # expiry = valuation time + tau (ACT/365F), NaT (status invalid) outside datetime64[ns] (1677-2262)
        ns = valuation_time.value + np.round(tau * 365.0 * 86400.0) * 1e9
        representable = np.isfinite(ns) & (np.abs(ns) < 9.2e18)
        good_iv = lambda v: np.where(v > 0, v, np.nan)  # noqa: E731
    expiry = pd.DatetimeIndex(np.where(representable, ns, 0).astype(np.int64).view("datetime64[ns]"))
    expiry = expiry.tz_localize("UTC").where(representable, pd.NaT)
    cp_safe = np.where(cp == 0, 1, cp)
    canonical = pd.DataFrame(
        {
            "instrument": [
                f"{name}-{s}-{K:g}-{'C' if c > 0 else 'P' if c < 0 else '?'}"
                for s, K, c in zip(slices, strike, cp, strict=True)
            ],
            "expiry": expiry,
            "strike": strike,
            "cp": cp,
            "bid": prices_from_iv(bid_iv, forward, strike, tau, cp_safe, discount),
            "ask": prices_from_iv(ask_iv, forward, strike, tau, cp_safe, discount),
            "forward": forward,
            "discount_factor": discount,
        }
    )
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="bidask_iv",
        premium_note="premiums computed from the file's bid/ask implied vols with Black-76",
        tau=tau,
        bid_iv=good_iv(bid_iv),
        ask_iv=good_iv(ask_iv),
        source_row=frame.index.to_numpy() + 1,
        extra_attrs={
            "valuation_time_note": "given explicitly; tau as given" if explicit
            else "date from the source; time of day unknown, tau as given" if is_demo
            else "the file has no timestamps: valuation time is a placeholder (epoch), tau as given"
        },
    )


KNOWN_FORMATS: tuple[ChainFormat, ...] = (
    ChainFormat(
        "cboe_quote_table",
        "CBOE delayed quote table download (line 1 'ROOT (NAME),spot,change', line 2 'Mon DD YYYY @ HH:MM ET', "
        "header 'Calls,Last Sale,Net,Bid,Ask,Vol,Open Int,Puts,...'; call and put per row; index points)",
        frozenset(),
        read_cboe_quote_table,
        sniff_cboe,
    ),
    ChainFormat(
        "deribit_snapshot",
        "Deribit book-summary snapshot (timestamp, instrument_name, underlying, option_type, strike, "
        "expiry_datetime, bid_price, ask_price, currency; premiums in coin units)",
        frozenset({"timestamp", "instrument_name", "underlying", "option_type", "strike", "expiry_datetime",
                   "bid_price", "ask_price", "currency"}),
        read_deribit_snapshot,
    ),
    ChainFormat(
        "deribit_ticker",
        "Deribit public/ticker dump (" + ", ".join(TICKER_COLUMNS) + "; ms epoch times, premiums in coin units, "
        "IVs in percent, missing sides as 0.0)",
        frozenset(TICKER_COLUMNS),
        read_deribit_ticker,
    ),
    ChainFormat(
        "deribit_book_summary",
        "Deribit get_book_summary_by_currency dump (" + ", ".join(BOOK_SUMMARY_COLUMNS) + "; premiums in coin "
        "units, expire_date DDMMMYY at 08:00 UTC, no IVs)",
        frozenset(BOOK_SUMMARY_COLUMNS),
        read_deribit_book_summary,
    ),
    ChainFormat(
        "tardis_options_chain",
        "Tardis.dev options_chain CSV (" + ", ".join(TARDIS_REQUIRED) + ", ...; microsecond epoch times, IVs in "
        "percent)",
        frozenset(TARDIS_REQUIRED),
        read_tardis_options_chain,
    ),
    ChainFormat(
        "bidask_iv",
        "bid/ask implied-vol chain (slice_id, ttm_years, forward, discount_factor, strike, option_type, "
        "bid_iv, ask_iv; vols decimal)",
        frozenset({"slice_id", "ttm_years", "forward", "discount_factor", "strike", "option_type", "bid_iv", "ask_iv"}),
        read_bidask_iv,
    ),
)

GENERIC_FORMAT = ChainFormat(
    "generic",
    "any CSV with a column map (column_map= a TOML file or dict, or <file stem>.columns.toml next to the file)",
    frozenset(),
    read_generic,
)


def _known_list() -> str:
    return "\n".join(f"  - {f.name}: {f.description}" for f in (*KNOWN_FORMATS, GENERIC_FORMAT))


def detect_format(columns: list[str] | pd.Index, source: str = "<columns>") -> ChainFormat:
    """Return the known column-identified format whose identifying columns are all present.

    Raises
    ------
    UnknownFormatError
        Listing every known format and its columns when none matches.
    """
    present = {str(c).strip() for c in columns}
    for fmt in KNOWN_FORMATS:
        if fmt.sniff is None and fmt.required_columns <= present:
            return fmt
    raise UnknownFormatError(
        f"{source}: columns {sorted(present)} match no known chain format. Known formats:\n{_known_list()}"
    )


def _head_lines(path: Path, n: int = 3) -> list[str]:
    try:
        with path.open("r", encoding="utf-8", newline="") as handle:
            return [handle.readline().rstrip("\r\n") for _ in range(n)]
    except UnicodeDecodeError as exc:
        raise QuoteValidationError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_chain(
    path: str | Path,
    underlying: str | None = None,
    *,
    valuation_time: str | pd.Timestamp | datetime | None = None,
    stale_after_seconds: float | None = DEFAULT_STALE_AFTER_SECONDS,
    column_map: str | Path | dict[str, Any] | None = None,
    min_parity_pairs: int = 3,
) -> xr.Dataset:
    """Read an option-chain file into the canonical quotes Dataset (format detected from the file).

    Parameters
    ----------
    path : str or Path
        CSV file (``#`` comment lines are skipped, except in CBOE quote tables).
    underlying : str, optional
        Underlying to keep (e.g. ``"BTC"``); required when the file holds several.
    valuation_time : {"max", "median", "min"}, timestamp or None
        Valuation-time policy for files whose rows carry their own times (default ``"max"``: the
        latest row time), or an explicit timezone-aware time. Formats with one time (CBOE line 2)
        use it unless an explicit time is given.
    stale_after_seconds : float or None, default 300
        Quotes whose own time is more than this many seconds from the valuation time (or unknown)
        get status ``stale``; ``None`` disables the check. Formats without row times skip it.
    column_map : str, Path or dict, optional
        Column map for the generic reader (:mod:`bayescal.market.generic`). Without it, a file
        ``<stem>.columns.toml`` next to ``path`` is used if present.
    min_parity_pairs : int, default 3
        Minimum two-sided call/put pairs for a put-call-parity forward (CBOE, generic without forwards).

    Returns
    -------
    xarray.Dataset
        See :func:`bayescal.market.quotes.make_quotes` and ``docs/data.md``. Source statuses
        (``invalid``, ``expired``, ``duplicate``, ``stale``, ``capped_iv``, ``no_forward``, ...) are
        set; the filter statuses are assigned by :func:`bayescal.market.filters.filter_quotes`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    UnknownFormatError
        If the file matches no known format (the message lists them).
    QuoteValidationError
        For structural problems (malformed CSV, missing underlying, several underlyings, ...);
        its subclass ``QuoteParseError`` names the column and data rows of unparseable values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chain file {path} does not exist")
    if column_map is None:
        sidecar = path.with_name(f"{path.stem}.columns.toml")
        column_map = sidecar if sidecar.is_file() else None
    if isinstance(column_map, str | Path):
        from bayescal.market.generic import load_column_map

        column_map = load_column_map(column_map)
    opts = ReadOptions(underlying=underlying, valuation_time=valuation_time, stale_after_seconds=stale_after_seconds,
                       column_map=column_map, min_parity_pairs=min_parity_pairs)
    source = str(path)
    if column_map is None:
        head = _head_lines(path)
        for fmt in KNOWN_FORMATS:
            if fmt.sniff is not None and fmt.sniff(head):
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise QuoteValidationError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                        from None
                return fmt.reader(path, text, opts)
    frame = read_csv_text(path, source)
    if column_map is not None:
        return read_generic(path, frame, replace(opts, column_map=column_map))
    fmt = detect_format(frame.columns, source)
    return fmt.reader(path, frame, opts)


def bundled_demo_chain() -> Path:
    """Path of the bundled BTC bid/ask-IV demo chain (MIT, from the stochvolmodels package)."""
    return Path(str(resources.files("bayescal") / "data" / DEMO_CHAIN_NAME))
