"""Fuzz every chain reader with hypothesis: corrupted files end in a typed bayescal error or in status codes.

Each example takes a small real (or hand-made) sample of one format and applies 1-4 mutations:
truncated rows, dropped / renamed columns, NaN / text / negative / zero / huge values in cells,
duplicated rows, extra fields, naive or shifted time zones, expiries in the past. Then
``read_chain -> filter_quotes -> used_quotes`` must either raise a subclass of
:class:`bayescal.errors.BayescalError` (a :class:`QuoteParseError` names its column and data rows) or
return quotes whose used model inputs are all finite. Any other exception, and any warning (pytest
turns warnings into errors here), fails the test.

The default suite runs 60 examples per reader (derandomised, so CI is deterministic; about 10 s);
the ``slow`` variant runs 2,000 per reader (14,000 in all) with random seeds (the whole file took 173 s on 2 cores).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, SNAPSHOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayescal.conventions import QuoteStatus
from bayescal.errors import BayescalError, CalibrationError
from bayescal.market import FilterSettings, bundled_demo_chain, filter_quotes, read_chain, used_quotes
from bayescal.market._parse import QuoteParseError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LENIENT = FilterSettings(require_bid=False, tau_min_days=0.0, otm_only=False, min_quotes_per_expiry=1,
                         drop_static_arbitrage=True, arbitrage_tolerance=0.0)
MODEL_INPUTS = ("k", "tau", "mid_iv", "bid_iv", "ask_iv", "forward", "strike")


@dataclass
class Sample:
    """A small file of one format: lines before the table (kept), then CSV rows (header first)."""

    name: str
    prefix: list[str]
    rows: list[list[str]]
    key_columns: list[str]
    read_kwargs: dict = field(default_factory=dict)


def _csv_rows(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text))]


def _head(path: Path, n_rows: int, *, skip_comments: bool = False, pick=None) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    prefix = []
    if skip_comments:
        while lines and lines[0].startswith("#"):
            prefix.append(lines.pop(0))
    rows = _csv_rows("\n".join(lines))
    body = rows[1:] if pick is None else [r for r in rows[1:] if pick(r)]
    return prefix, [rows[0]] + body[:n_rows]


def _samples() -> dict[str, Sample]:
    out = {}
    prefix, rows = _head(SNAPSHOT, 14, pick=lambda r: r[-3] == "BTC")
    out["deribit_snapshot"] = Sample("deribit_snapshot", prefix, rows,
                                     ["timestamp", "underlying", "strike", "expiry_datetime", "bid_price",
                                      "ask_price", "option_type", "currency"], {"underlying": "BTC"})
    prefix, rows = _head(DATA / "deribit_btc_options_20200514.csv", 14)
    out["deribit_ticker"] = Sample("deribit_ticker", prefix, rows,
                                   ["expiration_timestamp", "timestamp", "strike", "underlying_price", "best_bid_price",
                                    "best_ask_price", "ask_iv", "greeks", "stats", "option_type", "instrument_name"])
    prefix, rows = _head(DATA / "deribit_eth_options_20240108.csv", 14)
    out["deribit_book_summary"] = Sample("deribit_book_summary", prefix, rows,
                                         ["creation_timestamp", "expire_date", "strike_price", "underlying_price",
                                          "bid_price", "ask_price", "option_type", "base_currency"])
    lines = (DATA / "cboe_spx_options_20110124.csv").read_text().splitlines()
    # three header lines, then 6 rows of the weekly and 6 of the February expiry near the money
    rows = _csv_rows("\n".join(lines[:3] + lines[9:15] + lines[60:66]))
    out["cboe_quote_table"] = Sample("cboe_quote_table", [], rows, ["Calls", "Bid", "Ask", "Puts"])
    prefix, rows = _head(FIXTURES / "tardis_deribit_options_chain_20200607.csv", 16)
    out["tardis_options_chain"] = Sample("tardis_options_chain", prefix, rows,
                                         ["timestamp", "expiration", "strike_price", "bid_price", "ask_price",
                                          "underlying_price", "type", "symbol", "exchange", "ask_iv"])
    prefix, rows = _head(bundled_demo_chain(), 14, skip_comments=True)
    out["bidask_iv"] = Sample("bidask_iv", prefix, rows, ["ttm_years", "forward", "strike", "bid_iv", "ask_iv",
                                                          "option_type", "discount_factor"])
    generic_rows = [["Exp", "Type", "K", "Bid", "Ask", "F", "Time"]]
    for i, k in enumerate((90, 95, 100, 105, 110, 115)):
        for cp in ("C", "P"):
            generic_rows.append(["2026-03-27T08:00:00+00:00", cp, str(k), "3.0", "3.4", "101.5",
                                 f"2026-01-01T08:00:{i:02d}+00:00"])
    cmap = {"columns": {"expiry": "Exp", "option_type": "Type", "strike": "K", "bid": "Bid", "ask": "Ask",
                        "forward": "F", "quote_time": "Time"}}
    out["generic"] = Sample("generic", [], generic_rows, ["Exp", "Time", "K", "Bid", "Ask", "F", "Type"],
                            {"column_map": cmap})
    return out


SAMPLES = _samples()

VALUES = st.one_of(
    st.sampled_from([
        "", "nan", "NaN", "NA", "abc", "1,5", "-1", "0", "0.0", "-0.0001", "1e308", "inf", "-inf", "1e-300",
        "  12  ", "None", "call", "P", "x", "2019-01-01T08:00:00+00:00", "2030-01-01T08:00:00",
        "2026-01-01T08:00:00+05:30", "2026-01-01", "1500000000000", "1500000000000000", "4102444800000000",
        "-99999999999999999999", "9" * 40, "01JAN19", "31FEB26", "{'delta': 1}", "[1, 2]", "{broken", "'",
        '"', "11 Jan 1100.00 (SPXW1128A1100-E)", "11 Jan 1100.00 (SPXW1128M1100-E)", "(SPXQ1128A1100-E)",
    ]),
    st.text(max_size=10),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)

MUTATION = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 10**6), VALUES),
    st.tuples(st.just("set_key"), st.integers(0, 10**6), st.integers(0, 10**6), VALUES),
    st.tuples(st.just("drop_column"), st.integers(0, 10**6)),
    st.tuples(st.just("rename_column"), st.integers(0, 10**6), st.text(max_size=8)),
    st.tuples(st.just("duplicate_row"), st.integers(0, 10**6)),
    st.tuples(st.just("drop_row"), st.integers(0, 10**6)),
    st.tuples(st.just("negate"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("naive_times"), st.integers(0, 10**6)),
    st.tuples(st.just("shift_zone"), st.integers(0, 10**6), st.sampled_from(["+02:00", "-05:00", "Z", "+14:00"])),
    st.tuples(st.just("truncate_line"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("extra_field"), st.integers(0, 10**6)),
)
_OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


def _mutate(sample: Sample, mutations) -> str:
    rows = [list(r) for r in sample.rows]
    line_ops = []
    for op in mutations:
        kind, header, body = op[0], rows[0], rows[1:]
        if kind in ("set", "negate") and body:
            row = body[op[1] % len(body)]
            if row:
                j = op[2] % len(row)
                row[j] = op[3] if kind == "set" else ("-" + row[j] if row[j] else "-1")
        elif kind == "set_key" and body:
            name = sample.key_columns[op[2] % len(sample.key_columns)]
            if name in header:
                row = body[op[1] % len(body)]
                j = header.index(name)
                if j < len(row):
                    row[j] = op[3]
        elif kind == "drop_column" and header:
            j = op[1] % len(header)
            rows = [r[:j] + r[j + 1:] for r in rows]
        elif kind == "rename_column" and header:
            header[op[1] % len(header)] = op[2]
        elif kind == "duplicate_row" and body:
            rows.append(list(body[op[1] % len(body)]))
        elif kind == "drop_row" and len(body) > 1:
            del rows[1 + op[1] % len(body)]
        elif kind == "naive_times" and body:
            row = body[op[1] % len(body)]
            rows[rows.index(row)] = [_OFFSET.sub("", c) if "T" in c else c for c in row]
        elif kind == "shift_zone" and body:
            row = body[op[1] % len(body)]
            rows[rows.index(row)] = [_OFFSET.sub(op[2], c) if "T" in c else c for c in row]
        else:
            line_ops.append(op)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    lines = sample.prefix + buffer.getvalue().splitlines()
    for op in line_ops:
        if not lines:
            break
        i = op[1] % len(lines)
        if op[0] == "truncate_line":
            lines[i] = lines[i][: op[2] % (len(lines[i]) + 1)]
        elif op[0] == "extra_field":
            lines[i] = lines[i] + ",surplus"
    return "\n".join(lines) + "\n"


def _check(sample: Sample, text: str, folder: Path) -> str:
    path = folder / f"{sample.name}.csv"
    path.write_text(text)
    try:
        quotes = read_chain(path, **sample.read_kwargs)
    except QuoteParseError as exc:
        assert exc.column and exc.rows and all(r >= 0 for r in exc.rows)
        assert repr(exc.column) in str(exc) and "row" in str(exc)
        return "parse_error"
    except BayescalError:
        return "error"
    codes = quotes["status"].to_numpy()
    assert set(np.unique(codes)) <= {int(s) for s in QuoteStatus}
    for settings_ in (LENIENT,):  # the lenient settings let the most quotes through to used_quotes
        filtered = filter_quotes(quotes, settings_)
        try:
            used = used_quotes(filtered)
        except CalibrationError:
            continue
        for name in MODEL_INPUTS:
            assert np.isfinite(used[name].to_numpy()).all(), name
        assert (used["tau"].to_numpy() > 0).all()
    return "read"


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_unmutated_samples_read(name, fuzz_dir, shared_data):
    assert _check(SAMPLES[name], _mutate(SAMPLES[name], []), fuzz_dir) == "read"


def _fuzz(name: str, folder: Path, data) -> None:
    mutations = data.draw(st.lists(MUTATION, min_size=1, max_size=4), label="mutations")
    _check(SAMPLES[name], _mutate(SAMPLES[name], mutations), folder)


FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("name", sorted(SAMPLES))
@FAST
@given(data=st.data())
def test_fuzz_readers(name, fuzz_dir, data):
    _fuzz(name, fuzz_dir, data)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SAMPLES))
@SLOW
@given(data=st.data())
def test_fuzz_readers_heavy(name, fuzz_dir, data):
    _fuzz(name, fuzz_dir, data)


@pytest.mark.parametrize("mutations", [[("set", 2, 214, "inf"), ("set", 2, 483, "inf")],
                                       [("set", 2, 214, "1e308"), ("set", 2, 483, "1e308")]])
def test_cboe_infinite_bid_and_ask_regression(mutations, fuzz_dir):
    """Found by the slow fuzz run: a CBOE row whose bid and ask are both inf (or 1e308) made the parity
    forward's pair table warn (inf - inf, 1e308 + 1e308) instead of ending in a status."""
    _check(SAMPLES["cboe_quote_table"], _mutate(SAMPLES["cboe_quote_table"], mutations), fuzz_dir)


