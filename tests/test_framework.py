"""Calibration framework: model registry, approximate fit methods, LOO comparison, arbitrage shares."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytensor.tensor as pt
import pytest
import xarray as xr

from bayescal.arbitrage import _slice, arbitrage_free_share, butterfly_g_numeric, slope_and_g_from_prices
from bayescal.comparison import compare_results
from bayescal.conventions import QuoteStatus
from bayescal.errors import IncomparableResultsError, SpecError
from bayescal.inference import fit
from bayescal.kernels.svi import svi_raw_g, svi_raw_total_variance
from bayescal.market import FilterSettings, bundled_demo_chain, read_chain
from bayescal.market.filters import filter_quotes
from bayescal.pricing_models import REGISTRY, get_pricing_model
from bayescal.spec import load_spec

SMALL = {"chains": 2, "draws": 200, "tune": 300}


@pytest.fixture(scope="module")
def demo_quotes():
    return read_chain(bundled_demo_chain())


@pytest.fixture(scope="module")
def svi_fit(demo_quotes):
    return fit(load_spec("svi").with_fit(**SMALL), demo_quotes, progressbar=False)


@pytest.fixture(scope="module")
def flat_fit(demo_quotes):
    return fit(load_spec("black76").with_fit(**SMALL), demo_quotes, progressbar=False)


def test_registry_has_the_models():
    assert {"svi", "black76", "ssvi"} <= set(REGISTRY)


def test_subclasses_never_replace_a_registered_model_or_likelihood():
    """A variant without its own lookup_name stays unregistered (it used to replace its parent, so that every
    spec naming the parent built the variant); a variant claiming a taken key is refused."""
    from bayescal.likelihoods import LIKELIHOODS, IVLikelihood

    heston = REGISTRY["heston"]

    class Variant(heston):
        pass

    class LikelihoodVariant(IVLikelihood):
        pass

    assert REGISTRY["heston"] is heston and LIKELIHOODS["normal_iv"] is IVLikelihood
    with pytest.raises(TypeError, match="'heston' .* already registered by bayescal.pricing_models.HestonSurface"):
        type("Claimant", (heston,), {"lookup_name": "heston"})
    assert REGISTRY["heston"] is heston
    with pytest.raises(SpecError, match="unknown pricing model 'nope'"):
        get_pricing_model("nope")
    with pytest.raises(SpecError, match="unknown setting"):
        get_pricing_model("svi", beta=0.5)


@pytest.mark.parametrize("method", ["map", "advi", "pathfinder"])
def test_approximate_methods_share_the_layout(demo_quotes, svi_fit, method):
    result = fit(load_spec("svi").with_fit(method=method, chains=1, draws=300, advi_iterations=3000),
                 demo_quotes, progressbar=False)
    assert result.idata.attrs["approximate"] == 1
    assert result.convergence["status"] == "approximate"
    for group in ("posterior", "observed_data", "constant_data", "posterior_predictive", "log_likelihood", "quotes"):
        assert group in result.idata.children, group
    assert set(result.posterior.data_vars) == set(svi_fit.posterior.data_vars)
    assert result.idata["observed_data"]["iv_obs"].equals(svi_fit.idata["observed_data"]["iv_obs"])
    # the MAP + Laplace and Pathfinder smiles lie close to the NUTS posterior mean on this well-identified chain
    if method in ("map", "pathfinder"):
        nuts_mean = svi_fit.posterior["iv_model"].mean(("chain", "draw"))
        approx_mean = result.posterior["iv_model"].mean(("chain", "draw"))
        assert float(np.abs(nuts_mean - approx_mean).max()) < 0.01
        assert result.fit_quality["rmse_vol_points"] < 1.0


def test_laplace_is_exact_on_a_gaussian_posterior():
    """Normal mean, known noise, normal prior: the posterior is Gaussian, so the Laplace fit is exact."""
    import pymc as pm

    from bayescal.inference import _fit_laplace
    from bayescal.spec import FitConfig

    rng = np.random.default_rng(3)
    y = rng.normal(1.3, 2.0, size=40)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 5.0, shape=2)
        pm.Normal("y", mu=mu[0] + 0.5 * mu[1], sigma=2.0, observed=y)
        pm.Normal("z", mu=mu[1], sigma=1.0, observed=[0.4])
    # conjugate posterior of (mu0, mu1): precision = prior + X'X / noise^2
    X = np.vstack([np.tile([1.0, 0.5], (y.size, 1)), [0.0, 1.0]])
    w = np.r_[np.full(y.size, 1 / 4.0), 1.0]
    precision = np.eye(2) / 25.0 + (X * w[:, None]).T @ X
    cov = np.linalg.inv(precision)
    mean = cov @ (X * w[:, None]).T @ np.r_[y, 0.4]
    tree = _fit_laplace(model, FitConfig(method="map", chains=1, draws=20000, random_seed=5), False)
    draws = tree["posterior"]["mu"].to_numpy().reshape(-1, 2)
    assert tree.attrs["fit_problems"] == []
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * sd / np.sqrt(20000)), (draws.mean(0), mean)
    assert np.all(np.abs(np.cov(draws.T) - cov) < 0.05 * np.outer(sd, sd)), (np.cov(draws.T), cov)


def test_map_start_is_the_mode_in_the_sampler_coordinates(monkeypatch):
    """``map_start`` returns the unconstrained mode (Jacobians included) in constrained values: LogNormal(1, 0.5)
    peaks at e in log space, Beta(2, 3) at 2/5 in log-odds space, and a conjugate normal mean at its
    posterior mean; ``[fit] init = "map"`` hands that point to the NUTS sampler as its starting values."""
    import pymc as pm

    import bayescal.inference as inference

    rng = np.random.default_rng(4)
    y = rng.normal(1.3, 2.0, size=40)
    with pm.Model() as model:
        pm.LogNormal("a", 1.0, 0.5)
        pm.Beta("b", 2.0, 3.0)
        mu = pm.Normal("mu", 0.0, 5.0)
        pm.Normal("y", mu=mu, sigma=2.0, observed=y)
    start = inference.map_start(model)
    assert set(start) == {"a", "b", "mu"}
    np.testing.assert_allclose(start["a"], np.e, rtol=1e-5)
    np.testing.assert_allclose(start["b"], 0.4, rtol=1e-5)
    posterior_mean = y.sum() / 4.0 / (1 / 25.0 + y.size / 4.0)
    np.testing.assert_allclose(start["mu"], posterior_mean, rtol=1e-4)  # L-BFGS-B stops at gradient 1e-5

    seen = {}

    def stop(model, cfg, progressbar, **extra):
        seen.update(extra)
        raise RuntimeError("stop before sampling")

    monkeypatch.setitem(inference._FITTERS, "nuts", stop)
    from bayescal.market.filters import filter_quotes, used_quotes

    spec, chain = load_spec("black76").with_fit(init="map"), read_chain(bundled_demo_chain())
    with pytest.raises(RuntimeError, match="stop before sampling"):
        fit(spec, chain, progressbar=False)
    built = inference.build_model(spec, used_quotes(filter_quotes(chain, spec.filters)))
    expected = inference.map_start(built)
    assert set(seen["initvals"]) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(seen["initvals"][name], value, rtol=1e-6)


def test_laplace_hessian_by_differences_of_the_gradient():
    from bayescal.inference import _neg_log_density_hessian

    a = np.array([[3.0, 1.2, 0.0], [1.2, 2.0, -0.4], [0.0, -0.4, 5.0]])
    x = np.array([0.3, -2.0, 40.0])
    # gradient of 0.5 x'Ax + sum(x^4)/4: Hessian A + diag(3 x^2)
    hess = _neg_log_density_hessian(lambda v: a @ v + v**3, x)
    np.testing.assert_allclose(hess, a + np.diag(3 * x**2), rtol=1e-8, atol=1e-6)  # round-off: eps |g| / h


def test_loo_prefers_the_smile_over_a_flat_vol(svi_fit, flat_fit):
    table = compare_results({"svi": svi_fit, "black76": flat_fit})
    assert list(table.index) == ["svi", "black76"]
    assert table.loc["black76", "elpd_diff"] < -50  # a flat vol per expiry misses the smile badly
    assert {"elpd", "se", "weight", "max_pareto_k", "fit_method"} <= set(table.columns)


def test_compare_refuses_different_quotes(svi_fit, demo_quotes):
    narrow = replace(load_spec("black76").with_fit(**SMALL), filters=FilterSettings(k_range=(-0.2, 0.2)))
    other = fit(narrow, demo_quotes, progressbar=False)
    with pytest.raises(IncomparableResultsError, match="not fitted to the same quotes"):
        compare_results({"svi": svi_fit, "narrow": other})
    with pytest.raises(IncomparableResultsError, match="at least two"):
        compare_results({"svi": svi_fit})


def test_numeric_g_matches_analytic_svi_g():
    k = np.linspace(-1.0, 1.0, 2001)
    vogt = dict(a=-0.041, b=0.1331, rho=0.306, m=0.3586, sigma=0.4153)  # GJ2014 example 3.1: arbitrage
    w = svi_raw_total_variance(k, **vogt).eval()
    g_exact = svi_raw_g(pt.as_tensor_variable(k), **vogt).eval()
    g_num = butterfly_g_numeric(k, w)
    np.testing.assert_allclose(g_num[1:-1], g_exact[1:-1], atol=3e-5)
    np.testing.assert_allclose(g_num[[0, -1]], g_exact[[0, -1]], atol=1e-4)  # first-order ends: 2e-3 and 1.3e-2 off
    assert g_num.min() < 0  # Vogt's slice has butterfly arbitrage


def test_arbitrage_share_of_a_jump_surface_is_one():
    """Merton surfaces are arbitrage-free: every draw must pass, including a 2.6-day slice with rare
    large jumps whose smile bends sharply at the grid's ends (first-order end differences on a 201-point
    grid gave g = -0.04 there and a share of 0 on the BTC snapshot; second-order ones give +0.0313; the
    exact g is +0.02927: the kernel's derivatives, and finite differences with steps 1e-4 and 3e-5)."""
    pricing = get_pricing_model("merton")
    taus = np.array([2.6, 30.6, 359.6]) / 365
    k = np.concatenate([np.linspace(-0.102, 0.101, 9), np.linspace(-0.48, 0.59, 9), np.linspace(-0.84, 0.87, 9)])
    constant_data = xr.Dataset({"k": ("quote", k), "expiry_idx": ("quote", np.repeat([0, 1, 2], 9)),
                                "tau_expiry": ("expiry", taus)})
    values = {"volatility": [0.35, 0.6], "jump_intensity": [0.42, 8.0], "jump_log_mean": [-0.26, 0.02],
              "jump_log_stdev": [0.45, 0.05]}
    posterior = xr.Dataset({f"merton_{n}": (("chain", "draw"), np.array([v])) for n, v in values.items()})
    share = arbitrage_free_share(pricing, posterior, constant_data)
    assert share == {"butterfly_free_share": 1.0, "calendar_free_share": 1.0, "arbitrage_free_share": 1.0,
                     "n_draws_checked": 2}
    k_end = np.linspace(-0.102, 0.101, 201)
    w_end = pricing.implied_vol_on_grid(posterior, 0, k_end, taus[0])[0] ** 2 * taus[0]
    assert butterfly_g_numeric(k_end, w_end)[0] == pytest.approx(0.0314, abs=5e-4)
    _, _, g = _slice(pricing, posterior, 0, k_end[:1], taus[0])  # the check's own g: pointwise, exact
    assert g[0, 0] == pytest.approx(0.029267, abs=1e-6)


