"""What the receiver does with a batch (station/ingest.py): real SQLite store, no broker.

Publishing and acknowledging are plain lists here; the same class runs inside ``Receiver``
against a real mosquitto in test_station_receiver.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from station_support import event
from store_support import jpeg

from edge_app.core.clock import FakeClock
from edge_app.station.ingest import Hooks, Incoming, Ingest


class Harness:
    """An Ingest whose publishes, acks, commands and alerts land in lists."""

    def __init__(self, store: Path | None = None, **kw: Any) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.acked: list[int] = []
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self.alerts: list[dict[str, Any]] = []
        self.clock = FakeClock()
        self.ingest = Ingest(
            "camtrap", publish=lambda t, p: self.published.append((t, json.loads(p))),
            ack=lambda mid, qos: self.acked.append(mid), command=self._command,
            clock=self.clock, hooks=Hooks(on_alert=self.alerts.append), **kw)
        if store is not None:
            self.ingest.open(store)
        self._mid = 0

    def _command(self, unit: str, name: str, body: dict[str, Any]) -> str:
        self.commands.append((unit, name, body))
        return "c1"

    def msg(self, topic: str, payload: bytes | str | dict[str, Any],
            props: dict[str, str] | None = None) -> Incoming:
        self._mid += 1
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        return Incoming(topic, payload, self._mid, 1, props)

    def receipts(self, unit: str) -> list[str]:
        return [i for t, body in self.published if t == f"camtrap/{unit}/ack"
                for i in body["ids"]]


def test_forged_ids_on_a_units_own_topic_are_refused_and_never_confirmed(tmp_path: Path) -> None:
    h = Harness(tmp_path / "store")
    forged = [h.msg("camtrap/A-1/event", event("B-2", n) if n % 2 else
                    {**event("A-1", n), "id": f"B-2-{n}"}) for n in range(1, 31)]
    h.ingest.handle(forged)
    real = [h.msg("camtrap/B-2/event", event("B-2", n)) for n in range(1, 31)]
    h.ingest.handle(real)
    assert [a["id"] for a in h.alerts] == [f"B-2-{n}" for n in range(1, 31)]
    assert h.receipts("B-2") == [f"B-2-{n}" for n in range(1, 31)]
    assert h.receipts("A-1") == []
    assert h.ingest.refusals.snapshot() == {"unit_mismatch": 15, "id_mismatch": 15}
    assert h.ingest.stats.malformed == 30
    assert h.acked == [m.mid for m in forged + real]  # refused ones are acknowledged too
    store = h.ingest.store
    assert store is not None
    assert (store.event_count("B-2"), store.event_count("A-1")) == (30, 0)


def test_poison_on_every_topic_is_counted_acknowledged_and_survived(tmp_path: Path) -> None:
    h = Harness(tmp_path / "store")
    poison = [
        h.msg("camtrap/A-1/event", b"[" * 100_000 + b"]" * 100_000),
        h.msg("camtrap/A-1/event", b"[" * 3000 + b"]" * 3000),
        h.msg("camtrap/A-1/event", b'{"id": "A-1-1", "score": NaN}'),
        h.msg("camtrap/A-1/event", b"\x00\xff garbage"),
        h.msg("camtrap/A-1/event", b"x" * 5_000_000),
        h.msg("camtrap/A-1/status", b'{"state": "online", "ts": Infinity}'),
        h.msg("camtrap/A-1/status", b'{"state": "pwned"}'),
        h.msg("camtrap/A-1/stats", b"[" * 50_000),
        h.msg("camtrap/A-1/cmd/resend/result", b"\xff"),
        h.msg("camtrap/A-1/media/A-1-1-thumb/0", b"x" * 2_000_000,
              {"of": "1", "sha256": "0" * 64}),
        h.msg("camtrap/A-1/media/B-2-1-thumb/0", b"x", {"of": "1", "sha256": "0" * 64}),
        h.msg("camtrap/A-1/media/A-1-1-thumb/9", b"x", {"of": "2", "sha256": "0" * 64}),
        h.msg("camtrap/../event", event("A-1", 1)),
    ]
    h.ingest.handle(poison)
    good = h.msg("camtrap/B-2/event", event("B-2", 1))
    h.ingest.handle([good])
    assert [a["id"] for a in h.alerts] == ["B-2-1"]
    assert h.receipts("B-2") == ["B-2-1"]
    assert h.acked == [m.mid for m in [*poison, good]]
    assert h.ingest.refusals.snapshot() == {
        "too_large": 3, "too_deep": 2, "non_finite": 2, "not_json": 2, "bad_state": 1,
        "id_mismatch": 1, "bad_chunk": 1, "bad_unit": 1}
    assert h.ingest.stats.malformed == len(poison)


def test_events_the_store_could_not_write_are_not_acknowledged(tmp_path: Path) -> None:
    h = Harness(tmp_path / "store")
    assert h.ingest.store is not None
    h.ingest.store.close()  # every write now fails
    ev, status = (h.msg("camtrap/A-1/event", event("A-1", 1)),
                  h.msg("camtrap/A-1/status", {"state": "online"}))
    h.ingest.handle([ev, status])
    assert h.acked == [status.mid]  # the event comes again after a reconnect
    assert (h.alerts, h.published, h.ingest.stats.store_errors) == ([], [], 1)


def test_media_is_reassembled_under_its_unit_and_a_bad_file_asked_for_again(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path / "store")
    data = jpeg()
    sha = hashlib.sha256(data).hexdigest()
    parts = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    props = {"of": str(len(parts)), "sha256": sha, "event": "A-1-7"}
    h.ingest.handle([h.msg(f"camtrap/A-1/media/A-1-7-thumb/{i}", p, props)
                     for i, p in enumerate(parts)])
    assert h.ingest.stats.media_stored == 1
    assert (tmp_path / "store/media/A-1/A-1-7-thumb.jpg").read_bytes() == data
    bad = {**props, "sha256": "0" * 64, "event": "A-1-8"}
    h.ingest.handle([h.msg(f"camtrap/A-1/media/A-1-8-thumb/{i}", p, bad)
                     for i, p in enumerate(parts)])
    assert h.commands == [("A-1", "media/request", {"media": "A-1-8-thumb"})]
    assert (h.ingest.stats.media_bad, h.ingest.stats.media_requests) == (1, 1)


def test_an_announced_thumbnail_that_never_comes_is_requested(tmp_path: Path) -> None:
    h = Harness(tmp_path / "store", thumb_wait_s=60.0)
    h.ingest.handle([h.msg("camtrap/A-1/event", event("A-1", 7, media=[
        {"id": "A-1-7-thumb", "kind": "thumb"}, {"id": "B-2-7-thumb", "kind": "thumb"}]))])
    assert h.ingest.next_due_s() == 60.0
    h.clock.advance(60.0)
    h.ingest.timers()
    assert h.commands == [("A-1", "media/request", {"media": "A-1-7-thumb"})]


topics = st.sampled_from([
    "camtrap/A-1/event", "camtrap/B-2/event", "camtrap/A-1/status", "camtrap/B-2/stats",
    "camtrap/A-1/cmd/resend/result", "camtrap/A-1/media/A-1-3-thumb/0", "camtrap/x y/event",
    "camtrap/A-1/ack", "other/A-1/event", "camtrap/A-1/media/B-2-3-thumb/0"])
bodies = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda u, n, uu: json.dumps({**event(u, n), "unit": uu}).encode(),
              st.sampled_from(["A-1", "B-2"]), st.integers(1, 5), st.sampled_from(["A-1", "B-2"])),
    st.just(b'{"state": "online"}'), st.just(b'{"id": "A-1-1", "x": NaN}'),
    st.integers(1, 200).map(lambda d: b"[" * d + b"]" * d))
props_st = st.fixed_dictionaries({"of": st.sampled_from(["1", "2", "x"]),
                                  "sha256": st.sampled_from(["0" * 64, "nope"])})


@given(st.lists(st.tuples(topics, bodies, props_st), max_size=30))
@settings(max_examples=150)
def test_any_batch_is_handled_every_message_acknowledged_receipts_to_own_unit(
    items: list[tuple[str, bytes, dict[str, str]]],
) -> None:
    h = Harness()
    batch = [h.msg(t, b, p) for t, b, p in items]
    h.ingest.handle(batch)
    assert h.acked == [m.mid for m in batch]
    for topic, body in h.published:
        unit = topic.split("/")[1]
        assert topic == f"camtrap/{unit}/ack"
        assert all(i.startswith(unit + "-") for i in body["ids"])
    for a in h.alerts:
        assert a["id"] == f"{a['unit']}-{a['seq']}"
    assert h.ingest.stats.malformed == h.ingest.refusals.total


def test_with_a_store_a_lora_alert_is_stored_then_completed_by_its_mqtt_event(
        tmp_path: Path) -> None:
    """ARCHITECTURE §10: shown once, from the first link; the MQTT event completes it in place
    (and is receipted); the page hears of both; the fleet row records the unit."""
    lora = {**event("A-1", 5), "source": "lorawan", "media": []}
    calls: list[tuple[str, str, str, bool]] = []
    h = Harness(tmp_path / "store", extra=[("lns/#", lambda _t, _p: dict(lora))])
    h.ingest.hooks.on_event = lambda *a: calls.append(a)
    h.ingest.handle([h.msg("lns/up", b"{}")])
    h.clock.advance(60)
    h.ingest.handle([h.msg("camtrap/A-1/event", event("A-1", 5, label="leopard")),
                     h.msg("camtrap/A-1/status", {"state": "online",
                                                   "ts": "2026-09-21T10:15:00+00:00"})])
    h.ingest.handle([h.msg("lns/up", b"{}")])  # the LoRa copy again: nothing changes
    assert [a["id"] for a in h.alerts] == ["A-1-5"]  # shown once, from LoRa
    assert h.alerts[0]["source"] == "lorawan"
    assert calls == [("A-1", "A-1-5", "lorawan", True), ("A-1", "A-1-5", "mqtt", False),
                     ("A-1", "A-1-5", "lorawan", False)]
    store = h.ingest.store
    assert store is not None
    stored = store.event("A-1", "A-1-5")
    assert stored is not None
    assert (stored["label"], stored.get("source")) == ("leopard", None)
    assert set(store.links("A-1", "A-1-5")) == {"lorawan", "mqtt"}
    assert h.receipts("A-1") == ["A-1-5"]
    unit = store.unit("A-1")
    assert unit is not None
    assert unit["state"] == "online"
