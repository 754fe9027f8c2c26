"""bayescal's compilation mode: applied inside the block (to PyMC's and nutpie's compiles too), restored after;
its cache of rewritten graphs across processes."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
import xarray as xr
from pytensor.compile import mode as pytensor_mode

from bayescal import compilation as compilation_module
from bayescal.compilation import (
    EXCLUDED_REWRITES,
    FUNCTION_CACHE_ENV,
    compilation,
    compile_mode,
    function_cache_events,
    recipe_function,
)
from bayescal.kernels.heston import heston_norm_price


def test_mode_swapped_inside_block_and_restored():
    numba_before = pytensor_mode.predefined_modes["NUMBA"]
    config_before = pytensor.config.mode
    with compilation():
        # nutpie asks for "NUMBA" by name, PyMC and pytensor.function with no mode use config.mode
        for mode in (pytensor_mode.get_mode("NUMBA"), pytensor_mode.get_mode(None)):
            assert set(EXCLUDED_REWRITES) <= set(mode.provided_optimizer.exclude)
    assert pytensor_mode.predefined_modes["NUMBA"] is numba_before
    assert pytensor.config.mode == config_before
    assert not set(EXCLUDED_REWRITES) & set(pytensor_mode.get_mode("NUMBA").provided_optimizer.exclude)


def test_mode_restored_after_an_error():
    numba_before = pytensor_mode.predefined_modes["NUMBA"]
    try:
        with compilation():
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert pytensor_mode.predefined_modes["NUMBA"] is numba_before


def test_excluded_rewrite_changes_no_value_or_gradient():
    """The Heston price and its gradient under bayescal's mode equal the default numba mode's."""
    k = pt.vector("k")
    tau = pt.vector("tau")
    params = [pt.scalar(n) for n in ("v0", "kappa", "theta", "xi", "rho")]
    price = heston_norm_price(k, tau, pt.ones_like(k), *params)
    outputs = [price, *pt.grad(pt.sum(price), params)]
    args = (np.linspace(-0.5, 0.5, 11), np.full(11, 0.25), 0.04, 1.5, 0.05, 0.8, -0.6)
    reference = pytensor.function([k, tau, *params], outputs, mode="NUMBA")(*args)
    ours = pytensor.function([k, tau, *params], outputs, mode=compile_mode())(*args)
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ours[1:], reference[1:], rtol=1e-10, atol=1e-14)


def test_stop_gradient_survives_pymc_pregrad_rewrites():
    """PyMC canonicalizes a log density before differentiating it, which removes pytensor's
    ``disconnected_grad`` (a ViewOp): the gradient of ``cut(x**2) + x`` at 3 is then 7, not 1.
    bayescal's ``stop_gradient`` stays cut there and compiles as the identity in every backend."""
    from pymc.pytensorf import rewrite_pregrad
    from pytensor.gradient import disconnected_grad

    from bayescal.kernels._gradient import stop_gradient

    x = pt.scalar("x")
    grads = {cut.__name__: pytensor.function([x], pt.grad(rewrite_pregrad(cut(x**2) + x), x))(3.0)
             for cut in (disconnected_grad, stop_gradient)}
    assert grads == {"disconnected_grad": 7.0, "stop_gradient": 1.0}
    for mode in ("NUMBA", "FAST_RUN", "FAST_COMPILE"):
        value, grad = pytensor.function([x], [stop_gradient(x**2) * 2, pt.grad(stop_gradient(x**2) * x, x)],
                                        mode=mode)(3.0)
        assert (value, grad) == (18.0, 9.0)


# --- cross-process cache of rewritten graphs ---------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "functions"
    monkeypatch.setenv(FUNCTION_CACHE_ENV, str(folder))
    function_cache_events.clear()
    compilation_module._recent_recipes.clear()
    return folder