def test_parse_errors_name_column_and_row(tmp_path, shared_data):
    """Targeted cases: text in a numeric column, a bad dict repr, a bad option code: column and data row named."""
    sample = SAMPLES["deribit_ticker"]
    header = sample.rows[0]
    rows = [list(r) for r in sample.rows]
    rows[3][header.index("strike")] = "12k"
    text = _mutate(Sample("t", sample.prefix, rows, []), [])
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(QuoteParseError) as info:
        read_chain(path)
    assert (info.value.column, info.value.rows) == ("strike", [3])
    assert "column 'strike': text that is not a number in data row(s) 3 (e.g. ['12k'])" in str(info.value)
    rows = [list(r) for r in sample.rows]
    rows[5][header.index("greeks")] = "{'vega': __import__('os')}"
    path.write_text(_mutate(Sample("t", sample.prefix, rows, []), []))
    with pytest.raises(QuoteParseError, match="column 'greeks': text that is not a Python dict literal"):
        read_chain(path)
    cboe = SAMPLES["cboe_quote_table"]
    rows = [list(r) for r in cboe.rows]
    rows[4][7] = rows[4][7].replace("M", "A", 1)  # a call month letter in the put column
    path.write_text(_mutate(Sample("c", [], rows, []), []))
    with pytest.raises(QuoteParseError) as info:
        read_chain(path)
    assert info.value.column == "Puts" and info.value.rows == [2]


