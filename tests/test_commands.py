"""Remote commands on a real trap database: validation, effects, results, and persistence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_support import burst_and_verdict, make_cfg

from edge_app.core.clock import SystemClock
from edge_app.core.config import Config
from edge_app.trap.settings import Settings
from edge_app.trap.store.outbox import State
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.commands import Commands


class Trap:
    """A store with events, and a Commands whose applied configs are recorded."""

    def __init__(self, root: Path) -> None:
        self.store = EventStore(make_cfg(root))
        self.store.open()
        self.settings = Settings(make_cfg(root), SystemClock())
        self.applied: list[Config] = []
        self.settings.subscribe(self.applied.append)
        self.commands = Commands(self.settings, SystemClock())

    @property
    def cfg(self) -> Config:
        return self.settings.config

    def run(self, name: str, body: Any) -> dict[str, Any]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert self.store._conn is not None
        return self.commands.handle(name, payload, self.store._conn)


@pytest.fixture
def trap(tmp_path: Path) -> Iterator[Trap]:
    t = Trap(tmp_path / "data")
    yield t
    t.store.close()


def test_config_set_validates_applies_and_survives_a_restart(trap: Trap) -> None:
    r = trap.run("config/set", {"id": "c1", "values": {"camera.burst_frames": 5,
                                                      "mqtt.stats_interval_s": 60}})
    assert r == {"id": "c1", "ok": True, "applied": {"camera.burst_frames": 5,
                                                     "mqtt.stats_interval_s": 60}}
    assert trap.cfg.camera.burst_frames == 5
    assert trap.cfg.mqtt.stats_interval_s == 60.0
    # A restart reads the TOML again, then the stored settings on top of it.
    fresh = make_cfg(trap.store.root)
    assert fresh.camera.burst_frames == 3
    again = Settings(fresh, SystemClock()).load()
    assert again.camera.burst_frames == 5
    assert again.mqtt.stats_interval_s == 60.0


@pytest.mark.parametrize(("body", "error"), [
    ({"id": "x", "values": {"camera.burst_frames": 0}}, "camera.burst_frames: must be ≥ 1"),
    ({"id": "x", "values": {"camera.burst_frames": "5"}}, "must be an integer"),
    ({"id": "x", "values": {"storage.root": "/tmp"}}, "cannot be set remotely"),
    ({"id": "x", "values": {}}, "non-empty object"),
    ({"id": "x", "values": {"camera.burst_frames": 4}, "extra": 1}, "unknown field"),
])
def test_a_bad_config_set_changes_nothing(trap: Trap, body: dict[str, Any], error: str) -> None:
    r = trap.run("config/set", body)
    assert r["ok"] is False
    assert r["id"] == "x"
    assert error in r["error"]
    assert trap.applied == []
    assert trap.store._conn is not None
    assert trap.store._conn.execute("SELECT COUNT(*) FROM settings").fetchone()[0] == 0


@pytest.mark.parametrize(("name", "payload", "error"), [
    ("config/set", b"\xff not json", "not JSON"),
    ("config/set", b"[1, 2]", "not a JSON object"),
    ("config/set", b'{"values": {}}', "'id'"),
    ("reboot", b'{"id": "r1"}', "unknown command 'reboot'"),
])
def test_malformed_or_unknown_commands_get_an_error_result(
    trap: Trap, name: str, payload: bytes, error: str
) -> None:
    r = trap.run(name, payload)
    assert r["ok"] is False
    assert error in r["error"]
    assert trap.applied == []


def test_a_repeated_command_id_is_answered_without_running_twice(trap: Trap) -> None:
    trap.store.record(*burst_and_verdict("alert"))
    first = trap.run("media/request", {"id": "m1", "media": "T-1-1-thumb"})
    again = trap.run("media/request", {"id": "m1", "media": "T-1-1-thumb"})
    assert first == again
    assert first["ok"] is True
    thumbs = list(trap.store.outbox.ls(50, kinds=["thumb"]))
    assert len(thumbs) == 2  # the original row and one request, not two


def test_media_request_queues_the_missing_chunks_of_a_stored_file(trap: Trap) -> None:
    trap.store.record(*burst_and_verdict("alert"))
    r = trap.run("media/request", {"id": "m2", "media": "T-1-1-image", "chunks": [0],
                                   "of": 1})
    assert r["ok"] is True
    row = trap.store.outbox.get(r["queued"])
    assert row is not None
    assert row.kind == "image"
    assert row.chunks == [0]
    assert (row.link, row.media_id) == ("mqtt", "T-1-1-image")  # the link renders the topic
    assert row.state == State.READY
    # Chunked with another size (the trap's chunk size changed): the whole file again.
    r = trap.run("media/request", {"id": "m3", "media": "T-1-1-image", "chunks": [7],
                                   "of": 9})
    assert r["chunks"] == "all"
    for body, error in [
        ({"id": "e1", "media": "T-1-9-image"}, "no event"),
        ({"id": "e2", "media": "nonsense"}, "unknown media id"),
        ({"id": "e3", "media": "T-1-1-image", "chunks": [-1]}, "chunk indices"),
    ]:
        assert error in trap.run("media/request", body)["error"]
    record = trap.store.catalog.get("T-1-1")
    assert record is not None
    assert record.thumb_path is not None
    (trap.store.root / record.thumb_path).unlink()
    assert "not on the card" in trap.run("media/request", {"id": "e4",
                                                           "media": "T-1-1-thumb"})["error"]


def test_resend_by_ids_or_by_seq_range(trap: Trap) -> None:
    for _ in range(3):
        trap.store.record(*burst_and_verdict("alert"))
    outbox = trap.store.outbox
    for row in outbox.due(limit=50):
        outbox.mark_inflight(row.id)
        outbox.mark_sent(row.id)
    r = trap.run("resend", {"id": "s1", "events": ["T-1-2", "T-1-9"]})
    assert r == {"id": "s1", "ok": True, "requeued": ["T-1-2"], "unknown": ["T-1-9"]}
    r = trap.run("resend", {"id": "s2", "from_seq": 1, "to_seq": 3})
    assert r["requeued"] == ["T-1-1", "T-1-2", "T-1-3"]
    assert sorted(x.event_id for x in outbox.due(limit=50)) == ["T-1-1", "T-1-2", "T-1-3"]
    for body in ({"id": "b1"}, {"id": "b2", "from_seq": 3, "to_seq": 1},
                 {"id": "b3", "events": ["T-1-1"], "from_seq": 1, "to_seq": 2},
                 {"id": "b4", "events": "T-1-1"}):
        assert trap.run("resend", body)["ok"] is False


def test_a_stored_setting_that_became_invalid_is_skipped(trap: Trap) -> None:
    conn = trap.store._conn
    assert conn is not None
    conn.execute("INSERT INTO settings (key, value, updated) VALUES "
                 "('camera.burst_frames', '99', 0), ('storage.root', '\"/x\"', 0), "
                 "('policy.empty_below', '0.2', 0)")
    conn.commit()
    cfg = Settings(make_cfg(trap.store.root), SystemClock()).load()
    assert cfg.camera.burst_frames == 3  # 99 is out of range: the file's value stays
    assert cfg.storage.root == str(trap.store.root)  # never settable remotely
    assert cfg.policy.empty_below == 0.2


@pytest.mark.parametrize("payload", [
    b'{"id": "n1", "values": {"detector.score_threshold": NaN}}',
    b'{"id": "n1", "values": {"policy.empty_below": Infinity}}',
    b'{"id": "n1", "values": {"policy.empty_below": -1e999}}',
])
def test_non_finite_values_are_refused_and_answered_under_their_id(
        trap: Trap, payload: bytes) -> None:
    r = trap.run("config/set", payload)
    assert r["ok"] is False
    assert r["id"] == "n1"
    assert r["refused"] == "non_finite"
    json.dumps(r, allow_nan=False)  # the answer itself is valid JSON
    assert trap.applied == []
    assert trap.commands.refusals.snapshot() == {"non_finite": 1}


def test_a_deep_payload_is_refused_not_raised(trap: Trap) -> None:
    r = trap.run("config/set", b"[" * 100_000 + b"]" * 100_000)
    assert r["ok"] is False
    assert r["refused"] in {"too_large", "too_deep"}
    assert trap.run("config/set", {"id": "ok1", "values": {"camera.burst_frames": 4}})["ok"]


def test_model_pack_commands_on_a_unit_without_a_fleet_key(trap: Trap) -> None:
    """A unit that cannot check a signature takes no packs, and says why."""
    for name in ("models/offer", "models/install"):
        r = trap.run(name, {"id": name, "pack": "ab" * 32, "bytes": 5000, "chunk_bytes": 1024})
        assert r == {"id": name, "ok": False, "error": "this unit takes no model packs: "
                     "detector.pack_public_key is not set in its config"}


def test_images_send_passes_the_waiting_row_or_queues_the_image_again(trap: Trap) -> None:
    passed: list[str] = []
    commands = Commands(trap.settings, SystemClock(), image_pass=passed.append)
    conn = trap.store._conn
    assert conn is not None

    def run(cmd_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return commands.handle(name, json.dumps({"id": cmd_id, **body}).encode(), conn)

    trap.store.record(*burst_and_verdict("alert"))
    (waiting,) = trap.store.outbox.ls(50, kinds=["image"])
    r = run("i1", "images/send", {"event": "T-1-1"})
    assert (r["ok"], r["row"], r["state"]) == (True, waiting.id, "waiting")
    assert passed == ["T-1-1"]
    # the page's button: the same row, not a second copy of the image
    r = run("i2", "media/request", {"media": "T-1-1-image"})
    assert r["queued"] == waiting.id
    assert len(trap.store.outbox.ls(50, kinds=["image"])) == 1
    trap.store.outbox.mark_inflight(waiting.id)
    assert run("i3", "images/send", {"event": "T-1-1"})["state"] == "in flight"
    trap.store.outbox.mark_sent(waiting.id)
    r = run("i4", "images/send", {"event": "T-1-1"})
    assert r["state"] == "queued"
    assert r["row"] != waiting.id
    assert passed == ["T-1-1", "T-1-1", "T-1-1"]  # not for the one already in flight
    record = trap.store.catalog.get("T-1-1")
    assert record is not None
    assert record.image_path is not None
    (trap.store.root / record.image_path).unlink()
    assert "not on the card" in run("i5", "images/send", {"event": "T-1-1"})["error"]
