"""Format detection, the Tardis.dev options_chain reader (hand-made fixture) and the generic column-map reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, SNAPSHOT

from bayescal.errors import QuoteValidationError, UnknownFormatError
from bayescal.market import KNOWN_FORMATS, FilterSettings, filter_quotes, read_chain, used_quotes
from bayescal.market._parse import QuoteParseError
from bayescal.market.filters import status_counts
from bayescal.market.forwards import forward_table

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TARDIS = FIXTURES / "tardis_deribit_options_chain_20200607.csv"
SPX_2011 = DATA / "cboe_spx_options_20110124.csv"


@pytest.mark.parametrize(("name", "fmt"), [
    ("deribit_options_snapshot_20251230T173115Z.csv", "deribit_snapshot"),
    ("deribit_btc_options_20200514.csv", "deribit_ticker"),
    ("deribit_eth_options_20240108.csv", "deribit_book_summary"),
    ("cboe_spx_options_20110124.csv", "cboe_quote_table"),
    ("paper_sepp_rakhmonov_btc_20211021_bidask_iv.csv", "bidask_iv"),
])
def test_format_detected(shared_data, name, fmt):
    assert read_chain(DATA / name, underlying="BTC" if "snapshot" in name else None).attrs["format"] == fmt


def test_unknown_format_lists_every_format(tmp_path):
    bad = tmp_path / "chain.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(UnknownFormatError) as info:
        read_chain(bad)
    for fmt in (*KNOWN_FORMATS, ):
        assert fmt.name in str(info.value)
    assert "generic" in str(info.value) and "columns.toml" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Tardis.dev options_chain
# --------------------------------------------------------------------------------------------------
def test_tardis_fixture():
    q = read_chain(TARDIS)
    assert q.attrs["format"] == "tardis_options_chain"
    raw = pd.read_csv(TARDIS)
    assert len(raw) == 74 and raw.symbol.nunique() == 25
    # one quote per symbol (its latest update) plus the exact duplicate of one row
    assert q.sizes["quote"] == 26
    assert q.attrs["superseded_updates"] == 48 and q.attrs["updates_after_valuation_time"] == 0
    assert q.attrs["valuation_time"] == "2020-06-07T23:59:59.413000+00:00"  # the last exchange timestamp
    assert json.loads(q.attrs["read_report"]) == {"ok": 23, "duplicate": 1, "stale": 1, "capped_iv": 1}
    by_status = dict(zip(q["instrument"].to_numpy(), q["status"].to_numpy(), strict=False))
    assert by_status["BTC-26JUN20-11000-C"] == 15  # stale: last update 10 minutes before the others
    assert by_status["BTC-9JUN20-10500-C"] == 16  # capped_iv: ask_iv = 500
    # the documented example row: BTC premium x underlying_price, IV in percent; our IV reproduces Tardis/Deribit's
    doc = q.set_index(quote="instrument").sel(quote="BTC-9JUN20-9875-P")
    assert float(doc["bid"]) == pytest.approx(0.0205 * 9756.36, rel=1e-15)
    assert float(doc["ask"]) == pytest.approx(0.0235 * 9756.36, rel=1e-15)
    assert str(doc["expiry"].to_numpy())[:16] == "2020-06-09T08:00"
    assert float(doc["venue_bid_iv"]) == pytest.approx(0.5591)
    assert float(doc["bid_iv"]) == pytest.approx(0.5591, abs=2e-4)
    assert float(doc["ask_iv"]) == pytest.approx(0.6894, abs=2e-4)
    f = filter_quotes(q, FilterSettings(tau_min_days=1.0, min_quotes_per_expiry=3))
    assert status_counts(f) == {"ok": 9, "no_bid": 1, "in_the_money": 13, "duplicate": 1, "stale": 1, "capped_iv": 1}
    used = used_quotes(f)
    # mids of 4%-wide, tick-rounded markets sit within a few vol points of the synthetic mark IV
    np.testing.assert_allclose(used["mid_iv"], used["venue_mark_iv"], atol=0.05)


def test_tardis_explicit_valuation_time():
    q = read_chain(TARDIS, valuation_time="2020-06-07T23:58:00Z")
    assert q.sizes["quote"] == 1  # only BTC-26JUN20-11000-C had updated by then
    assert q.attrs["updates_after_valuation_time"] == 71
    with pytest.raises(QuoteValidationError, match="no BTC row at or before"):
        read_chain(TARDIS, valuation_time="2020-06-07T00:00:00Z")


def test_tardis_linear_and_unknown_venues(tmp_path):
    text = TARDIS.read_text().splitlines()
    header, row = text[0], text[1].split(",")
    linear = list(row)
    linear[1] = "BTC_USDC-26JUN20-11000-C"
    linear[9], linear[12] = "170.0", "180.0"  # USDC premiums, not coin
    path = tmp_path / "linear.csv"
    path.write_text(header + "\n" + ",".join(linear) + "\n")
    q = read_chain(path, stale_after_seconds=None)
    assert q.attrs["underlying"] == "BTC_USDC" and float(q["bid"][0]) == 170.0
    other = list(row)
    other[0] = "mystery-options"
    path.write_text(header + "\n" + ",".join(other) + "\n")
    with pytest.raises(QuoteValidationError, match="mystery-options"):
        read_chain(path)


# --------------------------------------------------------------------------------------------------
# generic CSV + column map
# --------------------------------------------------------------------------------------------------
def _spx_as_generic(tmp_path: Path) -> Path:
    """The SPX AM-settled monthlies as a plain CSV: settlement date, type, strike, bid, ask."""
    q = read_chain(SPX_2011)
    am = q["settlement"].to_numpy() == "AM"
    expiry_local = pd.DatetimeIndex(q["expiry"].to_numpy()[am]).tz_localize("UTC").tz_convert("America/New_York")
    frame = pd.DataFrame({
        "Expiration": expiry_local.strftime("%Y-%m-%d"),
        "Type": np.where(q["cp"].to_numpy()[am] > 0, "C", "P"),
        "Strike": q["strike"].to_numpy()[am],
        "Bid": np.nan_to_num(q["bid"].to_numpy()[am]),
        "Ask": np.nan_to_num(q["ask"].to_numpy()[am]),
    })
    path = tmp_path / "spx_am.csv"
    frame.to_csv(path, index=False)
    return path


SPX_MAP = """
name = "spx_plain"
underlying = "SPX"
[columns]
expiry = "Expiration"
option_type = "Type"
strike = "Strike"
bid = "Bid"
ask = "Ask"
[units]
timezone = "America/New_York"
expiry_time = "09:30"
[valuation]
time = "2011-01-24T14:03:00-05:00"
spot = 1290.59
"""


def test_generic_with_parity_matches_cboe_reader(tmp_path, shared_data):
    path = _spx_as_generic(tmp_path)
    (tmp_path / "spx_map.toml").write_text(SPX_MAP)
    q = read_chain(path, column_map=tmp_path / "spx_map.toml")
    assert q.attrs["format"] == "generic:spx_plain"
    assert q.attrs["valuation_time"] == "2011-01-24T19:03:00+00:00"
    cboe = forward_table(read_chain(SPX_2011)).set_index("expiry")
    ours = forward_table(q).set_index("expiry")
    assert len(ours) == 11
    both = ours[ours.status == "ok"]
    # the term-structure fallback interpolates over fewer expiries here (AM only): compare regression fits
    reg = both[(both.method == "regression") & (cboe.loc[both.index, "method"] == "regression")]
    assert len(reg) >= 5
    np.testing.assert_allclose(reg.forward, cboe.loc[reg.index, "forward"], rtol=1e-12)
    np.testing.assert_allclose(reg.rate, cboe.loc[reg.index, "rate"], rtol=1e-9)
    assert status_counts(filter_quotes(q))["ok"] > 500


def test_generic_sidecar_coin_premiums_percent_iv_and_epoch_times(tmp_path):
    frame = pd.DataFrame({
        "sym": ["A-C", "A-P", "B-C"],
        "exp_ms": [1767254400000] * 3,  # 2026-01-01T08:00Z
        "cp": ["call", "put", "call"],
        "K": [100.0, 90.0, 110.0],
        "b": [0.05, 0.02, 0.01], "a": [0.06, 0.03, 0.02],
        "fwd": [100.0, 100.0, 100.0],
        "biv": [50.0, 55.0, 48.0], "aiv": [60.0, 65.0, 58.0],
        "t_ms": [1764576000000, 1764576000000 - 1000, 1764576000000 - 999_000],  # 2025-12-01T08:00Z
    })
    path = tmp_path / "chain.csv"
    frame.to_csv(path, index=False)
    (tmp_path / "chain.columns.toml").write_text("""
