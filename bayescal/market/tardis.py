"""Reader of Tardis.dev ``options_chain`` CSV files (https://docs.tardis.dev/downloadable-csv-files).

Documented columns: ``exchange, symbol, timestamp, local_timestamp, type, strike_price, expiration,
open_interest, last_price, bid_price, bid_amount, bid_iv, ask_price, ask_amount, ask_iv, mark_price,
mark_iv, underlying_index, underlying_price, delta, gamma, vega, theta, rho``. Times
(``timestamp``, ``local_timestamp``, ``expiration``) are microseconds since the epoch, UTC; IVs are
in percent; an empty cell means no value (e.g. no bid).

The file is a *stream*: one row per ticker update, many per symbol. The reader takes, for each
symbol, its latest row at or before the valuation time (default policy ``"max"``: the last
exchange ``timestamp`` in the file); earlier updates are superseded and rows after the valuation
time are ignored (both counted in attrs). The chosen rows' times are checked against the staleness
window (a symbol whose last update is older is ``stale``).

Premium units by venue (``PREMIUM_UNITS``): Deribit and OKX option premiums are in coin units
(inverse options), converted to the quote currency with x ``underlying_price`` (the forward); Deribit
``*_USDC`` / ``*_USDT`` linear options and the other venues quote in the quote currency already.
The discount factor is 1 (forward-measure premiums, as Deribit's own IVs assume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.conventions import QuoteStatus
from bayescal.errors import QuoteValidationError
from bayescal.market._parse import (
    ReadOptions,
    coin_to_quote,
    epoch_times,
    labels,
    numeric,
    option_types,
    resolve_valuation_time,
    select_underlying,
)
from bayescal.market.deribit import DERIBIT_IV_CAP_PERCENT
from bayescal.market.quotes import make_quotes

TARDIS_COLUMNS = ("exchange", "symbol", "timestamp", "local_timestamp", "type", "strike_price", "expiration",
                  "open_interest", "last_price", "bid_price", "bid_amount", "bid_iv", "ask_price", "ask_amount",
                  "ask_iv", "mark_price", "mark_iv", "underlying_index", "underlying_price", "delta", "gamma",
                  "vega", "theta", "rho")
#: identifying columns (the documented set minus greeks and sizes, which the reader does not need)
TARDIS_REQUIRED = ("exchange", "symbol", "timestamp", "local_timestamp", "type", "strike_price", "expiration",
                   "bid_price", "ask_price", "underlying_price")
#: premium units per Tardis exchange id: "coin" (x underlying_price) or "quote"
PREMIUM_UNITS = {"deribit": "coin", "okex-options": "coin", "okx-options": "coin", "bybit-options": "quote",
                 "binance-options": "quote", "binance-european-options": "quote", "huobi-dm-options": "coin"}
_LINEAR_SUFFIXES = ("_USDC", "_USDT")


def _underlying_of(symbols: np.ndarray) -> np.ndarray:
    return np.array([str(s).split("-", 1)[0].upper() for s in symbols], dtype=object)


def read_tardis_options_chain(path: Path, frame: pd.DataFrame, opts: ReadOptions) -> xr.Dataset:
    """Read a Tardis.dev ``options_chain`` CSV (module docstring for the conventions).

    Raises
    ------
    QuoteParseError
        For unparseable values (column and data rows named).
    QuoteValidationError
        For an exchange with unknown premium units, several underlyings without ``underlying``,
        or no row at or before the valuation time.
    """
    source = str(path)
    symbols = labels(frame, "symbol", source)
    frame, name = select_underlying(frame, _underlying_of(symbols), opts.underlying, source)
    times = epoch_times(frame, "timestamp", "us", source)
    valuation_time, policy = resolve_valuation_time(opts.valuation_time, times, source, "timestamp")
    exchange = pd.Series(labels(frame, "exchange", source), index=frame.index).str.lower()
    unknown = sorted(set(exchange) - set(PREMIUM_UNITS))
    if unknown:
        raise QuoteValidationError(f"{source}: exchange(s) {unknown} have no known premium units; known: "
                                   f"{sorted(PREMIUM_UNITS)}")
    symbol = pd.Series(labels(frame, "symbol", source), index=frame.index)
    # the stream -> one row per symbol: the latest at or before the valuation time (NaT rows kept: stale)
    t_ns = pd.Series(pd.array(times.asi8, dtype="Int64"), index=frame.index)
    t_ns[times.isna()] = pd.NA
    future = (t_ns > valuation_time.value).fillna(False).to_numpy(bool)
    latest = t_ns.where(~future).groupby(symbol).transform("max")
    keep = ~future & (t_ns.isna() | (t_ns == latest)).fillna(False).to_numpy(bool)
    n_superseded = int((~future & ~keep).sum())
    frame, times, exchange, symbol = frame[keep], times[keep], exchange[keep], symbol[keep]
    if len(frame) == 0:
        raise QuoteValidationError(f"{source}: no {name} row at or before the valuation time {valuation_time}")

    forward = numeric(frame, "underlying_price", source)
    linear = symbol.str.upper().str.contains("|".join(_LINEAR_SUFFIXES)).to_numpy()
    coin = (exchange.map(PREMIUM_UNITS) == "coin").to_numpy() & ~linear
    scale = np.where(coin, forward, 1.0)  # coin premiums x forward, others x 1
    venue = {c: numeric(frame, c, source) if c in frame else np.full(len(frame), np.nan)
             for c in ("bid_iv", "ask_iv", "mark_iv")}
    with np.errstate(invalid="ignore"):
        capped = (exchange == "deribit").to_numpy() & ((venue["bid_iv"] >= DERIBIT_IV_CAP_PERCENT)
                                                       | (venue["ask_iv"] >= DERIBIT_IV_CAP_PERCENT))
        venue_dec = {c: np.where(v > 0, v / 100.0, np.nan) for c, v in venue.items()}
    canonical = pd.DataFrame(
        {
            "instrument": symbol.to_numpy(dtype=object),
            "expiry": epoch_times(frame, "expiration", "us", source),
            "strike": numeric(frame, "strike_price", source),
            "cp": option_types(frame, "type", source),
            "bid": coin_to_quote(numeric(frame, "bid_price", source), scale),
            "ask": coin_to_quote(numeric(frame, "ask_price", source), scale),
            "forward": forward,
            "discount_factor": np.ones(len(frame)),
        }
    )
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="tardis_options_chain",
        premium_note="coin-unit premiums (Deribit/OKX inverse options) x underlying_price; linear options and "
        "other venues as quoted; forward-measure premiums, D = 1",
        status=np.where(capped, QuoteStatus.CAPPED_IV, QuoteStatus.OK),
        quote_time=times,
        stale_after_seconds=opts.stale_after_seconds,
        source_row=frame.index.to_numpy() + 1,
        extra_vars={
            "venue_bid_iv": (venue_dec["bid_iv"], {"units": "decimal", "description": "Tardis bid_iv / 100"}),
            "venue_ask_iv": (venue_dec["ask_iv"], {"units": "decimal", "description": "Tardis ask_iv / 100"}),
            "venue_mark_iv": (venue_dec["mark_iv"], {"units": "decimal", "description": "Tardis mark_iv / 100"}),
        },
        extra_attrs={
            "valuation_time_policy": policy,
            "superseded_updates": n_superseded,
            "updates_after_valuation_time": int(future.sum()),
            "exchanges": sorted(set(exchange)),
        },
    )
