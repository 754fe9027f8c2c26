"""Run outputs: ArviZ summary table, smile and diagnostic figures, and self-contained HTML reports.

Plot data are computed first (:func:`smile_bands`, :func:`diagnostic_data`, :func:`track_report_data`:
numbers that tests can check), then drawn with matplotlib (Agg backend, never ``show()``); the MCMC
diagnostics (trace, rank, pair) are drawn by arviz-plots with its matplotlib backend. Reports embed
every figure as a base64 PNG, load nothing from elsewhere (a content-security policy forbids it) and
open offline; a small inline script records page errors and image loading on ``<body>`` so that a
headless browser can check the rendered page.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from jinja2 import Environment, PackageLoader, Undefined, select_autoescape  # noqa: E402

from bayescal.atomic import write_bytes_atomic  # noqa: E402
from bayescal.conventions import EXPIRY_DIM, QUOTE_DIM  # noqa: E402
from bayescal.diagnostics import model_iv_mean  # noqa: E402
from bayescal.greeks import atm_greeks_table  # noqa: E402
from bayescal.market.filters import filter_report, status_counts  # noqa: E402
from bayescal.pricing_models import get_pricing_model  # noqa: E402
from bayescal.results import CalibrationResult  # noqa: E402

BAND_PROB = 0.94


def summary_table(result: CalibrationResult) -> pd.DataFrame:
    """ArviZ summary (mean, sd, 94% HDI, MCSE, R-hat, bulk/tail ESS) of every scalar parameter.

    Covers the raw SVI parameters (deterministics) as well as the sampled ones and ``sigma_obs``;
    ``iv_model`` (one value per quote) is left out.
    """
    names = [v for v in result.posterior.data_vars if v != "iv_model"]
    return az.summary(result.idata, var_names=names, ci_prob=BAND_PROB, ci_kind="hdi")


def smile_bands(result: CalibrationResult, n_grid: int = 101) -> list[dict[str, Any]]:
    """Posterior smile per expiry on a log-moneyness grid, with the quotes used.

    Returns
    -------
    list of dict, one per expiry
        ``expiry`` (label), ``tau``, ``forward``, ``k_grid`` (n_grid,), ``iv_mean``, ``iv_lo``,
        ``iv_hi`` (94% equal-tailed band of the model IV), and the used quotes' ``k``, ``bid_iv``,
        ``ask_iv``, ``mid_iv``, ``iv_model_mean``.
    """
    pricing = get_pricing_model(result.idata.attrs["model"])
    const = result.idata["constant_data"].to_dataset()
    observed = result.idata["observed_data"]["iv_obs"].to_numpy()
    posterior = result.posterior
    model_mean, _ = model_iv_mean(result.idata)  # exact inversion for price models, as fit_quality
    idx = const["expiry_idx"].to_numpy()
    out = []
    for e, label in enumerate(posterior[EXPIRY_DIM].to_numpy()):
        sel = idx == e
        k = const["k"].to_numpy()[sel]
        tau = float(const["tau_expiry"].to_numpy()[e])
        pad = 0.15 * max(k.max() - k.min(), 0.05)
        grid = np.linspace(k.min() - pad, k.max() + pad, n_grid)
        iv = pricing.implied_vol_on_grid(posterior, e, grid, tau).reshape(-1, n_grid)
        lo, hi = np.quantile(iv, [(1 - BAND_PROB) / 2, (1 + BAND_PROB) / 2], axis=0)
        out.append(
            {
                "expiry": str(label), "tau": tau, "forward": float(const["forward"].to_numpy()[sel][0]),
                "k_grid": grid, "iv_mean": iv.mean(axis=0), "iv_lo": lo, "iv_hi": hi,
                "k": k, "bid_iv": const["bid_iv"].to_numpy()[sel], "ask_iv": const["ask_iv"].to_numpy()[sel],
                "mid_iv": observed[sel], "iv_model_mean": model_mean[sel],
            }
        )
    return out


def plot_smile(band: dict[str, Any], approximate: bool = False, kind: str = "posterior") -> plt.Figure:
    """Draw one expiry: bid/ask IV marks, mid IV, the model's centre smile and its 94% band.

    ``kind`` is ``"posterior"`` (centre = posterior mean) or ``"prior"`` (centre = prior median).
    """
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=110)
    ax.fill_between(band["k_grid"], 100 * band["iv_lo"], 100 * band["iv_hi"], color="C0", alpha=0.25,
                    label=f"{BAND_PROB:.0%} {kind} band")
    centre = "posterior-mean smile" if kind == "posterior" else "prior median smile"
    ax.plot(band["k_grid"], 100 * band["iv_mean"], color="C0", lw=1.8, label=centre)
    ax.vlines(band["k"], 100 * band["bid_iv"], 100 * band["ask_iv"], color="0.35", lw=1.2, label="bid-ask IV")
    ax.plot(band["k"], 100 * band["mid_iv"], "o", ms=3, color="C3", label="mid IV")
    ax.set_xlabel("log-moneyness k = ln(K/F)")
    ax.set_ylabel("implied vol (%)")
    title = f"expiry {band['expiry']} UTC   tau={band['tau']:.4f}y   F={band['forward']:,.0f}"
    ax.set_title(title + ("   [APPROXIMATE FIT]" if approximate else ""), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _png(fig: plt.Figure, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


# --- MCMC diagnostics: which parameters, the data to draw, the drawing --------------------------------

#: target time to expiry (days) of the expiry shown in the diagnostic plots of per-expiry models
DIAGNOSTIC_EXPIRY_DAYS = 30.0
#: at most this many draws are scattered in the pair plot (evenly thinned per chain)
PAIR_MAX_DRAWS = 2000
#: at most this many parameters in the pair plot: the model's (first ones), then the noise floor if room
PAIR_MAX_VARS = 8


def key_parameters(result: CalibrationResult, target_days: float = DIAGNOSTIC_EXPIRY_DAYS) -> dict[str, Any]:
    """The sampled parameters the diagnostic plots show, and the expiry they are shown at.

    Parameters
    ----------
    result : CalibrationResult
    target_days : float
        For models with per-expiry parameters, the expiry whose time to expiry is nearest to this
        many days is shown (``None`` expiry otherwise).

    Returns
    -------
    dict
        ``var_names`` (the model's sampled parameters ``<model>_<name>`` then the likelihood's noise
        parameters, as stored in the posterior), ``pair_var_names`` (the model's parameters then
        the first noise parameter, at most :data:`PAIR_MAX_VARS`), ``expiry`` (label or ``None``),
        ``expiry_index`` (int or ``None``), ``expiry_days`` (float or ``None``) and ``coords``
        (``{"expiry": label}`` or empty).
    """
    from bayescal.likelihoods import LIKELIHOODS, IVLikelihood

    spec = result.spec
    pricing = get_pricing_model(result.idata.attrs["model"], **(spec.get("model_settings") or {}))
    posterior = result.posterior
    model_vars = [pricing.name(p) for p in pricing.parameters if pricing.name(p) in posterior]
    kind = (spec.get("likelihood") or {}).get("kind", IVLikelihood.lookup_name)
    noise = LIKELIHOODS.get(kind, IVLikelihood).noise_parameters
    noise_vars = [n for n in noise if n in posterior]
    var_names = model_vars + noise_vars
    per_expiry = any(EXPIRY_DIM in posterior[v].dims for v in var_names)
    out: dict[str, Any] = {"var_names": var_names, "expiry": None, "expiry_index": None, "expiry_days": None,
                           "coords": {}}
    if per_expiry:
        days = 365.0 * result.idata["constant_data"]["tau_expiry"].to_numpy()
        e = int(np.argmin(np.abs(days - target_days)))
        label = str(posterior[EXPIRY_DIM].to_numpy()[e])
        out.update(expiry=label, expiry_index=e, expiry_days=float(days[e]), coords={EXPIRY_DIM: label})
    out["pair_var_names"] = (model_vars + noise_vars[:1])[:PAIR_MAX_VARS]
    return out


def diagnostic_data(result: CalibrationResult, target_days: float = DIAGNOSTIC_EXPIRY_DAYS) -> xr.DataTree:
    """The draws the trace, rank and pair plots show (plot data, no drawing).

    Returns
    -------
    xarray.DataTree
        ``posterior`` with the :func:`key_parameters` variables at the chosen expiry (no ``expiry``
        dimension left), ``sample_stats`` with ``diverging`` when the fit has it (NUTS), and root
        attrs ``var_names``, ``pair_var_names`` (JSON lists), ``expiry`` (label or ``""``),
        ``expiry_days``, ``fit_method``, ``approximate`` (0/1), ``chains`` and ``draws``.
    """
    keys = key_parameters(result, target_days)
    posterior = result.posterior[keys["var_names"]]
    if keys["coords"]:
        posterior = posterior.sel(keys["coords"]).drop_vars(EXPIRY_DIM, errors="ignore")
    groups: dict[str, xr.Dataset] = {"posterior": posterior}
    if "sample_stats" in result.idata.children and "diverging" in result.idata["sample_stats"]:
        groups["sample_stats"] = result.idata["sample_stats"].to_dataset()[["diverging"]]
    tree = xr.DataTree.from_dict(groups)
    attrs = result.idata.attrs
    tree.attrs.update({
        "var_names": json.dumps(keys["var_names"]), "pair_var_names": json.dumps(keys["pair_var_names"]),
        "expiry": keys["expiry"] or "", "expiry_days": float("nan") if keys["expiry_days"] is None
        else keys["expiry_days"], "fit_method": attrs.get("fit_method", ""),
        "approximate": int(attrs.get("approximate", 0)), "chains": int(posterior.sizes["chain"]),
        "draws": int(posterior.sizes["draw"]),
    })
    return tree


def _thinned(data: xr.DataTree, max_draws: int) -> xr.DataTree:
    """Every group thinned evenly along ``draw`` to at most ``max_draws`` draws in total."""
    chains, draws = data.attrs["chains"], data.attrs["draws"]
    if chains * draws <= max_draws:
        return data
    keep = np.unique(np.linspace(0, draws - 1, max(max_draws // chains, 2)).round().astype(int))
    thinned = xr.DataTree.from_dict({name: node.to_dataset().isel(draw=keep) for name, node in data.children.items()})
    thinned.attrs.update(data.attrs)
    return thinned


def _diagnostic_title(data: xr.DataTree, what: str) -> str:
    at = f" at expiry {data.attrs['expiry']} UTC ({data.attrs['expiry_days']:.0f} days)" if data.attrs["expiry"] else ""
    approx = f"   [APPROXIMATE FIT: {data.attrs['fit_method']}]" if data.attrs["approximate"] else ""
    return f"{what}{at}: {data.attrs['chains']} chain(s) x {data.attrs['draws']} draws{approx}"


def _finish(fig: plt.Figure, title: str) -> plt.Figure:
    fig.suptitle(title, fontsize=10)
    fig.set_layout_engine("constrained")
    return fig


def plot_trace_dist(data: xr.DataTree) -> plt.Figure:
    """ArviZ trace plot (marginal density per chain and the trace) of :func:`diagnostic_data`."""
    names = json.loads(data.attrs["var_names"])
    pc = az.plot_trace_dist(data, var_names=names, backend="matplotlib",
                            figure_kwargs={"figsize": (10.0, 1.6 * len(names) + 0.8)})
    return _finish(pc.get_viz("figure"), _diagnostic_title(data, "Trace"))


def plot_rank(data: xr.DataTree) -> plt.Figure:
    """ArviZ rank plot (fractional-rank ECDF difference per chain, with its envelope) of :func:`diagnostic_data`."""
    names = json.loads(data.attrs["var_names"])
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    pc = az.plot_rank(data, var_names=names, backend="matplotlib", col_wrap=cols,
                      figure_kwargs={"figsize": (10.0, 2.3 * rows + 0.6)})
    return _finish(pc.get_viz("figure"), _diagnostic_title(data, "Rank ECDF"))


def plot_pair(data: xr.DataTree, max_draws: int = PAIR_MAX_DRAWS) -> plt.Figure:
    """ArviZ pair plot (scatter, marginals, divergences) of the key parameters of :func:`diagnostic_data`."""
    names = json.loads(data.attrs["pair_var_names"])
    thinned = _thinned(data, max_draws)
    size = 1.7 * len(names) + 0.8
    visuals = {} if "sample_stats" in thinned.children else {"divergence": False}
    with az.rc_context({"plot.max_subplots": max(40, len(names) ** 2)}):  # Bates: 8 parameters, 64 panels
        pm_ = az.plot_pair(thinned, var_names=names, backend="matplotlib", visuals=visuals,
                           figure_kwargs={"figsize": (size, size)})
    return _finish(pm_.get_viz("figure"), _diagnostic_title(thinned, "Pairs"))


def diagnostic_figures(result: CalibrationResult) -> list[dict[str, Any]]:
    """Trace, rank (NUTS fits only: approximate draws are not Markov chains) and pair figures as PNG.

    Returns
    -------
    list of dict
        ``name`` (``trace``, ``rank``, ``pair``), ``title``, ``caption`` and ``png`` (bytes).
    """
    data = diagnostic_data(result)
    where = (f" at the expiry nearest {DIAGNOSTIC_EXPIRY_DAYS:.0f} days ({data.attrs['expiry']} UTC, "
             f"{data.attrs['expiry_days']:.1f} days)" if data.attrs["expiry"] else "")
    figures = []
    if not data.attrs["approximate"]:
        figures.append({"name": "trace", "title": "Trace plot", "png": _png(plot_trace_dist(data)),
                        "caption": f"Sampled parameters{where}: density per chain (left) and the chains' draws "
                                   "(right); chains that disagree or wander show here."})
        figures.append({"name": "rank", "title": "Rank plot", "png": _png(plot_rank(data)),
                        "caption": "Fractional-rank ECDF minus the uniform one, per chain, with a simultaneous "
                                   "envelope: chains that mix well stay inside it (Vehtari et al. 2021)."})
    figures.append({"name": "pair", "title": "Pair plot", "png": _png(plot_pair(data)),
                    "caption": f"Joint posterior of the model's sampled parameters{where} "
                               f"(at most {PAIR_MAX_DRAWS} draws; divergent transitions marked)."})
    return figures


def write_outputs(result: CalibrationResult, out_dir: str | Path, result_name: str = "result.nc") -> dict[str, Path]:
    """Write summary table, quotes with statuses, ATM greeks with 94% intervals (CSV), smile and
    diagnostic figures (PNG) and ``report.html``.

    Every file is written atomically. Returns the paths by kind.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary = summary_table(result)
    paths: dict[str, Path] = {"result": out / result_name, "summary": out / "summary.csv",
                              "quotes": out / "quotes.csv", "greeks": out / "greeks.csv", "report": out / "report.html"}
    write_bytes_atomic(paths["summary"], summary.to_csv().encode())
    greeks = atm_greeks_table(result)
    write_bytes_atomic(paths["greeks"], greeks.to_csv(index=False).encode())
    quotes = result.quotes
    table = quotes[["instrument", "expiry", "strike", "cp", "bid", "ask", "forward", "tau", "k", "bid_iv",
                    "ask_iv", "mid_iv", "status"]].to_dataframe()
    table["status"] = [_status_name(s) for s in table["status"]]
    write_bytes_atomic(paths["quotes"], table.to_csv().encode())
    approximate = bool(result.idata.attrs.get("approximate", 0))
    figures = []
    for i, band in enumerate(smile_bands(result)):
        png = _png(plot_smile(band, approximate))
        write_bytes_atomic(out / "figures" / f"smile_{i:02d}_{band['expiry'][:10]}.png", png)
        figures.append({"expiry": band["expiry"], "png": base64.b64encode(png).decode(),
                        "rmse": float(100 * np.sqrt(np.mean((band["iv_model_mean"] - band["mid_iv"]) ** 2))),
                        "n": len(band["k"])})
    diagnostics = diagnostic_figures(result)
    for fig in diagnostics:
        write_bytes_atomic(out / "figures" / f"{fig['name']}.png", fig["png"])
        fig["png"] = base64.b64encode(fig["png"]).decode()
    paths["figures"] = out / "figures"
    html = render_report(result, summary, figures, greeks, diagnostics)
    write_bytes_atomic(paths["report"], html.encode())
    return paths