def test_slope_and_g_of_black_prices():
    """A flat-vol slice: g = 1 and w' = 0 exactly (GJ2014 eq. 2.1), from Black-76's k-derivatives."""
    from scipy.stats import norm

    k = np.linspace(-0.8, 0.6, 15)
    w = np.full((1, k.size), 0.7**2 * 0.5)
    cp = np.where(k >= 0, 1.0, -1.0)
    d2 = -k / np.sqrt(w) - np.sqrt(w) / 2
    c_k = np.where(cp > 0, -np.exp(k) * norm.cdf(d2), np.exp(k) * norm.cdf(-d2))  # dB/dk at fixed w
    c_kk = c_k + np.exp(k) * norm.pdf(d2) / np.sqrt(w)
    dw, g = slope_and_g_from_prices(k, w, cp, c_k, c_kk)
    np.testing.assert_allclose(dw, 0.0, atol=1e-12)
    np.testing.assert_allclose(g, 1.0, rtol=1e-12)


@pytest.mark.parametrize("model, values, tau", [
    ("heston", {"v0": 0.3, "kappa": 2.0, "theta": 0.25, "xi": 1.6, "rho": 0.2}, 30 / 365),
    ("heston", {"v0": 0.04, "kappa": 0.5, "theta": 0.06, "xi": 0.9, "rho": -0.8}, 2.0),
    ("bates", {"v0": 0.3, "kappa": 2.0, "theta": 0.25, "xi": 1.0, "rho": 0.0, "jump_intensity": 3.0,
               "jump_log_mean": -0.1, "jump_log_stdev": 0.2}, 10 / 365),
])
def test_price_model_slope_and_g_match_finite_differences(model, values, tau):
    """The check's pointwise w' and g of a price model (kernel derivatives) equal fourth-order central
    differences of the inverted prices (steps of 1e-3) put into GJ2014 eq. 2.1."""
    pricing = get_pricing_model(model)
    posterior = xr.Dataset({f"{model}_{n}": (("chain", "draw"), [[v]]) for n, v in values.items()})
    k = np.linspace(-0.4, 0.4, 21)
    h = 1e-3
    stencil = (k[:, None] + h * np.arange(-2, 3)).ravel()
    w_st = (pricing.implied_vol_on_grid(posterior, 0, stencil, tau) ** 2 * tau).reshape(k.size, 5)
    w_fd = w_st[:, 2]
    dw_fd = (w_st[:, 0] - 8 * w_st[:, 1] + 8 * w_st[:, 3] - w_st[:, 4]) / (12 * h)
    d2w_fd = (-w_st[:, 0] + 16 * w_st[:, 1] - 30 * w_st[:, 2] + 16 * w_st[:, 3] - w_st[:, 4]) / (12 * h**2)
    g_fd = (1 - k * dw_fd / (2 * w_fd)) ** 2 - dw_fd**2 / 4 * (1 / w_fd + 0.25) + d2w_fd / 2
    w, dw, g = _slice(pricing, posterior, 0, k, tau)
    np.testing.assert_allclose(w[0], w_fd, rtol=1e-12)
    np.testing.assert_allclose(dw[0], dw_fd, atol=1e-8)
    np.testing.assert_allclose(g[0], g_fd, atol=1e-6)
    assert g.min() > 0.05  # arbitrage-free, and far from the tolerance


