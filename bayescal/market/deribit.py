"""Readers of Deribit dumps: ``public/ticker`` rows (BTC 2020) and book-summary rows (ETH 2024).

Deribit options are inverse (coin-settled): premiums are quoted in coin units; the USD premium is
coin premium x ``underlying_price`` (the forward of the expiry), which is the forward-measure
Black-76 value, so the discount factor is 1 (as for the snapshot format, ``docs/data.md``).
Expiries are at 08:00 UTC. Venue implied vols are in percent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.conventions import QuoteStatus
from bayescal.market._parse import (
    QuoteParseError,
    ReadOptions,
    coin_to_quote,
    data_rows,
    deribit_expiry,
    epoch_times,
    labels,
    numeric,
    option_types,
    resolve_valuation_time,
    select_underlying,
)
from bayescal.market.quotes import elapsed_seconds, make_quotes

#: Deribit caps displayed implied vols at this value (percent) when a side is far from fair value
DERIBIT_IV_CAP_PERCENT = 500.0

TICKER_COLUMNS = ("instrument_name", "expiration_timestamp", "option_type", "strike", "underlying_price",
                  "timestamp", "best_bid_price", "best_ask_price", "bid_iv", "ask_iv", "mark_iv")
BOOK_SUMMARY_COLUMNS = ("instrument_name", "creation_timestamp", "expire_date", "strike_price", "option_type",
                        "underlying_price", "bid_price", "ask_price", "base_currency")

PREMIUM_NOTE = "Deribit coin premium x forward (underlying_price) = USD forward-measure premium"


def _prefix(names: np.ndarray) -> np.ndarray:
    return np.array([str(n).split("-", 1)[0] for n in names], dtype=object)


def _literal_dicts(frame: pd.DataFrame, column: str, source: str) -> list[dict]:
    """Python dict reprs (``{'vega': 5.49, ...}``) parsed with :func:`ast.literal_eval` (never ``eval``).

    Raises
    ------
    QuoteParseError
        Naming the rows whose text is not a dict literal.
    """
    out: list[dict] = []
    bad = np.zeros(len(frame), bool)
    for i, text in enumerate(frame[column].tolist()):
        if text is None or (isinstance(text, float) and np.isnan(text)) or text is pd.NA:
            out.append({})
            continue
        try:
            value = ast.literal_eval(str(text))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = None
        if not isinstance(value, dict):
            bad[i] = True
            out.append({})
            continue
        out.append(value)
    if bad.any():
        raise QuoteParseError(source, column, data_rows(frame.index, bad), "text that is not a Python dict literal",
                              frame[column][bad].tolist())
    return out


def _dict_field(dicts: list[dict], key: str) -> np.ndarray:
    values = []
    for d in dicts:
        v = d.get(key)
        values.append(float(v) if isinstance(v, int | float) and not isinstance(v, bool) else np.nan)
    return np.asarray(values, float)


def read_deribit_ticker(path: Path, frame: pd.DataFrame, opts: ReadOptions) -> xr.Dataset:
    """Read a dump of Deribit ``public/ticker`` rows (``deribit_btc_options_20200514.csv``).

    Conversions: USD premium = ``best_bid_price``/``best_ask_price`` (BTC) x ``underlying_price``;
    a side written as 0.0 is missing (status ``no_bid``/``no_ask``); expiry from
    ``expiration_timestamp`` (ms epoch, UTC); the row time from ``timestamp`` (ms epoch). The rows
    were queried one after another (about 2.5 minutes): the valuation time follows
    ``opts.valuation_time`` (default ``"max"``, the last row time, so no quote postdates it), and a
    quote more than ``opts.stale_after_seconds`` from it is ``stale``. A venue IV of 500 (percent)
    on either side is Deribit's cap (status ``capped_iv``). ``greeks`` and ``stats`` are Python dict
    reprs, parsed with :func:`ast.literal_eval`; venue vols and greeks are kept as ``venue_*``
    variables (decimal vols). Implied vols used downstream are our own (Black-76 on the USD premiums).

    Raises
    ------
    QuoteParseError, QuoteValidationError
        For unparseable values (column and rows named) or no rows of the chosen underlying.
    """
    source = str(path)
    names = labels(frame, "instrument_name", source)
    frame, name = select_underlying(frame, _prefix(names), opts.underlying, source)
    times = epoch_times(frame, "timestamp", "ms", source)
    valuation_time, policy = resolve_valuation_time(opts.valuation_time, times, source, "timestamp")
    forward = numeric(frame, "underlying_price", source)
    venue = {c: numeric(frame, c, source) for c in ("bid_iv", "ask_iv", "mark_iv")}
    greeks = _literal_dicts(frame, "greeks", source) if "greeks" in frame else [{}] * len(frame)
    stats = _literal_dicts(frame, "stats", source) if "stats" in frame else [{}] * len(frame)
    with np.errstate(invalid="ignore"):
        capped = (venue["ask_iv"] >= DERIBIT_IV_CAP_PERCENT) | (venue["bid_iv"] >= DERIBIT_IV_CAP_PERCENT)
    canonical = pd.DataFrame(
        {
            "instrument": labels(frame, "instrument_name", source),
            "expiry": epoch_times(frame, "expiration_timestamp", "ms", source),
            "strike": numeric(frame, "strike", source),
            "cp": option_types(frame, "option_type", source),
            "bid": coin_to_quote(numeric(frame, "best_bid_price", source), forward),
            "ask": coin_to_quote(numeric(frame, "best_ask_price", source), forward),
            "forward": forward,
            "discount_factor": np.ones(len(frame)),
        }
    )

    def venue_iv(values):
        with np.errstate(invalid="ignore"):
            return np.where(values > 0, values / 100.0, np.nan)

    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="deribit_ticker",
        premium_note=PREMIUM_NOTE,
        status=np.where(capped, QuoteStatus.CAPPED_IV, QuoteStatus.OK),
        quote_time=times,
        stale_after_seconds=opts.stale_after_seconds,
        source_row=frame.index.to_numpy() + 1,
        extra_vars={
            "venue_bid_iv": (venue_iv(venue["bid_iv"]), {"units": "decimal", "description": "Deribit bid_iv / 100"}),
            "venue_ask_iv": (venue_iv(venue["ask_iv"]), {"units": "decimal", "description": "Deribit ask_iv / 100"}),
            "venue_mark_iv": (venue_iv(venue["mark_iv"]), {"units": "decimal", "description": "Deribit mark_iv/100"}),
            "venue_delta": (_dict_field(greeks, "delta"), {"description": "Deribit greeks['delta']"}),
            "venue_vega": (_dict_field(greeks, "vega"), {"units": "USD per vol point", "description":
                                                         "Deribit greeks['vega']"}),
            "volume_24h": (_dict_field(stats, "volume"), {"units": "contracts", "description": "stats['volume']"}),
        },
        extra_attrs={
            "valuation_time_policy": policy,
            "timestamp_spread_seconds": float(elapsed_seconds(times.min(), [times.max()])[0])
            if times.notna().any() else 0.0,
            "capped_iv_rule": f"venue bid_iv or ask_iv >= {DERIBIT_IV_CAP_PERCENT} (percent)",
        },
    )


def read_deribit_book_summary(path: Path, frame: pd.DataFrame, opts: ReadOptions) -> xr.Dataset:
    """Read a dump of Deribit ``public/get_book_summary_by_currency`` option rows (``deribit_eth_options_*.csv``).

    Conversions: USD premium = ``bid_price``/``ask_price`` (coin) x ``underlying_price``; an empty
    side is missing; expiry = ``expire_date`` (``26JAN24``) at 08:00 UTC; strike ``strike_price``
    (USD); option type ``C``/``P``; row time ``creation_timestamp`` (ms epoch); valuation time and
    staleness as :func:`read_deribit_ticker`. The file has no implied vols: all are inverted from
    the USD premiums (Black-76, D = 1). The underlying is ``base_currency``.

    Raises
    ------
    QuoteParseError, QuoteValidationError
        For unparseable values (column and rows named) or no rows of the chosen underlying.
    """
    source = str(path)
    frame, name = select_underlying(frame, labels(frame, "base_currency", source), opts.underlying, source)
    times = epoch_times(frame, "creation_timestamp", "ms", source)
    valuation_time, policy = resolve_valuation_time(opts.valuation_time, times, source, "creation_timestamp")
    forward = numeric(frame, "underlying_price", source)
    canonical = pd.DataFrame(
        {
            "instrument": labels(frame, "instrument_name", source),
            "expiry": deribit_expiry(frame["expire_date"], frame.index, source, "expire_date"),
            "strike": numeric(frame, "strike_price", source),
            "cp": option_types(frame, "option_type", source),
            "bid": coin_to_quote(numeric(frame, "bid_price", source), forward),
            "ask": coin_to_quote(numeric(frame, "ask_price", source), forward),
            "forward": forward,
            "discount_factor": np.ones(len(frame)),
        }
    )
    extra = {}
    if "mark_price" in frame:
        extra["venue_mark_price"] = (coin_to_quote(numeric(frame, "mark_price", source), forward),
                                     {"units": "quote currency", "description": "Deribit mark_price x forward"})
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="deribit_book_summary",
        premium_note=PREMIUM_NOTE,
        quote_time=times,
        stale_after_seconds=opts.stale_after_seconds,
        source_row=frame.index.to_numpy() + 1,
        extra_vars=extra,
        extra_attrs={
            "valuation_time_policy": policy,
            "timestamp_spread_seconds": float(elapsed_seconds(times.min(), [times.max()])[0])
            if times.notna().any() else 0.0,
            "expiry_convention": "expire_date at 08:00 UTC",
        },
    )