def _status_name(code: int) -> str:
    from bayescal.conventions import QuoteStatus

    return QuoteStatus(int(code)).name.lower()


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("bayescal", "templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["num"] = _num
    return env


def _num(value: Any, fmt: str = "%.4g", missing: str = "n/a") -> str:
    """Format a number; NaN and None as ``missing`` (approximate fits have no R-hat)."""
    if value is None or isinstance(value, Undefined):
        return missing
    try:
        x = float(value)
    except (TypeError, ValueError):
        return missing
    return missing if not np.isfinite(x) else fmt % x


def render_report(result: CalibrationResult, summary: pd.DataFrame, figures: list[dict[str, Any]],
                  greeks: pd.DataFrame, diagnostics: list[dict[str, Any]] | None = None) -> str:
    """The self-contained HTML report (figures embedded as base64 PNG; opens offline).

    ``figures`` are the smiles (``expiry``, ``png`` base64 text, ``rmse``, ``n``); ``diagnostics``
    the MCMC figures (``name``, ``title``, ``caption``, ``png`` base64 text), as :func:`write_outputs`
    builds them.
    """
    from bayescal.market.filters import status_table

    attrs = result.idata.attrs
    quotes = result.quotes
    return _environment().get_template("report.html.j2").render(
        attrs=attrs,
        approximate=bool(int(attrs.get("approximate", 0))),
        spec=result.spec,
        versions=json.loads(attrs["versions"]),
        convergence=result.convergence,
        quality=result.fit_quality,
        timings=result.timings,
        filters=filter_report(quotes),
        status_counts=status_counts(quotes),
        status_html=status_table(quotes).to_html(classes="statuses"),
        n_quotes=int(quotes.sizes[QUOTE_DIM]),
        summary_html=summary.to_html(classes="summary", float_format=lambda v: f"{v:.4g}"),
        greeks_html=greeks.to_html(classes="greeks", index=False, float_format=lambda v: f"{v:.5g}"),
        figures=figures,
        diagnostics=diagnostics or [],
        bayescal_version=attrs.get("bayescal_version", ""),
    )


def expiry_table(result: CalibrationResult) -> xr.Dataset:
    """Per-expiry counts of used quotes (for the CLI summary)."""
    const = result.idata["constant_data"].to_dataset()
    idx = const["expiry_idx"].to_numpy()
    labels = result.posterior[EXPIRY_DIM].to_numpy()
    return xr.Dataset({"n_quotes": (EXPIRY_DIM, np.bincount(idx, minlength=len(labels)))}, coords={EXPIRY_DIM: labels})


def write_prior_predictive(spec, used: xr.Dataset, prior: xr.Dataset, out_dir: str | Path) -> list[Path]:
    """One figure per expiry: the quotes' bid/ask IVs against the 94% band of smiles the prior implies.

    Returns the written PNG paths (written atomically).
    """
    pricing = get_pricing_model(spec.model, **spec.model_settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    idx = used["expiry_idx"].to_numpy()
    labels = [str(v) for v in prior[EXPIRY_DIM].to_numpy()]
    written = []
    for e, label in enumerate(labels):
        sel = idx == e
        k = used["k"].to_numpy()[sel]
        tau = float(used["tau"].to_numpy()[sel][0])
        pad = 0.15 * max(k.max() - k.min(), 0.05)
        grid = np.linspace(k.min() - pad, k.max() + pad, 101)
        iv = pricing.implied_vol_on_grid(prior, e, grid, tau).reshape(-1, grid.size)
        lo, hi = np.nanquantile(iv, [(1 - BAND_PROB) / 2, (1 + BAND_PROB) / 2], axis=0)
        band = {"expiry": label, "tau": tau, "forward": float(used["forward"].to_numpy()[sel][0]), "k_grid": grid,
                "iv_mean": np.nanmedian(iv, axis=0), "iv_lo": lo, "iv_hi": hi, "k": k,
                "bid_iv": used["bid_iv"].to_numpy()[sel], "ask_iv": used["ask_iv"].to_numpy()[sel],
                "mid_iv": used["mid_iv"].to_numpy()[sel]}
        fig = plot_smile(band, kind="prior")
        fig.axes[0].set_title(f"PRIOR predictive ({spec.prior_set.name}): " + fig.axes[0].get_title(), fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = out / f"prior_smile_{e:02d}_{label[:10]}.png"
        write_bytes_atomic(path, buf.getvalue())
        written.append(path)
    return written


def plot_track(tree: xr.DataTree) -> plt.Figure:
    """Every carried parameter's posterior mean with 50% and 94% bands over the windows; conflict flags marked."""
    ds = tree.to_dataset()
    names = json.loads(ds.attrs["parameters"])
    fig, axes = plt.subplots(len(names), 1, figsize=(8.0, 2.2 * len(names)), dpi=110, sharex=True, squeeze=False)
    t = ds["valuation_time"].to_numpy()
    for ax, n in zip(axes[:, 0], names, strict=True):
        ax.fill_between(t, ds[f"{n}_q03"], ds[f"{n}_q97"], color="C0", alpha=0.2, label="94%")
        ax.fill_between(t, ds[f"{n}_q25"], ds[f"{n}_q75"], color="C0", alpha=0.4, label="50%")
        ax.plot(t, ds[f"{n}_mean"], "o-", color="C0", ms=3, label="posterior mean")
        flagged = ds["conflict"].to_numpy().astype(bool)
        if flagged.any():
            ax.plot(t[flagged], ds[f"{n}_mean"].to_numpy()[flagged], "s", color="C3", ms=7, mfc="none",
                    label="conflict (refit on base prior)")
        failed = ds["status"].to_numpy() == "fail"
        if failed.any():
            ax.plot(t[failed], ds[f"{n}_mean"].to_numpy()[failed], "x", color="k", label="failed gate")
        ax.set_ylabel(n)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("valuation time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def write_track_figure(tree: xr.DataTree, path: str | Path) -> Path:
    """Write :func:`plot_track` to a PNG atomically."""
    path = Path(path)
    fig = plot_track(tree)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


# --- track (sequential) report -----------------------------------------------------------------------

def _load_track(path: Path) -> xr.DataTree:
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load().copy()


def track_report_data(run_dir: str | Path) -> dict[str, Any]:
    """What a track report shows, read from a ``bayescal track`` folder (plot and table data, no drawing).

    Parameters
    ----------
    run_dir : str or Path
        Folder holding ``track.nc``; ``track_state.json`` (settings) and the ``window_NN.nc``
        results (per-window diagnostics) are used when present.

    Returns
    -------
    dict
        ``tree`` (the track DataTree), ``parameters`` (carried parameter names), ``settings`` (update
        settings, or empty), ``spec_id``, ``n_windows``, ``n_conflicts``, ``n_failed``, ``statuses``
        (count per gate status), ``windows`` (one dict per window: ``index``, ``valuation_time``,
        ``file``, ``status``, ``conflict``, ``conflict_d2``, ``level_shift``, ``prior_used``,
        ``fit_seconds``, ``params`` (name to ``mean``, ``q03``, ``q97``) and, when its result file
        exists, ``result_file``,
        ``max_rhat``, ``min_ess_bulk``, ``divergences``, ``rmse`` (vol points), ``arbitrage_free_share``,
        ``approximate``) and ``latest`` (the last window's :class:`CalibrationResult`, or ``None``).

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` has no ``track.nc``.
    """
    from bayescal.sequential import STATE_FILE, TRACK_FILE

    run = Path(run_dir)
    track_path = run / TRACK_FILE
    if not track_path.is_file():
        raise FileNotFoundError(f"{track_path} does not exist: not a `bayescal track` output folder")
    tree = _load_track(track_path)
    ds = tree.to_dataset()
    state = json.loads((run / STATE_FILE).read_text()) if (run / STATE_FILE).is_file() else {}
    names = json.loads(ds.attrs["parameters"])
    windows = []
    latest = None
    for i in range(ds.sizes["window"]):
        w = ds.isel(window=i)
        row: dict[str, Any] = {
            "index": i, "valuation_time": str(w["valuation_time"].to_numpy())[:19],
            "file": Path(str(w["file"].to_numpy())).name, "status": str(w["status"].to_numpy()),
            "conflict": bool(w["conflict"].to_numpy()), "conflict_d2": float(w["conflict_d2"].to_numpy()),
            "level_shift": float(w["level_shift"].to_numpy()) if "level_shift" in w else float("nan"),
            "prior_used": str(w["prior_used"].to_numpy()), "fit_seconds": float(w["fit_seconds"].to_numpy()),
            "params": {n: {s: float(w[f"{n}_{s}"].to_numpy()) for s in ("mean", "q03", "q97")} for n in names},
        }
        recorded = state.get("windows", [])
        result_name = recorded[i]["result"] if i < len(recorded) else f"window_{i:02d}.nc"
        if (run / result_name).is_file():
            result = CalibrationResult.load(run / result_name)
            conv, quality = result.convergence, result.fit_quality
            row.update(result_file=result_name, max_rhat=conv["max_rhat"], min_ess_bulk=conv["min_ess_bulk"],
                       divergences=conv["divergences"], rmse=quality["rmse_vol_points"],
                       arbitrage_free_share=quality["arbitrage_free_share"],
                       approximate=int(result.idata.attrs.get("approximate", 0)))
            if i == ds.sizes["window"] - 1:
                latest = result
        windows.append(row)
    statuses, counts = np.unique(ds["status"].to_numpy().astype(str), return_counts=True)
    return {
        "tree": tree, "parameters": names, "settings": state.get("identity", {}).get("settings", {}),
        "spec_id": ds.attrs.get("spec_id", ""), "n_windows": int(ds.sizes["window"]),
        "n_conflicts": int(ds["conflict"].to_numpy().astype(bool).sum()),
        "n_failed": int((ds["status"].to_numpy().astype(str) == "fail").sum()),
        "statuses": {str(s): int(n) for s, n in zip(statuses, counts, strict=True)},
        "windows": windows, "latest": latest,
    }


def write_track_report(run_dir: str | Path) -> dict[str, Path]:
    """Write ``track.png`` and a self-contained ``report.html`` for a ``bayescal track`` folder.

    The report shows every carried parameter's posterior mean with 50% and 94% bands over the
    windows (conflict flags and failed gates marked), a table per window (gate status, conflict
    flag, Mahalanobis d2 and ATM level shift, prior used, diagnostics and fit quality of the window's
    result) and the latest window's smiles. Files are written atomically.

    Parameters
    ----------
    run_dir : str or Path
        Folder holding ``track.nc`` (as written by :func:`bayescal.sequential.run_track`).

    Returns
    -------
    dict of str to Path
        ``report`` (the HTML file) and ``figure`` (``track.png``).

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` has no ``track.nc``.
    """
    run = Path(run_dir)
    data = track_report_data(run)
    figure = write_track_figure(data["tree"], run / "track.png")
    smiles = []
    latest = data["latest"]
    if latest is not None:
        approximate = bool(latest.idata.attrs.get("approximate", 0))
        for band in smile_bands(latest):
            smiles.append({"expiry": band["expiry"], "n": len(band["k"]),
                           "png": base64.b64encode(_png(plot_smile(band, approximate))).decode(),
                           "rmse": float(100 * np.sqrt(np.mean((band["iv_model_mean"] - band["mid_iv"]) ** 2)))})
    from bayescal import __version__

    html = _environment().get_template("track_report.html.j2").render(
        data=data, windows=data["windows"], parameters=data["parameters"],
        track_png=base64.b64encode(figure.read_bytes()).decode(), smiles=smiles,
        latest_attrs=latest.idata.attrs if latest is not None else {}, run_dir=str(run.resolve()),
        bayescal_version=__version__,
    )
    report = run / "report.html"
    write_bytes_atomic(report, html.encode())
    return {"report": report, "figure": figure}
