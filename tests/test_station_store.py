"""The station store (station/store.py): keyed by (unit, id), older stores migrated."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from station_support import event

from edge_app.station.store import DB_NAME, RangerStore, StoredEvent


def stored(unit: str, event_id: str) -> StoredEvent:
    return StoredEvent(event_id, unit, "alert", event(unit, 1, id=event_id))


def test_the_same_id_of_two_units_is_two_rows(tmp_path: Path) -> None:
    s = RangerStore(tmp_path)
    try:
        assert s.add_events([stored("A-1", "X-1")], 1.0) == {("A-1", "X-1")}
        assert s.add_events([stored("B-2", "X-1"), stored("A-1", "X-1")], 2.0) == {
            ("B-2", "X-1")}
        assert (s.event_count(), s.event_count("B-2"), s.duplicates()) == (2, 1, 1)
        assert s.event_ids("B-2") == ["X-1"]
        s.add_media("A-1", "A-1-1-thumb", "A-1-1", b"jpeg", "0" * 64, 3.0)
        assert s.has_media("A-1", "A-1-1-thumb")
        assert not s.has_media("B-2", "A-1-1-thumb")
        assert (tmp_path / "media" / "A-1" / "A-1-1-thumb.jpg").read_bytes() == b"jpeg"
    finally:
        s.close()


def test_a_store_keyed_by_id_alone_is_migrated_in_place(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.executescript("""
        CREATE TABLE events (id TEXT PRIMARY KEY, unit TEXT NOT NULL, seq INTEGER,
            outcome TEXT NOT NULL, received REAL NOT NULL, copies INTEGER NOT NULL DEFAULT 1,
            json TEXT NOT NULL);
        CREATE TABLE media (id TEXT PRIMARY KEY, unit TEXT NOT NULL, event_id TEXT,
            path TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
            received REAL NOT NULL);
    """)
    con.execute("INSERT INTO events VALUES ('A-1-1', 'A-1', 1, 'alert', 1.0, 3, ?)",
                (json.dumps(event("A-1", 1)),))
    con.execute("INSERT INTO media VALUES ('A-1-1-thumb', 'A-1', 'A-1-1', 'media/A-1/x.jpg', "
                "4, ?, 1.0)", ("0" * 64,))
    con.commit()
    con.close()
    for run in range(2):  # migrated once, then opened as it is
        s = RangerStore(tmp_path)
        try:
            assert s.event_ids("A-1") == ["A-1-1"]
            assert s.duplicates() == 2
            assert s.has_media("A-1", "A-1-1-thumb")
            new = s.add_events([stored("B-2", "A-1-1")], 2.0)
            assert new == ({("B-2", "A-1-1")} if run == 0 else set())
        finally:
            s.close()
    con = sqlite3.connect(tmp_path / DB_NAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE '%_v0'"
                       ).fetchone()[0] == 0
    con.close()
