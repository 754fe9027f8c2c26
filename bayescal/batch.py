"""Batch calibration on ``dask.distributed``: many (chain, spec) fits and sequential tracks in parallel.

``bayescal batch MANIFEST --out DIR`` reads a manifest (TOML or CSV, see :func:`load_manifest`) listing
calibrate tasks (one chain file x one spec) and track tasks (one :func:`bayescal.sequential.run_track`
over a list of files), and runs them on a Dask cluster: a :class:`distributed.LocalCluster` of worker
processes by default, or an existing cluster (``--scheduler ADDRESS``). ``--workers 0`` runs the tasks one
after another in the calling process (no Dask), which is the serial reference.

Output store (``DIR``)::

    results/<task_id>.nc        one CalibrationResult per calibrate task (written atomically: tmp + rename)
    tracks/<task_id>/           one run_track folder per track task (track_state.json, window_NN.nc, track.nc)
    errors/<task_id>.txt        traceback of a task that raised
    index.csv                   one row per task (INDEX_COLUMNS), rewritten atomically after each finished task

The task id is a stable hash of (kind, chain path(s), underlying, spec id, overrides, track settings), so
re-running a manifest skips every task whose result is present and loadable; a task that raised is
recorded with its error (status ``error``) and run again next time; it never stops the other tasks.

Threads: nutpie samples the chains of one fit on ``cores`` threads, and the NumPy/BLAS stack may start its
own. The local cluster therefore runs one worker process per CPU core with one Dask thread each, dask's
nanny sets ``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1`` in the workers, and each fit samples
its chains on ``cores_per_fit = max(1, cpu_count // (workers * threads_per_worker))`` threads (1 on a
machine fully used by one-thread workers; chains then run one after another). The draws do not depend on
the number of sampling threads: nutpie seeds each chain from (seed, chain index).

Compilation: every fit builds its PyMC model, and nutpie compiles its log-density with numba (most of the
wall time of a small fit). Two caches cut this: (1) all worker processes of one host share one PyTensor
``base_compiledir`` (the default ``~/.pytensor``, or ``compiledir=`` / ``--compiledir``), whose ``numba/``
folder caches the per-Op kernels on disk; (2) each worker process keeps the compiled nutpie model of the
tasks that share their model (spec without its ``[fit]`` table, chain, underlying) with another task
(:func:`bayescal.compilation.recipe_object`, keyed by the model, priors, likelihood and used quotes; the last
8 kept) and reuses it for later tasks with the same model: seed or sampler-setting sweeps on one chain compile
once per worker. Chains with different quotes are different models (the observed IVs are constants of the
compiled graph), so they always compile. Details and measurements: ``docs/batch.md``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import logging
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bayescal.atomic import write_text_atomic
from bayescal.errors import BayescalError

__all__ = ["BatchSummary", "BatchTask", "ManifestError", "add_batch_parser", "clear_compile_cache",
           "load_manifest", "make_task", "read_index", "result_path", "run_batch", "run_batch_command", "run_task",
           "write_index"]

logger = logging.getLogger(__name__)

KINDS = ("calibrate", "track")
#: Manifest keys that override the spec's ``[fit]`` table, and the FitConfig field each sets.
FIT_OVERRIDES = {"draws": "draws", "tune": "tune", "chains": "chains", "seed": "random_seed",
                 "target_accept": "target_accept", "method": "method"}
#: Manifest keys of track tasks, and the :class:`bayescal.sequential.UpdateSettings` field each sets.
TRACK_SETTINGS = {"inflation": "inflation", "drift": "drift_sd_per_day", "student_t": "student_t_nu",
                  "warm_tune": "warm_tune"}
_ENTRY_KEYS = {"kind", "chain", "files", "pattern", "underlying", "spec", "specs", *FIT_OVERRIDES, *TRACK_SETTINGS}
_INT_KEYS = {"draws", "tune", "chains", "seed", "warm_tune"}
_FLOAT_KEYS = {"target_accept", *(set(TRACK_SETTINGS) - _INT_KEYS)}
#: Columns of ``index.csv``.
INDEX_COLUMNS = ("task_id", "kind", "chain", "underlying", "spec", "spec_id", "overrides", "status", "gate",
                 "gate_detail", "wall_seconds", "result", "error", "compile_cache", "worker", "finished")
INDEX_FILE = "index.csv"
_GATE_ORDER = {"ok": 0, "approximate": 1, "warn": 2, "fail": 3}


class ManifestError(BayescalError, ValueError):
    """A batch manifest is malformed; the message lists every problem found."""


# --- tasks -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchTask:
    """One unit of work of a batch.

    Attributes
    ----------
    kind : str
        ``"calibrate"`` (one fit of ``spec`` to ``chain``) or ``"track"`` (:func:`bayescal.sequential.run_track`
        over ``files``, one fit per file in valuation-time order).
    spec : str
        Path of the spec file (resolved from a name in ``models/`` or a path).
    spec_name : str
    spec_id : str
        Id of the spec with the fit overrides applied (:attr:`bayescal.spec.CalibrationSpec.spec_id`).
    chain : str
        Absolute chain-file path (calibrate tasks; ``""`` for tracks).
    files : tuple of str
        Absolute chain-file paths (track tasks; empty for calibrate).
    underlying : str or None
    overrides : dict
        Fit overrides in manifest names (``draws``, ``tune``, ``chains``, ``seed``, ``target_accept``, ``method``).
    settings : dict
        Track update settings in manifest names (``inflation``, ``drift``, ``student_t``).
    task_id : str
        sha256[:16] of (kind, chain or files, underlying, spec_id, overrides, settings).
    structure_id : str
        sha256[:16] of the spec without its ``[fit]`` table: tasks with equal (structure_id, chain,
        underlying) build the same PyMC model and can share its compiled form.
    """

    kind: str
    spec: str
    spec_name: str
    spec_id: str
    chain: str = ""
    files: tuple[str, ...] = ()
    underlying: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)
    task_id: str = ""
    structure_id: str = ""

    @property
    def label(self) -> str:
        """Short human-readable description (spec and file names)."""
        where = Path(self.chain).name if self.kind == "calibrate" else \
            f"{len(self.files)} files {Path(self.files[0]).name}..{Path(self.files[-1]).name}"
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.kind} {self.spec_name} {where}" + (f" [{extra}]" if extra else "")

    def load_spec(self):
        """The spec with the fit overrides applied.

        Raises
        ------
        SpecError
            If the spec cannot be loaded or the overrides are invalid.
        BayescalError
            If the spec loaded here has another id than when the task was made (the ``models/`` or
            ``priors/`` folders differ between this process and the one that read the manifest).
        """
        from bayescal.spec import load_spec

        spec = load_spec(self.spec).with_fit(**{FIT_OVERRIDES[k]: v for k, v in self.overrides.items()})
        if spec.spec_id != self.spec_id:
            raise BayescalError(f"spec {self.spec} has id {spec.spec_id} here but {self.spec_id} where the manifest "
                                "was read: the models/ or priors/ folders differ between machines")
        return spec


def _abs_path(path: str | Path, base: Path) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = base / p
    return os.path.normpath(p.absolute())


def make_task(kind: str, spec: str | Path, *, chain: str | Path = "", files: Iterable[str | Path] = (),
              underlying: str | None = None, overrides: dict[str, Any] | None = None,
              settings: dict[str, float] | None = None, base: str | Path = ".") -> BatchTask:
    """Build a :class:`BatchTask`, loading its spec to compute the spec id and the task id.

    Parameters
    ----------
    kind : {"calibrate", "track"}
    spec : str or Path
        Spec name in ``models/`` or ``.toml`` path.
    chain : str or Path
        Chain file of a calibrate task (need not exist yet: a missing file fails the task, not the batch).
    files : iterable of str or Path
        Chain files of a track task.
    underlying : str, optional
    overrides : dict, optional
        Fit overrides: ``draws``, ``tune``, ``chains``, ``seed``, ``target_accept``, ``method``.
    settings : dict, optional
        Track settings: ``inflation``, ``drift``, ``student_t``.
    base : str or Path
        Folder that relative paths are relative to.

    Returns
    -------
    BatchTask

    Raises
    ------
    ManifestError
        Unknown kind, override or setting; a calibrate task without a chain, a track without files.
    SpecError
        If the spec cannot be loaded, the overrides or track settings are invalid, or a track's model has
        nothing to carry between windows (per-expiry models such as ``svi``).
    """
    from bayescal.spec import load_spec, resolve_spec_path

    base = Path(base)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    settings = {k: (int(v) if k in _INT_KEYS else float(v)) for k, v in (settings or {}).items() if v is not None}
    problems = []
    if kind not in KINDS:
        problems.append(f"kind {kind!r} unknown; valid: {list(KINDS)}")
    if set(overrides) - set(FIT_OVERRIDES):
        problems.append(f"unknown fit override(s) {sorted(set(overrides) - set(FIT_OVERRIDES))}; "
                        f"valid: {sorted(FIT_OVERRIDES)}")
    if set(settings) - set(TRACK_SETTINGS):
        problems.append(f"unknown track setting(s) {sorted(set(settings) - set(TRACK_SETTINGS))}; "
                        f"valid: {sorted(TRACK_SETTINGS)}")
    if kind == "calibrate" and (not chain or files):
        problems.append("a calibrate task needs one chain (and no files)")
    if kind == "track" and (chain or not files):
        problems.append("a track task needs files (and no chain)")
    if kind == "calibrate" and settings:
        problems.append(f"track settings {sorted(settings)} given to a calibrate task")
    if problems:
        raise ManifestError("; ".join(problems))
    spec_path = resolve_spec_path(spec)
    loaded = load_spec(spec_path).with_fit(**{FIT_OVERRIDES[k]: v for k, v in overrides.items()})
    if kind == "track":
        from bayescal.sequential import UpdateSettings, carried_parameters

        carried_parameters(loaded.model, loaded.model_settings)  # a surface model, or SpecError
        UpdateSettings(**{TRACK_SETTINGS[k]: v for k, v in settings.items()})  # valid settings, or SpecError
    chain_abs = _abs_path(chain, base) if chain else ""
    files_abs = tuple(_abs_path(f, base) for f in files)
    underlying = underlying.upper() if underlying else None
    identity = {"kind": kind, "chain": chain_abs, "files": list(files_abs), "underlying": underlying,
                "spec_id": loaded.spec_id, "overrides": overrides, "settings": settings}
    task_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    structure = json.dumps({k: v for k, v in loaded.to_dict().items() if k != "fit"}, sort_keys=True)
    return BatchTask(kind=kind, spec=str(spec_path), spec_name=loaded.name, spec_id=loaded.spec_id, chain=chain_abs,
                     files=files_abs, underlying=underlying, overrides=overrides, settings=settings, task_id=task_id,
                     structure_id=hashlib.sha256(structure.encode()).hexdigest()[:16])


# --- manifests ---------------------------------------------------------------------------------------

def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand(pattern: str, base: Path, *, folder_csv: bool = False) -> list[str]:
    """Files a path, folder (its ``*.csv`` when ``folder_csv``) or glob pattern names, sorted."""
    path = Path(_abs_path(pattern, base))
    if _has_magic(pattern):
        return sorted(p for p in glob.glob(str(path)) if Path(p).is_file())
    if folder_csv and path.is_dir():
        return sorted(str(p) for p in path.glob("*.csv"))
    return [str(path)]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _coerce(key: str, value: Any, where: str, problems: list[str]) -> Any:
    if value is None or value == "":
        return None
    try:
        if key in _INT_KEYS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key in _FLOAT_KEYS:
            return float(value)
    except (TypeError, ValueError):
        problems.append(f"{where}: {key} = {value!r} is not {'an integer' if key in _INT_KEYS else 'a number'}")
        return None
    return value


def _tasks_from_entry(entry: dict[str, Any], where: str, base: Path, is_glob: bool,
                      problems: list[str]) -> list[BatchTask]:
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; valid: {sorted(_ENTRY_KEYS)}")
        return []
    values = {k: _coerce(k, v, where, problems) for k, v in entry.items()}
    kind = values.get("kind") or "calibrate"
    specs = _as_list(values.get("spec")) + _as_list(values.get("specs"))
    if not specs:
        problems.append(f"{where}: no spec (give spec = NAME or specs = [...])")
        return []
    overrides = {k: values.get(k) for k in FIT_OVERRIDES}
    settings = {k: values.get(k) for k in TRACK_SETTINGS}
    if is_glob:
        patterns = _as_list(values.get("pattern"))
        if not patterns or values.get("chain") or values.get("files"):
            problems.append(f"{where}: a [[glob]] entry needs pattern (a glob or a list of globs) and no chain/files")
            return []
        chains = []
        for pattern in patterns:
            found = _expand(str(pattern), base) if _has_magic(str(pattern)) else \
                [f for f in _expand(str(pattern), base, folder_csv=True) if Path(f).is_file()]
            if not found:
                problems.append(f"{where}: pattern {pattern!r} matched no file (relative to {base})")
            chains.extend(found)
        chains = sorted(dict.fromkeys(chains))
        if kind == "track":
            jobs = [{"files": chains}]
        else:
            jobs = [{"chain": c} for c in chains]
    elif kind == "track":
        files: list[str] = []
        for item in _as_list(values.get("files")):
            found = _expand(str(item), base, folder_csv=True)
            if not found:
                problems.append(f"{where}: files entry {item!r} matched no file")
            files.extend(found)
        jobs = [{"files": files}]
    else:
        chain = values.get("chain")
        if not chain or not isinstance(chain, str):
            problems.append(f"{where}: a calibrate task needs chain = PATH")
            return []
        jobs = [{"chain": c} for c in _expand(chain, base)] if _has_magic(chain) else [{"chain": chain}]
        if not jobs:
            problems.append(f"{where}: chain pattern {chain!r} matched no file")
    tasks = []
    for spec in specs:
        for job in jobs:
            try:
                tasks.append(make_task(kind, str(spec), underlying=values.get("underlying"), overrides=overrides,
                                       settings=settings if kind == "track" else None, base=base, **job))
            except BayescalError as exc:
                problems.append(f"{where}: {exc}")
    return tasks


def load_manifest(path: str | Path) -> list[BatchTask]:
    """Read a batch manifest (TOML or CSV) into tasks, in manifest order, duplicates removed.

    TOML: an optional ``[defaults]`` table (keys applied to every entry unless the entry sets them),
    ``[[task]]`` entries and ``[[glob]]`` entries::

        [defaults]
        underlying = "BTC"
        draws = 500

        [[task]]                      # one calibrate task per spec
        chain = "data/chain.csv"
        spec = "svi"                  # or specs = ["svi", "ssvi"]; a name in models/ or a .toml path
        seed = 1                      # fit overrides: draws, tune, chains, seed, target_accept, method

        [[task]]                      # one sequential track (run_track) per spec
        kind = "track"
        files = ["data/daily/"]       # files, folders (their *.csv) or glob patterns
        spec = "ssvi"
        drift = 0.05                  # track settings: inflation, drift, student_t

        [[glob]]                      # files x specs calibrate tasks (kind = "track": one track per spec)
        pattern = "../shared/data/deribit_daily_2026-02/*.csv"
        specs = ["svi", "ssvi"]

    CSV: one task per row, columns ``kind, chain, files, underlying, spec`` and the override / setting
    columns; empty cells are unset; ``spec`` may list several specs separated by ``;`` (one task each),
    ``chain`` may be a glob pattern (one task per file), ``files`` (tracks) lists files, folders or
    patterns separated by ``;``. Lines starting with ``#`` are comments.

    Relative paths are relative to the manifest's folder.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list of BatchTask

    Raises
    ------
    FileNotFoundError
        If the manifest does not exist.
    ManifestError
        One error listing every problem (unknown keys, bad values, unknown specs, patterns that match no
        file, an empty manifest, an unsupported file type). A chain file that does not exist is not a
        manifest error: its task fails and is recorded in the index.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    base = path.parent.absolute()
    problems: list[str] = []
    tasks: list[BatchTask] = []
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(f"{path}: not valid TOML ({exc})") from exc
        unknown = sorted(set(raw) - {"defaults", "task", "glob"})
        if unknown:
            problems.append(f"unknown top-level key(s) {unknown}; valid: ['defaults', 'glob', 'task']")
        defaults = raw.get("defaults", {})
        bad_defaults = sorted(set(defaults) - (_ENTRY_KEYS - {"chain", "files", "pattern"}))
        if bad_defaults:
            problems.append(f"[defaults]: key(s) {bad_defaults} not allowed (give them per entry)")
            defaults = {k: v for k, v in defaults.items() if k not in bad_defaults}
        for section in ("task", "glob"):
            entries = raw.get(section, [])
            if not isinstance(entries, list):
                problems.append(f"{section} must be an array of tables ([[{section}]])")
                continue
            for i, entry in enumerate(entries):
                merged = {**defaults, **entry}
                tasks += _tasks_from_entry(merged, f"[[{section}]] #{i + 1}", base, section == "glob", problems)
    elif path.suffix.lower() == ".csv":
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        for i, row in enumerate(csv.DictReader(lines)):
            entry: dict[str, Any] = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            entry = {k: v for k, v in entry.items() if v != ""}
            for key in ("spec", "files"):
                if key in entry:
                    entry[key] = [s.strip() for s in entry[key].split(";") if s.strip()]
            tasks += _tasks_from_entry(entry, f"row {i + 1}", base, False, problems)
    else:
        raise ManifestError(f"{path}: manifest must be a .toml or .csv file")
    if not tasks and not problems:
        problems.append("no task")
    if problems:
        raise ManifestError(f"manifest {path}:\n  - " + "\n  - ".join(problems))
    return list({t.task_id: t for t in tasks}.values())


