"""Prices and greeks with credible intervals: autodiff of the calibrated model's own graph, per posterior draw.

For a posterior draw the model gives the undiscounted normalised price ``c(k, tau)`` (price models)
or the implied vol ``iv(k, tau)`` (smile models, priced with Black 1976). The premium in quote
currency is ``P = D F c(ln(K/F), tau)`` and the greeks are derivatives of that same graph:

* ``delta = dP/dF`` and ``gamma = d2P/dF2``, with the smile held in log-moneyness (sticky
  moneyness: the fitted surface moves with the forward);
* ``vega = dP/d(shift)`` for a parallel shift of the implied-vol surface, per 1.00 of vol (smile
  models); for price-output models the parallel IV shift is not a model parameter and ``vega`` is
  the Black-76 vega at the model's implied vol;
* ``theta = -dP/dtau`` per year, forward and discount factor held fixed.

Across draws these give posterior distributions; :func:`greeks_summary` reports mean, sd and the
94% equal-tailed interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import xarray as xr

from bayescal.compilation import compile_mode
from bayescal.conventions import EXPIRY_DIM
from bayescal.errors import BayescalError
from bayescal.kernels.black import black76_norm_price
from bayescal.pricing_models import PricingModel, get_pricing_model
from bayescal.results import CalibrationResult

GREEKS = ("price", "delta", "gamma", "vega", "theta")
INTERVAL_PROB = 0.94


def _greeks_function(pricing: PricingModel):
    return pricing.compiled("greeks", lambda: _compile_greeks(pricing))


def _compile_greeks(pricing: PricingModel):
    F = pt.matrix("forward")  # (n_draws, n_instruments): elementwise inputs give elementwise gradients
    K = pt.matrix("strike")
    tau = pt.matrix("tau")
    shift = pt.matrix("shift")
    cp = pt.vector("cp")
    D = pt.vector("discount")
    params = {n: pt.tensor(n, shape=(None, 1), dtype="float64") for n in pricing.kernel_inputs}
    k = pt.log(K / F)
    out = pricing.kernel(k, tau, cp[None, :], **params)
    if pricing.output == "iv":
        iv = out + shift
        c = black76_norm_price(k, iv**2 * tau, cp[None, :])
    else:
        c = out + 0.0 * shift
    price = D[None, :] * F * c
    delta = pt.grad(price.sum(), F)
    gamma = pt.grad(delta.sum(), F)
    theta = -pt.grad(price.sum(), tau)
    vega = pt.grad(price.sum(), shift)
    inputs = [F, K, tau, shift, cp, D, *params.values()]
    return pytensor.function(inputs, [price, delta, gamma, vega, theta], on_unused_input="ignore", mode=compile_mode())


def posterior_greeks(result: CalibrationResult, expiry: int | str, strike, cp, *,
                     max_draws: int = 2000) -> xr.Dataset:
    """Posterior draws of price and greeks for options on one fitted expiry.

    Parameters
    ----------
    result : CalibrationResult
    expiry : int or str
        Index or label (as in the posterior's ``expiry`` coordinate) of a fitted expiry; its forward,
        discount factor and tau are those of the calibration.
    strike : array-like, shape (n,)
        Strikes in quote currency.
    cp : array-like, shape (n,)
        +1 call, -1 put.
    max_draws : int
        Evenly thinned to at most this many draws.

    Returns
    -------
    xarray.Dataset
        Variables ``price, delta, gamma, vega, theta`` with dims (``sample``, ``instrument``), in
        quote currency per unit of underlying (delta dimensionless, gamma per unit forward, vega
        per 1.00 vol, theta per year); coords ``strike`` and ``cp``; attrs ``expiry``, ``forward``,
        ``tau``, ``discount_factor``.

    Raises
    ------
    BayescalError
        If the expiry is not one of the fitted expiries, or strike/cp are invalid.
    """
    posterior = result.posterior
    labels = [str(e) for e in posterior[EXPIRY_DIM].to_numpy()]
    if isinstance(expiry, str):
        if expiry not in labels:
            raise BayescalError(f"expiry {expiry!r} was not fitted; fitted expiries: {labels}")
        e = labels.index(expiry)
    else:
        e = int(expiry)
        if not 0 <= e < len(labels):
            raise BayescalError(f"expiry index {expiry} out of range 0..{len(labels) - 1}")
    strike = np.atleast_1d(np.asarray(strike, float))
    cp = np.broadcast_to(np.asarray(cp, float), strike.shape).copy()
    if not np.all(np.isfinite(strike) & (strike > 0)) or not np.all(np.abs(cp) == 1):
        raise BayescalError(f"strikes must be finite and positive and cp +1/-1 (got {strike}, {cp})")
    const = result.idata["constant_data"].to_dataset()
    in_e = const["expiry_idx"].to_numpy() == e
    forward = float(const["forward"].to_numpy()[in_e][0])
    tau = float(const["tau_expiry"].to_numpy()[e])
    quotes = result.quotes
    discount = float(np.unique(quotes["discount_factor"].to_numpy()[
        np.isin(quotes["quote"].to_numpy(), const["quote"].to_numpy()[in_e])])[0])
    pricing = get_pricing_model(result.idata.attrs["model"], **result.spec.get("model_settings", {}))
    params = pricing.expiry_draws(posterior, e, max_draws)
    shape = (params[0].shape[0], strike.size)
    outputs = _greeks_function(pricing)(
        np.full(shape, forward), np.broadcast_to(strike, shape).copy(), np.full(shape, tau), np.zeros(shape),
        cp, np.full(strike.size, discount), *params,
    )
    data = {name: (("sample", "instrument"), np.asarray(v)) for name, v in zip(GREEKS, outputs, strict=True)}
    return xr.Dataset(
        data,
        coords={"strike": ("instrument", strike), "cp": ("instrument", cp.astype(np.int8))},
        attrs={"expiry": labels[e], "forward": forward, "tau": tau, "discount_factor": discount,
               "vega_definition": "parallel implied-vol shift" if pricing.output == "iv" else "none (price model)"},
    )


def greeks_summary(draws: xr.Dataset) -> pd.DataFrame:
    """Mean, sd and 94% equal-tailed interval of each greek per instrument (one row per instrument x greek)."""
    rows = []
    lo_q, hi_q = (1 - INTERVAL_PROB) / 2, (1 + INTERVAL_PROB) / 2
    for i in range(draws.sizes["instrument"]):
        for name in GREEKS:
            values = draws[name].isel(instrument=i).to_numpy()
            rows.append({"expiry": draws.attrs["expiry"], "strike": float(draws["strike"][i]),
                         "cp": int(draws["cp"][i]), "greek": name, "mean": values.mean(), "sd": values.std(),
                         "eti_3%": np.quantile(values, lo_q), "eti_97%": np.quantile(values, hi_q)})
    return pd.DataFrame(rows)


def atm_greeks_table(result: CalibrationResult) -> pd.DataFrame:
    """Greeks with intervals of the at-the-money-forward call and put of every fitted expiry."""
    const = result.idata["constant_data"].to_dataset()
    tables = []
    for e in range(result.posterior.sizes[EXPIRY_DIM]):
        forward = float(const["forward"].to_numpy()[const["expiry_idx"].to_numpy() == e][0])
        tables.append(greeks_summary(posterior_greeks(result, e, [forward, forward], [1, -1])))
    return pd.concat(tables, ignore_index=True)
