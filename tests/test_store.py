"""Database settings, atomic media writes, thumbnails and the one-transaction event store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from store_support import burst_and_verdict, jpeg, make_cfg

from edge_app.core.clock import FakeClock, rfc3339
from edge_app.core.errors import ImageError, StorageError
from edge_app.trap.store.db import SCHEMA_VERSION, open_db
from edge_app.trap.store.media import (
    TEMP_PREFIX,
    atomic_write,
    clean_temp,
    make_thumbnail,
    media_paths,
)
from edge_app.trap.store.outbox import Outbox
from edge_app.trap.store.pipeline import EventStore

# -- database ---------------------------------------------------------------------------


def test_open_db_sets_durable_pragmas_and_schema_version(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "sub" / "camtrap.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert int(version[0]) == SCHEMA_VERSION
    finally:
        conn.close()
    open_db(tmp_path / "sub" / "camtrap.db").close()  # reopening an existing file is fine


def test_a_database_from_a_newer_camtrap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "camtrap.db"
    conn = open_db(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(StorageError, match="schema version"):
        open_db(path)


# The schema of camtrap 0.1 (v1), as units in the field have it.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (unit TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE tallies (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE events (
    id TEXT PRIMARY KEY, unit TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('alert', 'keep', 'discard')),
    label TEXT NOT NULL, species TEXT, score REAL NOT NULL, audit INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '', event_json TEXT NOT NULL, image_path TEXT,
    thumb_path TEXT, created REAL NOT NULL, UNIQUE (unit, seq));
CREATE INDEX events_ts ON events (ts);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY, event_id TEXT REFERENCES events (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('alert', 'status', 'event', 'thumb', 'image')),
    priority INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB, media_path TEXT,
    created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, expires_at REAL,
    state TEXT NOT NULL DEFAULT 'ready'
        CHECK (state IN ('ready', 'inflight', 'sent', 'dead')),
    inflight_since REAL, done_at REAL, last_error TEXT,
    CHECK (payload IS NOT NULL OR media_path IS NOT NULL));
CREATE INDEX outbox_service ON outbox (state, priority, id);
CREATE INDEX outbox_event ON outbox (event_id);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO counters VALUES ('T-1', 2);
INSERT INTO events (id, unit, seq, ts, outcome, label, score, event_json, created)
    VALUES ('T-1-1', 'T-1', 1, 1.0, 'alert', 'animal', 0.9, '{"id": "T-1-1"}', 1.0),
           ('T-1-2', 'T-1', 2, 2.0, 'keep', 'animal', 0.4, '{"id": "T-1-2"}', 2.0);
INSERT INTO outbox (event_id, kind, priority, topic, payload, media_path, created,
                    attempts, next_attempt_at, state)
    VALUES ('T-1-1', 'alert', 0, 'camtrap/T-1/event', X'7B7D', NULL, 1.0, 1, 1.0, 'inflight'),
           ('T-1-1', 'thumb', 3, 'camtrap/T-1/media/T-1-1-thumb', NULL, 'a.jpg', 1.0, 0, 1.0,
            'ready'),
           ('T-1-2', 'event', 2, 'camtrap/T-1/event', X'7B7D', NULL, 2.0, 1, 2.0, 'sent');
"""


