"""HTML reports, checked the way a reader sees them: built from real fits, rendered in headless Chromium.

Each rendered report must load without any page error or console message, show every image, and
show the key numbers (max R-hat, min bulk ESS, divergences, RMSE, arbitrage-free share, gate
status; per window for a track) equal to those stored in the result files. Screenshots of a real BTC
calibration and of a 3-window SSVI track are written to ``$BAYESCAL_TEST_ARTIFACTS`` (or pytest's
temporary folder) and their paths printed. Chromium is required: without it these tests fail.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import DAILY, SNAPSHOT

from bayescal.inference import fit
from bayescal.market import bundled_demo_chain, read_chain
from bayescal.report import (
    DIAGNOSTIC_EXPIRY_DAYS,
    _environment,
    diagnostic_data,
    key_parameters,
    track_report_data,
    write_outputs,
    write_track_report,
)
from bayescal.results import CalibrationResult
from bayescal.sequential import run_track
from bayescal.spec import load_spec

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
SMALL = {"chains": 2, "draws": 200, "tune": 300, "random_seed": 11}
WINDOW_SIZE = (1200, 3000)
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def find_chromium() -> str | None:
    """``$BAYESCAL_CHROMIUM``, ``chromium`` on PATH or ``/usr/bin/chromium``."""
    candidates = [os.environ.get("BAYESCAL_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail("headless Chromium is required to check the HTML reports and was not found (looked at "
                    "$BAYESCAL_CHROMIUM, `chromium` on PATH, /usr/bin/chromium). Install it with "
                    "`apt-get update && apt-get install -y chromium` (scripts/setup.sh does this when run as root).")
    return path


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: ``$BAYESCAL_TEST_ARTIFACTS`` if set, else a pytest temporary folder."""
    folder = os.environ.get("BAYESCAL_TEST_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("report_artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class _DomReader(HTMLParser):
    """Text of every element with an id, and the attributes of ``<body>``, from Chromium's dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self.images = 0
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in attrs.items()}
        if tag == "img":
            self.images += 1
        if tag in VOID_TAGS:
            return
        self._open.append((tag, attrs.get("id")))
        if attrs.get("id"):
            self.texts.setdefault(attrs["id"], "")

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.texts[element_id] += data


@dataclass
class Rendered:
    body: dict[str, str]
    texts: dict[str, str]
    images: int
    console: list[str] = field(default_factory=list)

    def text(self, element_id: str) -> str:
        assert element_id in self.texts, f"no element with id {element_id!r} in the rendered report"
        return " ".join(self.texts[element_id].split())

    def number(self, element_id: str) -> float:
        return float(self.text(element_id).rstrip("%"))


def _chromium(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="bayescal-chromium-") as profile:
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180, check=False)


def render(chromium: str, html: Path, screenshot: Path | None = None) -> Rendered:
    """Load ``html`` in headless Chromium: the DOM after the load event, console lines, optional screenshot."""
    url = html.resolve().as_uri()
    proc = _chromium(chromium, "--virtual-time-budget=10000", "--dump-dom", url)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    reader = _DomReader()
    reader.feed(proc.stdout)
    # the report writes no console output at all: any console line is an error, a warning or a CSP block
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        shot = _chromium(chromium, f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}", f"--screenshot={screenshot}",
                         url)
        assert shot.returncode == 0 and screenshot.is_file(), f"no screenshot:\n{shot.stderr[-3000:]}"
    return Rendered(reader.body, reader.texts, reader.images, console)


def assert_clean(page: Rendered, n_images: int) -> None:
    """No page error, no console message, every image loaded."""
    assert page.body.get("data-checked") == "true", f"the page's self-check did not run: {page.body}"
    assert page.console == [], "console messages:\n" + "\n".join(page.console)
    assert page.body["data-errors"] == "0", page.body.get("data-error-messages")
    assert page.images == n_images
    assert page.body["data-images"] == str(n_images)
    assert page.body["data-images-loaded"] == str(n_images)
    assert page.body["data-images-ok"] == "true"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _show(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


# --- fits ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def btc_run(shared_data, tmp_path_factory) -> Path:
    """Per-expiry SVI on the real 2025-12-30 BTC chain (small draws), with its outputs."""
    out = tmp_path_factory.mktemp("btc_run")
    result = fit(load_spec("svi").with_fit(**SMALL), read_chain(SNAPSHOT, underlying="BTC"), progressbar=False)
    result.save(out / "result.nc")
    write_outputs(result, out)
    return out


@pytest.fixture(scope="module")
def track_run(shared_data, tmp_path_factory) -> Path:
    """A 3-window SSVI track on the first three daily February 2026 chains (small draws), with its report."""
    out = tmp_path_factory.mktemp("track_run")
    files = sorted(DAILY.glob("*.csv"))[:3]
    assert len(files) == 3, f"expected daily chains in {DAILY}"
    run_track(files, load_spec("ssvi").with_fit(**SMALL), out, underlying="BTC", log=lambda line: None)
    write_track_report(out)
    return out


# --- rendered reports --------------------------------------------------------------------------------

def test_page_check_catches_errors(chromium, tmp_path):
    """The self-check is live: a remote image (blocked) and a script error are caught."""
    html = _environment().from_string(
        '{% extends "_base.html.j2" %}{% block body %}<img alt="remote" src="https://example.invalid/x.png">'
        "<script>noSuchFunction();</script>{% endblock %}"
    ).render(bayescal_version="test")
    path = tmp_path / "bad.html"
    path.write_text(html)
    page = render(chromium, path)
    assert page.body["data-checked"] == "true"
    assert int(page.body["data-errors"]) >= 2, page.body
    assert page.body["data-images-ok"] == "false"
    assert any("noSuchFunction" in line for line in page.console), page.console
    assert any("Content Security Policy" in line for line in page.console), page.console


def test_btc_report_in_chromium(btc_run, chromium, artifacts, capsys):
    result = CalibrationResult.load(btc_run / "result.nc")
    conv, quality = result.convergence, result.fit_quality
    n_expiries = result.posterior.sizes["expiry"]
    shot = artifacts / "report_btc_svi.png"
    page = render(chromium, btc_run / "report.html", shot)
    assert_clean(page, n_expiries + 3)  # smiles, trace, rank, pair
    assert page.text("gate-status") == conv["status"]
    assert abs(page.number("max-rhat") - conv["max_rhat"]) <= 0.5e-4 + 1e-12
    assert abs(page.number("min-ess-bulk") - conv["min_ess_bulk"]) <= 0.5 + 1e-9
    assert int(page.text("divergences")) == conv["divergences"]
    assert abs(page.number("rmse") - quality["rmse_vol_points"]) <= 0.5e-3 + 1e-12
    assert abs(page.number("arb-free") - 100 * quality["arbitrage_free_share"]) <= 0.05 + 1e-9
    assert int(page.text("n-used")) == quality["n_quotes"]
    assert page.text("model") == "svi"
    assert page.text("seed") == str(SMALL["random_seed"])
    assert page.text("valuation-time") == result.idata.attrs["valuation_time"]
    assert "approximate-label" not in page.texts
    assert png_size(shot) == WINDOW_SIZE
    _show(capsys, f"BTC calibration report screenshot: {shot}; page shows status {conv['status']}, max R-hat "
                  f"{conv['max_rhat']:.4f}, min bulk ESS {conv['min_ess_bulk']:.0f}, "
                  f"divergences {conv['divergences']}, "
                  f"RMSE {quality['rmse_vol_points']:.3f} vol points, arbitrage-free "
                  f"{100 * quality['arbitrage_free_share']:.1f}%, {quality['n_quotes']} quotes, {n_expiries} expiries")


def test_track_report_in_chromium(track_run, chromium, artifacts, capsys):
    ds = json.loads((track_run / "track_state.json").read_text())["windows"]
    shot = artifacts / "report_track_ssvi.png"
    page = render(chromium, track_run / "report.html", shot)
    last = CalibrationResult.load(track_run / ds[-1]["result"])
    assert_clean(page, 1 + last.posterior.sizes["expiry"])  # parameter bands + the latest window's smiles
    assert int(page.text("n-windows")) == 3
    assert int(page.text("n-conflicts")) == sum(w["conflict"] for w in ds)
    assert int(page.text("n-failed")) == sum(w["status"] == "fail" for w in ds)
    for i, w in enumerate(ds):
        result = CalibrationResult.load(track_run / w["result"])
        conv, quality = result.convergence, result.fit_quality
        assert page.text(f"window-{i}-status") == w["status"] == conv["status"]
        assert page.text(f"window-{i}-conflict").startswith("CONFLICT" if w["conflict"] else "no")
        assert abs(page.number(f"window-{i}-max-rhat") - conv["max_rhat"]) <= 0.5e-4 + 1e-12
        assert int(page.text(f"window-{i}-divergences")) == conv["divergences"]
        assert abs(page.number(f"window-{i}-rmse") - quality["rmse_vol_points"]) <= 0.5e-3 + 1e-12
        assert abs(page.number(f"window-{i}-arb-free") - 100 * quality["arbitrage_free_share"]) <= 0.05 + 1e-9
        mean = w["summary"]["rho"]["mean"]
        assert np.isclose(float(page.text(f"window-{i}-rho").split()[0]), mean, rtol=1e-3, atol=1e-6)
    assert png_size(shot) == WINDOW_SIZE
    _show(capsys, f"track report screenshot: {shot}; windows (status, conflict, rho mean): "
                  + "; ".join(f"{w['status']}, {w['conflict']}, {w['summary']['rho']['mean']:.4f}" for w in ds))


def test_approximate_report_is_labelled(chromium, tmp_path):
    result = fit(load_spec("svi").with_fit(method="map", random_seed=3), read_chain(bundled_demo_chain()),
                 progressbar=False)
    write_outputs(result, tmp_path)
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png") if not p.name.startswith("smile_")) \
        == ["pair.png"]  # approximate draws are no Markov chains: no trace or rank plot
    page = render(chromium, tmp_path / "report.html")
    assert_clean(page, result.posterior.sizes["expiry"] + 1)
    assert "APPROXIMATE FIT (map)" in page.text("approximate-label")
    assert page.text("gate-status") == "approximate"
    assert page.text("max-rhat") == "n/a"


# --- plot data -----------------------------------------------------------------------------------

def test_diagnostic_parameters_and_expiry(btc_run):
    result = CalibrationResult.load(btc_run / "result.nc")
    keys = key_parameters(result)
    assert keys["var_names"] == ["svi_vmin", "svi_wing_left", "svi_wing_right", "svi_m_scaled", "svi_sigma_scaled",
                                 "sigma_obs"]
    days = 365 * result.idata["constant_data"]["tau_expiry"].to_numpy()
    assert keys["expiry_index"] == int(np.argmin(np.abs(days - DIAGNOSTIC_EXPIRY_DAYS)))
    assert abs(keys["expiry_days"] - DIAGNOSTIC_EXPIRY_DAYS) == np.min(np.abs(days - DIAGNOSTIC_EXPIRY_DAYS))
    data = diagnostic_data(result)
    post = data["posterior"].to_dataset()
    assert list(post.data_vars) == keys["var_names"]
    assert set(post.dims) == {"chain", "draw"}
    e = keys["expiry_index"]
    np.testing.assert_array_equal(post["svi_vmin"].to_numpy(), result.posterior["svi_vmin"].isel(expiry=e).to_numpy())
    assert "diverging" in data["sample_stats"].to_dataset()
    assert {p.name for p in (btc_run / "figures").glob("*.png")} >= {"trace.png", "rank.png", "pair.png"}


def test_track_report_data_matches_track_file(track_run):
    data = track_report_data(track_run)
    ds = data["tree"].to_dataset()
    assert data["n_windows"] == ds.sizes["window"] == 3
    assert data["parameters"] == ["rho", "eta", "gamma"]
    for i, w in enumerate(data["windows"]):
        assert w["status"] == str(ds["status"].to_numpy()[i])
        assert w["params"]["eta"]["q97"] == pytest.approx(float(ds["eta_q97"].to_numpy()[i]))
        assert w["result_file"] == f"window_{i:02d}.nc"
    assert data["latest"] is not None
    assert (track_run / "track.png").is_file()


def test_track_report_needs_track_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="track.nc"):
        write_track_report(tmp_path)
