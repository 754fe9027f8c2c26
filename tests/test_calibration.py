"""End-to-end calibration: simulated-data recovery, the bundled chain, the CLI, save/load, real Deribit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayescal.cli import main
from bayescal.inference import fit
from bayescal.market import bundled_demo_chain, read_chain
from bayescal.market.quotes import make_quotes, prices_from_iv
from bayescal.results import CalibrationResult
from bayescal.spec import load_spec

FAST = {"chains": 4, "draws": 400, "tune": 600}


@pytest.fixture(scope="module")
def demo_result():
    spec = load_spec("svi").with_fit(**FAST)
    return fit(spec, read_chain(bundled_demo_chain()), progressbar=False)


def test_demo_fit_converges_and_fits(demo_result):
    conv, quality = demo_result.convergence, demo_result.fit_quality
    assert conv["status"] in ("ok", "warn"), conv["reasons"]
    assert conv["max_rhat"] < 1.02
    assert conv["divergences"] == 0
    assert quality["n_quotes"] == 49
    assert quality["rmse_vol_points"] < 1.0
    assert quality["pp_overlap_share"] > 0.9


def test_demo_result_layout(demo_result):
    tree = demo_result.idata
    for group in ("posterior", "sample_stats", "observed_data", "constant_data", "posterior_predictive", "quotes"):
        assert group in tree.children, group
    post = demo_result.posterior
    assert post["svi_b"].dims == ("chain", "draw", "expiry") and post.sizes["expiry"] == 4
    assert tree["posterior_predictive"]["iv_obs"].dims == ("chain", "draw", "quote")
    # arbitrage-minded by construction: b >= 0, |rho| < 1, sigma > 0, min total variance >= 0
    assert (post["svi_b"] >= 0).all() and (abs(post["svi_rho"]) < 1).all() and (post["svi_sigma"] > 0).all()
    wmin = post["svi_a"] + post["svi_b"] * post["svi_sigma"] * np.sqrt(1 - post["svi_rho"] ** 2)
    assert (wmin >= -1e-12).all()
    # NUTS's sampling time (tuning and draws, compilation excluded) is part of the fit's time
    timings = demo_result.timings
    assert 0 < timings["sampling_seconds"] < timings["fit_seconds"] <= timings["total_seconds"]


def test_refit_reuses_the_compiled_nuts_model(demo_result):
    """A refit of the same spec on the same quotes in the same process takes nutpie's compiled model
    from memory (numba cannot cache it on disk): the same seed gives the same draws, another seed
    other draws, and a changed likelihood compiles anew."""
    from bayescal.compilation import function_cache_events

    spec = load_spec("svi").with_fit(**FAST)
    chain = read_chain(bundled_demo_chain())
    hits = function_cache_events["object_hit"]
    again = fit(spec, chain, progressbar=False, arbitrage_check=False)
    assert function_cache_events["object_hit"] == hits + 1
    assert again.posterior["svi_vmin"].identical(demo_result.posterior["svi_vmin"])
    other = fit(spec.with_fit(random_seed=spec.fit.random_seed + 1), chain, progressbar=False, arbitrage_check=False)
    assert function_cache_events["object_hit"] == hits + 2
    assert not np.allclose(other.posterior["svi_vmin"], demo_result.posterior["svi_vmin"])
    hits = function_cache_events["object_hit"]
    weighted = fit(spec.with_likelihood(spread_weight=0.5), chain, progressbar=False, arbitrage_check=False)
    assert function_cache_events["object_hit"] == hits
    assert weighted.convergence["divergences"] == 0


def test_save_load_round_trip(demo_result, tmp_path):
    path = demo_result.save(tmp_path / "r.nc")
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = CalibrationResult.load(path)
    assert loaded.idata.identical(demo_result.idata)
    assert loaded.convergence == demo_result.convergence
    assert loaded.spec == demo_result.spec


def _raw_from_sampled(taus, vmin, wing_left, wing_right, m_scaled, sigma_scaled):
    """Raw SVI parameters from the coordinates SviRaw samples (its documented map)."""
    s = np.sqrt(taus)
    sigma = s * sigma_scaled
    return {"a": taus * vmin - sigma**2 * np.sqrt(wing_left * wing_right), "b": sigma * (wing_left + wing_right) / 2,
            "rho": (wing_right - wing_left) / (wing_right + wing_left), "m": s * m_scaled, "sigma": sigma}


def _simulated_chain(truth: dict[str, np.ndarray], taus: np.ndarray, rng: np.random.Generator) -> xr.Dataset:
    """Quotes from known raw SVI smiles, with bid-ask spreads and mid noise inside them."""
    rows = []
    forward = 50_000.0
    for e, tau in enumerate(taus):
        k = np.linspace(-1.2, 1.0, 16) * np.sqrt(tau)
        km = k - truth["m"][e]
        w = truth["a"][e] + truth["b"][e] * (truth["rho"][e] * km + np.sqrt(km**2 + truth["sigma"][e] ** 2))
        iv = np.sqrt(w / tau)
        half = 0.004 + 0.01 * np.abs(k)
        mid = iv + rng.normal(0.0, 0.5 * half)
        strike = forward * np.exp(k)
        cp = np.where(strike >= forward, 1, -1)
        expiry = pd.Timestamp("2026-01-01T08:00:00Z") + pd.Timedelta(seconds=round(tau * 365 * 86400))
        for i in range(k.size):
            bid_iv, ask_iv = mid[i] - half[i], mid[i] + half[i]
            rows.append((f"SIM-{e}-{i}", expiry, strike[i], cp[i], bid_iv, ask_iv, forward, 1.0, tau))
    frame = pd.DataFrame(rows, columns=["instrument", "expiry", "strike", "cp", "bid_iv", "ask_iv", "forward",
                                        "discount_factor", "tau"])
    args = [frame[c].to_numpy() for c in ("forward", "strike", "tau", "cp", "discount_factor")]
    frame["bid"] = prices_from_iv(frame["bid_iv"].to_numpy(), *args)
    frame["ask"] = prices_from_iv(frame["ask_iv"].to_numpy(), *args)
    return make_quotes(frame, valuation_time=pd.Timestamp("2026-01-01T08:00:00Z"), underlying="SIM",
                       source="simulated", fmt="simulated", premium_note="simulated", tau=frame["tau"].to_numpy())


def test_parameter_recovery_on_simulated_smiles():
    """Known smiles (parameters in the bulk of the crypto prior) are recovered inside 94% intervals."""
    rng = np.random.default_rng(7)
    taus = np.array([0.05, 0.25, 1.0])
    sampled = {"vmin": np.array([0.45, 0.36, 0.30]), "wing_left": np.array([0.5, 0.45, 0.35]),
               "wing_right": np.array([0.25, 0.3, 0.3]), "m_scaled": np.array([0.1, -0.1, 0.2]),
               "sigma_scaled": np.array([0.7, 0.9, 1.2])}
    truth = _raw_from_sampled(taus, **sampled)
    # the spec's 4 x 1000 draws: with 500 a chain's R-hat sat at 1.011 after target_accept went to 0.99
    spec = load_spec("svi").with_fit(chains=4, draws=1000, tune=700, random_seed=3)
    result = fit(spec, _simulated_chain(truth, taus, rng), progressbar=False)
    assert result.convergence["status"] == "ok", result.convergence["reasons"]
    post = result.posterior
    lo, hi = post.quantile(0.03, ("chain", "draw")), post.quantile(0.97, ("chain", "draw"))
    for e in range(len(taus)):
        # the ATM total variance is what the data pin best: check it tightly
        km = -truth["m"][e]
        w_true = truth["a"][e] + truth["b"][e] * (truth["rho"][e] * km + np.sqrt(km**2 + truth["sigma"][e] ** 2))
        a, b, rho, m, s = (post[f"svi_{n}"].isel(expiry=e) for n in ("a", "b", "rho", "m", "sigma"))
        w_atm = (a + b * (rho * (-m) + np.sqrt(m**2 + s**2))).to_numpy()
        q = np.quantile(w_atm, [0.03, 0.97])
        assert q[0] <= w_true <= q[1]
        assert (q[1] - q[0]) / w_true < 0.05
    checks = [(f"svi_{n}", truth[n]) for n in truth] + [(f"svi_{n}", v) for n, v in sampled.items()]
    misses = [(name, e) for name, values in checks for e in range(len(taus))
              if not float(lo[name][e]) <= values[e] <= float(hi[name][e])]
    assert len(misses) <= 2, misses  # 30 intervals at 94%: ~2 misses expected by chance


def test_sabr_recovery_in_atm_vol_coordinates():
    """SABR sampled in (atm_vol, rho, nu) per expiry recovers a known chain (3 expiries, 45 quotes,
    parameters in the bulk of the crypto prior) with chains that agree; alpha is stored and matches."""
    from bayescal.kernels.sabr import sabr_alpha_from_atm_vol
    from bayescal.studies import simulated_chain

    taus = np.array([7, 30, 91]) / 365.0
    atm_vol, rho, nu = np.array([0.55, 0.5, 0.6]), np.array([-0.3, 0.2, 0.1]), np.array([2.5, 1.5, 1.2])
    alpha = sabr_alpha_from_atm_vol(1.0, taus, atm_vol, 1.0, rho, nu).eval()
    sigma_obs = np.full(taus.size, 0.005)
    spec = load_spec("sabr").with_fit(draws=500, random_seed=11)
    chain = simulated_chain("sabr", {"alpha": alpha, "rho": rho, "nu": nu}, np.random.default_rng(11), taus,
                            noise=(sigma_obs, spec.likelihood.spread_weight))
    result = fit(spec, chain, progressbar=False, arbitrage_check=False)
    conv = result.convergence
    assert conv["max_rhat"] <= 1.01 and conv["min_ess_bulk"] >= 400, conv
    assert conv["divergences"] <= 2, conv  # 0.1% of 2000 draws
    post = result.posterior
    lo, hi = post.quantile(0.03, ("chain", "draw")), post.quantile(0.97, ("chain", "draw"))
    misses = [(n, e) for n, truth in (("atm_vol", atm_vol), ("rho", rho), ("nu", nu)) for e in range(taus.size)
              if not float(lo[f"sabr_{n}"][e]) <= truth[e] <= float(hi[f"sabr_{n}"][e])]
    assert len(misses) <= 1, misses  # 9 intervals at 94%: 0.5 misses expected
    np.testing.assert_allclose(post["sabr_atm_vol"].mean(("chain", "draw")), atm_vol, atol=0.01)
    stored = sabr_alpha_from_atm_vol(1.0, taus, post["sabr_atm_vol"].to_numpy(), 1.0, post["sabr_rho"].to_numpy(),
                                     post["sabr_nu"].to_numpy()).eval()
    np.testing.assert_allclose(post["sabr_alpha"].to_numpy(), stored, rtol=1e-10)


def test_cli_calibrate_demo(tmp_path, capsys):
    code = main(["calibrate", "--demo", "--out", str(tmp_path), "--chains", "2", "--draws", "500", "--tune", "500",
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("result.nc", "summary.csv", "quotes.csv", "greeks.csv", "report.html"):
        assert (tmp_path / name).is_file(), name
    assert len(list((tmp_path / "figures").glob("smile_*.png"))) == 4
    assert "convergence:" in out and "RMSE" in out and "report:" in out
    summary = pd.read_csv(tmp_path / "summary.csv", index_col=0)
    assert {"mean", "sd", "r_hat", "ess_bulk"} <= set(summary.columns)
    assert "svi_a[2021-11-07T20:03]" in summary.index or any(i.startswith("svi_a[") for i in summary.index)
    html = (tmp_path / "report.html").read_text()
    assert html.count('alt="smile') == 4


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "missing.csv"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["calibrate", "--demo", "--model", "nosuch", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