# --- output store ------------------------------------------------------------------------------------

def result_path(out: str | Path, task: BatchTask) -> Path:
    """Where a task's result lives: ``results/<id>.nc`` (calibrate) or ``tracks/<id>/track.nc`` (track)."""
    out = Path(out)
    if task.kind == "track":
        return out / "tracks" / task.task_id / "track.nc"
    return out / "results" / f"{task.task_id}.nc"


def _finished_record(task: BatchTask, out: Path) -> dict[str, Any] | None:
    """The record of a task whose result is present and loadable (and belongs to it), else None."""
    import xarray as xr

    path = result_path(out, task)
    if not path.is_file():
        return None
    try:
        with xr.open_datatree(path, engine="h5netcdf") as tree:
            attrs = dict(tree.attrs)
            if task.kind == "track":
                statuses = [str(s) for s in tree.to_dataset()["status"].to_numpy()]
                if attrs.get("spec_id") != task.spec_id or len(statuses) != len(task.files):
                    return None
                gate, detail = _worst(statuses), _counts(statuses)
            else:
                if attrs.get("spec_id") != task.spec_id:
                    return None
                tree.load()
                gate = json.loads(attrs["convergence"])["status"]
                detail = ""
    except Exception:  # noqa: BLE001 - an unreadable file is an unfinished task
        return None
    return {"status": "ok", "gate": gate, "gate_detail": detail, "result": str(path.relative_to(out))}


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=lambda s: _GATE_ORDER.get(s, 4)) if statuses else ""


