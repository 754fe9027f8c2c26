"""How bayescal compiles PyTensor graphs: one mode for every fit, prediction and check.

The pricing graphs (a Fourier surface kernel with its gradient, an in-graph implied-vol inversion)
are large, and PyTensor spends most of their compilation time in graph rewriting, not in numba.
One canonicalisation, ``local_greedy_distributor`` (it factors products out of sums to save
multiplications), was 45% of that time on the Heston surface graph of the 2025-12-30 BTC chain:
log-density + gradient compiled in 14.5 s with it and 8.1 s without, with the same log density to the
last digit and the same cost per gradient evaluation (498 and 488 us). It is left out.

:func:`compilation` applies the mode to everything compiled inside the block, including compilations
inside PyMC, pymc-extras and nutpie (nutpie asks PyTensor for the ``"NUMBA"`` mode by name, so the
block swaps that entry of PyTensor's mode table and restores it on exit).

Rewritten graphs are cached across processes. PyTensor caches numba's machine code on disk but
rewrites every graph again in every process: a Heston MAP + Laplace fit of the BTC chain in a fresh
process took 26.0 s without this cache and 19.5 s with it (Pathfinder 44.0 and 33.9 s, NUTS 72.9 and
68.6 s; ``docs/benchmarks.md``).
The mode's function maker (:func:`_cached_function_maker`) keys each compilation by the *unrewritten*
graph (:func:`graph_key`: every node's op and its properties, the wiring, the types, the constants'
and shared variables' values, the inputs' settings, the mode and the PyTensor / numba versions) and
pickles the rewritten ``FunctionMaker`` under that key in :func:`function_cache_dir`. A later
compilation of an equal graph, in any process, loads it and only links it (numba's disk cache makes
that fast). The loaded function reads and updates the caller's shared variables, as a freshly compiled
one does. Graphs with an op whose properties cannot be keyed reproducibly are compiled as usual. Set
``BAYESCAL_FUNCTION_CACHE=off`` to disable the cache, or to a folder to move it.

Building and keying a large graph still costs time before the cache is asked (the Heston kernel with
its first and second k-derivatives: 1.6 s of graph building and 0.5 s of keying). Functions that a
short description determines completely, such as a pricing model's data-independent grid, check and
greeks functions, are therefore also cached by that description (:func:`recipe_function`): the
description, a fingerprint of bayescal's own source files and the package versions and flags key the
compiled function, and a hit skips building the graph altogether.

Compiled objects that cannot be pickled, such as nutpie's compiled model (numba C callbacks), are kept
in memory only, under the same kind of recipe (:func:`recipe_object`): a refit of the same model on the
same quotes in one process reuses them.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import functools
import hashlib
import inspect
import io
import logging
import os
import pickle
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytensor
import xarray as xr
from pytensor.compile import mode as pytensor_mode
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.io import SymbolicInput, SymbolicOutput
from pytensor.compile.maker import FunctionMaker
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.op import Op
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.graph.traversal import toposort
from pytensor.graph.type import Type
from pytensor.link.numba.cache import hash_from_pickle_dump
from pytensor.link.numba.linker import NumbaLinker
from pytensor.tensor.utils import hash_from_ndarray

from bayescal.atomic import write_bytes_atomic

EXCLUDED_REWRITES = ("local_greedy_distributor",)
#: environment variable: ``off`` disables the cross-process cache of rewritten graphs, a path moves it
FUNCTION_CACHE_ENV = "BAYESCAL_FUNCTION_CACHE"
#: bump when the layout of cached files changes
_CACHE_FORMAT = 1
#: the cache folder is pruned to this size after each store, least recently used entries first
FUNCTION_CACHE_MAX_BYTES = 1 << 30

_log = logging.getLogger(__name__)

#: what the function cache did in this process: ``hit``, ``miss`` (compiled and stored), ``uncacheable``
#: (compiled, graph not keyable), ``load_failed``, ``store_failed``; for :func:`recipe_function`
#: ``recipe_hit``, ``recipe_miss`` and ``recipe_uncacheable``
function_cache_events: Counter[str] = Counter()


class CachingNumbaLinker(NumbaLinker):
    """PyTensor's numba linker; a mode with this linker compiles through :func:`_cached_function_maker`.

    The marker is the linker, not a ``Mode`` subclass, because PyMC's ``compile`` rebuilds the mode it
    is given as ``Mode(linker=mode.linker, optimizer=...)``: the linker object survives, the mode's
    class does not. ``Mode.function_maker`` is wrapped once (:func:`_install_function_maker`) to pick
    the cached maker for modes with this linker and PyTensor's own for every other mode.
    """


def _install_function_maker() -> None:
    original = pytensor_mode.Mode.function_maker
    if getattr(original.fget, "_bayescal", False):
        return

    def function_maker(mode):
        return _cached_function_maker if isinstance(mode.linker, CachingNumbaLinker) else original.fget(mode)

    function_maker._bayescal = True
    pytensor_mode.Mode.function_maker = property(function_maker, doc=original.__doc__)


def compile_mode() -> pytensor_mode.Mode:
    """PyTensor's numba mode without the rewrites in :data:`EXCLUDED_REWRITES`, with rewritten graphs
    cached across processes (module docstring)."""
    _install_function_maker()
    query = pytensor_mode.NUMBA.provided_optimizer.excluding(*EXCLUDED_REWRITES)
    return pytensor_mode.Mode(linker=CachingNumbaLinker(), optimizer=query)


def function_cache_dir() -> Path | None:
    """Folder of the cached rewritten graphs (``None``: cache off, see :data:`FUNCTION_CACHE_ENV`).

    Default: ``bayescal-functions`` in PyTensor's compile directory (``pytensor.config.compiledir``).
    """
    setting = os.environ.get(FUNCTION_CACHE_ENV, "").strip()
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    return Path(setting) if setting else Path(pytensor.config.compiledir) / "bayescal-functions"


#: PyTensor flags that change what rewriting or linking makes of a graph (part of every key)
_REWRITE_FLAGS = ("allow_gc", "cast_policy", "check_input", "floatX", "numba__cache", "numba__fastmath",
                  "on_opt_error", "optdb__max_use_ratio", "optdb__position_cutoff", "optimizer_excluding",
                  "optimizer_including", "optimizer_requiring", "scan__allow_gc", "scan__allow_output_prealloc",
                  "tensor__cmp_sloppy", "tensor__insert_inplace_optimizer_validate_nb", "vm__lazy")


class _Unkeyable(Exception):
    """A graph part without a reproducible key (compile it without the cache)."""


def _value_key(value: Any) -> Any:
    """A reproducible description of an op property or attribute; raises _Unkeyable where there is none.

    Descriptions are exhaustive, never lossy: an object is described by all that pickling it would store
    (its class and whole state), so two values with equal descriptions behave alike (a miss is possible,
    a false hit is not).
    """
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return repr(value)
    if isinstance(value, np.ndarray):
        return ("ndarray", _data_key(value))
    if isinstance(value, xr.Dataset):
        return ("dataset", *((name, var.dims, _data_key(var.to_numpy()), _value_key(var.attrs))
                             for name, var in sorted({**value.coords, **value.data_vars}.items())),
                _value_key(value.attrs))
    if isinstance(value, np.generic | np.dtype):
        return ("numpy", repr(value))
    if isinstance(value, tuple | list):
        return (type(value).__name__, *(_value_key(v) for v in value))
    if isinstance(value, set | frozenset):
        return (type(value).__name__, *sorted(repr(_value_key(v)) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted((repr(_value_key(k)), _value_key(v)) for k, v in value.items()))
    if isinstance(value, Op):
        return _op_key(value)
    if isinstance(value, Variable):
        raise _Unkeyable(f"variable {value} in an op's attributes")
    if isinstance(value, Type):
        text = repr(value)
        if " at 0x" in text:
            raise _Unkeyable(text)
        return ("type", text)
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        name = f"{value.__module__}.{value.__qualname__}"
        if "<" in name:  # lambdas and local functions have no reproducible name
            raise _Unkeyable(name)
        return ("named", name)
    # any other object: what pickle needs to rebuild it (its class and whole state; e.g. a
    # functools.partial's function and arguments, which are not in its __dict__)
    try:
        reduced = value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    except Exception as why:
        raise _Unkeyable(f"{type(value).__qualname__}: {why}") from why
    if isinstance(reduced, str):  # a module-level singleton, pickled by name
        return ("global", _value_key(type(value)), reduced)
    return ("object", *(_value_key(list(x) if isinstance(x, Iterator) else x) for x in reduced))


def _op_key(op: Op) -> tuple:
    if isinstance(op, OpFromGraph):  # equal when their inner graphs and inlining are (OpFromGraph.__eq__)
        inner: list[Any] = []
        _walk(list(op.fgraph.inputs), list(op.fgraph.outputs), inner)
        return ("OpFromGraph", _value_key(type(op)), op.is_inline, tuple(inner))
    props = getattr(op, "__props__", None)
    if props is None:  # e.g. scalar ops: the class and every attribute
        return ("op", _value_key(type(op)), _value_key(vars(op)))
    return ("op", _value_key(type(op)), *((p, _value_key(getattr(op, p))) for p in props))


def _query_key(query: Any) -> tuple:
    """The rewrites a mode applies: its query's tags (extra rewrite objects are not keyable)."""
    if not isinstance(query, RewriteDatabaseQuery) or query.extra_rewrites:
        raise _Unkeyable(f"rewriter {query}")
    return ("query", tuple(sorted(query.include)), tuple(sorted(query.exclude)), tuple(sorted(query.require)),
            repr(query.position_cutoff), *((name, _query_key(sub)) for name, sub in sorted(query.subquery.items())))


