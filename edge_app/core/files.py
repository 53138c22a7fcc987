"""Durable file writes for every deployable: a power cut leaves the old file or the new one.

Every file is written to a temp name in the *same* directory (``os.replace`` is only atomic
within one file system), fsynced, renamed, and then the directory is fsynced so the rename
itself survives. Temp files a crash left behind start with :data:`TEMP_PREFIX`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and its missing parents durably.

    A new directory is only durable once the directory holding its entry is fsynced, so each
    parent of a newly created level is fsynced too (once a day at most, so it costs nothing).
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a power cut leaves the old file or the new one.

    Args:
        path: final file name; its directory is created if needed.
        data: the whole content.

    Raises:
        OSError: the card is full, read-only or gone; no temp file is left behind.
    """
    final = Path(path)
    ensure_dir(final.parent)
    tmp = final.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{final.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_unsynced(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp name and rename it to ``path``, *without* any fsync.

    For writers that make many files durable at once with :func:`sync_filesystem` (one flush
    per batch instead of two per file): until that call, a power cut may lose the file, never
    leave half of it under its final name (the rename comes after the whole write).
    """
    ensure_dir(path.parent)
    tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_libc: ctypes.CDLL | None = None


def sync_filesystem(path: Path) -> None:
    """Flush every dirty file and directory entry of the file system holding ``path``.

    Linux ``syncfs(2)`` (one call, that file system only); elsewhere ``os.sync()``.

    Raises:
        OSError: the flush failed (an I/O error: the data is not known to be on disk).
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    syncfs = getattr(_libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
