"""The canonical quotes ``xarray.Dataset`` (one flat ``quote`` dimension; chains are ragged).

Every reader in :mod:`bayescal.market.io` ends in :func:`make_quotes`, so every chain, whatever its
venue, comes out with the same variables, units and attrs (see :mod:`bayescal.conventions`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.conventions import DAY_COUNT, QUOTE_DIM, SECONDS_PER_YEAR, IVStatus, QuoteStatus
from bayescal.errors import QuoteValidationError
from bayescal.market.implied_vol import black76_price, implied_vol_black76

#: columns a reader must hand to :func:`make_quotes`
CANONICAL_COLUMNS = ("instrument", "expiry", "strike", "cp", "bid", "ask", "forward", "discount_factor")


def year_fraction(start: pd.Timestamp, end: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Year fraction from ``start`` to each ``end`` under ACT/365F, to the second.

    Parameters
    ----------
    start : pandas.Timestamp
        Timezone-aware valuation time.
    end : Series or DatetimeIndex of timezone-aware timestamps, shape (n,)
        Expiry times.

    Returns
    -------
    numpy.ndarray, shape (n,)
        ``(end - start).total_seconds() / (365 * 86400)``; negative for past expiries.

    Raises
    ------
    QuoteValidationError
        If either side is timezone-naive (a naive timestamp is ambiguous by hours, which is a
        large error for short-dated crypto options).
    """
    end_index = pd.DatetimeIndex(end)
    if start.tzinfo is None or end_index.tz is None:
        raise QuoteValidationError(
            f"year_fraction needs timezone-aware timestamps (got valuation_time={start!r}, "
            f"expiry tz={end_index.tz!r})"
        )
    seconds = (end_index - start).total_seconds()
    return np.asarray(seconds, dtype=float) / SECONDS_PER_YEAR


