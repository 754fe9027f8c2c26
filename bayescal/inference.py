"""Build the PyMC model of a spec on filtered quotes, and fit it (nutpie NUTS).

``fit(spec, quotes)`` is the one entry point: filters -> used quotes -> ``build_model`` ->
sampling -> posterior predictive -> convergence gate -> :class:`~bayescal.results.CalibrationResult`.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pymc as pm
import xarray as xr

from bayescal.conventions import EXPIRY_DIM, QUOTE_DIM
from bayescal.diagnostics import convergence_gate, fit_quality
from bayescal.errors import QuoteValidationError
from bayescal.market.filters import filter_quotes, used_quotes
from bayescal.pricing_models import get_pricing_model
from bayescal.results import CalibrationResult
from bayescal.spec import CalibrationSpec


def expiry_labels(used: xr.Dataset) -> list[str]:
    """Expiry coordinate labels (ISO date-times, UTC) in ``expiry_idx`` order."""
    return [str(np.datetime_as_string(e, unit="m")) for e in np.unique(used["expiry"].to_numpy())]


def build_model(spec: CalibrationSpec, used: xr.Dataset) -> pm.Model:
    """The PyMC model of ``spec`` on the used quotes (output of :func:`bayescal.market.used_quotes`).

    Data enter through ``pm.Data`` (``k``, ``tau``, ``expiry_idx``, ``tau_expiry``, ``bid_iv``,
    ``ask_iv``, ``half_spread_iv``, ``strike``, ``forward``), so they are stored as
    ``constant_data``. Deterministic ``iv_model`` (dims ``quote``) is the model IV; ``iv_obs`` is
    the observed mid IV.

    Raises
    ------
    QuoteValidationError
        If quotes of one expiry disagree on tau (by more than a second).
    """
    pricing = get_pricing_model(spec.model)
    idx = used["expiry_idx"].to_numpy()
    tau = used["tau"].to_numpy()
    n_expiry = int(idx.max()) + 1
    tau_expiry = np.array([tau[idx == e][0] for e in range(n_expiry)])
    spread_in_tau = np.array([np.ptp(tau[idx == e]) for e in range(n_expiry)])
    if np.any(spread_in_tau > 1.0 / (365 * 86400)):
        raise QuoteValidationError(f"quotes of one expiry disagree on tau by up to {spread_in_tau.max():.3g} years")
    coords = {EXPIRY_DIM: expiry_labels(used), QUOTE_DIM: used[QUOTE_DIM].to_numpy()}
    with pm.Model(coords=coords) as model:
        data = {
            name: pm.Data(name, used[name].to_numpy(), dims=QUOTE_DIM)
            for name in ("k", "tau", "expiry_idx", "bid_iv", "ask_iv", "strike", "forward")
        }
        half_spread = pm.Data("half_spread_iv", 0.5 * (used["ask_iv"] - used["bid_iv"]).to_numpy(), dims=QUOTE_DIM)
        tau_e = pm.Data("tau_expiry", tau_expiry, dims=EXPIRY_DIM)
        iv_model = pricing.implied_vol(spec.prior_set, data["k"], data["tau"], data["expiry_idx"], tau_e)
        iv_model = pm.Deterministic("iv_model", iv_model, dims=QUOTE_DIM)
        noise = spec.likelihood.noise(spec.prior_set, half_spread, data["expiry_idx"])
        spec.likelihood.observe(iv_model, noise, used["mid_iv"].to_numpy())
    return model


def fit(spec: CalibrationSpec, quotes: xr.Dataset, *, progressbar: bool = True) -> CalibrationResult:
    """Calibrate ``spec`` to ``quotes``: filter, build, sample with nutpie, check convergence.

    Parameters
    ----------
    spec : CalibrationSpec
    quotes : xarray.Dataset
        Canonical quotes from :func:`bayescal.market.read_chain` (unfiltered; the spec's filters run here).
    progressbar : bool
        Show sampling progress.

    Returns
    -------
    CalibrationResult
        ``idata`` with groups posterior, sample_stats, observed_data, constant_data and
        posterior_predictive (``iv_obs``: posterior-predictive IV per quote); the filtered quotes
        (every quote with its status); the convergence report and fit-quality measures.

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
    t0 = time.perf_counter()
    with model:
        idata = pm.sample(
            draws=cfg.draws,
            tune=cfg.tune,
            chains=cfg.chains,
            cores=min(cfg.chains, os.cpu_count() or 1),
            random_seed=cfg.random_seed,
            nuts_sampler="nutpie",
            nuts={"target_accept": cfg.target_accept},
            progressbar=progressbar,
            compute_convergence_checks=False,
        )
        t_sample = time.perf_counter() - t0
        pm.sample_posterior_predictive(
            idata, extend_inferencedata=True, random_seed=cfg.random_seed + 1, progressbar=False
        )
    gate = convergence_gate(idata, free)
    quality = fit_quality(idata)
    timings = {"sample_and_compile_seconds": t_sample, "total_seconds": time.perf_counter() - t0}
    return CalibrationResult.from_fit(idata, spec, filtered, gate, quality, timings)