HESTON_SCRIPT = textwrap.dedent("""
    import numpy as np, pytensor, pytensor.tensor as pt
    from bayescal.compilation import compile_mode, function_cache_events
    from bayescal.kernels.heston import heston_norm_price
    k, tau = pt.vector("k"), pt.vector("tau")
    params = [pt.scalar(n) for n in ("v0", "kappa", "theta", "xi", "rho")]
    price = heston_norm_price(k, tau, pt.ones_like(k), *params)
    f = pytensor.function([k, tau, *params], [price, *pt.grad(pt.sum(price), params)], mode=compile_mode())
    out = f(np.linspace(-0.5, 0.5, 5), np.full(5, 0.25), 0.04, 1.5, 0.05, 0.8, -0.6)
    print(dict(function_cache_events))
    print(repr(np.concatenate([np.atleast_1d(o) for o in out]).tolist()))
""")


def test_rewritten_graph_is_reused_by_a_fresh_process(cache_dir):
    """The Heston price + gradient graph (with its OpFromGraph ops) is stored by one process and loaded,
    not rewritten, by the next, which computes the same values."""
    runs = [subprocess.run([sys.executable, "-c", HESTON_SCRIPT], capture_output=True, text=True, check=True,
                           env={**os.environ, FUNCTION_CACHE_ENV: str(cache_dir)}).stdout.splitlines()
            for _ in range(2)]
    assert runs[0][0] == "{'miss': 1}" and runs[1][0] == "{'hit': 1}"
    assert len(list(cache_dir.glob("*.pkl"))) == 1
    assert runs[0][1] == runs[1][1]  # bit-identical values


def test_loaded_function_reads_and_updates_the_callers_shared_variables(cache_dir):
    scale = pytensor.shared(np.array([1.0, 2.0]), name="scale")
    counter = pytensor.shared(np.int64(0), name="counter")
    x = pt.vector("x")

    def build():
        return pytensor.function([x], (x * scale).sum(), updates={counter: counter + 1}, mode=compile_mode())

    first, second = build(), build()
    assert dict(function_cache_events) == {"miss": 1, "hit": 1}
    assert second(np.ones(2)) == first(np.ones(2)) == 3.0
    scale.set_value(np.array([10.0, 20.0]))
    assert second(np.ones(2)) == 30.0
    assert counter.get_value() == 3  # both functions advance the caller's counter


def test_different_graphs_get_different_entries(cache_dir):
    """Constants, ops, types and op attributes (a cast's target dtype) all enter the key."""
    x = pt.vector("x")
    m = pt.matrix("m")
    graphs = [([x], pt.exp(2.0 * x)), ([x], pt.exp(3.0 * x)), ([x], pt.log(2.0 * x)), ([m], pt.exp(2.0 * m)),
              ([x], pt.cast(x, "float32")), ([x], pt.cast(x, "int64")), ([x], pt.gt(x, 0.0)), ([x], pt.lt(x, 0.0))]
    outputs = [pytensor.function(inputs, out, mode=compile_mode()) for inputs, out in graphs]
    assert function_cache_events["miss"] == len(graphs) and len(list(cache_dir.glob("*.pkl"))) == len(graphs)
    again = pytensor.function([x], pt.cast(x, "int64"), mode=compile_mode())
    assert function_cache_events["hit"] == 1
    assert again(np.array([2.7])).dtype == np.int64 and outputs[4](np.array([2.7])).dtype == np.float32


def test_damaged_entry_is_compiled_again_and_replaced(cache_dir):
    x = pt.vector("x")
    pytensor.function([x], pt.exp(x), mode=compile_mode())
    (entry,) = cache_dir.glob("*.pkl")
    entry.write_bytes(b"not a pickle")
    f = pytensor.function([x], pt.exp(x), mode=compile_mode())
    assert function_cache_events["load_failed"] == 1 and f(np.zeros(1))[0] == 1.0
    pytensor.function([x], pt.exp(x), mode=compile_mode())
    assert function_cache_events["hit"] == 1


def test_cache_can_be_switched_off(cache_dir, monkeypatch):
    monkeypatch.setenv(FUNCTION_CACHE_ENV, "off")
    x = pt.vector("x")
    assert pytensor.function([x], pt.exp(x), mode=compile_mode())(np.zeros(1))[0] == 1.0
    assert dict(function_cache_events) == {"off": 1} and not cache_dir.exists()
    assert compilation_module.function_cache_dir() is None


