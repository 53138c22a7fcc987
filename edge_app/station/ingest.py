"""What the receiver does with a batch of messages, apart from MQTT itself.

The receiver's worker hands each batch to :meth:`Ingest.handle`: every message goes through its
door (:mod:`edge_app.station.doors`; a refusal is counted per kind and the message acknowledged),
events are stored under the unit the broker authenticated, deduped per unit
(:mod:`edge_app.station.dedupe`), delivered and confirmed; media chunks are reassembled
(:mod:`edge_app.station.media`). Publishing and acknowledging are callables, so this class runs
in the tests with a plain list instead of a broker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from edge_app.core.clock import Clock
from edge_app.core.errors import StorageError
from edge_app.core.guard import Refusals, Refused
from edge_app.core.topics import ack_topic, parse_unit_topic
from edge_app.station.dedupe import DEDUPE_SIZE, EventBook
from edge_app.station.doors import (
    Chunk,
    expected_thumbs,
    parse_chunk,
    parse_event,
    parse_news,
    parse_status,
)
from edge_app.station.media import MEDIA_TIMEOUT_S, THUMB_WAIT_S, MediaAssembler, MediaRequest
from edge_app.station.store import MediaFile, RangerStore, StoredEvent

logger = logging.getLogger(__name__)

AlertHook = Callable[[dict[str, Any]], None]
StatusHook = Callable[[str, dict[str, Any]], None]
MediaHook = Callable[[str, str, Path], None]
#: (unit, event id, link, new): an event was stored (new, or a copy over another link / the
#: MQTT event replacing its LoRa alert); what a live page listens to.
EventHook = Callable[[str, str, str, bool], None]
#: (topic, payload) → an alert event, or None; for extra sources such as LoRaWAN network
#: servers (edge_app/station/lorawan.py), which do their own door and counting.
ExtraDecoder = Callable[[str, bytes], dict[str, Any] | None]
#: (unit, command name, body) → command id.
CommandSender = Callable[[str, str, dict[str, Any]], str]
T = TypeVar("T")


@dataclass
class ReceiverStats:
    """Counters of a receiver.

    Attributes:
        received: event messages received (duplicates and refused ones included).
        delivered: events handed to the hook (once per (unit, id)).
        duplicates: events already delivered (or stored, or shown from LoRa).
        ignored: well-formed events that are not alerts (``keep``), when not wanted.
        malformed: messages refused at the door (per kind: ``Receiver.refusals``).
        hook_errors: times a hook raised.
        receipts: event ids confirmed to their trap.
        media_stored: media files reassembled, checked and stored.
        media_bad: reassembled files whose sha256 did not match (asked for again).
        media_requests: ``cmd/media/request`` commands sent.
        store_errors: batches that could not be stored (not acknowledged: redelivered).
    """

    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    ignored: int = 0
    malformed: int = 0
    hook_errors: int = 0
    receipts: int = 0
    media_stored: int = 0
    media_bad: int = 0
    media_requests: int = 0
    store_errors: int = 0


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received (payload and user properties copied off paho's thread)."""

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    props: dict[str, str] | None = None


@dataclass
class Hooks:
    """The receiver's callbacks (see ``Receiver``)."""

    on_alert: AlertHook | None = None
    on_status: StatusHook | None = None
    on_stats: StatusHook | None = None
    on_media: MediaHook | None = None
    on_result: StatusHook | None = None
    on_event: EventHook | None = None


