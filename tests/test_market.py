"""Market layer: readers, USD conversion, tau, statuses and the filter report on real chains."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DAILY, SNAPSHOT

from bayescal.conventions import QuoteStatus
from bayescal.errors import QuoteValidationError, UnknownFormatError
from bayescal.market import (
    FilterSettings,
    bundled_demo_chain,
    filter_quotes,
    implied_vol_black76,
    read_chain,
    used_quotes,
)
from bayescal.market.filters import filter_report, status_counts


@pytest.fixture(scope="module")
def btc(shared_data):
    return read_chain(SNAPSHOT, underlying="BTC")


@pytest.fixture(scope="module")
def raw_btc(shared_data):
    frame = pd.read_csv(SNAPSHOT)
    return frame[frame.currency == "BTC"].set_index("instrument_name")


def test_snapshot_rows_and_attrs(btc):
    assert btc.sizes["quote"] == 630
    assert set(btc["underlying"].to_numpy()) == {"BTC"}
    assert btc.attrs["valuation_time"] == "2025-12-30T17:31:15.944181+00:00"
    assert btc.attrs["day_count"] == "ACT/365F"
    assert btc.attrs["format"] == "deribit_snapshot"
    assert len(np.unique(btc["expiry"].to_numpy())) == 12
    assert (btc["status"].to_numpy() == QuoteStatus.OK).all()  # nothing filtered before filter_quotes


def test_snapshot_usd_conversion(btc, raw_btc):
    q = btc.set_index(quote="instrument").sel(quote="BTC-16JAN26-82000-C")
    row = raw_btc.loc["BTC-16JAN26-82000-C"]
    assert float(q["bid"]) == pytest.approx(0.084 * 88728.94666666667, rel=1e-15)
    assert float(q["ask"]) == pytest.approx(row.ask_price * row.underlying, rel=1e-15)
    assert float(q["forward"]) == pytest.approx(88728.94666666667)
    assert float(q["k"]) == pytest.approx(np.log(82000.0 / 88728.94666666667), rel=1e-14)
    assert int(q["cp"]) == 1


def test_snapshot_tau_matches_file_convention(btc, raw_btc):
    """The file counts 365.25-day years; ours is ACT/365F to the second: same seconds, other unit."""
    file_tau = raw_btc.loc[btc["instrument"].to_numpy(), "time_to_maturity"].to_numpy()
    np.testing.assert_allclose(btc["tau"].to_numpy(), file_tau * 365.25 / 365.0, rtol=0, atol=1e-9)


def test_snapshot_mark_iv_reproduced(btc, raw_btc):
    """IV of Deribit's mark price (coin x forward, D=1, our tau) reproduces Deribit's mark IV."""
    raw = raw_btc.loc[btc["instrument"].to_numpy()]
    mark_usd = raw["mark_price"].to_numpy() * btc["forward"].to_numpy()
    iv, status = implied_vol_black76(mark_usd, btc["forward"].to_numpy(), btc["strike"].to_numpy(),
                                     btc["tau"].to_numpy(), btc["cp"].to_numpy())
    cp, strike, forward = (btc[v].to_numpy() for v in ("cp", "strike", "forward"))
    otm = np.where(cp > 0, strike >= forward, strike < forward) & (status == 0)
    assert otm.sum() > 300
    err = np.abs(iv[otm] - raw["implied_volatility"].to_numpy()[otm])
    # Deribit rounds mark IV to 0.01 vol points and mark price to 1e-8 BTC; measured: median 3e-5, max 8e-4
    assert np.median(err) < 1e-4
    assert err.max() < 1e-3


def test_filter_report_counts_every_quote(btc):
    q = filter_quotes(btc, FilterSettings())
    report = filter_report(q)
    assert [r["filter"] for r in report] == ["source", "invalid_input", "tau_positive", "no_bid", "no_ask", "crossed",
                                             "tau_min", "otm_only", "iv_inversion", "static_arbitrage",
                                             "min_quotes_per_expiry"]
    removed = {r["filter"]: r["removed"] for r in report}
    assert removed["source"] == removed["invalid_input"] == removed["tau_positive"] == 0
    assert removed["static_arbitrage"] == 0  # flagged quotes are only dropped with drop_static_arbitrage
    # every entry splits what it removed by status and by expiry
    for entry in report:
        assert sum(entry["removed_by_status"].values()) == sum(entry["removed_by_expiry"].values()) == entry["removed"]
    assert report[3]["removed_by_status"] == {"no_bid": 18}
    assert removed["no_bid"] == 18
    assert removed["crossed"] == 0
    # 2025-12-31 and 2026-01-01 expiries are < 2 days away at 17:31 UTC on 2025-12-30
    n_short = int((btc["tau"].to_numpy() < 2 / 365).sum())
    assert removed["tau_min"] == n_short - int(((btc["tau"].to_numpy() < 2 / 365) & ~(btc["bid"].to_numpy() > 0)).sum())
    counts = status_counts(q)
    assert sum(counts.values()) == 630
    assert counts["ok"] == report[-1]["kept"]
    assert 630 - counts["ok"] == sum(removed.values())
    # out-of-the-money selection: every kept call has K >= F, every kept put K < F
    ok = q["status"].to_numpy() == QuoteStatus.OK
    cp, K, F = (q[v].to_numpy()[ok] for v in ("cp", "strike", "forward"))
    assert np.all(np.where(cp > 0, K >= F, K < F))
    assert json.loads(q.attrs["filter_settings"])["tau_min_days"] == 2.0


def test_used_quotes_are_finite_and_grouped(btc):
    used = used_quotes(filter_quotes(btc))
    for name in ("k", "tau", "mid_iv", "bid_iv", "ask_iv"):
        assert np.isfinite(used[name].to_numpy()).all()
    assert (used["bid_iv"] <= used["mid_iv"] + 1e-12).all() and (used["mid_iv"] <= used["ask_iv"] + 1e-12).all()
    n_per_expiry = np.bincount(used["expiry_idx"].to_numpy())
    assert n_per_expiry.min() >= 5
    assert len(n_per_expiry) == 10


def test_min_quotes_per_expiry_removes_whole_expiries(btc):
    q = filter_quotes(btc, FilterSettings(min_quotes_per_expiry=30))
    used = used_quotes(q)
    assert np.bincount(used["expiry_idx"].to_numpy()).min() >= 30
    assert (q["status"].to_numpy() == QuoteStatus.FEW_QUOTES).sum() == filter_report(q)[-1]["removed"] > 0


def test_k_range_filter(btc):
    q = filter_quotes(btc, FilterSettings(k_range=(-0.3, 0.3)))
    used = used_quotes(q)
    assert used["k"].min() >= -0.3 and used["k"].max() <= 0.3
    assert any(r["filter"] == "k_range" and r["removed"] > 0 for r in filter_report(q))


def test_z_max_filter_scales_with_maturity(btc):
    """|k| / (iv_atm sqrt(tau)) <= z_max per expiry, iv_atm from the three quotes nearest the money."""
    base = filter_quotes(btc, FilterSettings())
    q = filter_quotes(btc, FilterSettings(z_max=2.0))
    used, before = used_quotes(q), used_quotes(base)
    removed = [r for r in filter_report(q) if r["filter"] == "z_max"]
    assert len(removed) == 1 and removed[0]["removed"] > 0
    assert removed[0]["status"] == "out_of_range"
    for e in np.unique(used["expiry_idx"].to_numpy()):
        rows = used["expiry_idx"].to_numpy() == e
        k, iv, tau = (used[n].to_numpy()[rows] for n in ("k", "mid_iv", "tau"))
        b = before["expiry_idx"].to_numpy() == e
        near = np.argsort(np.abs(before["k"].to_numpy()[b]))[:3]
        iv_atm = np.median(before["mid_iv"].to_numpy()[b][near])
        assert np.all(np.abs(k) / (iv_atm * np.sqrt(tau)) <= 2.0 + 1e-12)
    assert (q["status"].to_numpy() == QuoteStatus.OUT_OF_RANGE).sum() == removed[0]["removed"]


def test_underlying_selection_errors(shared_data):
    with pytest.raises(QuoteValidationError, match=r"several underlyings \['BTC', 'ETH'\]"):
        read_chain(SNAPSHOT)
    with pytest.raises(QuoteValidationError, match="no quotes for underlying 'SOL'"):
        read_chain(SNAPSHOT, underlying="SOL")


def test_unknown_format_lists_known_formats(tmp_path):
    bad = tmp_path / "chain.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(UnknownFormatError) as info:
        read_chain(bad)
    assert "deribit_snapshot" in str(info.value) and "bidask_iv" in str(info.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        read_chain("/nonexistent/chain.csv")


def test_daily_series_reads(shared_data):
    files = sorted(DAILY.glob("*.csv"))
    assert len(files) == 14
    expected_btc_rows = [794, 780, 740, 816, 812, 930, 866, 830, 802, 764, 760, 770, 796, 746]  # SOURCES.md
    for path, n in zip(files, expected_btc_rows, strict=True):
        q = read_chain(path, underlying="BTC")
        assert q.sizes["quote"] == n
        assert (q["tau"] > -1 / 365).all()


def test_bundled_demo_chain():
    q = read_chain(bundled_demo_chain())
    assert q.sizes["quote"] == 49
    assert q.attrs["format"] == "bidask_iv"
    assert len(np.unique(q["tau"].to_numpy())) == 4
    # bid/ask IVs are the file's; the mid IV of the mid premium lies between them
    assert float(q["bid_iv"][0]) == 0.9231 and float(q["ask_iv"][0]) == 0.9399
    assert ((q["bid_iv"] < q["mid_iv"]) & (q["mid_iv"] < q["ask_iv"])).all()
    used = used_quotes(filter_quotes(q))
    assert used.sizes["quote"] == 49  # puts below, calls above the forward, all two-sided
