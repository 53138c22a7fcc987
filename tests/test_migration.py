"""A database from the field, written by the previous release, upgraded in place to schema v3.

The fixture is the exact DDL the previous release (schema v2) created — the store's tables plus
the LoRa router's ``lora_tx`` / ``lora_meta`` / ``lora_airtime``, which it created outside the
schema versioning — dumped from ``sqlite_master`` of a database that release made, with rows in
every state. The new code opens it; every row that was still owed must still be delivered, by
the real MQTT link to a real mosquitto and receiver, and by the real LoRa router through the
modem emulator.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker
from lorawan_support import KEYS, UNIT, drive, lora_cfg, make_router
from PIL import Image
from store_support import make_cfg, wait_for
from test_mqtt_link import RunningLink

from edge_app.core import lora_codec as codec
from edge_app.core.clock import FakeClock
from edge_app.sim.modems import Rui3Modem
from edge_app.sim.netserver import NetworkServer
from edge_app.station.receiver import Receiver
from edge_app.trap.settings import Settings
from edge_app.trap.store.db import SCHEMA_VERSION, open_db
from edge_app.trap.store.outbox import Outbox, State

# The DDL of schema v2 exactly as the previous release created it (sqlite_master dump).
V2_DDL = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE counters (
    unit TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);
CREATE TABLE tallies (
    name TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
);
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    unit        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    ts          REAL NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('alert', 'keep', 'discard')),
    label       TEXT NOT NULL,
    species     TEXT,
    score       REAL NOT NULL,
    audit       INTEGER NOT NULL DEFAULT 0,
    reason      TEXT NOT NULL DEFAULT '',
    event_json  TEXT NOT NULL,
    image_path  TEXT,
    thumb_path  TEXT,
    created     REAL NOT NULL,
    UNIQUE (unit, seq)
);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE settings (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,  -- JSON
    updated REAL NOT NULL,
    source  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT REFERENCES events (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL
                    CHECK (kind IN ('alert', 'status', 'event', 'thumb', 'image')),
    priority        INTEGER NOT NULL,
    topic           TEXT NOT NULL,
    payload         BLOB,
    media_path      TEXT,
    created         REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    expires_at      REAL,
    state           TEXT NOT NULL DEFAULT 'ready'
                    CHECK (state IN ('ready', 'inflight', 'acked-by-broker', 'sent', 'dead')),
    inflight_since  REAL,
    done_at         REAL,
    last_error      TEXT,
    chunks          TEXT,
    CHECK (payload IS NOT NULL OR media_path IS NOT NULL)
);
CREATE INDEX outbox_service ON outbox (state, priority, id);
CREATE INDEX outbox_event ON outbox (event_id);
CREATE INDEX outbox_timer ON outbox (state, next_attempt_at);
CREATE TABLE lora_tx (
        event_id        TEXT PRIMARY KEY,
        seq             INTEGER NOT NULL,
        priority        INTEGER NOT NULL,
        event_ts        REAL NOT NULL,
        created         REAL NOT NULL,
        state           TEXT NOT NULL
                        CHECK (state IN ('pending', 'sent', 'skipped', 'expired', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        done_at         REAL,
        confirmed       INTEGER,
        last_error      TEXT
    );
CREATE INDEX lora_tx_pending ON lora_tx (state, priority, event_ts);
CREATE TABLE lora_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE lora_airtime (
        id        INTEGER PRIMARY KEY,
        ts        REAL NOT NULL,
        band      TEXT NOT NULL,
        airtime_s REAL NOT NULL,
        kind      TEXT NOT NULL,
        downlink  INTEGER NOT NULL DEFAULT 0
    );
CREATE INDEX lora_airtime_ts ON lora_airtime (ts);
"""

#: Events of the fixture: (seq, outcome). Media files are written by the test.
EVENTS = [(1, "alert"), (2, "alert"), (3, "keep"), (4, "alert"), (5, "alert"), (6, "alert")]
#: (event seq, kind, state, chunks, topic) of the v2 outbox rows, as the old link left them.
OUTBOX = [
    (1, "alert", "sent", None), (1, "thumb", "sent", None), (1, "image", "dead", None),
    (2, "alert", "acked-by-broker", None), (2, "thumb", "inflight", "[0, 1]"),
    (2, "image", "ready", None),
    (3, "event", "ready", None), (3, "thumb", "ready", None),
    (4, "alert", "inflight", None),
    (5, "alert", "ready", None), (5, "image", "ready", "[1]"),
    (6, "alert", "ready", None),
]
#: (event id, state) of the old LoRa queue; T-1-99 lost its catalogue row long ago.
LORA_TX = [("T-1-1", "sent"), ("T-1-2", "skipped"), ("T-1-4", "expired"),
           ("T-1-5", "failed"), ("T-1-6", "pending"), ("T-1-99", "pending")]