def test_a_v1_database_from_the_field_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "camtrap.db"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    old.close()
    conn = open_db(path)
    try:
        assert conn.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
        rows = [tuple(r) for r in conn.execute(
            "SELECT event_id, kind, state, attempts, chunks FROM outbox ORDER BY id")]
        assert rows == [("T-1-1", "alert", "inflight", 1, None),
                        ("T-1-1", "thumb", "ready", 0, None),
                        ("T-1-2", "event", "sent", 1, None)]
        conn.execute("UPDATE outbox SET state = 'acked-by-broker' WHERE kind = 'alert'")
        conn.execute("INSERT INTO settings (key, value, updated) VALUES ('k', '1', 0)")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert "outbox_timer" in {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()
    open_db(path).close()  # a second open finds v2 and changes nothing


# -- media ------------------------------------------------------------------------------


def test_atomic_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    target = tmp_path / "media" / "2026" / "09" / "21" / "T-1-1.jpg"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["T-1-1.jpg"]


def test_atomic_write_failure_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # os.replace of a file onto a directory fails
    with pytest.raises(IsADirectoryError):
        atomic_write(target, b"data")
    assert os.listdir(tmp_path) == ["taken"]


def test_clean_temp_removes_only_unfinished_files(tmp_path: Path) -> None:
    day = tmp_path / "media" / "2026" / "09" / "21"
    day.mkdir(parents=True)
    (day / "T-1-1.jpg").write_bytes(b"done")
    (day / f"{TEMP_PREFIX}abc-T-1-2.jpg").write_bytes(b"half")
    assert clean_temp(tmp_path) == 1
    assert os.listdir(day) == ["T-1-1.jpg"]
    assert clean_temp(tmp_path / "nothing-here") == 0


def test_media_layout_uses_the_utc_date(tmp_path: Path) -> None:
    img, thumb = media_paths(tmp_path, "T-1-7", 1_790_000_000.0)  # 2026-09-21 UTC
    assert img == tmp_path / "media" / "2026" / "09" / "21" / "T-1-7.jpg"
    assert thumb.name == "T-1-7_thumb.jpg"
    assert thumb.parent == img.parent


def test_thumbnail_is_small_upright_and_a_jpeg() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    src = jpeg(640, 320, exif=exif.tobytes())
    small = make_thumbnail(src, 100, 70)
    with Image.open(io.BytesIO(small)) as im:
        assert im.format == "JPEG"
        assert im.size == (50, 100)  # landscape sensor data shown as portrait
        assert im.getexif().get(0x0112) is None
    with pytest.raises(ImageError):
        make_thumbnail(b"not a jpeg", 100, 70)


def test_thumbnail_of_a_truncated_jpeg_uses_the_part_that_is_there() -> None:
    src = jpeg(640, 480)
    small = make_thumbnail(src[: len(src) * 2 // 3], 64, 70)
    with Image.open(io.BytesIO(small)) as im:
        assert im.size == (64, 48)


# -- the event store ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(make_cfg(tmp_path / "data"), FakeClock())
    s.open()
    yield s
    s.close()


def outbox_rows(store: EventStore) -> list[tuple[str, str | None, str, str | None]]:
    return [(r.kind, r.event_id, r.link, r.media_id) for r in store.outbox.ls(100)]


def test_alert_writes_media_then_catalogue_and_outbox_together(store: EventStore) -> None:
    notified: list[int] = []
    store.notify = lambda: notified.append(1)
    burst, verdict = burst_and_verdict("alert", "animal", "leopard", 0.91)
    rec = store.record(burst, verdict, battery_v=3.9, temp_c=21.5, time_synced=True)
    assert rec is not None
    event_id, event = rec
    assert event_id == "T-1-1"
    assert notified == [1]

    assert event["id"] == "T-1-1"
    assert event["unit"] == "T-1"
    assert event["seq"] == 1
    assert event["ts"] == rfc3339(burst.trigger.wall)
    assert event["outcome"] == "alert"
    assert event["label"] == "animal"
    assert event["species"] == "leopard"
    assert event["score"] == 0.91
    assert event["detections"][0]["species"] == "leopard"
    assert event["frames"] == 3
    assert event["battery_v"] == 3.9
    assert event["temp_c"] == 21.5
    assert event["time_synced"] is True
    kinds = {m["kind"]: m for m in event["media"]}
    assert set(kinds) == {"image", "thumb"}

    row = store.catalog.get("T-1-1")
    assert row is not None
    assert row.outcome == "alert"
    assert not row.audit
    assert json.loads(row.event_json) == event
    assert row.image_path is not None
    assert row.thumb_path is not None
    image = store.root / row.image_path
    # The best frame, as captured (same pixels), with the event's EXIF inserted.
    stored = Image.open(io.BytesIO(image.read_bytes()))
    captured = Image.open(io.BytesIO(burst.frames[1].jpeg))
    assert stored.tobytes() == captured.tobytes()
    assert stored.getexif().get_ifd(0x8769)[0xA420] == "T-1-1"  # ImageUniqueID
    assert kinds["image"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert kinds["thumb"]["bytes"] == (store.root / row.thumb_path).stat().st_size
    assert not any(p.name.startswith(TEMP_PREFIX) for p in store.root.rglob("*"))

    assert outbox_rows(store) == [  # what, and over which link; never a topic
        ("alert", "T-1-1", "mqtt", None),
        ("thumb", "T-1-1", "mqtt", "T-1-1-thumb"),
        ("image", "T-1-1", "mqtt", "T-1-1-image"),
    ]
    alert = store.outbox.ls(1)[0]
    assert alert.payload is not None
    assert json.loads(alert.payload) == event


def test_seq_increments_and_survives_a_restart(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    with EventStore(cfg, FakeClock()) as s:
        ids = [s.record(*burst_and_verdict("alert")) for _ in range(2)]
        assert [r.event_id for r in ids if r] == ["T-1-1", "T-1-2"]
    with EventStore(cfg, FakeClock()) as s:
        rec = s.record(*burst_and_verdict("keep", "animal", None, 0.3))
        assert rec is not None
        assert rec.event_id == "T-1-3"
        assert s.catalog.current_seq("T-1") == 3


def test_keep_queues_its_event_and_thumbnail_but_not_the_image(store: EventStore) -> None:
    rec = store.record(*burst_and_verdict("keep", "animal", None, 0.3))
    assert rec is not None
    assert rec.event["outcome"] == "keep"
    assert [k for k, *_ in outbox_rows(store)] == ["event", "thumb"]


def test_discards_are_counted_and_one_in_n_kept_as_an_unsent_audit(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, policy={"audit_every": 3})
    with EventStore(cfg, FakeClock()) as s:
        results = [s.record(*burst_and_verdict("discard", "empty", None, 0.0))
                   for _ in range(4)]
        assert [r is not None for r in results] == [False, False, True, False]
        audit = results[2]
        assert audit is not None
        assert audit.event["audit"] is True
        row = s.catalog.get(audit.event_id)
        assert row is not None
        assert row.audit
        assert row.outcome == "discard"
        assert row.image_path is not None  # kept locally to measure the miss rate
        assert s.outbox.ls() == []  # never sent
        s.record(*burst_and_verdict("alert"))
        assert s.catalog.counts() == {"alert": 1, "keep": 0, "discard": 4, "audit": 1}
        assert s.counts()["discard"] == 4  # the any-thread view agrees


def test_a_failed_transaction_stores_nothing_and_gives_the_seq_back(store: EventStore) -> None:
    conn = sqlite3.connect(store.db_path)
    conn.execute("CREATE TRIGGER fail BEFORE INSERT ON outbox "
                 "BEGIN SELECT RAISE(ABORT, 'card died'); END")
    conn.commit()
    with pytest.raises(StorageError, match="card died"):
        store.record(*burst_and_verdict("alert"))
    assert store.catalog.get("T-1-1") is None
    assert store.catalog.current_seq("T-1") == 0
    assert store.outbox.ls() == []
    conn.execute("DROP TRIGGER fail")
    conn.commit()
    conn.close()
    rec = store.record(*burst_and_verdict("alert"))
    assert rec is not None
    assert rec.event_id == "T-1-1"
    assert len(list(store.root.rglob("T-1-1.jpg"))) == 1


def test_an_unwritable_media_folder_does_not_cost_the_alert(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "media").write_bytes(b"a file where the media folder should be")
    with EventStore(make_cfg(root), FakeClock()) as s:
        rec = s.record(*burst_and_verdict("alert"))
        assert rec is not None
        assert rec.event["media"] == []
        assert [k for k, *_ in outbox_rows(s)] == ["alert"]


@pytest.mark.parametrize(("mqtt", "lora", "rows"), [
    (True, True, [("alert", "lorawan"), ("alert", "mqtt"), ("thumb", "mqtt"),
                  ("image", "mqtt")]),
    (False, True, [("alert", "lorawan")]),  # LoRa only: no MQTT rows, no topics, no media
    (False, False, [("alert", "mqtt"), ("thumb", "mqtt"), ("image", "mqtt")]),  # no link on:
    # held for MQTT, so that nothing decided is lost
])
def test_rows_are_queued_per_enabled_link(
    tmp_path: Path, mqtt: bool, lora: bool, rows: list[tuple[str, str]]
) -> None:
    cfg = make_cfg(tmp_path, mqtt={"enabled": mqtt}, lorawan={"enabled": lora})
    with EventStore(cfg, FakeClock()) as s:
        s.record(*burst_and_verdict("alert"))
        s.record(*burst_and_verdict("keep", "animal", None, 0.3))  # keeps never go over LoRa
        got = [(r.kind, r.link) for r in s.outbox.ls(100) if r.event_id == "T-1-1"]
        assert sorted(got) == sorted(rows)
        assert all(r.link == "mqtt" for r in s.outbox.ls(100) if r.event_id == "T-1-2")
        assert s.catalog.counts()["alert"] == 1


def test_outbox_depth_works_from_another_connection(store: EventStore) -> None:
    store.record(*burst_and_verdict("alert"))
    assert store.outbox_depth() == 3
    assert isinstance(store.outbox, Outbox)


def test_a_thumbnail_fits_its_byte_budget() -> None:
    import random

    rng = random.Random(3)
    noisy = Image.frombytes("RGB", (800, 600), rng.randbytes(800 * 600 * 3))
    buf = io.BytesIO()
    noisy.save(buf, "JPEG", quality=95)
    free = make_thumbnail(buf.getvalue(), 320, 90)
    capped = make_thumbnail(buf.getvalue(), 320, 90, max_bytes=12_000)
    assert len(free) > 12_000
    assert len(capped) <= 12_000
    with Image.open(io.BytesIO(capped)) as im:
        assert im.format == "JPEG"