class Ingest:
    """Doors, store, dedupe, hooks, receipts and media for batches of messages.

    Args:
        prefix: topic prefix of the traps.
        publish: (topic, payload) → queue a QoS 1 message (receipts).
        ack: (mid, qos) → acknowledge a message to the broker.
        command: sends a command to a unit (media requests).
        clock: time for the media timers and store timestamps.
        hooks: the callbacks.
        include_keep: also deliver events whose outcome is not ``alert``.
        dedupe_size: recent ids remembered per unit (without a store).
        receipts: publish end-to-end receipts.
        extra: (topic filter, decoder) pairs of other alert sources.
        media_timeout_s: see :class:`~edge_app.station.media.MediaAssembler`.
        thumb_wait_s: see :class:`~edge_app.station.media.MediaAssembler`.
    """

    def __init__(self, prefix: str, *, publish: Callable[[str, bytes], None],
                 ack: Callable[[int, int], None], command: CommandSender, clock: Clock,
                 hooks: Hooks | None = None, include_keep: bool = False,
                 dedupe_size: int = DEDUPE_SIZE, receipts: bool = True,
                 extra: Sequence[tuple[str, ExtraDecoder]] = (),
                 media_timeout_s: float = MEDIA_TIMEOUT_S,
                 thumb_wait_s: float = THUMB_WAIT_S) -> None:
        self.prefix = prefix
        self._publish, self._ack, self._command = publish, ack, command
        self._clock = clock
        self.hooks = hooks or Hooks()
        self.receipts = receipts
        self.extra = list(extra)
        self._media_timeout_s, self._thumb_wait_s = media_timeout_s, thumb_wait_s
        self.book = EventBook(include_keep=include_keep, dedupe_size=dedupe_size,
                              linked=bool(self.extra))
        self.stats = ReceiverStats()
        self.refusals = Refusals("receiver", clock)
        self.store: RangerStore | None = None
        self.media: MediaAssembler | None = None
        self._media_done: list[MediaFile] = []

    def open(self, store_dir: Path) -> None:
        """Persist events and media under ``store_dir`` from now on.

        Raises:
            StorageError: the store cannot be opened.
        """
        self.store = RangerStore(store_dir)
        self.media = MediaAssembler(self.store.has_media, timeout_s=self._media_timeout_s,
                                    thumb_wait_s=self._thumb_wait_s)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- per batch ----------------------------------------------------------------------

    def handle(self, batch: Sequence[Incoming]) -> None:
        """Handle a batch, then acknowledge every message except events the store refused."""
        events: list[StoredEvent] = []
        event_msgs: set[int] = set()
        others: list[tuple[Incoming, str, list[str]]] = []
        for m in batch:
            if self.extra and self._handle_extra(m):
                continue
            parsed = parse_unit_topic(self.prefix, m.topic)
            if parsed is None:
                continue
            unit, rest = parsed
            if rest == ["event"]:
                self.stats.received += 1
                ev = self._door(m.topic, parse_event, unit, m.payload)
                if ev is not None:
                    events.append(ev)
                    event_msgs.add(id(m))
            else:
                others.append((m, unit, rest))
        stored = self._handle_events(events)
        for m, unit, rest in others:
            self._handle_other(m, unit, rest)
        self._store_media()  # before the PUBACKs: a chunk is acknowledged once its file is
        for m in batch:  # MQTT wants PUBACKs in the order the messages came
            if stored or id(m) not in event_msgs:  # unstored events: redelivered after reconnect
                self._ack(m.mid, m.qos)

    def timers(self) -> None:
        """Send the media requests that are due."""
        if self.media is not None:
            for req in self.media.due(self._clock.monotonic()):
                self._request(req)

    def next_due_s(self) -> float | None:
        """Seconds until :meth:`timers` may have something to do (None: nothing pending)."""
        return self.media.next_due_s(self._clock.monotonic()) if self.media else None

    def _door(self, source: str, parse: Callable[..., T], *args: Any) -> T | None:
        """``parse(*args)``; a refusal is counted (per kind, log throttled) and becomes None."""
        try:
            return parse(*args)
        except Refused as r:
            self.refusals.count(r, source)
            self.stats.malformed += 1
            return None

    def _handle_events(self, events: list[StoredEvent]) -> bool:
        """Store (or remember) events, deliver the new ones, confirm them to their units.

        Returns:
            False if the store failed (nothing stored, confirmed or acknowledged).
        """
        if not events:
            return True
        if self.store is not None:
            now = self._clock.wall()
            try:
                new = self.store.add_events(events, now)  # the units' last-seen included
            except StorageError as e:
                self.stats.store_errors += 1
                logger.error("receiver: %s", e)
                return False
            for ev in events:
                self._call(self.hooks.on_event, ev.unit, ev.id, "mqtt", ev.key in new)
        else:
            new = self.book.fresh(events)
        decision = self.book.decide(events, new)
        if self.media is not None:
            now = self._clock.monotonic()
            for ev in events:
                self.media.expect(ev.unit, ev.id, expected_thumbs(ev), now)
        self.stats.duplicates += decision.duplicates
        self.stats.ignored += decision.ignored
        for ev in decision.deliver:
            self.stats.delivered += 1
            self._call(self.hooks.on_alert, ev.event)
        if self.receipts:
            for unit, ids in decision.receipts.items():
                self._publish(ack_topic(self.prefix, unit),
                              json.dumps({"ids": ids}, separators=(",", ":")).encode())
                self.stats.receipts += len(ids)
        return True

    def _handle_extra(self, m: Incoming) -> bool:
        """An alert from an extra source: show it once per (unit, seq16). False: not ours."""
        decode = next((d for f, d in self.extra if mqtt.topic_matches_sub(f, m.topic)), None)
        if decode is None:
            return False
        try:
            event = decode(m.topic, m.payload)
        except Exception:  # a decoder bug must not stop the receiver
            self.stats.malformed += 1
            logger.exception("receiver: decoder failed on %s", m.topic)
            return True
        if event is None:
            return True
        self.stats.received += 1
        if self.store is not None:
            return self._store_extra(event)
        if not self.book.lora_alert(event):
            self.stats.duplicates += 1
            return True
        self.stats.delivered += 1
        self._call(self.hooks.on_alert, event)
        return True

    def _store_extra(self, event: dict[str, Any]) -> bool:
        """A LoRa alert with a store: stored as the event until its MQTT copy replaces it, so
        the page shows it at once and then every link it came over (ARCHITECTURE §10)."""
        assert self.store is not None
        ev = StoredEvent(str(event["id"]), str(event["unit"]), "alert", event)
        now = self._clock.wall()
        try:
            new = self.store.add_events([ev], now, link="lorawan")
            self.store.update_unit(ev.unit, now)
        except StorageError as e:  # LoRa has no redelivery: shown all the same, once
            self.stats.store_errors += 1
            logger.error("receiver: LoRa alert %s not stored: %s", ev.id, e)
            new = {ev.key} if self.book.lora_alert(event) else set()
        if ev.key not in new:
            self.stats.duplicates += 1
        else:
            self.stats.delivered += 1
            self._call(self.hooks.on_alert, event)
        self._call(self.hooks.on_event, ev.unit, ev.id, "lorawan", ev.key in new)
        return True

    def _handle_other(self, m: Incoming, unit: str, rest: list[str]) -> None:
        if rest == ["status"]:
            status = self._door(m.topic, parse_status, m.payload)
            if status is not None:
                level = logging.WARNING if status["state"] == "lost" else logging.INFO
                logger.log(level, "unit %s is %s (%s)", unit, status["state"], status.get("ts"))
                self._fleet(unit, state=str(status["state"]))
                self._call(self.hooks.on_status, unit, status)
        elif rest == ["stats"]:
            stats = self._door(m.topic, parse_news, m.payload)
            if stats is not None:
                if stats.get("disk_low"):
                    logger.warning("unit %s reports disk_low (%s bytes free)", unit,
                                   stats.get("disk_free_bytes"))
                self._fleet(unit, stats=stats)
                self._call(self.hooks.on_stats, unit, stats)
        elif rest[0] == "cmd" and rest[-1] == "result" and len(rest) > 2:
            body = self._door(m.topic, parse_news, m.payload)
            if body is not None:
                level = logging.INFO if body.get("ok") else logging.WARNING
                logger.log(level, "unit %s: command %s result: %s", unit,
                           "/".join(rest[1:-1]), body)
                self._call(self.hooks.on_result, unit, body)
        elif rest[0] == "media" and len(rest) == 3 and self.media is not None:
            chunk = self._door(m.topic, parse_chunk, unit, rest[1], rest[2], m.props or {},
                               m.payload)
            if chunk is not None:
                self._handle_chunk(self.media, chunk, m.topic)

    def _fleet(self, unit: str, *, state: str | None = None,
               stats: dict[str, Any] | None = None) -> None:
        """The fleet view's row of ``unit`` (with a store); a failed write is logged only:
        the next status or stats message brings it up to date."""
        if self.store is None:
            return
        try:
            self.store.update_unit(unit, self._clock.wall(), state=state, stats=stats)
        except StorageError as e:
            logger.warning("receiver: %s", e)

    def _handle_chunk(self, media: MediaAssembler, chunk: Chunk, source: str) -> None:
        outcome = self._door(source, media.add, chunk, self._clock.monotonic())
        if outcome is None or self.store is None:
            return
        if outcome.request is not None:
            self.stats.media_bad += 1
            self._request(outcome.request)
        f = outcome.file
        if f is not None:
            self._media_done.append(MediaFile(f.unit, f.media_id, f.event_id, f.data,
                                              f.sha256))

    def _store_media(self) -> None:
        """The batch's finished media files, with one flush (RangerStore.add_media_files)."""
        done, self._media_done = self._media_done, []
        if not done or self.store is None:
            return
        try:
            paths = self.store.add_media_files(done, self._clock.wall())
        except StorageError as e:  # an announced thumbnail is asked for again by its timer
            logger.error("receiver: %s", e)
            return
        for f, path in zip(done, paths, strict=True):
            self.stats.media_stored += 1
            self._call(self.hooks.on_media, f.unit, f.media_id, path)

    def _request(self, req: MediaRequest) -> None:
        self._command(req.unit, "media/request", req.body())
        self.stats.media_requests += 1
        logger.info("receiver: asked %s for %s (%s)", req.unit, req.media_id,
                    "all chunks" if req.chunks is None else f"{len(req.chunks)} missing chunk(s)")

    def _call(self, hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:  # a user hook must not kill the receiver
            self.stats.hook_errors += 1
            logger.exception("receiver: hook failed")
