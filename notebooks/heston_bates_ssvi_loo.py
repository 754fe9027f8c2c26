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
# # Heston, Bates, SSVI, SVI on one Deribit snapshot, compared by PSIS-LOO
#
# Every bayescal model's likelihood is on the same observable (mid implied vol; price-output models
# such as Heston, Bates and Merton are linked to it through vega), so models fitted to the same
# quotes can be compared by their expected log predictive density, estimated by Pareto-smoothed
# importance-sampling leave-one-out cross-validation (Vehtari, Gelman & Gabry 2017):
# `bayescal.comparison.compare_results`, or `bayescal compare RUN1 RUN2 ...` on the command line.
#
# The chain is the shared 2025-12-30 BTC snapshot, restricted to expiries between one week and about
# three months (a surface model has to fit all of them at once). Models are taken from the registry:
# Heston, Bates, SSVI and SVI where registered, or the list in `BAYESCAL_LOO_MODELS`
# (comma-separated keys). A model whose fit raises is reported and left out of the table.
#
# `BAYESCAL_DRAWS` sets the draws per chain (CI runs it small: with few draws, treat the ranking as a
# smoke test and look at the Pareto-k column).

# %%
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bayescal.comparison import compare_results
from bayescal.inference import fit
from bayescal.market import read_chain
from bayescal.pricing_models import REGISTRY
from bayescal.report import smile_bands
from bayescal.spec import load_spec

draws = int(os.environ.get("BAYESCAL_DRAWS", "1000"))
chains = 4 if draws >= 500 else 2
PREFERRED = ("heston", "bates", "ssvi", "svi")
requested = [m.strip() for m in os.environ.get("BAYESCAL_LOO_MODELS", "").split(",") if m.strip()]
models = requested or [m for m in PREFERRED if m in REGISTRY]
unknown = sorted(set(models) - set(REGISTRY))
assert not unknown, f"not registered: {unknown}; registered: {sorted(REGISTRY)}"
print(f"registered models: {sorted(REGISTRY)}; comparing {models}; {chains} chains x {draws} draws")


def shared_data() -> Path:
    """``../shared/data`` next to the repository (found from the working directory upwards)."""
    if os.environ.get("BAYESCAL_SHARED_DATA"):
        return Path(os.environ["BAYESCAL_SHARED_DATA"])
    for base in (Path.cwd(), *Path.cwd().parents):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    raise FileNotFoundError("no shared/data folder above the working directory; set BAYESCAL_SHARED_DATA")


# %% The snapshot, restricted to expiries between 7 and 100 days
chain = read_chain(shared_data() / "deribit_options_snapshot_20251230T173115Z.csv", underlying="BTC")
days = 365.0 * chain["tau"].to_numpy()
quotes = chain.isel(quote=np.flatnonzero((days >= 7) & (days <= 100)))
print(f"{chain.sizes['quote']} quotes in the snapshot, {quotes.sizes['quote']} in expiries of 7-100 days: "
      f"{sorted({str(e)[:10] for e in quotes['expiry'].to_numpy()})}")

# %% Fit every model to the same quotes (same filters for all, so LOO compares like with like)
filters = load_spec(models[0]).filters
results, failed = {}, {}
for key in models:
    spec = replace(load_spec(key), filters=filters).with_fit(draws=draws, tune=draws, chains=chains)
    try:
        result = fit(spec, quotes, progressbar=False)
    except Exception as exc:  # reported, not hidden: the table below says which models are missing
        failed[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        print(f"{key:7s} FIT FAILED: {failed[key]}")
        continue
    results[key] = result
    conv, quality = result.convergence, result.fit_quality
    print(f"{key:7s} gate {conv['status']:4s} (max R-hat {conv['max_rhat']:.3f}, divergences {conv['divergences']}), "
          f"RMSE {quality['rmse_vol_points']:.2f} vol points, "
          f"arbitrage-free {100 * quality['arbitrage_free_share']:.0f}%, {result.timings['fit_seconds']:.0f} s")

# %% PSIS-LOO comparison: best first; elpd (log predictive density), elpd_diff to the best and its se (dse)
assert len(results) >= 2, f"need two fitted models to compare; failures: {failed}"
assert not (requested and failed), f"explicitly requested models failed: {failed}"
table = compare_results(results)
with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
    print(table)
if failed:
    print("left out (fit failed):", failed)

# %% Is the difference meaningful? Compare elpd_diff with its standard error (and ArviZ's p_worse)
best = table.index[0]
for label in table.index[1:]:
    diff, se = abs(table.loc[label, "elpd_diff"]), table.loc[label, "dse"]
    verdict = "clearly worse" if diff > 4 * max(se, 1e-12) else "not clearly distinguishable"
    print(f"{label} vs {best}: elpd lower by {diff:.1f} (se {se:.1f}), p_worse {table.loc[label, 'p_worse']:.2f}: "
          f"{verdict}")
unreliable = table.index[table["max_pareto_k"] > 0.7].tolist()
print("models with Pareto k > 0.7 (LOO unreliable for some quotes):", unreliable or "none")

# %% Where they differ: ATM level and 94% band width per expiry
rows = []
for key, res in results.items():
    for band in smile_bands(res):
        atm = int(np.argmin(np.abs(band["k_grid"])))
        rows.append({"model": key, "expiry": band["expiry"][:10], "atm_iv": 100 * band["iv_mean"][atm],
                     "band_width": 100 * (band["iv_hi"][atm] - band["iv_lo"][atm])})
print(pd.DataFrame(rows).pivot(index="expiry", columns="model", values=["atm_iv", "band_width"]).round(2))

# %% Checks (the notebook runs in CI)
result = results[best]
assert np.isfinite(table["elpd"].to_numpy(float)).all()
assert table["elpd_diff"].iloc[0] == 0
