"""Readers of the real chains in ../shared/data: quotes read, kept and removed by status, with the
counts SOURCES.md states cross-checked against the raw files; SPX put-call-parity forwards and rates."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

from bayescal.conventions import QuoteStatus
from bayescal.errors import QuoteValidationError
from bayescal.market import FilterSettings, filter_quotes, read_chain, used_quotes
from bayescal.market.filters import filter_report, status_counts, status_table
from bayescal.market.forwards import forward_table

BTC_2020 = DATA / "deribit_btc_options_20200514.csv"
ETH_2024 = DATA / "deribit_eth_options_20240108.csv"
SPX_2011 = DATA / "cboe_spx_options_20110124.csv"
SPOT_SPX = 1290.59


def _read_report(q) -> dict[str, int]:
    return json.loads(q.attrs["read_report"])


# --------------------------------------------------------------------------------------------------
# Deribit public/ticker dump, BTC 2020-05-14
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def btc2020(shared_data):
    return read_chain(BTC_2020)


@pytest.fixture(scope="module")
def raw2020(shared_data):
    return pd.read_csv(BTC_2020, index_col=0)


def test_btc2020_counts_match_sources(btc2020, raw2020):
    assert btc2020.attrs["format"] == "deribit_ticker"
    assert btc2020.sizes["quote"] == len(raw2020) == 310
    # SOURCES.md: 259 rows with both sides > 0; 26 with no bid and 26 with no ask (0.0); 65 with ask_iv = 500
    two_sided = (raw2020.best_bid_price > 0) & (raw2020.best_ask_price > 0)
    assert two_sided.sum() == 259
    assert (raw2020.best_bid_price == 0).sum() == 26 and (raw2020.best_ask_price == 0).sum() == 26
    assert _read_report(btc2020) == {"ok": 245, "capped_iv": 65}
    capped = btc2020["status"].to_numpy() == QuoteStatus.CAPPED_IV
    assert set(btc2020["instrument"].to_numpy()[capped]) == set(raw2020.instrument_name[raw2020.ask_iv == 500])
    # 0.0 sides became missing sides (NaN), never zero premiums
    assert np.isnan(btc2020["bid"].to_numpy()).sum() == 26 and np.isnan(btc2020["ask"].to_numpy()).sum() == 26
    expiries = sorted({str(e)[:16] for e in btc2020["expiry"].to_numpy()})
    assert expiries == ["2020-05-14T08:00", "2020-05-15T08:00", "2020-05-22T08:00", "2020-05-29T08:00",
                        "2020-06-26T08:00", "2020-09-25T08:00", "2020-12-25T08:00"]


def test_btc2020_filtered_statuses(btc2020):
    q = filter_quotes(btc2020)
    assert status_counts(q) == {"ok": 114, "no_bid": 22, "no_ask": 25, "tau_too_short": 34, "in_the_money": 50,
                                "capped_iv": 65}
    table = status_table(q)
    assert table.loc["2020-05-22T08:00", "ok"] == 29 and table.loc["2020-05-22T08:00", "capped_iv"] == 18
    assert table["total"].sum() == 310
    used = used_quotes(q)
    assert used.sizes["quote"] == 114 and len(np.unique(used["expiry_idx"])) == 5


def test_btc2020_valuation_time_policy_and_staleness(shared_data, raw2020):
    # default: the last row time (05:44:06.537 UTC), so no quote postdates the valuation time
    q = read_chain(BTC_2020)
    assert q.attrs["valuation_time"] == "2020-05-14T05:44:06.537000+00:00"
    assert q.attrs["timestamp_spread_seconds"] == pytest.approx(150.051)
    assert "max of column 'timestamp'" in q.attrs["valuation_time_policy"]
    assert read_chain(BTC_2020, valuation_time="median").attrs["valuation_time"] == "2020-05-14T05:42:51.013000+00:00"
    assert read_chain(BTC_2020, valuation_time="min").attrs["valuation_time"] == "2020-05-14T05:41:36.486000+00:00"
    explicit = read_chain(BTC_2020, valuation_time="2020-05-14T05:45:00Z", stale_after_seconds=None)
    assert explicit.attrs["valuation_time"] == "2020-05-14T05:45:00+00:00"
    # tau is one number per expiry (from the one valuation time), whatever the row times
    for e in np.unique(q["expiry"].to_numpy()):
        assert np.ptp(q["tau"].to_numpy()[q["expiry"].to_numpy() == e]) == 0.0
    # a 60 s window: rows older than 05:43:06.537 are stale (counted on the raw file), capped rows keep capped_iv
    old = raw2020.timestamp.to_numpy() < raw2020.timestamp.max() - 60_000
    stale = read_chain(BTC_2020, stale_after_seconds=60)
    assert old.sum() == 187
    assert _read_report(stale) == {"ok": 100, "stale": 187, "capped_iv": 23}
    with pytest.raises(QuoteValidationError, match="no time zone"):
        read_chain(BTC_2020, valuation_time="2020-05-14T05:45:00")
    with pytest.raises(QuoteValidationError, match="neither one of"):
        read_chain(BTC_2020, valuation_time="latest-ish")


def test_btc2020_venue_values_kept(btc2020, raw2020):
    row = raw2020.set_index("instrument_name").loc["BTC-22MAY20-9250-P"]
    q = btc2020.set_index(quote="instrument").sel(quote="BTC-22MAY20-9250-P")
    assert float(q["bid"]) == pytest.approx(0.042 * 9352.58, rel=1e-15)
    assert float(q["venue_bid_iv"]) == pytest.approx(row.bid_iv / 100)
    assert float(q["venue_delta"]) == pytest.approx(-0.43897)  # from the greeks dict repr (ast.literal_eval)
    assert float(q["volume_24h"]) == pytest.approx(30.5)  # from the stats dict repr
    # our Black-76 IVs (forward = underlying_price, D = 1, our tau) agree with Deribit's to its rounding
    ok = (btc2020["status"].to_numpy() == 0) & np.isfinite(btc2020["bid_iv"].to_numpy())
    ok &= np.isfinite(btc2020["venue_bid_iv"].to_numpy()) & (btc2020["tau"].to_numpy() > 7 / 365)
    err = np.abs(btc2020["bid_iv"].to_numpy()[ok] - btc2020["venue_bid_iv"].to_numpy()[ok])
    assert ok.sum() > 100 and np.median(err) < 2e-3


# --------------------------------------------------------------------------------------------------
# Deribit book-summary dump, ETH 2024-01-08
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eth2024(shared_data):
    return read_chain(ETH_2024)


def test_eth2024_counts_match_sources(eth2024):
    raw = pd.read_csv(ETH_2024, index_col=0)
    assert eth2024.attrs["format"] == "deribit_book_summary"
    assert eth2024.attrs["underlying"] == "ETH"
    assert eth2024.sizes["quote"] == 684
    # SOURCES.md: 408 two-sided rows, 230 without bid, 253 without ask, strikes 200-8,500
    bid, ask = eth2024["bid"].to_numpy(), eth2024["ask"].to_numpy()
    assert (np.isfinite(bid) & np.isfinite(ask)).sum() == 408 == (raw.bid_price.notna() & raw.ask_price.notna()).sum()
    assert np.isnan(bid).sum() == 230 and np.isnan(ask).sum() == 253
    assert eth2024["strike"].min() == 200 and eth2024["strike"].max() == 8500
    expiries = sorted({str(e)[:10] for e in eth2024["expiry"].to_numpy()})
    assert expiries == ["2024-01-09", "2024-01-10", "2024-01-11", "2024-01-12", "2024-01-19", "2024-01-26",
                        "2024-02-23", "2024-03-29", "2024-06-28", "2024-09-27", "2024-12-27"]
    assert all(str(e)[11:16] == "08:00" for e in eth2024["expiry"].to_numpy())
    assert eth2024.attrs["valuation_time"] == "2024-01-08T11:19:41.429000+00:00"
    assert eth2024.attrs["timestamp_spread_seconds"] == pytest.approx(0.015)
    assert _read_report(eth2024) == {"ok": 684}


def test_eth2024_filtered_statuses_and_usd(eth2024):
    q = filter_quotes(eth2024)
    assert status_counts(q) == {"ok": 280, "no_bid": 230, "no_ask": 46, "tau_too_short": 53, "in_the_money": 75}
    one = eth2024.set_index(quote="instrument").sel(quote="ETH-26JAN24-1200-P")
    assert float(one["bid"]) == pytest.approx(0.0004 * 2241.65, rel=1e-15)
    assert float(one["forward"]) == 2241.65
    # IVs were inverted from prices (the file has none): the mark price's IV is a sane ETH vol
    used = used_quotes(q)
    assert used.sizes["quote"] == 280
    assert 0.3 < float(np.median(used["mid_iv"])) < 1.0


# --------------------------------------------------------------------------------------------------
# CBOE SPX quote table, 2011-01-24 14:03 ET
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spx(shared_data):
    return read_chain(SPX_2011)


def test_spx_rows_quotes_and_expiries(spx):
    assert spx.attrs["format"] == "cboe_quote_table"
    assert spx.sizes["quote"] == 1920  # 960 rows x (call, put)
    assert (spx["cp"].to_numpy() == 1).sum() == (spx["cp"].to_numpy() == -1).sum() == 960
    assert spx.attrs["valuation_time"] == "2011-01-24T19:03:00+00:00"  # 14:03 America/New_York (EST)
    assert spx.attrs["spot"] == SPOT_SPX
    dates = {}
    for root, e in zip(spx["root"].to_numpy(), spx["expiry"].to_numpy(), strict=True):
        dates.setdefault(root, set()).add(pd.Timestamp(e).tz_localize("UTC").tz_convert("America/New_York"))
    # SOURCES.md lists 13 expiration dates; all are here, plus three SPXPM quarterlies it omits
    expirations = {"SPX": ["2011-02-19", "2011-03-19", "2011-04-16", "2011-05-21", "2011-06-18", "2011-09-17",
                           "2011-10-22", "2011-12-17", "2012-06-16", "2012-12-22", "2013-12-21"],
                   "SPXW": ["2011-01-28"], "SPXPM": ["2011-03-31", "2011-06-30", "2011-09-30", "2011-12-30"]}
    assert sum(len(v) for v in expirations.values()) == 16 == len(np.unique(spx["expiry"].to_numpy()))
    # AM (SPX): 09:30 ET on the Friday before the Saturday expiration date; PM: 16:00 ET on the date itself
    am = sorted(t for t in dates["SPX"])
    assert [t.strftime("%Y-%m-%d %H:%M %a") for t in am][:2] == ["2011-02-18 09:30 Fri", "2011-03-18 09:30 Fri"]
    assert [(t + pd.Timedelta(days=1)).strftime("%Y-%m-%d") for t in am] == expirations["SPX"]
    assert sorted(t.strftime("%Y-%m-%d %H:%M") for t in dates["SPXW"]) == ["2011-01-28 16:00"]
    assert sorted(t.strftime("%Y-%m-%d") for t in dates["SPXPM"]) == expirations["SPXPM"]
    assert {t.strftime("%H:%M") for t in dates["SPXPM"]} == {"16:00"}
    # the month letter is 1-based (B = February): not the derived file's one-month-early dates
    one = spx.set_index(quote="instrument").sel(quote="SPX1119B1300-E")
    assert str(one["expiry"].to_numpy())[:16] == "2011-02-18T14:30" and int(one["cp"]) == 1
    assert int(spx.set_index(quote="instrument").sel(quote="SPX1119N1300-E")["cp"]) == -1


def test_spx_statuses(spx):
    assert _read_report(spx) == {"ok": 1918, "no_forward": 2}  # the Oct 2011 expiry: one row, no quotes at all
    q = filter_quotes(spx)
    assert status_counts(q) == {"ok": 807, "no_bid": 156, "in_the_money": 955, "no_forward": 2}
    assert status_table(q).loc["2011-10-21T13:30", "no_forward"] == 2
    used = used_quotes(q)
    assert len(np.unique(used["expiry_idx"])) == 15
    assert np.isfinite(used["mid_iv"]).all() and 0.05 < float(np.median(used["mid_iv"])) < 0.4


def test_spx_parity_forwards_and_rates(spx):
    table = forward_table(spx).set_index("expiry")
    assert len(table) == 16
    bad = table.loc["2011-10-21T13:30"]
    assert bad.status == "too_few_pairs" and bad.n_pairs == 0 and np.isnan(bad.forward)
    ok = table[table.status == "ok"]
    assert len(ok) == 15 and (ok.n_used == 12).all()
    # forwards near the spot 1290.59 and decreasing with tau (dividend yield above the short rate)
    assert (np.abs(ok.forward / SPOT_SPX - 1) < 0.03).all()
    assert (np.diff(ok.forward.to_numpy()) < 0.5).all()
    # implied rates: 2011 US short rates 0.2-1%, 1.3% at 3 years
    assert ok.rate.between(0.002, 0.015).all()
    longer = ok[ok.tau > 0.1]
    assert longer.carry.between(-0.025, -0.005).all()  # carry = r - q with q about 1.9%
    assert abs(ok.loc["2011-01-28T21:00", "forward"] - SPOT_SPX) < 1.0
    # regression where the slope identifies D; term-structure rate for the short expiries
    fallback = ["2011-01-28T21:00", "2011-02-18T14:30", "2011-03-18T13:30", "2011-04-15T13:30"]
    assert ok.index[ok.method == "rate_from_term_structure"].tolist() == fallback
    assert (ok.drop(index=fallback).method == "regression").all()
    assert (ok[ok.method == "regression"].rate_se < 0.005).all()
    # per-quote forward / discount factor are the expiry's
    one = spx.set_index(quote="instrument").sel(quote="SPX1321L1300-E")
    assert float(one["forward"]) == pytest.approx(table.loc["2013-12-20T14:30", "forward"])
    assert float(one["discount_factor"]) == pytest.approx(table.loc["2013-12-20T14:30", "discount_factor"])
    # parity holds at the fitted F and D on the pairs near the money (within their spreads)
    e = spx["expiry"].to_numpy() == spx["expiry"].to_numpy()[spx["instrument"].to_numpy() == "SPX1321L1300-E"][0]
    calls = spx.isel(quote=np.flatnonzero(e & (spx["cp"].to_numpy() == 1)))
    puts = spx.isel(quote=np.flatnonzero(e & (spx["cp"].to_numpy() == -1)))
    near = np.abs(calls["strike"].to_numpy() - float(one["forward"])) < 60
    gap = calls["mid"].to_numpy() - puts["mid"].to_numpy() - float(one["discount_factor"]) * (
        float(one["forward"]) - calls["strike"].to_numpy())
    assert np.all(np.abs(gap[near]) < 0.5 * (calls["spread"].to_numpy() + puts["spread"].to_numpy())[near] + 1.0)


def test_spx_underlying_choice(shared_data):
    assert read_chain(SPX_2011, underlying="spx").attrs["underlying"] == "SPX"
    with pytest.raises(QuoteValidationError, match="no quotes for underlying 'NDX'"):
        read_chain(SPX_2011, underlying="NDX")


def test_spx_min_parity_pairs(shared_data):
    q = read_chain(SPX_2011, min_parity_pairs=40)
    table = forward_table(q).set_index("expiry")
    few = table[table.status == "too_few_pairs"]
    assert (few.n_pairs < 40).all() and len(few) == 7
    assert _read_report(q)["no_forward"] == int(np.isin(
        np.datetime_as_string(q["expiry"].to_numpy(), unit="m"), few.index.to_numpy()).sum())


# --------------------------------------------------------------------------------------------------
# static arbitrage on the real chains
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "underlying"), [(BTC_2020, None), (ETH_2024, None), (SPX_2011, None)])
def test_real_chains_have_no_tradable_static_arbitrage(shared_data, path, underlying):
    q = filter_quotes(read_chain(path, underlying=underlying))
    assert json.loads(q.attrs["arbitrage_report"])["flagged"] == 0
    assert (q["arb_flags"].to_numpy() == 0).all()


def test_mid_price_arbitrage_flags_on_spx(spx):
    """With tolerance 0 (mids), SPX ticks of 0.05 make many butterflies; dropping them is an explicit option."""
    kept = filter_quotes(spx, FilterSettings(arbitrage_tolerance=0.0))
    report = json.loads(kept.attrs["arbitrage_report"])
    flags = kept["arb_flags"].to_numpy()
    assert report["flagged"] == int((flags != 0).sum()) > 0
    assert report["by_type"]["butterfly"] == int(((flags & 2) != 0).sum())
    assert sum(report["by_expiry"].values()) == report["flagged"]
    assert status_counts(kept)["ok"] == 807  # flags alone remove nothing
    dropped = filter_quotes(spx, FilterSettings(arbitrage_tolerance=0.0, drop_static_arbitrage=True))
    entry = next(r for r in filter_report(dropped) if r["filter"] == "static_arbitrage")
    assert entry["removed"] == report["flagged"] == status_counts(dropped)["static_arbitrage"]
    assert status_counts(dropped)["ok"] + report["flagged"] == 807
    # what is left is free of mid-price vertical and butterfly arbitrage
    again = filter_quotes(dropped, FilterSettings(arbitrage_tolerance=0.0))  # earlier statuses are kept
    assert filter_report(again)[0]["removed_by_status"]["static_arbitrage"] == report["flagged"]
    left = again["arb_flags"].to_numpy()[again["status"].to_numpy() == 0]
    assert ((left & 3) == 0).all()
