"""Whole-surface models (Heston, Bates, Merton, SSVI) end to end: recovery on simulated chains, the real BTC chain, LOO.

The multi-seed coverage study is a separate command (``python -m bayescal.studies``, see
docs/models.md); here one prior draw per model is recovered, and the issue's real-chain targets are
checked on the 2025-12-30 Deribit BTC snapshot with the specs as shipped (4 chains x 1000 draws).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SNAPSHOT

from bayescal.cli import main
from bayescal.comparison import compare_results
from bayescal.inference import fit
from bayescal.market import read_chain
from bayescal.spec import load_spec
from bayescal.studies import recovery_run

REAL_CHAIN_MODELS = ("svi", "ssvi", "heston", "bates")
#: The prior draws these tests were written for (seeds 1, 6 and 2 of the 20-seed studies before
#: sample_prior drew the free variables alone): pinned, so that the tests do not depend on how a seed maps
#: to a prior draw.
PINNED_TRUTHS = json.loads((Path(__file__).parent / "fixtures" / "recovery_truths.json").read_text())


@pytest.mark.slow
def test_heston_recovery_of_a_prior_draw():
    """Truth drawn from the crypto prior, chain simulated with the exact per-quote kernel, NUTS fit.

    With 5 parameters at 94%, at most one miss is expected by chance, and the fit must pass the gate.
    """
    run = recovery_run(load_spec("heston").with_fit(draws=1000), 1,  # as the 20-seed study ran seed 1
                       truth=PINNED_TRUTHS["heston/1"])
    conv = run["convergence"]
    print(run)
    assert conv["status"] == "ok", conv["reasons"]
    assert conv["max_rhat"] <= 1.01
    assert conv["divergences"] == 0
    misses = [p for p in run["parameters"] if not p["inside"]]
    assert len(misses) <= 1, misses
    assert run["kernel_max_iv_error_vol_points"] < 0.01


@pytest.mark.slow
def test_merton_recovery_of_a_prior_draw():
    """Merton in (total volatility, jump share, intensity, mean ratio) with its series wall: the study's seed 6
    (truth: 4.9 small downward jumps a year carrying 14% of the variance; the 99% quantile of the intensity's
    posterior, 35-38 a year, is where the wall starts) converges with no divergence; a wall 70 times stiffer
    gave 13."""
    run = recovery_run(load_spec("merton"), 6, truth=PINNED_TRUTHS["merton/6"])
    conv = run["convergence"]
    print(run)
    assert conv["status"] == "ok", conv["reasons"]
    assert conv["max_rhat"] <= 1.01 and conv["divergences"] == 0
    truth = {p["name"]: p["truth"] for p in run["parameters"]}
    assert truth["jump_intensity"] == pytest.approx(4.867, abs=1e-3)
    misses = [p for p in run["parameters"] if not p["inside"]]
    assert len(misses) <= 1, misses


@pytest.mark.slow
def test_bates_recovery_of_a_prior_draw_that_traps_chains():
    """Bates in (total_v0, total_theta, jump share) started at the MAP, on the study's seed 2: an extreme prior draw
    (xi 7.9, rho 0.98, 9.2 jumps a year) whose posterior has a minor mode of rare large up-jumps (0.04 a year,
    kappa 51). Started at the support points, 3 of 4 chains sat in it (R-hat 1.53, 5 divergences); from the MAP
    every chain finds the truth (R-hat 1.0023, 0 divergences, 8/8 inside when measured)."""
    run = recovery_run(load_spec("bates"), 2, truth=PINNED_TRUTHS["bates/2"])
    conv = run["convergence"]
    print(run)
    assert conv["max_rhat"] <= 1.01 and conv["divergences"] == 0, conv
    truth = {p["name"]: p["truth"] for p in run["parameters"]}
    assert truth["xi"] == pytest.approx(7.90, abs=0.01) and truth["jump_intensity"] == pytest.approx(9.20, abs=0.01)
    misses = [p for p in run["parameters"] if not p["inside"]]
    assert len(misses) <= 1, misses


@pytest.fixture(scope="module")
def btc_fits(shared_data):
    chain = read_chain(SNAPSHOT, underlying="BTC")
    return {model: fit(load_spec(model), chain, progressbar=False) for model in REAL_CHAIN_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize("model", REAL_CHAIN_MODELS)
def test_btc_snapshot_fit_meets_the_gate(btc_fits, model: str):
    """The issue's targets on the real chain: status ok, R-hat <= 1.01, bulk ESS >= 400, no divergence."""
    result = btc_fits[model]
    conv, quality = result.convergence, result.fit_quality
    print(model, conv, quality, result.timings)
    # Bates met the gate once the likelihood used exact model IVs (2026-11-30: R-hat 1.0025, bulk ESS 595);
    # through the first-order vega map jump_intensity and jump_log_stdev traded off (R-hat 1.014, ESS ~500).
    # With the low-rank mass matrix (the specs' adaptation since 2026-11-30): heston R-hat 1.0021, ESS 6646;
    # bates 1.0019, ESS 2518 (diagonal: 1006 and 595). Bates with the jumps sampled as (intensity, variance rate,
    # mean ratio) and target_accept 0.95: R-hat 1.0014, ESS 3019, RMSE 1.350. That pass was a lucky seed: with
    # random seeds 1 and 2 two chains of four sat in a minor mode of rare large crashes (0.054 jumps a year), in
    # that parameterisation and in the totals-and-share one (R-hat 1.53-1.73). Bates with totals and share,
    # started at the MAP (the spec since 2026-12-01): seeds 1, 2, 20251230 R-hat 1.0018, 1.0019, 1.0012, ESS
    # 3802, 4135, 3792, RMSE 1.350, 1.349, 1.348.
    assert conv["status"] == "ok", conv["reasons"]
    assert conv["max_rhat"] <= 1.01
    assert conv["min_ess_bulk"] >= 400
    assert conv["divergences"] == 0
    assert quality["n_quotes"] == 278
    assert result.posterior.sizes["expiry"] == 10
    assert quality["pp_overlap_share"] > 0.9
    # Measured (vol points; price models: exact inversion of the model prices, 2026-11-30): svi 0.42, ssvi 1.2,
    # heston 1.91, bates 1.35 (fitted through the first-order vega map instead: heston 2.06, bates 1.41).
    assert quality["rmse_vol_points"] < {"svi": 0.6, "ssvi": 2.0, "heston": 2.1, "bates": 1.6}[model]
    if model in ("heston", "bates"):
        assert quality["exact_iv_failures"] == 0
        assert quality["likelihood_iv_max_deviation_vol_points"] < 1e-6  # the in-graph IVs are the exact ones
    if model in ("heston", "bates"):
        assert quality["kernel_max_iv_error_vol_points"] < 0.01
        assert quality["arbitrage_free_share"] == 1.0  # arbitrage-free models: a failure here is a bug in the check


