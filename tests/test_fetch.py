"""``bayescal fetch deribit``: a local http.server (127.0.0.1 only) serves recorded-format JSON answers."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from bayescal.cli import main
from bayescal.errors import BayescalError
from bayescal.market import read_chain
from bayescal.market.fetch import (
    BASE_URL_ENV,
    SNAPSHOT_COLUMNS,
    DeribitUnavailableError,
    FetchError,
    fetch_deribit_snapshot,
)

API = Path(__file__).resolve().parent / "fixtures" / "deribit_api"
STAMP = datetime(2025, 12, 30, 17, 31, 15, 944181, tzinfo=UTC)  # the fixtures' time (usIn)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append(self.path)
        if server.fail_first > 0:
            server.fail_first -= 1
            self.send_error(503, "Service Unavailable")
            return
        if server.delay:
            time.sleep(server.delay)
        if server.mode == "rpc_error":
            self._json(400, {"jsonrpc": "2.0", "error": {"code": 10020, "message": "invalid_currency"}})
            return
        if server.mode == "rpc_error_200":
            self._json(200, {"jsonrpc": "2.0", "error": {"code": 11050, "message": "bad_request"}})
            return
        if server.mode == "not_json":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>maintenance</html>")
            return
        url = urllib.parse.urlsplit(self.path)
        method = url.path.rsplit("/", 1)[-1]
        query = urllib.parse.parse_qs(url.query)
        name = API / f"{method}_{query.get('currency', ['?'])[0]}_{query.get('kind', ['?'])[0]}.json"
        if not name.is_file():
            self._json(404, {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(name.read_bytes())

    def _json(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that timed out closed its socket: expected
        pass


@pytest.fixture
def api():
    server = _Server(("127.0.0.1", 0), _Handler)
    server.requests, server.fail_first, server.delay, server.mode = [], 0, 0.0, "ok"
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/api/v2"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_sleep(_seconds: float) -> None:
    pass


def test_fetch_writes_a_snapshot_read_chain_reads(api, tmp_path):
    out = tmp_path / "snaps" / "btc.csv"
    info = fetch_deribit_snapshot("btc", out, url=api.url, sleep=_no_sleep, clock=lambda: STAMP)
    assert info["rows"] == 5 and info["instruments"] == 5 and info["summaries"] == 6
    assert [urllib.parse.urlsplit(p).path for p in api.requests] == [
        "/api/v2/public/get_instruments", "/api/v2/public/get_book_summary_by_currency"]
    assert all("currency=BTC" in p and "kind=option" in p for p in api.requests)
    header = out.read_text().splitlines()[0].split(",")
    assert tuple(header) == SNAPSHOT_COLUMNS
    assert list(tmp_path.joinpath("snaps").iterdir()) == [out]  # no temporary file left behind
    q = read_chain(out)
    assert q.attrs["format"] == "deribit_snapshot" and q.sizes["quote"] == 5
    assert q.attrs["valuation_time"] == "2025-12-30T17:31:15.944181+00:00"
    one = q.set_index(quote="instrument").sel(quote="BTC-16JAN26-90000-C")
    assert float(one["bid"]) == pytest.approx(0.021 * 88728.95, rel=1e-15)
    assert str(one["expiry"].to_numpy())[:16] == "2026-01-16T08:00"
    assert int(one["cp"]) == 1 and float(one["strike"]) == 90000.0
    assert float(one["venue_mark_iv"]) == pytest.approx(0.431)
    # a null bid (Deribit's missing side) is an empty cell, hence no bid
    assert np.isnan(float(q.set_index(quote="instrument").sel(quote="BTC-16JAN26-95000-C")["bid"]))
    assert json.loads(q.attrs["read_report"]) == {"ok": 5}


def test_fetched_csv_is_an_ordinary_file(api, tmp_path):
    """The snapshot gets mode ``0o666 & ~umask`` (0644 under umask 022), not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        out = fetch_deribit_snapshot("BTC", tmp_path / "btc.csv", url=api.url, sleep=_no_sleep)["path"]
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["btc.csv"]


def test_fetch_base_url_from_environment(api, tmp_path, monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, api.url)
    assert fetch_deribit_snapshot("BTC", tmp_path / "a.csv", sleep=_no_sleep)["base_url"] == api.url


def test_fetch_retries_with_backoff(api, tmp_path):
    api.fail_first = 2
    slept = []
    info = fetch_deribit_snapshot("BTC", tmp_path / "a.csv", url=api.url, retries=3, backoff=0.25, sleep=slept.append)
    assert info["rows"] == 5
    assert slept == [0.25, 0.5] and len(api.requests) == 4


def test_fetch_gives_up_after_bounded_retries(api, tmp_path):
    api.fail_first = 100
    out = tmp_path / "a.csv"
    out.write_text("previous snapshot\n")
    slept = []
    with pytest.raises(DeribitUnavailableError, match="after 3 tries \\(HTTP 503"):
        fetch_deribit_snapshot("BTC", out, url=api.url, retries=2, backoff=1.0, sleep=slept.append)
    assert slept == [1.0, 2.0] and len(api.requests) == 3
    assert out.read_text() == "previous snapshot\n"  # the old file is untouched
    assert list(tmp_path.iterdir()) == [out]


def test_no_network_is_a_typed_error(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/api/v2"
    with pytest.raises(DeribitUnavailableError) as info:
        fetch_deribit_snapshot("BTC", tmp_path / "a.csv", url=url, retries=1, sleep=_no_sleep)
    assert isinstance(info.value, BayescalError) and isinstance(info.value, ConnectionError)
    assert "no network" in str(info.value) and BASE_URL_ENV in str(info.value)
    assert not (tmp_path / "a.csv").exists()


def test_timeout_is_retried_then_typed(api, tmp_path):
    api.delay = 1.0
    start = time.perf_counter()
    with pytest.raises(DeribitUnavailableError, match="timed out"):
        fetch_deribit_snapshot("BTC", tmp_path / "a.csv", url=api.url, timeout=0.2, retries=1, sleep=_no_sleep)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(("mode", "match"), [("rpc_error", "HTTP 400"), ("rpc_error_200", "Deribit error 11050"),
                                             ("not_json", "not JSON")])
def test_api_errors_are_not_retried(api, tmp_path, mode, match):
    api.mode = mode
    with pytest.raises(FetchError, match=match):
        fetch_deribit_snapshot("BTC", tmp_path / "a.csv", url=api.url, retries=3, sleep=_no_sleep)
    assert len(api.requests) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(FetchError, match="currency 'SOL'"):
        fetch_deribit_snapshot("SOL", tmp_path / "a.csv")
    with pytest.raises(FetchError, match="not http"):
        fetch_deribit_snapshot("BTC", tmp_path / "a.csv", url="file:///etc")


def test_cli_fetch(api, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    assert main(["fetch", "deribit", "--currency", "BTC", "--out", str(out), "--base-url", api.url]) == 0
    assert "5 BTC options" in capsys.readouterr().out
    assert read_chain(out, valuation_time="2025-12-30T17:31:15Z", stale_after_seconds=None).sizes["quote"] == 5
    closed = f"http://127.0.0.1:{_closed_port()}/api/v2"
    code = main(["fetch", "deribit", "--out", str(tmp_path / "x.csv"), "--base-url", closed, "--retries", "0"])
    assert code == 2
    assert "could not reach" in capsys.readouterr().err
