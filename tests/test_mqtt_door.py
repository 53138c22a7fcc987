"""The guarded door of the MQTT link: hostile receipts never reach the uplink loop.

A JSON text nested 100,000 deep on the receipt topic used to raise ``RecursionError`` in the
uplink stage (six in a minute and the daemon exited; one left retained put it in a crash loop).
Here it is refused, counted per kind in the stats message, acknowledged, and a retained one is
never read back — against a real mosquitto, with the real link delivering alerts throughout.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from store_support import burst_and_verdict, make_cfg, wait_for
from test_mqtt_link import RunningLink, delivered

from edge_app.core.guard import Refusals, Refused
from edge_app.station.receiver import Receiver
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.mqtt import MqttLink
from edge_app.trap.uplink.mqtt_door import (
    MAX_RECEIPT_IDS,
    CommandCall,
    MqttDoor,
    Receipt,
    receipt_ids,
)

DEEP = b"[" * 100_000 + b"]" * 100_000  # the reported poison: refused by size, unparsed
NESTED = b"[" * 20_000 + b"]" * 20_000  # small enough to be scanned: refused by depth
ACK = "camtrap/T-1/ack"


@pytest.mark.parametrize(("payload", "kind"), [
    (DEEP, "too_large"),
    (NESTED, "too_deep"),
    (b'{"ids": ' + b"[" * 50 + b"]" * 50 + b"}", "too_deep"),
    (b"x" * 300_000, "too_large"),
    (b"\xff\xfe not json", "not_json"),
    (b'{"ids": [NaN]}', "non_finite"),
    (b'["T-1-1"]', "bad_type"),
    (b'{"ids": "T-1-1"}', "bad_type"),
    (b'{"ids": ["T-1-1", 7]}', "bad_type"),
    (b'{"ids": [""]}', "bad_type"),
    (b'{"no": "ids"}', "missing"),
    (json.dumps({"ids": [f"T-1-{i}" for i in range(MAX_RECEIPT_IDS + 1)]}).encode(),
     "too_many_values"),
])
def test_malformed_receipts_are_refused_with_a_kind(payload: bytes, kind: str) -> None:
    with pytest.raises(Refused) as e:
        receipt_ids(payload)
    assert e.value.kind == kind


def test_the_door_sorts_receipts_commands_and_strays() -> None:
    door = MqttDoor(ACK, "camtrap/T-1/cmd/", Refusals("test"))
    assert door.sort(ACK, b'{"ids": ["T-1-1", "T-1-2"]}') == Receipt(["T-1-1", "T-1-2"])
    assert door.sort("camtrap/T-1/cmd/resend", b"{{{") == CommandCall("resend", b"{{{")
    assert door.sort("camtrap/T-1/cmd/resend/result", b"{}") is None  # our own answer
    assert door.sort(ACK, b"") is None  # a retained message being deleted
    assert door.sort(ACK, NESTED) is None
    assert door.sort("camtrap/T-2/ack", b'{"ids": []}') is None
    assert door.refusals.snapshot() == {"too_deep": 1, "unexpected_topic": 1}
    assert door.inbound("camtrap/T-1/cmd/config/set")
    assert not door.inbound("camtrap/T-1/event")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000) | st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=5),
    max_leaves=30).map(lambda v: json.dumps({"ids": v}).encode()))
def test_no_payload_on_the_receipt_topic_raises_anything_but_a_refusal(payload: bytes) -> None:
    door = MqttDoor(ACK, "camtrap/T-1/cmd/", Refusals("fuzz"))
    got = door.sort(ACK, payload)
    assert got is None or (isinstance(got, Receipt) and all(isinstance(i, str) for i in got.ids))


class Raw:
    """A plain client that publishes (retained if asked) and can read back what is retained."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def retained_on(port: int, topic: str) -> list[bytes]:
    """What a new subscriber gets at once: the retained message, if any."""
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.subscribe(topic, qos=1)
        assert done.wait(5)
        threading.Event().wait(0.5)
        return got
    finally:
        c.disconnect()
        c.loop_stop()


def poison_while_running(link: MqttLink, store: EventStore, raw: Raw, port: int,
                         alerts: list[dict[str, Any]], stats: list[dict[str, Any]]) -> None:
    """Eight poison receipts live (more than a stage's restart budget), then delivery goes on,
    the refusals show per kind in the stats message, and a retained one gets cleared."""
    for _ in range(4):
        raw.publish(ACK, DEEP)
        raw.publish(ACK, NESTED)
    raw.publish(ACK, b'{"ids": [' + b'"x",' * 5000 + b'"x"]}')
    kinds = {"too_large": 4, "too_deep": 4, "too_many_values": 1}
    wait_for(lambda: link.refusals()["receipts"] == kinds, what="the refusals counted")
    want = len(alerts) + 1
    store.record(*burst_and_verdict("alert"))
    wait_for(lambda: len(alerts) == want, what="an alert after the poison")
    wait_for(lambda: delivered(store), what="its receipt after the poison")
    wait_for(lambda: bool(stats) and stats[-1]["links"]["mqtt"]["refusals"]["receipts"] == kinds,
             what="the refusals in the stats message")
    # A poison message published retained while we are subscribed arrives marked retained:
    # the link clears it from the broker.
    raw.publish(ACK, DEEP, retain=True)
    wait_for(lambda: link.stats().retained_cleared == 1, what="clearing")
    wait_for(lambda: retained_on(port, ACK) == [], what="nothing left retained")


@pytest.mark.broker
def test_a_retained_poison_receipt_never_stops_delivery_and_is_counted_and_cleared(
    tmp_path: Path, broker: Broker
) -> None:
    raw = Raw(broker.port)
    raw.publish(ACK, DEEP, retain=True)  # waiting for the trap before it ever starts
    cfg = make_cfg(tmp_path / "data", broker.port, mqtt={"stats_interval_s": 0.3,
                                                          "send_images": False})
    stats: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    ranger = Receiver("127.0.0.1", broker.port, client_id="ranger-door", on_alert=alerts.append,
                      on_stats=lambda unit, body: stats.append(body))
    ranger.start()
    try:
        assert ranger.wait_connected(10)
        with EventStore(cfg) as store:
            # The second start is where a crash loop would show; and the refused messages
            # were acknowledged (QoS 1 PUBACK): the broker does not deliver them again to
            # the trap's session.
            for poison in (True, False):
                run = RunningLink(cfg, store.db_path)
                store.notify = run.link.wake
                try:
                    want = len(alerts) + 1
                    store.record(*burst_and_verdict("alert"))
                    wait_for(lambda n=want: len(alerts) == n, what="the alert")  # type: ignore[misc]
                    wait_for(lambda: delivered(store), what="its receipt")
                    # Never re-read: the retained poison is not replayed at subscribe time.
                    assert run.link.refusals()["receipts"] == {}
                    if poison:
                        poison_while_running(run.link, store, raw, broker.port, alerts, stats)
                finally:
                    run.stop()
    finally:
        ranger.stop()
        raw.close()
