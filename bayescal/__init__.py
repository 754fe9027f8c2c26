"""bayescal: Bayesian calibration of option pricing models.

Pricing models are PyTensor graphs inside PyMC models with regularising priors; fits return the
posterior (ArviZ ``DataTree``), not a single least-squares point.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
