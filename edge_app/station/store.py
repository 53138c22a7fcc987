"""What a receiver has stored: a small SQLite file and a media folder (``camtrap alerts --store``).

Why the receiver persists: a receipt tells the trap "you may stop re-sending this event", so it
must only be sent for an event that is on the receiver's disk — otherwise a receiver crash
between the receipt and the write would lose the alert for good. The same table is the
receiver's dedupe memory, so a restarted receiver does not show an alert twice.

Why every key includes the unit: the unit is the one the broker authenticated (the topic, bound
to the credentials by the ACL). Keyed by the event id alone, one unit's message carrying another
unit's id would occupy that id, and the real event, arriving later, would be taken for a
duplicate: never shown, yet receipted. Keyed by (unit, id), a unit can only ever collide with
itself.

Layout under the store folder::

    ranger.db                                 events (unit, id, seq, outcome, json), media
    media/<unit>/<media_id>.jpg               reassembled, sha256-checked media files

Same durability settings as the trap (WAL, ``synchronous=FULL``); media files are written
atomically (temp file, fsync, rename, fsync of the folder) before their row. A store written
by an earlier version (keyed by id alone, ``user_version`` 0) is migrated in place when opened.
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
SCHEMA_VERSION = 1

EventKey = tuple[str, str]
"""(unit, event id): what identifies an event at the station."""

_EVENTS = """CREATE TABLE IF NOT EXISTS events (
        id       TEXT NOT NULL,
        unit     TEXT NOT NULL,
        seq      INTEGER,
        outcome  TEXT NOT NULL,
        received REAL NOT NULL,
        copies   INTEGER NOT NULL DEFAULT 1,  -- times received (at-least-once: duplicates)
        json     TEXT NOT NULL,
        PRIMARY KEY (unit, id)
    )"""
_MEDIA = """CREATE TABLE IF NOT EXISTS media (
        id       TEXT NOT NULL,
        unit     TEXT NOT NULL,
        event_id TEXT,
        path     TEXT NOT NULL,
        bytes    INTEGER NOT NULL,
        sha256   TEXT NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (unit, id)
    )"""
_COLUMNS = {"events": "id, unit, seq, outcome, received, copies, json",
            "media": "id, unit, event_id, path, bytes, sha256, received"}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as received: its id, the unit the broker authenticated, and the event JSON."""

    id: str
    unit: str
    outcome: str
    event: dict[str, Any]

    @property
    def key(self) -> EventKey:
        """(unit, id): the dedupe key."""
        return self.unit, self.id


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
            self._migrate()
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the receiver store in {self.folder}: {e}") from e

    def _migrate(self) -> None:
        """Create the tables, or re-key a version-0 store (id alone) by (unit, id)."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for table, ddl in (("events", _EVENTS), ("media", _MEDIA)):
                old = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                         "AND name = ?", (table,)).fetchone()
                if old is None:
                    self._conn.execute(ddl)
                    continue
                cols = _COLUMNS[table]
                self._conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v0")
                self._conn.execute(ddl)
                self._conn.execute(f"INSERT OR IGNORE INTO {table} ({cols}) "  # noqa: S608
                                   f"SELECT {cols} FROM {table}_v0")  # fixed names only
                self._conn.execute(f"DROP TABLE {table}_v0")
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def add_events(self, events: Iterable[StoredEvent], now: float) -> set[EventKey]:
        """Store events (one transaction, one fsync); returns the (unit, id) keys that were new.

        Raises:
            StorageError: the write failed; nothing was stored.
        """
        new: set[EventKey] = set()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for ev in events:
                    copies = self._conn.execute(
                        "INSERT INTO events (id, unit, seq, outcome, received, json) "
                        "VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (unit, id) DO UPDATE SET copies = copies + 1 "
                        "RETURNING copies",
                        (ev.id, ev.unit, ev.event.get("seq"), ev.outcome, now,
                         json.dumps(ev.event, separators=(",", ":"), ensure_ascii=False)),
                    ).fetchone()[0]
                    if copies == 1:
                        new.add(ev.key)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StorageError(f"cannot store events in {self.folder}: {e}") from e
        return new

    def event_count(self, unit: str | None = None) -> int:
        """Events stored (of ``unit`` only, when given)."""
        if unit is None:
            r = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        else:
            r = self._conn.execute("SELECT COUNT(*) FROM events WHERE unit = ?",
                                   (unit,)).fetchone()
        return int(r[0])

    def duplicates(self) -> int:
        """Copies received beyond the first, over all events."""
        r = self._conn.execute("SELECT COALESCE(SUM(copies - 1), 0) FROM events").fetchone()
        return int(r[0])

    def event_ids(self, unit: str | None = None) -> list[str]:
        """Ids in the order they were first stored (of ``unit`` only, when given)."""
        if unit is None:
            rows = self._conn.execute("SELECT id FROM events ORDER BY received, rowid")
        else:
            rows = self._conn.execute("SELECT id FROM events WHERE unit = ? "
                                      "ORDER BY received, rowid", (unit,))
        return [str(r[0]) for r in rows]

    def has_media(self, unit: str, media_id: str) -> bool:
        """True if ``unit``'s media file ``media_id`` is stored."""
        r = self._conn.execute("SELECT 1 FROM media WHERE unit = ? AND id = ?",
                               (unit, media_id)).fetchone()
        return r is not None

    def media_path(self, unit: str, media_id: str) -> Path:
        return self.folder / "media" / unit / f"{media_id}.jpg"

    def add_media(
        self, unit: str, media_id: str, event_id: str | None, data: bytes, sha256: str,
        now: float,
    ) -> Path:
        """Write a reassembled media file atomically, then its row.

        ``unit`` and ``media_id`` become path components: the receiver's door lets through
        only letters, digits, ``-`` and ``_`` there (no ``/``, no ``..``).

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
