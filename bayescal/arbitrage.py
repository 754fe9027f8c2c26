"""Static-arbitrage checks of posterior surfaces: the share of draws free of butterfly and calendar arbitrage.

For each posterior draw the model's total implied variance ``w(k) = iv(k)**2 tau`` is evaluated, for
every expiry, on a log-moneyness grid spanning that expiry's quoted strikes (outside them the market
says nothing, and far out of the money a short expiry's prices underflow). A slice is free of
butterfly arbitrage when the density function ``g(k) = (1 - k w'/(2w))**2 - (w'**2/4)(1/w + 1/4) + w''/2``
is non-negative (Gatheral & Jacquier 2014, eq. 2.1; derivatives by second-order finite differences on
the grid); the surface is free of calendar arbitrage when ``w`` is non-decreasing in tau at every
fixed k (GJ2014, Lemma 2.1), checked on the later expiry's grid where both expiries are quoted (the
earlier slice interpolated linearly, tolerance relative to ``w``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayescal.pricing_models import PricingModel

#: tolerance on g and on calendar differences (finite-difference and round-off noise)
TOLERANCE = 1e-9
#: relative tolerance on calendar differences (linear interpolation of the earlier slice)
CALENDAR_RTOL = 1e-6


def butterfly_g_numeric(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """g(k) of slices ``w`` (shape (..., n_k)) on the grid ``k`` by finite differences (GJ2014 eq. 2.1).

    Second-order differences everywhere, the grid ends included: first-order one-sided ones at the
    ends flagged arbitrage-free surfaces as arbitrage (a Merton slice with rare large jumps, 2.6 days,
    g = -0.04 at the grid's left end where the exact g is +0.03).
    """
    dw = np.gradient(w, k, axis=-1, edge_order=2)
    d2w = np.gradient(dw, k, axis=-1, edge_order=2)
    return (1 - k * dw / (2 * w)) ** 2 - dw**2 / 4 * (1 / w + 0.25) + d2w / 2


#: Evenly thinned posterior draws checked for price-output models (Heston, Bates, Merton). Their
#: surfaces are arbitrage-free by construction, so the check guards the numerics; each draw costs
#: n_grid x n_expiry prices of the accurate per-quote kernel (1,000 draws took ~25 s of a Heston fit).
PRICE_MODEL_DRAWS = 250


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
        The fit's constant data (``k`` and ``expiry_idx`` of the used quotes, ``tau_expiry``).
    n_grid : int
        Grid points per expiry, spanning that expiry's quoted log-moneyness range.

    Returns
    -------
    dict
        ``butterfly_free_share``, ``calendar_free_share`` (1.0 with a single expiry),
        ``arbitrage_free_share`` (both), and ``n_draws_checked``. Draws whose model has no implied
        vol somewhere on the grid count as not arbitrage-free. IV-output models check every draw,
        price-output models :data:`PRICE_MODEL_DRAWS` evenly thinned ones.
    """
    k_quotes = constant_data["k"].to_numpy()
    idx = constant_data["expiry_idx"].to_numpy()
    taus = constant_data["tau_expiry"].to_numpy()
    grids = [np.linspace(k_quotes[idx == e].min(), k_quotes[idx == e].max(), n_grid) for e in range(taus.size)]
    w = [pricing.implied_vol_on_grid(posterior, e, k, tau, max_draws=PRICE_MODEL_DRAWS) ** 2 * tau
         for e, (k, tau) in enumerate(zip(grids, taus, strict=True))]
    finite = np.all([np.all(np.isfinite(we) & (we > 0), axis=1) for we in w], axis=0)
    butterfly = finite.copy()
    for k, we in zip(grids, w, strict=True):
        with np.errstate(invalid="ignore", divide="ignore"):
            g = butterfly_g_numeric(k, np.where(we > 0, we, np.nan))
        butterfly &= np.all(np.nan_to_num(g, nan=-1.0) >= -TOLERANCE, axis=1)
    calendar = finite.copy()
    for e in range(1, taus.size):
        k = grids[e]
        both = (k >= grids[e - 1][0]) & (k <= grids[e - 1][-1])
        if not both.any():
            continue
        earlier = np.stack([np.interp(k[both], grids[e - 1], row) for row in np.nan_to_num(w[e - 1], nan=np.inf)])
        later = np.nan_to_num(w[e][:, both], nan=0.0)
        calendar &= np.all(later - earlier >= -(TOLERANCE + CALENDAR_RTOL * np.abs(earlier)), axis=1)
    return {
        "butterfly_free_share": float(butterfly.mean()),
        "calendar_free_share": float(calendar.mean()),
        "arbitrage_free_share": float((butterfly & calendar).mean()),
        "n_draws_checked": int(butterfly.size),
    }
