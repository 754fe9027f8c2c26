"""Generic CSV reader driven by a column map (a TOML file or a dict).

Example ``chain.columns.toml`` (a file next to ``chain.csv`` with this name is used automatically
by :func:`bayescal.market.read_chain`; or pass ``column_map=`` a path or dict)::

    name = "my_venue"              # optional, recorded in attrs["format"] as generic:my_venue
    underlying = "SPX"             # underlying name when the file has no underlying column

    [columns]                      # canonical name = column in the file
    expiry = "Expiration"          # required
    option_type = "Type"           # required: call/put/C/P
    strike = "Strike"              # required
    bid = "Bid"                    # required
    ask = "Ask"                    # required
    forward = "Forward"            # optional: without it, forwards come from put-call parity
    discount_factor = "DF"         # optional (default 1, or from put-call parity)
    underlying = "Root"            # optional
    instrument = "Symbol"          # optional (default UNDERLYING-EXPIRY-STRIKE-C/P)
    bid_iv = "BidIV"               # optional: otherwise inverted from the premiums
    ask_iv = "AskIV"               # optional
    quote_time = "Time"            # optional: each row's own time

    [units]
    premium = "quote"              # "quote" (as quoted) or "coin" (x forward: inverse options)
    iv = "decimal"                 # "decimal" or "percent"
    time = "iso"                   # "iso", or epoch "s", "ms", "us", "ns" (expiry and quote_time)
    timezone = "UTC"               # IANA zone of ISO times written without an offset
    expiry_time = "16:00"          # time of day (in timezone) for date-only expiries

    [valuation]
    time = "max"                   # "max", "median", "min" of quote_time, or ISO time with offset
    stale_after_seconds = 300      # optional, overrides read_chain's
    spot = 1290.59                 # optional: for the carry reported with parity forwards

Every error names the map key, the file column and, for values, the data rows.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.conventions import QuoteStatus
from bayescal.errors import QuoteValidationError
from bayescal.market._parse import (
    QuoteParseError,
    ReadOptions,
    coin_to_quote,
    data_rows,
    epoch_times,
    iso_times,
    labels,
    numeric,
    option_types,
    resolve_valuation_time,
    select_underlying,
)
from bayescal.market.forwards import fits_to_json, parity_forwards
from bayescal.market.quotes import make_quotes, year_fraction

REQUIRED_KEYS = ("expiry", "option_type", "strike", "bid", "ask")
OPTIONAL_KEYS = ("forward", "discount_factor", "underlying", "instrument", "bid_iv", "ask_iv", "quote_time")
UNIT_VALUES = {"premium": ("quote", "coin"), "iv": ("decimal", "percent"), "time": ("iso", "s", "ms", "us", "ns")}
TOP_KEYS = {"name", "underlying", "columns", "units", "valuation"}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def load_column_map(spec: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Load and check a column map (TOML path or dict); every problem is listed at once.

    Raises
    ------
    QuoteValidationError
        For an unreadable TOML file or invalid keys / values.
    """
    if isinstance(spec, str | Path):
        path = Path(spec)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise QuoteValidationError(f"column map {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise QuoteValidationError(f"column map {path} is not valid TOML: {exc}") from None
        where = str(path)
    else:
        raw, where = dict(spec), "column map"
    problems = []
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown}; valid: {sorted(TOP_KEYS)}")
    columns = raw.get("columns", {})
    if not isinstance(columns, dict):
        problems.append("[columns] must be a table")
        columns = {}
    bad_keys = sorted(set(columns) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if bad_keys:
        problems.append(f"[columns] unknown key(s) {bad_keys}; valid: {list(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in columns]
    if missing:
        problems.append(f"[columns] lacks required key(s) {missing}")
    problems += [f"[columns] {k} must be a column name (text)" for k, v in columns.items() if not isinstance(v, str)]
    units = raw.get("units", {})
    for key, allowed in UNIT_VALUES.items():
        if key in units and units[key] not in allowed:
            problems.append(f"[units] {key} = {units[key]!r}; valid: {list(allowed)}")
    if "expiry_time" in units and not _HHMM.match(str(units["expiry_time"])):
        problems.append(f"[units] expiry_time = {units['expiry_time']!r} is not HH:MM")
    if units.get("premium") == "coin" and "forward" not in columns:
        problems.append("[units] premium = 'coin' needs [columns] forward (coin premium x forward)")
    valuation = raw.get("valuation", {})
    if "stale_after_seconds" in valuation and not isinstance(valuation["stale_after_seconds"], int | float):
        problems.append("[valuation] stale_after_seconds must be a number")
    if "spot" in valuation and not isinstance(valuation["spot"], int | float):
        problems.append("[valuation] spot must be a number")
    if problems:
        raise QuoteValidationError(f"{where}: invalid column map:\n  - " + "\n  - ".join(problems))
    return raw


def _times(frame: pd.DataFrame, column: str, units: dict[str, Any], source: str, *,
           expiry: bool) -> pd.DatetimeIndex:
    unit = units.get("time", "iso")
    if unit != "iso":
        return epoch_times(frame, column, unit, source)
    tz = units.get("timezone")
    text = frame[column].astype("string").str.strip()
    date_only = text.fillna("").str.match(_DATE_ONLY).to_numpy()
    if expiry and date_only.any():
        if "expiry_time" not in units or tz is None:
            raise QuoteParseError(source, column, data_rows(frame.index, date_only),
                                  "date without a time: set [units] expiry_time and timezone", text[date_only].tolist())
        text = text.where(~date_only, text + "T" + units["expiry_time"])
    return iso_times(frame.assign(**{column: text}), column, source, default_tz=tz)


def read_generic(path: Path, frame: pd.DataFrame, opts: ReadOptions) -> xr.Dataset:
    """Read a CSV through a column map (module docstring).

    Raises
    ------
    QuoteValidationError
        For an invalid map, map columns missing from the file, or no valuation time.
    QuoteParseError
        For unparseable values (column and data rows named).
    """
    source = str(path)
    cmap = load_column_map(opts.column_map or {})
    cols: dict[str, str] = cmap["columns"]
    units: dict[str, Any] = cmap.get("units", {})
    valuation: dict[str, Any] = cmap.get("valuation", {})
    absent = {k: c for k, c in cols.items() if c not in frame.columns}
    if absent:
        raise QuoteValidationError(f"{source}: column map names column(s) the file lacks: "
                                   + ", ".join(f"{k} -> {c!r}" for k, c in absent.items())
                                   + f"; the file has {list(frame.columns)}")
    if "underlying" in cols:
        frame, name = select_underlying(frame, labels(frame, cols["underlying"], source), opts.underlying, source)
    else:
        name = str(cmap.get("underlying") or opts.underlying or "UNDERLYING").upper()
    times = _times(frame, cols["quote_time"], units, source, expiry=False) if "quote_time" in cols else None
    policy = opts.valuation_time if opts.valuation_time is not None else valuation.get("time")
    if times is None and (policy is None or str(policy).lower() in ("max", "min", "median")):
        raise QuoteValidationError(f"{source}: the column map has no quote_time column: give [valuation] time "
                                   "(ISO with offset) or valuation_time=...")
    valuation_time, note = resolve_valuation_time(policy, times, source, cols.get("quote_time", "-"))
    stale = valuation.get("stale_after_seconds", opts.stale_after_seconds) if times is not None else None

    expiry = _times(frame, cols["expiry"], units, source, expiry=True)
    strike = numeric(frame, cols["strike"], source)
    cp = option_types(frame, cols["option_type"], source)
    bid = numeric(frame, cols["bid"], source)
    ask = numeric(frame, cols["ask"], source)
    iv_scale = 0.01 if units.get("iv") == "percent" else 1.0
    with np.errstate(all="ignore"):
        bid_iv = numeric(frame, cols["bid_iv"], source) * iv_scale if "bid_iv" in cols else None
        ask_iv = numeric(frame, cols["ask_iv"], source) * iv_scale if "ask_iv" in cols else None
    status = np.zeros(len(frame), np.int8)
    extra_attrs: dict[str, Any] = {"valuation_time_policy": note, "column_map": cmap}
    if "forward" in cols:
        forward = numeric(frame, cols["forward"], source)
        discount = numeric(frame, cols["discount_factor"], source) if "discount_factor" in cols \
            else np.ones(len(frame))
        premium_note = "premiums as quoted" if units.get("premium", "quote") == "quote" else \
            "coin premium x forward = quote-currency premium"
        if units.get("premium") == "coin":
            bid, ask = coin_to_quote(bid, forward), coin_to_quote(ask, forward)
    else:
        label = np.datetime_as_string(expiry.tz_convert("UTC").tz_localize(None).to_numpy(), unit="m")
        tau = year_fraction(valuation_time, expiry)
        with np.errstate(all="ignore"):
            b = np.where(bid > 0, bid, np.nan)
            a = np.where(ask > 0, ask, np.nan)
        fits = parity_forwards(label, tau, strike, cp, b, a, valuation.get("spot"), min_pairs=opts.min_parity_pairs)
        by_label = {f.expiry: f for f in fits}
        forward = np.array([by_label[e].forward for e in label])
        discount = np.array([by_label[e].discount_factor for e in label])
        no_forward = ~np.isfinite(forward)
        status[no_forward] = QuoteStatus.NO_FORWARD
        placeholder = float(np.nanmedian(strike)) if np.isfinite(strike).any() else 1.0
        forward = np.where(no_forward, placeholder, forward)
        discount = np.where(no_forward, 1.0, discount)
        premium_note = "premiums as quoted; forward and discount factor per expiry from put-call parity"
        extra_attrs["forwards"] = fits_to_json(fits)
    if "instrument" in cols:
        instrument = labels(frame, cols["instrument"], source)
    else:
        day = pd.Series(expiry).dt.strftime("%Y%m%d").fillna("NaT").to_numpy()
        instrument = np.array([f"{name}-{d}-{s:g}-{'C' if c > 0 else 'P' if c < 0 else '?'}"
                               for d, s, c in zip(day, strike, cp, strict=True)], dtype=object)
    canonical = pd.DataFrame({"instrument": instrument, "expiry": expiry, "strike": strike, "cp": cp, "bid": bid,
                              "ask": ask, "forward": forward, "discount_factor": discount})
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="generic" + (f":{cmap['name']}" if cmap.get("name") else ""),
        premium_note=premium_note,
        bid_iv=bid_iv,
        ask_iv=ask_iv,
        status=status,
        quote_time=times,
        stale_after_seconds=stale,
        source_row=frame.index.to_numpy() + 1,
        extra_attrs=extra_attrs,
    )
