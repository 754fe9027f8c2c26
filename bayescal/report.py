"""Run outputs: ArviZ summary table, one smile figure per expiry, and a self-contained HTML report.

Plot data are computed first (:func:`smile_bands`, numbers that tests can check), then drawn with
matplotlib (Agg backend, never ``show()``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from bayescal.conventions import EXPIRY_DIM, QUOTE_DIM  # noqa: E402
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
    model_mean = posterior["iv_model"].mean(("chain", "draw")).to_numpy()
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_outputs(result: CalibrationResult, out_dir: str | Path, result_name: str = "result.nc") -> dict[str, Path]:
    """Write summary table, quotes with statuses, ATM greeks with 94% intervals (CSV), smile figures (PNG)
    and ``report.html``.

    Every file is written atomically. Returns the paths by kind.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary = summary_table(result)
    paths: dict[str, Path] = {"result": out / result_name, "summary": out / "summary.csv",
                              "quotes": out / "quotes.csv", "greeks": out / "greeks.csv", "report": out / "report.html"}
    _atomic_write_bytes(paths["summary"], summary.to_csv().encode())
    greeks = atm_greeks_table(result)
    _atomic_write_bytes(paths["greeks"], greeks.to_csv(index=False).encode())
    quotes = result.quotes
    table = quotes[["instrument", "expiry", "strike", "cp", "bid", "ask", "forward", "tau", "k", "bid_iv",
                    "ask_iv", "mid_iv", "status"]].to_dataframe()
    table["status"] = [_status_name(s) for s in table["status"]]
    _atomic_write_bytes(paths["quotes"], table.to_csv().encode())
    approximate = bool(result.idata.attrs.get("approximate", 0))
    figures = []
    for i, band in enumerate(smile_bands(result)):
        fig = plot_smile(band, approximate)
        png = out / "figures" / f"smile_{i:02d}_{band['expiry'][:10]}.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        _atomic_write_bytes(png, buf.getvalue())
        figures.append({"expiry": band["expiry"], "png": base64.b64encode(buf.getvalue()).decode(),
                        "rmse": float(100 * np.sqrt(np.mean((band["iv_model_mean"] - band["mid_iv"]) ** 2))),
                        "n": len(band["k"])})
        plt.close(fig)
    paths["figures"] = out / "figures"
    html = render_report(result, summary, figures, greeks)
    _atomic_write_bytes(paths["report"], html.encode())
    return paths


def _status_name(code: int) -> str:
    from bayescal.conventions import QuoteStatus

    return QuoteStatus(int(code)).name.lower()


def render_report(result: CalibrationResult, summary: pd.DataFrame, figures: list[dict[str, Any]],
                  greeks: pd.DataFrame) -> str:
    """The self-contained HTML report (figures embedded as base64 PNG; opens offline)."""
    env = Environment(loader=PackageLoader("bayescal", "templates"), autoescape=select_autoescape(["html"]))
    attrs = result.idata.attrs
    quotes = result.quotes
    return env.get_template("report.html.j2").render(
        attrs=attrs,
        spec=result.spec,
        versions=json.loads(attrs["versions"]),
        convergence=result.convergence,
        quality=result.fit_quality,
        timings=result.timings,
        filters=filter_report(quotes),
        status_counts=status_counts(quotes),
        n_quotes=int(quotes.sizes[QUOTE_DIM]),
        summary_html=summary.to_html(classes="summary", float_format=lambda v: f"{v:.4g}"),
        greeks_html=greeks.to_html(classes="greeks", index=False, float_format=lambda v: f"{v:.5g}"),
        figures=figures,
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
        _atomic_write_bytes(path, buf.getvalue())
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
    _atomic_write_bytes(path, buf.getvalue())
    return path