def test_arbitrage_share_detects_calendar_crossing():
    """Two SVI slices whose total variances cross in k: every draw has calendar arbitrage."""
    model = get_pricing_model("svi")
    n = 10
    coords = {"chain": [0], "draw": np.arange(n), "expiry": ["e1", "e2"]}

    def var(values):
        return xr.DataArray(np.broadcast_to(np.asarray(values, float), (1, n, 2)).copy(),
                            dims=("chain", "draw", "expiry"), coords=coords)

    posterior = xr.Dataset({
        "svi_a": var([0.02, 0.021]), "svi_b": var([0.05, 0.01]), "svi_rho": var([-0.3, -0.3]),
        "svi_m": var([0.0, 0.0]), "svi_sigma": var([0.1, 0.1]),
    })
    k = np.linspace(-0.5, 0.5, 11)
    const = xr.Dataset({"k": ("quote", np.concatenate([k, k])), "expiry_idx": ("quote", np.repeat([0, 1], k.size)),
                        "tau_expiry": ("expiry", [0.1, 0.2])})
    shares = arbitrage_free_share(model, posterior, const)
    assert shares["calendar_free_share"] == 0.0
    assert shares["butterfly_free_share"] == 1.0
    assert shares["arbitrage_free_share"] == 0.0


def test_fit_reports_arbitrage_share(svi_fit):
    quality = svi_fit.fit_quality
    assert 0.0 <= quality["arbitrage_free_share"] <= 1.0
    assert quality["arbitrage_free_share"] > 0.9  # per-expiry SVI on the bundled chain: essentially all


