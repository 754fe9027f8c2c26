"""Quote filters: each one sets a status code on the quotes it removes and reports what it removed.

Nothing is dropped: :func:`filter_quotes` returns the full Dataset with ``status`` set, plus the
report in ``attrs["filter_report"]`` (per filter: removed by status and by expiry);
:func:`used_quotes` selects the ``OK`` quotes that reach a likelihood and checks that none of their
model inputs is non-finite.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayescal.conventions import QUOTE_DIM, IVStatus, QuoteStatus
from bayescal.errors import CalibrationError, QuoteValidationError
from bayescal.market.arbitrage import ArbitrageFlag, static_arbitrage_flags


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
    z_max : float or None
        Keep quotes within ``z_max`` at-the-money standard deviations of the money,
        ``|k| / (iv_atm sqrt(tau)) <= z_max``, with ``iv_atm`` the median mid IV of the (up to) three
        quotes of the expiry nearest ``k = 0`` that passed the previous filters (status
        ``OUT_OF_RANGE``). Unlike ``k_range`` it scales with maturity: far wings of short expiries
        carry little information and are the least reliable quotes.
    min_quotes_per_expiry : int
        Remove whole expiries left with fewer quotes (status ``FEW_QUOTES``).
    drop_static_arbitrage : bool
        Remove the quotes flagged by the static-arbitrage checks (status ``STATIC_ARBITRAGE``).
        Default ``False``: the checks always run and fill ``arb_flags``, but nothing is removed.
    arbitrage_tolerance : float
        Multiple of the quotes' bid-ask room a static-arbitrage violation must exceed to be flagged
        (1: tradable arbitrage against bids and asks; 0: any violation by mid prices).
    """

    require_bid: bool = True
    tau_min_days: float = 2.0
    otm_only: bool = True
    k_range: tuple[float, float] | None = None
    z_max: float | None = None
    min_quotes_per_expiry: int = 5
    drop_static_arbitrage: bool = False
    arbitrage_tolerance: float = 1.0

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
    status: QuoteStatus | np.ndarray  # one code, or a code per quote
    setting: str
    mask: np.ndarray = field(repr=False)  # True = remove


def expiry_label(values: np.ndarray) -> np.ndarray:
    """ISO labels (UTC, to the minute, as :func:`bayescal.inference.expiry_labels`) of expiries; ``NaT`` kept."""
    return np.datetime_as_string(np.asarray(values, "datetime64[ns]"), unit="m")


def near_money_iv(k: np.ndarray, mid_iv: np.ndarray) -> float:
    """At-the-money IV of one expiry from its quotes: the median mid IV of the (up to) three quotes
    nearest ``k = 0``.

    Used by the ``z_max`` filter and to place the Heston/Bates quadrature nodes
    (:func:`bayescal.pricing_models.atm_total_variance`); never an observation.

    Parameters
    ----------
    k : numpy.ndarray, shape (n,)
        Log-moneyness ``ln(K/F)`` of the expiry's quotes, ``n >= 1``.
    mid_iv : numpy.ndarray, shape (n,)
        Their mid implied vols (decimal).
    """
    near = np.argsort(np.abs(k))[:3]
    return float(np.median(mid_iv[near]))