def _data_key(data: Any) -> str:
    if isinstance(data, np.ndarray) and data.dtype != object:  # an object array's buffer holds pointers
        return hash_from_ndarray(data)
    return hash_from_pickle_dump(data)


def _walk(inputs: list[Variable], outputs: list[Variable], parts: list[Any]) -> None:
    """Append the structure of the graph from ``inputs`` to ``outputs`` to ``parts``: each node's op key,
    the positions of its inputs and its output types; constants by value. Raises _Unkeyable."""
    ids = {var: i for i, var in enumerate(inputs)}

    def position(var: Variable, what: str) -> int:
        if var not in ids:  # a constant, keyed by value; anything else must have been computed already
            if not isinstance(var, Constant):
                raise _Unkeyable(f"{what} {var} is neither an input, computed nor constant")
            parts.append(("constant", str(var.type), _data_key(var.data)))
            ids[var] = len(ids)
        return ids[var]

    for node in toposort(outputs, blockers=inputs):
        wiring = tuple(position(var, "graph input") for var in node.inputs)
        parts.append((_op_key(node.op), wiring, tuple(str(o.type) for o in node.outputs)))
        for out in node.outputs:
            ids[out] = len(ids)
    for var in outputs:
        parts.append(("output", position(var, "output")))


def _compiler_key(mode: pytensor_mode.Mode) -> tuple:
    """What compiles a graph, for every key: the cache format, PyTensor and numba versions, the mode's linker
    and rewrite query and the PyTensor flags in :data:`_REWRITE_FLAGS`. Raises _Unkeyable."""
    flags = tuple((name, str(getattr(pytensor.config, name))) for name in _REWRITE_FLAGS)
    return (_CACHE_FORMAT, pytensor.__version__, numba.__version__, type(mode.linker).__qualname__,
            _query_key(mode.provided_optimizer), flags)


