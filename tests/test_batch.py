"""Batch calibration on dask.distributed: manifests, task ids, the output store, a killed worker, reruns."""

from __future__ import annotations

import argparse
import os
import signal
import time

import numpy as np
import pytest
from conftest import DAILY

from bayescal.batch import (
    INDEX_COLUMNS,
    ManifestError,
    add_batch_parser,
    clear_compile_cache,
    load_manifest,
    make_task,
    read_index,
    result_path,
    run_batch,
    run_batch_command,
)
from bayescal.market import bundled_demo_chain
from bayescal.results import CalibrationResult

SMALL = {"chains": 2, "draws": 100, "tune": 150}
SEEDS = (1, 2, 3, 4)


def _small_tasks(tmp_path):
    """8 small fits: {svi, black76} x 4 seeds on the bundled chain, plus one task whose chain file is missing."""
    demo = bundled_demo_chain()
    manifest = tmp_path / "batch.toml"
    lines = ["[defaults]", *(f"{k} = {v}" for k, v in SMALL.items())]
    for seed in SEEDS:
        lines += ["[[task]]", f'chain = "{demo}"', 'specs = ["svi", "black76"]', f"seed = {seed}"]
    lines += ["[[task]]", 'chain = "no_such_chain.csv"', 'spec = "black76"']
    manifest.write_text("\n".join(lines) + "\n")
    tasks = load_manifest(manifest)
    good = [t for t in tasks if not t.chain.endswith("no_such_chain.csv")]
    missing = [t for t in tasks if t.chain.endswith("no_such_chain.csv")]
    assert len(good) == 8 and len(missing) == 1
    return good, missing[0]


def _arrays_equal(path_a, path_b) -> bool:
    a, b = CalibrationResult.load(path_a).idata, CalibrationResult.load(path_b).idata
    for group in ("posterior", "sample_stats", "posterior_predictive", "log_likelihood"):
        da, db = a[group].to_dataset(), b[group].to_dataset()
        if set(da.data_vars) != set(db.data_vars):
            return False
        for name in da.data_vars:
            x, y = da[name].to_numpy(), db[name].to_numpy()
            if not np.array_equal(x, y, equal_nan=np.issubdtype(x.dtype, np.inexact)):  # strings have no NaN
                return False
    return True


@pytest.mark.slow
def test_dask_batch_survives_a_killed_worker_and_matches_serial(tmp_path, shared_data):
    """2-worker local cluster, one worker killed (SIGKILL) mid-batch: every task finishes exactly once, results
    equal a serial run bit for bit; a failing task is recorded; a track runs as one task; a rerun skips the
    finished tasks."""
    good, missing = _small_tasks(tmp_path)
    clear_compile_cache()
    serial = run_batch(good, tmp_path / "serial", workers=0, log=lambda line: None)
    assert serial.ran == 8 and serial.failed == 0
    assert (serial.index["status"] == "ok").all()
    # one compilation per spec in this process; the other 3 seeds of each spec reuse it
    assert sorted(serial.index["compile_cache"]) == ["hit"] * 6 + ["miss"] * 2

    seen: list[str] = []
    kill: dict = {}

    def on_result(row):
        seen.append(row["task_id"])
        if kill:
            return
        from distributed import default_client

        client = default_client()
        processing = {w: keys for w, keys in client.processing().items() if keys}
        victims = [w for w in processing if w != row["worker"]] or list(processing)
        assert victims, "no worker is processing a task: nothing to kill"
        pids = client.run(os.getpid)
        kill.update(worker=victims[0], keys=list(processing[victims[0]]), pid=pids[victims[0]])
        os.kill(kill["pid"], signal.SIGKILL)

    # a sequential track (2 daily windows) runs as one task next to the fits
    days = sorted(DAILY.glob("*.csv"))[:2]
    track = make_task("track", "ssvi", files=days, underlying="BTC", overrides=SMALL)
    out = tmp_path / "dask"
    dist = run_batch([*good, missing, track], out, workers=2, threads_per_worker=1, on_result=on_result,
                     log=lambda line: None)
    assert kill and kill["keys"], "the killed worker had no task"
    with pytest.raises(ProcessLookupError):
        os.kill(kill["pid"], 0)
    ids = [t.task_id for t in good]
    everything = sorted([*ids, missing.task_id, track.task_id])
    assert sorted(seen) == everything  # one result per task, none twice
    index = read_index(out)
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert sorted(index["task_id"]) == everything
    rows = index.set_index("task_id")
    assert rows.loc[track.task_id, "status"] == "ok", rows.loc[track.task_id, "error"]
    assert sum(int(part.split()[1]) for part in rows.loc[track.task_id, "gate_detail"].split(", ")) == 2
    assert result_path(out, track).is_file() and len(list(result_path(out, track).parent.glob("window_*.nc"))) == 2
    assert (rows.loc[ids, "status"] == "ok").all()
    assert (rows.loc[ids, "compile_cache"] != "reused").all()
    for key in kill["keys"]:  # the killed worker's tasks were rerun elsewhere
        assert rows.loc[str(key).removeprefix("bayescal-batch-"), "worker"] != kill["worker"]
    assert rows.loc[missing.task_id, "status"] == "error"
    assert "no_such_chain.csv" in rows.loc[missing.task_id, "error"]
    assert (out / "errors" / f"{missing.task_id}.txt").is_file()
    assert dist.ran == 10 and dist.failed == 1
    files = sorted(p.name for p in (out / "results").iterdir())
    assert files == sorted(f"{i}.nc" for i in ids)  # each written once, no temporary leftovers
    for task in good:
        assert _arrays_equal(result_path(out, task), result_path(tmp_path / "serial", task)), task.label

    mtimes = {i: result_path(out, t).stat().st_mtime_ns for i, t in zip(ids, good, strict=True)}
    again = run_batch([*good, missing, track], out, workers=0, log=lambda line: None)
    assert again.skipped == 9 and again.ran == 1 and again.failed == 1
    assert {i: result_path(out, t).stat().st_mtime_ns for i, t in zip(ids, good, strict=True)} == mtimes
    assert sorted(read_index(out)["task_id"]) == everything


