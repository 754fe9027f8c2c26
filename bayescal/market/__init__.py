"""Market data in: chain files -> canonical quotes ``xarray.Dataset`` (numpy/pandas/xarray only, no PyMC).

Public entry points: :func:`read_chain` (format detected from the columns), :func:`filter_quotes`,
:func:`used_quotes`, :func:`implied_vol_black76`, :func:`black76_price`.
"""

from bayescal.market.filters import FilterSettings, filter_quotes, used_quotes
from bayescal.market.implied_vol import black76_price, implied_vol_black76
from bayescal.market.io import (
    KNOWN_FORMATS,
    bundled_demo_chain,
    detect_format,
    read_chain,
)

__all__ = [
    "KNOWN_FORMATS",
    "FilterSettings",
    "black76_price",
    "bundled_demo_chain",
    "detect_format",
    "filter_quotes",
    "implied_vol_black76",
    "read_chain",
    "used_quotes",
]