def test_greeks_of_flat_vol_equal_black76(flat_fit):
    """With a flat vol per expiry, every draw's greeks are Black-76's closed forms (Hull ch. 19)."""
    from scipy.stats import norm

    from bayescal.greeks import posterior_greeks

    draws = posterior_greeks(flat_fit, 1, [60_000.0, 68_000.0, 80_000.0], [-1, 1, 1], max_draws=50)
    F, tau = draws.attrs["forward"], draws.attrs["tau"]
    iv = flat_fit.posterior["black76_iv"].isel(expiry=1).to_numpy().ravel()
    keep = np.linspace(0, iv.size - 1, 50).round().astype(int)
    sig = iv[keep][:, None]
    K = draws["strike"].to_numpy()[None, :]
    cp = draws["cp"].to_numpy()[None, :]
    d1 = (np.log(F / K) + 0.5 * sig**2 * tau) / (sig * np.sqrt(tau))
    d2 = d1 - sig * np.sqrt(tau)
    price = cp * (F * norm.cdf(cp * d1) - K * norm.cdf(cp * d2))
    np.testing.assert_allclose(draws["price"], price, rtol=1e-10)
    np.testing.assert_allclose(draws["delta"], np.where(cp > 0, norm.cdf(d1), norm.cdf(d1) - 1), atol=1e-10)
    np.testing.assert_allclose(draws["gamma"], norm.pdf(d1) / (F * sig * np.sqrt(tau)), rtol=1e-8)
    np.testing.assert_allclose(draws["vega"], F * norm.pdf(d1) * np.sqrt(tau), rtol=1e-8)
    np.testing.assert_allclose(draws["theta"], -F * norm.pdf(d1) * sig / (2 * np.sqrt(tau)), rtol=1e-8)


def test_atm_greeks_table_has_intervals(svi_fit):
    from bayescal.greeks import atm_greeks_table

    table = atm_greeks_table(svi_fit)
    assert len(table) == 4 * 2 * 5
    assert (table["eti_3%"] <= table["mean"]).all() and (table["mean"] <= table["eti_97%"]).all()
    delta = table[table.greek == "delta"].set_index(["expiry", "cp"])["mean"]
    for expiry in table.expiry.unique():  # put-call parity of deltas, D = 1
        assert abs(delta[(expiry, 1)] - delta[(expiry, -1)] - 1.0) < 1e-10


