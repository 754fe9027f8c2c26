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

from bayescal.conventions import DAY_COUNT, QUOTE_DIM, SECONDS_PER_YEAR, SOURCE_STATUSES, IVStatus, QuoteStatus
from bayescal.errors import QuoteValidationError
from bayescal.market.implied_vol import black76_price, implied_vol_black76

#: columns a reader must hand to :func:`make_quotes`
CANONICAL_COLUMNS = ("instrument", "expiry", "strike", "cp", "bid", "ask", "forward", "discount_factor")


#: the int64 overflow errors pandas raises for timestamp differences beyond about +-292 years
_TIME_OVERFLOW = (OverflowError, pd.errors.OutOfBoundsTimedelta, pd.errors.OutOfBoundsDatetime)
_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def elapsed_seconds(start: pd.Timestamp, end: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Seconds from ``start`` to each ``end`` as floats; NaN where ``end`` is missing (NaT).

    pandas subtracts timestamps in int64 nanoseconds, exact to the nanosecond, and raises
    ``OverflowError`` when a difference exceeds about 292 years, which a corrupted quote time can
    (e.g. -7.6e15 microseconds since the epoch, year 1728, against a 2020 valuation: found by the
    reader fuzz test). Such differences are computed from the epoch seconds in float64 instead
    (resolution about 0.3 microseconds at present-day dates); all others exactly as pandas does.

    Parameters
    ----------
    start : pandas.Timestamp
    end : Series or DatetimeIndex of timestamps, shape (n,)
        Same timezone-awareness as ``start``.

    Returns
    -------
    numpy.ndarray, shape (n,)

    Raises
    ------
    TypeError
        From pandas, if one side is timezone-aware and the other naive (:func:`year_fraction` checks
        this first and raises ``QuoteValidationError``).
    """
    end_index = pd.DatetimeIndex(end)
    try:
        return np.asarray((end_index - start).total_seconds(), dtype=float)
    except _TIME_OVERFLOW:
        start_index = pd.DatetimeIndex([start])
        epoch = end_index.asi8.astype(float) * _SECONDS_PER_UNIT[end_index.unit]
        epoch[end_index.isna()] = np.nan
        return epoch - float(start_index.asi8[0]) * _SECONDS_PER_UNIT[start_index.unit]


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
        ``(end - start)`` in seconds (:func:`elapsed_seconds`) ``/ (365 * 86400)``; negative for past
        expiries.

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
    return elapsed_seconds(start, end_index) / SECONDS_PER_YEAR


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
    status: np.ndarray | None = None,
    quote_time: pd.DatetimeIndex | None = None,
    stale_after_seconds: float | None = None,
    source_row: np.ndarray | None = None,
    extra_vars: dict[str, tuple[np.ndarray, dict[str, str]]] | None = None,
) -> xr.Dataset:
    """Build the canonical quotes Dataset from a reader's normalised frame, with the source statuses.

    Parameters
    ----------
    frame : pandas.DataFrame, n rows
        Columns :data:`CANONICAL_COLUMNS`: ``instrument`` (str), ``expiry`` (tz-aware, NaT allowed),
        ``strike`` and ``forward`` (quote currency), ``cp`` (+1 call / -1 put / 0 unknown), ``bid``/``ask``
        (discounted premium in quote currency; NaN or <= 0 where the side is missing),
        ``discount_factor``.
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
        More attrs (values that are not str/int/float are stored as JSON strings).
    status : array of int, shape (n,), optional
        Source statuses set by the reader (``NO_FORWARD``, ``CAPPED_IV``); 0 elsewhere.
    quote_time : DatetimeIndex (UTC), shape (n,), optional
        Each row's own time (NaT where unknown), for the staleness check and duplicate resolution.
    stale_after_seconds : float, optional
        Staleness window: a quote whose time is missing or more than this many seconds away from
        ``valuation_time`` (either side) gets status ``STALE``. ``None``: no check.
    source_row : array of int, shape (n,), optional
        1-based data row of each quote in the file (defaults to 1..n).
    extra_vars : dict, optional
        More per-quote variables, ``name -> (values, attrs)``.

    Returns
    -------
    xarray.Dataset
        Dimension ``quote``. Variables: ``instrument, underlying, expiry, strike, cp, bid, ask, mid,
        spread, forward, discount_factor, tau, k, norm_mid, bid_iv, ask_iv, mid_iv, iv_status,
        bid_iv_status, ask_iv_status, quote_time, source_row, arb_flags, status`` (plus
        ``extra_vars``); every variable is documented in ``docs/data.md``. ``status`` holds the
        source statuses, in this precedence: ``INVALID`` (strike, forward, discount factor or tau
        missing / non-finite / <= 0 where it must be positive, ``k`` not finite (strike / forward
        under- or overflows), expiry or option type unknown), ``EXPIRED``
        (tau < 0), ``NON_POSITIVE_TAU`` (tau == 0), ``DUPLICATE`` (same expiry, strike and call/put
        as a later or newer row), ``STALE``, then the reader's ``status``; every other quote is
        ``OK`` until :func:`bayescal.market.filters.filter_quotes` runs. Attrs: ``valuation_time``
        (ISO 8601 UTC), ``underlying``, ``source``, ``format``, ``day_count``, ``premium_note``,
        ``read_report`` (JSON: quotes per source status), ``filter_report`` (JSON, empty).

    Raises
    ------
    QuoteValidationError
        If a canonical column is missing, the frame is empty, or ``valuation_time`` is naive.
    """
    missing = [c for c in CANONICAL_COLUMNS if c not in frame.columns]
    if missing:
        raise QuoteValidationError(f"{source}: reader produced no column(s) {missing}")
    if len(frame) == 0:
        raise QuoteValidationError(f"{source}: no {underlying} quotes in the file")
    n = len(frame)
    frame = frame.reset_index(drop=True)
    expiry = pd.DatetimeIndex(frame["expiry"])
    tau_values = year_fraction(valuation_time, expiry) if tau is None else np.asarray(tau, float)
    strike = frame["strike"].to_numpy(float)
    forward = frame["forward"].to_numpy(float)
    discount = frame["discount_factor"].to_numpy(float)
    cp = frame["cp"].to_numpy(np.int8)
    cp_safe = np.where(cp == 0, 1, cp)
    with np.errstate(all="ignore"):  # extreme inputs (1e308, inf) become NaN / statuses, never warnings
        bid = frame["bid"].to_numpy(float)
        ask = frame["ask"].to_numpy(float)
        bid = np.where(bid > 0, bid, np.nan)
        ask = np.where(ask > 0, ask, np.nan)
        mid = 0.5 * bid + 0.5 * ask
        spread = ask - bid
        positive = (strike > 0) & (forward > 0) & (discount > 0)
        k = np.where(positive, np.log(np.where(positive, strike / forward, 1.0)), np.nan)
        k[~np.isfinite(k)] = np.nan
        tau_safe = np.where(tau_values > 0, tau_values, np.nan)
        norm_mid = np.where(positive, mid / np.where(positive, discount * forward, 1.0), np.nan)
    if bid_iv is None:
        bid_iv, bid_iv_status = implied_vol_black76(bid, forward, strike, tau_safe, cp_safe, discount)
    else:
        bid_iv = np.asarray(bid_iv, float)
        bid_iv_status = np.where(np.isfinite(bid_iv), IVStatus.OK, IVStatus.NOT_FINITE).astype(np.int8)
    if ask_iv is None:
        ask_iv, ask_iv_status = implied_vol_black76(ask, forward, strike, tau_safe, cp_safe, discount)
    else:
        ask_iv = np.asarray(ask_iv, float)
        ask_iv_status = np.where(np.isfinite(ask_iv), IVStatus.OK, IVStatus.NOT_FINITE).astype(np.int8)
    mid_iv, iv_status = implied_vol_black76(mid, forward, strike, tau_safe, cp_safe, discount)

    times = pd.DatetimeIndex(quote_time) if quote_time is not None else pd.DatetimeIndex([pd.NaT] * n, tz="UTC")
    codes = _source_statuses(
        strike=strike, forward=forward, discount=discount, cp=cp, tau=tau_values, expiry=expiry, k=k,
        times=times, has_times=quote_time is not None, valuation_time=valuation_time,
        stale_after_seconds=stale_after_seconds, reader_status=status,
    )
    rows = np.arange(1, n + 1) if source_row is None else np.asarray(source_row, np.int64)

    dims = (QUOTE_DIM,)
    data = {
        "instrument": (dims, frame["instrument"].astype(str).to_numpy()),
        "underlying": (dims, np.full(n, underlying)),
        "expiry": (dims, expiry.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]")),
        "strike": (dims, strike, {"units": "quote currency"}),
        "cp": (dims, cp, {"description": "+1 call, -1 put, 0 unknown (status invalid)"}),
        "bid": (dims, bid, {"units": "quote currency", "description": "discounted premium"}),
        "ask": (dims, ask, {"units": "quote currency"}),
        "mid": (dims, mid, {"units": "quote currency"}),
        "spread": (dims, spread, {"units": "quote currency"}),
        "forward": (dims, forward, {"units": "quote currency"}),
        "discount_factor": (dims, discount),
        "tau": (dims, tau_values, {"units": "years", "day_count": DAY_COUNT}),
        "k": (dims, k, {"description": "log-moneyness ln(strike/forward)"}),
        "norm_mid": (dims, norm_mid, {"description": "mid / (discount_factor * forward)"}),
        "bid_iv": (dims, np.asarray(bid_iv, float), {"units": "decimal"}),
        "ask_iv": (dims, np.asarray(ask_iv, float), {"units": "decimal"}),
        "mid_iv": (dims, np.asarray(mid_iv, float), {"units": "decimal", "description": "Black-76 IV of mid"}),
        "iv_status": (dims, np.asarray(iv_status, np.int8), {"codes": _codes_attr_iv(), "of": "mid"}),
        "bid_iv_status": (dims, np.asarray(bid_iv_status, np.int8), {"codes": _codes_attr_iv()}),
        "ask_iv_status": (dims, np.asarray(ask_iv_status, np.int8), {"codes": _codes_attr_iv()}),
        "quote_time": (dims, times.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]"),
                       {"timezone": "UTC", "description": "the row's own time (NaT if the source has none)"}),
        "source_row": (dims, rows, {"description": "1-based data row of the quote in the source file"}),
        "arb_flags": (dims, np.zeros(n, np.int8), {"description": "static-arbitrage flags (bitmask), set by "
                                                   "filter_quotes: 1 vertical, 2 butterfly, 4 calendar"}),
        "status": (dims, codes, {"codes": _codes_attr()}),
    }
    for name, (values, var_attrs) in (extra_vars or {}).items():
        data[name] = (dims, np.asarray(values), var_attrs)
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
        "stale_after_seconds": "none" if stale_after_seconds is None else float(stale_after_seconds),
        "read_report": json.dumps(_count_names(codes)),
        "filter_report": json.dumps([]),
    }
    for key, value in (extra_attrs or {}).items():
        attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    quotes = xr.Dataset(data, coords={QUOTE_DIM: np.arange(n)}, attrs=attrs)
    quotes["expiry"].attrs["timezone"] = "UTC"
    return quotes


def _count_names(codes: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(codes, return_counts=True)
    return {QuoteStatus(int(v)).name.lower(): int(c) for v, c in zip(values, counts, strict=True)}


def _source_statuses(*, strike, forward, discount, cp, tau, expiry, k, times, has_times, valuation_time,
                     stale_after_seconds, reader_status) -> np.ndarray:
    """Source statuses in precedence order (first reason wins); see :func:`make_quotes`."""
    n = strike.size
    codes = np.zeros(n, np.int8)

    def assign(mask: np.ndarray, code: QuoteStatus) -> None:
        codes[(codes == QuoteStatus.OK) & mask] = code

    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(strike) & (strike > 0) & np.isfinite(forward) & (forward > 0)
                    & np.isfinite(discount) & (discount > 0) & np.isfinite(tau) & np.isfinite(k)) \
            | (cp == 0) | expiry.isna()
        assign(invalid, QuoteStatus.INVALID)
        assign(tau < 0, QuoteStatus.EXPIRED)
        assign(tau == 0, QuoteStatus.NON_POSITIVE_TAU)
    # duplicates: same (expiry, strike, cp); the newest row wins (ties: the later row in the file)
    live = np.flatnonzero(codes == QuoteStatus.OK)
    if live.size > 1:
        key = pd.DataFrame({"e": expiry.asi8[live], "k": strike[live], "c": cp[live],
                            "t": np.where(times.isna(), np.iinfo(np.int64).min, times.asi8)[live],
                            "r": np.arange(live.size)})
        order = key.sort_values(["e", "k", "c", "t", "r"]).index.to_numpy()
        dup_of_next = key.loc[order, ["e", "k", "c"]].duplicated(keep="last").to_numpy()
        assign(np.isin(np.arange(n), live[order[dup_of_next]]), QuoteStatus.DUPLICATE)
    if stale_after_seconds is not None:
        age = np.abs(elapsed_seconds(valuation_time, times)) if has_times else np.zeros(n)
        with np.errstate(invalid="ignore"):
            stale = ~(age <= stale_after_seconds)  # NaN age (time unknown) is stale
        assign(stale, QuoteStatus.STALE)
    if reader_status is not None:
        reader_status = np.asarray(reader_status, np.int8)
        for code in SOURCE_STATUSES:
            assign(reader_status == code, code)
    return codes


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
