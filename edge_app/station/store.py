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

    ranger.db                                 events (unit, id, seq, outcome, json), media,
                                              sightings (which link brought an event, when),
                                              units (last status and stats of each unit)
    media/<unit>/<media_id>.jpg               reassembled, sha256-checked media files

One alert, every link (ARCHITECTURE §10): an alert first seen as an 11-byte LoRa uplink is
stored as an event at once (``source: lorawan`` in its JSON, no media); when the MQTT event of
the same (unit, id) arrives with its detections and photo, it replaces the JSON in place — never
a second row — and ``sightings`` keeps one row per link with the time it first came that way.
An MQTT event is never replaced by a later LoRa copy.

Same durability settings as the trap (WAL, ``synchronous=FULL``); media files are written
atomically (temp file, fsync, rename, fsync of the folder) before their row. A store written
by an earlier version (keyed by id alone, ``user_version`` 0) is migrated in place when opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_app.core.errors import StorageError
from edge_app.core.files import atomic_write, sync_filesystem, write_unsynced

DB_NAME = "ranger.db"
OPEN_TIMEOUT_S = 15.0
"""How long opening waits for another worker that is creating or migrating the store."""
SCHEMA_VERSION = 2
LINKS = ("mqtt", "lorawan")

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
_SIGHTINGS = """CREATE TABLE IF NOT EXISTS sightings (
        unit     TEXT NOT NULL,
        id       TEXT NOT NULL,
        link     TEXT NOT NULL,            -- 'mqtt' or 'lorawan'
        received REAL NOT NULL,            -- when it first came over this link
        PRIMARY KEY (unit, id, link)
    )"""
_UNITS = """CREATE TABLE IF NOT EXISTS units (
        unit      TEXT PRIMARY KEY,
        state     TEXT,                    -- last status: online / offline / lost
        state_at  REAL,                    -- when that status arrived (station clock)
        last_seen REAL NOT NULL,           -- last message of any kind from the unit
        stats     TEXT,                    -- last stats JSON, as it passed the door
        stats_at  REAL
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


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A reassembled, sha256-checked media file waiting to be stored."""

    unit: str
    media_id: str
    event_id: str | None
    data: bytes
    sha256: str