def test_prior_predictive_cli_covers_the_chain(tmp_path, capsys):
    """The crypto SVI prior's 94% band contains most quotes of the bundled chain; figures are written."""
    from bayescal.cli import main
    from bayescal.inference import prior_predictive

    assert main(["prior-predictive", "--demo", "--draws", "200", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("prior_smile_*.png"))) == 4
    spec = load_spec("svi")
    used, prior = prior_predictive(spec, read_chain(bundled_demo_chain()), draws=400)
    iv = prior["iv_model"].to_numpy().reshape(-1, used.sizes["quote"])
    lo, hi = np.quantile(iv, [0.03, 0.97], axis=0)
    inside = (lo <= used["mid_iv"].to_numpy()) & (used["mid_iv"].to_numpy() <= hi)
    assert inside.mean() > 0.9
    assert main(["prior-predictive", "--demo", "--priors", "ssvi/crypto", "--out", str(tmp_path)]) == 2
    assert "is for model 'ssvi', not 'svi'" in capsys.readouterr().err


def test_fit_quality_of_price_models_inverts_model_prices_exactly():
    """Price models report the RMSE of exactly inverted model IVs (mean over draws), whatever the likelihood's link."""
    from bayescal.diagnostics import fit_quality
    from bayescal.market.quotes import prices_from_iv

    rng = np.random.default_rng(3)
    k = np.array([-0.3, -0.1, 0.0, 0.15, 0.4])
    tau = np.array([0.05, 0.1, 0.25, 0.5, 1.0])
    cp = np.where(k >= 0, 1.0, -1.0)
    iv_draws = 0.6 + 0.05 * rng.standard_normal((2, 50, k.size))  # model IV per chain, draw, quote
    ones = np.ones(k.size)
    price = prices_from_iv(iv_draws, ones, np.exp(k), tau, cp, ones)
    price[0, 0, 0] = -1.0  # a draw without an implied vol is left out of that quote's mean
    mid = np.array([0.58, 0.61, 0.6, 0.62, 0.59])
    draws = ("chain", "draw", "quote")
    idata = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"norm_price_model": (draws, price), "iv_model": (draws, np.full(price.shape, 0.7))}),
        "observed_data": xr.Dataset({"iv_obs": ("quote", mid)}),
        "constant_data": xr.Dataset({"k": ("quote", k), "tau": ("quote", tau), "cp": ("quote", cp),
                                     "bid_iv": ("quote", mid - 0.01), "ask_iv": ("quote", mid + 0.01)}),
        "posterior_predictive": xr.Dataset({"iv_obs": (draws, iv_draws)}),
    })
    quality = fit_quality(idata)
    expected_mean = iv_draws.reshape(100, -1).mean(axis=0)
    expected_mean[0] = iv_draws.reshape(100, -1)[1:, 0].mean()
    assert quality["rmse_vol_points"] == pytest.approx(100 * np.sqrt(np.mean((expected_mean - mid) ** 2)), rel=1e-9)
    assert quality["rmse_likelihood_iv_vol_points"] == pytest.approx(100 * np.sqrt(np.mean((0.7 - mid) ** 2)))
    assert quality["exact_iv_failures"] == 1 and quality["exact_iv_draws"] == 100
    deviation = np.abs(0.7 - iv_draws.reshape(100, -1))
    deviation[0, 0] = 0.0  # the failed draw is left out
    assert quality["likelihood_iv_max_deviation_vol_points"] == pytest.approx(100 * deviation.max(), rel=1e-9)


def test_prior_draws_honour_potentials():
    """SABR's attainable-ATM wall is a prior term: about 5% of raw draws on a 1-year grid break it
    (the ATM vol beyond what Hagan's expansion reaches with the drawn rho, nu); sample_prior's never do.
    Its second wall (the expansion near its fold) holds for them too."""
    import pymc as pm

    from bayescal.inference import build_model, sample_prior
    from bayescal.kernels.sabr import sabr_atm_elasticity, sabr_lognormal_vol
    from bayescal.market.filters import filter_quotes, used_quotes
    from bayescal.pricing_models import ELASTICITY_SCALE
    from bayescal.studies import DEFAULT_TAUS, simulated_chain

    spec = load_spec("sabr")
    flat = simulated_chain("black76", {"iv": np.full(DEFAULT_TAUS.size, 0.6)}, np.random.default_rng(0))
    model = build_model(spec, used_quotes(filter_quotes(flat, spec.filters)))
    assert [p.name for p in model.potentials] == ["sabr_attainable", "sabr_expansion_valid"]

    def shortfall(prior):
        atm = sabr_lognormal_vol(1.0, 1.0, DEFAULT_TAUS, prior["sabr_alpha"].to_numpy()[0], 1.0,
                                 prior["sabr_rho"].to_numpy()[0], prior["sabr_nu"].to_numpy()[0]).eval()
        return prior["sabr_atm_vol"].to_numpy()[0] - atm

    with model, pytest.warns(UserWarning) as caught:
        raw = pm.sample_prior_predictive(draws=400, random_seed=2)["prior"].to_dataset()
    assert any("The effect of Potentials" in str(w.message) for w in caught)
    broken = (shortfall(raw) > 1e-6).any(axis=1).mean()
    assert 0.02 < broken < 0.1
    prior = sample_prior(model, 400, 2)
    assert prior.sizes["draw"] == 400 and np.all(prior["draw"].to_numpy() == np.arange(400))
    assert np.abs(shortfall(prior)).max() < 1e-9
    # the second wall keeps the ATM vol's elasticity in alpha near or above 0.5 (away from the fold)
    elasticity = sabr_atm_elasticity(1.0, DEFAULT_TAUS, prior["sabr_alpha"].to_numpy()[0], 1.0,
                                     prior["sabr_rho"].to_numpy()[0], prior["sabr_nu"].to_numpy()[0]).eval()
    assert elasticity.min() > 0.5 - 3 * ELASTICITY_SCALE
    assert np.isfinite(prior["sabr_alpha"].to_numpy()).all()


