"""Market data in: chain files -> canonical quotes ``xarray.Dataset`` (numpy/pandas/xarray only, no PyMC).

Public entry points: :func:`read_chain` (format detected from the file; ``docs/data.md``),
:func:`filter_quotes`, :func:`used_quotes`, :func:`implied_vol_black76`, :func:`black76_price`,
:func:`forward_table` (put-call-parity forwards), :func:`status_table` (quotes per expiry and
status) and :func:`fetch_deribit_snapshot` (live Deribit snapshot, ``bayescal fetch``).
"""

from bayescal.market._parse import QuoteParseError
from bayescal.market.fetch import DeribitUnavailableError, FetchError, fetch_deribit_snapshot
from bayescal.market.filters import FilterSettings, filter_quotes, filter_report, status_table, used_quotes
from bayescal.market.forwards import forward_table
from bayescal.market.implied_vol import black76_price, implied_vol_black76
from bayescal.market.io import (
    KNOWN_FORMATS,
    bundled_demo_chain,
    detect_format,
    read_chain,
)

__all__ = [
    "KNOWN_FORMATS",
    "DeribitUnavailableError",
    "FetchError",
    "FilterSettings",
    "QuoteParseError",
    "black76_price",
    "bundled_demo_chain",
    "detect_format",
    "fetch_deribit_snapshot",
    "filter_quotes",
    "filter_report",
    "forward_table",
    "implied_vol_black76",
    "read_chain",
    "status_table",
    "used_quotes",
]
