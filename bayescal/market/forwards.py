"""Forwards and discount factors implied by put-call parity, per expiry (for chains without rates).

For European options on one expiry, put-call parity ``C - P = D (F - K)`` is linear in the strike:
``y = a + b K`` with ``y = C_mid - P_mid``, ``b = -D`` and ``a = D F``. Per expiry:

1. *Pairs*: strikes where both the call and the put are two-sided (bid > 0, ask >= bid).
2. *Near the money*: the ``max_pairs`` pairs with the smallest ``|y|`` (``|y| ~ D |F - K|``): these
   have the tightest relative spreads and no early-exercise or liquidity premia of deep
   in-the-money quotes.
3. *Robust fit*: iteratively reweighted least squares with Huber weights (``c = 1.345`` on the
   residuals standardised by the pair's spread ``s = spread_C + spread_P`` and a MAD scale), base
   weights ``1 / s^2``; standard errors from the weighted residual scale.
4. *Rate check*: ``r = -ln(D) / tau``; if its standard error exceeds ``max_rate_se`` (short expiries,
   where the slope hardly identifies ``D``) or the fit is implausible (``D`` outside (0, 1.5], ``F``
   not positive, ``|r| > 0.25``), the rate is instead interpolated linearly in tau between the
   expiries whose regression passed (flat beyond them) and ``F`` re-estimated as the Huber
   location of ``K + y / D`` (method ``rate_from_term_structure``). With no regression passing,
   ``r = 0`` (method ``rate_assumed_zero``, reported).
5. Expiries with fewer than ``min_pairs`` pairs get no forward: their quotes get status
   ``no_forward``.

Reported per expiry: forward ``F``, discount factor ``D``, implied rate ``r = -ln(D)/tau`` and carry
``ln(F/S)/tau`` (S the spot, when given), their standard errors and the method; see
:func:`forward_table`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import xarray as xr

HUBER_C = 1.345


@dataclass(frozen=True)
class ParityFit:
    """Put-call-parity estimate for one expiry (units: F in quote currency, rates per year, ACT/365F)."""

    expiry: str
    tau: float
    n_pairs: int
    n_used: int
    forward: float
    discount_factor: float
    rate: float
    carry: float
    forward_se: float
    rate_se: float
    regression_rate: float
    method: str
    status: str


def _huber_irls(x: np.ndarray, y: np.ndarray, s: np.ndarray, n_iter: int = 50):
    """Huber IRLS of ``y = X beta`` with base weights ``1/s^2``; returns (beta, cov, robust weights)."""
    w0 = 1.0 / s**2
    h = np.ones_like(y)
    beta = np.linalg.lstsq(x * np.sqrt(w0)[:, None], y * np.sqrt(w0), rcond=None)[0]
    scale = 1.0
    for _ in range(n_iter):
        r = (y - x @ beta) / s
        mad = 1.4826 * np.median(np.abs(r - np.median(r)))
        scale = max(mad, 1e-3 * float(np.median(np.abs(r))) + 1e-12, 1e-12)
        u = np.abs(r) / scale
        h_new = np.where(u <= HUBER_C, 1.0, HUBER_C / np.maximum(u, 1e-300))
        w = w0 * h_new
        sw = np.sqrt(w)
        beta_new = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0]
        done = bool(np.all(np.abs(beta_new - beta) <= 1e-10 * (np.abs(beta) + 1e-12))) or np.array_equal(h_new, h)
        beta, h = beta_new, h_new
        if done:
            break
    w = w0 * h
    dof = max(len(y) - x.shape[1], 1)
    resid = y - x @ beta
    sigma2 = float(np.sum(w * resid**2) / dof)
    xtwx = x.T @ (x * w[:, None])
    try:
        cov = sigma2 * np.linalg.inv(xtwx)
    except np.linalg.LinAlgError:
        cov = np.full((x.shape[1], x.shape[1]), np.inf)
    return beta, cov, h


def _pairs(strike, cp, bid, ask):
    """Strikes with a two-sided call and a two-sided put: (K, y = C_mid - P_mid, s = spread_C + spread_P)."""
    with np.errstate(all="ignore"):
        two = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid) & np.isfinite(strike) & (strike > 0)
        two &= (ask < 1e100) & (strike < 1e100)  # beyond this the squares in the weights overflow
    # arithmetic on the two-sided quotes only: the others may hold inf or 1e308 (overflow warnings)
    strike, cp, bid, ask = strike[two], cp[two], bid[two], ask[two]
    calls = pd.DataFrame({"K": strike[cp > 0], "mid": 0.5 * (bid + ask)[cp > 0],
                          "spr": (ask - bid)[cp > 0]}).groupby("K").mean()
    puts = pd.DataFrame({"K": strike[cp < 0], "mid": 0.5 * (bid + ask)[cp < 0],
                         "spr": (ask - bid)[cp < 0]}).groupby("K").mean()
    both = calls.add_suffix("_c").join(puts.add_suffix("_p"), how="inner")
    k = both.index.to_numpy(float)
    y = (both["mid_c"] - both["mid_p"]).to_numpy()
    s = (both["spr_c"] + both["spr_p"]).to_numpy()
    # a zero spread (locked market) would get infinite weight: floor at a tenth of the median spread
    floor = 0.1 * np.median(s[s > 0]) if np.any(s > 0) else 1.0
    return k, y, np.maximum(s, floor)


def parity_forwards(
    expiry_label: np.ndarray,
    tau: np.ndarray,
    strike: np.ndarray,
    cp: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    spot: float | None = None,
    *,
    min_pairs: int = 3,
    max_pairs: int = 12,
    max_rate_se: float = 0.005,
) -> list[ParityFit]:
    """Forward and discount factor per expiry from put-call parity (module docstring).

    Parameters
    ----------
    expiry_label : array of str, shape (n,)
        Expiry of each quote (any label; one fit per distinct label).
    tau : array, shape (n,)
        Years to expiry (ACT/365F); equal within an expiry.
    strike, cp, bid, ask : arrays, shape (n,)
        Strike, +1/-1, discounted bid/ask premiums (quote currency; NaN or <= 0 = no quote).
    spot : float, optional
        Spot level, for the carry ``ln(F/S)/tau``.
    min_pairs : int
        Fewer two-sided call/put pairs than this: no forward (status ``too_few_pairs``).
    max_pairs : int
        Pairs nearest the money used in the fit.
    max_rate_se : float
        Largest standard error of the implied rate (per year) for the regression's own ``D`` to be used.

    Returns
    -------
    list of ParityFit
        One per expiry label, sorted by tau. ``status`` is ``ok``, ``too_few_pairs`` or
        ``fit_failed`` (then ``forward`` and ``discount_factor`` are NaN and the quotes get ``no_forward``).
    """
    fits: dict[str, dict] = {}
    for label in pd.unique(expiry_label):
        sel = expiry_label == label
        t = float(np.nanmedian(tau[sel])) if np.isfinite(tau[sel]).any() else np.nan
        k, y, s = _pairs(strike[sel], cp[sel], bid[sel], ask[sel])
        entry = {"expiry": str(label), "tau": t, "n_pairs": int(k.size), "n_used": 0}
        if k.size < max(min_pairs, 2) or not (t > 0):
            entry.update(status="too_few_pairs" if t > 0 else "non_positive_tau", method="none")
            fits[label] = entry
            continue
        near = np.argsort(np.abs(y), kind="stable")[:max(max_pairs, min_pairs)]
        k, y, s = k[near], y[near], s[near]
        x = np.column_stack([np.ones_like(k), k])
        try:
            with np.errstate(all="ignore"):
                beta, cov, _ = _huber_irls(x, y, s)
        except np.linalg.LinAlgError:
            beta, cov = np.array([np.nan, np.nan]), np.full((2, 2), np.inf)
        d = -beta[1]
        f = beta[0] / d if d != 0 else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            r = -np.log(d) / t if d > 0 else np.nan
            r_se = float(np.sqrt(max(cov[1, 1], 0.0)) / (d * t)) if d > 0 else np.inf
        plausible = bool(0 < d <= 1.5 and f > 0 and abs(r) <= 0.25 and np.isfinite(cov).all())
        entry.update(n_used=int(k.size), k=k, y=y, s=s, regression_rate=float(r) if np.isfinite(r) else np.nan,
                     status="ok")
        if plausible and r_se <= max_rate_se:
            f_se = float(np.sqrt(max(cov[0, 0] / d**2 + f**2 * cov[1, 1] / d**2 - 2 * f * cov[0, 1] / d**2, 0.0)))
            entry.update(method="regression", forward=float(f), discount_factor=float(d), rate=float(r),
                         rate_se=r_se, forward_se=f_se)
        else:
            entry.update(method="pending")
        fits[label] = entry

    good = [e for e in fits.values() if e.get("method") == "regression"]
    curve_t = np.array([e["tau"] for e in good])
    curve_r = np.array([e["rate"] for e in good])
    order = np.argsort(curve_t)
    curve_t, curve_r = curve_t[order], curve_r[order]
    for e in fits.values():
        if e.get("method") != "pending":
            continue
        if curve_t.size:
            r = float(np.interp(e["tau"], curve_t, curve_r))
            e["method"] = "rate_from_term_structure"
        else:
            r = 0.0
            e["method"] = "rate_assumed_zero"
        d = float(np.exp(-r * e["tau"]))
        try:
            with np.errstate(all="ignore"):
                beta, cov, _ = _huber_irls(np.ones((e["k"].size, 1)), e["k"] + e["y"] / d, e["s"] / d)
        except np.linalg.LinAlgError:
            beta, cov = np.array([np.nan]), np.full((1, 1), np.nan)
        if not (np.isfinite(beta[0]) and beta[0] > 0):
            e.update(status="fit_failed", method="none")
            continue
        e.update(forward=float(beta[0]), discount_factor=d, rate=r, rate_se=np.nan,
                 forward_se=float(np.sqrt(max(cov[0, 0], 0.0))))

    out = []
    for e in fits.values():
        f = e.get("forward", np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            carry = float(np.log(f / spot) / e["tau"]) if spot and np.isfinite(f) and f > 0 else np.nan
        out.append(ParityFit(
            expiry=e["expiry"], tau=e["tau"], n_pairs=e["n_pairs"], n_used=e["n_used"], forward=f,
            discount_factor=e.get("discount_factor", np.nan), rate=e.get("rate", np.nan), carry=carry,
            forward_se=e.get("forward_se", np.nan), rate_se=e.get("rate_se", np.nan),
            regression_rate=e.get("regression_rate", np.nan), method=e["method"], status=e["status"],
        ))
    return sorted(out, key=lambda p: (np.nan_to_num(p.tau, nan=np.inf), p.expiry))


def fits_to_json(fits: list[ParityFit]) -> str:
    """JSON list of the fits (NaN written as null), for ``attrs["forwards"]``."""
    rows = []
    for fit in fits:
        row = asdict(fit)
        rows.append({key: (None if isinstance(v, float) and not np.isfinite(v) else v) for key, v in row.items()})
    return json.dumps(rows)


def forward_table(quotes: xr.Dataset) -> pd.DataFrame:
    """Per-expiry put-call-parity estimates stored by a reader (``attrs["forwards"]``), one row per expiry.

    Columns: ``expiry, tau, n_pairs, n_used, forward, discount_factor, rate, carry, forward_se,
    rate_se, regression_rate, method, status`` (see :class:`ParityFit`). Empty when the reader took
    forwards from the source.
    """
    rows = json.loads(quotes.attrs.get("forwards", "[]"))
    return pd.DataFrame(rows, columns=list(ParityFit.__dataclass_fields__)).astype(
        {"forward": float, "discount_factor": float, "rate": float, "carry": float, "forward_se": float,
         "rate_se": float, "regression_rate": float}
    )
