"""A model pack arriving over MQTT in chunks: kept on the card, resumable, verified whole.

Why this shape: a trap in gated power mode is awake for minutes at a time, and a cellular link
drops mid-transfer. A pack (a few MB) must be able to arrive over several wake-ups, and what
already arrived must survive a power cut, so the sender only ever resends what is missing.

On the card, under ``<storage>/packs-incoming/``, one download at a time::

    <sha256>.json   what was offered: total bytes and chunk size (written once, atomically)
    <sha256>.part   the pack, chunk *i* at offset ``i * chunk_bytes`` (a sparse file)
    <sha256>.have   one byte per chunk: 1 once that chunk is on the card

A chunk's bytes are written and fsynced *before* its byte in ``.have`` is set, so a power cut
can lose the record of a chunk that is on the card (it is asked for again) but never claim one
that is not. The name is the sha256 of the whole pack: once every chunk is in, the file is
hashed and must match it, so a chunk that was corrupted, or written at the wrong offset, cannot
slip through; a mismatch throws the download away. What the pack *is* (its signature, its
models, its self-test) is then the installer's business (:mod:`edge_app.trap.packs.install`).

Pure file logic with no MQTT in it, tested on its own; :mod:`edge_app.trap.packs.remote` puts
it behind the unit's commands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_app.core.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)

INCOMING = "packs-incoming"
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MIN_CHUNK = 1024
MAX_CHUNK = 256 * 1024
"""A chunk is one MQTT message held in the uplink's memory: 256 KiB at most on a 512 MB Pi."""
MAX_PACK_BYTES = 512 * 1024 * 1024
"""Far above a real pack (a detector, a classifier, a head and a few frames: 5–60 MB)."""


class DownloadError(ValueError):
    """An offer or chunk that cannot be taken as given; the message is for the sender."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a download stands: which chunks the sender still has to send."""

    sha256: str
    size: int
    chunk_bytes: int
    of: int
    missing: list[int]

    @property
    def complete(self) -> bool:
        return not self.missing


class Downloads:
    """The incoming pack on this unit's card (at most one; a new offer replaces another).

    Args:
        storage_root: the unit's ``storage.root``.
        min_free_mb: ``storage.min_free_mb``: a pack is refused if it would eat into it.
    """

    def __init__(self, storage_root: Path, min_free_mb: float = 0.0) -> None:
        self.dir = Path(storage_root) / INCOMING
        self.min_free_mb = min_free_mb

    def _paths(self, sha: str) -> tuple[Path, Path, Path]:
        return (self.dir / f"{sha}.json", self.dir / f"{sha}.part", self.dir / f"{sha}.have")

    def offer(self, sha: str, size: int, chunk_bytes: int) -> Progress:
        """Start (or resume) the download of the pack with this sha256.

        Raises:
            DownloadError: a bad sha256, size or chunk size, or not enough room on the card.
        """
        sha = _check_sha(sha)
        if not 0 < size <= MAX_PACK_BYTES:
            raise DownloadError(f"'bytes' must be 1 to {MAX_PACK_BYTES}")
        if not MIN_CHUNK <= chunk_bytes <= MAX_CHUNK:
            raise DownloadError(f"'chunk_bytes' must be {MIN_CHUNK} to {MAX_CHUNK}")
        current = self.progress(sha)
        if current is not None and (current.size, current.chunk_bytes) == (size, chunk_bytes):
            return current  # resumed: the same pack cut the same way
        self.discard()  # another pack, or this one cut differently: start afresh
        self.dir.mkdir(parents=True, exist_ok=True)
        left_mb = (shutil.disk_usage(self.dir).free - size) / 1e6
        if left_mb < self.min_free_mb:
            raise DownloadError(f"no room: {size / 1e6:.1f} MB would leave {left_mb:.0f} MB "
                                f"free, below storage.min_free_mb ({self.min_free_mb:.0f})")
        meta, part, have = self._paths(sha)
        of = math.ceil(size / chunk_bytes)
        with open(part, "wb") as f:
            f.truncate(size)
            os.fsync(f.fileno())
        atomic_write(have, bytes(of))
        atomic_write(meta, json.dumps({"bytes": size, "chunk_bytes": chunk_bytes}).encode())
        fsync_dir(self.dir)
        log.info("model pack %s… offered: %d bytes in %d chunks", sha[:12], size, of)
        return Progress(sha, size, chunk_bytes, of, list(range(of)))

    def progress(self, sha: str) -> Progress | None:
        """The download of ``sha`` as it stands on the card; None if there is none (or its
        files are not a consistent set, which a power cut during the offer can leave)."""
        sha = _check_sha(sha)
        meta, part, have = self._paths(sha)
        try:
            m = json.loads(meta.read_bytes())
            size, chunk = int(m["bytes"]), int(m["chunk_bytes"])
            bits = have.read_bytes()
            if not part.is_file() or part.stat().st_size != size:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        of = math.ceil(size / chunk) if chunk > 0 else 0
        if of == 0 or len(bits) != of:
            return None
        return Progress(sha, size, chunk, of, [i for i, b in enumerate(bits) if b != 1])

    def chunk(self, sha: str, index: int, data: bytes) -> Progress:
        """Write one chunk of the offered pack (a repeated chunk is written again, harmlessly).

        Raises:
            DownloadError: no such download, an index out of range, or a wrong length.
        """
        p = self.progress(sha)
        if p is None:
            raise DownloadError(f"pack {sha[:12]}… was not offered (send models/offer first)")
        if not 0 <= index < p.of:
            raise DownloadError(f"chunk {index} is out of range (the pack has {p.of})")
        want = p.chunk_bytes if index < p.of - 1 else p.size - p.chunk_bytes * (p.of - 1)
        if len(data) != want:
            raise DownloadError(f"chunk {index} has {len(data)} bytes, expected {want}")
        _meta, part, have = self._paths(p.sha256)
        with open(part, "r+b") as f:
            f.seek(index * p.chunk_bytes)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with open(have, "r+b") as f:  # only now: the chunk is on the card
            f.seek(index)
            f.write(b"\x01")
            f.flush()
            os.fsync(f.fileno())
        return Progress(p.sha256, p.size, p.chunk_bytes, p.of,
                        [i for i in p.missing if i != index])

    def complete(self, sha: str) -> Path:
        """The whole pack, checked against its sha256.

        Raises:
            DownloadError: chunks are missing, or the bytes do not hash to ``sha`` (the
                download is then thrown away: it can only be sent again from the start).
        """
        p = self.progress(sha)
        if p is None:
            raise DownloadError(f"pack {sha[:12]}… was not offered")
        if p.missing:
            raise DownloadError(f"{len(p.missing)} of {p.of} chunks are still missing")
        _meta, part, _have = self._paths(p.sha256)
        h = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        if h.hexdigest() != p.sha256:
            self.discard()
            raise DownloadError(f"the chunks hash to {h.hexdigest()}, not to the pack's sha256 "
                                f"{p.sha256}: download discarded, send it again")
        return part

    def discard(self) -> None:
        """Remove every incoming file (after an install, or before another pack)."""
        if self.dir.is_dir():
            for f in self.dir.iterdir():
                if f.is_file() or f.is_symlink():
                    f.unlink()
            fsync_dir(self.dir)


def _check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not SHA_RE.match(sha):
        raise DownloadError("'pack' must be the pack's sha256 (64 lower-case hex digits)")
    return sha
