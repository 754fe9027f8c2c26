"""Static-arbitrage checks of posterior surfaces: the share of draws free of butterfly and calendar arbitrage.

For each posterior draw the model's total implied variance ``w(k) = iv(k)**2 tau`` is evaluated, for
every expiry, on a log-moneyness grid spanning that expiry's quoted strikes (outside them the market
says nothing, and far out of the money a short expiry's prices underflow).

A slice is free of butterfly arbitrage when the density function
``g(k) = (1 - k w'/(2w))**2 - (w'**2/4)(1/w + 1/4) + w''/2`` is non-negative (Gatheral & Jacquier
2014, eq. 2.1). How ``g`` is evaluated depends on the model's output:

* IV-output models (closed-form ``w``): second-order finite differences of ``w`` on a
  :data:`IV_MODEL_GRID`-point grid (:func:`butterfly_g_numeric`).
* Price-output models (Fourier or series prices, ``w`` by numerical inversion): from the model's
  risk-neutral density of ``k``, ``p(k) = exp(-k) (c'' - c')`` for the normalised price
  ``c = C/(D F)`` (Breeden & Litzenberger 1978, ``d2C/dK2 = D q(K)``, written in ``k``), and
  ``g = p sqrt(w) / phi(d2)``, ``d2 = -k/sqrt(w) - sqrt(w)/2`` (GJ2014 section 2.2:
  ``p(k) = g(k) / sqrt(2 pi w) exp(-d2**2/2)``), with ``c'`` and ``c''`` the kernel graph's own
  derivatives (:func:`slope_and_g_from_prices`). Finite differences of inverted prices would amplify
  the quadrature's round-off by the inverse squared grid step; pointwise ``g`` needs no fine grid,
  so :data:`PRICE_MODEL_GRID` points (each an accurate Fourier price) suffice.

The surface is free of calendar arbitrage when ``w`` is non-decreasing in tau at every fixed k
(GJ2014, Lemma 2.1), checked on the later expiry's grid where both expiries are quoted, the earlier
slice interpolated by cubic Hermite interpolation with its slope ``w'`` (tolerance relative to
``w``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.interpolate import CubicHermiteSpline
from scipy.special import ndtr

from bayescal.market.implied_vol import implied_vol_black76
from bayescal.pricing_models import PricingModel

#: tolerance on g and on calendar differences (finite-difference and round-off noise)
TOLERANCE = 1e-9
#: relative tolerance on calendar differences (interpolation of the earlier slice)
CALENDAR_RTOL = 1e-6
#: grid points per expiry for IV-output models (finite differences need a fine grid)
IV_MODEL_GRID = 201
#: grid points per expiry for price-output models (pointwise density; each point costs a Fourier price)
PRICE_MODEL_GRID = 51


def butterfly_g_numeric(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """g(k) of slices ``w`` (shape (..., n_k)) on the grid ``k`` by finite differences (GJ2014 eq. 2.1).

    Second-order differences everywhere, the grid ends included: first-order one-sided ones at the
    ends flagged arbitrage-free surfaces as arbitrage (a Merton slice with rare large jumps, 2.6 days,
    g = -0.04 at the grid's left end where the exact g is +0.03).
    """
    dw = np.gradient(w, k, axis=-1, edge_order=2)
    d2w = np.gradient(dw, k, axis=-1, edge_order=2)
    return (1 - k * dw / (2 * w)) ** 2 - dw**2 / 4 * (1 / w + 0.25) + d2w / 2


def slope_and_g_from_prices(k: np.ndarray, w: np.ndarray, cp: np.ndarray, c_k: np.ndarray,
                            c_kk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope ``w'(k)`` and density function ``g(k)`` of a slice from its prices' k-derivatives.

    With ``B(k, w)`` the normalised Black-76 price (call ``N(d1) - e^k N(d2)``, put ``e^k N(-d2) - N(-d1)``),
    ``d_B/d_w = e^k phi(d2) / (2 sqrt(w))`` and ``d_B/d_k = -e^k N(d2)`` (call) or ``e^k N(-d2)`` (put)
    at fixed ``w``, so ``w' = (c' - dB/dk) / (dB/dw)``; ``g = exp(-k) (c'' - c') sqrt(w) / phi(d2)``
    (module docstring; GJ2014 section 2.2). Put-call parity shifts ``c'`` and ``c''`` by the same
    ``e^k``, so ``c'' - c'`` is the same for either side.

    Parameters
    ----------
    k : numpy.ndarray, shape (n_k,)
        Log-moneyness grid.
    w : numpy.ndarray, shape (n_draws, n_k)
        Total implied variance of the prices.
    cp : numpy.ndarray, shape (n_k,)
        +1 where ``c`` is a call, -1 where a put.
    c_k, c_kk : numpy.ndarray, shape (n_draws, n_k)
        First and second derivatives of the normalised price with respect to ``k``.

    Returns
    -------
    (dw_dk, g) : tuple of numpy.ndarray, shape (n_draws, n_k)
        NaN where ``w`` is not positive and finite.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sw = np.sqrt(np.where(w > 0, w, np.nan))
        d2 = -k / sw - sw / 2
        pdf = np.exp(-0.5 * d2**2) / np.sqrt(2 * np.pi)
        b_k = np.where(cp > 0, -np.exp(k) * ndtr(d2), np.exp(k) * ndtr(-d2))
        dw_dk = (c_k - b_k) / (np.exp(k) * pdf / (2 * sw))
        g = np.exp(-k) * (c_kk - c_k) * sw / pdf
    return dw_dk, g


#: Evenly thinned posterior draws checked for price-output models (Heston, Bates, Merton). Their
#: surfaces are arbitrage-free by construction, so the check guards the numerics; each draw costs
#: n_grid x n_expiry prices of the accurate per-quote kernel (250 draws x 10 expiries x 51 points:
#: about 2 s of a Heston fit on the BTC snapshot).
PRICE_MODEL_DRAWS = 250


def _slice(pricing: PricingModel, posterior: xr.Dataset, expiry: int, k: np.ndarray,
           tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w, w', g)`` of the draws' slice on grid ``k``, each (n_draws, n_k) (module docstring)."""
    if pricing.output == "iv":
        w = pricing.implied_vol_on_grid(posterior, expiry, k, tau) ** 2 * tau
        with np.errstate(invalid="ignore", divide="ignore"):
            return w, np.gradient(w, k, axis=-1, edge_order=2), butterfly_g_numeric(k, np.where(w > 0, w, np.nan))
    c, c_k, c_kk = pricing.norm_price_on_grid(posterior, expiry, k, tau, max_draws=PRICE_MODEL_DRAWS)
    cp = np.where(k >= 0, 1.0, -1.0)
    iv, _ = implied_vol_black76(c, 1.0, np.exp(k)[None, :], tau, cp[None, :])
    w = iv**2 * tau
    return w, *slope_and_g_from_prices(k, w, cp, c_k, c_kk)


def arbitrage_free_share(pricing: PricingModel, posterior: xr.Dataset, constant_data: xr.Dataset,
                         n_grid: int | None = None) -> dict[str, float]:
    """Shares of posterior draws whose surface is free of butterfly, calendar and both arbitrages.

    Parameters
    ----------
    pricing : PricingModel
        The fitted model (with its settings).
    posterior : xarray.Dataset
        Posterior draws (chain, draw, ...).
    constant_data : xarray.Dataset
        The fit's constant data (``k`` and ``expiry_idx`` of the used quotes, ``tau_expiry``).
    n_grid : int, optional
        Grid points per expiry, spanning that expiry's quoted log-moneyness range; default
        :data:`IV_MODEL_GRID` or :data:`PRICE_MODEL_GRID` by the model's output.

    Returns
    -------
    dict
        ``butterfly_free_share``, ``calendar_free_share`` (1.0 with a single expiry),
        ``arbitrage_free_share`` (both), and ``n_draws_checked``. Draws whose model has no implied
        vol somewhere on the grid count as not arbitrage-free. IV-output models check every draw,
        price-output models :data:`PRICE_MODEL_DRAWS` evenly thinned ones.
    """
    if n_grid is None:
        n_grid = IV_MODEL_GRID if pricing.output == "iv" else PRICE_MODEL_GRID
    k_quotes = constant_data["k"].to_numpy()
    idx = constant_data["expiry_idx"].to_numpy()
    taus = constant_data["tau_expiry"].to_numpy()
    grids = [np.linspace(k_quotes[idx == e].min(), k_quotes[idx == e].max(), n_grid) for e in range(taus.size)]
    slices = [_slice(pricing, posterior, e, k, tau) for e, (k, tau) in enumerate(zip(grids, taus, strict=True))]
    finite = np.all([np.all(np.isfinite(w) & (w > 0) & np.isfinite(dw), axis=1) for w, dw, _ in slices], axis=0)
    butterfly = finite.copy()
    for _, _, g in slices:
        butterfly &= np.all(np.nan_to_num(g, nan=-1.0) >= -TOLERANCE, axis=1)
    calendar = finite.copy()
    for e in range(1, taus.size):
        k = grids[e]
        both = (k >= grids[e - 1][0]) & (k <= grids[e - 1][-1])
        if not both.any() or grids[e - 1][-1] <= grids[e - 1][0]:  # no overlap, or a one-strike expiry
            continue
        w_prev, dw_prev, _ = slices[e - 1]
        rows = np.flatnonzero(finite)
        earlier = np.full((finite.size, int(both.sum())), np.inf)
        if rows.size:
            earlier[rows] = CubicHermiteSpline(grids[e - 1], w_prev[rows], dw_prev[rows], axis=1)(k[both])
        later = np.nan_to_num(slices[e][0][:, both], nan=0.0)
        calendar &= np.all(later - earlier >= -(TOLERANCE + CALENDAR_RTOL * np.abs(earlier)), axis=1)
    return {
        "butterfly_free_share": float(butterfly.mean()),
        "calendar_free_share": float(calendar.mean()),
        "arbitrage_free_share": float((butterfly & calendar).mean()),
        "n_draws_checked": int(butterfly.size),
    }