def _counts(statuses: list[str]) -> str:
    return ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses), key=lambda s: _GATE_ORDER.get(s, 4)))


def read_index(out: str | Path):
    """The index table of an output store (empty with :data:`INDEX_COLUMNS` when there is none).

    Returns
    -------
    pandas.DataFrame
        One row per task; ``task_id`` as a column.
    """
    import pandas as pd

    path = Path(out) / INDEX_FILE
    if not path.is_file():
        return pd.DataFrame(columns=list(INDEX_COLUMNS))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["wall_seconds"] = pd.to_numeric(frame["wall_seconds"], errors="coerce")
    return frame


def write_index(out: str | Path, rows: dict[str, dict[str, Any]]) -> Path:
    """Write ``index.csv`` atomically (temporary file, fsync, rename) from rows keyed by task id.

    Returns
    -------
    Path
    """
    import pandas as pd

    frame = pd.DataFrame([{c: row.get(c, "") for c in INDEX_COLUMNS} for row in rows.values()],
                         columns=list(INDEX_COLUMNS))
    path = Path(out) / INDEX_FILE
    write_text_atomic(path, frame.to_csv(index=False, float_format="%.3f"))
    return path


# --- nutpie thread cap; compiled models are kept by bayescal.compilation.recipe_object ------------------

