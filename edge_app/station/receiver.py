"""The ranger-side receiver: subscribe to the traps, store, dedupe, send receipts, show alerts.

Delivery from a trap is at-least-once (a message in flight when the link dropped is sent
again), so the receiver deduplicates by event ``id`` and calls the hook once per id. It connects
with a fixed client id, ``clean_start=False`` and a session expiry, so the broker queues alerts
published while the receiver is away (a laptop asleep, a base-station reboot) and delivers them
when it comes back.

End-to-end receipts: for every well-formed event it has *stored*, the receiver publishes
``{"ids": [...]}`` on ``<prefix>/<unit>/ack`` (QoS 1); a trap with ``mqtt.receipts`` keeps the
event queued until then. Stored means: written to the store's SQLite file (``store_dir``,
``camtrap alerts --store DIR``) or, without a store, handed to the hook (the ranger has seen
it, but a restarted receiver will not remember it). Messages are acknowledged to the broker
(manual PUBACK) only after that, so a receiver killed mid-batch gets them again from its
broker session instead of losing them.

Media (with a store only): chunks on ``<prefix>/<unit>/media/<media_id>/<chunk>`` are
reassembled in memory, checked against the ``sha256`` user property and written to
``<store>/media/<unit>/<media_id>.jpg``. A transfer that stalls with chunks missing, or a
thumbnail an event announced that never started, is asked for again with
``cmd/media/request`` (the missing chunks only), with a doubling delay and a few tries.

Threads: paho's network thread only queues messages; one worker thread stores, dedupes, calls
the hooks, publishes receipts and acknowledges. A failing hook is logged and counted and never
stops the receiver; malformed payloads are logged, counted and acknowledged (a resend would be
just as malformed).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import queue
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_app.core.errors import StorageError
from edge_app.core.mqtt_common import new_properties
from edge_app.core.topics import ack_topic, cmd_topic, parse_unit_topic
from edge_app.station.store import RangerStore, StoredEvent

logger = logging.getLogger(__name__)

DEDUPE_SIZE = 10_000
SESSION_EXPIRY_S = 7 * 86400
MEDIA_TIMEOUT_S = 30.0
THUMB_WAIT_S = 600.0
MEDIA_TRIES = 5
BATCH = 200

AlertHook = Callable[[dict[str, Any]], None]
StatusHook = Callable[[str, dict[str, Any]], None]
MediaHook = Callable[[str, str, Path], None]
#: (topic, payload) → an alert event, or None; for extra sources such as LoRaWAN network
#: servers (edge_app/station/lorawan.py).
ExtraDecoder = Callable[[str, bytes], dict[str, Any] | None]


@dataclass
class ReceiverStats:
    """Counters of a :class:`Receiver`.

    Attributes:
        received: event messages received (duplicates included).
        delivered: events handed to the hook (once per id).
        duplicates: events whose id was already delivered (or stored).
        ignored: well-formed events that are not alerts (``keep``), when not wanted.
        malformed: payloads that were not an event object with an ``id``.
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


@dataclass
class _Partial:
    """A media file being reassembled."""

    unit: str
    event_id: str | None
    of: int
    sha256: str
    chunks: dict[int, bytes] = field(default_factory=dict)
    last_chunk: float = 0.0
    tries: int = 0
    next_request: float = 0.0


