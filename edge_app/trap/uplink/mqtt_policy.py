"""What the MQTT link sends next, how much is in flight, and what each PUBACK means: pure.

Why pure: the rules of the MQTT link — which rows start, in which order chunks go, how many
messages may await a PUBACK, when a full image may go, when a silent message counts as lost,
what a PUBACK makes of a row — are where delivery bugs hide. Here they hold no socket, no
database and no clock: every method takes the monotonic time it needs, and the adapter
(:class:`edge_app.trap.uplink.mqtt.MqttLink`) does the I/O the answers call for. Tests drive
this class with made-up message ids and times (the ``TriggerFilter`` pattern).

The rules:

* **In flight**: at most ``outbox.max_inflight`` messages await a PUBACK, capped by the
  broker's Receive Maximum (MQTT 5 forbids exceeding it; paho does not enforce it, so we do),
  and at most ``mqtt.media_window`` chunks of one media file.
* **Order**: rows start most urgent first (``alert`` < ``status`` < ``event`` < ``thumb`` <
  ``image``), and chunks of rows already started are interleaved by the same order: an alert
  queued during an image transfer goes out after at most the chunks already on the air.
* **Full images** go one at a time, and only once the link has been up and clean (no lost or
  refused message) for ``mqtt.image_min_link_s``; and not while they are held (the data plan
  refused one: :meth:`SendPolicy.hold_images`).
* **PUBACK**: a row is done when the broker acknowledged its last message; then it is ``sent``,
  or, for ``alert``/``event`` rows with receipts on, ``acked-by-broker`` until the receiver's
  receipt. A failure reason code is a refusal (the adapter backs the row off).
* **Lost**: a row whose messages got no PUBACK for ``outbox.inflight_timeout_s`` while
  connected is sent again (across a disconnect paho resends them itself, so reconnecting
  restarts their clocks).
* **Outcomes** (sent, acked, received) are batched and recorded by the adapter in one
  transaction; until it succeeds they stay here, and the rows stay in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edge_app.core.config import MqttConfig, OutboxConfig
from edge_app.trap.store.outbox import PRIORITY, RECEIPT_KINDS, Kind, OutboxRow
from edge_app.trap.uplink.mqtt_wire import Transfer, chunk_size


@dataclass(frozen=True, slots=True)
class Refusal:
    """A PUBACK with a failure reason code for a message of row ``row_id``."""

    row_id: int
    chunk: int
    reason: str


class SendPolicy:
    """The MQTT link's bookkeeping of rows in flight (see the module docstring).

    Args:
        mqtt: the ``mqtt`` settings (window, image gating, receipts, sizes).
        outbox: the ``outbox`` settings (in-flight limit and timeout).
        now: monotonic time at start (the link counts as clean from here).
    """

    def __init__(self, mqtt: MqttConfig, outbox: OutboxConfig, now: float) -> None:
        self.mqtt, self.outbox = mqtt, outbox
        self.transfers: dict[int, Transfer] = {}
        self.mid_row: dict[int, tuple[int, int]] = {}
        self.to_sent: dict[int, str] = {}  # row id → kind, recorded at the next flush
        self.to_acked: dict[int, str] = {}
        self.to_receive: set[str] = set()
        self.receive_max: int | None = None
        self.max_packet: int | None = None
        self.connected_at: float | None = None
        self.clean_since = now
        self.images_held_until = -math.inf

    def configure(self, mqtt: MqttConfig, outbox: OutboxConfig) -> None:
        """Settings changed (remotely): use the new ones from the next decision on."""
        self.mqtt, self.outbox = mqtt, outbox

    def reset(self) -> None:
        """A new session of the link: nothing is in flight."""
        self.transfers.clear()
        self.mid_row.clear()
        self.to_sent.clear()
        self.to_acked.clear()
        self.to_receive.clear()

    # -- limits -------------------------------------------------------------------------

    def max_inflight(self) -> int:
        """Messages awaiting PUBACK at once: ours, capped by the broker's Receive Maximum."""
        limit = self.outbox.max_inflight
        if self.receive_max:
            limit = min(limit, self.receive_max)
        return max(1, limit)

    def free_slots(self) -> int:
        return self.max_inflight() - len(self.mid_row)

    def message_limit(self) -> int:
        """The largest message: ours, capped by the broker's Maximum Packet Size."""
        limit = self.mqtt.max_message_bytes
        if self.max_packet:
            limit = min(limit, self.max_packet)
        return limit

    def chunk_size(self, override: int | None = None) -> int:
        return chunk_size(override or self.mqtt.chunk_bytes, self.message_limit())

    def images_from(self) -> float:
        """Monotonic time from which full images may go (link up and clean long enough)."""
        start = self.clean_since
        if self.connected_at is not None:
            start = max(start, self.connected_at)
        return max(start + self.mqtt.image_min_link_s, self.images_held_until)

    def hold_images(self, until: float) -> None:
        """Full images wait until monotonic ``until`` (the data plan refused one); they stay
        ready in the outbox, and the link asks again then."""
        self.images_held_until = until

    def image_busy(self) -> bool:
        return any(t.kind == Kind.IMAGE for t in self.transfers.values())

    def max_priority(self, now: float) -> int:
        """Rows above this priority number wait: full images need a good link, one at a time."""
        if self.image_busy() or now < self.images_from():
            return PRIORITY[Kind.THUMB]
        return PRIORITY[Kind.IMAGE]

    # -- starting and feeding -----------------------------------------------------------

    def admit(self, rows: Iterable[OutboxRow]) -> list[OutboxRow]:
        """The due rows to start now: every one, but a single full image at a time."""
        image = self.image_busy()
        out: list[OutboxRow] = []
        for row in rows:
            if row.kind == Kind.IMAGE:
                if image:
                    continue
                image = True
            out.append(row)
        return out

    def started(self, transfers: Iterable[Transfer]) -> None:
        for t in transfers:
            self.transfers[t.row_id] = t

    def feed(self, publish: Callable[[Transfer, int], int | None]) -> list[Transfer]:
        """Publish chunks most urgent first, within the in-flight limits.

        Args:
            publish: sends message ``i`` of a transfer; returns its message id, or None if it
                could not be published (the transfer is then dropped from here and returned,
                for the adapter to back it off).

        Returns:
            The transfers whose publish failed.
        """
        free = self.free_slots()
        failed: list[Transfer] = []
        window = self.mqtt.media_window
        for t in sorted(self.transfers.values(), key=lambda t: (t.priority, t.row_id)):
            while free > 0 and t.pending and (not t.media or len(t.inflight) < window):
                i = t.pending.popleft()
                mid = publish(t, i)
                if mid is None:
                    t.pending.appendleft(i)
                    self.forget(t.row_id)
                    failed.append(t)
                    break
                t.inflight.add(i)
                t.mids[mid] = i
                self.mid_row[mid] = (t.row_id, i)
                free -= 1
            if free <= 0:
                break
        return failed

    def forget(self, row_id: int) -> Transfer | None:
        """Drop a row's transfer; late PUBACKs for its messages are then ignored."""
        t = self.transfers.pop(row_id, None)
        if t is not None:
            for mid in t.mids:
                self.mid_row.pop(mid, None)
        return t

    # -- answers ------------------------------------------------------------------------

    def puback(self, mid: int, failure: bool, reason: str, now: float) -> Refusal | None:
        """A PUBACK came for message ``mid``; returns a refusal if it was one.

        A row whose last message is acknowledged moves to the outcomes to record: ``sent``,
        or ``acked`` (waiting for a receipt) for event rows with receipts on.
        """
        entry = self.mid_row.pop(mid, None)
        if entry is None:
            return None  # status, stats, a command result, or a message of a row forgotten
        rid, chunk = entry
        t = self.transfers.get(rid)
        if t is None:
            return None
        t.mids.pop(mid, None)
        t.inflight.discard(chunk)
        if failure:
            return Refusal(rid, chunk, reason)
        t.last_progress = now
        if t.pending or t.inflight:
            return None
        del self.transfers[rid]
        if self.mqtt.receipts and t.kind in RECEIPT_KINDS:
            self.to_acked[rid] = t.kind
        else:
            self.to_sent[rid] = t.kind
        return None

    def receipt(self, event_ids: Iterable[str]) -> None:
        """A receiver confirmed these events (recorded at the next flush)."""
        self.to_receive.update(event_ids)

    def has_outcomes(self) -> bool:
        return bool(self.to_sent or self.to_acked or self.to_receive)

    def flushed(self, received_rows: Iterable[int]) -> None:
        """The outcomes were recorded; rows a receipt closed are forgotten (late PUBACKs of
        a resend no longer matter)."""
        self.to_sent.clear()
        self.to_acked.clear()
        self.to_receive.clear()
        for rid in received_rows:
            self.forget(rid)

    def tracked(self) -> set[int]:
        """Rows this session knows about (in flight, or delivered but not yet recorded)."""
        return self.transfers.keys() | self.to_sent.keys() | self.to_acked.keys()

    # -- time ---------------------------------------------------------------------------

    def lost(self, now: float) -> list[Transfer]:
        """Transfers with messages unanswered for ``inflight_timeout_s``; they are forgotten
        here (the adapter requeues their rows) and the link no longer counts as clean."""
        timeout = self.outbox.inflight_timeout_s
        out = [t for t in self.transfers.values()
               if t.inflight and now - t.last_progress >= timeout]
        for t in out:
            self.forget(t.row_id)
            self.clean_since = now
        return out

    def next_timeout(self) -> float | None:
        """When the oldest unanswered transfer times out (None if none waits)."""
        times = [t.last_progress + self.outbox.inflight_timeout_s
                 for t in self.transfers.values() if t.inflight]
        return min(times) if times else None

    def connected(self, now: float, receive_max: int | None, max_packet: int | None) -> None:
        """A session is up: the broker's limits apply, and paho is resending what was in
        flight right now, so their timeouts count from now."""
        self.receive_max, self.max_packet = receive_max, max_packet
        self.connected_at = now
        for t in self.transfers.values():
            t.last_progress = now

    def disconnected(self, now: float) -> None:
        self.connected_at = None
        self.clean_since = now

    def trouble(self, now: float) -> None:
        """Something was lost or refused: full images wait for a clean link again."""
        self.clean_since = now
