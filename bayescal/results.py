"""CalibrationResult: the fitted DataTree plus what is needed to read it; the only module that knows
the stored layout.

Stored layout (netCDF via h5netcdf, written atomically): the ArviZ groups ``posterior``,
``sample_stats``, ``observed_data``, ``constant_data`` (the quotes used), ``posterior_predictive``,
plus a ``quotes`` group with every quote of the chain and its status code. Root attrs:
``bayescal_version``, ``spec`` (JSON), ``spec_id``, ``fit_method``, ``convergence`` (JSON),
``fit_quality`` (JSON), ``timings`` (JSON), ``created``, library versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr

from bayescal.atomic import atomic_path
from bayescal.diagnostics import ConvergenceReport


def _versions() -> dict[str, str]:
    import arviz
    import nutpie
    import pymc
    import pytensor

    from bayescal import __version__

    return {"bayescal": __version__, "pymc": pymc.__version__, "pytensor": pytensor.__version__,
            "arviz": arviz.__version__, "nutpie": nutpie.__version__}


@dataclass(frozen=True)
class CalibrationResult:
    """A finished calibration.

    Attributes
    ----------
    idata : xarray.DataTree
        ArviZ groups plus ``quotes``; root attrs as in the module docstring.
    """

    idata: xr.DataTree

    @classmethod
    def from_fit(cls, idata: xr.DataTree, spec: Any, quotes: xr.Dataset, gate: ConvergenceReport,
                 quality: dict[str, float], timings: dict[str, float]) -> CalibrationResult:
        """Assemble a result from the pieces :func:`bayescal.inference.fit` produced."""
        tree = idata.copy()
        tree["quotes"] = xr.DataTree(quotes)
        versions = _versions()
        tree.attrs.update(
            {
                "bayescal_version": versions["bayescal"],
                "versions": json.dumps(versions),
                "spec": json.dumps(spec.to_dict()),
                "spec_id": spec.spec_id,
                "spec_source": spec.source,
                "model": spec.model,
                "fit_method": spec.fit.method,
                "approximate": int(spec.fit.method != "nuts"),
                "convergence": json.dumps(gate.to_dict()),
                "fit_quality": json.dumps(quality),
                "timings": json.dumps(timings),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "data_source": quotes.attrs.get("source", ""),
                "valuation_time": quotes.attrs.get("valuation_time", ""),
            }
        )
        return cls(tree)

    # --- views -------------------------------------------------------------------------------------
    @property
    def quotes(self) -> xr.Dataset:
        """Every quote of the chain with its status code (filters applied)."""
        return self.idata["quotes"].to_dataset()

    @property
    def posterior(self) -> xr.Dataset:
        """Posterior draws (chain, draw, ...)."""
        return self.idata["posterior"].to_dataset()

    @property
    def convergence(self) -> dict[str, Any]:
        """The convergence report as a dict (``status``, ``reasons``, ``max_rhat``, ...)."""
        return json.loads(self.idata.attrs["convergence"])

    @property
    def fit_quality(self) -> dict[str, float]:
        """RMSE in vol points, posterior-predictive bid-ask overlap share, ..."""
        return json.loads(self.idata.attrs["fit_quality"])

    @property
    def spec(self) -> dict[str, Any]:
        """The effective spec (priors embedded) as a dict."""
        return json.loads(self.idata.attrs["spec"])

    @property
    def timings(self) -> dict[str, float]:
        """Wall times in seconds: ``fit_seconds`` (compilation and fit), ``total_seconds`` (with the
        post-fit checks) and, for NUTS, ``sampling_seconds`` (nutpie's tuning and draws, without
        compilation)."""
        return json.loads(self.idata.attrs["timings"])

    # --- persistence -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the result to netCDF atomically (:func:`bayescal.atomic.atomic_path`: temporary file in the
        same folder, fsync, rename).

        The file gets the mode any new file gets under the process umask (``0o666 & ~umask``, e.g.
        ``0o644`` with umask ``022``), not the ``0o600`` of ``tempfile.mkstemp``.

        Parameters
        ----------
        path : str or Path
            Destination; its folder is created if missing, an existing file is replaced.

        Returns
        -------
        Path
            The written file.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            self.idata.to_netcdf(tmp, engine="h5netcdf")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalibrationResult:
        """Read a result written by :meth:`save` (fully loaded into memory; the file is closed)."""
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            return cls(tree.load().copy())
