"""Model comparison by PSIS-LOO (Vehtari, Gelman & Gabry 2017) across results fitted to the same quotes.

Every model's likelihood is on the same observable (mid implied vol, see
:func:`bayescal.inference.build_model`), so their expected log predictive densities compare.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd

from bayescal.errors import IncomparableResultsError
from bayescal.results import CalibrationResult


def compare_results(results: dict[str, CalibrationResult]) -> pd.DataFrame:
    """ArviZ ``compare`` table (ELPD-LOO, its SE, differences, stacking weights, Pareto-k warnings).

    Parameters
    ----------
    results : dict of str to CalibrationResult
        At least two results, keyed by the label to show.

    Returns
    -------
    pandas.DataFrame
        One row per model, best first (ArviZ's columns), plus ``fit_method`` and
        ``max_pareto_k`` (values above 0.7 make that model's LOO unreliable).

    Raises
    ------
    IncomparableResultsError
        Fewer than two results, a result without ``log_likelihood``, or results fitted to
        different quotes (the quote coordinates or observed IVs differ).
    """
    if len(results) < 2:
        raise IncomparableResultsError(f"need at least two results to compare, got {len(results)}")
    reference_label, reference = next(iter(results.items()))
    ref_obs = reference.idata["observed_data"]["iv_obs"]
    for label, result in results.items():
        if "log_likelihood" not in result.idata.children:
            raise IncomparableResultsError(f"result {label!r} has no log_likelihood group (refit with this version)")
        obs = result.idata["observed_data"]["iv_obs"]
        if obs.sizes != ref_obs.sizes or not np.array_equal(obs["quote"].to_numpy(), ref_obs["quote"].to_numpy()) \
                or not np.allclose(obs.to_numpy(), ref_obs.to_numpy(), rtol=0, atol=1e-12):
            raise IncomparableResultsError(
                f"results {reference_label!r} and {label!r} were not fitted to the same quotes "
                f"({ref_obs.sizes['quote']} vs {obs.sizes['quote']}); use the same chain and filters"
            )
    with warnings.catch_warnings():
        # high Pareto k is reported per model in the table (diag_elpd, max_pareto_k), not as warnings
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        table = az.compare({label: r.idata for label, r in results.items()})
        table["fit_method"] = [results[label].idata.attrs.get("fit_method", "") for label in table.index]
        table["max_pareto_k"] = [
            float(np.max(az.loo(results[label].idata, pointwise=True).pareto_k)) for label in table.index
        ]
    return table
