"""Chain-file readers with format detection from the columns.

Each reader turns one venue's file into the canonical quotes Dataset of
:func:`bayescal.market.quotes.make_quotes`. :func:`read_chain` detects the format from the header
and raises :class:`~bayescal.errors.UnknownFormatError` listing every known format otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.errors import QuoteValidationError, UnknownFormatError
from bayescal.market.quotes import make_quotes, prices_from_iv

DEMO_CHAIN_NAME = "btc_20211021_bidask_iv.csv"
#: Valuation date of the bundled demo chain, as its source names it ("BTC implied vols of 21Oct2021").
DEMO_VALUATION_TIME = "2021-10-21T08:00:00+00:00"


@dataclass(frozen=True)
class ChainFormat:
    """A known chain-file format: its name, the columns that identify it, and its reader."""

    name: str
    description: str
    required_columns: frozenset[str]
    reader: Callable[..., xr.Dataset]


def _cp_from_option_type(values: pd.Series, source: str) -> np.ndarray:
    mapping = {"call": 1, "c": 1, "put": -1, "p": -1}
    lowered = values.astype(str).str.strip().str.lower()
    bad = sorted(set(lowered[~lowered.isin(mapping)]))
    if bad:
        raise QuoteValidationError(f"{source}: option_type values {bad} are neither call/C nor put/P")
    return lowered.map(mapping).to_numpy(np.int8)


def _select_underlying(
    frame: pd.DataFrame, column: str, underlying: str | None, source: str
) -> tuple[pd.DataFrame, str]:
    available = sorted(frame[column].astype(str).unique())
    if underlying is None:
        if len(available) != 1:
            raise QuoteValidationError(
                f"{source} holds several underlyings {available}: choose one with underlying=... (--underlying)"
            )
        underlying = available[0]
    chosen = frame[frame[column].astype(str).str.upper() == underlying.upper()]
    if chosen.empty:
        raise QuoteValidationError(f"{source}: no quotes for underlying {underlying!r}; the file has {available}")
    return chosen, underlying.upper()


def read_deribit_snapshot(path: Path, frame: pd.DataFrame, underlying: str | None) -> xr.Dataset:
    """Read a Deribit book-summary snapshot (``deribit_options_snapshot_*.csv``).

    Premiums (``bid_price``, ``ask_price``) are in coin units; they are converted to USD by
    multiplying by the per-expiry forward (``underlying`` column, Deribit's ``underlying_price``).
    The USD premium so obtained is the forward-measure Black-76 value, so the discount factor is 1.
    The valuation time is the ``timestamp`` column (the collector's run start); when rows carry
    different timestamps the latest is used and the spread is recorded in attrs. Expiries are
    read from ``expiry_datetime`` (08:00 UTC) and tau is ACT/365F to the second (the file's own
    ``time_to_maturity`` uses 365.25-day years and is not used).
    """
    source = str(path)
    chosen, name = _select_underlying(frame, "currency", underlying, source)
    stamps = pd.to_datetime(chosen["timestamp"], utc=True, format="ISO8601")
    valuation_time = stamps.max()
    forward = chosen["underlying"].to_numpy(float)
    canonical = pd.DataFrame(
        {
            "instrument": chosen["instrument_name"].astype(str).to_numpy(),
            "expiry": pd.DatetimeIndex(pd.to_datetime(chosen["expiry_datetime"], utc=True, format="ISO8601")),
            "strike": chosen["strike"].to_numpy(float),
            "cp": _cp_from_option_type(chosen["option_type"], source),
            "bid": chosen["bid_price"].to_numpy(float) * forward,
            "ask": chosen["ask_price"].to_numpy(float) * forward,
            "forward": forward,
            "discount_factor": np.ones(len(chosen)),
        }
    )
    return make_quotes(
        canonical,
        valuation_time=valuation_time,
        underlying=name,
        source=source,
        fmt="deribit_snapshot",
        premium_note="Deribit coin premium x forward (underlying_price) = USD forward-measure premium",
        extra_attrs={"timestamp_spread_seconds": float((stamps.max() - stamps.min()).total_seconds())},
    )


def read_bidask_iv(path: Path, frame: pd.DataFrame, underlying: str | None) -> xr.Dataset:
    """Read a bid/ask implied-vol chain (``slice_id, ttm_years, forward, discount_factor, strike,
    option_type, bid_iv, ask_iv``), the format of the bundled demo chain.

    The file gives tau directly (``ttm_years``) and no timestamps, so tau is taken as given and the
    expiry is reconstructed as valuation time + tau (ACT/365F). Premiums are computed from the
    vols with Black-76 so the chain has the same variables as every other format.
    """
    source = str(path)
    name = (underlying or "BTC").upper()
    is_demo = path.name == DEMO_CHAIN_NAME
    # the format carries tau but no timestamps: only the bundled chain's date is known (from its source)
    valuation_time = pd.Timestamp(DEMO_VALUATION_TIME if is_demo else "1970-01-01T00:00:00+00:00")
    tau = frame["ttm_years"].to_numpy(float)
    forward = frame["forward"].to_numpy(float)
    strike = frame["strike"].to_numpy(float)
    discount = frame["discount_factor"].to_numpy(float)
    cp = _cp_from_option_type(frame["option_type"], source)
    bid_iv = frame["bid_iv"].to_numpy(float)
    ask_iv = frame["ask_iv"].to_numpy(float)
    expiry = valuation_time + pd.to_timedelta(np.round(tau * 365.0 * 86400.0), unit="s")
    canonical = pd.DataFrame(
        {
            "instrument": [
                f"{name}-{s}-{int(K)}-{'C' if c > 0 else 'P'}"
                for s, K, c in zip(frame["slice_id"], strike, cp, strict=True)
            ],
            "expiry": expiry,
            "strike": strike,
            "cp": cp,
            "bid": prices_from_iv(bid_iv, forward, strike, tau, cp, discount),
            "ask": prices_from_iv(ask_iv, forward, strike, tau, cp, discount),
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
        bid_iv=np.where(bid_iv > 0, bid_iv, np.nan),
        ask_iv=np.where(ask_iv > 0, ask_iv, np.nan),
        extra_attrs={
            "valuation_time_note": "date from the source; time of day unknown, tau as given"
            if is_demo
            else "the file has no timestamps: valuation time is a placeholder (epoch), tau as given"
        },
    )


KNOWN_FORMATS: tuple[ChainFormat, ...] = (
    ChainFormat(
        "deribit_snapshot",
        "Deribit book-summary snapshot (timestamp, instrument_name, underlying, option_type, strike, "
        "expiry_datetime, bid_price, ask_price, currency; premiums in coin units)",
        frozenset({"timestamp", "instrument_name", "underlying", "option_type", "strike", "expiry_datetime",
                   "bid_price", "ask_price", "currency"}),
        read_deribit_snapshot,
    ),
    ChainFormat(
        "bidask_iv",
        "bid/ask implied-vol chain (slice_id, ttm_years, forward, discount_factor, strike, option_type, "
        "bid_iv, ask_iv; vols decimal)",
        frozenset({"slice_id", "ttm_years", "forward", "discount_factor", "strike", "option_type", "bid_iv", "ask_iv"}),
        read_bidask_iv,
    ),
)


def detect_format(columns: list[str] | pd.Index, source: str = "<columns>") -> ChainFormat:
    """Return the known format whose identifying columns are all present.

    Raises
    ------
    UnknownFormatError
        Listing every known format and its columns when none matches.
    """
    present = {str(c).strip() for c in columns}
    for fmt in KNOWN_FORMATS:
        if fmt.required_columns <= present:
            return fmt
    known = "\n".join(f"  - {f.name}: {f.description}" for f in KNOWN_FORMATS)
    raise UnknownFormatError(
        f"{source}: columns {sorted(present)} match no known chain format. Known formats:\n{known}"
    )


def read_chain(path: str | Path, underlying: str | None = None) -> xr.Dataset:
    """Read an option-chain file into the canonical quotes Dataset (format detected from the columns).

    Parameters
    ----------
    path : str or Path
        CSV file (``#`` comment lines are skipped).
    underlying : str, optional
        Underlying to keep (e.g. ``"BTC"``); required when the file holds several.

    Returns
    -------
    xarray.Dataset
        See :func:`bayescal.market.quotes.make_quotes`; every quote has status OK until
        :func:`bayescal.market.filters.filter_quotes` runs.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    UnknownFormatError
        If the columns match no known format (the message lists them).
    QuoteValidationError
        For structural problems (unknown option types, missing underlying, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chain file {path} does not exist")
    frame = pd.read_csv(path, comment="#")
    frame.columns = [str(c).strip() for c in frame.columns]
    fmt = detect_format(frame.columns, str(path))
    return fmt.reader(path, frame, underlying)


def bundled_demo_chain() -> Path:
    """Path of the bundled BTC bid/ask-IV demo chain (MIT, from the stochvolmodels package)."""
    return Path(str(resources.files("bayescal") / "data" / DEMO_CHAIN_NAME))