_LOCAL = threading.local()
_PATCH_LOCK = threading.Lock()
_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _capped_sample(*args, **kwargs):
    """``nutpie.sample`` with at most ``_LOCAL.cores`` sampling threads, inside :func:`_task_context`."""
    cap = getattr(_LOCAL, "cores", None)
    if cap is not None:
        kwargs["cores"] = min(int(kwargs.get("cores") or cap), cap)
    return _ORIGINALS["sample"](*args, **kwargs)


def _install_nutpie_hooks() -> None:
    """Wrap ``nutpie.sample`` once per process (bayescal and PyMC look it up on the module at call time).
    Outside a task context the wrapper calls the original unchanged."""
    import nutpie

    with _PATCH_LOCK:
        if _ORIGINALS:
            return
        _ORIGINALS["sample"] = nutpie.sample
        nutpie.sample = _capped_sample


@contextmanager
def _task_context(keep_compiled: bool, cores: int | None) -> Iterator[list[str]]:
    """Within: nutpie's compiled models of this task are kept in the process for later tasks only if
    ``keep_compiled`` (:func:`bayescal.compilation.object_cache`), and sampling uses at most ``cores``
    threads (None: as asked). Yields the list of compiled-model cache events (``hit`` / ``miss``)."""
    from bayescal.compilation import object_cache

    _install_nutpie_hooks()
    _LOCAL.cores = cores
    try:
        with object_cache(keep=keep_compiled) as events:
            yield events
    finally:
        _LOCAL.cores = None


