"""Quote filters: each one sets a status code on the quotes it removes and reports the count.

Nothing is dropped: :func:`filter_quotes` returns the full Dataset with ``status`` set, plus the
report in ``attrs["filter_report"]``; :func:`used_quotes` selects the ``OK`` quotes that reach a
likelihood and checks that none of their model inputs is non-finite.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from bayescal.conventions import QUOTE_DIM, IVStatus, QuoteStatus
from bayescal.errors import CalibrationError, QuoteValidationError


@dataclass(frozen=True)
class FilterSettings:
    """Settings of the optional filters (the data-quality filters always run).

    Attributes
    ----------
    require_bid : bool
        Remove quotes without a positive bid (status ``NO_BID``).
    tau_min_days : float
        Remove expiries closer than this many days (ACT/365F; status ``TAU_TOO_SHORT``).
    otm_only : bool
        Keep calls with strike >= forward and puts with strike < forward (status ``IN_THE_MONEY``).
    k_range : tuple of float or None
        Keep quotes with ``k_range[0] <= k <= k_range[1]`` (status ``OUT_OF_RANGE``).
    min_quotes_per_expiry : int
        Remove whole expiries left with fewer quotes (status ``FEW_QUOTES``).
    """

    require_bid: bool = True
    tau_min_days: float = 2.0
    otm_only: bool = True
    k_range: tuple[float, float] | None = None
    min_quotes_per_expiry: int = 5

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FilterSettings:
        """Build from a spec's ``[filters]`` table (unknown keys raise ``QuoteValidationError``)."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise QuoteValidationError(
                f"unknown filter setting(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}"
            )
        values = dict(values)
        if values.get("k_range") is not None:
            values["k_range"] = tuple(float(v) for v in values["k_range"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for attrs and reports)."""
        return asdict(self)


@dataclass
class _Step:
    name: str
    status: QuoteStatus
    setting: str
    mask: np.ndarray = field(repr=False)  # True = remove


def filter_quotes(quotes: xr.Dataset, settings: FilterSettings | None = None) -> xr.Dataset:
    """Apply the data-quality and optional filters, in a fixed order, to the ``OK`` quotes.

    Order: invalid inputs -> no bid -> no ask -> crossed -> tau minimum -> out-of-the-money
    selection -> log-moneyness window -> mid/bid/ask IV not invertible (below intrinsic, above
    the upper bound, not converged) -> minimum quotes per expiry. Each quote's ``status`` is the first reason
    that removed it.

    Parameters
    ----------
    quotes : xarray.Dataset
        Canonical quotes (from :func:`bayescal.market.read_chain`).
    settings : FilterSettings, optional
        Defaults to ``FilterSettings()``.

    Returns
    -------
    xarray.Dataset
        A copy with ``status`` set and ``attrs["filter_report"]`` a JSON list of
        ``{"filter", "status", "setting", "removed", "kept"}`` entries, one per filter, and
        ``attrs["filter_settings"]`` the settings as JSON.
    """
    settings = settings or FilterSettings()
    q = quotes.copy()
    status = q["status"].to_numpy().copy()
    strike, forward, tau = (q[v].to_numpy() for v in ("strike", "forward", "tau"))
    cp, k = q["cp"].to_numpy(), q["k"].to_numpy()
    bid, ask = q["bid"].to_numpy(), q["ask"].to_numpy()
    iv_status = q["iv_status"].to_numpy()
    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(strike) & (strike > 0) & np.isfinite(forward) & (forward > 0) & np.isfinite(tau))
        no_bid = ~(np.isfinite(bid) & (bid > 0))
        no_ask = ~(np.isfinite(ask) & (ask > 0))
        crossed = bid > ask
        short = tau < settings.tau_min_days / 365.0
        itm = np.where(cp > 0, strike < forward, strike >= forward)
    steps = [
        _Step("invalid_input", QuoteStatus.INVALID, "always", invalid),
        _Step("no_bid", QuoteStatus.NO_BID, f"require_bid={settings.require_bid}", no_bid & settings.require_bid),
        _Step("no_ask", QuoteStatus.NO_ASK, "always (a quote needs a mid)", no_ask),
        _Step("crossed", QuoteStatus.CROSSED, "always", crossed),
        _Step("tau_min", QuoteStatus.TAU_TOO_SHORT, f"tau_min_days={settings.tau_min_days}", short),
        _Step("otm_only", QuoteStatus.IN_THE_MONEY, f"otm_only={settings.otm_only}", itm & settings.otm_only),
    ]
    if settings.k_range is not None:
        lo, hi = settings.k_range
        steps.append(_Step("k_range", QuoteStatus.OUT_OF_RANGE, f"k_range=({lo}, {hi})", (k < lo) | (k > hi)))
    iv_failed = (iv_status != IVStatus.OK) | ~np.isfinite(q["bid_iv"].to_numpy()) | ~np.isfinite(q["ask_iv"].to_numpy())
    steps.append(_Step("iv_inversion", QuoteStatus.IV_FAILED, "always (mid, bid and ask IV needed)", iv_failed))

    report: list[dict[str, Any]] = []
    for step in steps:
        _apply(step, status, report)
    # minimum quotes per expiry: counted on what is left
    expiry = q["expiry"].to_numpy()
    few = np.zeros_like(status, dtype=bool)
    for e in np.unique(expiry):
        in_e = (expiry == e) & (status == QuoteStatus.OK)
        if 0 < in_e.sum() < settings.min_quotes_per_expiry:
            few |= in_e
    _apply(
        _Step("min_quotes_per_expiry", QuoteStatus.FEW_QUOTES,
              f"min_quotes_per_expiry={settings.min_quotes_per_expiry}", few),
        status,
        report,
    )
    # below-intrinsic mids get their own code (they are the most common IV failure)
    below = (status == QuoteStatus.IV_FAILED) & (iv_status == IVStatus.BELOW_INTRINSIC)
    status[below] = QuoteStatus.BELOW_INTRINSIC
    q["status"] = (QUOTE_DIM, status, quotes["status"].attrs)
    q.attrs["filter_report"] = json.dumps(report)
    q.attrs["filter_settings"] = json.dumps(settings.to_dict())
    return q


def _apply(step: _Step, status: np.ndarray, report: list[dict[str, Any]]) -> None:
    hit = step.mask & (status == QuoteStatus.OK)
    status[hit] = step.status
    report.append(
        {
            "filter": step.name,
            "status": step.status.name.lower(),
            "setting": step.setting,
            "removed": int(hit.sum()),
            "kept": int((status == QuoteStatus.OK).sum()),
        }
    )


def filter_report(quotes: xr.Dataset) -> list[dict[str, Any]]:
    """The filter report stored by :func:`filter_quotes` (empty list if never filtered)."""
    return json.loads(quotes.attrs.get("filter_report", "[]"))


def status_counts(quotes: xr.Dataset) -> dict[str, int]:
    """Number of quotes per status name (only statuses that occur)."""
    codes, counts = np.unique(quotes["status"].to_numpy(), return_counts=True)
    return {QuoteStatus(int(c)).name.lower(): int(n) for c, n in zip(codes, counts, strict=True)}


_MODEL_INPUTS = ("k", "tau", "mid_iv", "bid_iv", "ask_iv", "forward", "strike")


def used_quotes(quotes: xr.Dataset) -> xr.Dataset:
    """The quotes with status ``OK``, with an ``expiry`` coordinate index for per-expiry parameters.

    Returns
    -------
    xarray.Dataset
        Quotes sorted by expiry then strike, with an extra ``expiry_idx`` variable (0-based index
        into the sorted unique expiries; labels from :func:`bayescal.inference.expiry_labels`).

    Raises
    ------
    CalibrationError
        If no quote is left.
    QuoteValidationError
        If a used quote has a non-finite model input (a bug upstream: NaN never reaches a likelihood).
    """
    ok = quotes.isel({QUOTE_DIM: np.flatnonzero(quotes["status"].to_numpy() == QuoteStatus.OK)})
    if ok.sizes[QUOTE_DIM] == 0:
        raise CalibrationError(
            f"no quote of {quotes.attrs.get('source')} survives the filters: {filter_report(quotes)}"
        )
    order = np.lexsort((ok["strike"].to_numpy(), ok["expiry"].to_numpy()))
    ok = ok.isel({QUOTE_DIM: order})
    for name in _MODEL_INPUTS:
        values = ok[name].to_numpy()
        if not np.all(np.isfinite(values)):
            bad = ok["instrument"].to_numpy()[~np.isfinite(values)]
            raise QuoteValidationError(f"non-finite {name} on used quotes {list(bad)[:5]}")
    _, expiry_idx = np.unique(ok["expiry"].to_numpy(), return_inverse=True)
    ok["expiry_idx"] = (QUOTE_DIM, expiry_idx.astype(np.int64))
    return ok
