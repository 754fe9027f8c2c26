"""Live option-chain snapshots from Deribit's public REST API v2 (stdlib ``urllib``, no credentials).

``fetch_deribit_snapshot(currency, out)`` calls

* ``public/get_instruments?currency=BTC&kind=option&expired=false`` (expiry, strike, option type), and
* ``public/get_book_summary_by_currency?currency=BTC&kind=option`` (bid, ask, mark, underlying),

joins them on ``instrument_name`` and writes the snapshot CSV that
:func:`bayescal.market.read_chain` reads as ``deribit_snapshot`` (the columns of
``deribit_options_snapshot_20251230T173115Z.csv``), atomically (:mod:`bayescal.atomic`: temporary
file in the target folder, fsync, ``os.replace``). Columns the book summary lacks (``delta``, ``vega``:
per-instrument ``public/ticker`` calls) are left empty; ``index_price`` is the book summary's
``estimated_delivery_price``; ``timestamp`` is the time of the book-summary request (UTC).

The base URL is ``base_url=``, else the environment variable ``BAYESCAL_DERIBIT_URL``, else
``https://www.deribit.com/api/v2``. Each request has a timeout and is retried with exponential
backoff on network errors, HTTP 429 and 5xx (not on other 4xx or on a JSON-RPC error). When every
try fails, :class:`DeribitUnavailableError` says so and why (e.g. no network on this machine).
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bayescal.atomic import atomic_path
from bayescal.errors import BayescalError

DEFAULT_BASE_URL = "https://www.deribit.com/api/v2"
BASE_URL_ENV = "BAYESCAL_DERIBIT_URL"
SNAPSHOT_COLUMNS = ("timestamp", "instrument_name", "underlying", "underlying_name", "option_type", "strike",
                    "expiry_datetime", "time_to_maturity", "bid_price", "ask_price", "mark_price", "mid_price",
                    "futures_price", "futures_instrument_name", "implied_volatility", "delta", "vega",
                    "open_interest", "volume", "bid_ask_spread", "currency", "index_price", "volume_usd")
#: inverse (coin-settled) option currencies: their premiums are in coin units, as the snapshot format expects
CURRENCIES = ("BTC", "ETH")
_USER_AGENT = "bayescal-fetch (+https://github.com; research use)"


class FetchError(BayescalError):
    """A live fetch failed: the venue answered with an error, or its answer is not what was expected."""


class DeribitUnavailableError(FetchError, ConnectionError):
    """Deribit could not be reached after every retry (no network, DNS failure, timeout, HTTP 5xx/429)."""


def base_url(override: str | None = None) -> str:
    """The API base URL: ``override``, else ``$BAYESCAL_DERIBIT_URL``, else :data:`DEFAULT_BASE_URL`."""
    url = override or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url.rstrip("/")


def _get_json(url: str, *, timeout: float, retries: int, backoff: float,
              sleep: Callable[[float], None]) -> Any:
    """GET ``url`` and return the JSON-RPC ``result``; retries (``retries`` extra tries) on transient errors."""
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": _USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace") if exc.fp else ""
            last = f"HTTP {exc.code} {exc.reason} {detail}".strip()
            if exc.code == 429 or exc.code >= 500:
                continue
            raise FetchError(f"{url}: {last}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, bad status lines
            last = str(getattr(exc, "reason", exc)) or type(exc).__name__
            continue
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FetchError(f"{url}: answer is not JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise FetchError(f"{url}: answer is not a JSON-RPC object")
        if "error" in payload:
            err = payload["error"] or {}
            raise FetchError(f"{url}: Deribit error {err.get('code')}: {err.get('message')} {err.get('data', '')}")
        if "result" not in payload:
            raise FetchError(f"{url}: JSON-RPC answer has no 'result'")
        return payload["result"]
    raise DeribitUnavailableError(
        f"could not reach {url} after {retries + 1} tries ({last}). This machine may have no network access; "
        f"point ${BASE_URL_ENV} or --base-url at a reachable mirror"
    )


def _iso(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC).isoformat()


def _num(value: Any) -> str:
    """A CSV cell for a number: empty for missing / non-numeric (Deribit sends null for a missing side)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return repr(float(value))


