"""The MQTT wire form of an outbox row: its topic, and its messages (one, or media chunks).

Why at send time: outbox rows are transport-neutral (schema v3) — a row says *what* must be
delivered, not where. The MQTT link renders the topic from the current ``mqtt.topic_prefix``
and unit id when it starts sending a row, so a row queued while MQTT was off (or before the
prefix changed) goes to the right place, and a LoRa-only unit has no topics anywhere.

Media rows go as binary chunks on ``<prefix>/<unit>/media/<media_id>/<chunk>`` with user
properties ``event``, ``chunk``, ``of`` and ``sha256`` (ARCHITECTURE §6), so a receiver can
reassemble the file, check it, and ask for just the chunks it missed.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_app.core.mqtt_common import new_properties
from edge_app.core.topics import event_topic, media_topic, status_topic
from edge_app.trap.store.outbox import Kind, OutboxRow

HEADROOM_BYTES = 1024
"""Room for the topic, properties and MQTT header of a message, on top of its payload."""
MIN_CHUNK = 256


def topic_of(row: OutboxRow, prefix: str, unit: str) -> str | None:
    """The row's topic (for media, without the chunk index); None if it has none (a media
    row without an event id has no media id to file it under)."""
    if row.kind in (Kind.ALERT, Kind.EVENT):
        return event_topic(prefix, unit)
    if row.kind == Kind.STATUS:
        return status_topic(prefix, unit)
    media_id = row.media_id
    return None if media_id is None else media_topic(prefix, unit, media_id)


def chunk_size(wanted: int, message_limit: int) -> int:
    """The chunk size to use: the configured one, within what the broker accepts."""
    return max(MIN_CHUNK, min(wanted, message_limit - HEADROOM_BYTES))


@dataclass
class Transfer:
    """One outbox row being sent: its messages (one, or the chunks of a media file).

    Attributes:
        pending: chunks not yet published, in sending order.
        inflight: chunks published and awaiting PUBACK.
        mids: paho message id → chunk index, for this row's messages in flight.
        last_progress: monotonic time of the last PUBACK (or start, or reconnect): the
            in-flight timeout counts from here.
    """

    row_id: int
    kind: str
    priority: int
    event_id: str | None
    topic: str
    data: bytes
    chunk: int
    of: int
    media: bool
    sha256: str
    pending: deque[int]
    last_progress: float
    inflight: set[int] = field(default_factory=set)
    mids: dict[int, int] = field(default_factory=dict)

    def remaining(self) -> list[int]:
        """Chunks not yet acknowledged by the broker."""
        return sorted(set(self.pending) | self.inflight)

    def message(self, i: int) -> tuple[str, bytes, Properties | None]:
        """Topic, payload and properties of message ``i``."""
        if not self.media:
            return self.topic, self.data, None
        props = new_properties(PacketTypes.PUBLISH)
        props.ContentType = "image/jpeg"
        props.UserProperty = [("event", self.event_id or ""), ("chunk", str(i)),
                              ("of", str(self.of)), ("sha256", self.sha256)]
        return f"{self.topic}/{i}", self.data[i * self.chunk:(i + 1) * self.chunk], props


def payload_transfer(row: OutboxRow, topic: str, message_limit: int,
                     mono: float) -> Transfer | str:
    """The one message of a payload row, or why it can never be sent."""
    assert row.payload is not None
    if len(row.payload) + len(topic) + HEADROOM_BYTES > message_limit:
        return (f"message of {len(row.payload)} bytes is larger than the broker accepts "
                f"({message_limit} bytes)")
    return Transfer(row.id, row.kind, row.priority, row.event_id, topic, row.payload,
                    max(1, len(row.payload)), 1, False, "", deque([0]), mono)


def media_transfer(row: OutboxRow, topic: str, data: bytes, chunk: int,
                   mono: float) -> Transfer:
    """The chunks of a media row (only those it asks for, when a receiver asked)."""
    of = max(1, math.ceil(len(data) / chunk))
    wanted = [c for c in (row.chunks or []) if 0 <= c < of] or list(range(of))
    return Transfer(row.id, row.kind, row.priority, row.event_id, topic, data, chunk, of, True,
                    hashlib.sha256(data).hexdigest(), deque(wanted), mono)
