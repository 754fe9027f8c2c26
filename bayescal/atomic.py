"""Atomic file writes: the one place that creates a temporary file, fills it and renames it over the destination.

A file written here is either absent, the complete old version or the complete new version; a reader never
sees a partial file. The temporary file is created next to the destination (same file system, so
``os.replace`` is an atomic rename) with ``O_CREAT | O_EXCL`` and mode ``0o666``: the kernel applies the
process umask (and any default ACL) as for any other new file, so the published file gets
``0o666 & ~umask`` (``0o644`` under umask ``022``), not the ``0o600`` of ``tempfile.mkstemp``. The umask is
never read or changed, so this is safe with threads.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic"]

_ATTEMPTS = 100


def _new_temp_file(path: Path) -> Path:
    """Create an empty file ``.{name}.{random}.tmp`` next to ``path`` with mode ``0o666 & ~umask``."""
    for _ in range(_ATTEMPTS):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no unused temporary file name next to {path}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file to write, renamed over ``path`` when the ``with`` block ends normally.

    The parent folder of ``path`` is created if missing. The yielded file exists (empty) and has mode
    ``0o666 & ~umask``; write to it by name (writers that truncate it keep that mode). On normal exit the
    file is fsynced and renamed onto ``path`` with ``os.replace``. If the block raises, the temporary file
    is removed, any existing ``path`` is left untouched and the exception propagates.

    Parameters
    ----------
    path : str or Path
        Destination file; an existing file is replaced.

    Yields
    ------
    Path
        The temporary file, in the destination folder, named ``.{name}.{random}.tmp``.

    Raises
    ------
    OSError
        If the folder or the temporary file cannot be created, or the fsync or the rename fails (the
        temporary file is removed first); whatever the ``with`` block raises is re-raised unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or Path
        Destination file; its folder is created if missing, an existing file is replaced.
    data : bytes
        The complete new contents.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OSError
        If the file cannot be written or renamed; an existing file is then left as it was.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`), without newline translation.

    Parameters
    ----------
    path : str or Path
        Destination file; its folder is created if missing, an existing file is replaced.
    text : str
        The complete new contents, written as given (``"\\n"`` stays ``"\\n"`` on every platform).
    encoding : str, default "utf-8"
        Text encoding.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OSError
        If the file cannot be written or renamed; an existing file is then left as it was.
    UnicodeEncodeError
        If ``text`` cannot be encoded with ``encoding`` (nothing is published).
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline="") as fh:
        fh.write(text)
    return path
