"""Safe extraction of a pack archive (a plain tar) into a staging folder.

The archive is untrusted until its manifest's signature verifies, and the signature can only be
checked once the manifest is out, so extraction itself must be harmless: sizes checked before
reading, only regular files, names from a strict pattern (no '..', no absolute path, no
symlink or device), files created exclusively and never through a symlink.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edge_app.core.errors import ModelError
from edge_app.trap.packs.manifest import (
    FILE_RE,
    MANIFEST,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_PACK_BYTES,
    SIGNATURE,
)

_CHUNK = 1 << 20


def extract(pack: Path, dest: Path, after_file: Callable[[int], None] | None = None) -> None:
    """Unpack ``pack`` into the empty folder ``dest``, every file fsynced.

    Args:
        pack: the archive.
        dest: an existing, empty folder.
        after_file: called with the count of files written so far (a test hook for killing
            the installer mid-extraction).

    Raises:
        ModelError: the archive is too large, not a tar, or holds a member that is not a
            plainly named regular file within the limits.
    """
    size = pack.stat().st_size
    if size > MAX_PACK_BYTES + (MAX_FILES + 2) * 1024 + (1 << 20):
        raise ModelError(str(pack), f"pack is {size} bytes, limit {MAX_PACK_BYTES}")
    total = 0
    seen: set[str] = set()
    try:
        with tarfile.open(pack, mode="r:") as tar:
            for n, member in enumerate(tar, start=1):
                name = member.name
                if n > MAX_FILES + 2:
                    raise ModelError(str(pack), f"more than {MAX_FILES + 2} members")
                if not member.isreg():
                    raise ModelError(str(pack), f"member {name!r} is not a regular file "
                                     "(links, devices and folders are refused)")
                if not (FILE_RE.match(name) or name in (MANIFEST, SIGNATURE)) or name in seen:
                    raise ModelError(str(pack), f"member name {name!r} refused (a path outside "
                                     "the pack, or a duplicate)")
                if member.size > MAX_FILE_BYTES:
                    raise ModelError(str(pack), f"member {name!r} is {member.size} bytes, "
                                     f"limit {MAX_FILE_BYTES}")
                total += member.size
                if total > MAX_PACK_BYTES:
                    raise ModelError(str(pack), f"members exceed {MAX_PACK_BYTES} bytes")
                seen.add(name)
                src = tar.extractfile(member)
                if src is None:
                    raise ModelError(str(pack), f"member {name!r} has no data")
                _write(src, dest, name, member.size)
                if after_file is not None:
                    after_file(n)
    except tarfile.TarError as e:
        raise ModelError(str(pack), f"not a pack archive (tar): {e}") from e


def _write(src: IO[bytes], dest: Path, name: str, size: int) -> None:
    target = dest / name
    if "/" in name:
        sub = dest / name.split("/", 1)[0]
        sub.mkdir(exist_ok=True)
        if sub.is_symlink():
            raise ModelError(str(sub), "refusing to write through a symlink")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > size:
                raise ModelError(name, "member longer than its header says")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
