"""Names, units and status codes used across bayescal: the single source of truth.

Units (see ``docs/conventions.md``):

=================  ===========================================================
``tau``            time to expiry in years, ACT/365F, from timestamps to the second
``forward``        forward price of the underlying for the expiry, quote currency
``strike``         quote currency
``k``              log-moneyness ``ln(strike / forward)``
``cp``             +1 call, -1 put
``iv``             Black-76 implied volatility, annualised decimal (0.55, never 55)
``w``              total implied variance ``iv**2 * tau``
``bid/ask/mid``    option premium in quote currency (USD for Deribit, = coin premium x forward)
``norm_*``         premium / (discount_factor * forward), dimensionless
=================  ===========================================================
"""

from __future__ import annotations

from enum import IntEnum

DAY_COUNT = "ACT/365F"
SECONDS_PER_YEAR = 365.0 * 86400.0

QUOTE_DIM = "quote"
EXPIRY_DIM = "expiry"


class QuoteStatus(IntEnum):
    """Status code attached to every quote; only ``OK`` quotes reach a likelihood.

    The code records the *first* reason a quote was excluded, in the order the
    filters run; the filter report gives the counts per reason.
    """

    OK = 0
    NO_BID = 1  #: bid missing or <= 0
    NO_ASK = 2  #: ask missing or <= 0
    CROSSED = 3  #: bid > ask
    TAU_TOO_SHORT = 4  #: time to expiry below the minimum
    IN_THE_MONEY = 5  #: removed by the out-of-the-money selection
    BELOW_INTRINSIC = 6  #: mid below intrinsic value / above the no-arbitrage upper bound
    IV_FAILED = 7  #: implied-vol inversion did not produce a volatility
    FEW_QUOTES = 8  #: expiry keeps fewer quotes than the minimum per expiry
    OUT_OF_RANGE = 9  #: |k| outside the log-moneyness window
    INVALID = 10  #: non-finite or non-positive strike / forward in the source


class IVStatus(IntEnum):
    """Per-quote result of the implied-volatility inversion (:mod:`bayescal.market.implied_vol`)."""

    OK = 0
    NOT_FINITE = 1  #: price, forward, strike or tau not finite, or tau <= 0
    BELOW_INTRINSIC = 2  #: price below the intrinsic value (or <= 0 for an OTM option)
    ABOVE_UPPER_BOUND = 3  #: price at or above the no-arbitrage maximum (F for a call, K for a put, discounted)
    NOT_CONVERGED = 4  #: the iteration did not reach the tolerance