class RangerStore:
    """The receiver's store; used by the receiver's worker thread only.

    Args:
        folder: where ``ranger.db`` and ``media/`` live (created if missing).

    Raises:
        StorageError: the folder or database cannot be created or opened.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.folder / DB_NAME, isolation_level=None,
                                             check_same_thread=False, timeout=10)
            except (OSError, sqlite3.Error) as e:
                raise StorageError(f"cannot open the receiver store in {self.folder}: {e}") from e
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._migrate()
                return
            except sqlite3.Error as e:
                self._conn.close()
                # Station workers started together meet here: switching a new file to WAL
                # needs it to themselves, and SQLite answers "locked" at once rather than
                # through the busy timeout. Another try a moment later finds it done.
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise StorageError(
                        f"cannot open the receiver store in {self.folder}: {e}") from e
                time.sleep(0.1)

    def _migrate(self) -> None:
        """Create the tables, or re-key a version-0 store (id alone) by (unit, id)."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        # Another worker may have migrated between the read above and this lock.
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            self._conn.execute("COMMIT")
            return
        try:
            for table, ddl in (("events", _EVENTS), ("media", _MEDIA)) if version == 0 else ():
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
            self._conn.execute(_SIGHTINGS)  # version 2: links and units
            self._conn.execute(_UNITS)
            self._conn.execute("INSERT OR IGNORE INTO sightings (unit, id, link, received) "
                               "SELECT unit, id, 'mqtt', received FROM events")
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def add_events(self, events: Iterable[StoredEvent], now: float,
                   link: str = "mqtt") -> set[EventKey]:
        """Store events (one transaction, one fsync); returns the (unit, id) keys that were new.

        ``link`` is the way they came. An MQTT event replaces a LoRa one of the same key (it
        has the detections and the media); the key is then not new (the alert was shown when
        the LoRa uplink came) but the event is stored, so it may be receipted.

        Raises:
            StorageError: the write failed; nothing was stored.
        """
        if link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}")
        new: set[EventKey] = set()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for ev in events:
                    body = json.dumps(ev.event, separators=(",", ":"), ensure_ascii=False)
                    copies = self._conn.execute(
                        "INSERT INTO events (id, unit, seq, outcome, received, json) "
                        "VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (unit, id) DO UPDATE SET copies = copies + 1, "
                        "json = CASE WHEN ?7 = 'mqtt' AND json_extract(json, '$.source') = "
                        "'lorawan' THEN excluded.json ELSE json END, "
                        "outcome = CASE WHEN ?7 = 'mqtt' AND json_extract(json, '$.source') = "
                        "'lorawan' THEN excluded.outcome ELSE outcome END "
                        "RETURNING copies",
                        (ev.id, ev.unit, ev.event.get("seq"), ev.outcome, now, body, link),
                    ).fetchone()[0]
                    self._conn.execute(
                        "INSERT OR IGNORE INTO sightings (unit, id, link, received) "
                        "VALUES (?, ?, ?, ?)", (ev.unit, ev.id, link, now))
                    if copies == 1:
                        new.add(ev.key)
                for unit in {ev.unit for ev in events}:  # the fleet's last-seen, same commit
                    self._unit_seen(unit, now)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StorageError(f"cannot store events in {self.folder}: {e}") from e
        return new

    def links(self, unit: str, event_id: str) -> dict[str, float]:
        """The links an event came over, with when it first came over each."""
        rows = self._conn.execute("SELECT link, received FROM sightings WHERE unit = ? AND "
                                  "id = ? ORDER BY received", (unit, event_id))
        return {str(r[0]): float(r[1]) for r in rows}

    def event(self, unit: str, event_id: str) -> dict[str, Any] | None:
        """The stored event JSON of (unit, id), None if there is none."""
        r = self._conn.execute("SELECT json FROM events WHERE unit = ? AND id = ?",
                               (unit, event_id)).fetchone()
        return None if r is None else dict(json.loads(r[0]))

    def _unit_seen(self, unit: str, now: float) -> None:
        self._conn.execute(
            "INSERT INTO units (unit, last_seen) VALUES (?1, ?2) ON CONFLICT (unit) "
            "DO UPDATE SET last_seen = MAX(last_seen, ?2)", (unit, now))

    def update_unit(self, unit: str, now: float, *, state: str | None = None,
                    stats: dict[str, Any] | None = None) -> None:
        """A message from ``unit`` arrived: its last-seen time, and its status or stats.

        Raises:
            StorageError: the write failed (the fleet view is then a message behind).
        """
        try:
            self._conn.execute(
                "INSERT INTO units (unit, state, state_at, last_seen, stats, stats_at) "
                "VALUES (?1, ?2, CASE WHEN ?2 IS NULL THEN NULL ELSE ?3 END, ?3, ?4, "
                "CASE WHEN ?4 IS NULL THEN NULL ELSE ?3 END) "
                "ON CONFLICT (unit) DO UPDATE SET last_seen = MAX(last_seen, ?3), "
                "state = COALESCE(?2, state), "
                "state_at = CASE WHEN ?2 IS NULL THEN state_at ELSE ?3 END, "
                "stats = COALESCE(?4, stats), "
                "stats_at = CASE WHEN ?4 IS NULL THEN stats_at ELSE ?3 END",
                (unit, state, now, None if stats is None else json.dumps(
                    stats, separators=(",", ":"), ensure_ascii=False)))
        except sqlite3.Error as e:
            raise StorageError(f"cannot record unit {unit}: {e}") from e

    def unit(self, unit: str) -> dict[str, Any] | None:
        """The fleet row of ``unit`` (stats parsed), None if it was never heard."""
        r = self._conn.execute("SELECT state, state_at, last_seen, stats, stats_at FROM units "
                               "WHERE unit = ?", (unit,)).fetchone()
        if r is None:
            return None
        return {"unit": unit, "state": r[0], "state_at": r[1], "last_seen": r[2],
                "stats": None if r[3] is None else json.loads(r[3]), "stats_at": r[4]}

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

    def add_media_files(self, files: list[MediaFile], now: float) -> list[Path]:
        """Write reassembled media files and their rows, durably, with one flush for all.

        Why not :meth:`add_media` per file: two fsyncs per file (the file, its folder) held a
        station to ~230 thumbnails a second on an SSD; here the files are written and renamed,
        the file system is flushed once (``syncfs``), and the rows go in one transaction — the
        row still never exists before its file is on disk.

        Raises:
            StorageError: a file, the flush or the rows could not be written; no row was
                added (files already renamed are harmless: a later copy replaces them).
        """
        paths = [self.media_path(f.unit, f.media_id) for f in files]
        try:
            for f, path in zip(files, paths, strict=True):
                write_unsynced(path, f.data)
            if files:
                sync_filesystem(self.folder)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for f, path in zip(files, paths, strict=True):
                    self._conn.execute(
                        "INSERT OR REPLACE INTO media (id, unit, event_id, path, bytes, sha256, "
                        "received) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (f.media_id, f.unit, f.event_id, str(path.relative_to(self.folder)),
                         len(f.data), f.sha256, now))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot store {len(files)} media file(s): {e}") from e
        return paths

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
