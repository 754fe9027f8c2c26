"""Build the PyMC model of a spec on filtered quotes, and fit it (nutpie NUTS).

``fit(spec, quotes)`` is the one entry point: filters -> used quotes -> ``build_model`` ->
sampling -> posterior predictive -> convergence gate -> :class:`~bayescal.results.CalibrationResult`.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from threadpoolctl import threadpool_limits

from bayescal.arbitrage import arbitrage_free_share
from bayescal.compilation import compilation, compile_mode, defined_in_bayescal, recipe_function, recipe_object
from bayescal.conventions import EXPIRY_DIM, QUOTE_DIM
from bayescal.diagnostics import approximate_gate, convergence_gate, fit_quality
from bayescal.errors import CalibrationError, QuoteValidationError
from bayescal.market.filters import filter_quotes, used_quotes
from bayescal.pricing_models import expiry_tau, get_pricing_model
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


def _as_one_node(outputs: list[pt.TensorVariable], parameters: list[pt.TensorVariable]) -> list[pt.TensorVariable]:
    """The graph from the model's parameters and data to ``outputs`` as one inlined ``OpFromGraph`` node.

    PyMC derives a log density by rewriting the whole model graph (``construct_ir_fgraph``); the
    pricing graph holds no random variable, so wrapping it leaves PyMC nothing to walk there. The node
    is inlined when a function is compiled, so the compiled graph computes the same values (log
    densities equal, gradients within 2e-16 relative on all seven models). Measured on the BTC Heston
    bench chain: ``model.logp()`` 0.97 s -> 0.06 s (Bates 1.52 -> 0.09 s, SABR 0.68 -> 0.10 s);
    pymc-extras' Pathfinder derives it three times (its fit 12.8 s -> 9.1 s).
    """
    from pytensor.compile.builders import OpFromGraph
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import ancestors

    inputs = [v for v in ancestors(outputs, blockers=parameters)
              if (v.owner is None or v in parameters) and not isinstance(v, Constant)]
    node = OpFromGraph(inputs, outputs, inline=True, name="pricing")
    result = node(*inputs)
    return list(result) if isinstance(result, list | tuple) else [result]


def build_model(spec: CalibrationSpec, used: xr.Dataset, *, fold_pricing: bool = False) -> pm.Model:
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

    Parameters
    ----------
    spec : CalibrationSpec
    used : xarray.Dataset
        The quotes the model is fitted to.
    fold_pricing : bool, default False
        Wrap the pricing graph (parameters and data to model price and IV) in one inlined node
        (:func:`_as_one_node`), for methods that derive the log density several times. The values are
        the same, but the compiled graph differs in the last bits; ``fit`` folds it for the approximate
        methods only, so NUTS trajectories stay those of the plain graph.

    Raises
    ------
    QuoteValidationError
        If quotes of one expiry disagree on tau (by more than a second).
    """
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    idx = used["expiry_idx"].to_numpy()
    tau = used["tau"].to_numpy()
    n_expiry = int(idx.max()) + 1
    tau_expiry = expiry_tau(used)
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
            c_mid = pm.Data("norm_mid", used["norm_mid"].to_numpy(), dims=QUOTE_DIM)
            vega = pm.Data("vega_mid", _black_vega_norm(used["k"].to_numpy(), tau, mid_iv), dims=QUOTE_DIM)
            iv = spec.likelihood.model_iv_from_price(out, data["k"], data["tau"], data["cp"], c_mid, mid_iv, vega)
            if fold_pricing:
                out, iv = _as_one_node([out, iv], model.free_RVs)
            pm.Deterministic("norm_price_model", out, dims=QUOTE_DIM)
        else:
            iv = _as_one_node([out], model.free_RVs)[0] if fold_pricing else out
        iv_model = pm.Deterministic("iv_model", iv, dims=QUOTE_DIM)
        noise = spec.likelihood.noise(spec.prior_set, half_spread, data["expiry_idx"])
        spec.likelihood.observe(iv_model, noise, mid_iv)
    return model


