"""Build the PyMC model of a spec on filtered quotes, and fit it (nutpie NUTS).

``fit(spec, quotes)`` is the one entry point: filters -> used quotes -> ``build_model`` ->
sampling -> posterior predictive -> convergence gate -> :class:`~bayescal.results.CalibrationResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from bayescal.arbitrage import arbitrage_free_share
from bayescal.conventions import EXPIRY_DIM, QUOTE_DIM
from bayescal.diagnostics import approximate_gate, convergence_gate, fit_quality
from bayescal.errors import CalibrationError, QuoteValidationError
from bayescal.market.filters import filter_quotes, used_quotes
from bayescal.pricing_models import get_pricing_model
from bayescal.results import CalibrationResult
from bayescal.spec import CalibrationSpec, FitConfig

#: Largest accepted difference (vol points) between a fast likelihood kernel and the exact kernel.
KERNEL_IV_TOLERANCE_VOL_POINTS = 0.01


def expiry_labels(used: xr.Dataset) -> list[str]:
    """Expiry coordinate labels (ISO date-times, UTC) in ``expiry_idx`` order."""
    return [str(np.datetime_as_string(e, unit="m")) for e in np.unique(used["expiry"].to_numpy())]


def _black_vega_norm(k: np.ndarray, tau: np.ndarray, iv: np.ndarray) -> np.ndarray:
    """Vega of the normalised Black-76 price per unit vol: ``phi(d1) sqrt(tau)`` (Black 1976)."""
    s = iv * np.sqrt(tau)
    d1 = -k / s + 0.5 * s
    return np.exp(-0.5 * d1 * d1) / np.sqrt(2.0 * np.pi) * np.sqrt(tau)


def build_model(spec: CalibrationSpec, used: xr.Dataset) -> pm.Model:
    """The PyMC model of ``spec`` on the used quotes (output of :func:`bayescal.market.used_quotes`).

    Data enter through ``pm.Data`` (``k``, ``tau``, ``cp``, ``expiry_idx``, ``tau_expiry``,
    ``bid_iv``, ``ask_iv``, ``half_spread_iv``, ``strike``, ``forward``), so they are stored as
    ``constant_data``. Deterministic ``iv_model`` (dims ``quote``) is the model IV and ``iv_obs``
    the observed mid IV, for every model.

    Price-output models (Heston, Bates, Merton) reach the IV likelihood through
    :meth:`bayescal.likelihoods.IVLikelihood.model_iv_from_price`: by default the exact Black-76
    implied vol of the model price, solved in the graph from the first-order (vega) map around the
    mid, ``mid_iv + (c_model - c_mid) / vega_mid`` (``c`` the undiscounted normalised price,
    ``vega_mid = phi(d1) sqrt(tau)`` at the mid IV); ``price_to_iv = "vega_map"`` keeps the map
    itself. Every model thus has one observable (mid IV), so their log-likelihoods are comparable (LOO).
    The model price itself is stored as ``norm_price_model``.

    Raises
    ------
    QuoteValidationError
        If quotes of one expiry disagree on tau (by more than a second).
    """
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    idx = used["expiry_idx"].to_numpy()
    tau = used["tau"].to_numpy()
    n_expiry = int(idx.max()) + 1
    tau_expiry = np.array([tau[idx == e][0] for e in range(n_expiry)])
    spread_in_tau = np.array([np.ptp(tau[idx == e]) for e in range(n_expiry)])
    if np.any(spread_in_tau > 1.0 / (365 * 86400)):
        raise QuoteValidationError(f"quotes of one expiry disagree on tau by up to {spread_in_tau.max():.3g} years")
    coords = {EXPIRY_DIM: expiry_labels(used), QUOTE_DIM: used[QUOTE_DIM].to_numpy()}
    mid_iv = used["mid_iv"].to_numpy()
    with pm.Model(coords=coords) as model:
        data = {
            name: pm.Data(name, used[name].to_numpy(), dims=QUOTE_DIM)
            for name in ("k", "tau", "cp", "expiry_idx", "bid_iv", "ask_iv", "strike", "forward")
        }
        half_spread = pm.Data("half_spread_iv", 0.5 * (used["ask_iv"] - used["bid_iv"]).to_numpy(), dims=QUOTE_DIM)
        tau_e = pm.Data("tau_expiry", tau_expiry, dims=EXPIRY_DIM)
        out = pricing.model_output(spec.prior_set, data["k"], data["tau"], data["cp"], data["expiry_idx"], tau_e,
                                   quotes=used)
        if pricing.output == "norm_price":
            out = pm.Deterministic("norm_price_model", out, dims=QUOTE_DIM)
            c_mid = pm.Data("norm_mid", used["norm_mid"].to_numpy(), dims=QUOTE_DIM)
            vega = pm.Data("vega_mid", _black_vega_norm(used["k"].to_numpy(), tau, mid_iv), dims=QUOTE_DIM)
            out = spec.likelihood.model_iv_from_price(out, data["k"], data["tau"], data["cp"], c_mid, mid_iv, vega)
        iv_model = pm.Deterministic("iv_model", out, dims=QUOTE_DIM)
        noise = spec.likelihood.noise(spec.prior_set, half_spread, data["expiry_idx"])
        spec.likelihood.observe(iv_model, noise, mid_iv)
    return model


@contextlib.contextmanager
def _uncacheable_numba_quiet():
    """Silence numba's "Cannot cache compiled function ... large global arrays" warning.

    The surface kernel's trigonometric weights are constants of the graph; above about 1 MB (e.g.
    700 SPX quotes x 96 nodes) numba keeps such a function out of its on-disk cache and warns on every
    compile. The function itself is compiled and correct; only the cross-process cache is skipped.
    """
    from numba.core.errors import NumbaWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Cannot cache compiled function", category=NumbaWarning)
        yield


def _sample_nuts(model: pm.Model, cfg: FitConfig, progressbar: bool,
                 initvals: dict[str, Any] | None = None) -> xr.DataTree:
    return pm.sample(
        draws=cfg.draws,
        tune=cfg.tune,
        chains=cfg.chains,
        cores=min(cfg.chains, os.cpu_count() or 1),
        random_seed=cfg.random_seed,
        nuts_sampler="nutpie",
        nuts={"target_accept": cfg.target_accept, "adaptation": cfg.adaptation},
        initvals=initvals or None,
        progressbar=progressbar,
        compute_convergence_checks=False,
        model=model,
    )


def _fit_advi(model: pm.Model, cfg: FitConfig, progressbar: bool) -> xr.DataTree:
    method = "advi" if cfg.method == "advi" else "fullrank_advi"
    with model:
        approx = pm.fit(
            n=cfg.advi_iterations,
            method=method,
            obj_optimizer=pm.adam(learning_rate=cfg.learning_rate),
            random_seed=cfg.random_seed,
            progressbar=progressbar,
        )
        return approx.sample(draws=cfg.chains * cfg.draws, random_seed=cfg.random_seed)


def _fit_pathfinder(model: pm.Model, cfg: FitConfig, progressbar: bool) -> xr.DataTree:
    from pymc_extras.inference import fit_pathfinder

    return fit_pathfinder(model=model, num_paths=cfg.pathfinder_paths, num_draws=cfg.chains * cfg.draws,
                          random_seed=cfg.random_seed, progressbar=progressbar)


def _fit_laplace(model: pm.Model, cfg: FitConfig, progressbar: bool) -> xr.DataTree:
    from pymc_extras.inference import fit_laplace

    return fit_laplace(model=model, draws=cfg.chains * cfg.draws, random_seed=cfg.random_seed,
                       progressbar=progressbar)


_FITTERS = {"nuts": _sample_nuts, "advi": _fit_advi, "fullrank_advi": _fit_advi, "pathfinder": _fit_pathfinder,
            "map": _fit_laplace}


def _standard_layout(idata: xr.DataTree, model: pm.Model) -> xr.DataTree:
    """One group layout for every fit method: posterior (model variables only), sample_stats when
    the method has them, observed_data and constant_data rebuilt from the model."""
    names = [v.name for v in model.free_RVs + model.deterministics]
    groups = {"posterior": idata["posterior"].to_dataset()[names]}
    if "sample_stats" in idata.children:
        groups["sample_stats"] = idata["sample_stats"].to_dataset()
    dims = model.named_vars_to_dims
    coords = {name: np.asarray(values) for name, values in model.coords.items()}
    data = {}
    for var in model.data_vars:
        var_dims = dims.get(var.name, ())
        data[var.name] = xr.DataArray(var.get_value(), dims=var_dims, coords={d: coords[d] for d in var_dims})
    groups["constant_data"] = xr.Dataset(data)
    observed = {}
    for rv in model.observed_RVs:
        rv_dims = dims.get(rv.name, ())
        values = model.rvs_to_values[rv].data
        observed[rv.name] = xr.DataArray(values, dims=rv_dims, coords={d: coords[d] for d in rv_dims})
    groups["observed_data"] = xr.Dataset(observed)
    return xr.DataTree.from_dict(groups)


def _matching_initvals(model: pm.Model, initvals: dict[str, Any]) -> dict[str, np.ndarray]:
    """The starting values that fit ``model``'s free variables.

    A value is a scalar, an array of the variable's shape, or a dict ``{expiry label: value}`` for a
    variable over the expiry dimension (expiries missing from it start at the mean of those present).
    Names the model does not have as free variables, and values of another shape, are dropped.
    """
    shapes = model.eval_rv_shapes()
    dims = model.named_vars_to_dims
    out = {}
    for var in model.free_RVs:
        value = initvals.get(var.name)
        if value is None:
            continue
        if isinstance(value, dict):
            if dims.get(var.name) != (EXPIRY_DIM,) or not value:
                continue
            fill = float(np.mean(list(value.values())))
            value = [value.get(str(label), fill) for label in model.coords[EXPIRY_DIM]]
        value = np.asarray(value, float)
        if value.shape == tuple(shapes[var.name]) and np.all(np.isfinite(value)):
            out[var.name] = value
    return out


def fit(spec: CalibrationSpec, quotes: xr.Dataset, *, progressbar: bool = True,
        arbitrage_check: bool = True, initvals: dict[str, Any] | None = None) -> CalibrationResult:
    """Calibrate ``spec`` to ``quotes``: filter, build, fit with the spec's method, check the result.

    Parameters
    ----------
    spec : CalibrationSpec
    quotes : xarray.Dataset
        Canonical quotes from :func:`bayescal.market.read_chain` (unfiltered; the spec's filters run here).
    progressbar : bool
        Show progress.
    arbitrage_check : bool
        Compute the arbitrage-free share of posterior draws (strike grids per expiry; the costliest
        check for price models). Off in recovery studies, which do not report it.
    initvals : dict, optional
        Starting values (constrained space) of free variables, by name, for ``nuts`` (every chain
        starts near them, jittered): scalars, arrays, or ``{expiry label: value}`` dicts for
        per-expiry variables. Names the model lacks and values of another shape are ignored (the
        default start is used). Warm starts of :func:`bayescal.sequential.run_track`; other methods
        ignore it.

    Returns
    -------
    CalibrationResult
        ``idata`` with groups posterior, sample_stats (NUTS only), observed_data, constant_data,
        posterior_predictive (``iv_obs``: posterior-predictive IV per quote) and log_likelihood
        (``iv_obs`` per quote, for PSIS-LOO); the filtered quotes (every quote with its status);
        the convergence report and fit-quality measures. Approximate methods (``advi``,
        ``fullrank_advi``, ``pathfinder``, ``map`` = MAP + Laplace) are labelled
        ``approximate = 1`` and their gate status is ``approximate``.

    Raises
    ------
    CalibrationError
        If no quote survives the filters.
    """
    filtered = filter_quotes(quotes, spec.filters)
    used = used_quotes(filtered)
    model = build_model(spec, used)
    cfg = spec.fit
    free = [v.name for v in model.free_RVs]
    extra = {}
    if cfg.method == "nuts" and initvals:
        extra["initvals"] = _matching_initvals(model, initvals)
    t0 = time.perf_counter()
    with _uncacheable_numba_quiet():
        idata = _FITTERS[cfg.method](model, cfg, progressbar, **extra)
        t_fit = time.perf_counter() - t0
        idata = _standard_layout(idata, model)
        with model, warnings.catch_warnings():
            # the posterior draws already carry the Potentials' effect (a prior term such as SABR's
            # attainable-ATM wall or Heston's soft Feller term); only the observations are drawn here
            warnings.filterwarnings("ignore", message="The effect of Potentials", category=UserWarning)
            pm.sample_posterior_predictive(idata, extend_inferencedata=True, random_seed=cfg.random_seed + 1,
                                           progressbar=False)
            pm.compute_log_likelihood(idata, extend_inferencedata=True, progressbar=False)
    gate = convergence_gate(idata, free) if cfg.method == "nuts" else approximate_gate(cfg.method)
    quality = fit_quality(idata)
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    posterior, const = idata["posterior"].to_dataset(), idata["constant_data"].to_dataset()
    if arbitrage_check:
        quality.update(arbitrage_free_share(pricing, posterior, const))
    quality.update(pricing.likelihood_kernel_check(posterior, const))
    reasons = []
    if quality.get("kernel_max_iv_error_vol_points", 0.0) > KERNEL_IV_TOLERANCE_VOL_POINTS:
        reasons.append(f"likelihood kernel differs from the exact kernel by up to "
                       f"{quality['kernel_max_iv_error_vol_points']:.3g} vol points on posterior draws "
                       f"(tolerance {KERNEL_IV_TOLERANCE_VOL_POINTS}); raise model_settings.n_nodes")
    if (spec.likelihood.price_to_iv == "exact"
            and quality.get("likelihood_iv_max_deviation_vol_points", 0.0) > KERNEL_IV_TOLERANCE_VOL_POINTS):
        reasons.append(f"in-graph implied vols differ from the exact inversion of the model prices by up to "
                       f"{quality['likelihood_iv_max_deviation_vol_points']:.3g} vol points "
                       f"(tolerance {KERNEL_IV_TOLERANCE_VOL_POINTS})")
    if reasons:
        gate = dataclasses.replace(gate, status="warn" if gate.status == "ok" else gate.status,
                                   reasons=[*gate.reasons, *reasons])
    timings = {"fit_seconds": t_fit, "total_seconds": time.perf_counter() - t0}
    return CalibrationResult.from_fit(idata, spec, filtered, gate, quality, timings)


def prior_predictive(spec: CalibrationSpec, quotes: xr.Dataset, draws: int = 500) -> tuple[xr.Dataset, xr.Dataset]:
    """Draws from the spec's prior (parameters and model IVs) on the filtered quotes of a chain.

    Parameters
    ----------
    spec : CalibrationSpec
    quotes : xarray.Dataset
        Canonical quotes (the spec's filters run here).
    draws : int
        Number of prior draws.

    Returns
    -------
    used : xarray.Dataset
        The quotes the model is built on.
    prior : xarray.Dataset
        Prior draws with dims (chain=1, draw, ...): the same variable names as a posterior, so
        :meth:`bayescal.pricing_models.PricingModel.implied_vol_on_grid` draws prior smiles.
    """
    used = used_quotes(filter_quotes(quotes, spec.filters))
    return used, sample_prior(build_model(spec, used), draws, spec.fit.random_seed)


#: Most prior draws :func:`sample_prior` makes per accepted draw before it gives up.
MAX_PRIOR_TRIES_PER_DRAW = 200


def sample_prior(model: pm.Model, draws: int, random_seed: int | None) -> xr.Dataset:
    """Draws from a model's prior, Potentials included, by rejection.

    :func:`pymc.sample_prior_predictive` ignores Potentials. Every Potential of a bayescal model is a
    prior term ``log h(theta) <= 0`` (SABR's attainable-ATM wall, Heston's soft Feller term), so the
    prior is ``p(theta) h(theta) / Z`` and accepting a draw of ``p`` with probability ``h(theta)`` gives
    exact draws from it (von Neumann 1951 rejection sampling with envelope ``p``).

    Parameters
    ----------
    model : pymc.Model
        A model from :func:`build_model`.
    draws : int
        Accepted draws wanted, ``>= 1``.
    random_seed : int or None
        Seed of the draws.

    Returns
    -------
    xarray.Dataset
        The ``prior`` group (free variables and deterministics), dims ``(chain=1, draw=draws, ...)``.

    Raises
    ------
    ValueError
        If ``draws < 1``, or a Potential is positive (not a rejection weight).
    CalibrationError
        If fewer than ``draws`` draws are accepted in ``MAX_PRIOR_TRIES_PER_DRAW * draws`` tries.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1 (got {draws})")
    names = [v.name for v in (*model.free_RVs, *model.deterministics)]
    with model, warnings.catch_warnings():
        # numba runs the truncated-normal prior sampler in object mode: slower, same draws
        warnings.filterwarnings("ignore", message="Numba will use object mode", category=UserWarning)
        warnings.filterwarnings("ignore", message="The effect of Potentials", category=UserWarning)
        if not model.potentials:
            return pm.sample_prior_predictive(draws=draws, random_seed=random_seed)["prior"].to_dataset()
        log_h = pytensor.function(model.free_RVs, pt.add(*[pt.sum(p) for p in model.potentials]),
                                  on_unused_input="ignore")
        rng = np.random.default_rng(random_seed)
        accepted: list[xr.Dataset] = []
        n_accepted, tries = 0, 0
        while n_accepted < draws:
            if tries >= MAX_PRIOR_TRIES_PER_DRAW * draws:
                raise CalibrationError(f"prior draws: {n_accepted} of {tries} draws accepted by the model's "
                                       f"Potentials ({[p.name for p in model.potentials]}); {draws} wanted")
            batch = max(2 * (draws - n_accepted), 16)
            prior = pm.sample_prior_predictive(draws=batch, random_seed=rng, var_names=names)["prior"].to_dataset()
            tries += batch
            values = [prior[v.name].isel(chain=0).to_numpy() for v in model.free_RVs]
            lw = np.array([log_h(*(x[i] for x in values)) for i in range(batch)])
            if np.any(lw > 1e-12):
                raise ValueError(f"prior draws: a Potential is positive ({lw.max():.3g}), not a rejection weight")
            keep = np.flatnonzero(np.log(rng.uniform(size=batch)) < lw)
            accepted.append(prior.isel(draw=keep))
            n_accepted += keep.size
        out = xr.concat(accepted, dim="draw").isel(draw=slice(0, draws))
        return out.assign_coords(draw=np.arange(draws))