def test_cache_is_pruned_least_recently_used_first(cache_dir, monkeypatch):
    x = pt.vector("x")
    pytensor.function([x], pt.exp(x), mode=compile_mode())
    pytensor.function([x], pt.log(x), mode=compile_mode())
    exp_entry = min(cache_dir.glob("*.pkl"), key=lambda p: p.stat().st_mtime)
    os.utime(exp_entry, (0, 0))  # long unused
    size = max(p.stat().st_size for p in cache_dir.glob("*.pkl"))
    monkeypatch.setattr(compilation_module, "FUNCTION_CACHE_MAX_BYTES", 2 * size + size // 2)
    pytensor.function([x], pt.sin(x), mode=compile_mode())
    assert len(list(cache_dir.glob("*.pkl"))) == 2 and not exp_entry.exists()


def test_op_attribute_descriptions_are_never_lossy():
    """Objects are described by their whole pickled state: partials with other arguments, or objects with
    other attribute values, never share a description (a shared one would load the wrong function)."""
    import functools
    import operator

    from bayescal.compilation import _Unkeyable, _value_key

    assert _value_key(functools.partial(operator.add, 1)) != _value_key(functools.partial(operator.add, 2))
    assert _value_key(Rule(2)) != _value_key(Rule(3)) and _value_key(Rule(2)) == _value_key(Rule(2))
    with pytest.raises(_Unkeyable):  # a local function has no name another process could match
        _value_key(lambda x: x)


class Rule:
    def __init__(self, power):
        self.power = power


GRID_SCRIPT = textwrap.dedent("""
    import numpy as np
    from bayescal.compilation import function_cache_events
    from bayescal.pricing_models import get_pricing_model
    draws = [np.array([[v]]) for v in (0.04, 1.5, 0.05, 0.8, -0.6)]
    out = get_pricing_model("heston")._grid_function(np.linspace(-0.5, 0.5, 5), 0.25, np.ones(5), *draws)
    print(dict(function_cache_events))
    print(repr(np.asarray(out).tolist()))
""")


def test_pricing_function_is_loaded_by_recipe_in_a_fresh_process(cache_dir):
    """A registered model's grid function is stored by recipe (model, settings, purpose) by one process and
    loaded by the next without building its graph; the values are bit-identical."""
    runs = [subprocess.run([sys.executable, "-c", GRID_SCRIPT], capture_output=True, text=True, check=True,
                           env={**os.environ, FUNCTION_CACHE_ENV: str(cache_dir)}).stdout.splitlines()
            for _ in range(2)]
    assert runs[0][0] == "{'miss': 1, 'recipe_miss': 1}" and runs[1][0] == "{'recipe_hit': 1}"
    assert runs[0][1] == runs[1][1]


def test_recipe_key_holds_the_recipe_and_the_source(cache_dir, monkeypatch):
    x = pt.vector("x")
    builds = []

    def build():
        builds.append(1)
        return pytensor.function([x], pt.exp(x), mode=compile_mode())

    recipe_function(("exp", 1), build)
    assert recipe_function(("exp", 1), build)(np.zeros(1))[0] == 1.0  # kept in memory
    compilation_module._recent_recipes.clear()
    assert recipe_function(("exp", 1), build)(np.zeros(1))[0] == 1.0  # loaded from the folder
    assert len(builds) == 1 and function_cache_events["recipe_hit"] == 2
    recipe_function(("exp", 2), build)  # another recipe
    monkeypatch.setattr(compilation_module, "source_fingerprint", lambda: "edited source")
    recipe_function(("exp", 1), build)  # same recipe, other code
    assert len(builds) == 3 and function_cache_events["recipe_miss"] == 3


def test_recipe_functions_with_shared_variables_are_built_every_time(cache_dir):
    scale = pytensor.shared(np.array([1.0, 2.0]), name="scale")
    x = pt.vector("x")
    first = recipe_function(("scaled",), lambda: pytensor.function([x], (x * scale).sum(), mode=compile_mode()))
    second = recipe_function(("scaled",), lambda: pytensor.function([x], (x * scale).sum(), mode=compile_mode()))
    assert function_cache_events["recipe_uncacheable"] == 2 and function_cache_events["recipe_hit"] == 0
    scale.set_value(np.array([10.0, 20.0]))
    assert first(np.ones(2)) == second(np.ones(2)) == 30.0


MAP_SCRIPT = textwrap.dedent("""
    from bayescal.compilation import function_cache_events
    from bayescal.inference import fit
    from bayescal.market import bundled_demo_chain, read_chain
    from bayescal.spec import load_spec
    result = fit(load_spec("svi").with_fit(method="map", draws=100, chains=2), read_chain(bundled_demo_chain()),
                 progressbar=False, arbitrage_check=False)
    print(function_cache_events["recipe_miss"], function_cache_events["recipe_hit"])
    print(repr(result.posterior["svi_vmin"].to_numpy().tolist()))
""")


def test_map_log_density_is_loaded_by_model_recipe_in_a_fresh_process(cache_dir):
    """MAP's log density + gradient is cached by what the model is built from (spec and quotes): a second
    process skips PyMC's log-density construction and finds the same posterior, bit for bit."""
    runs = [subprocess.run([sys.executable, "-c", MAP_SCRIPT], capture_output=True, text=True, check=True,
                           env={**os.environ, FUNCTION_CACHE_ENV: str(cache_dir)}).stdout.splitlines()
            for _ in range(2)]
    assert runs[0][0] == "1 0" and runs[1][0] == "0 1"
    assert runs[0][1] == runs[1][1]


def test_dataset_descriptions_hold_every_value():
    """Recipes hold datasets (a fit's quotes): any changed value, name or attribute changes the key;
    object arrays are described by content, not by their buffers of pointers."""
    def quotes(strike=2.0, label="BTC-1", attrs=None):
        return xr.Dataset({"strike": ("quote", [1.0, strike]), "instrument": ("quote", np.array(["a", label], object))},
                          coords={"quote": [0, 1]}, attrs=attrs or {})

    key = compilation_module._value_key
    assert key(quotes()) == key(quotes())  # equal content, separately built object arrays
    assert len({repr(key(q)) for q in (quotes(), quotes(strike=2.5), quotes(label="BTC-2"),
                                       quotes(attrs={"source": "x"}), quotes().rename(strike="k"))}) == 5


def test_recipes_only_trust_bayescal_code():
    """Recipes key bayescal's code by its source fingerprint: classes from elsewhere (a base or a subclass
    outside bayescal) must not be cached by recipe."""
    from bayescal.likelihoods import IVLikelihood
    from bayescal.pricing_models import get_pricing_model
    from bayescal.spec import load_spec

    class UserLikelihood(IVLikelihood):
        pass

    assert compilation_module.defined_in_bayescal(get_pricing_model("heston"), load_spec("heston").likelihood)
    assert not compilation_module.defined_in_bayescal(UserLikelihood)
    assert not compilation_module.defined_in_bayescal(compilation_module.CachingNumbaLinker())  # a PyTensor base


def test_storing_a_function_leaves_the_callers_graph_untouched(cache_dir):
    """PyTensor's Apply.__getstate__ deletes a node's cached ufunc from the live node; the cache pickles a
    copy of the tag instead, so storing a function never changes the graph it came from."""
    x = pt.vector("x")
    f = pytensor.function([x], pt.exp(x) + 1.0, mode=compile_mode())
    node = f.maker.fgraph.toposort()[0]
    node.tag.ufunc = np.exp
    blob = compilation_module._pickle_maker(f.maker)
    assert node.tag.ufunc is np.exp
    loaded = pickle.loads(blob)
    assert all("ufunc" not in vars(n.tag) for n in loaded.fgraph.apply_nodes)
    assert loaded.create()(np.zeros(2)).tolist() == [2.0, 2.0]


def test_recipe_functions_in_memory_are_bounded(cache_dir, monkeypatch):
    monkeypatch.setattr(compilation_module, "RECENT_RECIPES", 2)
    x = pt.vector("x")
    functions = [recipe_function(("power", p), lambda p=p: pytensor.function([x], x**p, mode=compile_mode()))
                 for p in (1.0, 2.0, 3.0)]
    assert len(compilation_module._recent_recipes) == 2
    assert recipe_function(("power", 3.0), lambda: None) is functions[2]  # still in memory
    again = recipe_function(("power", 1.0), lambda: None)  # evicted: loaded from the folder
    assert again is not functions[0] and again(np.array([2.0]))[0] == 2.0