def test_simulated_quotes_carry_the_likelihoods_noise_exactly():
    """Simulation-based calibration needs the data the likelihood sees drawn from its own model: the mid IV (IV
    of the mid price) is the model IV plus the drawn noise, and the half spread in IV is the one the noise sd
    used. Centring bid and ask on the mid in IV put the mid price's IV up to 0.49 vol points high at z = -2.5,
    which biased every recovery study (Merton: truths in the lower third of 94% intervals, coverage 0.887)."""
    from bayescal.studies import DEFAULT_TAUS, Z_RANGE, _model_iv, simulated_chain

    pricing = get_pricing_model("merton")
    truth = {"volatility": 0.5, "jump_intensity": 0.5, "jump_log_mean": 0.2, "jump_log_stdev": 0.17}
    exact = simulated_chain("merton", truth, np.random.default_rng(1), noise=(np.full(5, 1e-300), 0.0))
    model_iv = _model_iv(pricing, truth, exact["k"].to_numpy(), exact["tau"].to_numpy(), np.repeat(np.arange(5), 15))
    half = 0.004 + 0.01 * np.abs(np.tile(np.linspace(*Z_RANGE, 15), DEFAULT_TAUS.size))
    np.testing.assert_allclose(exact["mid_iv"].to_numpy(), model_iv, rtol=0, atol=1e-10)
    np.testing.assert_allclose(0.5 * (exact["ask_iv"] - exact["bid_iv"]).to_numpy(), half, rtol=0, atol=1e-12)
    noisy = simulated_chain("merton", truth, np.random.default_rng(1), noise=(np.full(5, 0.01), 0.5))
    z = (noisy["mid_iv"].to_numpy() - model_iv) / np.sqrt(0.01**2 + (0.5 * half) ** 2)
    np.testing.assert_allclose(z, np.random.default_rng(1).normal(0.0, 1.0, z.size), rtol=0, atol=1e-8)


def test_simulated_quotes_without_a_real_bid_are_reported():
    """No exchange bids 1e-11 of the forward: a simulated quote whose bid is below MIN_BID (1e-8) gets no bid and
    the filters report it as ``no_bid``. Heston with rho 0.95 (recovery seed 15's truth) prices the 1-year put at
    k = -1.45 at 1e-11, below the surface kernel's absolute error, where its IV was noise (49 divergences)."""
    from bayescal.studies import FORWARD, MIN_BID, simulated_chain

    truth = {"v0": 0.3032, "kappa": 1.854, "theta": 0.3527, "xi": 1.295, "rho": 0.9493}
    chain = simulated_chain("heston", truth, np.random.default_rng(0))
    bid = chain["bid"].to_numpy()
    no_bid = ~np.isfinite(bid)
    assert 5 <= no_bid.sum() <= 15 and np.all(chain["k"].to_numpy()[no_bid] < 0)  # the thin left wing only
    assert np.all(bid[~no_bid] >= MIN_BID * FORWARD)
    filtered = filter_quotes(chain, FilterSettings())
    assert set(filtered["status"].to_numpy()[no_bid]) == {QuoteStatus.NO_BID}


