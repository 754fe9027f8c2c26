"""Convergence gate and fit-quality measures of a calibration, from ArviZ diagnostics.

Thresholds follow ArviZ's ``diagnose`` defaults and Vehtari et al. (2021): R-hat <= 1.01, bulk and
tail ESS >= 100 per chain, no divergences, E-BFMI >= 0.3, and less than 1% of draws at the
maximum tree depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import arviz as az
import numpy as np
import xarray as xr

RHAT_WARN, RHAT_FAIL = 1.01, 1.05
ESS_PER_CHAIN = 100
BFMI_MIN = 0.3
TREEDEPTH_SHARE_MAX = 0.01


@dataclass(frozen=True)
class ConvergenceReport:
    """Outcome of the convergence gate.

    Attributes
    ----------
    status : str
        ``"ok"``, ``"warn"`` or ``"fail"`` for NUTS; ``"approximate"`` for approximate methods.
    reasons : list of str
        Why the status is not ``ok`` (empty when ok).
    max_rhat, min_ess_bulk, min_ess_tail : float
        Over every scalar of every sampled parameter (free variables, not deterministics).
    divergences : int
    min_bfmi : float
    treedepth_share : float
        Share of draws that hit the maximum tree depth.
    """

    status: str
    reasons: list[str] = field(default_factory=list)
    max_rhat: float = float("nan")
    min_ess_bulk: float = float("nan")
    min_ess_tail: float = float("nan")
    divergences: int = 0
    min_bfmi: float = float("nan")
    treedepth_share: float = 0.0

    def to_dict(self) -> dict:
        """Plain-dict form for attrs and reports."""
        return asdict(self)


def _min_over(ds: xr.Dataset) -> float:
    return float(min(np.nanmin(ds[v].to_numpy()) for v in ds.data_vars))


def _max_over(ds: xr.Dataset) -> float:
    return float(max(np.nanmax(ds[v].to_numpy()) for v in ds.data_vars))


def convergence_gate(idata: xr.DataTree, var_names: list[str]) -> ConvergenceReport:
    """Apply the convergence gate to a NUTS fit.

    Parameters
    ----------
    idata : xarray.DataTree
        With ``posterior`` and ``sample_stats`` groups (chain, draw dims).
    var_names : list of str
        The sampled (free) parameters to check.

    Returns
    -------
    ConvergenceReport
        ``fail`` when R-hat > 1.05, ESS below 100 per chain, or any divergence with more than 1%
        of draws divergent; ``warn`` for R-hat in (1.01, 1.05], a few divergences, low E-BFMI or
        tree-depth saturation; ``ok`` otherwise.
    """
    posterior = idata["posterior"].to_dataset()[var_names]
    chains = posterior.sizes["chain"]
    n_draws = chains * posterior.sizes["draw"]
    rhat = _max_over(az.rhat(posterior))
    ess_bulk = _min_over(az.ess(posterior, method="bulk"))
    ess_tail = _min_over(az.ess(posterior, method="tail"))
    stats = idata["sample_stats"].to_dataset()
    divergences = int(stats["diverging"].sum()) if "diverging" in stats else 0
    bfmi = _min_over(az.bfmi(stats)) if "energy" in stats else float("nan")
    depth_share = 0.0
    if "reached_max_treedepth" in stats:
        depth_share = float(stats["reached_max_treedepth"].mean())
    fail, warn = [], []
    if rhat > RHAT_FAIL:
        fail.append(f"max R-hat {rhat:.3f} > {RHAT_FAIL}")
    elif rhat > RHAT_WARN:
        warn.append(f"max R-hat {rhat:.3f} > {RHAT_WARN}")
    ess_min = ESS_PER_CHAIN * chains
    for label, value in (("bulk", ess_bulk), ("tail", ess_tail)):
        if value < ess_min:
            (fail if value < ess_min / 4 else warn).append(f"min {label} ESS {value:.0f} < {ess_min}")
    if divergences:
        (fail if divergences > 0.01 * n_draws else warn).append(f"{divergences} divergent transitions")
    if bfmi < BFMI_MIN:
        warn.append(f"min E-BFMI {bfmi:.2f} < {BFMI_MIN}")
    if depth_share > TREEDEPTH_SHARE_MAX:
        warn.append(f"{depth_share:.1%} of draws hit the maximum tree depth")
    status = "fail" if fail else ("warn" if warn else "ok")
    return ConvergenceReport(status, fail + warn, rhat, ess_bulk, ess_tail, divergences, bfmi, depth_share)


def approximate_gate(method: str, problems: Sequence[str] = ()) -> ConvergenceReport:
    """Gate of an approximate fit (ADVI, Pathfinder, MAP + Laplace): status ``approximate``.

    MCMC diagnostics do not apply; the report says so, and reports and the CLI label the fit.
    ``problems`` the fitter found (e.g. MAP's optimiser did not converge) make the status ``fail``.
    """
    label = f"{method} is an approximation: no MCMC diagnostics; bands may understate uncertainty"
    return ConvergenceReport("fail" if problems else "approximate", [label, *problems])


#: Posterior draws (evenly thinned) whose model prices are inverted to exact implied vols.
EXACT_IV_DRAWS = 1000


def fit_quality(idata: xr.DataTree) -> dict[str, float]:
    """Fit error of the posterior-mean smile and posterior-predictive coverage of the bid-ask.

    For price models (Heston, Bates, Merton: the posterior holds ``norm_price_model``), the model IV
    of every quote is the exact Black-76 inversion (:func:`bayescal.market.implied_vol_black76`) of the
    model price in each of up to :data:`EXACT_IV_DRAWS` evenly thinned draws, averaged, independently
    of how the likelihood linked prices to IVs (``iv_model``: in-graph exact solve or vega map).

    Returns
    -------
    dict
        ``rmse_vol_points``: RMSE of posterior-mean model IV vs mid IV, in vol points (x100);
        ``max_abs_error_vol_points``; ``pp_overlap_share``: share of quotes whose 94%
        posterior-predictive interval of IV overlaps [bid IV, ask IV]; ``n_quotes``. Price models
        add ``rmse_likelihood_iv_vol_points`` (the same RMSE on the likelihood's ``iv_model``),
        ``likelihood_iv_max_deviation_vol_points`` (largest ``|iv_model - exact IV|`` over the
        thinned draws and quotes: rounding level for the exact link, the linearisation error for
        the vega map), ``exact_iv_draws`` and ``exact_iv_failures`` (draw-quote pairs whose price has
        no implied vol, e.g. an OTM price underflowing to 0; left out of that quote's mean and of the
        deviation, and a quote with no invertible draw keeps its ``iv_model`` mean).
    """
    const = idata["constant_data"].to_dataset()
    mid = idata["observed_data"]["iv_obs"].to_numpy()
    model_mean, likelihood_mean, extra = _model_and_likelihood_iv_mean(idata)
    if "exact_iv_draws" in extra:
        extra = {"rmse_likelihood_iv_vol_points": float(100 * np.sqrt(np.mean((likelihood_mean - mid) ** 2))),
                 **extra}
    err = model_mean - mid
    pp = idata["posterior_predictive"]["iv_obs"]
    lo = pp.quantile(0.03, dim=("chain", "draw")).to_numpy()
    hi = pp.quantile(0.97, dim=("chain", "draw")).to_numpy()
    overlap = (hi >= const["bid_iv"].to_numpy()) & (lo <= const["ask_iv"].to_numpy())
    return {
        "rmse_vol_points": float(100 * np.sqrt(np.mean(err**2))),
        "max_abs_error_vol_points": float(100 * np.max(np.abs(err))),
        "pp_overlap_share": float(overlap.mean()),
        "n_quotes": int(mid.size),
        **extra,
    }


def model_iv_mean(idata: xr.DataTree) -> tuple[np.ndarray, dict[str, float]]:
    """Posterior-mean model IV per quote, shape (n_quote,).

    IV models: the mean of ``iv_model``. Price models (posterior holds ``norm_price_model``): the
    mean over up to :data:`EXACT_IV_DRAWS` evenly thinned draws of the exact Black-76 implied vol of
    the model price (:func:`bayescal.market.implied_vol_black76`); the second value then gives
    ``exact_iv_draws``, ``exact_iv_failures`` (draw-quote pairs without an implied vol, left out
    of that quote's mean; a quote with none keeps its ``iv_model`` mean) and
    ``likelihood_iv_max_deviation_vol_points`` (largest ``|iv_model - exact IV|`` on those draws,
    vol points), else it is empty.

    Parameters
    ----------
    idata : xarray.DataTree
        A fit's result tree: ``posterior`` (``iv_model``, and ``norm_price_model`` for price models,
        dims (chain, draw, quote)) and ``constant_data`` (``k``, ``tau`` in years, ``cp``).

    Returns
    -------
    iv : numpy.ndarray, shape (n_quote,)
        Posterior-mean model implied vol per quote (decimal).
    checks : dict of str to float
        The three figures above for price models; empty for IV models.
    """
    mean, _, checks = _model_and_likelihood_iv_mean(idata)
    return mean, checks


def _model_and_likelihood_iv_mean(idata: xr.DataTree) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """:func:`model_iv_mean` plus the posterior mean of the likelihood's ``iv_model`` (computed once)."""
    posterior = idata["posterior"]
    likelihood_mean = posterior["iv_model"].mean(("chain", "draw")).to_numpy()
    if "norm_price_model" not in posterior.data_vars:
        return likelihood_mean, likelihood_mean, {}
    from bayescal.market.implied_vol import implied_vol_black76

    def thinned(name: str) -> np.ndarray:
        draws = posterior[name].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
        return draws[::max(1, -(-draws.shape[0] // EXACT_IV_DRAWS))]

    prices, iv_model = thinned("norm_price_model"), thinned("iv_model")
    const = idata["constant_data"].to_dataset()
    k, tau, cp = (const[name].to_numpy() for name in ("k", "tau", "cp"))
    iv, _ = implied_vol_black76(prices, 1.0, np.exp(k), tau, cp)
    ok = np.isfinite(iv)
    counts = ok.sum(axis=0)
    mean = np.where(counts > 0, np.where(ok, iv, 0.0).sum(axis=0) / np.maximum(counts, 1), likelihood_mean)
    deviation = float(100 * np.max(np.abs(iv_model - iv)[ok], initial=0.0))
    return mean, likelihood_mean, {"exact_iv_draws": int(prices.shape[0]), "exact_iv_failures": int((~ok).sum()),
                                   "likelihood_iv_max_deviation_vol_points": deviation}