def filter_quotes(quotes: xr.Dataset, settings: FilterSettings | None = None) -> xr.Dataset:
    """Apply the data-quality and optional filters, in a fixed order, to the ``OK`` quotes.

    Order: source statuses set by the reader (reported as ``source``) -> invalid inputs -> tau <= 0
    (expired / non-positive tau) -> no bid -> no ask -> crossed -> tau minimum -> out-of-the-money
    selection -> log-moneyness window -> implied vol (below intrinsic, above the upper bound, not
    found) -> static arbitrage (flags always, removal only with ``drop_static_arbitrage``) ->
    minimum quotes per expiry. Each quote's ``status`` is the first reason that removed it.

    Parameters
    ----------
    quotes : xarray.Dataset
        Canonical quotes (from :func:`bayescal.market.read_chain`).
    settings : FilterSettings, optional
        Defaults to ``FilterSettings()``.

    Returns
    -------
    xarray.Dataset
        A copy with ``status`` and ``arb_flags`` set and attrs ``filter_report`` (JSON list, one
        entry per step: ``filter``, ``status``, ``setting``, ``removed``, ``kept``,
        ``removed_by_status`` and ``removed_by_expiry``), ``status_by_expiry`` (JSON: expiry ->
        status -> count), ``arbitrage_report`` (JSON) and ``filter_settings`` (JSON).
    """
    settings = settings or FilterSettings()
    q = quotes.copy()
    status = q["status"].to_numpy().astype(np.int8).copy()
    labels = expiry_label(q["expiry"].to_numpy())
    strike, forward, tau = (q[v].to_numpy() for v in ("strike", "forward", "tau"))
    cp, k = q["cp"].to_numpy(), q["k"].to_numpy()
    bid, ask = q["bid"].to_numpy(), q["ask"].to_numpy()
    discount = q["discount_factor"].to_numpy()
    report: list[dict[str, Any]] = []

    source = status != QuoteStatus.OK
    _report_step(_Step("source", status.copy(), "set by the reader (read_report)", source), source, status,
                 labels, report)
    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(strike) & (strike > 0) & np.isfinite(forward) & (forward > 0) & np.isfinite(tau)
                    & np.isfinite(discount) & (discount > 0) & np.isfinite(k)) | (cp == 0)
        expired = np.where(tau < 0, QuoteStatus.EXPIRED, QuoteStatus.NON_POSITIVE_TAU).astype(np.int8)
        no_bid = ~(np.isfinite(bid) & (bid > 0))
        no_ask = ~(np.isfinite(ask) & (ask > 0))
        crossed = bid > ask
        short = tau < settings.tau_min_days / 365.0
        itm = np.where(cp > 0, strike < forward, strike >= forward)
    steps = [
        _Step("invalid_input", QuoteStatus.INVALID, "always", invalid),
        _Step("tau_positive", expired, "always (tau < 0 expired, tau == 0 non-positive)", ~(tau > 0)),
        _Step("no_bid", QuoteStatus.NO_BID, f"require_bid={settings.require_bid}", no_bid & settings.require_bid),
        _Step("no_ask", QuoteStatus.NO_ASK, "always (a quote needs a mid)", no_ask),
        _Step("crossed", QuoteStatus.CROSSED, "always", crossed),
        _Step("tau_min", QuoteStatus.TAU_TOO_SHORT, f"tau_min_days={settings.tau_min_days}", short),
        _Step("otm_only", QuoteStatus.IN_THE_MONEY, f"otm_only={settings.otm_only}", itm & settings.otm_only),
    ]
    if settings.k_range is not None:
        lo, hi = settings.k_range
        with np.errstate(invalid="ignore"):
            steps.append(_Step("k_range", QuoteStatus.OUT_OF_RANGE, f"k_range=({lo}, {hi})", ~((k >= lo) & (k <= hi))))
    iv_code = _iv_status_code(q)
    steps.append(_Step("iv_inversion", iv_code, "always (mid, bid and ask IV needed)", iv_code != QuoteStatus.OK))
    for step in steps:
        _apply(step, status, labels, report)

    mid_iv, bid_iv, ask_iv = (q[v].to_numpy() for v in ("mid_iv", "bid_iv", "ask_iv"))
    if settings.z_max is not None:
        far = np.zeros_like(status, dtype=bool)
        for e in np.unique(labels):
            rows = np.flatnonzero((labels == e) & (status == QuoteStatus.OK))
            if rows.size:
                z = np.abs(k[rows]) / (near_money_iv(k[rows], mid_iv[rows]) * np.sqrt(tau[rows]))
                far[rows[z > settings.z_max]] = True
        _apply(_Step("z_max", QuoteStatus.OUT_OF_RANGE, f"z_max={settings.z_max}", far), status, labels, report)
    candidate = (status == QuoteStatus.OK) & np.isfinite(mid_iv) & np.isfinite(bid_iv) & np.isfinite(ask_iv)
    flags = static_arbitrage_flags(
        expiry=q["expiry"].to_numpy(), tau=tau, strike=strike, cp=cp, forward=forward, discount=discount,
        mid=q["mid"].to_numpy(), spread=q["spread"].to_numpy(), k=k, mid_iv=mid_iv, bid_iv=bid_iv, ask_iv=ask_iv,
        candidate=candidate, tolerance=settings.arbitrage_tolerance,
    )
    _apply(_Step("static_arbitrage", QuoteStatus.STATIC_ARBITRAGE,
                 f"drop_static_arbitrage={settings.drop_static_arbitrage}, "
                 f"arbitrage_tolerance={settings.arbitrage_tolerance}",
                 (flags != 0) & settings.drop_static_arbitrage), status, labels, report)

    # minimum quotes per expiry: counted on what is left
    few = np.zeros_like(status, dtype=bool)
    for e in np.unique(labels):
        in_e = (labels == e) & (status == QuoteStatus.OK)
        if 0 < in_e.sum() < settings.min_quotes_per_expiry:
            few |= in_e
    _apply(_Step("min_quotes_per_expiry", QuoteStatus.FEW_QUOTES,
                 f"min_quotes_per_expiry={settings.min_quotes_per_expiry}", few), status, labels, report)

    q["status"] = (QUOTE_DIM, status, quotes["status"].attrs)
    q["arb_flags"] = (QUOTE_DIM, flags, {"description": "static-arbitrage flags (bitmask): "
                                         + ", ".join(f"{int(f)} {f.name.lower()}" for f in ArbitrageFlag),
                                         "tolerance": float(settings.arbitrage_tolerance)})
    q.attrs["filter_report"] = json.dumps(report)
    q.attrs["filter_settings"] = json.dumps(settings.to_dict())
    q.attrs["status_by_expiry"] = json.dumps(_status_by_expiry(status, labels))
    q.attrs["arbitrage_report"] = json.dumps(_arbitrage_report(flags, labels, settings))
    return q


