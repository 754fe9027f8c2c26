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
    """Status code attached to every quote; only ``OK`` quotes reach a likelihood (a closed set).

    The code records the *first* reason a quote was excluded. Readers set the source statuses
    (``INVALID`` ... ``NO_FORWARD``, see :func:`bayescal.market.quotes.make_quotes`); then
    :func:`bayescal.market.filters.filter_quotes` runs its filters in a fixed order. The filter
    report (``attrs["filter_report"]``) gives the counts per status and per expiry. The codes are
    stable (stored results keep them); ``docs/conventions.md`` lists them with their meaning.
    """

    OK = 0  #: used in the likelihood
    NO_BID = 1  #: bid missing or <= 0 (Deribit dumps write a missing side as 0.0; CBOE as 0.00)
    NO_ASK = 2  #: ask missing or <= 0
    CROSSED = 3  #: bid > ask
    TAU_TOO_SHORT = 4  #: time to expiry below ``FilterSettings.tau_min_days``
    IN_THE_MONEY = 5  #: removed by the out-of-the-money selection
    BELOW_INTRINSIC = 6  #: mid (or bid/ask) premium at or below the discounted intrinsic value: no implied vol
    IV_NOT_FOUND = 7  #: bid/ask/mid implied-vol inversion gave no volatility for another reason (not converged)
    IV_FAILED = 7  #: former name of ``IV_NOT_FOUND`` (alias, same code)
    FEW_QUOTES = 8  #: expiry keeps fewer quotes than ``FilterSettings.min_quotes_per_expiry``
    OUT_OF_RANGE = 9  #: k outside ``FilterSettings.k_range`` or beyond ``FilterSettings.z_max`` ATM standard deviations
    INVALID = 10  #: strike / forward / discount factor / tau / option type missing, non-finite or <= 0
    ABOVE_UPPER_BOUND = 11  #: premium at or above the no-arbitrage maximum (D F for a call, D K for a put)
    NON_POSITIVE_TAU = 12  #: tau == 0 (expiry at the valuation time), or a source-given tau <= 0
    EXPIRED = 13  #: expiry strictly before the valuation time (tau < 0)
    DUPLICATE = 14  #: same (expiry, strike, call/put) as another row; the latest row is kept
    STALE = 15  #: quote time missing, or farther from the valuation time than the staleness window
    CAPPED_IV = 16  #: the venue capped the quote's implied vol (Deribit writes 500% when a side is far from fair)
    NO_FORWARD = 17  #: no forward for the expiry (too few two-sided call/put pairs for put-call parity)
    STATIC_ARBITRAGE = 18  #: flagged by the static-arbitrage checks, removed because ``drop_static_arbitrage``


#: statuses the readers assign (before any filter runs), in precedence order
SOURCE_STATUSES = (
    QuoteStatus.INVALID,
    QuoteStatus.EXPIRED,
    QuoteStatus.NON_POSITIVE_TAU,
    QuoteStatus.DUPLICATE,
    QuoteStatus.STALE,
    QuoteStatus.NO_FORWARD,
    QuoteStatus.CAPPED_IV,
)


class IVStatus(IntEnum):
    """Per-quote result of the implied-volatility inversion (:mod:`bayescal.market.implied_vol`)."""

    OK = 0
    NOT_FINITE = 1  #: price, forward, strike or tau not finite, or tau <= 0
    BELOW_INTRINSIC = 2  #: price below the intrinsic value (or <= 0 for an OTM option)
    ABOVE_UPPER_BOUND = 3  #: price at or above the no-arbitrage maximum (F for a call, K for a put, discounted)
    NOT_CONVERGED = 4  #: the iteration did not reach the tolerance