PRIORITY = {"alert": 0, "status": 1, "event": 2, "thumb": 3, "image": 4}


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), (seed * 30 % 255, 90, 40)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_v2_database(root: Path, base: float, unit: str = "T-1") -> Path:
    """A v2 database with rows in every state, and the media files its rows name."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "camtrap.db"
    con = sqlite3.connect(path)
    con.executescript(V2_DDL)
    con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    con.execute("INSERT INTO counters VALUES (?, 6)", (unit,))
    con.execute("INSERT INTO settings VALUES ('detector.score_threshold', '0.3', ?, "
                "'config/set')", (base,))
    for seq, outcome in EVENTS:
        eid, ts = f"{unit}-{seq}", base + 10 * seq
        event = {"id": eid, "unit": unit, "seq": seq, "outcome": outcome, "label": "animal",
                 "species": "leopard", "score": 0.9, "time_synced": True, "battery_v": 3.8,
                 "detections": [{"category": "animal", "conf": 0.8}], "media": []}
        media = root / "media"
        media.mkdir(exist_ok=True)
        for kind in ("image", "thumb"):
            (media / f"{eid}-{kind}.jpg").write_bytes(jpeg(seq))
        con.execute(
            "INSERT INTO events (id, unit, seq, ts, outcome, label, species, score, event_json, "
            "image_path, thumb_path, created) VALUES (?, ?, ?, ?, ?, 'animal', 'leopard', 0.9, "
            "?, ?, ?, ?)", (eid, unit, seq, ts, outcome, json.dumps(event),
                            f"media/{eid}-image.jpg", f"media/{eid}-thumb.jpg", ts))
    for seq, kind, state, chunks in OUTBOX:
        eid, ts = f"{unit}-{seq}", base + 10 * seq
        media = kind in ("thumb", "image")
        topic = (f"camtrap/{unit}/media/{eid}-{kind}" if media else f"camtrap/{unit}/event")
        payload = None if media else json.dumps({"id": eid, "unit": unit, "seq": seq,
                                                 "outcome": "alert" if kind == "alert"
                                                 else "keep", "label": "animal"}).encode()
        con.execute(
            "INSERT INTO outbox (event_id, kind, priority, topic, payload, media_path, created, "
            "attempts, next_attempt_at, state, inflight_since, done_at, chunks) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (eid, kind, PRIORITY[kind], topic, payload,
             f"media/{eid}-{kind}.jpg" if media else None, ts,
             0 if state == "ready" else 1,
             ts + 300 if state == "acked-by-broker" else ts, state,
             ts if state == "inflight" else None,
             ts + 1 if state in ("sent", "dead") else None, chunks))
    for eid, state in LORA_TX:
        seq = int(eid.rsplit("-", 1)[1])
        ts = base + 10 * seq
        done = state not in ("pending",)
        con.execute(
            "INSERT INTO lora_tx (event_id, seq, priority, event_ts, created, state, attempts, "
            "next_attempt_at, done_at, confirmed, last_error) VALUES (?, ?, 3, ?, ?, ?, ?, ?, "
            "?, ?, ?)",
            (eid, seq, ts, ts, state, 1 if state in ("sent", "pending") else 0, ts,
             ts + 5 if done else None, 1 if state == "sent" else None,
             "no_ack: no ACK" if state == "failed" else None))
    con.executemany("INSERT INTO lora_meta VALUES (?, ?)",
                    [("status_at", repr(base)), ("mode", "always"), ("status_every_h", "4")])
    con.executemany("INSERT INTO lora_airtime (ts, band, airtime_s, kind) VALUES (?, ?, ?, ?)",
                    [(base, "RU864 868.7-869.2", 1.5, "join"),
                     (base + 200, "RU864 868.7-869.2", 1.2, "alert")])
    con.commit()
    con.close()
    return path


def test_a_v2_database_is_upgraded_in_place_keeping_every_row(tmp_path: Path) -> None:
    base = 1_790_000_000.0
    path = make_v2_database(tmp_path / "data", base)
    conn = open_db(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == str(SCHEMA_VERSION) == "4"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'table'")}
        assert "lora_tx" not in tables
        assert "lora_meta" not in tables
        columns = {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}
        assert "topic" not in columns
        assert {"link", "confirmed"} <= columns
        mqtt = [tuple(r) for r in conn.execute(
            "SELECT event_id, kind, state, chunks FROM outbox WHERE link = 'mqtt' ORDER BY id")]
        assert mqtt == [(f"T-1-{seq}", kind, state, chunks)
                        for seq, kind, state, chunks in OUTBOX]
        lora = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT event_id, state, last_error, confirmed FROM outbox WHERE link = 'lorawan'")}
        assert lora == {
            "T-1-1": ("sent", None, 1),
            "T-1-2": ("skipped", "delivered by MQTT", None),
            "T-1-4": ("dead", "too old for LoRa", None),
            "T-1-5": ("dead", "no_ack: no ACK", None),
            "T-1-6": ("ready", None, None),  # still owed: pending in the old queue
        }  # T-1-99 had no catalogue row: nothing could ever have been sent for it
        pending = conn.execute("SELECT payload, attempts FROM outbox WHERE link = 'lorawan' "
                               "AND state = 'ready'").fetchone()
        assert json.loads(pending["payload"])["seq"] == 6  # the event's JSON, renderable
        assert pending["attempts"] == 1
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert meta["lorawan.mode"] == "always"
        assert meta["lorawan.status_every_h"] == "4"
        assert float(meta["lorawan.status_at"]) == base
        assert conn.execute("SELECT COUNT(*) FROM lora_airtime").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM settings").fetchone()[0] == 1
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                              "WHERE type = 'index'")}
        assert {"outbox_service", "outbox_timer", "outbox_event", "lora_airtime_ts"} <= indexes
        box = Outbox(conn, FakeClock(start_wall=base + 100), make_cfg(tmp_path).outbox)
        assert box.depth(link="mqtt") == {"alert": 4, "status": 0, "event": 1, "thumb": 2,
                                          "image": 2}
    finally:
        conn.close()
    open_db(path).close()  # a second open finds v3 and changes nothing


@pytest.fixture
def migrated(tmp_path: Path) -> tuple[Path, float]:
    base = time.time() - 600.0
    root = tmp_path / "data"
    make_v2_database(root, base)
    return root, base


@pytest.mark.broker
def test_every_mqtt_row_owed_before_the_upgrade_is_delivered_after_it(
    migrated: tuple[Path, float], broker: Broker
) -> None:
    root, _ = migrated
    cfg = make_cfg(root, broker.port, outbox={"receipt_timeout_s": 1.0,
                                              "receipt_timeout_max_s": 2.0})
    got: list[dict[str, Any]] = []
    media: list[str] = []
    ranger = Receiver("127.0.0.1", broker.port, client_id="ranger-migrated",
                      on_alert=got.append, store_dir=root.parent / "ranger",
                      on_media=lambda unit, mid, path: media.append(mid))
    ranger.start()
    try:
        assert ranger.wait_connected(10)
        run = RunningLink(cfg, root / "camtrap.db")
        try:
            def owed() -> int:
                conn = open_db(root / "camtrap.db")
                try:
                    return int(conn.execute(
                        "SELECT COUNT(*) FROM outbox WHERE link = 'mqtt' AND state IN "
                        "('ready', 'inflight', 'acked-by-broker')").fetchone()[0])
                finally:
                    conn.close()

            wait_for(lambda: owed() == 0, 30, "every owed MQTT row delivered")
            wait_for(lambda: {"T-1-2", "T-1-4", "T-1-5", "T-1-6"} <= {a["id"] for a in got},
                     10, "the alerts")
        finally:
            run.stop()
        # The media the old rows owed, rendered to their topics by the new link and
        # reassembled by the receiver (the partial thumbnail request became the whole file
        # it names; the image of T-1-5 only its chunk 1, which is not a whole file).
        assert {"T-1-2-image", "T-1-3-thumb"} <= set(media)
    finally:
        ranger.stop()


@pytest.mark.broker
def test_the_pending_lora_alert_is_sent_after_the_upgrade(
    migrated: tuple[Path, float], broker: Broker
) -> None:
    root, base = migrated
    clock = FakeClock(start_wall=base + 120)
    ns = NetworkServer("127.0.0.1", broker.port, "chirpstack", clock=clock).start()
    ns.register(KEYS.dev_eui, KEYS.join_eui, KEYS.app_key, UNIT)
    cfg = lora_cfg(root)
    settings = Settings(cfg, clock)
    settings.load()
    try:
        with Rui3Modem(ns, clock=clock, time_factor=0.0).start() as emu, \
                make_router(cfg, emu, clock, settings=settings) as router:
            drive(router, clock, clock.wall() + 3600,
                  stop_when=lambda: router.stats()["alerts_sent"] >= 1)
            assert router.stats()["alerts_sent"] == 1
            assert router.stats()["alerts_queued"] == 0  # every alert had its LoRa row
    finally:
        ns.stop()
    ups = [body for topic, body in ns.published if topic.endswith("/event/up")]
    assert [codec.decode_uplink(10, base64.b64decode(u["data"])).data["seq16"]
            for u in ups] == [6]
    conn = open_db(root / "camtrap.db")
    try:
        row = conn.execute("SELECT state, attempts, confirmed FROM outbox WHERE "
                           "link = 'lorawan' AND event_id = 'T-1-6'").fetchone()
        assert tuple(row) == (State.SENT, 2, 1)  # one attempt before the upgrade, one after
        # The mode and status interval an old downlink set now belong to the settings
        # service (one owner), not the router's meta table.
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        assert "lorawan.status_every_h" not in meta
        assert "lorawan.mode" not in meta
    finally:
        conn.close()
    assert settings.config.lorawan.status_every_h == 4.0
    again = Settings(lora_cfg(root), FakeClock()).load()
    assert again.lorawan.status_every_h == 4.0
    assert again.lorawan.mode == "always"
