"""What a receiver has stored: a small SQLite file and a media folder (``camtrap alerts --store``).

Why the receiver persists: a receipt tells the trap "you may stop re-sending this event", so it
must only be sent for an event that is on the receiver's disk — otherwise a receiver crash
between the receipt and the write would lose the alert for good. The same table is the
receiver's dedupe memory, so a restarted receiver does not show an alert twice.

Layout under the store folder::

    ranger.db                                 events (id, unit, seq, outcome, json), media
    media/<unit>/<media_id>.jpg               reassembled, sha256-checked media files

Same durability settings as the trap (WAL, ``synchronous=FULL``); media files are written
atomically (temp file, fsync, rename, fsync of the folder) before their row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.core.errors import StorageError
from edge_app.core.files import atomic_write

DB_NAME = "ranger.db"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        id       TEXT PRIMARY KEY,
        unit     TEXT NOT NULL,
        seq      INTEGER,
        outcome  TEXT NOT NULL,
        received REAL NOT NULL,
        copies   INTEGER NOT NULL DEFAULT 1,  -- times received (at-least-once: duplicates)
        json     TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS media (
        id       TEXT PRIMARY KEY,
        unit     TEXT NOT NULL,
        event_id TEXT,
        path     TEXT NOT NULL,
        bytes    INTEGER NOT NULL,
        sha256   TEXT NOT NULL,
        received REAL NOT NULL
    )""",
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as received: its id, unit and the event JSON."""

    id: str
    unit: str
    outcome: str
    event: dict[str, Any]


class RangerStore:
    """The receiver's store; used by the receiver's worker thread only.

    Args:
        folder: where ``ranger.db`` and ``media/`` live (created if missing).

    Raises:
        StorageError: the folder or database cannot be created or opened.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.folder / DB_NAME, isolation_level=None,
                                         check_same_thread=False, timeout=10)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            for stmt in _SCHEMA:
                self._conn.execute(stmt)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the receiver store in {self.folder}: {e}") from e

    def close(self) -> None:
        self._conn.close()

    def add_events(self, events: Iterable[StoredEvent], now: float) -> set[str]:
        """Store events (one transaction, one fsync); returns the ids that were new.

        Raises:
            StorageError: the write failed; nothing was stored.
        """
        new: set[str] = set()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for ev in events:
                    copies = self._conn.execute(
                        "INSERT INTO events (id, unit, seq, outcome, received, json) "
                        "VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET copies = copies + 1 RETURNING copies",
                        (ev.id, ev.unit, ev.event.get("seq"), ev.outcome, now,
                         json.dumps(ev.event, separators=(",", ":"), ensure_ascii=False)),
                    ).fetchone()[0]
                    if copies == 1:
                        new.add(ev.id)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StorageError(f"cannot store events in {self.folder}: {e}") from e
        return new

    def event_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def duplicates(self) -> int:
        """Copies received beyond the first, over all events."""
        r = self._conn.execute("SELECT COALESCE(SUM(copies - 1), 0) FROM events").fetchone()
        return int(r[0])

    def event_ids(self) -> list[str]:
        return [str(r[0]) for r in self._conn.execute("SELECT id FROM events ORDER BY received")]

    def has_media(self, media_id: str) -> bool:
        r = self._conn.execute("SELECT 1 FROM media WHERE id = ?", (media_id,)).fetchone()
        return r is not None

    def media_path(self, unit: str, media_id: str) -> Path:
        return self.folder / "media" / unit / f"{media_id}.jpg"

    def add_media(
        self, unit: str, media_id: str, event_id: str | None, data: bytes, sha256: str,
        now: float,
    ) -> Path:
        """Write a reassembled media file atomically, then its row.

        Raises:
            StorageError: the file or the row could not be written.
        """
        path = self.media_path(unit, media_id)
        try:
            atomic_write(path, data)
            self._conn.execute(
                "INSERT OR REPLACE INTO media (id, unit, event_id, path, bytes, sha256, "
                "received) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (media_id, unit, event_id, str(path.relative_to(self.folder)), len(data),
                 sha256, now),
            )
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot store media {media_id}: {e}") from e
        return path
