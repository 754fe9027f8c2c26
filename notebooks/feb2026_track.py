# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # February 2026, one chain a day: sequential SSVI calibration
#
# `bayescal.sequential.run_track` fits the daily Deribit BTC chains of `../shared/data/deribit_daily_2026-02`
# in valuation-time order. The surface parameters of SSVI (`rho`, `eta`, `gamma`) are carried from
# one day to the next: each posterior, moment-matched in unconstrained space, inflated and widened by a
# random-walk drift, becomes the next day's joint prior. A day whose posterior lands far outside its
# prior (chi-square conflict check), or whose 1-month-and-longer ATM vols moved by more than 5% from the
# day before (ATM level-shift check: SSVI's levels are per-expiry and not carried, so only this check
# sees a vol shock), is flagged and refitted on the wide base prior; a day that fails the convergence
# gate passes nothing on. With every day fitted, Feb 5, 6 and 7 are flagged.
#
# Environment: `BAYESCAL_DRAWS` (draws per chain; CI runs it small), `BAYESCAL_WINDOWS` (number of
# days to fit, from the first; default every file), `BAYESCAL_OUT` (output folder; default a new
# temporary folder).

# %%
import os
import tempfile
from pathlib import Path

import numpy as np

from bayescal.report import track_report_data, write_track_report
from bayescal.sequential import UpdateSettings, run_track
from bayescal.spec import load_spec

draws = int(os.environ.get("BAYESCAL_DRAWS", "1000"))
chains = 4 if draws >= 500 else 2
n_windows = int(os.environ.get("BAYESCAL_WINDOWS", "0"))


def shared_data() -> Path:
    """``../shared/data`` next to the repository (found from the working directory upwards)."""
    if os.environ.get("BAYESCAL_SHARED_DATA"):
        return Path(os.environ["BAYESCAL_SHARED_DATA"])
    for base in (Path.cwd(), *Path.cwd().parents):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    raise FileNotFoundError("no shared/data folder above the working directory; set BAYESCAL_SHARED_DATA")


files = sorted((shared_data() / "deribit_daily_2026-02").glob("*.csv"))
files = files[:n_windows] if n_windows else files
out = Path(os.environ.get("BAYESCAL_OUT") or tempfile.mkdtemp(prefix="bayescal-feb2026-track-"))
print(f"{len(files)} daily chains, {files[0].name} ... {files[-1].name}; output in {out}")

# %% Fit the windows (resumable: re-running skips finished days)
spec = load_spec("ssvi").with_fit(draws=draws, tune=draws, chains=chains)
settings = UpdateSettings(inflation=1.0, drift_sd_per_day=0.05)
tree = run_track(files, spec, out, underlying="BTC", settings=settings)
ds = tree.to_dataset()

# %% Parameter paths: posterior mean and 94% interval per day
for name in ("rho", "eta", "gamma"):
    print(name)
    for t, m, lo, hi, status in zip(ds["valuation_time"].to_numpy(), ds[f"{name}_mean"].to_numpy(),
                                    ds[f"{name}_q03"].to_numpy(), ds[f"{name}_q97"].to_numpy(),
                                    ds["status"].to_numpy(), strict=True):
        print(f"  {str(t)[:16]}  {m: .4f}  [{lo: .4f}, {hi: .4f}]  {status}")

# %% Conflicts: days whose data disagree with the carried prior
flagged = ds["conflict"].to_numpy().astype(bool)
print(f"conflicts flagged: {int(flagged.sum())} of {ds.sizes['window']} days")
for t, d2, shift, prior in zip(ds["valuation_time"].to_numpy(), ds["conflict_d2"].to_numpy(),
                               ds["level_shift"].to_numpy(), ds["prior_used"].to_numpy(), strict=True):
    print(f"  {str(t)[:16]}  d2 {d2:7.2f}  ATM level shift {shift:+.3f}  prior: {prior}")

# %% The track report: parameter bands over time, conflict flags, per-day diagnostics (self-contained HTML)
paths = write_track_report(out)
print(f"report: {paths['report']}\nfigure: {paths['figure']}")
data = track_report_data(out)
result = data["latest"]  # the last day's CalibrationResult
print(f"last day: gate {result.convergence['status']}, RMSE {result.fit_quality['rmse_vol_points']:.2f} vol points")

# %% Checks (the notebook runs in CI)
assert ds.sizes["window"] == len(files)
assert np.all(ds["rho_q03"].to_numpy() <= ds["rho_q97"].to_numpy())
assert paths["report"].is_file() and paths["figure"].is_file()
