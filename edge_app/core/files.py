"""Durable file writes for every deployable: a power cut leaves the old file or the new one.

Every file is written to a temp name in the *same* directory (``os.replace`` is only atomic
within one file system), fsynced, renamed, and then the directory is fsynced so the rename
itself survives. Temp files a crash left behind start with :data:`TEMP_PREFIX`.
"""

from __future__ import annotations

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