def _sample_nuts(model: pm.Model, cfg: FitConfig, progressbar: bool,
                 initvals: dict[str, Any] | None = None, recipe: tuple | None = None) -> xr.DataTree:
    """nutpie's NUTS, as ``pm.sample(nuts_sampler="nutpie")`` runs it (same seeds, same draws), with the
    compiled model kept in memory under ``recipe`` (:func:`bayescal.compilation.recipe_object`).

    Compiling the model for nutpie (numba C callbacks around the log density and the draw transform)
    is most of a small fit: 11 s of the SVI demo's 12.6 s, about 20 s of a Heston fit of the BTC
    chain beside 22 s of sampling. Numba cannot cache those callbacks on disk, so a refit of the same
    model on the same quotes in the same process (other draws, seeds or sampler settings) reuses them.
    The posterior's ``sampling_time`` attribute is the time of tuning and draws, as PyMC stamps it.
    """
    import nutpie
    from pymc.util import get_random_generator

    def build():
        return nutpie.compile_pymc_model(model, backend="numba", initial_points=initvals or None)

    compiled = recipe_object((*recipe, "nutpie", initvals), build) if recipe is not None else build()
    # PyMC's seeding of an external sampler: the first of the per-chain seeds it spawns
    seed = int(get_random_generator(cfg.random_seed).spawn(cfg.chains)[0].integers(2**30))
    cores = min(cfg.chains, os.cpu_count() or 1)
    t0 = time.perf_counter()
    with threadpool_limits(limits=cores):  # as pm.sample: BLAS pools no larger than the sampling threads
        idata = nutpie.sample(compiled, draws=cfg.draws, tune=max(cfg.tune, 1), chains=cfg.chains, cores=cores,
                              seed=seed, save_warmup=False, progress_bar=progressbar,
                              target_accept=cfg.target_accept, adaptation=cfg.adaptation)
    idata["posterior"].attrs["sampling_time"] = time.perf_counter() - t0
    return idata


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
    """Multi-path Pathfinder (pymc-extras) with its defaults, run as ``fit_pathfinder`` runs it, less
    its ``add_data_to_inference_data`` step.

    That step computes every deterministic over all draws a second time (the draw transform already
    did) and adds data groups that :func:`_standard_layout` rebuilds anyway: 3.4 s of a 24 s profiled
    Heston fit on the BTC bench chain.

    ``parallel=False``: the paths run one after another in this process. Worker processes each link the
    compiled functions again, and a path of these small models is about a second of L-BFGS: on the BTC
    Heston bench fit (4 paths, 2 cores) pymc-extras took 17.5 s serially and 21.5 s in parallel.
    ``compile_kwargs``: pymc-extras compiles its draw-transform graph (every deterministic, the pricing
    graph included, over all draws) in FAST_COMPILE, i.e. Python-level ops: 22 s of a 49 s Heston fit
    on the BTC bench chain; in bayescal's numba mode the whole fit took 26 s.
    """
    import inspect

    from pymc.blocking import DictToArrayBijection
    from pymc_extras.inference import fit_pathfinder
    from pymc_extras.inference.pathfinder.idata import convert_flat_trace_to_idata
    from pymc_extras.inference.pathfinder.lbfgs import LBFGSConfig
    from pymc_extras.inference.pathfinder.multipath import multipath_pathfinder

    defaults = {name: p.default for name, p in inspect.signature(fit_pathfinder).parameters.items()}
    n_free = DictToArrayBijection.map(model.initial_point()).data.size
    compile_kwargs = {"mode": compile_mode()}
    result = multipath_pathfinder(
        model, num_paths=cfg.pathfinder_paths, num_draws=cfg.chains * cfg.draws,
        num_draws_per_path=defaults["num_draws_per_path"], num_elbo_draws=defaults["num_elbo_draws"],
        jitter=defaults["jitter"], lbfgs_config=LBFGSConfig().set_default_maxcor(n_free),
        importance_sampling=defaults["importance_sampling"], progressbar=progressbar, parallel=False,
        random_seed=cfg.random_seed, compile_kwargs=compile_kwargs,
    )
    return convert_flat_trace_to_idata(result.samples, model=model, importance_sampling=defaults["importance_sampling"],
                                       compile_kwargs=compile_kwargs)


#: MAP + Laplace: the most L-BFGS-B iterations, the Newton polishing steps after them, and the
#: relative step of the central differences of the exact gradient that give the Hessian.
MAP_MAX_ITERATIONS = 2000
MAP_NEWTON_STEPS = 3
LAPLACE_FD_STEP = 1e-5


