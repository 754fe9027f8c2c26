"""Static-arbitrage checks on a quotes Dataset: vertical spreads, butterflies, calendar spreads.

Per expiry, every candidate quote is turned into a *call* price: calls as quoted, puts through
put-call parity ``C = P + D (F - K)`` (so out-of-the-money puts give the in-the-money calls), with
the bid-ask half-spread carried over unchanged. Where a strike has both a call and a put, the
out-of-the-money one is used (put below the forward, call at or above it). Then, on the strike-
sorted calls ``C_1, C_2, ...`` (Carr and Madan 2005, "A note on sufficient conditions for no
arbitrage", Finance Research Letters 2(3):125-130):

* **vertical** (bit 1): ``-D (K_{i+1} - K_i) <= C_{i+1} - C_i <= 0`` (call prices non-increasing in
  strike, and falling no faster than the discounted strike);
* **butterfly** (bit 2): ``C_j <= lam C_i + (1 - lam) C_l`` for consecutive ``K_i < K_j < K_l``,
  ``lam = (K_l - K_j) / (K_l - K_i)`` (convex in strike);
* **calendar** (bit 4): at fixed log-moneyness ``k``, total implied variance ``w = iv^2 tau`` is
  non-decreasing in tau; each quote of an expiry is compared with the previous expiry's ``w``
  interpolated linearly in ``k`` (only inside that expiry's quoted ``k`` range).

A violation counts only when it exceeds ``tolerance`` times the bid-ask room of the quotes
involved: ``tolerance = 1`` flags only tradable arbitrage against the quoted bids and asks (e.g. a
vertical spread whose bid exceeds its ask); ``tolerance = 0`` flags any mid-price violation.

Which quotes are flagged: in each expiry the quote involved in most violations (a butterfly's body
counts twice, its wings once; ties go to the widest relative spread) is flagged and set aside, and
the checks are repeated until none is left (greedy, so one bad quote does not flag its neighbours);
calendar checks then run on the quotes not flagged, and flag the later expiry's quote.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["ArbitrageFlag", "static_arbitrage_flags"]


class ArbitrageFlag(IntEnum):
    """Bits of the per-quote ``arb_flags`` variable."""

    VERTICAL = 1  #: call price increasing in strike, or falling faster than D per unit strike
    BUTTERFLY = 2  #: call price not convex in strike
    CALENDAR = 4  #: total implied variance at this k below the previous expiry's (interpolated in k)


def _expiry_violations(strike, call, half, discount, tolerance):
    """Violations among strike-sorted calls: list of (bit, indices) with indices into the arrays."""
    out = []
    n = strike.size
    if n >= 2:
        d_c = np.diff(call)
        room = tolerance * (half[:-1] + half[1:])
        slope_floor = -discount[1:] * np.diff(strike)
        bad = (d_c > room) | (d_c < slope_floor - room)
        out += [(ArbitrageFlag.VERTICAL, (i, i + 1)) for i in np.flatnonzero(bad)]
    if n >= 3:
        k0, k1, k2 = strike[:-2], strike[1:-1], strike[2:]
        lam = (k2 - k1) / (k2 - k0)
        excess = call[1:-1] - (lam * call[:-2] + (1 - lam) * call[2:])
        room = tolerance * (half[1:-1] + lam * half[:-2] + (1 - lam) * half[2:])
        bad = excess > room
        out += [(ArbitrageFlag.BUTTERFLY, (i, i + 1, i + 2)) for i in np.flatnonzero(bad)]
    return out


def _strike_flags(strike, call, half, discount, spread_rank, tolerance):
    """Greedy culprits of vertical / butterfly violations in one expiry: bits per quote."""
    flags = np.zeros(strike.size, np.int8)
    alive = np.arange(strike.size)
    while alive.size >= 2:
        violations = _expiry_violations(strike[alive], call[alive], half[alive], discount[alive], tolerance)
        if not violations:
            break
        count = np.zeros(alive.size)
        bits = np.zeros(alive.size, np.int8)
        for bit, members in violations:
            # a butterfly's body weighs 2 (its -2 in the 1, -2, 1 position): the body is the usual culprit
            for m, weight in zip(members, (1, 2, 1) if len(members) == 3 else (1, 1), strict=True):
                count[m] += weight
                bits[m] |= bit
        best = np.flatnonzero(count == count.max())
        culprit = best[np.argmax(spread_rank[alive][best])]  # ties: the widest relative spread
        flags[alive[culprit]] = bits[culprit]
        alive = np.delete(alive, culprit)
    return flags


def static_arbitrage_flags(
    *,
    expiry: np.ndarray,
    tau: np.ndarray,
    strike: np.ndarray,
    cp: np.ndarray,
    forward: np.ndarray,
    discount: np.ndarray,
    mid: np.ndarray,
    spread: np.ndarray,
    k: np.ndarray,
    mid_iv: np.ndarray,
    bid_iv: np.ndarray,
    ask_iv: np.ndarray,
    candidate: np.ndarray,
    tolerance: float = 1.0,
) -> np.ndarray:
    """Static-arbitrage flags (bitmask of :class:`ArbitrageFlag`) for the candidate quotes.

    Parameters
    ----------
    expiry, tau, strike, cp, forward, discount, mid, spread, k, mid_iv, bid_iv, ask_iv : arrays, shape (n,)
        Quote variables as in the quotes Dataset (premiums in quote currency, discounted; vols decimal).
    candidate : bool array, shape (n,)
        Quotes to check (finite inputs required there); the others get 0.
    tolerance : float
        Multiple of the quotes' bid-ask room a violation must exceed (1: tradable arbitrage, 0: mids).

    Returns
    -------
    numpy.ndarray of int8, shape (n,)
        0 for no flag; bits 1 vertical, 2 butterfly, 4 calendar (module docstring).
    """
    flags = np.zeros(strike.size, np.int8)
    cand = np.flatnonzero(candidate)
    if cand.size == 0:
        return flags
    with np.errstate(all="ignore"):
        call = np.where(cp > 0, mid, mid + discount * (forward - strike))
        half = 0.5 * spread
        rel_spread = spread / np.maximum(mid, 1e-300)
    otm = np.where(cp > 0, strike >= forward, strike < forward)
    expiries = np.unique(expiry[cand])
    for e in expiries:
        idx = cand[expiry[cand] == e]
        # one quote per strike: the out-of-the-money one where both exist
        idx = idx[np.lexsort((~otm[idx], strike[idx]))]
        first = np.ones(idx.size, bool)
        first[1:] = strike[idx][1:] != strike[idx][:-1]
        idx = idx[first]
        with np.errstate(all="ignore"):
            flags[idx] |= _strike_flags(strike[idx], call[idx], half[idx], discount[idx], rel_spread[idx],
                                        tolerance)

    # calendar: consecutive expiries (by tau), on the quotes not flagged above
    clean = candidate & (flags == 0)
    order = sorted(expiries, key=lambda e: float(np.median(tau[cand][expiry[cand] == e])))
    prev = None
    for e in order:
        idx = np.flatnonzero(clean & (expiry == e))
        if idx.size < 2:
            continue
        idx = idx[np.argsort(k[idx], kind="stable")]
        unique_k = np.ones(idx.size, bool)
        unique_k[1:] = np.diff(k[idx]) > 0
        if prev is not None:
            p_idx, p_tau = prev
            with np.errstate(all="ignore"):
                w_prev_low = (mid_iv[p_idx] - tolerance * (mid_iv[p_idx] - bid_iv[p_idx])) ** 2 * p_tau
                w_high = (mid_iv[idx] + tolerance * (ask_iv[idx] - mid_iv[idx])) ** 2 * tau[idx]
            inside = (k[idx] >= k[p_idx][0]) & (k[idx] <= k[p_idx][-1])
            w_interp = np.interp(k[idx], k[p_idx], w_prev_low)
            bad = inside & (w_high < w_interp)
            flags[idx[bad]] |= ArbitrageFlag.CALENDAR
        prev = (idx[unique_k], float(np.median(tau[idx])))
    return flags
