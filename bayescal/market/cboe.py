"""Reader of the CBOE "delayed quote table download" (``cboe_spx_options_20110124.csv``).

Layout: line 1 ``SPX (S&P 500 INDEX),1290.59,+7.24,`` (root, spot, change); line 2
``Jan 24 2011 @ 14:03 ET`` (quote time, US/Eastern); line 3 the header
``Calls,Last Sale,Net,Bid,Ask,Vol,Open Int,Puts,Last Sale,Net,Bid,Ask,Vol,Open Int``; then one row
per strike and expiry holding the call and the put (two quotes per row). Prices are in index points;
a bid or ask of 0.00 means no quote.

Contract codes such as ``(SPXW1128A1075-E)``: root (``SPX``, ``SPXW``, ``SPXPM``), 2-digit year,
day, month letter (A-L calls Jan-Dec, M-X puts Jan-Dec, so the month is ``letter - A + 1`` for
calls and ``letter - M + 1`` for puts: 1-based, unlike pyql's derived file that put every expiry
one month early), strike. The date in the code is the expiration date.

Settlement conventions (stated, used for tau):

* ``SPX`` (AM-settled monthlies): the settlement value is computed from the opening prices of the
  last business day on or before the code date; for 2011 monthlies the code date is the Saturday
  after the 3rd Friday, so settlement is that Friday. Expiry time: **09:30 America/New_York** on
  the settlement date (the open). Exchange holidays are not modelled (none falls on these dates).
* ``SPXW``, ``SPXPM`` (PM-settled): the settlement value is the closing index level on the code
  date (or the business day before a weekend date). Expiry time: **16:00 America/New_York** (the
  index close; trading in these options runs to 16:15, but the settlement value is fixed at 16:00).

There are no rates: forward and discount factor per expiry come from put-call parity
(:mod:`bayescal.market.forwards`); expiries with too few two-sided pairs get status ``no_forward``.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.conventions import QuoteStatus
from bayescal.errors import QuoteValidationError
from bayescal.market._parse import QuoteParseError, ReadOptions, resolve_valuation_time
from bayescal.market.forwards import fits_to_json, parity_forwards
from bayescal.market.quotes import make_quotes, year_fraction

EXCHANGE_TZ = "America/New_York"
#: settlement style and time of day (America/New_York) per root
SETTLEMENT = {"SPX": ("AM", (9, 30)), "SPXW": ("PM", (16, 0)), "SPXPM": ("PM", (16, 0))}
HEADER = ("Calls", "Last Sale", "Net", "Bid", "Ask", "Vol", "Open Int",
          "Puts", "Last Sale", "Net", "Bid", "Ask", "Vol", "Open Int")
_LINE1 = re.compile(r"^\s*([A-Z^$.]+)\s*\(.*\)\s*$")
_LINE2 = re.compile(r"^\s*([A-Z][a-z]{2}) (\d{1,2}) (\d{4}) @ (\d{1,2}):(\d{2}) ET\s*$")
_CODE = re.compile(r"\(([A-Z]+?)(\d{2})(\d{2})([A-X])(\d+(?:\.\d+)?)-E\)")
_DESC = re.compile(r"^\s*(\d{2}) ([A-Z][a-z]{2}) (\d+(?:\.\d+)?) \(")
_MONTHS = {m: i + 1 for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                            "Nov", "Dec"))}


def sniff_cboe(head: list[str]) -> bool:
    """True when the first three lines look like a CBOE quote-table download."""
    if len(head) < 3:
        return False
    first, second, third = ((next(csv.reader([line]), None) or [""]) for line in head[:3])
    third = [c.strip() for c in third]
    return bool(_LINE1.match(first[0]) and _LINE2.match(second[0])) and tuple(third[:14]) == HEADER


def _settlement_date(d: date) -> date:
    while d.weekday() >= 5:  # Saturday/Sunday -> the Friday before
        d -= timedelta(days=1)
    return d


def _number(text: str, source: str, column: str, row: int) -> float:
    text = text.strip()
    if text == "":
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise QuoteParseError(source, column, [row], "text that is not a number", [text]) from None


def _parse_code(desc: str, source: str, column: str, row: int, side: int):
    """Root, expiration date and strike from ``11 Jan 1075.00 (SPXW1128A1075-E)``; checks the month letter side."""
    match = _CODE.search(desc)
    head = _DESC.match(desc)
    if not match or not head:
        raise QuoteParseError(source, column, [row], "not a CBOE contract description 'YY Mon K (ROOTYYDDMK-E)'",
                              [desc])
    root, yy, dd, letter, _ = match.groups()
    offset = ord(letter) - ord("A") if side > 0 else ord(letter) - ord("M")
    if not 0 <= offset < 12:
        kind = "call (A-L)" if side > 0 else "put (M-X)"
        raise QuoteParseError(source, column, [row], f"month letter {letter!r} is not a {kind} letter", [desc])
    try:
        expiration = date(2000 + int(yy), offset + 1, int(dd))
    except ValueError:
        raise QuoteParseError(source, column, [row], "contract code with an impossible date", [desc]) from None
    if head.group(1) != yy or _MONTHS.get(head.group(2)) != offset + 1:
        raise QuoteParseError(source, column, [row], "description year/month disagree with the contract code",
                              [desc])
    if root not in SETTLEMENT:
        raise QuoteParseError(source, column, [row], f"unknown root {root!r} (known: {sorted(SETTLEMENT)})", [desc])
    return root, expiration, float(head.group(3)), match.group(0)[1:-1]


def read_cboe_quote_table(path: Path, text: str, opts: ReadOptions) -> xr.Dataset:
    """Read a CBOE delayed-quote-table download (module docstring for layout and conventions).

    Returns the canonical quotes (two per row: call then put) with per-quote ``forward`` and
    ``discount_factor`` from put-call parity, ``root`` and ``settlement`` (AM/PM) variables, and
    ``attrs["forwards"]`` (JSON, see :func:`bayescal.market.forwards.forward_table`): per expiry the
    forward, discount factor, implied rate ``-ln(D)/tau``, carry ``ln(F/S)/tau``, pair counts and
    method. ``attrs["spot"]`` is the index level of line 1.

    Raises
    ------
    QuoteParseError
        For unparseable cells (column and data row named).
    QuoteValidationError
        For a malformed header, a row with the wrong number of fields, or no rows.
    """
    source = str(path)
    lines = text.splitlines()
    if not sniff_cboe(lines[:3]):
        raise QuoteValidationError(f"{source}: not a CBOE quote table (first three lines)")
    first = next(csv.reader([lines[0]]))
    root_name = _LINE1.match(first[0]).group(1)
    if len(first) < 2:
        raise QuoteValidationError(f"{source}: line 1 has no spot level after {first[0]!r}")
    spot = _number(first[1], source, "spot (line 1)", 0)
    if not (np.isfinite(spot) and spot > 0):
        raise QuoteValidationError(f"{source}: line 1 spot level {first[1]!r} is not a positive number")
    mon, day, year, hh, mm = _LINE2.match(next(csv.reader([lines[1]]))[0]).groups()
    if mon not in _MONTHS:
        raise QuoteValidationError(f"{source}: line 2 month {mon!r} is not a month name")
    try:
        quoted = pd.Timestamp(datetime(int(year), _MONTHS[mon], int(day), int(hh), int(mm))).tz_localize(EXCHANGE_TZ)
    except ValueError as exc:
        raise QuoteValidationError(f"{source}: line 2 time {lines[1]!r} is not a valid time ({exc})") from None
    policy = opts.valuation_time
    if policy is None or (isinstance(policy, str) and policy.strip().lower() in ("max", "min", "median")):
        valuation_time, note = quoted.tz_convert("UTC"), "the file's quote time (line 2, America/New_York)"
    else:
        valuation_time, note = resolve_valuation_time(policy, None, source, "line 2")

    records = []
    for i, row in enumerate(csv.reader(io.StringIO("\n".join(lines[3:])))):
        r = i + 1
        if not row or all(c.strip() == "" for c in row):
            continue
        cells = row[:-1] if len(row) == 15 and row[-1].strip() == "" else row
        if len(cells) != 14:
            raise QuoteValidationError(f"{source}: data row {r} has {len(cells)} fields, expected 14 "
                                       "(call and put: description, last, net, bid, ask, volume, open interest)")
        for side, off in ((1, 0), (-1, 7)):
            label = "Calls" if side > 0 else "Puts"
            root, expiration, strike, code = _parse_code(cells[off], source, label, r, side)
            bid = _number(cells[off + 3], source, f"{label} Bid", r)
            ask = _number(cells[off + 4], source, f"{label} Ask", r)
            style, (h, m) = SETTLEMENT[root]
            settle = _settlement_date(expiration)
            expiry = pd.Timestamp(datetime(settle.year, settle.month, settle.day, h, m)).tz_localize(EXCHANGE_TZ)
            records.append((code, root, style, expiry.tz_convert("UTC"), strike, side, bid, ask, r,
                            _number(cells[off + 5], source, f"{label} Vol", r),
                            _number(cells[off + 6], source, f"{label} Open Int", r)))
    if not records:
        raise QuoteValidationError(f"{source}: no option rows after the header")
    if opts.underlying is not None and opts.underlying.upper() != root_name.upper():
        raise QuoteValidationError(f"{source}: no quotes for underlying {opts.underlying!r}; the file has "
                                   f"[{root_name!r}]")
    cols = ["instrument", "root", "settlement", "expiry", "strike", "cp", "bid", "ask", "row", "volume", "oi"]
    table = pd.DataFrame.from_records(records, columns=cols)
    table["expiry"] = pd.DatetimeIndex(table["expiry"])
    tau = year_fraction(valuation_time, table["expiry"])
    label = table["expiry"].dt.strftime("%Y-%m-%dT%H:%M").to_numpy()
    with np.errstate(invalid="ignore"):
        bid = np.where(table["bid"].to_numpy() > 0, table["bid"].to_numpy(), np.nan)
        ask = np.where(table["ask"].to_numpy() > 0, table["ask"].to_numpy(), np.nan)
    fits = parity_forwards(label, tau, table["strike"].to_numpy(float), table["cp"].to_numpy(), bid, ask, spot,
                           min_pairs=opts.min_parity_pairs)
    by_label = {f.expiry: f for f in fits}
    forward = np.array([by_label[e].forward for e in label])
    discount = np.array([by_label[e].discount_factor for e in label])
    no_forward = ~np.isfinite(forward)
    canonical = pd.DataFrame({
        "instrument": table["instrument"], "expiry": table["expiry"], "strike": table["strike"].astype(float),
        "cp": table["cp"].astype(np.int8), "bid": bid, "ask": ask,
        # quotes of an expiry without a forward: placeholders keep the arithmetic finite; status no_forward
        "forward": np.where(no_forward, spot, forward), "discount_factor": np.where(no_forward, 1.0, discount),
    })
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=root_name,
        source=source,
        fmt="cboe_quote_table",
        premium_note="CBOE premiums in index points (contract multiplier 100), discounted; forward and discount "
        "factor per expiry from put-call parity",
        status=np.where(no_forward, QuoteStatus.NO_FORWARD, QuoteStatus.OK),
        source_row=table["row"].to_numpy(),
        extra_vars={
            "root": (table["root"].to_numpy(dtype=str), {"description": "option root (SPX, SPXW, SPXPM)"}),
            "settlement": (table["settlement"].to_numpy(dtype=str), {"description": "AM or PM settlement"}),
            "volume": (table["volume"].to_numpy(float), {"units": "contracts", "description": "day's volume"}),
            "open_interest": (table["oi"].to_numpy(float), {"units": "contracts"}),
        },
        extra_attrs={
            "valuation_time_policy": note,
            "spot": float(spot),
            "forwards": fits_to_json(fits),
            "expiry_convention": "code date is the expiration date; SPX (AM): 09:30 America/New_York on the last "
            "business day on or before it; SPXW/SPXPM (PM): 16:00 America/New_York",
        },
    )