def _neg_log_density_hessian(neg_grad, x: np.ndarray, step: float = LAPLACE_FD_STEP) -> np.ndarray:
    """Hessian of a function from central differences of its exact gradient, symmetrised.

    ``H[:, i] = (g(x + h_i e_i) - g(x - h_i e_i)) / (2 h_i)``, ``h_i = step * max(1, |x_i|)``:
    truncation error O(h^2) and round-off O(eps |g| / h), about 1e-10 relative here; 2n gradients.
    """
    n = x.size
    hess = np.empty((n, n))
    for i in range(n):
        h = step * max(1.0, abs(float(x[i])))
        e = np.zeros(n)
        e[i] = h
        hess[:, i] = (neg_grad(x + e) - neg_grad(x - e)) / (2.0 * h)
    return 0.5 * (hess + hess.T)


def _logp_dlogp(model: pm.Model, point: dict[str, np.ndarray], recipe: tuple | None):
    """The model's log density (unconstrained, Jacobians included) and gradient as a function of the
    raveled point: PyMC's ``logp_dlogp_function``, cached across processes under ``recipe`` (what the
    model was built from, see :func:`fit`) when given, which skips PyMC's log-density and gradient
    construction (about 3.5 s of a Heston MAP fit on the BTC chain)."""

    def build():
        return model.logp_dlogp_function(ravel_inputs=True, initial_point=point)._pytensor_function

    if recipe is None:
        return build()
    layout = tuple((name, np.shape(value), str(np.asarray(value).dtype)) for name, value in point.items())
    return recipe_function((*recipe, "logp_dlogp", "raveled", layout), build, recipe_holds_shared_values=True)


def _lbfgs_mode(model: pm.Model, recipe: tuple | None = None) -> tuple[Callable, Any, dict[str, np.ndarray]]:
    """L-BFGS-B on the negative log density (unconstrained space, exact gradient) from the model's
    initial point (the priors' support points).

    Returns ``(neg, opt, point)``: the objective ``x -> (-logp, -grad)`` on the raveled unconstrained
    vector, scipy's ``OptimizeResult`` and the starting point (its layout maps ``opt.x`` back to names).
    Raises :class:`CalibrationError` if the density is not finite at the end point.
    """
    from pymc.blocking import DictToArrayBijection
    from scipy.optimize import minimize

    point = model.initial_point()
    logp_dlogp = _logp_dlogp(model, point, recipe)

    def neg(x: np.ndarray) -> tuple[float, np.ndarray]:
        logp, grad = logp_dlogp(x)
        return -float(logp), -np.asarray(grad, dtype=float)

    opt = minimize(neg, DictToArrayBijection.map(point).data, jac=True, method="L-BFGS-B",
                   options={"maxiter": MAP_MAX_ITERATIONS})
    if not np.isfinite(opt.fun):
        raise CalibrationError(f"MAP: the log density is not finite at the optimiser's end point ({opt.message})")
    return neg, opt, point


def map_start(model: pm.Model, recipe: tuple | None = None) -> dict[str, np.ndarray]:
    """The MAP of ``model`` as starting values of its free variables (``[fit] init = "map"``).

    The mode of the log density NUTS samples (unconstrained coordinates, Jacobians of the transforms
    included), found by L-BFGS-B from the priors' support points with the exact gradient, as the
    first step of the ``map`` method (:func:`_lbfgs_mode`); L-BFGS-B's default tolerances.

    Parameters
    ----------
    model : pymc.Model
    recipe : tuple, optional
        Cache key of the compiled log density (see :func:`fit`).

    Returns
    -------
    dict
        ``{free variable name: constrained value}`` (arrays of the variables' shapes), the form
        :func:`fit`'s ``initvals`` take.

    Raises
    ------
    CalibrationError
        If the log density is not finite at the optimiser's end point.
    """
    from pymc.blocking import DictToArrayBijection

    _, opt, point = _lbfgs_mode(model, recipe)
    unconstrained = DictToArrayBijection.rmap(DictToArrayBijection.map(point)._replace(data=opt.x))
    free = {v.name for v in model.free_RVs}
    outs = [v for v in model.unobserved_value_vars if v.name in free]  # the constrained values
    values = model.compile_fn(outs, inputs=model.value_vars, on_unused_input="ignore", point_fn=False)(**unconstrained)
    return {v.name: np.asarray(x) for v, x in zip(outs, values, strict=True)}


