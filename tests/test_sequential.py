"""Sequential updating: exactness on a conjugate toy, joint-prior round trip, conflict flags, resumable tracks."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pymc as pm
import pytest

from bayescal.errors import SpecError
from bayescal.priors import JointPrior, load_prior_set
from bayescal.sequential import UpdateSettings, carried_parameters, joint_from_draws

IDENTITY = ("identity", 0.0, 0.0)


def _fit_linear_window(x, y, sigma, joint: JointPrior, seed: int) -> dict[str, np.ndarray]:
    with pm.Model():
        p = joint.create_variables("toy")
        pm.Normal("y", mu=p["b0"] + p["b1"] * x, sigma=sigma, observed=y)
        idata = pm.sample(draws=2000, tune=1000, chains=4, random_seed=seed, nuts_sampler="nutpie", progressbar=False,
                          compute_convergence_checks=False)
    post = idata["posterior"]
    return {n: post[f"toy_{n}"].to_numpy().ravel() for n in ("b0", "b1")}


def test_sequential_equals_batch_on_conjugate_linear_gaussian():
    """Window-by-window updating (no inflation) reproduces the batch posterior (Gaussian conjugacy)."""
    rng = np.random.default_rng(11)
    sigma, beta = 0.3, np.array([0.5, -1.2])
    windows = []
    for _ in range(3):
        x = rng.uniform(-1, 1, 25)
        windows.append((x, beta[0] + beta[1] * x + rng.normal(0, sigma, x.size)))
    prior_mean, prior_cov = np.zeros(2), np.eye(2) * 4.0
    joint = JointPrior(("b0", "b1"), (IDENTITY, IDENTITY), prior_mean, prior_cov)
    settings = UpdateSettings()
    for i, (x, y) in enumerate(windows):
        draws = _fit_linear_window(x, y, sigma, joint, seed=i)
        joint = joint_from_draws(draws, {"b0": IDENTITY, "b1": IDENTITY}, settings)
    X = np.column_stack([np.ones(75), np.concatenate([w[0] for w in windows])])
    Y = np.concatenate([w[1] for w in windows])
    batch_prec = np.linalg.inv(prior_cov) + X.T @ X / sigma**2
    batch_cov = np.linalg.inv(batch_prec)
    batch_mean = batch_cov @ (X.T @ Y / sigma**2)
    sd = np.sqrt(np.diag(batch_cov))
    # Monte-Carlo error over three windows of 8,000 draws: well inside 0.1 posterior sd
    assert np.all(np.abs(joint.mean - batch_mean) < 0.1 * sd), (joint.mean, batch_mean)
    np.testing.assert_allclose(np.sqrt(np.diag(joint.cov)), sd, rtol=0.1)
    corr = joint.cov[0, 1] / np.prod(np.sqrt(np.diag(joint.cov)))
    assert abs(corr - batch_cov[0, 1] / np.prod(sd)) < 0.1


def test_inflation_drift_and_floor():
    rng = np.random.default_rng(0)
    z = rng.multivariate_normal([0.0, 1.0], [[0.01, 0.008], [0.008, 0.01]], size=20000)
    draws = {"a": z[:, 0], "b": np.exp(z[:, 1])}
    transforms = {"a": IDENTITY, "b": ("log", 0.0, 0.0)}
    plain = joint_from_draws(draws, transforms, UpdateSettings())
    np.testing.assert_allclose(plain.mean, [0.0, 1.0], atol=0.005)
    np.testing.assert_allclose(plain.cov, [[0.01, 0.008], [0.008, 0.01]], rtol=0.05)
    wide = joint_from_draws(draws, transforms, UpdateSettings(inflation=2.0, drift_sd_per_day=0.1), days=4.0)
    np.testing.assert_allclose(np.diag(wide.cov), 2 * np.diag(plain.cov) + 0.04, rtol=1e-6)
    floored = joint_from_draws(draws, transforms, UpdateSettings(), floor_sd=np.array([0.5, 0.01]))
    assert np.sqrt(floored.cov[0, 0]) == pytest.approx(0.5, rel=1e-6)
    assert floored.cov[1, 1] == pytest.approx(plain.cov[1, 1], rel=1e-6)
    corr = floored.cov[0, 1] / np.sqrt(floored.cov[0, 0] * floored.cov[1, 1])
    assert corr == pytest.approx(0.8, abs=0.02)  # rescaling keeps the correlation
    with pytest.raises(SpecError, match="inflation must be >= 1"):
        UpdateSettings(inflation=0.5)


def test_joint_prior_round_trips_through_toml(tmp_path):
    import tomli_w

    base = load_prior_set("ssvi/crypto")
    joint = JointPrior(("rho", "eta"), (("interval", -0.99, 0.99), ("log", 0.0, 0.0)), np.array([0.1, 0.2]),
                       np.array([[0.04, 0.01], [0.01, 0.09]]), 5.0, "test")
    prior = replace(base, joint=joint)
    path = tmp_path / "p.toml"
    path.write_text(tomli_w.dumps(prior.to_dict()))
    loaded = load_prior_set(path)
    assert loaded.joint.variables == ("rho", "eta") and loaded.joint.nu == 5.0
    np.testing.assert_array_equal(loaded.joint.cov, joint.cov)
    raw = prior.to_dict()
    raw["joint"]["cov"] = [[0.04, 0.5], [0.5, 0.09]]
    path.write_text(tomli_w.dumps(raw))
    with pytest.raises(SpecError, match="not symmetric positive definite"):
        load_prior_set(path)


def test_per_expiry_models_have_nothing_to_carry():
    with pytest.raises(SpecError, match="only per-expiry parameters"):
        carried_parameters("svi")
    assert carried_parameters("ssvi") == ["rho", "eta", "gamma"]


def test_warm_start_values_match_the_next_windows_variables():
    """Posterior means carry over by name, per-expiry ones by expiry label (new expiries start at the mean);
    names the next model lacks, wrong shapes and non-finite values are dropped."""
    import xarray as xr

    from bayescal.inference import _matching_initvals, build_model
    from bayescal.market.filters import filter_quotes, used_quotes
    from bayescal.sequential import _warm_start_values
    from bayescal.spec import load_spec
    from bayescal.studies import simulated_chain

    spec = load_spec("ssvi")
    chain = simulated_chain("black76", {"iv": np.full(5, 0.6)}, np.random.default_rng(0))
    model = build_model(spec, used_quotes(filter_quotes(chain, spec.filters)))
    labels = list(model.coords["expiry"])
    previous = xr.Dataset({
        "ssvi_rho": (("chain", "draw"), np.array([[-0.2, -0.4]])),
        "sigma_obs": (("chain", "draw", "expiry"), np.array([[[0.01, 0.02, 0.03], [0.03, 0.04, 0.05]]])),
        "iv_model": (("chain", "draw", "quote"), np.ones((1, 2, 4))),
    }, coords={"expiry": ["2025-12-25T08:00", *labels[:2]]})
    carried = _warm_start_values(previous)
    assert carried == {"ssvi_rho": pytest.approx(-0.3),
                       "sigma_obs": {"2025-12-25T08:00": pytest.approx(0.02), labels[0]: pytest.approx(0.03),
                                     labels[1]: pytest.approx(0.04)}}
    start = _matching_initvals(model, {**carried, "ssvi_eta": [1.0, 2.0], "ssvi_gamma": float("nan"),
                                       "unknown": 3.0})
    assert set(start) == {"ssvi_rho", "sigma_obs"}
    assert start["ssvi_rho"] == pytest.approx(-0.3)
    # expiries 0 and 1 match by label; the three new ones start at the mean of the three carried values
    np.testing.assert_allclose(start["sigma_obs"], [0.03, 0.04, 0.03, 0.03, 0.03])


def test_level_shift_at_constant_maturity():
    """Mean log ATM-vol change against the previous window's total variance interpolated in tau; short
    expiries (< 30 days) and maturities outside the previous range are left out; threshold per sqrt(day)."""
    from bayescal.sequential import level_shift

    before = {"tau": [0.05, 0.1, 1.0], "atm_iv": [0.9, 0.4, 0.6]}
    w_055 = np.interp(0.55, [0.1, 1.0], [0.4**2 * 0.1, 0.6**2 * 1.0])
    now = {"tau": [0.02, 0.55, 2.0], "atm_iv": [2.0, 1.1 * np.sqrt(w_055 / 0.55), 0.1]}
    out = level_shift(before, now, days=1.0, threshold=0.05)
    assert out["n_expiries"] == 1 and out["flagged"]
    assert out["shift"] == pytest.approx(np.log(1.1), abs=1e-12)
    assert not level_shift(before, now, days=4.0, threshold=0.05)["flagged"]  # 0.0953 < 0.05 * 2
    assert level_shift(before, now, days=0.1, threshold=0.05)["flagged"]  # threshold floored at one day
    assert not level_shift(before, now, days=1.0, threshold=0.0)["flagged"]  # 0 = off
    none = level_shift(before, {"tau": [0.02], "atm_iv": [0.5]}, days=1.0, threshold=0.05)
    assert none["n_expiries"] == 0 and np.isnan(none["shift"]) and not none["flagged"]


def test_level_shift_flags_the_feb_2026_btc_shock(shared_data):
    """The default threshold (0.05 per sqrt day) flags Feb 5, 6 and 7 of the BTC daily series (ATM vol
    jumped ~0.52 -> ~0.72 and fell back) and none of the calm days."""
    from conftest import DAILY

    from bayescal.market import read_chain
    from bayescal.market.filters import filter_quotes
    from bayescal.sequential import atm_term_structure, level_shift
    from bayescal.spec import load_spec

    spec = load_spec("ssvi")
    files = sorted(DAILY.glob("*.csv"))
    flagged, shifts = [], []
    previous = None
    for f in files:
        quotes = read_chain(f, underlying="BTC")
        atm = atm_term_structure(filter_quotes(quotes, spec.filters))
        assert np.all(np.diff(atm["tau"]) > 0) and len(atm["tau"]) == len(atm["atm_iv"])
        if previous is not None:
            out = level_shift(previous, atm, days=1.0, threshold=UpdateSettings().level_shift_max)
            shifts.append(out["shift"])
            if out["flagged"]:
                flagged.append(quotes.attrs["valuation_time"][:10])
        previous = atm
    assert flagged == ["2026-02-05", "2026-02-06", "2026-02-07"], (flagged, np.round(shifts, 3))
    assert shifts[3] > 0 and shifts[4] > 0 and shifts[5] < 0  # up into the shock, down after it


def test_state_file_is_json(tmp_path):
    """The state writer leaves either the old or the new complete file (rename is atomic)."""
    from bayescal.atomic import write_text_atomic  # what bayescal.sequential writes the state file with

    path = tmp_path / "s.json"
    write_text_atomic(path, json.dumps({"a": 1}))
    write_text_atomic(path, json.dumps({"a": 2}))
    assert json.loads(path.read_text()) == {"a": 2}
    assert not list(tmp_path.glob(".*.tmp"))


def test_track_resumes_after_sigkill(tmp_path, shared_data):
    """SIGKILL during window 2 of 3, then re-run: every window is fitted once and the state is never partial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import DAILY

    files = [str(p) for p in sorted(DAILY.glob("*.csv"))[:3]]
    out = tmp_path / "track"
    cmd = [sys.executable, "-m", "bayescal.cli", "track", *files, "--underlying", "BTC", "--model", "ssvi",
           "--out", str(out), "--draws", "100", "--tune", "150", "--chains-per-fit", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    state = out / "track_state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and len(json.loads(state.read_text())["windows"]) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "track finished or died before it could be killed"
    time.sleep(2.0)  # well inside window 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    done_before = json.loads(state.read_text())["windows"]  # complete JSON despite the kill
    assert 1 <= len(done_before) < 3
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming, {len(done_before)} of 3 windows already done" in rerun.stdout
    windows = json.loads(state.read_text())["windows"]
    assert [w["file"] for w in windows] == files  # each window once, in valuation-time order
    assert windows[: len(done_before)] == done_before  # finished windows were not refitted
    # a window that passed the gate hands its posterior on; a failed one carries the old prior forward
    expected = ("joint", "base (conflict", "base (level-shift") if windows[0]["status"] != "fail" else ("base",)
    assert windows[1]["prior_used"].startswith(expected), windows[1]["prior_used"]
    # warm start (default warm_tune) exactly where the window ran on the previous posterior
    assert [w["warm_start"] for w in windows] == [w["prior_used"].startswith("joint") for w in windows]
    assert not windows[0]["warm_start"]
    assert sorted(p.name for p in out.glob("window_*.nc")) == ["window_00.nc", "window_01.nc", "window_02.nc"]
    import xarray as xr

    with xr.open_datatree(out / "track.nc", engine="h5netcdf") as tree:
        ds = tree.to_dataset()
        assert ds.sizes["window"] == 3
        assert {"rho_mean", "eta_q03", "gamma_q97", "conflict", "status"} <= set(ds.data_vars)
        assert (ds["rho_q03"] <= ds["rho_mean"]).all() and (ds["rho_mean"] <= ds["rho_q97"]).all()
