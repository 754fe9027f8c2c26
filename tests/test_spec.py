"""Every spec in models/ and prior set in priors/ loads and builds; malformed files list every problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from bayescal.errors import SpecError
from bayescal.inference import build_model
from bayescal.market import bundled_demo_chain, filter_quotes, read_chain, used_quotes
from bayescal.priors import load_prior_set
from bayescal.spec import load_spec

SPECS = sorted((REPO / "models").glob("*.toml"))
PRIOR_SETS = sorted((REPO / "priors").rglob("*.toml"))


def test_folders_are_not_empty():
    assert SPECS and PRIOR_SETS


@pytest.mark.parametrize("path", PRIOR_SETS, ids=lambda p: str(p.relative_to(REPO)))
def test_prior_sets_load_with_rationale(path: Path):
    prior_set = load_prior_set(path)
    assert prior_set.priors
    assert all(prior_set.rationale[k].strip() for k in prior_set.priors)
    assert load_prior_set(path).to_dict() == prior_set.to_dict()


@pytest.mark.parametrize("path", PRIOR_SETS, ids=lambda p: str(p.relative_to(REPO)))
def test_prior_supports_match_the_models(path: Path):
    """Each prior's support (the map sequential updating samples it through) lies in the support its model
    declares: positive -> log or an interval in [0, inf), unit -> inside [0, 1], correlation and signed_unit ->
    inside [-1, 1]."""
    from bayescal.pricing_models import REGISTRY
    from bayescal.priors import unconstrained_transform

    prior_set = load_prior_set(path)
    model = REGISTRY[prior_set.model]
    for name, support in model.supports.items():
        kind, lo, hi = unconstrained_transform(prior_set.priors[name])
        allowed = {"positive": kind == "log" or (kind == "interval" and lo >= 0.0),
                   "unit": kind == "interval" and 0.0 <= lo < hi <= 1.0,
                   "correlation": kind == "interval" and -1.0 <= lo < hi <= 1.0,
                   "signed_unit": kind == "interval" and -1.0 <= lo < hi <= 1.0,
                   "real": True}[support]
        assert allowed, (name, support, (kind, lo, hi))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_specs_load_and_build(path: Path):
    spec = load_spec(path)
    used = used_quotes(filter_quotes(read_chain(bundled_demo_chain()), spec.filters))
    model = build_model(spec, used)
    logp = model.compile_logp()(model.initial_point())
    assert float(logp) == pytest.approx(float(logp))  # finite, not NaN
    assert abs(float(logp)) < float("inf")
    assert len(spec.spec_id) == 16 and spec.spec_id == load_spec(path).spec_id


def test_malformed_spec_lists_every_problem(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'schema_version = 2\nmodel = "hestonn"\npriors = "svi/crypto"\ncolour = "red"\n'
        '[likelihood]\nkind = "normal_iv"\nspread = 1\n'
        '[filters]\ntau_min = 3\n'
        '[fit]\nchains = 0\ntarget_accept = 1.5\nmethod = "magic"\nadaptation = "dense"\ninit = "prior"\n'
    )
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    message = str(info.value)
    for fragment in ("schema_version must be 1", "model 'hestonn' unknown", "unknown top-level key(s) ['colour']",
                     "unknown setting(s) ['spread']", "unknown filter setting(s) ['tau_min']",
                     "fit.chains must be a positive integer", "fit.target_accept must be in (0, 1)",
                     "fit.method 'magic' unknown", "fit.adaptation 'dense' unknown", "fit.init 'prior' unknown"):
        assert fragment in message, fragment


def test_prior_set_must_cover_parameters(tmp_path: Path):
    priors = tmp_path / "p.toml"
    priors.write_text(
        'schema_version = 1\nmodel = "svi"\nname = "partial"\n'
        '[priors.vmin]\ndist = "LogNormal"\nkwargs = { mu = 0.0, sigma = 1.0 }\nrationale = "x"\n'
        '[priors.kappa]\ndist = "Gamma"\nkwargs = { alpha = 2.0, beta = 1.0 }\nrationale = "y"\n'
    )
    spec = tmp_path / "s.toml"
    spec.write_text(f'schema_version = 1\nmodel = "svi"\npriors = "{priors}"\n')
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert "lacks priors for ['m_scaled', 'sigma_obs', 'sigma_scaled', 'wing_left', 'wing_right']" in str(info.value)
    assert "unknown parameters ['kappa']" in str(info.value)


def test_prior_without_rationale_or_bad_distribution(tmp_path: Path):
    priors = tmp_path / "p.toml"
    priors.write_text(
        'schema_version = 1\nmodel = "svi"\nname = "bad"\n'
        '[priors.vmin]\ndist = "LogNormal"\nkwargs = { mu = 0.0, sigma = 1.0 }\n'
        '[priors.m_scaled]\ndist = "NoSuchDist"\nkwargs = { mu = 0.0 }\nrationale = "z"\n'
    )
    with pytest.raises(SpecError) as info:
        load_prior_set(priors)
    assert "priors.vmin: missing one-line rationale" in str(info.value)
    assert "priors.m_scaled" in str(info.value)


def test_likelihood_settings_are_validated_together():
    from bayescal.likelihoods import make_likelihood

    with pytest.raises(SpecError) as info:
        make_likelihood({"kind": "normal_iv", "spread_weight": -1.0, "price_to_iv": "newton", "noise_floor": "quote"})
    message = str(info.value)
    assert "noise_floor must be one of ['per_expiry', 'shared'] (got 'quote')" in message
    assert "spread_weight must be >= 0 (got -1.0)" in message
    assert "price_to_iv must be one of ['exact', 'vega_map'] (got 'newton')" in message
    assert make_likelihood({"kind": "student_t_iv", "price_to_iv": "vega_map"}).price_to_iv == "vega_map"
    assert make_likelihood({}).price_to_iv == "exact"


@pytest.mark.parametrize("name", ["heston", "sabr"])  # a price-output and an IV-output model
def test_pricing_graph_as_one_node_leaves_log_density_and_gradient_unchanged(name: str):
    """build_model(fold_pricing=True) wraps the pricing graph in one inlined OpFromGraph; values must not change."""
    import numpy as np
    from pymc.blocking import DictToArrayBijection
    from pytensor.compile.builders import OpFromGraph
    from pytensor.graph.traversal import ancestors

    spec = load_spec(name)
    used = used_quotes(filter_quotes(read_chain(bundled_demo_chain()), spec.filters))

    def value_and_gradient(model):
        fn = model.logp_dlogp_function(ravel_inputs=True)
        fn.set_extra_values({})
        x0 = DictToArrayBijection.map(model.initial_point()).data
        points = [x0, x0 + 0.05 * np.sin(np.arange(x0.size) + 1.0)]
        return [(float(v), np.asarray(g)) for v, g in (fn(x) for x in points)]

    wrapped = build_model(spec, used, fold_pricing=True)
    nodes = {v.owner for v in ancestors([wrapped.logp()]) if v.owner and isinstance(v.owner.op, OpFromGraph)}
    assert [node.op.name for node in nodes] == ["pricing"]
    plain = build_model(spec, used)
    assert not any(v.owner and isinstance(v.owner.op, OpFromGraph) for v in ancestors([plain.logp()]))
    for (v1, g1), (v2, g2) in zip(value_and_gradient(wrapped), value_and_gradient(plain), strict=True):
        assert np.isfinite(v1) and v1 == pytest.approx(v2, rel=1e-12)
        np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9 * np.abs(g2).max())


def test_shared_noise_floor_is_one_scalar_and_leaves_the_prior_set_untouched():
    """noise_floor = "shared": one sigma_obs for the chain; building must not store state on the spec's priors
    (a mutated Prior holds a local function and can no longer key the compiled-function cache)."""
    from bayescal.compilation import _value_key

    spec = load_spec("heston").with_likelihood(spread_weight=0.0, noise_floor="shared")
    before = _value_key(spec.prior_set)
    used = used_quotes(filter_quotes(read_chain(bundled_demo_chain()), spec.filters))
    model = build_model(spec, used)
    assert model["sigma_obs"].ndim == 0 and not model.named_vars_to_dims.get("sigma_obs")
    assert _value_key(spec.prior_set) == before
    per_expiry = build_model(load_spec("heston"), used)
    assert per_expiry["sigma_obs"].ndim == 1


def test_fit_with_a_shared_noise_floor_keeps_the_expiry_coordinate():
    """No posterior variable has an expiry dim then; the expiry labels must still reach greeks and reports."""
    from bayescal.greeks import atm_greeks_table
    from bayescal.inference import fit

    spec = load_spec("heston").with_fit(method="map", draws=100).with_likelihood(spread_weight=0.0,
                                                                               noise_floor="shared")
    result = fit(spec, read_chain(bundled_demo_chain()), progressbar=False, arbitrage_check=False)
    n_expiry = result.idata["constant_data"].sizes["expiry"]
    assert result.posterior["sigma_obs"].dims == ("chain", "draw")
    assert result.posterior.sizes["expiry"] == n_expiry > 1
    table = atm_greeks_table(result)
    assert table["expiry"].nunique() == n_expiry
    assert set(table["expiry"]) == {str(e) for e in result.posterior["expiry"].to_numpy()}