@dataclass(frozen=True, slots=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    props: dict[str, str]


def default_client_id() -> str:
    """A stable id per host and user, so the broker keeps this receiver's session."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "ranger"
    return f"camtrap-ranger-{socket.gethostname()}-{user}"[:64]


class Receiver:
    """Subscribes to the traps' events, status, stats and media; see the module docstring.

    Args:
        host: broker host.
        port: broker port.
        prefix: topic prefix of the traps.
        client_id: fixed client id (default: :func:`default_client_id`). Two receivers with
            the same id take the session from each other: give each its own.
        on_alert: called with the event dict, once per event id.
        on_status: called with (unit, status dict) for ``online``/``offline``/``lost``.
        on_stats: called with (unit, stats dict).
        on_media: called with (unit, media id, path) for each stored media file.
        on_result: called with (unit, command result dict).
        include_keep: also deliver events whose outcome is not ``alert``.
        dedupe_size: how many recent ids are remembered (without a store).
        session_expiry_s: how long the broker keeps our session while we are away.
        ca_file: CA certificate; when given, TLS is used.
        username: MQTT user name (with ``password``).
        password: MQTT password.
        store_dir: persist events and media there (see :mod:`edge_app.station.store`).
        receipts: publish end-to-end receipts.
        media_timeout_s: a transfer with no new chunk for this long gets its missing chunks
            requested (the delay doubles per try).
        thumb_wait_s: a thumbnail an event announced that has not started after this long,
            while the trap's media stream is quiet, is requested.
        extra: (topic filter, decoder) pairs of other alert sources (LoRaWAN network
            servers). Their alerts are shown, not stored or receipted; one shown from there
            is not shown again when the trap's MQTT event of the same unit and seq (low 16
            bits) arrives, which is still stored and receipted.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str = "camtrap",
        client_id: str | None = None,
        on_alert: AlertHook | None = None,
        *,
        on_status: StatusHook | None = None,
        on_stats: StatusHook | None = None,
        on_media: MediaHook | None = None,
        on_result: StatusHook | None = None,
        include_keep: bool = False,
        dedupe_size: int = DEDUPE_SIZE,
        session_expiry_s: int = SESSION_EXPIRY_S,
        ca_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        store_dir: str | Path | None = None,
        receipts: bool = True,
        media_timeout_s: float = MEDIA_TIMEOUT_S,
        thumb_wait_s: float = THUMB_WAIT_S,
        extra: Sequence[tuple[str, ExtraDecoder]] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.client_id = client_id or default_client_id()
        self.on_alert = on_alert
        self.on_status = on_status
        self.on_stats = on_stats
        self.on_media = on_media
        self.on_result = on_result
        self.include_keep = include_keep
        self.receipts = receipts
        self.media_timeout_s = media_timeout_s
        self.thumb_wait_s = thumb_wait_s
        self._dedupe_size = max(1, dedupe_size)
        self._session_expiry_s = session_expiry_s
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._store: RangerStore | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._extra = list(extra)
        self._extra_keys: OrderedDict[tuple[str, int], bool] = OrderedDict()  # → from extra
        self._partials: dict[str, _Partial] = {}
        self._expected: dict[str, tuple[str, str | None, float]] = {}  # thumb id → unit, ev, t
        self._media_active: dict[str, float] = {}  # unit → last chunk time
        self._inbox: queue.Queue[_Incoming | None] = queue.Queue()
        self._cond = threading.Condition()
        self._connected = False
        self._last_message = time.monotonic()
        self.stats = ReceiverStats()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        self._client.reconnect_delay_set(1, 30)
        if username:
            self._client.username_pw_set(username, password)
        if ca_file:
            self._client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._worker: threading.Thread | None = None
        self._started = False

    @property
    def store(self) -> RangerStore | None:
        """The receiver's store (None without ``store_dir``); owned by the worker thread."""
        return self._store

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the store and connect in the background (paho retries while unreachable).

        Raises:
            StorageError: the store cannot be opened.
        """
        if self._store_dir is not None and self._store is None:
            self._store = RangerStore(self._store_dir)
        self._worker = threading.Thread(target=self._work, name="ranger-worker", daemon=True)
        self._worker.start()
        props = new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(self.host, self.port, keepalive=30, clean_start=False,
                                   properties=props)
        self._client.loop_start()
        self._started = True

    def stop(self) -> None:
        """Finish the queued messages (store, receipts, acks), then disconnect cleanly."""
        if not self._started:
            return
        self._started = False
        self._inbox.put(None)
        if self._worker is not None:
            self._worker.join(10)
        # Give the last receipts and PUBACKs a moment to leave before DISCONNECT.
        self._client.disconnect()
        self._client.loop_stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until subscribed (or ``timeout_s``); True if connected."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connected, timeout_s)

    def wait_quiet(self, quiet_s: float, timeout_s: float = 30.0) -> bool:
        """Block until no message arrived or was processed for ``quiet_s`` (at most
        ``timeout_s``). Used to let queued messages drain before stopping."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                quiet_at = self._last_message + quiet_s
                if now >= quiet_at and self._inbox.empty():
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(max(0.01, min(quiet_at, deadline) - now))

    @property
    def connected(self) -> bool:
        return self._connected

    def send_command(self, unit: str, name: str, body: dict[str, Any]) -> str:
        """Publish a command to a trap (QoS 1); returns its id (``body['id']`` or a new one)."""
        cmd = dict(body)
        cmd.setdefault("id", uuid.uuid4().hex[:12])
        self._client.publish(cmd_topic(self.prefix, unit, name),
                             json.dumps(cmd, separators=(",", ":")).encode(), qos=1)
        return str(cmd["id"])

    # -- paho callbacks (paho's thread) -------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning("receiver: broker refused the connection: %s", reason_code)
            return
        # Subscribing again on a resumed session is harmless and covers a lost session.
        p = self.prefix
        subs: list[tuple[str, SubscribeOptions]] = [
            (f"{p}/+/event", SubscribeOptions(qos=1)),
            (f"{p}/+/status", SubscribeOptions(qos=1)),
            (f"{p}/+/stats", SubscribeOptions(qos=1)),
            # No Local: our own commands to the traps live under the same prefix.
            (f"{p}/+/cmd/#", SubscribeOptions(qos=1, noLocal=True)),
        ]
        if self._store_dir is not None:
            subs.append((f"{p}/+/media/#", SubscribeOptions(qos=1)))
        subs += [(f, SubscribeOptions(qos=1)) for f, _decode in self._extra]
        client.subscribe(subs)
        logger.info("receiver: connected to %s:%d as %s (session present: %s)", self.host,
                    self.port, self.client_id, flags.session_present)
        with self._cond:
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = False
        if self._started:
            logger.warning("receiver: disconnected (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props: dict[str, str] = {}
        user = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        if user:
            props = {str(k): str(v) for k, v in user}
        self._inbox.put(_Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, props))
        with self._cond:
            self._last_message = time.monotonic()
            self._cond.notify_all()

    # -- the worker thread --------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Incoming] = []
            with contextlib.suppress(queue.Empty):
                first = self._inbox.get(timeout=self._next_timer_s())
                if first is None:
                    stopping = True
                else:
                    batch.append(first)
            while len(batch) < BATCH and not stopping:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            if batch:
                self._handle_batch(batch)
            self._media_timers()
            with self._cond:
                self._last_message = time.monotonic()
                self._cond.notify_all()

    def _handle_batch(self, batch: list[_Incoming]) -> None:
        events: list[tuple[_Incoming, StoredEvent]] = []
        others: list[_Incoming] = []
        extras: set[int] = set()
        for m in batch:
            if self._extra and self._handle_extra(m):
                extras.add(id(m))
                continue
            parsed = parse_unit_topic(self.prefix, m.topic)
            if parsed is not None and parsed[1] == ["event"]:
                ev = self._parse_event(m, parsed[0])
                if ev is not None:
                    events.append((m, ev))
                    continue
            others.append(m)
        stored = {id(m) for m in self._handle_events(events)}
        for m in others:
            self._handle_other(m)
        done = stored | {id(m) for m in others} | extras
        for m in batch:  # MQTT wants PUBACKs in the order the messages came
            if id(m) in done:
                self._ack(m)

    def _parse_event(self, m: _Incoming, unit: str) -> StoredEvent | None:
        self.stats.received += 1
        body = _decode(m.payload)
        if body is None or not isinstance(body.get("id"), str) or not body["id"]:
            self.stats.malformed += 1
            logger.warning("receiver: malformed event on %s (not an object with an id)",
                           m.topic)
            return None
        return StoredEvent(str(body["id"]), unit, str(body.get("outcome", "alert")), body)

    def _handle_events(self, events: list[tuple[_Incoming, StoredEvent]]) -> list[_Incoming]:
        """Store (or remember) a batch of events, deliver the new ones, send receipts.

        Returns:
            The messages to acknowledge (all of them, unless the store failed).
        """
        if not events:
            return []
        if self._store is not None:
            try:
                new = self._store.add_events([ev for _m, ev in events], time.time())
            except StorageError as e:
                # Not acknowledged: the broker delivers them again after a reconnect.
                self.stats.store_errors += 1
                logger.error("receiver: %s", e)
                return []
        else:
            new = set()
            for _m, ev in events:
                if ev.id not in self._seen:
                    new.add(ev.id)
        by_unit: dict[str, list[str]] = {}
        for _m, ev in events:
            by_unit.setdefault(ev.unit, []).append(ev.id)
            self._expect_media(ev)
            if ev.id not in new:
                self.stats.duplicates += 1
                logger.debug("receiver: duplicate %s", ev.id)
                continue
            new.discard(ev.id)  # a batch may hold the same id twice
            self._remember(ev.id)
            if not self.include_keep and ev.outcome != "alert":
                self.stats.ignored += 1
                continue
            if self._shown_by_extra(ev.event):
                self.stats.duplicates += 1  # already shown from LoRa; stored all the same
                continue
            self.stats.delivered += 1
            if self.on_alert is not None:
                self._call(self.on_alert, ev.event)
        if self.receipts:
            for unit, ids in by_unit.items():
                unique = list(dict.fromkeys(ids))
                self._client.publish(ack_topic(self.prefix, unit),
                                     json.dumps({"ids": unique}, separators=(",", ":")).encode(),
                                     qos=1)
                self.stats.receipts += len(unique)
        return [m for m, _ev in events]

    def _handle_extra(self, m: _Incoming) -> bool:
        """An alert from an extra source: show it once per (unit, seq16). False: not ours."""
        decode = next((d for f, d in self._extra if mqtt.topic_matches_sub(f, m.topic)), None)
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
        key = _short_key(event)
        if key is not None and key in self._extra_keys:
            self.stats.duplicates += 1
            return True
        if key is not None:
            self._extra_keys[key] = True
            while len(self._extra_keys) > self._dedupe_size:
                self._extra_keys.popitem(last=False)
        self.stats.delivered += 1
        if self.on_alert is not None:
            self._call(self.on_alert, event)
        return True

    def _shown_by_extra(self, event: dict[str, Any]) -> bool:
        """True if an extra source already showed this event; else remember it as shown."""
        key = _short_key(event) if self._extra else None
        if key is None:
            return False
        if self._extra_keys.get(key):
            return True
        self._extra_keys[key] = False  # shown from MQTT: a later LoRa copy is a duplicate
        while len(self._extra_keys) > self._dedupe_size:
            self._extra_keys.popitem(last=False)
        return False

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        if len(self._seen) > self._dedupe_size:
            self._seen.popitem(last=False)

    def _handle_other(self, m: _Incoming) -> None:
        parsed = parse_unit_topic(self.prefix, m.topic)
        if parsed is None:
            return
        unit, rest = parsed
        if rest == ["status"]:
            self._handle_status(unit, _decode(m.payload))
        elif rest == ["stats"]:
            self._handle_stats(unit, _decode(m.payload))
        elif rest[0] == "cmd" and rest[-1] == "result":
            body = _decode(m.payload)
            if body is not None:
                level = logging.INFO if body.get("ok") else logging.WARNING
                logger.log(level, "unit %s: command %s result: %s", unit,
                           "/".join(rest[1:-1]), body)
                if self.on_result is not None:
                    self._call(self.on_result, unit, body)
        elif rest[0] == "media" and len(rest) == 3:
            self._handle_chunk(unit, rest[1], rest[2], m)

    def _handle_status(self, unit: str, body: dict[str, Any] | None) -> None:
        if body is None or not isinstance(body.get("state"), str):
            self.stats.malformed += 1
            logger.warning("receiver: malformed status from %s", unit)
            return
        level = logging.WARNING if body["state"] == "lost" else logging.INFO
        logger.log(level, "unit %s is %s (%s)", unit, body["state"], body.get("ts"))
        if self.on_status is not None:
            self._call(self.on_status, unit, body)

    def _handle_stats(self, unit: str, body: dict[str, Any] | None) -> None:
        if body is None:
            self.stats.malformed += 1
            return
        if body.get("disk_low"):
            logger.warning("unit %s reports disk_low (%s bytes free)", unit,
                           body.get("disk_free_bytes"))
        if self.on_stats is not None:
            self._call(self.on_stats, unit, body)

    def _ack(self, m: _Incoming) -> None:
        if m.qos > 0:
            self._client.ack(m.mid, m.qos)

    # -- media --------------------------------------------------------------------------

    def _expect_media(self, ev: StoredEvent) -> None:
        if self._store is None:
            return
        for item in ev.event.get("media") or []:
            if not isinstance(item, dict) or item.get("kind") != "thumb":
                continue
            media_id = item.get("id")
            if isinstance(media_id, str) and media_id not in self._expected \
                    and not self._store.has_media(media_id):
                self._expected[media_id] = (ev.unit, ev.id, time.monotonic())

    def _handle_chunk(self, unit: str, media_id: str, index: str, m: _Incoming) -> None:
        store = self._store
        if store is None:
            return
        try:
            i, of = int(index), int(m.props.get("of", ""))
        except ValueError:
            self.stats.malformed += 1
            return
        sha = m.props.get("sha256", "")
        now = time.monotonic()
        self._media_active[unit] = now
        self._expected.pop(media_id, None)
        if store.has_media(media_id):
            return  # a repeat of a file we have
        part = self._partials.get(media_id)
        if part is None or part.of != of or part.sha256 != sha:
            part = _Partial(unit, m.props.get("event") or None, of, sha)
            self._partials[media_id] = part
        if not 0 <= i < of:
            self.stats.malformed += 1
            return
        part.chunks[i] = m.payload
        part.last_chunk = now
        part.next_request = now + self.media_timeout_s
        if len(part.chunks) < of:
            return
        del self._partials[media_id]
        data = b"".join(part.chunks[k] for k in range(of))
        if hashlib.sha256(data).hexdigest() != sha:
            self.stats.media_bad += 1
            logger.warning("receiver: %s from %s failed its sha256 check; asking again",
                           media_id, unit)
            self._request(unit, media_id, None, None)
            return
        try:
            path = store.add_media(unit, media_id, part.event_id, data, sha, time.time())
        except StorageError as e:
            logger.error("receiver: %s", e)
            return
        self.stats.media_stored += 1
        if self.on_media is not None:
            self._call(self.on_media, unit, media_id, path)

    def _next_timer_s(self) -> float:
        times = [p.next_request for p in self._partials.values()]
        times += [t + self.thumb_wait_s for _u, _e, t in self._expected.values()]
        if not times:
            return 3600.0
        return max(0.05, min(times) - time.monotonic())

    def _media_timers(self) -> None:
        now = time.monotonic()
        for media_id, part in list(self._partials.items()):
            if now < part.next_request:
                continue
            if part.tries >= MEDIA_TRIES:
                logger.warning("receiver: giving up on %s (%d of %d chunks)", media_id,
                               len(part.chunks), part.of)
                del self._partials[media_id]
                continue
            missing = [k for k in range(part.of) if k not in part.chunks]
            part.tries += 1
            part.next_request = now + self.media_timeout_s * (2 ** part.tries)
            self._request(part.unit, media_id, missing, part.of)
        for media_id, (unit, _event, since) in list(self._expected.items()):
            quiet = now - self._media_active.get(unit, 0.0) >= self.media_timeout_s
            if now - since >= self.thumb_wait_s and quiet:
                del self._expected[media_id]
                self._request(unit, media_id, None, None)

    def _request(self, unit: str, media_id: str, chunks: list[int] | None,
                 of: int | None) -> None:
        body: dict[str, Any] = {"media": media_id}
        if chunks is not None and of is not None:
            body.update(chunks=chunks, of=of)
        self.send_command(unit, "media/request", body)
        self.stats.media_requests += 1
        logger.info("receiver: asked %s for %s (%s)", unit, media_id,
                    "all chunks" if chunks is None else f"{len(chunks)} missing chunk(s)")

    def _call(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # a user hook must not kill the receiver
            self.stats.hook_errors += 1
            logger.exception("receiver: hook failed")


def _decode(payload: bytes | bytearray) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _short_key(event: dict[str, Any]) -> tuple[str, int] | None:
    """(unit, low 16 bits of seq): what a LoRa alert (which carries only those bits) and the
    trap's MQTT event of the same alert share."""
    unit, seq = event.get("unit"), event.get("seq")
    if not isinstance(unit, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return unit, seq & 0xFFFF


def _num(value: Any, fmt: str = ".2f") -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return "?"


def format_alert(event: dict[str, Any]) -> str:
    """One human line: time, unit, label, species and its confidence, score, id.

    Example: ``2026-09-21T10:15:00.123+00:00  LL-042  animal leopard 0.91  score 0.91
    LL-042-17``. Missing or odd fields print as ``?`` rather than failing.
    """
    ts = str(event.get("ts", "?"))
    if event.get("time_synced") is False:
        ts += " (clock not synced)"
    label = str(event.get("label", "?"))
    species = event.get("species")
    what = label
    if species:
        confs: list[float] = [
            float(d["species_conf"])
            for d in event.get("detections") or []
            if isinstance(d, dict) and d.get("species") == species
            and isinstance(d.get("species_conf"), int | float)
        ]
        conf = max(confs) if confs else event.get("score")
        what = f"{label} {species} {_num(conf)}"
    outcome = event.get("outcome", "alert")
    tag = "" if outcome == "alert" else f"[{outcome}] "
    via = "  (LoRa: photo follows)" if event.get("source") == "lorawan" else ""
    return (f"{ts}  {event.get('unit', '?')}  {tag}{what}  score {_num(event.get('score'))}  "
            f"{event.get('id', '?')}{via}")


def parse_broker(broker: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port).

    Raises:
        ValueError: not of that form.
    """
    host, sep, port_s = broker.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"expected HOST:PORT, got {broker!r}")
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {broker!r}")
    return host.strip("[]"), port


@dataclass(frozen=True)
class AlertsOptions:
    """Connection and storage options of ``camtrap alerts`` beyond the broker address.

    Attributes:
        ca_file: CA certificate of the broker (enables TLS).
        username: MQTT user name.
        password_file: file holding the MQTT password (must be mode 0600).
        store_dir: persist events and media there (and answer with receipts after storing).
        receipts: publish end-to-end receipts.
        include_keep: also print non-alert events.
        lorawan: also show alerts from ChirpStack v4 / TTN v3 uplinks (edge_app.station.lorawan).
        lorawan_devices: TOML file mapping DevEUI → unit (else the devices' names are used).
    """

    ca_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    store_dir: str | None = None
    receipts: bool = True
    include_keep: bool = False
    lorawan: bool = True
    lorawan_devices: str | None = None


def run_alerts(
    broker: str,
    as_json: bool,
    out: TextIO,
    stop: threading.Event | None = None,
    *,
    prefix: str = "camtrap",
    client_id: str | None = None,
    options: AlertsOptions | None = None,
) -> int:
    """``camtrap alerts``: print one line per alert until ``stop`` is set or Ctrl-C.

    Args:
        broker: ``HOST:PORT``.
        as_json: print the event JSON (one line) instead of :func:`format_alert`.
        out: where the lines go (flushed per line, for pipes).
        stop: ends the run when set (None: run until KeyboardInterrupt).
        prefix: topic prefix of the traps.
        client_id: receiver client id (default: per host and user).
        options: TLS, credentials, store and receipts.

    Returns:
        0 after a stop, 2 if ``broker`` is not ``HOST:PORT`` or the password file is unusable.
    """
    from edge_app.core.errors import ConfigError
    from edge_app.core.mqtt_common import read_password_file

    opts = options or AlertsOptions()
    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        print(f"camtrap alerts: --broker: {e}", file=sys.stderr)
        return 2
    password = None
    if opts.password_file:
        try:
            password = read_password_file("--password-file", opts.password_file)
        except ConfigError as e:
            print(f"camtrap alerts: {e}", file=sys.stderr)
            return 2
    extra: list[tuple[str, ExtraDecoder]] = []
    if opts.lorawan:
        from edge_app.station.lorawan import lorawan_sources

        try:
            _decoder, extra = lorawan_sources(opts.lorawan_devices)
        except ConfigError as e:
            print(f"camtrap alerts: {e}", file=sys.stderr)
            return 2
    lock = threading.Lock()

    def on_alert(event: dict[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":"), ensure_ascii=False) if as_json
                else format_alert(event))
        with lock:
            out.write(line + "\n")
            out.flush()

    receiver = Receiver(host, port, prefix, client_id, on_alert, ca_file=opts.ca_file,
                        username=opts.username, password=password, store_dir=opts.store_dir,
                        receipts=opts.receipts, include_keep=opts.include_keep, extra=extra)
    done = stop or threading.Event()
    if stop is None and threading.current_thread() is threading.main_thread():
        # Explicit handlers: a process started in the background by a shell inherits SIGINT
        # as *ignored*, and Python then installs no KeyboardInterrupt handler, so Ctrl-C /
        # `kill -INT` would never stop us. SIGTERM (systemd) stops cleanly too: the last
        # receipts and PUBACKs go out before we disconnect.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _signum, _frame: done.set())
    receiver.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        s = receiver.stats
        logger.info("alerts: %d delivered, %d duplicate(s), %d malformed, %d receipt(s), "
                    "%d media file(s)", s.delivered, s.duplicates, s.malformed, s.receipts,
                    s.media_stored)
    return 0