def graph_key(inputs: Sequence[SymbolicInput], outputs: Sequence[Any], mode: pytensor_mode.Mode,
              settings: dict[str, Any]) -> str | None:
    """Key of one compilation: equal keys compile to equal functions (``None``: not keyable).

    Parameters
    ----------
    inputs : sequence of pytensor.compile.io.SymbolicInput
        The ``FunctionMaker``'s inputs (explicit ones, then shared variables with their containers).
    outputs : sequence of Variable or SymbolicOutput
    mode : pytensor.compile.mode.Mode
    settings : dict
        The ``FunctionMaker``'s other arguments (``accept_inplace``, ``on_unused_input``, ...).

    Returns
    -------
    str or None
        sha256 of the graph's structure (ops with their properties, wiring, types), the values of its
        constants and shared variables, the inputs' settings, the mode's linker and rewrite query, the
        PyTensor and numba versions and the relevant PyTensor flags; ``None`` when some op or value has
        no reproducible description (e.g. a lambda or a local class among an op's attributes).
    """
    if not isinstance(outputs, list | tuple):
        outputs = [outputs]
    try:
        parts: list[Any] = [*_compiler_key(mode), _value_key(settings)]
        for i, inp in enumerate(inputs):
            value = inp.value
            if value is not None and hasattr(value, "storage"):  # a shared variable's container
                value = value.storage[0]
            parts.append(("input", i, str(inp.variable.type), inp.name, inp.shared, inp.mutable, inp.borrow,
                          inp.implicit, inp.update is not None, None if value is None else _data_key(value)))
        out_vars = [o.variable if isinstance(o, SymbolicOutput) else o for o in outputs]
        updates = [inp.update for inp in inputs if inp.update is not None]
        _walk([inp.variable for inp in inputs], [*out_vars, *updates], parts)
        parts.append(("borrow", *(getattr(o, "borrow", False) for o in outputs)))
    except _Unkeyable as why:
        _log.debug("function cache: graph not keyable: %s", why)
        return None
    return hashlib.sha256(repr(parts).encode()).hexdigest()