def _fit_laplace(model: pm.Model, cfg: FitConfig, progressbar: bool, recipe: tuple | None = None) -> xr.DataTree:
    """MAP + Laplace in the unconstrained space: the Gaussian at the mode with the inverse Hessian.

    The log density is the sampler's (unconstrained coordinates, Jacobian of the transforms
    included), so the approximation is the second-order expansion of the density that NUTS samples,
    as Stan's ``laplace`` method does by default (``jacobian=true``; Stan Reference Manual,
    "Laplace sampling"). Steps: L-BFGS-B from the model's initial point with the exact gradient, up
    to :data:`MAP_NEWTON_STEPS` Newton steps on the finite-difference Hessian (the covariance is
    the exact local curvature, unlike the BFGS inverse-Hessian estimate pymc-extras' ``fit_laplace``
    reuses, which was 4-12% off in standard deviation on the BTC Heston fit), then ``chains * draws``
    draws mapped to the model's variables by pymc-extras' ``draws_from_laplace_approx``.

    Problems (optimiser not converged, Hessian not positive definite at the optimum: then its
    eigenvalues are floored and the draws are not a Laplace approximation) are listed in
    ``attrs["fit_problems"]``; :func:`fit` fails the gate on them.
    """
    from pymc_extras.inference.laplace_approx.laplace import draws_from_laplace_approx

    neg, opt, _ = _lbfgs_mode(model, recipe)
    x, value = opt.x, float(opt.fun)

    def neg_grad(x: np.ndarray) -> np.ndarray:
        return neg(x)[1]

    problems = []
    hess = _neg_log_density_hessian(neg_grad, x)
    for _ in range(MAP_NEWTON_STEPS):
        grad = neg_grad(x)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        for shrink in (1.0, 0.5, 0.25):
            trial = x - shrink * step
            trial_value = neg(trial)[0]
            if np.isfinite(trial_value) and trial_value <= value:
                break
        else:
            break
        x, value = trial, trial_value
        hess = _neg_log_density_hessian(neg_grad, x)
    grad_norm = float(np.max(np.abs(neg_grad(x))))
    eigval, eigvec = np.linalg.eigh(hess)
    if eigval.min() <= 0:
        floor = 1e-8 * max(float(eigval.max()), 1.0)
        problems.append(f"MAP + Laplace: the Hessian at the optimum is not positive definite (smallest "
                        f"eigenvalue {eigval.min():.3g}); the optimum is not a mode and its eigenvalues were "
                        f"floored at {floor:.3g}")
        eigval = np.maximum(eigval, floor)
    if not opt.success and grad_norm > 1e-3:
        problems.append(f"MAP: L-BFGS-B did not converge ({opt.message}; largest gradient entry {grad_norm:.3g})")
    cov = (eigvec / eigval) @ eigvec.T
    posterior, _ = draws_from_laplace_approx(mean=x, covariance=0.5 * (cov + cov.T), draws=cfg.chains * cfg.draws,
                                             model=model, return_unconstrained=False, random_seed=cfg.random_seed)
    tree = xr.DataTree.from_dict({"posterior": posterior})
    tree.attrs["fit_problems"] = problems
    return tree


_FITTERS = {"nuts": _sample_nuts, "advi": _fit_advi, "fullrank_advi": _fit_advi, "pathfinder": _fit_pathfinder,
            "map": _fit_laplace}


def _standard_layout(idata: xr.DataTree, model: pm.Model) -> xr.DataTree:
    """One group layout for every fit method: posterior (model variables only, every model dimension
    as a coordinate), sample_stats when the method has them, observed_data and constant_data rebuilt
    from the model."""
    names = [v.name for v in model.free_RVs + model.deterministics]
    posterior = idata["posterior"].to_dataset()[names]
    # every model dimension is a posterior coordinate, also where no variable uses it (a Heston model
    # with a shared noise floor has no per-expiry variable; greeks and reports label expiries from it)
    missing = {d: np.asarray(values) for d, values in model.coords.items() if d not in posterior.dims}
    groups = {"posterior": posterior.assign_coords(missing)}
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


