"""The boot partition ``camtrap provision`` writes to: a mounted folder or a FAT image.

A FAT image (``card.img``, or ``disk.img@OFFSET`` for the partition at byte OFFSET of a whole
disk image, e.g. ``@4194304`` for Raspberry Pi OS's first partition at sector 8192) is read
and written with mtools, so neither root nor a loop mount is needed: that is how CI checks a
provisioned card, and how a card image can be prepared before it is flashed.

Both kinds offer the same four operations on paths relative to the partition's root
(``camtrap/unit.json``); every write is skipped by the caller when the bytes are already
there, which is what makes provisioning idempotent down to the image's bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from edge_app.core.errors import ConfigError

MTOOLS = ("mdir", "mtype", "mcopy", "mmd", "mdel")
_IMG_SPEC = re.compile(r"^(?P<path>.+?)(?:@(?P<offset>\d+))?$")


class BootCard(Protocol):
    """A boot partition; paths are POSIX-relative (``camtrap/secrets/ca.crt``)."""

    label: str

    def files(self) -> set[str]:
        """Every regular file on the partition, relative, lower-cased (FAT ignores case)."""
        ...

    def read(self, rel: str) -> bytes | None:
        ...

    def write(self, rel: str, data: bytes) -> None:
        ...

    def delete(self, rel: str) -> None:
        ...


class FolderCard:
    """A mounted boot partition (``/media/$USER/bootfs``, ``/boot/firmware``) or any folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def files(self) -> set[str]:
        return {p.relative_to(self.root).as_posix().lower()
                for p in self.root.rglob("*") if p.is_file()}

    def read(self, rel: str) -> bytes | None:
        p = self.root / rel
        return p.read_bytes() if p.is_file() else None

    def write(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        # Temporary file + rename: a card pulled mid-write keeps the old file or the new one.
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".provision-")
        try:
            # mkstemp makes 0600; only the secrets stay that way on a folder that keeps modes.
            # A mounted FAT partition keeps none and refuses chmod (EPERM): nothing to keep.
            with contextlib.suppress(OSError):
                os.chmod(tmp, 0o600 if "/secrets/" in f"/{rel}" else 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)


class FatImage:
    """A FAT file system image driven with mtools (``-i IMAGE[@@OFFSET]``)."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        missing = [t for t in MTOOLS if shutil.which(t) is None]
        if missing:
            raise ConfigError("boot", f"{missing[0]} not found: install mtools "
                              "(apt-get install mtools) to write a card image")
        if not image.is_file():
            raise ConfigError("boot", f"{image} is neither a folder nor an image file")
        self.image = image
        self.spec = f"{image}@@{offset}" if offset else str(image)
        self.label = f"{image}@{offset}" if offset else str(image)
        # Images made by `mkfs.vfat -C` need not have a whole number of tracks; mtools would
        # refuse them without this.
        self.env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        self._dirs: set[str] | None = None

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run(argv, env=self.env, capture_output=True, timeout=120, check=False)
        if check and r.returncode != 0:
            err = r.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ConfigError("boot", f"{argv[0]} failed on {self.label}: "
                              f"{err[-1] if err else r.returncode}")
        return r

    def _listing(self) -> list[str]:
        r = self._run("mdir", "-/", "-b", "-i", self.spec, "::/", check=False)
        if r.returncode != 0:
            # `mdir -b` of an empty root fails as "not found"; the plain listing tells an
            # empty file system from an image mtools cannot read.
            self._run("mdir", "-i", self.spec, "::/")
            return []
        out = r.stdout.decode("utf-8", "replace").splitlines()
        return [line.strip()[3:] for line in out if line.strip().startswith("::/")]

    def files(self) -> set[str]:
        entries = self._listing()
        self._dirs = {e.rstrip("/").lower() for e in entries if e.endswith("/")}
        return {e.lower() for e in entries if e and not e.endswith("/")}

    def read(self, rel: str) -> bytes | None:
        r = self._run("mcopy", "-n", "-i", self.spec, f"::/{rel}", "-", check=False)
        if r.returncode != 0:
            if rel.lower() not in self.files():
                return None
            self._run("mcopy", "-n", "-i", self.spec, f"::/{rel}", "-")  # raises with reason
        return r.stdout

    def write(self, rel: str, data: bytes) -> None:
        if self._dirs is None:
            self.files()
        assert self._dirs is not None
        parents = list(PurePosixPath(rel).parents)[:-1]
        for d in reversed(parents):
            key = d.as_posix().lower()
            if key not in self._dirs:
                self._run("mmd", "-i", self.spec, f"::/{d.as_posix()}")
                self._dirs.add(key)
        with tempfile.TemporaryDirectory(prefix="camtrap-provision-") as tmp:
            local = Path(tmp) / "f"
            local.write_bytes(data)
            self._run("mcopy", "-o", "-i", self.spec, str(local), f"::/{rel}")

    def delete(self, rel: str) -> None:
        self._run("mdel", "-i", self.spec, f"::/{rel}", check=False)


def open_card(spec: str) -> BootCard:
    """A folder, ``IMAGE`` or ``IMAGE@OFFSET`` (bytes)."""
    p = Path(spec)
    if p.is_dir():
        return FolderCard(p)
    m = _IMG_SPEC.match(spec)
    assert m is not None  # the pattern matches any non-empty string
    path, offset = Path(m["path"]), int(m["offset"] or 0)
    if not path.exists():
        raise ConfigError("boot", f"{spec} does not exist (give the mounted boot partition "
                          "or a FAT image file)")
    return FatImage(path, offset)