[columns]
instrument = "sym"
expiry = "exp_ms"
option_type = "cp"
strike = "K"
bid = "b"
ask = "a"
forward = "fwd"
bid_iv = "biv"
ask_iv = "aiv"
quote_time = "t_ms"
[units]
premium = "coin"
iv = "percent"
time = "ms"
""")
    q = read_chain(path)  # the sidecar <stem>.columns.toml is used
    assert q.attrs["format"] == "generic"
    assert q.attrs["valuation_time"] == "2025-12-01T08:00:00+00:00"
    np.testing.assert_allclose(q["bid"], [5.0, 2.0, 1.0])
    np.testing.assert_allclose(q["bid_iv"], [0.50, 0.55, 0.48])
    assert q["status"].to_numpy().tolist() == [0, 0, 15]  # 999 s old: stale
    assert float(q["tau"][0]) == pytest.approx(31 / 365)


def test_generic_map_errors_are_listed(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("K,T\n1,2\n")
    with pytest.raises(QuoteValidationError) as info:
        read_chain(path, column_map={"columns": {"strike": "K", "bogus": "T"}, "units": {"iv": "bp"}})
    message = str(info.value)
    assert "bogus" in message and "lacks required key(s) ['expiry', 'option_type', 'bid', 'ask']" in message
    assert "iv = 'bp'" in message
    with pytest.raises(QuoteValidationError, match="names column\\(s\\) the file lacks: expiry -> 'E'"):
        read_chain(path, column_map={"columns": {"strike": "K", "expiry": "E", "option_type": "T", "bid": "K",
                                                 "ask": "K", "forward": "K"}, "valuation": {"time": "2026-01-01Z"}})
    bad_toml = tmp_path / "m.toml"
    bad_toml.write_text("[columns\n")
    with pytest.raises(QuoteValidationError, match="not valid TOML"):
        read_chain(path, column_map=bad_toml)


def test_generic_naive_times_need_a_zone(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("E,T,K,B,A,F\n2026-03-01T08:00:00,C,100,1,2,100\n")
    cmap = {"columns": {"expiry": "E", "option_type": "T", "strike": "K", "bid": "B", "ask": "A", "forward": "F"},
            "valuation": {"time": "2026-01-01T00:00:00Z"}}
    with pytest.raises(QuoteParseError, match="column 'E': time without a UTC offset .* data row\\(s\\) 1"):
        read_chain(path, column_map=cmap)
    cmap["units"] = {"timezone": "Europe/Berlin"}
    q = read_chain(path, column_map=cmap)
    assert str(q["expiry"].to_numpy()[0])[:16] == "2026-03-01T07:00"


def test_snapshot_naive_timestamp_is_an_error(tmp_path, shared_data):
    lines = SNAPSHOT.read_text().splitlines()[:4]
    lines[2] = lines[2].replace("2025-12-30T17:31:15.944181+00:00", "2025-12-30T17:31:15.944181", 1)
    path = tmp_path / "snap.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(QuoteParseError) as info:
        read_chain(path, underlying="BTC")
    assert info.value.column == "timestamp" and info.value.rows == [2]
