"""Issue 9: a saved result is an ordinary file (mode ``0o666 & ~umask``), still written atomically."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import xarray as xr

from bayescal.results import CalibrationResult


def _tiny_result(value: float) -> CalibrationResult:
    posterior = xr.Dataset({"theta": (("chain", "draw"), np.full((1, 3), value))})
    return CalibrationResult(xr.DataTree.from_dict({"posterior": posterior}))


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> int:
        os.umask(mask)
        return mask

    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_saved_result_has_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    path = _tiny_result(1.0).save(tmp_path / "out" / "result.nc")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["result.nc"]  # no temporary file left


def test_replacing_a_result_is_atomic_and_takes_the_new_mode(tmp_path, umask):
    path = tmp_path / "result.nc"
    umask(0o077)
    _tiny_result(1.0).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    umask(0o022)
    _tiny_result(2.0).save(path)
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    loaded = CalibrationResult.load(path)
    assert float(loaded.idata["posterior"]["theta"].max()) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nc"]


def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_result(tmp_path, umask, monkeypatch):
    path = tmp_path / "result.nc"
    umask(0o022)
    _tiny_result(1.0).save(path)

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.DataTree, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        _tiny_result(2.0).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nc"]
    monkeypatch.undo()
    assert float(CalibrationResult.load(path).idata["posterior"]["theta"].max()) == 1.0