@pytest.mark.slow
def test_btc_loo_comparison_table(btc_fits, tmp_path):
    """PSIS-LOO across the four models on the same 278 quotes: per-expiry SVI has the best ELPD.

    Measured (ELPD difference to SVI, 2026-11-30, price models on exact model IVs): bates -270, heston -370,
    ssvi -410: jumps help the short expiries, and a one-parameter-set surface model pays for the term
    structure of the smile.

    The same table through ``bayescal compare RUN... --out CSV`` on saved results.
    """
    table = compare_results(btc_fits)
    print(table)
    assert set(table.index) == set(REAL_CHAIN_MODELS)
    assert table.index[0] == "svi"
    assert table["elpd_diff"].iloc[0] == 0.0
    assert (table["elpd_diff"].iloc[1:] < -50).all()  # 278 quotes: whole-surface models are clearly worse
    assert table.loc["bates", "elpd"] > table.loc["heston", "elpd"]  # Bates nests Heston
    runs = []
    for model, result in btc_fits.items():
        result.save(tmp_path / model / "result.nc")
        runs.append(str(tmp_path / model))
    out = tmp_path / "loo.csv"
    assert main(["compare", *runs, "--out", str(out)]) == 0
    written = pd.read_csv(out, index_col=0)
    assert len(written) == 4
    assert written.index[0].startswith("svi")
    np.testing.assert_allclose(np.sort(written["elpd"].to_numpy()), np.sort(table["elpd"].to_numpy()))


@pytest.mark.slow
def test_spx_2011_heston_fit(shared_data):
    """Heston on the 2011-01-24 CBOE SPX chain (equity priors, quotes within 6 ATM sd): the issue's gate.

    Measured when written with 4 x 1000 draws: 698 quotes in 15 expiries, R-hat 1.0044 and bulk ESS 426
    in one run, 1.016 and 359 in another (nutpie runs are not bit-reproducible across processes), so
    the spec draws 2000 per chain. Fitted through the first-order vega map: RMSE 1.72 vol points (model
    prices inverted exactly; R-hat 1.0016, ESS 714); on exact model IVs (2026-11-30): RMSE 1.61, R-hat
    1.0034, ESS 809. Likelihood kernel within 3e-3 vol points. With the low-rank mass matrix (the
    spec's adaptation since 2026-11-30): R-hat 1.0009, bulk ESS 4580, RMSE 1.611.
    """
    result = fit(load_spec("heston_equity"), read_chain(shared_data / "cboe_spx_options_20110124.csv"),
                 progressbar=False, arbitrage_check=False)
    conv, quality = result.convergence, result.fit_quality
    print(conv, quality, result.timings)
    assert conv["status"] == "ok", conv["reasons"]
    assert conv["max_rhat"] <= 1.01
    assert conv["min_ess_bulk"] >= 400
    assert conv["divergences"] == 0
    assert quality["n_quotes"] == 698
    assert quality["rmse_vol_points"] < 1.8
    assert quality["exact_iv_failures"] == 0
    assert quality["likelihood_iv_max_deviation_vol_points"] < 1e-6
    assert quality["kernel_max_iv_error_vol_points"] < 0.01
