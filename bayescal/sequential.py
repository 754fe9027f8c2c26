"""Sequential updating: one window's posterior becomes the next window's prior.

The window-invariant (surface-level) parameters of a model — Heston's ``v0, kappa, theta, xi, rho``,
SSVI's ``rho, eta, gamma`` — are carried from window to window as a joint Gaussian (or Student-t) in
their unconstrained space (:class:`bayescal.priors.JointPrior`), which keeps posterior correlations.
Per-expiry parameters are not carried (the listed expiries change between windows) and keep the base
prior set's marginals. Between windows the covariance is inflated (forgetting factor) and a
random-walk drift is added in proportion to the time elapsed; a floor keeps every marginal at least a
given fraction of the base prior's spread, so the prior never collapses.

Conflict checks (per window), either of which flags a regime change:

- the Mahalanobis distance of the new posterior mean from the prior mean under the prior covariance,
  ``d2 = (m - mu)' Sigma^-1 (m - mu)``, referred to a chi-square with ``dim`` degrees of freedom (a
  tail probability below ``1 - conflict_quantile`` flags); it sees what the carried parameters see;
- the market level shift: the mean log change of the at-the-money implied vol at constant maturity
  (expiries of at least :data:`LEVEL_MIN_TAU`) since the previous window, flagged beyond
  ``level_shift_max * sqrt(max(days, 1))``. Models whose levels are per-expiry parameters (SSVI's ATM
  variances) carry no level, so the first check cannot see a vol shock there; this one is model-free.

On a flag the window is refitted with the base (wide) prior and the result records it. A window whose fit
fails the convergence gate never passes its posterior on: the previous prior is carried forward,
inflated. :func:`run_track` persists its state atomically after every window and resumes without
refitting finished windows.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm
import xarray as xr
from scipy import stats

from bayescal.atomic import atomic_path, write_text_atomic
from bayescal.conventions import EXPIRY_DIM
from bayescal.errors import CalibrationError, SpecError
from bayescal.market.filters import used_quotes
from bayescal.pricing_models import expiry_tau, get_pricing_model, market_atm_iv
from bayescal.priors import JointPrior, PriorSet, to_unconstrained, unconstrained_transform
from bayescal.results import CalibrationResult

STATE_FILE = "track_state.json"
TRACK_FILE = "track.nc"


@dataclass(frozen=True)
class UpdateSettings:
    """How a posterior becomes the next prior.

    Attributes
    ----------
    inflation : float
        Multiplies the posterior covariance (>= 1; 1 = no forgetting).
    drift_sd_per_day : float
        Random-walk standard deviation per square-root day, in unconstrained units, added to the
        diagonal as ``drift_sd_per_day**2 * days_between_windows``.
    student_t_nu : float
        Degrees of freedom of a multivariate Student-t joint (heavier tails); 0 = Gaussian.
    floor_fraction : float
        Each marginal sd is at least this fraction of the base prior's sd (unconstrained space).
    conflict_quantile : float
        Chi-square quantile above which a window is flagged as a regime change.
    level_shift_max : float
        Largest mean log change of the ATM vol (constant maturity, expiries >= :data:`LEVEL_MIN_TAU`)
        per square-root day not flagged as a regime change; ``0`` = off. The default 0.05 (a 5%
        relative move of the 1-month-and-longer ATM vols in one day) lies above every calm day of the
        Feb-2026 BTC series (at most 0.042) and below the shock days (0.063-0.093).
    warm_tune : int
        Warm start: a window whose prior is the previous posterior tunes NUTS for at most this many
        draws per chain (instead of the spec's ``tune``), starting every chain at the previous
        posterior means of the free variables the two windows share (e.g. ``sigma_obs``). The
        carried parameters need no start of their own: their non-centred joint prior is centred on,
        and scaled by, the previous posterior, so the default start is that posterior's mean and the
        sampler sees a roughly whitened geometry. ``0`` = cold start (the spec's ``tune``, default starts).
    """

    inflation: float = 1.0
    drift_sd_per_day: float = 0.0
    student_t_nu: float = 0.0
    floor_fraction: float = 0.05
    conflict_quantile: float = 0.999
    level_shift_max: float = 0.05
    warm_tune: int = 300

    def __post_init__(self) -> None:
        problems = []
        if self.inflation < 1:
            problems.append(f"inflation must be >= 1 (got {self.inflation})")
        if min(self.drift_sd_per_day, self.floor_fraction, self.student_t_nu, self.warm_tune, self.level_shift_max) < 0:
            problems.append("drift_sd_per_day, floor_fraction, student_t_nu, warm_tune and level_shift_max "
                            "must be >= 0")
        if not 0 < self.conflict_quantile < 1:
            problems.append(f"conflict_quantile must be in (0, 1) (got {self.conflict_quantile})")
        if problems:
            raise SpecError("update settings: " + "; ".join(problems))


def carried_parameters(model_key: str, model_settings: dict[str, Any] | None = None) -> list[str]:
    """The window-invariant parameters of a model (those a joint prior carries).

    Raises
    ------
    SpecError
        If the model has none (per-expiry SVI: nothing survives a change of listed expiries).
    """
    pricing = get_pricing_model(model_key, **(model_settings or {}))
    names = [p for p in pricing.parameters if p not in pricing.per_expiry]
    if not names:
        raise SpecError(f"model {model_key!r} has only per-expiry parameters: nothing to carry between windows; "
                        "use a surface model (ssvi, heston, bates, merton)")
    return names


def base_unconstrained_sd(prior_set: PriorSet, names: list[str], draws: int = 4000) -> np.ndarray:
    """Standard deviation of each base-prior marginal in its unconstrained space (Monte Carlo, seeded)."""
    sds = []
    for name in names:
        prior = prior_set.priors[name]
        transform = unconstrained_transform(prior)
        with pm.Model():
            var = prior.create_variable("x")
            values = pm.draw(var, draws=draws, random_seed=0)
        sds.append(float(np.std(to_unconstrained(values, transform))))
    return np.asarray(sds)


def joint_from_draws(draws: dict[str, np.ndarray], transforms: dict[str, tuple[str, float, float]],
                     settings: UpdateSettings, days: float = 0.0, floor_sd: np.ndarray | None = None,
                     note: str = "") -> JointPrior:
    """Moment-match a joint prior to posterior draws in unconstrained space, then inflate, drift and floor.

    Parameters
    ----------
    draws : dict of str to array, each shape (n_samples,)
        Constrained posterior draws per parameter.
    transforms : dict of str to (str, float, float)
        Unconstrained map per parameter (:func:`bayescal.priors.unconstrained_transform`).
    settings : UpdateSettings
    days : float
        Time to the next window (drift term).
    floor_sd : array, shape (d,), optional
        Minimum marginal sd per parameter (unconstrained).
    note : str
        Provenance stored with the prior.

    Returns
    -------
    JointPrior
        ``cov = inflation * cov_post + drift_sd_per_day**2 * days * I``, rows/columns rescaled where a
        marginal sd is below the floor (correlations kept).
    """
    names = list(draws)
    z = np.column_stack([to_unconstrained(np.asarray(draws[n], float).ravel(), transforms[n]) for n in names])
    mean = z.mean(axis=0)
    cov = np.atleast_2d(np.cov(z, rowvar=False)) * settings.inflation
    cov = cov + np.eye(len(names)) * settings.drift_sd_per_day**2 * max(days, 0.0)
    if floor_sd is not None:
        sd = np.sqrt(np.diag(cov))
        scale = np.maximum(1.0, np.asarray(floor_sd) / sd)
        cov = cov * np.outer(scale, scale)
    cov = 0.5 * (cov + cov.T) + np.eye(len(names)) * 1e-12
    return JointPrior(tuple(names), tuple(transforms[n] for n in names), mean, cov, settings.student_t_nu, note)


def posterior_to_prior(result: CalibrationResult, base: PriorSet, settings: UpdateSettings | None = None,
                       days: float = 0.0) -> PriorSet:
    """The next window's prior set: the base set's marginals plus a joint prior from this posterior.

    Parameters
    ----------
    result : CalibrationResult
        The window's fit (its posterior holds ``<model>_<parameter>`` for every carried parameter).
    base : PriorSet
        The default (reviewed) prior set: marginals of per-expiry and noise parameters, transforms,
        and the floor.
    settings : UpdateSettings, optional
    days : float
        Days until the next window (random-walk drift).

    Returns
    -------
    PriorSet
        Serialisable with :meth:`PriorSet.to_dict` (same TOML format as ``priors/``, plus ``[joint]``).
    """
    settings = settings or UpdateSettings()
    spec = result.spec
    model_key = result.idata.attrs["model"]
    names = carried_parameters(model_key, spec.get("model_settings"))
    posterior = result.posterior
    draws = {n: posterior[f"{model_key}_{n}"].to_numpy().ravel() for n in names}
    transforms = {n: unconstrained_transform(base.priors[n]) for n in names}
    floor = settings.floor_fraction * base_unconstrained_sd(base, names)
    note = (f"posterior of {result.idata.attrs.get('data_source', '?')} at {result.idata.attrs.get('valuation_time')}"
            f"; inflation {settings.inflation}, drift {settings.drift_sd_per_day}/sqrt(day) over {days:.3g} days")
    joint = joint_from_draws(draws, transforms, settings, days, floor, note)
    return replace(base, name=f"{base.name}+posterior", joint=joint)


def inflate_prior(prior: PriorSet, settings: UpdateSettings, days: float) -> PriorSet:
    """Carry a prior forward unchanged in mean, with the inflation and drift of one more step."""
    if prior.joint is None:
        return prior
    j = prior.joint
    cov = j.cov * settings.inflation + np.eye(len(j.variables)) * settings.drift_sd_per_day**2 * max(days, 0.0)
    return replace(prior, joint=replace(j, cov=cov, note=j.note + "; carried forward (failed window)"))


def conflict_check(result: CalibrationResult, prior: PriorSet, quantile: float) -> dict[str, Any]:
    """Mahalanobis shift of the posterior mean from the joint prior (chi-square tail probability).

    Returns
    -------
    dict
        ``d2``, ``dof``, ``tail_probability`` and ``flagged`` (tail probability < 1 - quantile);
        ``flagged`` is False when the prior has no joint part.
    """
    if prior.joint is None:
        return {"d2": float("nan"), "dof": 0, "tail_probability": float("nan"), "flagged": False}
    j = prior.joint
    model_key = result.idata.attrs["model"]
    m = np.array([
        to_unconstrained(result.posterior[f"{model_key}_{n}"].to_numpy().ravel(), t).mean()
        for n, t in zip(j.variables, j.transforms, strict=True)
    ])
    diff = m - j.mean
    d2 = float(diff @ np.linalg.solve(j.cov, diff))
    tail = float(stats.chi2.sf(d2, len(diff)))
    return {"d2": d2, "dof": len(diff), "tail_probability": tail, "flagged": tail < 1 - quantile}


#: Shortest expiry (years) in the level-shift check: short-dated ATM vols jump over weekends and events.
LEVEL_MIN_TAU = 30 / 365


def atm_term_structure(quotes: xr.Dataset) -> dict[str, list[float]]:
    """Market ATM implied vol per expiry of a window's used quotes (JSON-ready).

    Parameters
    ----------
    quotes : xarray.Dataset
        Filtered quotes with their statuses (``CalibrationResult.quotes``); the ``OK`` ones are used.

    Returns
    -------
    dict
        ``tau`` (years, increasing) and ``atm_iv`` (decimal,
        :func:`bayescal.pricing_models.market_atm_iv`), lists of equal length.
    """
    used = used_quotes(quotes)
    return {"tau": [float(t) for t in expiry_tau(used)], "atm_iv": [float(v) for v in market_atm_iv(used)]}


def level_shift(previous: dict[str, list[float]], current: dict[str, list[float]], days: float,
                threshold: float) -> dict[str, Any]:
    """Mean log change of the market ATM vol at constant maturity between two windows.

    The previous window's ATM total variance ``iv**2 tau`` is interpolated linearly in ``tau`` to each
    current expiry of at least :data:`LEVEL_MIN_TAU` inside its maturity range (no extrapolation);
    the statistic is the mean over those expiries of ``ln(iv_now / iv_before)``.

    Parameters
    ----------
    previous, current : dict
        :func:`atm_term_structure` of the two windows.
    days : float
        Days between the windows.
    threshold : float
        ``level_shift_max``: flagged when ``|shift| > threshold * sqrt(max(days, 1))``; 0 = never.

    Returns
    -------
    dict
        ``shift`` (NaN when no expiry qualifies), ``n_expiries`` and ``flagged``.
    """
    t_prev, iv_prev = np.asarray(previous["tau"]), np.asarray(previous["atm_iv"])
    t_now, iv_now = np.asarray(current["tau"]), np.asarray(current["atm_iv"])
    keep = (t_now >= LEVEL_MIN_TAU) & (t_now >= t_prev[0]) & (t_now <= t_prev[-1])
    if not keep.any():
        return {"shift": float("nan"), "n_expiries": 0, "flagged": False}
    w_before = np.interp(t_now[keep], t_prev, iv_prev**2 * t_prev)
    shift = float(np.mean(np.log(iv_now[keep] / np.sqrt(w_before / t_now[keep]))))
    flagged = threshold > 0 and abs(shift) > threshold * np.sqrt(max(days, 1.0))
    return {"shift": shift, "n_expiries": int(keep.sum()), "flagged": bool(flagged)}


# --- tracking over windows ---------------------------------------------------------------------------

def _prior_from_dict(raw: dict[str, Any], base: PriorSet) -> PriorSet:
    joint = JointPrior.from_dict(raw["joint"]) if raw.get("joint") else None
    return replace(base, name=raw.get("name", base.name), joint=joint)


def _days_between(earlier: str, later: str) -> float:
    """Days from one ISO valuation time to another (to the second; time zone suffixes ignored)."""
    return float((np.datetime64(later[:19]) - np.datetime64(earlier[:19])) / np.timedelta64(1, "D"))


def _warm_start_values(posterior: xr.Dataset) -> dict[str, Any]:
    """Posterior means of the scalar and per-expiry variables (``{expiry label: mean}``), JSON-ready;
    :func:`bayescal.inference.fit` keeps those that are free variables of the next window's model."""
    out: dict[str, Any] = {}
    for name, values in posterior.data_vars.items():
        if values.dims == ("chain", "draw"):
            out[name] = float(values.mean())
        elif values.dims == ("chain", "draw", EXPIRY_DIM):
            means = values.mean(("chain", "draw"))
            out[name] = {str(label): float(v) for label, v in zip(means[EXPIRY_DIM].to_numpy(), means.to_numpy(),
                                                                  strict=True)}
    return out


def run_track(files: list[Path | xr.Dataset], spec, out_dir: str | Path, *, underlying: str | None = None,
              settings: UpdateSettings | None = None, progressbar: bool = False,
              log=print, arbitrage_check: bool = True) -> xr.DataTree:
    """Fit each window in turn, passing posteriors on as priors; resumable.

    Parameters
    ----------
    files : list of Path or xarray.Dataset
        Chain files, one per window (sorted here by valuation time), or canonical quote Datasets
        (simulated windows; identified in the state by ``source@valuation_time``).
    spec : CalibrationSpec
        Spec of every window; its prior set is the base prior.
    out_dir : str or Path
        Holds ``track_state.json`` (written atomically after every window), ``window_NN.nc`` per
        window and ``track.nc`` (the summary DataTree).
    underlying : str, optional
    settings : UpdateSettings, optional
    progressbar : bool
    log : callable
        Receives one line per window.
    arbitrage_check : bool
        Passed to :func:`bayescal.inference.fit` (off in coverage studies).

    Returns
    -------
    xarray.DataTree
        Root dataset over dimension ``window``: ``valuation_time``, per carried parameter
        ``<name>_mean, _sd, _q03, _q25, _q75, _q97``, ``status``, ``conflict`` (either check flagged
        and the window was refitted on the base prior), ``conflict_d2``, ``level_shift`` (NaN in the
        first window), ``level_flagged``, ``prior_used``, ``fit_seconds``, ``warm_start``.

    Raises
    ------
    CalibrationError
        If no file is given, or the state in ``out_dir`` belongs to another file list or spec.
    """
    from bayescal.inference import fit
    from bayescal.market import read_chain

    settings = settings or UpdateSettings()
    if not files:
        raise CalibrationError("track: no chain files given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = carried_parameters(spec.model, spec.model_settings)
    base = spec.prior_set
    quotes_by_file = {}
    for item in files:
        if isinstance(item, xr.Dataset):
            quotes_by_file[f"{item.attrs.get('source', 'quotes')}@{item.attrs['valuation_time']}"] = item
        else:
            quotes_by_file[str(item)] = read_chain(item, underlying=underlying)
    order = sorted(quotes_by_file, key=lambda p: quotes_by_file[p].attrs["valuation_time"])
    state_path = out / STATE_FILE
    identity = {"files": order, "spec_id": spec.spec_id, "settings": asdict(settings)}
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state["identity"] != identity:
            raise CalibrationError(f"{state_path} belongs to another track (files, spec or settings differ); "
                                   "use a new output folder")
        log(f"track: resuming, {len(state['windows'])} of {len(order)} windows already done")
    else:
        state = {"identity": identity, "windows": [], "next_prior": base.to_dict()}
    for i, path in enumerate(order):
        if i < len(state["windows"]):
            continue
        quotes = quotes_by_file[path]
        prior = _prior_from_dict(state["next_prior"], base)
        warm = settings.warm_tune > 0 and prior.joint is not None and spec.fit.method == "nuts"
        window_spec = replace(spec, prior_set=prior)
        if warm:
            window_spec = window_spec.with_fit(tune=min(spec.fit.tune, settings.warm_tune))
        t0 = time.perf_counter()
        initvals = state.get("next_initvals") if warm else None
        result = fit(window_spec, quotes, progressbar=progressbar, initvals=initvals, arbitrage_check=arbitrage_check)
        conflict = conflict_check(result, prior, settings.conflict_quantile)
        atm = atm_term_structure(result.quotes)
        level = {"shift": float("nan"), "flagged": False}
        if state["windows"]:  # a state written without level_shift_max is refused above, so "atm" is there
            before = state["windows"][-1]
            days_since = _days_between(before["valuation_time"], quotes.attrs["valuation_time"])
            level = level_shift(before["atm"], atm, days_since, settings.level_shift_max)
        prior_used = "joint (previous posterior)" if prior.joint is not None else "base"
        flagged = conflict["flagged"] or (level["flagged"] and prior.joint is not None)
        if flagged:
            result = fit(spec, quotes, progressbar=progressbar, arbitrage_check=arbitrage_check)
            prior_used = "base (conflict fallback)" if conflict["flagged"] else "base (level-shift fallback)"
            warm = False
        seconds = time.perf_counter() - t0
        status = result.convergence["status"]
        if i + 1 < len(order):
            days = _days_between(quotes.attrs["valuation_time"], quotes_by_file[order[i + 1]].attrs["valuation_time"])
        else:
            days = 0.0
        if status == "fail":
            next_prior = inflate_prior(prior, settings, days)
        else:
            next_prior = posterior_to_prior(result, base, settings, days)
        window_file = out / f"window_{i:02d}.nc"
        result.save(window_file)
        post = result.posterior
        summary = {}
        for n in names:
            values = post[f"{spec.model}_{n}"].to_numpy().ravel()
            q = np.quantile(values, [0.03, 0.25, 0.75, 0.97])
            summary[n] = {"mean": float(values.mean()), "sd": float(values.std()), "q03": float(q[0]),
                          "q25": float(q[1]), "q75": float(q[2]), "q97": float(q[3])}
        state["windows"].append({
            "file": path, "valuation_time": quotes.attrs["valuation_time"], "status": status,
            "conflict": bool(flagged), "conflict_d2": conflict["d2"], "level_shift": level["shift"],
            "level_flagged": bool(level["flagged"]), "prior_used": prior_used, "fit_seconds": seconds,
            "warm_start": warm, "result": window_file.name, "summary": summary, "atm": atm,
        })
        state["next_prior"] = next_prior.to_dict()
        state["next_initvals"] = {} if status == "fail" else _warm_start_values(post)
        write_text_atomic(state_path, json.dumps(state, indent=1))
        flag = f", d2 {conflict['d2']:.1f}, ATM level shift {level['shift']:+.3f}"
        if flagged:
            flag = ", CONFLICT" + flag
        log(f"track: window {i + 1}/{len(order)} {quotes.attrs['valuation_time']}: {status}, prior {prior_used}"
            f"{flag}, {'warm' if warm else 'cold'} start, {seconds:.1f} s")
    tree = track_tree(state, names)
    with atomic_path(out / TRACK_FILE) as tmp:
        tree.to_netcdf(tmp, engine="h5netcdf")
    return tree


def track_tree(state: dict[str, Any], names: list[str]) -> xr.DataTree:
    """The track summary (dimension ``window``) from a state dictionary."""
    windows = state["windows"]
    data: dict[str, Any] = {
        "valuation_time": ("window", np.array([w["valuation_time"][:19] for w in windows], dtype="datetime64[s]")),
        "status": ("window", np.array([w["status"] for w in windows])),
        "conflict": ("window", np.array([w["conflict"] for w in windows])),
        "conflict_d2": ("window", np.array([w["conflict_d2"] for w in windows], float)),
        "level_shift": ("window", np.array([w["level_shift"] for w in windows], float)),
        "level_flagged": ("window", np.array([w["level_flagged"] for w in windows], bool)),
        "prior_used": ("window", np.array([w["prior_used"] for w in windows])),
        "fit_seconds": ("window", np.array([w["fit_seconds"] for w in windows], float)),
        "warm_start": ("window", np.array([w.get("warm_start", False) for w in windows], bool)),
        "file": ("window", np.array([w["file"] for w in windows])),
    }
    for n in names:
        for stat in ("mean", "sd", "q03", "q25", "q75", "q97"):
            data[f"{n}_{stat}"] = ("window", np.array([w["summary"][n][stat] for w in windows], float))
    ds = xr.Dataset(data, coords={"window": np.arange(len(windows))},
                    attrs={"parameters": json.dumps(names), "spec_id": state["identity"]["spec_id"]})
    return xr.DataTree(ds)