def clear_compile_cache() -> None:
    """Empty this process's cache of compiled models (:func:`bayescal.compilation.clear_recipe_objects`)."""
    from bayescal.compilation import clear_recipe_objects

    clear_recipe_objects()


# --- running one task (on a worker) --------------------------------------------------------------------

def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local:{platform.node()}:{os.getpid()}"


def run_task(task: BatchTask, out: str | Path, *, cores_per_fit: int | None = None,
             use_compile_cache: bool = True) -> dict[str, Any]:
    """Run one task and write its result into the store; never raises for a failing task.

    A task whose result is already present and loadable is not run again (its record is rebuilt from the
    file, ``compile_cache = "reused"``), so a task that Dask reschedules after a worker died while it was
    writing does not write twice.

    Parameters
    ----------
    task : BatchTask
    out : str or Path
        Output store.
    cores_per_fit : int, optional
        Most threads nutpie samples on (None: PyMC's ``min(chains, cpu_count)``).
    use_compile_cache : bool
        Keep this calibrate task's compiled nutpie model in the process for later tasks with the same model
        and quotes (a task always reuses one kept earlier).

    Returns
    -------
    dict
        The task's index row (:data:`INDEX_COLUMNS`): ``status`` ``"ok"`` or ``"error"``, ``gate`` (the
        convergence status; a track's worst window status, with counts in ``gate_detail``), ``error``
        (``"Type: message"``; the traceback goes to ``errors/<task_id>.txt``), ``wall_seconds``,
        ``compile_cache`` (``hit``/``miss`` per compilation, ``off``, or ``reused``).
    """
    out = Path(out)
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "task_id": task.task_id, "kind": task.kind,
        "chain": task.chain if task.kind == "calibrate" else ";".join(task.files),
        "underlying": task.underlying or "", "spec": task.spec_name, "spec_id": task.spec_id,
        "overrides": json.dumps(task.overrides | task.settings, sort_keys=True), "status": "", "gate": "",
        "gate_detail": "", "result": "", "error": "", "compile_cache": "", "worker": _worker_name(),
    }
    try:
        done = _finished_record(task, out)
        if done is not None:
            row.update(done, compile_cache="reused")
        elif task.kind == "calibrate":
            row.update(_run_calibrate(task, out, cores_per_fit, use_compile_cache))
        else:
            row.update(_run_track(task, out, cores_per_fit))
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure of a task is recorded, none stops the batch
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " | ")
        try:
            write_text_atomic(out / "errors" / f"{task.task_id}.txt", traceback.format_exc())
        except OSError:
            pass
    row["wall_seconds"] = time.perf_counter() - t0
    row["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return row


def _run_calibrate(task: BatchTask, out: Path, cores: int | None, use_cache: bool) -> dict[str, Any]:
    from bayescal.inference import fit
    from bayescal.market import read_chain

    spec = task.load_spec()
    quotes = read_chain(Path(task.chain), underlying=task.underlying)
    with _task_context(use_cache, cores) as events:
        result = fit(spec, quotes, progressbar=False)
    path = result_path(out, task)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a worker killed while writing
        stale.unlink(missing_ok=True)
    result.save(path)
    return {"gate": result.convergence["status"], "result": str(path.relative_to(out)),
            "compile_cache": "/".join(events) if use_cache else "off"}


def _run_track(task: BatchTask, out: Path, cores: int | None) -> dict[str, Any]:
    from bayescal.sequential import UpdateSettings, run_track

    spec = task.load_spec()
    settings = UpdateSettings(**{TRACK_SETTINGS[k]: v for k, v in task.settings.items()})
    path = result_path(out, task)
    with _task_context(False, cores):
        tree = run_track([Path(f) for f in task.files], spec, path.parent, underlying=task.underlying,
                         settings=settings, log=logger.info)
    statuses = [str(s) for s in tree.to_dataset()["status"].to_numpy()]
    return {"gate": _worst(statuses), "gate_detail": _counts(statuses), "result": str(path.relative_to(out)),
            "compile_cache": "off"}


# --- running a batch (driver) --------------------------------------------------------------------------

@dataclass
class BatchSummary:
    """What :func:`run_batch` did.

    Attributes
    ----------
    index : pandas.DataFrame
        The rows of this batch's tasks (manifest order), as written to ``index.csv``.
    ran, skipped, failed : int
        Tasks run in this call, tasks skipped as already finished, tasks with status ``error``.
    wall_seconds : float
    dashboard : str
        Dashboard link of the cluster (``""`` when serial or unavailable).
    """

    index: Any
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    wall_seconds: float = 0.0
    dashboard: str = ""

    @property
    def fits_per_minute(self) -> float:
        """Tasks run per minute of wall time (skipped tasks not counted)."""
        return 60.0 * self.ran / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def default_workers(threads_per_worker: int = 1) -> int:
    """One worker process per ``threads_per_worker`` CPU cores (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))


def _worker_env(compiledir: str | Path | None) -> dict[str, str]:
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if compiledir is not None:
        flags = os.environ.get("PYTENSOR_FLAGS", "")
        env["PYTENSOR_FLAGS"] = ",".join(filter(None, [flags, f"base_compiledir={Path(compiledir).absolute()}"]))
    return env


def _dashboard_link(client) -> str:
    try:
        import bokeh  # noqa: F401 - the dashboard needs it
    except ImportError:
        return ""
    return client.dashboard_link or ""


def run_batch(tasks: list[BatchTask], out: str | Path, *, workers: int | None = None, threads_per_worker: int = 1,
              scheduler: str | None = None, client=None, cores_per_fit: int | None = None,
              compiledir: str | Path | None = None, use_compile_cache: bool = True,
              dashboard_address: str = ":0", on_result: Callable[[dict[str, Any]], None] | None = None,
              log: Callable[[str], None] = print) -> BatchSummary:
    """Run tasks on a Dask cluster (or serially), writing results and ``index.csv`` into ``out``.

    Tasks whose result is present and loadable are skipped. Each finished task updates ``index.csv``
    (rewritten atomically; rows of tasks not in ``tasks`` are kept) and prints one line.

    Parameters
    ----------
    tasks : list of BatchTask
    out : str or Path
        Output store (created if missing). On a multi-node cluster it must be on a filesystem every
        worker sees under the same path.
    workers : int, optional
        Local cluster worker processes (default :func:`default_workers`); 0 runs the tasks one after
        another in this process, without Dask. Ignored with ``scheduler`` or ``client``.
    threads_per_worker : int
        Dask threads per local worker (default 1).
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``) to connect to.
    client : distributed.Client, optional
        An existing client (not closed here); takes precedence over ``scheduler``.
    cores_per_fit : int, optional
        Most nutpie sampling threads per fit. Default: ``max(1, cpu_count // (workers * threads_per_worker))``
        on a local cluster, PyMC's default (``min(chains, cpu_count)``) serially, with ``scheduler`` or ``client``.
    compiledir : str or Path, optional
        PyTensor ``base_compiledir`` of the local workers (and of this process when serial, if PyTensor is
        not imported yet). Default: PyTensor's own (``~/.pytensor``), already shared by local workers.
    use_compile_cache : bool
        Keep compiled models within each worker process for the tasks that share their model with another
        task of the batch (others compile without keeping the result; see :func:`_task_context`).
    dashboard_address : str
        Dashboard address of the local cluster (``":0"``: a free port; the link is printed).
    on_result : callable, optional
        Called in this process with each finished task's row.
    log : callable
        Receives the progress lines.

    Returns
    -------
    BatchSummary

    Raises
    ------
    BayescalError
        If ``workers`` or ``threads_per_worker`` is negative / below 1, or two tasks share an id.
    """
    if workers is not None and workers < 0:
        raise BayescalError(f"workers must be >= 0 (got {workers})")
    if threads_per_worker < 1:
        raise BayescalError(f"threads_per_worker must be >= 1 (got {threads_per_worker})")
    if cores_per_fit is not None and cores_per_fit < 1:
        raise BayescalError(f"cores_per_fit must be >= 1 (got {cores_per_fit})")
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise BayescalError("two tasks share an id (duplicate entries); deduplicate them first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    previous = read_index(out)
    rows: dict[str, dict[str, Any]] = {str(r["task_id"]): dict(r) for r in previous.to_dict("records")}
    todo, skipped = [], 0
    for task in tasks:
        done = _finished_record(task, out)
        if done is None:
            todo.append(task)
            continue
        skipped += 1
        if rows.get(task.task_id, {}).get("status") != "ok":
            rows[task.task_id] = {**run_task_row_stub(task), **done, "compile_cache": "reused"}
    log(f"bayescal batch: {len(tasks)} tasks, {skipped} already finished (skipped), {len(todo)} to run; "
        f"store {out}")
    write_index(out, rows)
    summary = BatchSummary(index=None, skipped=skipped)
    counter = {"n": 0}
    labels = {t.task_id: t.label for t in tasks}
    cache_for = _cache_worthy(todo) if use_compile_cache else set()

    def finished(row: dict[str, Any]) -> None:
        rows[row["task_id"]] = row
        write_index(out, rows)
        counter["n"] += 1
        summary.failed += row["status"] == "error"
        detail = f"gate {row['gate']}" if row["status"] == "ok" else row["error"][:200]
        log(f"[{counter['n']}/{len(todo)}] {row['status']:5s} {row['task_id']} {labels[row['task_id']]}: {detail} "
            f"({row['wall_seconds']:.1f} s, {row['worker']}, compile {row['compile_cache'] or '-'})")
        if on_result is not None:
            on_result(row)

    if todo and workers == 0 and client is None and scheduler is None:
        if compiledir is not None:
            if "pytensor" in sys.modules:
                import pytensor

                if Path(pytensor.config.base_compiledir).absolute() != Path(compiledir).absolute():
                    log("bayescal batch: PyTensor was imported before; compiledir ignored in serial mode")
            else:
                os.environ.update({"PYTENSOR_FLAGS": _worker_env(compiledir)["PYTENSOR_FLAGS"]})
        for task in todo:
            finished(run_task(task, out, cores_per_fit=cores_per_fit, use_compile_cache=task.task_id in cache_for))
    elif todo:
        summary.dashboard = _run_distributed(todo, out, workers, threads_per_worker, scheduler, client,
                                             cores_per_fit, compiledir, cache_for, dashboard_address, finished, log)
    summary.ran = counter["n"]
    summary.wall_seconds = time.perf_counter() - start
    summary.index = read_index(out).set_index("task_id").loc[ids].reset_index()
    log(f"bayescal batch: {summary.ran} run ({summary.failed} failed), {summary.skipped} skipped in "
        f"{summary.wall_seconds:.1f} s ({summary.fits_per_minute:.2f} tasks/min); index {out / INDEX_FILE}")
    return summary


def run_task_row_stub(task: BatchTask) -> dict[str, Any]:
    """Index row fields of a task known before it runs (used for skipped tasks without an index row)."""
    return {"task_id": task.task_id, "kind": task.kind,
            "chain": task.chain if task.kind == "calibrate" else ";".join(task.files),
            "underlying": task.underlying or "", "spec": task.spec_name, "spec_id": task.spec_id,
            "overrides": json.dumps(task.overrides | task.settings, sort_keys=True), "error": "",
            "wall_seconds": float("nan"), "worker": "", "finished": ""}


def _cache_worthy(tasks: list[BatchTask]) -> set[str]:
    """Ids of the calibrate tasks that share their model (structure, chain, underlying) with another task:
    only those keep their compiled model in the worker's cache (a cached model holds memory)."""
    from collections import Counter

    def model_key(t: BatchTask) -> tuple[str, str, str | None]:
        return t.structure_id, t.chain, t.underlying

    counts = Counter(model_key(t) for t in tasks if t.kind == "calibrate")
    return {t.task_id for t in tasks if t.kind == "calibrate" and counts[model_key(t)] > 1}


def _run_distributed(todo, out, workers, threads_per_worker, scheduler, client, cores_per_fit, compiledir,
                     cache_for, dashboard_address, finished, log) -> str:
    from distributed import Client, LocalCluster, as_completed

    cluster = own_client = None
    try:
        if client is None and scheduler is not None:
            client = own_client = Client(scheduler)
        elif client is None:
            n_workers = default_workers(threads_per_worker) if workers is None else workers
            if cores_per_fit is None:
                cores_per_fit = max(1, (os.cpu_count() or 1) // (n_workers * threads_per_worker))
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                   dashboard_address=dashboard_address, env=_worker_env(compiledir))
            client = own_client = Client(cluster)
        dashboard = _dashboard_link(client)
        n_threads = sum(client.nthreads().values())
        log(f"bayescal batch: cluster {client.scheduler.address} with {len(client.nthreads())} workers, "
            f"{n_threads} threads; sampling threads per fit: {cores_per_fit or 'PyMC default'}; dashboard: "
            f"{dashboard or 'unavailable (pip install bokeh)'}")
        futures = {client.submit(run_task, task, str(out.absolute()), cores_per_fit=cores_per_fit,
                                 use_compile_cache=task.task_id in cache_for, key=f"bayescal-batch-{task.task_id}",
                                 pure=False): task for task in todo}
        for future in as_completed(futures):
            task = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the task died with several workers
                row = {**run_task_row_stub(task), "status": "error", "gate": "", "gate_detail": "", "result": "",
                       "compile_cache": "", "error": f"{type(exc).__name__}: {exc}".replace("\n", " | "),
                       "wall_seconds": float("nan"), "finished": datetime.now(UTC).isoformat(timespec="seconds")}
            finished(row)
        return dashboard
    finally:
        if own_client is not None:
            own_client.close()
        if cluster is not None:
            # a worker process that ran PyMC needs a few seconds to exit; the nanny then kills it and logs a
            # warning that says nothing about the batch
            nanny_log = logging.getLogger("distributed.nanny")
            level = nanny_log.level
            nanny_log.setLevel(logging.ERROR)
            try:
                cluster.close(timeout=30)
            finally:
                nanny_log.setLevel(level)


# --- command line --------------------------------------------------------------------------------------

def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``batch`` subcommand to an argparse subparsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``batch`` parser; :func:`run_batch_command` runs its namespace.
    """
    bat = subparsers.add_parser("batch", help="run many calibrations / tracks from a manifest on a Dask cluster",
                                description="Run the tasks of a manifest (TOML or CSV; see docs/batch.md) on a "
                                            "local Dask cluster or an existing one. Finished tasks are skipped.")
    bat.add_argument("manifest", help="manifest file (.toml or .csv)")
    bat.add_argument("--out", required=True, help="output store: results/, tracks/, errors/, index.csv")
    bat.add_argument("--workers", type=int,
                     help="local worker processes (default: one per CPU core / threads-per-worker; 0 = serial, "
                          "in this process)")
    bat.add_argument("--threads-per-worker", type=int, default=1, help="Dask threads per local worker (default 1)")
    bat.add_argument("--scheduler", help="address of an existing Dask scheduler (e.g. tcp://host:8786)")
    bat.add_argument("--cores-per-fit", type=int,
                     help="most nutpie sampling threads per fit (default: CPU cores / (workers x threads), >= 1)")
    bat.add_argument("--compiledir", help="PyTensor base_compiledir of the local workers (default ~/.pytensor)")
    bat.add_argument("--no-compile-cache", action="store_true",
                     help="compile every fit afresh (no per-worker reuse of compiled models)")
    bat.add_argument("--dashboard-address", default=":0", help="local dashboard address (default: a free port)")
    return bat


def run_batch_command(args: argparse.Namespace) -> int:
    """Run ``bayescal batch`` from its parsed arguments.

    Returns
    -------
    int
        0 when every task finished with a result whose gate is not ``fail``; 1 when a task failed (error) or
        a result failed its gate; 2 on bad input (manifest, options).
    """
    if args.compiledir and args.workers == 0 and "pytensor" not in sys.modules:
        # serial: this process compiles; set the directory before reading the manifest imports PyTensor
        os.environ["PYTENSOR_FLAGS"] = _worker_env(args.compiledir)["PYTENSOR_FLAGS"]
    try:
        tasks = load_manifest(args.manifest)
        summary = run_batch(tasks, args.out, workers=args.workers, threads_per_worker=args.threads_per_worker,
                            scheduler=args.scheduler, cores_per_fit=args.cores_per_fit, compiledir=args.compiledir,
                            use_compile_cache=not args.no_compile_cache, dashboard_address=args.dashboard_address)
    except (BayescalError, FileNotFoundError) as exc:
        print(f"bayescal: error: {exc}", file=sys.stderr)
        return 2
    index = summary.index
    bad = (index["status"] != "ok") | (index["gate"] == "fail")
    return 1 if bad.any() else 0