def _iv_status_code(q: xr.Dataset) -> np.ndarray:
    """Quote status from the mid, bid and ask inversions (mid first): below intrinsic, above bound, not found."""
    codes = np.full(q.sizes[QUOTE_DIM], QuoteStatus.OK, np.int8)
    sides = [("iv_status", "mid_iv"), ("bid_iv_status", "bid_iv"), ("ask_iv_status", "ask_iv")]
    for status_name, iv_name in reversed(sides):  # the mid's reason wins: applied last
        iv = q[iv_name].to_numpy()
        side = q[status_name].to_numpy() if status_name in q else np.where(np.isfinite(iv), 0, IVStatus.NOT_FINITE)
        bad = (side != IVStatus.OK) | ~np.isfinite(iv)
        mapped = np.select(
            [side == IVStatus.BELOW_INTRINSIC, side == IVStatus.ABOVE_UPPER_BOUND],
            [QuoteStatus.BELOW_INTRINSIC, QuoteStatus.ABOVE_UPPER_BOUND],
            QuoteStatus.IV_NOT_FOUND,
        ).astype(np.int8)
        codes[bad] = mapped[bad]
    return codes


def _counts(values: np.ndarray) -> dict[str, int]:
    uniq, counts = np.unique(values, return_counts=True)
    return {str(u): int(c) for u, c in zip(uniq, counts, strict=True)}


def _report_step(step: _Step, hit: np.ndarray, status: np.ndarray, labels: np.ndarray,
                 report: list[dict[str, Any]]) -> None:
    codes = step.status if isinstance(step.status, np.ndarray) else np.full(status.size, int(step.status))
    names = np.array([QuoteStatus(int(c)).name.lower() for c in codes[hit]], dtype=object)
    by_status = _counts(names) if hit.any() else {}
    report.append(
        {
            "filter": step.name,
            "status": step.status.name.lower() if isinstance(step.status, QuoteStatus) else "/".join(by_status)
            or "-",
            "setting": step.setting,
            "removed": int(hit.sum()),
            "kept": int((status == QuoteStatus.OK).sum()),
            "removed_by_status": by_status,
            "removed_by_expiry": _counts(labels[hit]) if hit.any() else {},
        }
    )


def _apply(step: _Step, status: np.ndarray, labels: np.ndarray, report: list[dict[str, Any]]) -> None:
    hit = step.mask & (status == QuoteStatus.OK)
    status[hit] = step.status[hit] if isinstance(step.status, np.ndarray) else step.status
    _report_step(step, hit, status, labels, report)


def _status_by_expiry(status: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for e in np.unique(labels):
        names = [QuoteStatus(int(c)).name.lower() for c in status[labels == e]]
        out[str(e)] = _counts(np.array(names, dtype=object))
    return out


def _arbitrage_report(flags: np.ndarray, labels: np.ndarray, settings: FilterSettings) -> dict[str, Any]:
    by_type = {f.name.lower(): int(((flags & f) != 0).sum()) for f in ArbitrageFlag}
    flagged = flags != 0
    return {
        "tolerance": float(settings.arbitrage_tolerance),
        "dropped": bool(settings.drop_static_arbitrage),
        "flagged": int(flagged.sum()),
        "by_type": by_type,
        "by_expiry": _counts(labels[flagged]) if flagged.any() else {},
    }


def filter_report(quotes: xr.Dataset) -> list[dict[str, Any]]:
    """The filter report stored by :func:`filter_quotes` (empty list if never filtered)."""
    return json.loads(quotes.attrs.get("filter_report", "[]"))


def status_counts(quotes: xr.Dataset) -> dict[str, int]:
    """Number of quotes per status name (only statuses that occur)."""
    codes, counts = np.unique(quotes["status"].to_numpy(), return_counts=True)
    return {QuoteStatus(int(c)).name.lower(): int(n) for c, n in zip(codes, counts, strict=True)}


def status_table(quotes: xr.Dataset) -> pd.DataFrame:
    """Quotes per expiry (rows, ISO labels) and status (columns), with totals; zeros where none."""
    labels = expiry_label(quotes["expiry"].to_numpy())
    names = [QuoteStatus(int(c)).name.lower() for c in quotes["status"].to_numpy()]
    table = pd.crosstab(pd.Series(labels, name="expiry"), pd.Series(names, name="status"))
    table["total"] = table.sum(axis=1)
    return table


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