def make_quotes(
    frame: pd.DataFrame,
    *,
    valuation_time: pd.Timestamp,
    underlying: str,
    source: str,
    fmt: str,
    premium_note: str,
    tau: np.ndarray | None = None,
    bid_iv: np.ndarray | None = None,
    ask_iv: np.ndarray | None = None,
    extra_attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Build the canonical quotes Dataset from a reader's normalised frame.

    Parameters
    ----------
    frame : pandas.DataFrame, n rows
        Columns :data:`CANONICAL_COLUMNS`: ``instrument`` (str), ``expiry`` (tz-aware UTC),
        ``strike`` and ``forward`` (quote currency), ``cp`` (+1/-1), ``bid``/``ask`` (discounted
        premium in quote currency, NaN where the side is missing), ``discount_factor``.
    valuation_time : pandas.Timestamp
        Timezone-aware time the quotes refer to.
    underlying, source, fmt, premium_note : str
        Recorded in attrs (``premium_note`` says how premiums were converted to quote currency).
    tau : array, shape (n,), optional
        Time to expiry in years when the file gives it and no timestamps exist; otherwise tau is
        ACT/365F from ``valuation_time`` to ``expiry``.
    bid_iv, ask_iv : array, shape (n,), optional
        Implied vols given by the source (decimal). When absent they are inverted from the prices.
    extra_attrs : dict, optional
        More attrs (JSON-serialisable values are stored as JSON strings).

    Returns
    -------
    xarray.Dataset
        Dimension ``quote``. Variables: ``instrument, underlying, expiry, strike, cp, bid, ask, mid,
        spread, forward, discount_factor, tau, k, norm_mid, bid_iv, ask_iv, mid_iv, iv_status,
        status``. Every quote starts with ``status = OK``; :func:`bayescal.market.filters.filter_quotes`
        assigns the exclusion codes. Attrs: ``valuation_time`` (ISO 8601 UTC), ``underlying``,
        ``source``, ``format``, ``day_count``, ``premium_note``, ``filter_report`` (JSON, empty).

    Raises
    ------
    QuoteValidationError
        If a canonical column is missing or the frame is empty.
    """
    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise QuoteValidationError(f"{source}: reader produced no column(s) {missing}")
    if len(frame) == 0:
        raise QuoteValidationError(f"{source}: no {underlying} quotes in the file")
    frame = frame.reset_index(drop=True)
    expiry = pd.DatetimeIndex(frame["expiry"])
    tau_values = year_fraction(valuation_time, expiry) if tau is None else np.asarray(tau, float)
    strike = frame["strike"].to_numpy(float)
    forward = frame["forward"].to_numpy(float)
    discount = frame["discount_factor"].to_numpy(float)
    cp = frame["cp"].to_numpy(np.int8)
    bid = frame["bid"].to_numpy(float)
    ask = frame["ask"].to_numpy(float)
    bid = np.where(bid > 0, bid, np.nan)
    ask = np.where(ask > 0, ask, np.nan)
    mid = 0.5 * (bid + ask)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.log(strike / forward)
        tau_safe = np.where(tau_values > 0, tau_values, np.nan)
    if bid_iv is None:
        bid_iv, _ = implied_vol_black76(bid, forward, strike, tau_safe, cp, discount)
    if ask_iv is None:
        ask_iv, _ = implied_vol_black76(ask, forward, strike, tau_safe, cp, discount)
    mid_iv, iv_status = implied_vol_black76(mid, forward, strike, tau_safe, cp, discount)

    dims = (QUOTE_DIM,)
    data = {
        "instrument": (dims, frame["instrument"].astype(str).to_numpy()),
        "underlying": (dims, np.full(len(frame), underlying)),
        "expiry": (dims, expiry.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]")),
        "strike": (dims, strike, {"units": "quote currency"}),
        "cp": (dims, cp, {"description": "+1 call, -1 put"}),
        "bid": (dims, bid, {"units": "quote currency", "description": "discounted premium"}),
        "ask": (dims, ask, {"units": "quote currency"}),
        "mid": (dims, mid, {"units": "quote currency"}),
        "spread": (dims, ask - bid, {"units": "quote currency"}),
        "forward": (dims, forward, {"units": "quote currency"}),
        "discount_factor": (dims, discount),
        "tau": (dims, tau_values, {"units": "years", "day_count": DAY_COUNT}),
        "k": (dims, k, {"description": "log-moneyness ln(strike/forward)"}),
        "norm_mid": (dims, mid / (discount * forward), {"description": "mid / (discount_factor * forward)"}),
        "bid_iv": (dims, np.asarray(bid_iv, float), {"units": "decimal"}),
        "ask_iv": (dims, np.asarray(ask_iv, float), {"units": "decimal"}),
        "mid_iv": (dims, np.asarray(mid_iv, float), {"units": "decimal", "description": "Black-76 IV of mid"}),
        "iv_status": (dims, np.asarray(iv_status, np.int8), {"codes": _codes_attr_iv()}),
        "status": (dims, np.zeros(len(frame), np.int8), {"codes": _codes_attr()}),
    }
    attrs = {
        "valuation_time": valuation_time.tz_convert("UTC").isoformat(),
        "underlying": underlying,
        "source": source,
        "format": fmt,
        "day_count": DAY_COUNT,
        "tau_convention": "ACT/365F from valuation_time to expiry, to the second"
        if tau is None
        else "as given by the source file",
        "premium_note": premium_note,
        "filter_report": json.dumps([]),
    }
    for key, value in (extra_attrs or {}).items():
        attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    quotes = xr.Dataset(data, coords={QUOTE_DIM: np.arange(len(frame))}, attrs=attrs)
    quotes["expiry"].attrs["timezone"] = "UTC"
    return quotes


def _codes_attr() -> str:
    return json.dumps({s.name.lower(): int(s) for s in QuoteStatus})


def _codes_attr_iv() -> str:
    return json.dumps({s.name.lower(): int(s) for s in IVStatus})


def prices_from_iv(
    iv: np.ndarray, forward: np.ndarray, strike: np.ndarray, tau: np.ndarray, cp: np.ndarray, discount: np.ndarray
) -> np.ndarray:
    """Black-76 premiums (quote currency) for quotes given as implied vols; NaN where iv is missing.

    Thin wrapper of :func:`bayescal.market.implied_vol.black76_price` that keeps NaN vols NaN.
    """
    iv = np.asarray(iv, float)
    ok = np.isfinite(iv) & (iv > 0)
    price = black76_price(forward, strike, tau, np.where(ok, iv, 0.1), cp, discount)
    return np.where(ok, price, np.nan)