def snapshot_rows(instruments: list[dict], summaries: list[dict], currency: str,
                  stamp: datetime) -> list[dict[str, str]]:
    """Join instruments and book summaries into snapshot rows (one per option with both).

    Raises
    ------
    FetchError
        If an instrument lacks ``instrument_name``, ``strike``, ``option_type`` or ``expiration_timestamp``.
    """
    by_name = {}
    for inst in instruments:
        missing = [k for k in ("instrument_name", "strike", "option_type", "expiration_timestamp") if k not in inst]
        if missing:
            raise FetchError(f"get_instruments entry {inst.get('instrument_name', '?')!r} lacks {missing}")
        by_name[inst["instrument_name"]] = inst
    rows = []
    for summ in summaries:
        inst = by_name.get(summ.get("instrument_name"))
        if inst is None:
            continue
        expiry_ms = inst["expiration_timestamp"]
        bid, ask = summ.get("bid_price"), summ.get("ask_price")
        two_sided = isinstance(bid, int | float) and isinstance(ask, int | float) and bid > 0 and ask > 0
        mark_iv = summ.get("mark_iv")
        rows.append({
            "timestamp": stamp.isoformat(),
            "instrument_name": inst["instrument_name"],
            "underlying": _num(summ.get("underlying_price")),
            "underlying_name": str(summ.get("underlying_index") or ""),
            "option_type": str(inst["option_type"]),
            "strike": _num(inst["strike"]),
            "expiry_datetime": _iso(expiry_ms),
            "time_to_maturity": repr((expiry_ms / 1000.0 - stamp.timestamp()) / (365.25 * 86400)),
            "bid_price": _num(bid) if isinstance(bid, int | float) and bid > 0 else "",
            "ask_price": _num(ask) if isinstance(ask, int | float) and ask > 0 else "",
            "mark_price": _num(summ.get("mark_price")),
            "mid_price": _num(summ.get("mid_price")) if two_sided else "",
            "futures_price": _num(summ.get("underlying_price")),
            "futures_instrument_name": str(summ.get("underlying_index") or ""),
            "implied_volatility": _num(mark_iv / 100.0) if isinstance(mark_iv, int | float) else "",
            "delta": "",
            "vega": "",
            "open_interest": _num(summ.get("open_interest")),
            "volume": _num(summ.get("volume")),
            "bid_ask_spread": _num(ask - bid) if two_sided else "",
            "currency": currency,
            "index_price": _num(summ.get("estimated_delivery_price")),
            "volume_usd": _num(summ.get("volume_usd")),
        })
    return rows


def write_csv_atomic(rows: list[dict[str, str]], out: Path, columns: tuple[str, ...] = SNAPSHOT_COLUMNS) -> Path:
    """Write rows to ``out`` atomically (:func:`bayescal.atomic.atomic_path`: temporary file in the same
    folder, fsync, ``os.replace``; mode ``0o666 & ~umask``).

    Parameters
    ----------
    rows : list of dict
        One dict per CSV row, keyed by column name.
    out : Path
        Destination CSV; its folder is created if missing, an existing file is replaced.
    columns : tuple of str, default SNAPSHOT_COLUMNS
        Header, in order.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OSError
        If the file cannot be written (an existing ``out`` is then left as it was).
    ValueError
        If a row has a key not in ``columns`` (``csv.DictWriter``).
    """
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


def fetch_deribit_snapshot(
    currency: str,
    out: str | Path,
    *,
    url: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Fetch one Deribit option-chain snapshot and write it as a ``deribit_snapshot`` CSV.

    Parameters
    ----------
    currency : str
        ``BTC`` or ``ETH`` (case-insensitive): Deribit's inverse options, premiums in coin units
        (the linear ``USDC`` options quote in USDC and do not fit the snapshot format).
    out : str or Path
        CSV file to write (atomically; its folder is created).
    url : str, optional
        API base URL (default ``$BAYESCAL_DERIBIT_URL`` or ``https://www.deribit.com/api/v2``).
    timeout : float
        Seconds per HTTP request.
    retries : int
        Extra tries per request after the first (backoff ``backoff * 2**i`` seconds).
    backoff : float
        First backoff, seconds.
    sleep : callable
        Sleep function (tests pass a no-op).
    clock : callable
        Returns the snapshot time (timezone-aware; tests pass a fixed one).

    Returns
    -------
    dict
        ``path``, ``rows``, ``timestamp`` (ISO UTC), ``base_url``, ``instruments``, ``summaries``.

    Raises
    ------
    DeribitUnavailableError
        If the API cannot be reached after every retry (no network, timeout, HTTP 5xx / 429).
    FetchError
        For an unknown currency, an API error or an unexpected answer, or no option in the answer.
    """
    currency = currency.upper()
    if currency not in CURRENCIES:
        raise FetchError(f"currency {currency!r} is not one of {list(CURRENCIES)}")
    if not (timeout > 0 and retries >= 0):
        raise FetchError(f"timeout must be > 0 and retries >= 0 (got {timeout}, {retries})")
    root = base_url(url)
    if urllib.parse.urlsplit(root).scheme not in ("http", "https"):
        raise FetchError(f"base URL {root!r} is not http(s)")
    query = urllib.parse.urlencode({"currency": currency, "kind": "option"})
    get = dict(timeout=timeout, retries=retries, backoff=backoff, sleep=sleep)
    instruments = _get_json(f"{root}/public/get_instruments?{query}&expired=false", **get)
    stamp = clock().astimezone(UTC)
    summaries = _get_json(f"{root}/public/get_book_summary_by_currency?{query}", **get)
    if not isinstance(instruments, list) or not isinstance(summaries, list):
        raise FetchError(f"{root}: get_instruments / get_book_summary_by_currency did not return lists")
    rows = snapshot_rows(instruments, summaries, currency, stamp)
    if not rows:
        raise FetchError(f"{root}: no {currency} option is in both get_instruments ({len(instruments)}) and "
                         f"get_book_summary_by_currency ({len(summaries)})")
    path = write_csv_atomic(rows, Path(out))
    return {"path": path, "rows": len(rows), "timestamp": stamp.isoformat(), "base_url": root,
            "instruments": len(instruments), "summaries": len(summaries)}
