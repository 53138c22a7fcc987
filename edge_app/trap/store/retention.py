"""Free space on the card: when it runs low, stored images go first, then thumbnails; alerts never.

Why prune at all: a trap in the forest is visited every few months; a card that fills up must
not stop the trap from storing and sending the next leopard. The database rows (catalogue and
outbox, a few KB per event) are never pruned: an alert is tiny, and it is the one thing that
must survive. Media files are what fills a card, so they are deleted in this order:

1. images already delivered (a copy is at the base), oldest first;
2. the others: first those of ``keep`` events and audit samples, then those of alerts, oldest
   first (an old image that only exists here is the least likely to be wanted);
3. thumbnails in the same order.

A pruned file's unsent outbox rows become ``dead`` (``pruned: disk low``) and the catalogue's
path is cleared, so nobody tries to send or read a file that is gone.

Pruning runs with hysteresis: once free space is below ``storage.min_free_mb`` it deletes until
there is 1.5 times that much, so a full card is not pruned one file per event.

The reserve: something else can fill the card too (logs, a technician's copy), and once every
media file is pruned nothing more can be freed. So the trap holds ``storage.reserve_mb`` in a
file of zeros (``<root>/.reserve``) and deletes it when a write fails with nothing left to
prune: the alerts (a few KB each) then still fit. It is put back once there is room again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.core.errors import StorageError
from edge_app.trap.store.db import db_path, open_db, transaction
from edge_app.trap.store.outbox import Outbox
from edge_app.trap.store.upkeep import OutboxUpkeep

logger = logging.getLogger(__name__)

MB = 1024 * 1024
RESERVE_NAME = ".reserve"
HYSTERESIS = 1.5
_BATCH = 50

FreeBytes = Callable[[Path], int]


def statvfs_free(path: Path) -> int:
    """Bytes available to an unprivileged writer on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one :meth:`DiskGuard.prune` did.

    Attributes:
        files: media files deleted.
        bytes: their total size.
        free_bytes: free space afterwards.
        enough: True if free space reached the target.
    """

    files: int
    bytes: int
    free_bytes: int
    enough: bool


class DiskGuard:
    """Watches free space under the storage root and prunes media when it runs low.

    Args:
        root: the storage root (media paths in the catalogue are relative to it).
        min_free_bytes: below this the disk is low.
        free_bytes: how free space is measured (the OS by default; a test may pass a function
            that reads a fake quota).
    """

    def __init__(
        self, root: str | os.PathLike[str], min_free_bytes: int,
        free_bytes: FreeBytes = statvfs_free, reserve_bytes: int = 0,
    ) -> None:
        self.root = Path(root)
        self.min_free_bytes = max(0, int(min_free_bytes))
        self.reserve_bytes = max(0, int(reserve_bytes))
        self._free = free_bytes

    @classmethod
    def from_config(cls, cfg: Config) -> DiskGuard:
        return cls(cfg.storage.root, int(cfg.storage.min_free_mb * MB),
                   reserve_bytes=int(cfg.storage.reserve_mb * MB))

    @property
    def reserve_path(self) -> Path:
        return self.root / RESERVE_NAME

    def ensure_reserve(self) -> bool:
        """Create the reserve file if it is missing and there is room; True if it exists.

        Room means the reserve still leaves ``min_free`` free, so putting it back never makes
        the card low by itself.
        """
        if self.reserve_bytes == 0:
            return False
        path = self.reserve_path
        if path.exists():
            return True
        if self.free_bytes() < self.min_free_bytes + 2 * self.reserve_bytes:
            return False
        tmp = path.with_name(RESERVE_NAME + ".tmp")
        try:
            with tmp.open("wb") as f:
                zeros = bytes(MB)
                left = self.reserve_bytes
                while left > 0:
                    f.write(zeros[:min(left, MB)])
                    left -= MB
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            logger.warning("cannot put the space reserve back: %s", e)
            return False
        logger.info("space reserve of %.1f MB in place (%s)", self.reserve_bytes / MB, path)
        return True

    def emergency(self) -> bool:
        """True while the reserve has been given up and the card has not recovered: only
        what is small and vital (alerts, thumbnails) should be written."""
        if self.reserve_bytes == 0 or self.reserve_path.exists():
            return False
        return self.free_bytes() < self.min_free_bytes + 2 * self.reserve_bytes

    def release_reserve(self) -> int:
        """Delete the reserve file; returns the bytes freed (0 if there was none)."""
        path = self.reserve_path
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        except OSError as e:
            logger.error("cannot release the space reserve %s: %s", path, e)
            return 0
        logger.error("card full with nothing left to prune: released the %.1f MB space "
                     "reserve so alerts can still be stored", size / MB)
        return size

    def free_bytes(self) -> int:
        """Free bytes now (0 if the root cannot be examined, which counts as low)."""
        try:
            return self._free(self.root)
        except OSError as e:
            logger.warning("cannot read free space of %s: %s", self.root, e)
            return 0

    def low(self) -> bool:
        """True when free space is below the configured minimum."""
        return self.free_bytes() < self.min_free_bytes

    def prune(
        self, conn: sqlite3.Connection, outbox: Outbox, now: float, need_bytes: int = 0
    ) -> PruneResult:
        """Delete media until free space is back above the target (see the module docstring).

        Args:
            conn: a connection to the trap database (the caller's thread's own).
            outbox: the outbox on that connection (rows of pruned files become dead).
            now: wall time, for the dead rows.
            need_bytes: also make room for this much (after a write failed for lack of space).

        Returns:
            What was deleted and whether it was enough.
        """
        target = max(int(self.min_free_bytes * HYSTERESIS), self.free_bytes() + need_bytes)
        files = freed = 0
        seen: set[tuple[str, str]] = set()
        while (free := self.free_bytes()) < target:
            batch = [c for c in self._candidates(conn, len(seen) + _BATCH) if c[:2] not in seen]
            if not batch:
                break
            done: list[tuple[str, str, str]] = []
            for event_id, column, rel in batch:
                seen.add((event_id, column))
                size = self._unlink(rel)
                if size is not None:
                    files += 1
                    freed += size
                done.append((event_id, column, rel))
                if self.free_bytes() >= target:
                    break
            self._forget(conn, outbox, done, now)
        free = self.free_bytes()
        enough = free >= target
        if files:
            logger.warning("disk low: pruned %d media file(s), %.1f MB; %.1f MB free", files,
                           freed / MB, free / MB)
        if not enough and need_bytes > 0:
            released = self.release_reserve()
            if released:
                files += 1
                freed += released
                free = self.free_bytes()
        if not enough and not files:
            logger.error("disk low (%.1f MB free) and no media left to prune; alerts are kept",
                         free / MB)
        return PruneResult(files=files, bytes=freed, free_bytes=free, enough=enough)

    def _candidates(self, conn: sqlite3.Connection, limit: int) -> list[tuple[str, str, str]]:
        """(event id, catalogue column, relative path) in pruning order."""
        rows = conn.execute(
            """
            SELECT id, col, path FROM (
                SELECT e.id AS id, 'image_path' AS col, e.image_path AS path, 0 AS thumb,
                       e.outcome = 'alert' AND e.audit = 0 AS is_alert, e.ts AS ts,
                       EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id
                               AND o.kind = 'image' AND o.state = 'sent') AS delivered
                FROM events e WHERE e.image_path IS NOT NULL
                UNION ALL
                SELECT e.id, 'thumb_path', e.thumb_path, 1,
                       e.outcome = 'alert' AND e.audit = 0, e.ts,
                       EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id
                               AND o.kind = 'thumb' AND o.state = 'sent')
                FROM events e WHERE e.thumb_path IS NOT NULL
            ) ORDER BY thumb, delivered DESC, is_alert, ts LIMIT ?
            """,
            (limit,),
        ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def _unlink(self, rel: str) -> int | None:
        path = self.root / rel
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return None
        except OSError as e:
            logger.error("cannot prune %s: %s", path, e)
            return None
        return size

    def _forget(
        self, conn: sqlite3.Connection, outbox: Outbox, done: list[tuple[str, str, str]],
        now: float,
    ) -> None:
        """Clear the paths of deleted files; on a full disk this may fail and is retried at
        the next prune (the files are gone either way, and a row whose file is gone is marked
        dead by the link when it tries to read it)."""
        try:
            with transaction(conn):
                for event_id, column, rel in done:
                    conn.execute(
                        f"UPDATE events SET {column} = NULL WHERE id = ?",  # noqa: S608 - fixed column names
                        (event_id,),
                    )
                    outbox.mark_media_pruned(rel, now)
        except sqlite3.Error as e:
            logger.warning("pruned files not yet recorded in the database: %s", e)


class Housekeeper:
    """A supervisor stage: keeps the card from filling up and the outbox tables bounded.

    Every ``storage.check_every_s`` it checks free space and prunes media when low (the store
    thread also prunes before each write, but an idle trap can run out of space too — logs,
    another program — and then no link could even record a delivery). On the same thread it
    runs the outbox upkeep (:class:`edge_app.trap.store.upkeep.OutboxUpkeep`: expiry, purging
    of finished rows, the LoRa ledger's old rows), whatever links are on.

    Args:
        cfg: ``storage`` (root, thresholds, interval) and ``outbox``.
        clock: wall time for row times, and the waits.
        guard: the disk guard (default: from the config).
    """

    def __init__(self, cfg: Config, clock: Clock, guard: DiskGuard | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.guard = guard or DiskGuard.from_config(cfg)

    def run(self, stop: threading.Event) -> None:
        """Check, prune if low, upkeep; sleep; until ``stop``."""
        self.guard.ensure_reserve()
        conn: sqlite3.Connection | None = None
        upkeep: OutboxUpkeep | None = None
        try:
            while True:
                if conn is None:
                    try:
                        conn = open_db(db_path(self.cfg.storage.root))
                    except StorageError as e:
                        logger.error("housekeeping: %s", e)
                    else:
                        upkeep = OutboxUpkeep(conn, self.clock, self.cfg.outbox)
                if conn is not None and upkeep is not None:
                    try:
                        self.check(conn, upkeep)
                    except sqlite3.Error as e:  # a full card: try again next time
                        logger.error("housekeeping: %s", e)
                if self.clock.wait(stop, self.cfg.storage.check_every_s):
                    return
        finally:
            if conn is not None:
                conn.close()

    def check(self, conn: sqlite3.Connection, upkeep: OutboxUpkeep) -> None:
        """One round: prune media if the card is low (else put the reserve back), then the
        outbox upkeep that is due."""
        if self.guard.low():
            self.guard.prune(conn, Outbox(conn, self.clock, self.cfg.outbox),
                             self.clock.wall())
        else:
            self.guard.ensure_reserve()
        upkeep.tick(self.clock.wall())
