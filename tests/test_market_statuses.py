"""Statuses (a closed, documented set), the per-status / per-expiry filter report, and the static-arbitrage flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayescal.conventions import SOURCE_STATUSES, QuoteStatus
from bayescal.market import FilterSettings, filter_quotes, used_quotes
from bayescal.market.arbitrage import ArbitrageFlag
from bayescal.market.filters import filter_report, status_counts
from bayescal.market.implied_vol import black76_price
from bayescal.market.quotes import make_quotes

REPO = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2026-01-01T08:00:00Z")


def _chain(rows, **kwargs):
    """rows: (expiry offset days, strike, cp, iv or (bid, ask) premiums, forward); half-spread 1% of premium."""
    records = []
    for i, (days, strike, cp, value, fwd) in enumerate(rows):
        expiry = T0 + pd.Timedelta(days=days)
        tau = days / 365.0
        if isinstance(value, tuple):
            bid, ask = value
        else:
            price = float(black76_price(fwd, strike, max(tau, 1e-9), value, cp))
            bid, ask = 0.99 * price, 1.01 * price
        records.append((f"X-{i}", expiry, strike, cp, bid, ask, fwd, 1.0))
    frame = pd.DataFrame(records, columns=["instrument", "expiry", "strike", "cp", "bid", "ask", "forward",
                                           "discount_factor"])
    return make_quotes(frame, valuation_time=T0, underlying="X", source="synthetic", fmt="synthetic",
                       premium_note="synthetic", **kwargs)


def test_status_set_is_closed_and_documented():
    names = [s.name.lower() for s in QuoteStatus]
    required = ["ok", "no_bid", "no_ask", "crossed", "below_intrinsic", "above_upper_bound", "iv_not_found",
                "non_positive_tau", "expired", "duplicate", "stale", "capped_iv", "tau_too_short", "in_the_money",
                "few_quotes", "out_of_range", "invalid", "no_forward", "static_arbitrage"]
    assert sorted(names) == sorted(required)
    assert [int(s) for s in QuoteStatus] == list(range(len(names)))  # dense codes 0..18, stable
    assert QuoteStatus.IV_FAILED is QuoteStatus.IV_NOT_FOUND  # the old name stays an alias
    docs = (REPO / "docs" / "conventions.md").read_text() + (REPO / "docs" / "data.md").read_text()
    for status in QuoteStatus:
        assert re.search(rf"\| {int(status)} \| {status.name.lower()} \|", docs), status.name
    assert set(SOURCE_STATUSES) < set(QuoteStatus)


def test_tau_non_positive_and_expired_never_crash():
    q = _chain([(30, 100.0, 1, 0.5, 100.0), (0, 100.0, 1, (1.0, 1.2), 100.0), (-1, 100.0, -1, (1.0, 1.2), 100.0)])
    assert q["status"].to_numpy().tolist() == [0, QuoteStatus.NON_POSITIVE_TAU, QuoteStatus.EXPIRED]
    assert np.isnan(q["mid_iv"].to_numpy()[1:]).all()
    # a source-given tau <= 0 works the same way
    q2 = _chain([(30, 100.0, 1, 0.5, 100.0)] * 3, tau=np.array([0.1, 0.0, -0.5]))
    assert q2["status"].to_numpy().tolist() == [0, QuoteStatus.NON_POSITIVE_TAU, QuoteStatus.EXPIRED]


def test_invalid_duplicate_stale_precedence():
    rows = [(30, 100.0, 1, 0.5, 100.0), (30, 100.0, 1, 0.5, 100.0), (30, -5.0, 1, (1.0, 2.0), 100.0),
            (30, 110.0, -1, 0.5, np.nan), (30, 120.0, 1, 0.5, 100.0), (30, 130.0, 1, 0.5, 100.0)]
    times = pd.DatetimeIndex([T0 - pd.Timedelta(seconds=s) for s in (10, 5, 0, 0, 400)] + [pd.NaT])
    q = _chain(rows, quote_time=times, stale_after_seconds=300)
    codes = q["status"].to_numpy().tolist()
    # rows 0/1 are the same option: the newer (row 1, 5 s old) wins; -5 strike and NaN forward are invalid;
    # 400 s old and unknown times are stale
    assert codes == [QuoteStatus.DUPLICATE, 0, QuoteStatus.INVALID, QuoteStatus.INVALID, QuoteStatus.STALE,
                     QuoteStatus.STALE]
    assert json.loads(q.attrs["read_report"]) == {"ok": 1, "invalid": 2, "duplicate": 1, "stale": 2}
    assert q["source_row"].to_numpy().tolist() == [1, 2, 3, 4, 5, 6]


def test_iv_statuses_split_by_reason():
    # below intrinsic (ITM call under F - K), above the upper bound (call premium >= F), a normal quote
    q = _chain([(30, 80.0, 1, (10.0, 12.0), 100.0), (30, 120.0, 1, (150.0, 160.0), 100.0),
                (30, 100.0, 1, 0.5, 100.0)] + [(30, 100.0 + i, 1, 0.5, 100.0) for i in range(1, 6)])
    f = filter_quotes(q, FilterSettings(otm_only=False, tau_min_days=0.0, min_quotes_per_expiry=1))
    assert f["status"].to_numpy()[:3].tolist() == [QuoteStatus.BELOW_INTRINSIC, QuoteStatus.ABOVE_UPPER_BOUND, 0]
    entry = next(r for r in filter_report(f) if r["filter"] == "iv_inversion")
    assert entry["removed_by_status"] == {"above_upper_bound": 1, "below_intrinsic": 1}
    assert entry["removed_by_expiry"] == {"2026-01-31T08:00": 2}


def test_filter_report_by_status_and_expiry():
    rows = [(30, 100.0 + 5 * i, 1, 0.5, 100.0) for i in range(6)] + [(60, 100.0 + 5 * i, 1, 0.5, 100.0)
                                                                      for i in range(3)]
    rows.append((60, 150.0, 1, (0.0, 1.0), 100.0))  # no bid
    q = filter_quotes(_chain(rows))
    report = {r["filter"]: r for r in filter_report(q)}
    assert report["no_bid"]["removed_by_expiry"] == {"2026-03-02T08:00": 1}
    assert report["min_quotes_per_expiry"]["removed_by_status"] == {"few_quotes": 3}
    assert report["min_quotes_per_expiry"]["removed_by_expiry"] == {"2026-03-02T08:00": 3}
    by_expiry = json.loads(q.attrs["status_by_expiry"])
    assert by_expiry == {"2026-01-31T08:00": {"ok": 6}, "2026-03-02T08:00": {"few_quotes": 3, "no_bid": 1}}
    assert sum(r["removed"] for r in filter_report(q)) + status_counts(q)["ok"] == 10


# --------------------------------------------------------------------------------------------------
# static arbitrage
# --------------------------------------------------------------------------------------------------
def _smile_rows(days, fwd=100.0, strikes=(80, 90, 95, 100, 105, 110, 120), base=0.5):
    return [(days, float(k), 1 if k >= fwd else -1, base + 0.3 * np.log(k / fwd) ** 2, fwd) for k in strikes]


SETTINGS = FilterSettings(tau_min_days=0.0, min_quotes_per_expiry=1)


def test_clean_surface_has_no_flags():
    q = filter_quotes(_chain(_smile_rows(30) + _smile_rows(90)), SETTINGS)
    assert (q["arb_flags"].to_numpy() == 0).all()
    assert json.loads(q.attrs["arbitrage_report"])["flagged"] == 0


def test_butterfly_flag_marks_the_culprit_only():
    rows = _smile_rows(30)
    price = float(black76_price(100.0, 105.0, 30 / 365, rows[4][3], 1))
    rows[4] = (30, 105.0, 1, (1.3 * price, 1.32 * price), 100.0)  # the 105 call far too rich: not convex
    q = filter_quotes(_chain(rows), SETTINGS)
    flags = q["arb_flags"].to_numpy()
    assert flags.tolist() == [0, 0, 0, 0, ArbitrageFlag.BUTTERFLY, 0, 0]
    assert status_counts(q)["ok"] == 7  # flagged, not removed
    dropped = filter_quotes(_chain(rows), FilterSettings(tau_min_days=0.0, min_quotes_per_expiry=1,
                                                         drop_static_arbitrage=True))
    assert dropped["status"].to_numpy()[4] == QuoteStatus.STATIC_ARBITRAGE
    assert json.loads(dropped.attrs["arbitrage_report"]) == {
        "tolerance": 1.0, "dropped": True, "flagged": 1, "by_type": {"vertical": 0, "butterfly": 1, "calendar": 0},
        "by_expiry": {"2026-01-31T08:00": 1}}
    assert used_quotes(dropped).sizes["quote"] == 6


def test_vertical_flag_on_put_converted_by_parity():
    rows = _smile_rows(30)
    # the 90 put quoted above the 95 put: the implied 90 call is below the 95 call... by more than the spreads
    p95 = float(black76_price(100.0, 95.0, 30 / 365, rows[2][3], -1))
    rows[1] = (30, 90.0, -1, (p95 + 0.5, p95 + 0.6), 100.0)
    q = filter_quotes(_chain(rows), SETTINGS)
    flags = q["arb_flags"].to_numpy()
    assert flags[1] & ArbitrageFlag.VERTICAL and (np.delete(flags, 1) == 0).all()


def test_calendar_flag_and_tolerance():
    near = _smile_rows(30, base=0.6)
    far = _smile_rows(90, base=0.3)  # total variance 0.3^2 x 90 days < 0.6^2 x 30 days at every k
    q = filter_quotes(_chain(near + far), SETTINGS)
    flags = q["arb_flags"].to_numpy()
    assert (flags[:7] == 0).all() and (flags[7:] == ArbitrageFlag.CALENDAR).all()
    assert json.loads(q.attrs["arbitrage_report"])["by_type"]["calendar"] == 7
    # a small ATM dip (w 10.71 vs 10.80 vol^2-days) hidden by the bid-ask spread: flagged only at tolerance 0
    far = _smile_rows(90, base=0.345)
    assert (filter_quotes(_chain(near + far), SETTINGS)["arb_flags"].to_numpy() == 0).all()
    strict = filter_quotes(_chain(near + far), FilterSettings(tau_min_days=0.0, min_quotes_per_expiry=1,
                                                              arbitrage_tolerance=0.0))
    flags = strict["arb_flags"].to_numpy()
    assert flags[7 + 3] == ArbitrageFlag.CALENDAR and (flags[:7] == 0).all()


def test_filter_settings_round_trip():
    settings = FilterSettings.from_dict({"drop_static_arbitrage": True, "arbitrage_tolerance": 0.5,
                                         "k_range": [-1, 1]})
    assert settings.k_range == (-1.0, 1.0)
    assert FilterSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown filter setting"):
        FilterSettings.from_dict({"drop_arbitrage": True})