def _add_observation_groups(idata: xr.DataTree, model: pm.Model, random_seed: int) -> None:
    """Add ``posterior_predictive`` and ``log_likelihood`` (``iv_obs``, dims chain, draw, quote) to ``idata``.

    Both depend on the parameters only through the stored model IV ``iv_model`` and the noise
    variables, so the observation's graph is cut at ``iv_model`` and vectorised over the draws
    (:func:`pytensor.graph.replace.vectorize_graph`): one small function for all draws, instead of
    PyMC's ``sample_posterior_predictive`` / ``compute_log_likelihood``, which compile the model's
    pricing graph again and evaluate it draw by draw (about 8 s of a Heston fit on the BTC chain).
    Same values as PyMC's (log-likelihood to 3e-13 on the SVI demo fit).
    """
    from pytensor.graph.replace import vectorize_graph
    from pytensor.graph.traversal import ancestors

    obs, iv_model = model["iv_obs"], model["iv_model"]
    logp = pm.logp(obs, model.rvs_to_values[obs])
    upstream = set(ancestors([logp, obs], blockers=[iv_model]))
    inputs = [iv_model, *(rv for rv in model.free_RVs if rv in upstream)]
    batched = [pt.tensor(f"{v.name}_draws", shape=(None, *v.type.shape), dtype=v.dtype) for v in inputs]
    logp_draws, obs_draws = vectorize_graph([logp, obs], replace=dict(zip(inputs, batched, strict=True)))
    fn = pm.pytensorf.compile(batched, [logp_draws, obs_draws], random_seed=random_seed)
    posterior = idata["posterior"].to_dataset()
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    loglik, predictive = fn(*(posterior[v.name].to_numpy().reshape(n_chain * n_draw, *posterior[v.name].shape[2:])
                              for v in inputs))
    template = posterior["iv_model"]
    attrs = {"sample_dims": ["chain", "draw"], "observed": obs.name}
    for group, values in (("log_likelihood", loglik), ("posterior_predictive", predictive)):
        data = template.copy(data=np.asarray(values).reshape(template.shape)).rename(obs.name)
        idata[group] = xr.DataTree(xr.Dataset({obs.name: data}, attrs=attrs))


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
    cfg = spec.fit
    with compilation():
        # the approximate methods derive the log density up to three times (Pathfinder); one PyMC
        # derivation of the Heston model walks the pricing graph for about 1 s
        model = build_model(spec, used, fold_pricing=cfg.method != "nuts")
    free = [v.name for v in model.free_RVs]
    extra = {}
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    if cfg.method in ("map", "nuts") and defined_in_bayescal(pricing, spec.likelihood):
        # everything build_model reads, so that compiled functions can be cached by it
        extra["recipe"] = ("model", spec.model, spec.model_settings, spec.prior_set, spec.likelihood, used)
    t0 = time.perf_counter()
    if cfg.method == "nuts" and not initvals and cfg.init == "map":
        with compilation():
            initvals = map_start(model, extra.get("recipe"))
    if cfg.method == "nuts" and initvals:
        extra["initvals"] = _matching_initvals(model, initvals)
    with compilation():
        idata = _FITTERS[cfg.method](model, cfg, progressbar, **extra)
        t_fit = time.perf_counter() - t0
        # the time nutpie spent sampling (tuning included, compilation excluded), stamped by _sample_nuts
        t_sampling = idata["posterior"].attrs.get("sampling_time")
        fit_problems = list(idata.attrs.get("fit_problems", []))
        idata = _standard_layout(idata, model)
        _add_observation_groups(idata, model, random_seed=cfg.random_seed + 1)
        gate = convergence_gate(idata, free) if cfg.method == "nuts" else approximate_gate(cfg.method, fit_problems)
        quality = fit_quality(idata)
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
    if t_sampling is not None:
        timings["sampling_seconds"] = float(t_sampling)
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
    # Only the free variables are drawn, the deterministics computed from them afterwards: PyMC hands
    # seeds to the random variables in the order it meets them in the graph of what it samples, so
    # drawing the deterministics too would tie the draw of a seed to the pricing kernels' graphs.
    names = [v.name for v in model.free_RVs]

    def with_deterministics(prior: xr.Dataset) -> xr.Dataset:
        if not model.deterministics:
            return prior
        return pm.compute_deterministics(prior.copy(), model=model, extend_dataset=True, progressbar=False)

    with model, compilation(), warnings.catch_warnings():
        # numba runs the truncated-normal prior sampler in object mode: slower, same draws
        warnings.filterwarnings("ignore", message="Numba will use object mode", category=UserWarning)
        warnings.filterwarnings("ignore", message="The effect of Potentials", category=UserWarning)
        if not model.potentials:
            prior = pm.sample_prior_predictive(draws=draws, random_seed=random_seed, var_names=names)["prior"]
            return with_deterministics(prior.to_dataset())
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
        return with_deterministics(out.assign_coords(draw=np.arange(draws)))