def test_quote_time_three_centuries_before_valuation_ends_in_a_status_not_an_overflow(fuzz_dir, shared_data):
    """Found by the heavy fuzz run: a Tardis quote time of -7.6e15 us (year 1728) overflowed pandas' int64
    timestamp difference against the 2020 valuation time (OverflowError instead of a status)."""
    sample = SAMPLES["tardis_options_chain"]
    assert _check(sample, _mutate(sample, [("set", 3, 3002, "-7631797739354776.0")]), fuzz_dir) in {
        "read", "parse_error", "error"}


def test_elapsed_seconds_is_exact_and_survives_int64_overflow():
    import pandas as pd

    from bayescal.market.quotes import elapsed_seconds

    start = pd.Timestamp("2020-05-14T08:00:00.000000001Z")
    end = pd.DatetimeIndex(["2020-05-14T08:00:01.5Z", "NaT", "2020-05-13T08:00:00Z"])
    got = elapsed_seconds(start, end)
    assert got[0] == (end[0] - start).total_seconds() and np.isnan(got[1]) and got[2] == -86400.000000001
    far = pd.DatetimeIndex(["1680-01-01T00:00:00Z"]).as_unit("ns")  # 340 years: beyond int64 nanoseconds
    with pytest.raises(OverflowError):
        start - far  # noqa: B018 (what elapsed_seconds must not raise)
    expected = far.asi8[0] / 1e9 - start.value / 1e9
    assert expected < -340 * 365 * 86400
    assert elapsed_seconds(start, far)[0] == pytest.approx(expected, rel=1e-15)
