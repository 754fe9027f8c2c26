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
# # Prior sensitivity: per-expiry SVI under the reviewed prior set and a widened one
#
# The reviewed set `svi/crypto` (`priors/svi/crypto.toml`, one rationale per prior) is weakly
# informative. How much do the posterior and the smile bands depend on it? Fit the same chain twice:
# once with `svi/crypto`, once with every model prior's scale doubled (`sigma` of the LogNormal and
# Normal priors: each log-scale interval twice as wide), and compare.
#
# Reading the result: a parameter whose posterior mean moves by a small fraction of its posterior sd
# is decided by the data; a large move, or a posterior sd close to the prior's, means the prior is
# doing the work, and its rationale matters. The bundled chain (4 expiries, 49 quotes) is sparse on
# purpose: that is where priors show.
#
# `BAYESCAL_DRAWS` sets the draws per chain (CI runs it small).

# %%
import os
from dataclasses import replace

import numpy as np
import pandas as pd
from pymc_extras.prior import Prior

from bayescal.inference import fit
from bayescal.market import bundled_demo_chain, read_chain
from bayescal.report import smile_bands
from bayescal.spec import load_spec

draws = int(os.environ.get("BAYESCAL_DRAWS", "1000"))
chains = 4 if draws >= 500 else 2
WIDEN = 2.0

# %% The reviewed prior set and a widened copy
spec = load_spec("svi").with_fit(draws=draws, tune=draws, chains=chains)
base = spec.prior_set
widened_priors = {}
for name, prior in base.priors.items():
    params = dict(prior.parameters)
    if name != "sigma_obs" and "sigma" in params:  # the noise floor keeps its zero-avoiding prior
        params["sigma"] = WIDEN * params["sigma"]
    widened_priors[name] = Prior(prior.distribution, **params)
wide = replace(base, name=f"{base.name} (scales x{WIDEN:g})", priors=widened_priors,
               description=f"{base.name} with every model prior's sigma multiplied by {WIDEN:g}")
for name in base.priors:
    print(f"{name:13s} {base.priors[name].distribution:10s} {base.priors[name].parameters} -> "
          f"{wide.priors[name].parameters}")

# %% Fit both on the same quotes
quotes = read_chain(bundled_demo_chain())
results = {}
for label, prior_set in (("reviewed", base), ("widened", wide)):
    results[label] = fit(replace(spec, prior_set=prior_set), quotes, progressbar=False)
    conv, quality = results[label].convergence, results[label].fit_quality
    print(f"{label:9s} gate {conv['status']:4s} max R-hat {conv['max_rhat']:.3f}, divergences {conv['divergences']}, "
          f"RMSE {quality['rmse_vol_points']:.3f} vol points, "
          f"arbitrage-free {100 * quality['arbitrage_free_share']:.1f}%")

# %% Posterior shift per parameter and expiry, in units of the reviewed posterior's sd
rows = []
post_base, post_wide = results["reviewed"].posterior, results["widened"].posterior
for var in ("svi_vmin", "svi_wing_left", "svi_wing_right", "svi_m_scaled", "svi_sigma_scaled", "svi_a", "svi_b",
            "svi_rho", "svi_m", "svi_sigma", "sigma_obs"):
    for expiry in post_base["expiry"].to_numpy():
        b = post_base[var].sel(expiry=expiry).to_numpy().ravel()
        w = post_wide[var].sel(expiry=expiry).to_numpy().ravel()
        rows.append({"parameter": var, "expiry": str(expiry), "mean_reviewed": b.mean(), "mean_widened": w.mean(),
                     "sd_reviewed": b.std(), "sd_widened": w.std(),
                     "shift_in_sd": (w.mean() - b.mean()) / b.std(), "sd_ratio": w.std() / b.std()})
shift = pd.DataFrame(rows)
with pd.option_context("display.width", 160, "display.max_rows", 60, "display.float_format", "{:.4g}".format):
    print(shift.pivot(index="parameter", columns="expiry", values="shift_in_sd"))

# %% Which parameters does the prior decide?
summary = shift.groupby("parameter")[["shift_in_sd", "sd_ratio"]].agg(lambda s: np.max(np.abs(s)))
summary.columns = ["max |shift| (sd)", "max sd ratio"]
print(summary.sort_values("max |shift| (sd)", ascending=False).round(3))
sensitive = summary.index[summary["max |shift| (sd)"] > 0.5].tolist()
print("prior-sensitive (shift > 0.5 posterior sd):", sensitive or "none")

# %% What a reader of the smiles would see: band widths at the money, per expiry
for b_band, w_band in zip(smile_bands(results["reviewed"]), smile_bands(results["widened"]), strict=True):
    atm = int(np.argmin(np.abs(b_band["k_grid"])))
    width_b = 100 * (b_band["iv_hi"][atm] - b_band["iv_lo"][atm])
    width_w = 100 * (w_band["iv_hi"][atm] - w_band["iv_lo"][atm])
    move = 100 * (w_band["iv_mean"][atm] - b_band["iv_mean"][atm])
    print(f"{b_band['expiry']}: ATM 94% band {width_b:.2f} -> {width_w:.2f} vol points, "
          f"centre moves {move:+.2f} vol points")

# %% Checks (the notebook runs in CI)
result = results["reviewed"]
assert all(r.convergence["status"] != "fail" for r in results.values()), {
    k: r.convergence["reasons"] for k, r in results.items()}
assert np.isfinite(shift["shift_in_sd"]).all()