#: OpFromGraph's caches of its gradient ops: local functions that do not pickle, and not needed once a
#: graph is compiled (an unpickled op rebuilds them on demand)
_OFG_GRADIENT_CACHES = {"_lop_op_cache": dict, "_rop_op_cache": lambda: None}


def _op_from_graph_without_caches(cls: type, state: dict[str, Any]) -> OpFromGraph:
    op = cls.__new__(cls)
    op.__dict__.update(state)
    for name, empty in _OFG_GRADIENT_CACHES.items():
        setattr(op, name, empty())
    return op


class _MakerPickler(pickle.Pickler):
    """Pickles OpFromGraph ops without their gradient caches, and nodes without their cached ufuncs.

    PyTensor's ``Apply.__getstate__`` drops a node's ``tag.ufunc`` (numpy ufuncs do not pickle) by
    deleting it from the live node's tag, so pickling a maker would change the caller's graph; here
    the node is pickled with a copy of its tag instead.
    """

    def reducer_override(self, obj):
        if isinstance(obj, OpFromGraph):
            state = {k: v for k, v in vars(obj).items() if k not in _OFG_GRADIENT_CACHES}
            return _op_from_graph_without_caches, (type(obj), state)
        if isinstance(obj, Apply) and "ufunc" in vars(obj.tag):
            tag = copy.copy(obj.tag)
            del tag.ufunc
            return copyreg.__newobj__, (type(obj),), {**vars(obj), "tag": tag}
        return NotImplemented


def _pickle_maker(maker: FunctionMaker) -> bytes:
    buffer = io.BytesIO()
    _MakerPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(maker)
    return buffer.getvalue()