def test_merton_series_wall():
    """Merton's series-validity Potential is zero while the longest expiry's Poisson mean (calls' lambda (1 + m)
    tau, puts' lambda tau) is 0.6 in log terms below what n_terms covers (63.76 for 128 terms), -0.5 (excess /
    0.2)**2 past that, -4.5 nats at the covered mean itself."""
    import pytensor

    from bayescal.inference import build_model
    from bayescal.market.filters import filter_quotes, used_quotes
    from bayescal.studies import DEFAULT_TAUS, simulated_chain

    spec = load_spec("merton")
    flat = simulated_chain("black76", {"iv": np.full(DEFAULT_TAUS.size, 0.6)}, np.random.default_rng(0))
    model = build_model(spec, used_quotes(filter_quotes(flat, spec.filters)))
    assert DEFAULT_TAUS.max() == 1.0 and "merton_series_valid" in [p.name for p in model.potentials]
    rvs = {v.name: v for v in model.free_RVs}
    wall = pytensor.function([rvs[f"merton_{n}"] for n in ("total_volatility", "jump_variance_share",
                                                             "jump_intensity", "jump_mean_ratio")],
                             model["merton_series_valid"], on_unused_input="ignore")
    start = 63.7635 * np.exp(-0.6)  # 34.99 jumps a year at 1 year
    # share 0.5 of 0.36 per year over lambda: s**2 = 0.18 / lambda, mu_J = ratio s, sigma_J**2 = (1 - ratio**2) s**2
    for lam, ratio in ((20.0, 0.6), (34.0, -0.6), (45.0, -0.6), (45.0, 0.6), (63.7635, -0.9), (90.0, 0.0)):
        s2 = 0.18 / lam
        growth = max(np.exp(ratio * np.sqrt(s2) + 0.5 * (1 - ratio**2) * s2), 1.0)
        excess = max(np.log(lam * growth / start), 0.0)
        assert float(wall(0.6, 0.5, lam, ratio)) == pytest.approx(-0.5 * (excess / 0.2) ** 2, rel=1e-4, abs=1e-9)
    assert float(wall(0.6, 0.5, 63.7635, -0.9)) == pytest.approx(-4.5, abs=1e-3)  # puts' lambda tau: no growth
    assert float(wall(0.6, 0.5, 34.0, -0.6)) == 0.0 and float(wall(0.6, 0.5, 34.0, 0.6)) < -1e-3  # calls: 35.6
    for bad in (0, 64.0, True):
        with pytest.raises(SpecError, match="n_terms must be a positive integer"):
            get_pricing_model("merton", n_terms=bad)


