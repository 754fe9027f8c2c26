"""Exception and warning hierarchy of bayescal (one place for every error type)."""

from __future__ import annotations


class BayescalError(Exception):
    """Root of every error raised by bayescal."""


class QuoteValidationError(BayescalError, ValueError):
    """Structural problem with a quote file or quotes Dataset (missing columns, mixed units, ...).

    Problems with a single quote are never raised: they become per-quote status codes
    (see :data:`bayescal.conventions.QuoteStatus`).
    """


class UnknownFormatError(QuoteValidationError):
    """A chain file matches none of the known formats; the message lists them."""


class SpecError(BayescalError, ValueError):
    """A calibration spec or prior set is malformed; the message lists every problem found."""


class DifferentModelError(BayescalError):
    """A stored result does not belong to the spec it is loaded against."""


class CalibrationError(BayescalError, RuntimeError):
    """A calibration could not be run (e.g. no expiry left after filtering)."""


class CalibrationWarning(UserWarning):
    """A calibration ran but its result needs attention (convergence gate not ``ok``)."""


class IncomparableResultsError(BayescalError, ValueError):
    """Results compared by LOO were not fitted to the same quotes (or lack a log-likelihood)."""