def test_toml_manifest_glob_times_specs_and_tracks(tmp_path, shared_data):
    files = sorted(DAILY.glob("*.csv"))
    assert len(files) == 14
    manifest = tmp_path / "sub" / "m.toml"
    manifest.parent.mkdir()
    rel = os.path.relpath(DAILY, manifest.parent)
    manifest.write_text(f"""
[defaults]
underlying = "btc"
draws = 200

[[glob]]
pattern = "{rel}/*.csv"
specs = ["svi", "ssvi"]

[[glob]]
kind = "track"
pattern = "{rel}/*.csv"
spec = "ssvi"
drift = 0.05

[[task]]
kind = "track"
files = ["{rel}"]
spec = "ssvi"
drift = 0.05

[[task]]
kind = "track"
files = ["{rel}"]
spec = "ssvi"
warm_tune = 0
""")
    tasks = load_manifest(manifest)
    calib = [t for t in tasks if t.kind == "calibrate"]
    tracks = [t for t in tasks if t.kind == "track"]
    assert len(calib) == 28 and {t.spec_name for t in calib} == {"svi", "ssvi"}
    assert {t.chain for t in calib} == {str(f) for f in files}  # relative to the manifest's folder
    assert all(t.underlying == "BTC" and t.overrides == {"draws": 200} for t in tasks)
    assert len(tracks) == 2  # the first [[task]] track is the same task as the [[glob]] track: deduplicated
    assert tracks[0].files == tuple(str(f) for f in files) and tracks[0].settings == {"drift": 0.05}
    assert tracks[1].settings == {"warm_tune": 0} and isinstance(tracks[1].settings["warm_tune"], int)  # cold starts
    assert len({t.task_id for t in tasks}) == len(tasks) == 30
    assert [t.task_id for t in load_manifest(manifest)] == [t.task_id for t in tasks]  # stable
    svi = calib[0]
    other = make_task("calibrate", "svi", chain=svi.chain, underlying="BTC", overrides={"draws": 200, "seed": 7})
    same = make_task("calibrate", "svi", chain=svi.chain, underlying="BTC", overrides={"draws": 200})
    assert same.task_id == svi.task_id and other.task_id != svi.task_id and other.spec_id != svi.spec_id
    assert result_path(tmp_path, tracks[0]) == tmp_path / "tracks" / tracks[0].task_id / "track.nc"


def test_csv_manifest(tmp_path, shared_data):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"""# kind,chain,... one task per row; ';' separates several specs or track files
kind,chain,files,underlying,spec,draws,seed,drift
calibrate,{DAILY}/*T04*.csv,,BTC,svi;black76,100,3,
track,,{DAILY},BTC,ssvi,100,,0.1
calibrate,{bundled_demo_chain()},,,svi,,,
""")
    tasks = load_manifest(manifest)
    assert len(tasks) == 14 * 2 + 1 + 1
    assert tasks[0].overrides == {"draws": 100, "seed": 3}
    track = next(t for t in tasks if t.kind == "track")
    assert len(track.files) == 14 and track.settings == {"drift": 0.1}
    assert tasks[-1].overrides == {} and tasks[-1].underlying is None


def test_manifest_errors_are_listed_together(tmp_path):
    manifest = tmp_path / "bad.toml"
    manifest.write_text("""
[[task]]
chain = "a.csv"
spec = "no_such_spec"

[[task]]
chain = "a.csv"
spec = "svi"
draws = "many"
colour = "red"

[[glob]]
pattern = "nothing_here/*.csv"
spec = "svi"

[[task]]
kind = "track"
files = ["a.csv"]
spec = "ssvi"
seed = 1.5
warm_tune = 2.5

[[task]]
kind = "track"
files = ["a.csv"]
spec = "svi"
""")
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    message = str(info.value)
    for part in ("no_such_spec", "colour", "nothing_here", "seed = 1.5 is not an integer",
                 "warm_tune = 2.5 is not an integer", "only per-expiry"):
        assert part in message, (part, message)
    with pytest.raises(ManifestError, match="toml or .csv"):
        (tmp_path / "m.json").write_text("{}")
        load_manifest(tmp_path / "m.json")
    with pytest.raises(FileNotFoundError):
        load_manifest(tmp_path / "absent.toml")


def test_cli_parser_and_exit_codes(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="bayescal")
    add_batch_parser(parser.add_subparsers(dest="command"))
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[task]]\nchain = "missing.csv"\nspec = "black76"\n')
    args = parser.parse_args(["batch", str(manifest), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert args.command == "batch" and args.threads_per_worker == 1 and args.scheduler is None
    start = time.perf_counter()
    assert run_batch_command(args) == 1  # the task failed (missing chain), and is recorded
    assert time.perf_counter() - start < 60
    index = read_index(tmp_path / "out")
    assert list(index["status"]) == ["error"] and "missing.csv" in index["error"][0]
    assert "1 run (1 failed)" in capsys.readouterr().out
    (tmp_path / "bad.toml").write_text("[[task]]\nspec = 'svi'\n")
    bad = parser.parse_args(["batch", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "o2")])
    assert run_batch_command(bad) == 2
    assert "needs chain" in capsys.readouterr().err