def test_jump_parameters_map_to_the_log_jump_size():
    """Merton and Bates derive the jumps' (intensity, variance rate, mean ratio); the kernels get mu_J, sigma_J
    back exactly.

    The map inverts ``V = lambda (mu_J**2 + sigma_J**2)``, ``ratio = mu_J / sqrt(mu_J**2 + sigma_J**2)`` in numpy
    and PyTensor alike; Merton's variance rate comes from (total volatility, jump share), Bates' from (total
    v0, total theta, jump share) under the smooth minimum, and the splits add up to the totals with positive
    parts; the built models store the kernel inputs as deterministics of the sampled
    parameters, and a model whose kernel inputs are not its parameters refuses to simulate from them.
    """
    from pytensor.gradient import verify_grad

    from bayescal.inference import build_model, sample_prior
    from bayescal.market.filters import filter_quotes, used_quotes
    from bayescal.pricing_models import bates_variance_split, lognormal_jump_sizes, merton_variance_split
    from bayescal.studies import DEFAULT_TAUS, simulated_chain

    rng = np.random.default_rng(5)
    lam, mu, delta = rng.lognormal(1.0, 1.0, 50), rng.normal(-0.05, 0.2, 50), rng.lognormal(-2.0, 0.8, 50)
    rms = np.hypot(mu, delta)
    variance_rate, ratio = lam * rms**2, mu / rms
    back = lognormal_jump_sizes(lam, variance_rate, ratio)
    np.testing.assert_allclose(back, (mu, delta), rtol=1e-12, atol=1e-15)
    symbolic = [v.eval() for v in lognormal_jump_sizes(*(pt.as_tensor(x) for x in (lam, variance_rate, ratio)))]
    np.testing.assert_allclose(symbolic, (mu, delta), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(lognormal_jump_sizes(4.0, 0.16, -0.6), (-0.12, 0.16), rtol=1e-12)  # by hand
    for out in (0, 1):
        verify_grad(lambda a, b, c, o=out: lognormal_jump_sizes(a, b, c)[o], [lam[:5], variance_rate[:5], ratio[:5]],
                    rng=rng, abs_tol=1e-7, rel_tol=1e-6)

    total, share = rng.lognormal(-0.7, 0.4, 50), rng.uniform(0.01, 0.99, 50)
    volatility, rate = merton_variance_split(total, share)
    np.testing.assert_allclose(volatility**2 + rate, total**2, rtol=1e-13)
    np.testing.assert_allclose(rate / total**2, share, rtol=1e-13)
    np.testing.assert_allclose(merton_variance_split(0.5, 0.36), (0.4, 0.09), rtol=1e-13)  # by hand
    for out in (0, 1):
        verify_grad(lambda a, b, o=out: merton_variance_split(a, b)[o], [total[:5], share[:5]],
                    rng=rng, abs_tol=1e-7, rel_tol=1e-6)

    total_v0, total_theta = rng.lognormal(-1.0, 0.7, 50), rng.lognormal(-1.0, 0.7, 50)
    v0, theta, rate = bates_variance_split(total_v0, total_theta, share)
    np.testing.assert_allclose((v0 + rate, theta + rate), (total_v0, total_theta), rtol=1e-13)
    smooth_min = np.minimum(total_v0, total_theta) * (1.0 + np.minimum(total_v0, total_theta) ** 4
                                                       / np.maximum(total_v0, total_theta) ** 4) ** -0.25
    np.testing.assert_allclose(rate / smooth_min, share, rtol=1e-13)
    assert np.all(v0 > 0) and np.all(theta > 0) and np.all(rate < np.minimum(total_v0, total_theta))
    np.testing.assert_allclose(bates_variance_split(0.2, 0.2, 1.0), (0.2 - 0.2 / 2**0.25,) * 2 + (0.2 / 2**0.25,),
                               rtol=1e-13)  # by hand: equal totals, all of the smooth minimum 2**(-1/4) 0.2
    np.testing.assert_allclose(bates_variance_split(0.1, 1e3, 0.5), (0.05, 1e3 - 0.05, 0.05), rtol=1e-12)
    for out in (0, 1, 2):
        verify_grad(lambda a, b, c, o=out: bates_variance_split(a, b, c)[o], [total_v0[:5], total_theta[:5], share[:5]],
                    rng=rng, abs_tol=1e-7, rel_tol=1e-6)

    flat = simulated_chain("black76", {"iv": np.full(DEFAULT_TAUS.size, 0.6)}, np.random.default_rng(0))
    for key, derived in (("merton", ("volatility", "jump_variance_rate")),
                         ("bates", ("v0", "theta", "jump_variance_rate"))):
        spec = load_spec(key)
        pricing = get_pricing_model(key)
        assert {"jump_intensity", "jump_mean_ratio"} <= set(pricing.parameters)
        assert {"jump_log_mean", "jump_log_stdev"} <= set(pricing.kernel_inputs) - set(pricing.parameters)
        prior = sample_prior(build_model(spec, used_quotes(filter_quotes(flat, spec.filters))), 200, 1)
        sampled = {n: prior[pricing.name(n)].to_numpy() for n in pricing.parameters}
        inputs = pricing.input_values(sampled)
        assert list(inputs) == list(pricing.kernel_inputs)
        for n in ("jump_log_mean", "jump_log_stdev"):
            np.testing.assert_allclose(prior[pricing.name(n)].to_numpy(), inputs[n], rtol=1e-10)
        stored = {n: prior[pricing.name(n)].to_numpy() for n in derived}  # stored, not sampled, adding up
        assert not set(derived) & set(pricing.parameters)
        if key == "merton":
            np.testing.assert_allclose(stored["volatility"] ** 2 + stored["jump_variance_rate"],
                                       sampled["total_volatility"] ** 2, rtol=1e-10)
            np.testing.assert_allclose(inputs["volatility"], stored["volatility"], rtol=1e-10)
        else:
            for n in ("v0", "theta"):
                np.testing.assert_allclose(stored[n] + stored["jump_variance_rate"], sampled[f"total_{n}"], rtol=1e-10)
                np.testing.assert_allclose(inputs[n], stored[n], rtol=1e-10)
                assert np.all(stored[n] > 0)
        assert np.all(inputs["jump_log_stdev"] >= 0) and np.all(np.isfinite(inputs["jump_log_mean"]))
    with pytest.raises(SpecError, match=r"kernel input\(s\) \['theta'\]"):
        get_pricing_model("ssvi").input_values({"fwd_var": 0.3, "rho": 0.0, "eta": 1.0, "gamma": 0.4})


def test_a_seeds_prior_draw_does_not_depend_on_the_pricing_graph(monkeypatch):
    """PyMC seeds random variables in the order it meets them in the graph it samples: drawing the
    deterministics (the surface prices) with them made a seed's draw change when a kernel's graph did
    (Bates seed 2: xi 7.90 with the graph kernel, 0.56 with the numba grid op). sample_prior draws the
    free variables alone and computes the deterministics afterwards."""
    import bayescal.kernels.surface as surface
    from bayescal.studies import prior_truth

    spec = load_spec("bates")
    with_op = prior_truth(spec, 2)
    monkeypatch.setattr(surface, "_grid_op_if_scalar", lambda params: None)
    with_graph = prior_truth(spec, 2)
    for group in ("parameters", "kernel_inputs"):
        for name, value in with_op[group].items():
            np.testing.assert_array_equal(value, with_graph[group][name], err_msg=f"{group}.{name}")
    np.testing.assert_array_equal(with_op["sigma_obs"], with_graph["sigma_obs"])
    # deterministics are computed from the drawn free variables: v0 = total_v0 - jump variance rate
    p, k = with_op["parameters"], with_op["kernel_inputs"]
    assert 0 < k["v0"] < p["total_v0"] and 0 < k["theta"] < p["total_theta"]
