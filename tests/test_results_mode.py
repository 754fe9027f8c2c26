"""Issue 9: atomic writes publish ordinary files (mode ``0o666 & ~umask``) and never a partial one.

:mod:`bayescal.atomic` is tested directly; one test checks that :meth:`CalibrationResult.save` uses it.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import xarray as xr

from bayescal.atomic import atomic_path, write_bytes_atomic, write_text_atomic
from bayescal.results import CalibrationResult


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


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    text = write_text_atomic(tmp_path / "out" / "a.txt", "héllo\n")  # the folder is created
    data = write_bytes_atomic(tmp_path / "out" / "b.bin", b"\x00\x01")
    with atomic_path(tmp_path / "out" / "c.nc") as tmp:
        assert tmp.parent == tmp_path / "out" and tmp.name.startswith(".c.nc.") and tmp.name.endswith(".tmp")
        assert _mode(tmp) == 0o666 & ~mask  # already while being written
        tmp.write_bytes(b"c")
    for path in (text, data, tmp_path / "out" / "c.nc"):
        assert _mode(path) == 0o666 & ~mask
    assert text.read_bytes() == "héllo\n".encode()  # UTF-8, no newline translation
    assert data.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "b.bin", "c.nc"]


def test_replacing_a_file_is_atomic_and_takes_the_new_mode(tmp_path, umask):
    path = tmp_path / "a.txt"
    umask(0o077)
    write_text_atomic(path, "old")
    assert _mode(path) == 0o600
    inode = path.stat().st_ino
    umask(0o022)
    write_text_atomic(path, "new")
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert _mode(path) == 0o644
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_file(tmp_path, umask):
    path = tmp_path / "a.txt"
    umask(0o022)
    write_text_atomic(path, "old")
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "é", encoding="ascii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert path.read_text() == "old"


def test_saved_result_has_the_umask_mode(tmp_path, umask):
    umask(0o027)
    posterior = xr.Dataset({"theta": (("chain", "draw"), np.full((1, 3), 2.0))})
    path = CalibrationResult(xr.DataTree.from_dict({"posterior": posterior})).save(tmp_path / "out" / "result.nc")
    assert _mode(path) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["result.nc"]  # no temporary file left
    assert float(CalibrationResult.load(path).idata["posterior"]["theta"].max()) == 2.0
