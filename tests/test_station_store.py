"""The station store (station/store.py): keyed by (unit, id), older stores migrated."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from station_support import event

from edge_app.station.store import DB_NAME, SCHEMA_VERSION, RangerStore, StoredEvent


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
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("SELECT unit, id, link FROM sightings ORDER BY unit").fetchall() == [
        ("A-1", "A-1-1", "mqtt"), ("B-2", "A-1-1", "mqtt")]
    assert con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE '%_v0'"
                       ).fetchone()[0] == 0
    con.close()


def test_one_alert_every_link_lora_first_then_mqtt_completes_it_in_place(tmp_path: Path) -> None:
    s = RangerStore(tmp_path)
    try:
        lora = StoredEvent("A-1-7", "A-1", "alert", {**event("A-1", 7), "source": "lorawan",
                                                     "media": []})
        mqtt = StoredEvent("A-1-7", "A-1", "alert", event("A-1", 7, label="leopard"))
        assert s.add_events([lora], 10.0, link="lorawan") == {("A-1", "A-1-7")}
        assert s.event("A-1", "A-1-7") == lora.event
        assert s.add_events([mqtt], 25.0) == set()  # shown already: not new, but completed
        assert s.event("A-1", "A-1-7") == mqtt.event
        assert s.add_events([lora], 30.0, link="lorawan") == set()  # never back to LoRa
        assert s.event("A-1", "A-1-7") == mqtt.event
        assert s.links("A-1", "A-1-7") == {"lorawan": 10.0, "mqtt": 25.0}
        assert s.event_count() == 1
    finally:
        s.close()


def test_the_fleet_row_keeps_the_last_status_and_stats(tmp_path: Path) -> None:
    s = RangerStore(tmp_path)
    try:
        assert s.unit("A-1") is None
        s.update_unit("A-1", 5.0, state="online")
        s.update_unit("A-1", 9.0, stats={"battery_v": 3.3})
        s.update_unit("A-1", 12.0)  # an event: seen, nothing else changes
        s.update_unit("A-1", 11.0)  # late: last_seen never goes back
        assert s.unit("A-1") == {"unit": "A-1", "state": "online", "state_at": 5.0,
                                 "last_seen": 12.0, "stats": {"battery_v": 3.3},
                                 "stats_at": 9.0}
        s.update_unit("A-1", 20.0, state="lost")
        u = s.unit("A-1")
        assert u is not None
        assert (u["state"], u["state_at"], u["stats"]) == ("lost", 20.0, {"battery_v": 3.3})
    finally:
        s.close()


def _open_together(folder: Path, n: int) -> list[str]:
    """``n`` processes open a new store at the same moment; their errors."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(n) as pool:
        return [e for e in pool.map(_open_once, [str(folder)] * n) if e]


def _open_once(folder: str) -> str:
    import time as _time

    from edge_app.core.errors import StorageError

    _time.sleep(max(0.0, 1.5 - _time.monotonic() % 1.5))  # line the workers up
    try:
        RangerStore(folder).close()
    except StorageError as e:
        return str(e)
    return ""


def test_workers_opening_a_new_store_together_all_get_it(tmp_path: Path) -> None:
    """Station workers started at once (a service with two workers, a restart of both): the
    first creates and migrates the store, the others wait for it instead of failing with
    'database is locked' (which SQLite answers at once, not through the busy timeout)."""
    for k in range(3):
        folder = tmp_path / f"store{k}"
        assert _open_together(folder, 4) == []
        con = sqlite3.connect(folder / DB_NAME)
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.close()
