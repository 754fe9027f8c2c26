"""Static-arbitrage checks of posterior surfaces: the share of draws free of butterfly and calendar arbitrage.

For each posterior draw the model's total implied variance ``w(k) = iv(k)**2 tau`` is evaluated on a
common log-moneyness grid for every expiry. A slice is free of butterfly arbitrage when the density
function ``g(k) = (1 - k w'/(2w))**2 - (w'**2/4)(1/w + 1/4) + w''/2`` is non-negative (Gatheral &
Jacquier 2014, eq. 2.1; derivatives by second-order finite differences on the grid); the surface is
free of calendar arbitrage when ``w`` is non-decreasing in tau at every fixed k (GJ2014, Lemma 2.1).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayescal.pricing_models import PricingModel

#: tolerance on g and on calendar differences (finite-difference and round-off noise)
TOLERANCE = 1e-9


def butterfly_g_numeric(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """g(k) of slices ``w`` (shape (..., n_k)) on the grid ``k`` by finite differences (GJ2014 eq. 2.1)."""
    dw = np.gradient(w, k, axis=-1)
    d2w = np.gradient(dw, k, axis=-1)
    return (1 - k * dw / (2 * w)) ** 2 - dw**2 / 4 * (1 / w + 0.25) + d2w / 2


def arbitrage_free_share(pricing: PricingModel, posterior: xr.Dataset, constant_data: xr.Dataset,
                         n_grid: int = 201) -> dict[str, float]:
    """Shares of posterior draws whose surface is free of butterfly, calendar and both arbitrages.

    Parameters
    ----------
    pricing : PricingModel
        The fitted model (with its settings).
    posterior : xarray.Dataset
        Posterior draws (chain, draw, ...).
    constant_data : xarray.Dataset
        The fit's constant data (``k`` of the used quotes, ``tau_expiry``).
    n_grid : int
        Grid points spanning the used quotes' log-moneyness range.

    Returns
    -------
    dict
        ``butterfly_free_share``, ``calendar_free_share`` (1.0 with a single expiry),
        ``arbitrage_free_share`` (both), and ``n_draws_checked``. Draws whose model has no implied
        vol somewhere on the grid count as not arbitrage-free.
    """
    k_quotes = constant_data["k"].to_numpy()
    k = np.linspace(k_quotes.min(), k_quotes.max(), n_grid)
    taus = constant_data["tau_expiry"].to_numpy()
    w = np.stack([pricing.implied_vol_on_grid(posterior, e, k, tau) ** 2 * tau for e, tau in enumerate(taus)])
    finite = np.all(np.isfinite(w) & (w > 0), axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        g = butterfly_g_numeric(k, np.where(w > 0, w, np.nan))
    butterfly = finite & np.all(np.nan_to_num(g, nan=-1.0) >= -TOLERANCE, axis=(0, 2))
    if len(taus) > 1:
        calendar = finite & np.all(np.diff(np.nan_to_num(w, nan=0.0), axis=0) >= -TOLERANCE, axis=(0, 2))
    else:
        calendar = finite
    return {
        "butterfly_free_share": float(butterfly.mean()),
        "calendar_free_share": float(calendar.mean()),
        "arbitrage_free_share": float((butterfly & calendar).mean()),
        "n_draws_checked": int(butterfly.size),
    }
