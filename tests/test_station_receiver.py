"""The receiver against a real mosquitto: forged ids, poison payloads, unknown LoRaWAN devices.

Real parts: a private mosquitto per test, a real trap (EventStore + MqttLink) where a unit
behaves, raw paho clients where one misbehaves, the receiver's real SQLite store.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker
from station_support import Raw, acks, event, wait_until
from store_support import burst_and_verdict, make_cfg
from test_mqtt_link import RunningLink

from edge_app.core import lora_codec as codec
from edge_app.station.lorawan import LorawanDecoder
from edge_app.station.receiver import Receiver
from edge_app.trap.store.pipeline import EventStore

pytestmark = pytest.mark.broker


class Shown:
    """What a receiver handed to its alert hook (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def ids(self, unit: str | None = None) -> list[str]:
        with self._lock:
            return [e["id"] for e in self.events if unit is None or e["unit"] == unit]


def test_unit_a_publishing_bs_ids_no_longer_suppresses_bs_alerts(
    tmp_path: Path, broker: Broker,
) -> None:
    """The bug: unit A published events with ids B-2-1 … B-2-30 on its own topic; the receiver
    deduped by id alone, so 30 of B's real alerts were taken for duplicates — never shown, yet
    confirmed to B, whose outbox showed them delivered. Now A's are refused and counted, and
    every alert of B is shown, stored under B and confirmed to B only."""
    shown = Shown()
    rx = Receiver("127.0.0.1", broker.port, client_id="ranger-forgery", on_alert=shown,
                  store_dir=tmp_path / "ranger")
    rx.start()
    a = Raw(broker.port, "camtrap-A-1")
    try:
        assert rx.wait_connected(10)
        wait_until(lambda: bool(a.connects), 10, "A connected")
        a.c.subscribe("camtrap/A-1/ack", qos=1)
        wait_until(lambda: a.suback == 1, 10, "A's subscription")
        for n in range(1, 31):  # half claim to be B, half claim B's ids as A
            body = event("B-2", n) if n % 2 else {**event("A-1", n), "id": f"B-2-{n}"}
            a.publish("camtrap/A-1/event", json.dumps(body))
        wait_until(lambda: rx.stats.malformed == 30, 10, "A's forged events refused")

        cfg = make_cfg(tmp_path / "trap-b", broker.port, unit={"id": "B-2"})
        with EventStore(cfg) as trap:
            run = RunningLink(cfg, trap.db_path)
            trap.notify = run.link.wake
            try:
                for _ in range(30):
                    trap.record(*burst_and_verdict("alert", "animal", "leopard", 0.9))
                wait_until(lambda: len(shown.ids("B-2")) == 30, 60, "B's 30 alerts shown")
                wait_until(lambda: trap.outbox.depth()["alert"] == 0, 30, "B's receipts")
            finally:
                run.stop()
        rx.wait_quiet(0.3, 5)
        assert shown.ids() == [f"B-2-{n}" for n in range(1, 31)]
        assert rx.refusals.snapshot() == {"unit_mismatch": 15, "id_mismatch": 15}
        assert rx.store is not None
        assert rx.store.event_ids("B-2") == [f"B-2-{n}" for n in range(1, 31)]
        assert rx.store.event_count("A-1") == 0
        assert acks(a, "A-1") == []  # nothing of A's was confirmed
        assert rx.failed is None
    finally:
        a.close()
        rx.stop()


@pytest.mark.parametrize("with_store", [False, True])
def test_poison_on_the_event_topic_leaves_the_receiver_working_for_every_unit(
    tmp_path: Path, broker: Broker, with_store: bool,
) -> None:
    """A payload nested 100,000 deep used to kill the worker thread (RecursionError), leaving a
    process that printed nothing more, for every unit."""
    shown = Shown()
    rx = Receiver("127.0.0.1", broker.port, client_id="ranger-poison", on_alert=shown,
                  store_dir=tmp_path / "ranger" if with_store else None)
    rx.start()
    a, b = Raw(broker.port, "unit-a"), Raw(broker.port, "unit-b")
    try:
        assert rx.wait_connected(10)
        wait_until(lambda: bool(a.connects) and bool(b.connects), 10, "units connected")
        b.c.subscribe("camtrap/B-2/ack", qos=1)
        wait_until(lambda: b.suback == 1, 10, "B's subscription")
        poison: list[bytes] = [
            b"[" * 100_000 + b"]" * 100_000,  # 200 kB: refused by size before parsing
            b"[" * 5_000 + b"]" * 5_000,  # small enough to parse: refused by depth
            b'{"a":' * 3000 + b"1" + b"}" * 3000,
            b"\x00\xfe\xff garbage \x80",
            json.dumps(event("A-1", 1)).replace("0.9", "NaN").encode(),
            b'{"id": "A-1-2", "score": Infinity}',
            b"x" * 5_000_000,
        ]
        for p in poison:
            a.publish("camtrap/A-1/event", p)
        a.publish("camtrap/A-1/status", b"[" * 100_000)
        a.publish("camtrap/A-1/stats", b'{"battery_v": NaN}')
        b.publish("camtrap/B-2/event", json.dumps(event("B-2", 5)))
        wait_until(lambda: shown.ids() == ["B-2-5"], 20, "B's event after the poison")
        wait_until(lambda: acks(b, "B-2") == ["B-2-5"], 10, "B's receipt")
        rx.wait_quiet(0.3, 5)
        assert rx.refusals.snapshot() == {"too_large": 3, "too_deep": 2, "not_json": 1,
                                          "non_finite": 3}
        assert rx.stats.malformed == 9
        assert rx.failed is None
        if with_store:
            assert rx.store is not None
            assert rx.store.event_ids() == ["B-2-5"]
    finally:
        a.close()
        b.close()
        rx.stop()


DEV = "70B3D57ED0061234"
STRANGER = "0011223344556677"


def uplink(dev: str, name: str, seq: int) -> bytes:
    data = codec.encode_alert(codec.Alert("animal", "leopard", 0.91, 1_790_000_000, seq))
    return json.dumps({"deviceInfo": {"deviceName": name, "devEui": dev.lower()}, "fPort": 10,
                       "fCnt": seq, "data": base64.b64encode(data).decode()}).encode()


def test_lorawan_uplinks_count_only_for_the_fleets_devices(broker: Broker) -> None:
    shown = Shown()
    decoder = LorawanDecoder({DEV: "LL-042"})
    rx = Receiver("127.0.0.1", broker.port, client_id="ranger-lora", on_alert=shown,
                  extra=decoder.sources())
    rx.start()
    ns = Raw(broker.port, "network-server")
    try:
        assert rx.wait_connected(10)
        wait_until(lambda: bool(ns.connects), 10, "the network server connected")
        # A device the network server knows but the fleet does not, named like a unit.
        for seq in (1, 2):
            ns.publish(f"application/app/device/{STRANGER.lower()}/event/up",
                       uplink(STRANGER, "LL-042", seq), qos=0)
        ns.publish(f"application/app/device/{STRANGER.lower()}/event/up",
                   uplink(DEV, "LL-042", 3), qos=0)  # the body names another device
        ns.publish(f"application/app/device/{DEV.lower()}/event/up", b"[" * 100_000, qos=0)
        ns.publish(f"application/app/device/{DEV.lower()}/event/up",
                   uplink(DEV, "whatever", 4), qos=0)
        wait_until(lambda: shown.ids() == ["LL-042-4"], 10, "the fleet device's alert")
        rx.wait_quiet(0.3, 5)
        assert decoder.stats.unknown == 2
        assert decoder.stats.unknown_devices == {STRANGER: 2}
        assert decoder.refusals.snapshot() == {"deveui_mismatch": 1, "too_large": 1}
        assert shown.events[0]["lorawan"]["dev_eui"] == DEV
    finally:
        ns.close()
        rx.stop()
