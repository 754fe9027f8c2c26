"""Parsing helpers shared by the chain readers: strict column parsing with typed, located errors.

Rules (see ``docs/data.md``):

* every column a reader uses is read as text and converted here; text that is not a number / a
  time / an option type raises :class:`QuoteParseError`, which names the file, the column and the
  data rows (1-based, counting the rows after the header; comment lines are not counted);
* an empty cell (or ``nan``/``NA``) is *missing*, never an error: the quote gets a status code
  (``no_bid``, ``invalid``, ``stale``, ...) later;
* timestamps are timezone-aware: epoch numbers are UTC by definition; ISO 8601 text must carry a
  UTC offset unless the format documents its zone (then it is given as ``default_tz``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bayescal.errors import QuoteValidationError

#: accepted spellings of the call/put column (case-insensitive, surrounding blanks ignored)
CP_SPELLINGS = {"call": 1, "c": 1, "put": -1, "p": -1}
#: valuation-time policies for files whose rows carry their own times
VALUATION_POLICIES = ("max", "median", "min")
#: default staleness window: a quote more than this many seconds away from the valuation time is stale
DEFAULT_STALE_AFTER_SECONDS = 300.0

_TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_EPOCH_DIVISOR = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
# epoch seconds representable as datetime64[ns] (about 1677-09-22 to 2262-04-11), with a margin
_EPOCH_MAX_SECONDS = 9.2e9


class QuoteParseError(QuoteValidationError):
    """A value of a chain file cannot be parsed; the message names the file, column and data rows.

    Attributes
    ----------
    source : str
        The file.
    column : str
        The column.
    rows : list of int
        1-based data rows (after the header) holding the offending values.
    """

    def __init__(self, source: str, column: str, rows: Sequence[int], problem: str, examples: Sequence = ()):
        self.source, self.column, self.rows = source, column, [int(r) for r in rows]
        shown = ", ".join(str(r) for r in self.rows[:10]) + (f" ... ({len(self.rows)} rows)" if len(rows) > 10 else "")
        ex = f" (e.g. {[str(e)[:40] for e in list(examples)[:3]]})" if len(examples) else ""
        super().__init__(f"{source}: column {column!r}: {problem} in data row(s) {shown}{ex}")


def data_rows(index: pd.Index, mask: np.ndarray) -> list[int]:
    """1-based data-row numbers of the ``True`` entries of ``mask`` (frames keep the file's row index)."""
    return [int(i) + 1 for i in np.asarray(index)[np.asarray(mask, bool)]]


def read_csv_text(path: Path, source: str) -> pd.DataFrame:
    """Read a CSV file with every cell as text (``NaN`` for empty cells); ``#`` lines are comments.

    Raises
    ------
    QuoteValidationError
        If the file is empty, is not UTF-8 text, or a row has more fields than the header (the
        message gives the file line).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            frame = pd.read_csv(path, comment="#", dtype=str)
    except pd.errors.EmptyDataError:
        raise QuoteValidationError(f"{source}: the file is empty (no header line)") from None
    except UnicodeDecodeError as exc:
        raise QuoteValidationError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except pd.errors.ParserError as exc:
        raise QuoteValidationError(f"{source}: malformed CSV: {str(exc).strip()}") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the first column as the index
        raise QuoteValidationError(f"{source}: the data rows have more fields than the header "
                                   f"({len(frame.columns)} columns)")
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise QuoteValidationError(f"{source}: column name(s) {duplicated} appear more than once in the header")
    return frame


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """The column as stripped text (object dtype), ``None`` where empty."""
    values = frame[column]
    if values.dtype != object and not pd.api.types.is_string_dtype(values):
        return values
    cells = values.to_numpy(dtype=object, na_value=None)
    return pd.Series([None if v is None else (str(v).strip() or None) for v in cells], index=frame.index,
                     dtype=object)


def numeric(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """Column as float64: empty cells (and ``nan``, ``NA``, ``null``, ``None``, ``-``) -> NaN; other text raises.

    Raises
    ------
    QuoteParseError
        Naming the column and the data rows whose text is not a number.
    """
    raw = frame[column]
    if raw.dtype.kind == "f":
        return raw.to_numpy(dtype=float)
    cells = raw.to_numpy(dtype=object, na_value=None)
    if not any(isinstance(v, str) and "_" in v for v in cells):  # float() would accept 1_000
        try:  # fast path: every cell is a number or empty
            return np.array([np.nan if v is None else float(v) for v in cells], dtype=float)
        except (ValueError, TypeError, OverflowError):
            pass
    text = _text(frame, column)
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna().to_numpy() & text.notna().to_numpy()
    if bad.any():
        lowered = text[bad].astype(str).str.lower()
        really_bad = ~lowered.isin(["nan", "na", "n/a", "null", "none", "-"]).to_numpy()
        if really_bad.any():
            rows = np.flatnonzero(bad)[really_bad]
            mask = np.zeros(len(text), bool)
            mask[rows] = True
            raise QuoteParseError(source, column, data_rows(frame.index, mask), "text that is not a number",
                                  text[mask].tolist())
    return values.to_numpy(dtype=float, na_value=np.nan)


def coin_to_quote(price: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Coin-unit premiums x forward (quote currency); NaN where the product is not finite (overflow, inf, NaN)."""
    with np.errstate(all="ignore"):
        product = np.asarray(price, float) * np.asarray(forward, float)
    return np.where(np.isfinite(product), product, np.nan)


def epoch_times(frame: pd.DataFrame, column: str, unit: str, source: str) -> pd.DatetimeIndex:
    """Epoch numbers (``unit`` = s, ms, us or ns since 1970-01-01 UTC) as a UTC DatetimeIndex (NaT if empty).

    Raises
    ------
    QuoteParseError
        For text that is not a number, or a number outside the representable dates (1677-2262).
    """
    values = numeric(frame, column, source)
    with np.errstate(invalid="ignore"):
        seconds = values / _EPOCH_DIVISOR[unit]
        out_of_range = np.isfinite(values) & (np.abs(seconds) > _EPOCH_MAX_SECONDS) | np.isinf(values)
    if out_of_range.any():
        raise QuoteParseError(source, column, data_rows(frame.index, out_of_range),
                              f"epoch time ({unit}) outside 1677-2262", values[out_of_range])
    # integer part and fraction separately: ms/us epochs times 1e6/1e3 exceed float64's exact integers
    finite = np.isfinite(values)
    whole = np.where(finite, np.floor(values), 0.0)
    factor = int(round(1e9 / _EPOCH_DIVISOR[unit]))
    ns = whole.astype(np.int64) * factor + np.rint((np.where(finite, values, 0.0) - whole) * factor).astype(np.int64)
    stamps = pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")
    return stamps.where(finite, pd.NaT)


def iso_times(frame: pd.DataFrame, column: str, source: str, *, default_tz: str | None = None) -> pd.DatetimeIndex:
    """ISO 8601 text as a UTC DatetimeIndex; mixed UTC offsets are converted, empty cells are NaT.

    Parameters
    ----------
    default_tz : str, optional
        IANA zone of times written without an offset (only where the format documents it). Without
        it a naive time raises: it is ambiguous by hours.

    Raises
    ------
    QuoteParseError
        For text that is not an ISO 8601 time, a naive time without ``default_tz``, or a local time
        that does not exist / is ambiguous in ``default_tz`` (daylight-saving changes).
    """
    text = _text(frame, column)
    present = text.notna().to_numpy()
    as_str = text.fillna("").astype(str)
    has_tz = as_str.str.contains(_TZ_SUFFIX).to_numpy() & present
    naive = present & ~has_tz
    if naive.any() and default_tz is None:
        raise QuoteParseError(source, column, data_rows(frame.index, naive),
                              "time without a UTC offset (naive; ambiguous by hours)", text[naive].tolist())
    out = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    for subset, aware in ((has_tz, True), (naive, False)):
        if not subset.any():
            continue
        parsed, bad = _parse_iso(as_str[subset], aware)
        if bad.any():
            mask = np.zeros(len(text), bool)
            mask[np.flatnonzero(subset)[bad]] = True
            raise QuoteParseError(source, column, data_rows(frame.index, mask),
                                  "text that is not an ISO 8601 time in 1677-2262", text[mask].tolist())
        if not aware:
            try:
                parsed = parsed.tz_localize(default_tz, ambiguous="raise", nonexistent="raise").tz_convert("UTC")
            except (ValueError, TypeError) as exc:  # ambiguous / non-existent local times derive from ValueError
                raise QuoteParseError(source, column, data_rows(frame.index, subset),
                                      f"local time not unique in {default_tz} ({exc})") from None
        out[subset] = parsed.astype("datetime64[ns, UTC]")
    return pd.DatetimeIndex(out)


def _parse_iso(values: pd.Series, aware: bool) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Vectorised ISO 8601 parse to ns (UTC if ``aware``); per-value fallback where pandas raises (out of range)."""
    try:
        parsed = pd.to_datetime(values, utc=aware, format="ISO8601", errors="coerce")
        index = pd.DatetimeIndex(parsed).as_unit("ns")
        return index, np.asarray(index.isna())
    except (ValueError, OverflowError, TypeError):  # OutOfBoundsDatetime is a ValueError
        pass
    stamps, bad = [], np.zeros(len(values), bool)
    for i, value in enumerate(values.tolist()):
        try:
            stamp = pd.Timestamp(value)
            if aware:
                stamp = stamp.tz_convert("UTC") if stamp.tzinfo is not None else pd.NaT
            elif stamp.tzinfo is not None:
                stamp = pd.NaT
            stamp = stamp.as_unit("ns") if stamp is not pd.NaT else stamp
        except (ValueError, OverflowError, TypeError):
            stamp = pd.NaT
        bad[i] = stamp is pd.NaT
        stamps.append(stamp)
    index = pd.DatetimeIndex(stamps, tz="UTC" if aware else None) if not bad.all() else pd.DatetimeIndex(
        [pd.NaT] * len(stamps), tz="UTC" if aware else None)
    return index, bad


def option_types(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """Call/put column as ``cp`` (int8: +1 call, -1 put, 0 where empty -> status ``invalid``).

    Raises
    ------
    QuoteParseError
        For values other than call/C/put/P (any case).
    """
    text = _text(frame, column)
    lowered = text.str.lower()
    mapped = lowered.map(CP_SPELLINGS)
    bad = mapped.isna().to_numpy() & text.notna().to_numpy()
    if bad.any():
        raise QuoteParseError(source, column, data_rows(frame.index, bad),
                              "option type that is neither call/C nor put/P", text[bad].tolist())
    return mapped.fillna(0).to_numpy(dtype=np.int8)


def labels(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    """A text column (instrument names, underlyings) with blanks stripped; empty cells raise.

    Raises
    ------
    QuoteParseError
        Naming the rows where the column is empty.
    """
    text = _text(frame, column)
    empty = text.isna().to_numpy()
    if empty.any():
        raise QuoteParseError(source, column, data_rows(frame.index, empty), "empty value")
    return text.astype(str).to_numpy(dtype=object)


def select_underlying(frame: pd.DataFrame, names: np.ndarray, underlying: str | None,
                      source: str) -> tuple[pd.DataFrame, str]:
    """Keep the rows of one underlying (case-insensitive); required when the file holds several.

    Raises
    ------
    QuoteValidationError
        If several underlyings are present and none was chosen, or the chosen one is absent.
    """
    upper = pd.Series(names, index=frame.index).astype(str).str.upper()
    available = sorted(upper.unique())
    if underlying is None:
        if len(available) != 1:
            raise QuoteValidationError(
                f"{source} holds several underlyings {available}: choose one with underlying=... (--underlying)"
            )
        underlying = available[0]
    keep = (upper == underlying.upper()).to_numpy()
    if not keep.any():
        raise QuoteValidationError(f"{source}: no quotes for underlying {underlying!r}; the file has {available}")
    return frame[keep], underlying.upper()


def resolve_valuation_time(policy: str | pd.Timestamp | datetime | None, times: pd.DatetimeIndex | None,
                           source: str, column: str, default: str = "max") -> tuple[pd.Timestamp, str]:
    """The valuation time of a file whose rows carry their own times.

    Parameters
    ----------
    policy : {"max", "median", "min"}, timestamp or None
        ``"max"`` (the default): the latest row time, so no quote is from after the valuation time;
        ``"median"``/``"min"``: the median / earliest row time; a timezone-aware timestamp (or ISO
        text with an offset): that time. ``None`` means ``default``.
    times : DatetimeIndex (UTC) or None
        The rows' own times (NaT allowed).

    Returns
    -------
    (pandas.Timestamp, str)
        The valuation time (UTC) and a sentence stating the policy (stored in attrs).

    Raises
    ------
    QuoteValidationError
        For an unknown policy, a naive explicit time, or no valid row time.
    """
    policy = default if policy is None else policy
    if isinstance(policy, str) and policy.strip().lower() in VALUATION_POLICIES:
        name = policy.strip().lower()
        valid = times[~times.isna()] if times is not None else pd.DatetimeIndex([])
        if len(valid) == 0:
            raise QuoteValidationError(f"{source}: no valid time in column {column!r} to take the {name} of; "
                                       "give valuation_time explicitly")
        value = {"max": valid.max, "min": valid.min}.get(name)
        if value is None:  # median in integer nanoseconds (a float median loses sub-microsecond digits)
            ns = np.sort(valid.asi8)
            mid = len(ns) // 2
            stamp = pd.Timestamp(int(ns[mid]) if len(ns) % 2 else int(ns[mid - 1] + (ns[mid] - ns[mid - 1]) // 2),
                                 tz="UTC")
        else:
            stamp = value()
        return stamp.tz_convert("UTC"), f"{name} of column {column!r} ({len(valid)} row times)"
    try:
        stamp = pd.Timestamp(policy)
    except (ValueError, TypeError):
        raise QuoteValidationError(
            f"{source}: valuation_time {policy!r} is neither one of {list(VALUATION_POLICIES)} nor a timestamp"
        ) from None
    if stamp is pd.NaT or stamp.tzinfo is None:
        raise QuoteValidationError(f"{source}: valuation_time {policy!r} has no time zone (give an offset, e.g. Z)")
    return stamp.tz_convert("UTC"), "given explicitly"


_DERIBIT_MONTHS = {m: i + 1 for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}
_DERIBIT_DATE = re.compile(r"^(\d{1,2})([A-Z]{3})(\d{2})$")


def deribit_expiry(codes: pd.Series, frame_index: pd.Index, source: str, column: str) -> pd.DatetimeIndex:
    """Deribit expiry codes (``26JAN24``) as expiry times, 08:00 UTC (NaT where empty).

    Raises
    ------
    QuoteParseError
        For codes that are not ``DDMMMYY`` calendar dates.
    """
    text = codes.astype("string").str.strip().str.upper()
    out = np.full(len(text), np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    bad = np.zeros(len(text), bool)
    for i, value in enumerate(text.tolist()):
        if value is pd.NA or value is None:
            continue
        match = _DERIBIT_DATE.match(value)
        if not match or match.group(2) not in _DERIBIT_MONTHS:
            bad[i] = True
            continue
        try:
            day = datetime(2000 + int(match.group(3)), _DERIBIT_MONTHS[match.group(2)], int(match.group(1)), 8)
        except ValueError:
            bad[i] = True
            continue
        out[i] = np.datetime64(day, "ns")
    if bad.any():
        raise QuoteParseError(source, column, data_rows(frame_index, bad), "not a Deribit expiry code DDMMMYY",
                              text[bad].tolist())
    return pd.DatetimeIndex(out).tz_localize("UTC")


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader receives from :func:`bayescal.market.read_chain`.

    Attributes
    ----------
    underlying : str, optional
        Underlying to keep; required when the file holds several.
    valuation_time : {"max", "median", "min"}, timestamp or None
        Valuation-time policy for files whose rows carry their own times (``None``: the format's
        default, ``"max"``), or an explicit timezone-aware time (any format).
    stale_after_seconds : float or None
        Staleness window (seconds from the valuation time); ``None`` disables the check.
    column_map : dict, optional
        Column map of the generic CSV reader (see :mod:`bayescal.market.generic`).
    min_parity_pairs : int
        Minimum two-sided call/put pairs per expiry for a put-call-parity forward.
    """

    underlying: str | None = None
    valuation_time: str | pd.Timestamp | datetime | None = None
    stale_after_seconds: float | None = DEFAULT_STALE_AFTER_SECONDS
    column_map: dict | None = None
    min_parity_pairs: int = 3
