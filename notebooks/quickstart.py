# %% [markdown]
# # bayescal quickstart: per-expiry SVI on the bundled BTC chain
#
# A jupytext "percent" script: open it as a notebook (`jupytext --to ipynb`) or run it with Python.
# `BAYESCAL_DRAWS` sets the draws per chain (CI runs it small).

# %%
import os

import arviz as az

from bayescal.inference import fit
from bayescal.market import bundled_demo_chain, read_chain
from bayescal.market.filters import filter_report
from bayescal.report import smile_bands
from bayescal.spec import load_spec

draws = int(os.environ.get("BAYESCAL_DRAWS", "1000"))

# %% Read the chain: canonical quotes with tau, k, implied vols and a status per quote
quotes = read_chain(bundled_demo_chain())
print(quotes[["strike", "cp", "tau", "k", "bid_iv", "ask_iv", "mid_iv"]].to_dataframe().head())

# %% Fit the default SVI spec (models/svi.toml) with nutpie
spec = load_spec("svi").with_fit(draws=draws, tune=draws)
result = fit(spec, quotes, progressbar=False)
print(result.convergence)
print(result.fit_quality)
print(filter_report(result.quotes))

# %% Posterior summary of the raw SVI parameters
print(az.summary(result.idata, var_names=["svi_a", "svi_b", "svi_rho", "svi_m", "svi_sigma"], kind="stats"))

# %% Smile bands: posterior mean and 94% band of the model IV on a k grid, per expiry
for band in smile_bands(result):
    width = 100 * (band["iv_hi"] - band["iv_lo"])
    print(f"{band['expiry']}: ATM-ish band width {width[len(width) // 2]:.2f} vol points")
