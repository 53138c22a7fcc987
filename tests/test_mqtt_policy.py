"""The MQTT send policy on its own: no broker, no database, made-up message ids and times."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from edge_app.core.config import MqttConfig, OutboxConfig
from edge_app.trap.store.outbox import PRIORITY, Kind, OutboxRow
from edge_app.trap.uplink.mqtt_policy import SendPolicy
from edge_app.trap.uplink.mqtt_wire import (
    HEADROOM_BYTES,
    Transfer,
    media_transfer,
    payload_transfer,
    topic_of,
)

MQTT = MqttConfig(media_window=2, image_min_link_s=30.0, receipts=True, chunk_bytes=1024)
OUTBOX = OutboxConfig(max_inflight=4, inflight_timeout_s=60.0)


def row(rid: int, kind: Kind, *, payload: bytes | None = b"{}", media: bool = False,
        chunks: list[int] | None = None, event_id: str | None = "T-1-1") -> OutboxRow:
    return OutboxRow(
        id=rid, event_id=event_id, kind=kind.value, link="mqtt", priority=PRIORITY[kind],
        payload=None if media else payload, media_path="m.jpg" if media else None,
        created=0.0, attempts=0, next_attempt_at=0.0, expires_at=None, state="ready",
        inflight_since=None, done_at=None, last_error=None, chunks=chunks)


def transfer(rid: int, kind: Kind, size: int = 0, chunks: list[int] | None = None) -> Transfer:
    r = row(rid, kind, media=size > 0, chunks=chunks)
    topic = topic_of(r, "camtrap", "T-1")
    assert topic is not None
    if size:
        return media_transfer(r, topic, bytes(size), 1024, 0.0)
    t = payload_transfer(r, topic, 10_000, 0.0)
    assert isinstance(t, Transfer)
    return t


class Wire:
    """Records what the policy asked to publish, handing out message ids."""

    def __init__(self) -> None:
        self.mids = itertools.count(1)
        self.sent: list[tuple[int, int, int]] = []  # (mid, row, chunk)
        self.fail_rows: set[int] = set()

    def __call__(self, t: Transfer, i: int) -> int | None:
        if t.row_id in self.fail_rows:
            return None
        mid = next(self.mids)
        self.sent.append((mid, t.row_id, i))
        return mid


def test_topics_are_rendered_from_the_row_at_send_time() -> None:
    assert topic_of(row(1, Kind.ALERT), "p", "U") == "p/U/event"
    assert topic_of(row(1, Kind.EVENT), "p", "U") == "p/U/event"
    assert topic_of(row(1, Kind.STATUS), "p", "U") == "p/U/status"
    assert topic_of(row(1, Kind.IMAGE, media=True), "p", "U") == "p/U/media/T-1-1-image"
    assert topic_of(row(1, Kind.THUMB, media=True, event_id=None), "p", "U") is None
    big = row(1, Kind.ALERT, payload=b"x" * 5000)
    assert "larger than the broker accepts" in str(payload_transfer(big, "t", 5000, 0.0))
    ok = payload_transfer(big, "t", 5001 + HEADROOM_BYTES, 0.0)
    assert isinstance(ok, Transfer)


def test_an_alert_overtakes_the_chunks_of_an_image_already_on_the_air() -> None:
    p = SendPolicy(MQTT, OUTBOX, 0.0)
    wire = Wire()
    p.started([transfer(1, Kind.IMAGE, size=10 * 1024)])
    p.feed(wire)
    assert [(r, c) for _, r, c in wire.sent] == [(1, 0), (1, 1)]  # the media window: 2
    p.started([transfer(2, Kind.ALERT)])
    p.feed(wire)
    assert [(r, c) for _, r, c in wire.sent[2:]] == [(2, 0)]  # next in line, before chunk 2
    for mid, _, _ in list(wire.sent):
        assert p.puback(mid, False, "Success", 1.0) is None
    assert p.to_acked == {2: "alert"}  # receipts on: the alert waits for its receipt
    p.feed(wire)
    assert [(r, c) for _, r, c in wire.sent[3:]] == [(1, 2), (1, 3)]


def test_in_flight_is_capped_by_ours_and_by_the_brokers_receive_maximum() -> None:
    p = SendPolicy(MQTT, OUTBOX, 0.0)
    wire = Wire()
    p.started([transfer(i, Kind.ALERT) for i in range(1, 8)])
    p.feed(wire)
    assert len(wire.sent) == 4 == p.max_inflight()
    assert p.free_slots() == 0
    p.connected(5.0, receive_max=2, max_packet=None)
    assert p.max_inflight() == 2
    assert p.free_slots() == -2  # nothing more until enough PUBACKs came back
    p.feed(wire)
    assert len(wire.sent) == 4


def test_full_images_wait_for_a_clean_link_and_go_one_at_a_time() -> None:
    p = SendPolicy(MQTT, OUTBOX, 0.0)
    p.connected(10.0, None, None)
    assert p.max_priority(39.0) == PRIORITY[Kind.THUMB]
    assert p.max_priority(40.0) == PRIORITY[Kind.IMAGE]
    images = [row(i, Kind.IMAGE, media=True) for i in (1, 2)]
    admitted = p.admit([row(3, Kind.THUMB, media=True), *images])
    assert [r.id for r in admitted] == [3, 1]
    p.started([transfer(1, Kind.IMAGE, size=4096)])
    assert p.max_priority(100.0) == PRIORITY[Kind.THUMB]  # one image at a time
    assert [r.id for r in p.admit(images)] == []
    p.trouble(100.0)  # a message was lost: the link is not clean any more
    assert p.images_from() == 130.0


def test_a_puback_completes_a_row_only_with_its_last_chunk_and_refusals_are_reported() -> None:
    p = SendPolicy(replace(MQTT, receipts=False), OUTBOX, 0.0)
    wire = Wire()
    p.started([transfer(1, Kind.THUMB, size=2048), transfer(2, Kind.ALERT)])
    p.feed(wire)
    by_row = {(r, c): mid for mid, r, c in wire.sent}
    assert p.puback(by_row[(1, 0)], False, "Success", 1.0) is None
    assert p.to_sent == {}
    refusal = p.puback(by_row[(2, 0)], True, "Not authorized", 1.0)
    assert refusal is not None
    assert (refusal.row_id, refusal.chunk, refusal.reason) == (2, 0, "Not authorized")
    assert p.puback(by_row[(1, 1)], False, "Success", 1.0) is None
    assert p.to_sent == {1: "thumb"}  # receipts off: the broker's PUBACK is delivery
    assert p.puback(999, False, "Success", 1.0) is None  # status, stats, a forgotten row


def test_unanswered_rows_are_lost_after_the_timeout_and_a_reconnect_restarts_the_clock() -> None:
    p = SendPolicy(MQTT, OUTBOX, 0.0)
    wire = Wire()
    p.started([transfer(1, Kind.ALERT)])
    p.feed(wire)
    assert p.next_timeout() == 60.0
    assert p.lost(59.0) == []
    p.connected(50.0, None, None)  # paho resends what was in flight right now
    assert p.lost(100.0) == []
    lost = p.lost(110.0)
    assert [t.row_id for t in lost] == [1]
    assert p.mid_row == {}  # a late PUBACK of the lost message is ignored
    assert p.puback(wire.sent[0][0], False, "Success", 111.0) is None
    assert p.clean_since == 110.0


def test_a_publish_that_fails_hands_the_row_back_with_its_chunk_still_pending() -> None:
    p = SendPolicy(MQTT, OUTBOX, 0.0)
    wire = Wire()
    wire.fail_rows = {1}
    p.started([transfer(1, Kind.THUMB, size=3000), transfer(2, Kind.ALERT)])
    failed = p.feed(wire)
    assert [t.row_id for t in failed] == [1]
    assert failed[0].remaining() == [0, 1, 2]
    assert 1 not in p.transfers
    assert [r for _, r, _ in wire.sent] == [2]  # the alert still went


def test_receipts_close_rows_and_flushing_forgets_them() -> None:
    p = SendPolicy(MQTT, OUTBOX, 0.0)
    wire = Wire()
    p.started([transfer(1, Kind.ALERT)])
    p.feed(wire)
    p.receipt(["T-1-1"])
    assert p.has_outcomes()
    assert p.tracked() == {1}
    p.flushed([1])  # the receipt closed row 1 (it overtook the PUBACK)
    assert not p.has_outcomes()
    assert p.transfers == {}
    assert p.mid_row == {}


@pytest.mark.parametrize(("wanted", "limit", "size"), [
    (32768, 262144, 32768), (32768, 8192, 8192 - HEADROOM_BYTES), (100, 262144, 256)])
def test_chunks_fit_what_the_broker_accepts(wanted: int, limit: int, size: int) -> None:
    p = SendPolicy(replace(MQTT, chunk_bytes=wanted, max_message_bytes=limit), OUTBOX, 0.0)
    assert p.chunk_size() == size
    t = media_transfer(row(1, Kind.IMAGE, media=True, chunks=[1, 5, 99]), "t", bytes(size * 6),
                       p.chunk_size(), 0.0)
    assert list(t.pending) == [1, 5]  # a receiver's request: only those chunks (99 is not one)
    topic, data, props = t.message(5)
    assert topic == "t/5"
    assert len(data) == size
    assert props is not None