def _prune(folder: Path, max_bytes: int) -> None:
    """Delete the least recently used entries of ``folder`` until its entries total ``max_bytes`` or less."""
    entries = []
    for path in folder.glob("*.pkl"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed by another process
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


def _load_maker(path: Path) -> FunctionMaker | None:
    """The maker stored at ``path``, or ``None`` (absent, or damaged: then it is recompiled and replaced)."""
    if not path.exists():
        return None
    try:
        maker = pickle.loads(path.read_bytes())
        if not isinstance(maker, FunctionMaker):
            raise TypeError(f"a {type(maker).__name__}, not a FunctionMaker")
    except Exception as why:
        _log.warning("function cache: could not load %s (%s); compiling again", path, why)
        function_cache_events["load_failed"] += 1
        return None
    os.utime(path)  # recently used: pruned last
    return maker


#: entries this process could not store (e.g. a graph with an op that does not pickle): not tried again
_unstorable: set[Path] = set()


def _store_maker(folder: Path, path: Path, maker: FunctionMaker, event: str) -> None:
    if path in _unstorable:
        function_cache_events["store_failed"] += 1
        return
    try:
        write_bytes_atomic(path, _pickle_maker(maker))
        function_cache_events[event] += 1
        _prune(folder, FUNCTION_CACHE_MAX_BYTES)
    except Exception as why:  # e.g. an op that does not pickle, or a read-only cache folder
        _log.debug("function cache: could not store %s (%s)", path, why)
        function_cache_events["store_failed"] += 1
        _unstorable.add(path)


def _cached_function_maker(inputs, outputs, mode, **kwargs) -> FunctionMaker:
    """``FunctionMaker(inputs, outputs, mode, **kwargs)``, loaded from the cache of rewritten graphs
    when an equal graph was compiled before (in any process), else built and stored there."""
    folder = function_cache_dir()
    key = None
    if folder is not None and not kwargs.get("profile"):
        settings = {k: v for k, v in kwargs.items() if k != "profile"}
        try:
            key = graph_key(inputs, outputs, mode, settings)
        except Exception as why:  # a key must never stop a compilation
            _log.warning("function cache: no key for this graph (%s: %s)", type(why).__name__, why)
    if key is None:
        function_cache_events["uncacheable" if folder is not None else "off"] += 1
        return FunctionMaker(inputs, outputs, mode, **kwargs)
    path = folder / f"{key}.pkl"
    maker = _load_maker(path)
    if maker is not None:
        if len(maker.inputs) == len(inputs):
            for cached, given in zip(maker.inputs, inputs, strict=True):
                cached.value = given.value  # the caller's containers: shared variables stay shared
            maker.required = [inp.value is None for inp in maker.inputs]
            function_cache_events["hit"] += 1
            return maker
        _log.warning("function cache: %s has %d inputs, expected %d; compiling again", path, len(maker.inputs),
                     len(inputs))
        function_cache_events["load_failed"] += 1
    maker = FunctionMaker(inputs, outputs, mode, **kwargs)
    _store_maker(folder, path, maker, "miss")
    return maker


#: functions kept in memory by :func:`recipe_function`, most recently used last (at most RECENT_RECIPES)
_recent_recipes: OrderedDict[str, Any] = OrderedDict()
RECENT_RECIPES = 8


@functools.cache
def source_fingerprint() -> str:
    """sha256 of bayescal's Python source files (their paths in the package and their bytes).

    Returns
    -------
    str
        64 hex digits; computed once per process (the files are read at the first call).
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def defined_in_bayescal(*objects: Any) -> bool:
    """Whether the objects' code is all bayescal's own, which :func:`source_fingerprint` covers.

    Parameters
    ----------
    *objects : object or type
        Instances (their class is checked) or classes.

    Returns
    -------
    bool
        True when every class, with all its bases (``builtins`` and ``abc`` aside), is defined in a
        ``bayescal`` module; False as soon as one is not (e.g. a user's subclass, or a PyTensor base).
    """
    for obj in objects:
        cls = obj if inspect.isclass(obj) else type(obj)
        if any(c.__module__ not in ("builtins", "abc") and c.__module__.split(".")[0] != "bayescal"
               for c in cls.__mro__):
            return False
    return True


def _recipe_key(recipe: Any) -> str:
    import pymc
    import pymc_extras

    parts = [*_compiler_key(compile_mode()), "recipe", _value_key(recipe), source_fingerprint(), np.__version__,
             pymc.__version__, pymc_extras.__version__]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def recipe_function(recipe: Any, build: Callable[[], Any], *, recipe_holds_shared_values: bool = False) -> Any:
    """The PyTensor function ``build()`` compiles, cached across processes under ``recipe``.

    For functions that ``recipe`` determines completely *given bayescal's source*: e.g. a registered
    pricing model's kernel compiled for a purpose, with the model's class, settings and the purpose as
    the recipe. The key adds :func:`source_fingerprint` (any change to bayescal's code is a miss), the
    PyTensor, numba, numpy, PyMC and pymc-extras versions, :func:`compile_mode`'s rewrites and the
    PyTensor flags in :data:`_REWRITE_FLAGS`. A hit loads the stored ``FunctionMaker`` and links it,
    without building or keying the graph; the last :data:`RECENT_RECIPES` functions are also kept in
    memory, so a process asking again (a refit with another seed) gets the same function object.

    Parameters
    ----------
    recipe : object
        A description built of values (strings, numbers, tuples, dicts, arrays, datasets, bayescal
        objects); nothing whose behaviour depends on code outside bayescal, which is not in the
        fingerprint (check classes with :func:`defined_in_bayescal`).
    build : callable
        Builds and compiles the function (``pytensor.function``), e.g. with :func:`compile_mode`.
    recipe_holds_shared_values : bool
        True when ``recipe`` also determines the values of the function's shared variables (e.g. a
        model's data, keyed in the recipe). The function is then stored with those values, and a
        loaded one has its own copies: it does not see later ``set_value`` calls on the caller's
        variables and its updates do not reach them. False (default): functions with shared
        variables are built every time, their state belonging to the caller.

    Returns
    -------
    pytensor.compile.function.types.Function
        ``build()``'s function, or an equal one loaded from the cache (everything is built while the
        cache is off).
    """
    folder = function_cache_dir()
    if folder is None:
        return build()
    try:
        key = _recipe_key(recipe)
    except Exception as why:  # _Unkeyable, or anything else: a key must never stop a compilation
        _log.debug("function cache: recipe not keyable (%s: %s)", type(why).__name__, why)
        function_cache_events["recipe_uncacheable"] += 1
        return build()
    if key in _recent_recipes:  # loaded or built earlier in this process (e.g. refits with other seeds)
        _recent_recipes.move_to_end(key)
        function_cache_events["recipe_hit"] += 1
        return _recent_recipes[key]
    path = folder / f"recipe-{key}.pkl"
    maker = _load_maker(path)
    fn = None
    if maker is not None:
        try:
            fn = maker.create()
        except Exception as why:
            _log.warning("function cache: could not link %s (%s); compiling again", path, why)
            function_cache_events["load_failed"] += 1
        else:
            function_cache_events["recipe_hit"] += 1
    if fn is None:
        fn = build()
        shared = any(inp.shared or inp.implicit for inp in fn.maker.inputs)
        if any(inp.update is not None for inp in fn.maker.inputs) or (shared and not recipe_holds_shared_values):
            function_cache_events["recipe_uncacheable"] += 1
            return fn
        _store_maker(folder, path, fn.maker, "recipe_miss")
    _recent_recipes[key] = fn
    while len(_recent_recipes) > RECENT_RECIPES:
        _recent_recipes.popitem(last=False)
    return fn


#: objects kept in memory by :func:`recipe_object`, most recently used last (at most RECENT_RECIPES)
_recent_objects: OrderedDict[str, Any] = OrderedDict()
_object_lock = threading.Lock()
#: per-thread policy of :func:`recipe_object`, set by :func:`object_cache`
_object_policy = threading.local()


def recipe_object(recipe: Any, build: Callable[[], Any]) -> Any:
    """The object ``build()`` makes, kept in memory under ``recipe`` for the rest of the process.

    For compiled objects that cannot be stored on disk, such as nutpie's compiled model (numba C
    callbacks around the log density): a later request with an equal recipe in the same process (the
    same model refitted with other draws, seeds or sampler settings; a batch's seed sweep; a benchmark's
    repeats) gets the same object without compiling it again. ``recipe`` is keyed as in
    :func:`recipe_function` (bayescal's source fingerprint and the library versions included); the last
    :data:`RECENT_RECIPES` objects are kept. :func:`object_cache` sets, per thread, whether new objects
    are kept and collects hit / miss events.

    Parameters
    ----------
    recipe : object
        As for :func:`recipe_function`: it must determine ``build()``'s result completely.
    build : callable
        Makes the object.

    Returns
    -------
    object
        ``build()``'s object, or the one an equal recipe made earlier in this process (always built
        while the cache is off or the recipe cannot be keyed).
    """
    events = getattr(_object_policy, "events", None)
    if function_cache_dir() is None:
        if events is not None:
            events.append("miss")
        return build()
    try:
        key = _recipe_key(("in-memory object", recipe))
    except Exception as why:  # as in recipe_function: a key must never stop a compilation
        _log.debug("function cache: recipe not keyable (%s: %s)", type(why).__name__, why)
        function_cache_events["object_uncacheable"] += 1
        return build()
    with _object_lock:
        obj = _recent_objects.get(key)
        if obj is not None:
            _recent_objects.move_to_end(key)
    if obj is not None:
        function_cache_events["object_hit"] += 1
        if events is not None:
            events.append("hit")
        return obj
    obj = build()
    function_cache_events["object_miss"] += 1
    if events is not None:
        events.append("miss")
    if getattr(_object_policy, "keep", True):
        with _object_lock:
            _recent_objects[key] = obj
            while len(_recent_objects) > RECENT_RECIPES:
                _recent_objects.popitem(last=False)
    return obj


@contextlib.contextmanager
def object_cache(*, keep: bool = True) -> Iterator[list[str]]:
    """Within the block, in this thread: :func:`recipe_object` keeps the objects it builds only if ``keep``
    (a compiled model holds memory; a batch keeps only models that other tasks share), and records
    ``"hit"`` / ``"miss"`` per request in the yielded list.

    Yields
    ------
    list of str
        The events, in order.
    """
    events: list[str] = []
    saved = getattr(_object_policy, "keep", True), getattr(_object_policy, "events", None)
    _object_policy.keep, _object_policy.events = keep, events
    try:
        yield events
    finally:
        _object_policy.keep, _object_policy.events = saved


def clear_recipe_objects() -> None:
    """Forget the objects :func:`recipe_object` keeps in this process."""
    with _object_lock:
        _recent_objects.clear()

@contextlib.contextmanager
def compilation() -> Iterator[None]:
    """Compile every PyTensor function created inside the block with :func:`compile_mode`.

    Also silences numba's "Cannot cache compiled function ... large global arrays" warning: the surface
    kernel's trigonometric weights are graph constants, and above about 1 MB (e.g. 700 SPX quotes x 96
    nodes) numba keeps such a function out of its on-disk cache and warns on every compile. The function
    is compiled and correct; only the cross-process cache is skipped.

    Inside the block, graph nodes are created without their creation stack trace
    (``traceback__limit = 0``) unless ``PYTENSOR_FLAGS`` sets that limit: extracting the stack for every
    node took about 1.3 s of a Heston Pathfinder fit on the BTC chain, and the traces only serve PyTensor's
    error messages.

    Not thread-safe: the block changes process-wide PyTensor settings (restored on exit).
    """
    from numba.core.errors import NumbaWarning

    mode = compile_mode()
    flags: dict[str, Any] = {"mode": mode}
    if "traceback__limit" not in os.environ.get("PYTENSOR_FLAGS", ""):
        flags["traceback__limit"] = 0
    saved = pytensor_mode.predefined_modes["NUMBA"]
    pytensor_mode.predefined_modes["NUMBA"] = mode
    try:
        with pytensor.config.change_flags(**flags), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Cannot cache compiled function", category=NumbaWarning)
            yield
    finally:
        pytensor_mode.predefined_modes["NUMBA"] = saved
