"""The MQTT link: drains the durable outbox to a broker over MQTT 5 (paho-mqtt 2.x).

Threads and ownership:

* **paho's network thread** (``loop_start``) runs the callbacks. They only put small event
  objects on ``self._events`` (an exception there would kill paho's loop, and a database write
  there would stall the network). Exceptions: ``on_connect`` publishes the retained ``online``
  status and subscribes, so that they are the first things the broker hears from us; ``on_log``
  stamps the time of the last packet received (for the dead-connection watchdog).
* **the uplink thread** (:meth:`MqttLink.run`) owns its own SQLite connection and everything
  else: it takes due rows, publishes them, maps each message id (``mid``) to its row and chunk,
  and records delivery only when ``on_publish`` reports a PUBACK with a success reason code.
  It blocks on the event queue with a timeout computed from its timers (next due row, oldest
  unanswered message, receipt deadline, stats, watchdog), so an idle link uses no CPU.

Delivery (see :mod:`edge_app.trap.store.outbox` for the row states):

* a row is ``inflight`` from its first publish until the broker acknowledges its last message;
  then it is ``sent`` — or, for ``alert``/``event`` rows with ``mqtt.receipts`` on,
  ``acked-by-broker`` until a receiver's receipt on ``<prefix>/<unit>/ack`` names its event id
  (a broker's PUBACK is not delivery: a broker killed with -9 can lose what it acknowledged);
* a PUBACK with an MQTT 5 failure reason code is a refusal: the row is retried with backoff;
* a row with no answer for ``outbox.inflight_timeout_s`` (while connected) is sent again;
* across a disconnect, paho resends unacknowledged messages after reconnecting
  (``clean_start=False`` plus a session expiry, so the broker keeps our session too);
* if the process dies, :meth:`Outbox.recover` puts in-flight rows back to ready at the next
  start. Delivery is at-least-once; every message carries its event id.

Media rows go as binary chunks (``mqtt.chunk_bytes``) on
``<prefix>/<unit>/media/<media_id>/<chunk>`` with user properties ``event``, ``chunk``, ``of``
and ``sha256``, at most ``mqtt.media_window`` chunks of a file in flight, and one full image at
a time. Chunks are interleaved by priority: an alert queued during an image transfer goes out
after at most the chunks already on the air, not after the whole image. When a media row is
retried, only the chunks the broker has not acknowledged are sent again. Full images wait until
the link has been up and clean for ``mqtt.image_min_link_s``.

Dead connections: paho only notices a silent broker after up to two keepalive periods. The
link watches the time of the last packet received (the broker answers paho's PINGREQ within
one keepalive) and drops the socket after 1.5 × keepalive of silence; paho then reconnects with
its capped exponential backoff (``mqtt.reconnect_min_s`` … ``reconnect_max_s``).

Status: the Last Will is a retained ``{"state": "lost"}`` on ``<prefix>/<unit>/status``;
``online`` is published (retained) on every successful connect and ``offline`` on a clean stop,
just before a normal DISCONNECT (which tells the broker not to send the will). Health goes to
``<prefix>/<unit>/stats`` (retained) every ``mqtt.stats_interval_s`` and at each connect. Stats,
status and command results are published directly, not through the outbox: they are replaced
by the next one, and they must work when the card is full.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import math
import os
import queue
import random
import socket
import sqlite3
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_app import __version__
from edge_app.core.clock import Clock, SystemClock, rfc3339
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError
from edge_app.core.mqtt_common import new_properties, read_password_file
from edge_app.core.topics import (
    ack_topic,
    cmd_result_topic,
    cmd_topic,
    stats_topic,
    status_topic,
)
from edge_app.trap.settings import Settings
from edge_app.trap.store.db import open_db, transaction
from edge_app.trap.store.outbox import PRIORITY, RECEIPT_KINDS, Kind, Outbox, OutboxRow
from edge_app.trap.store.retention import DiskGuard
from edge_app.trap.uplink.commands import Commands

logger = logging.getLogger(__name__)

SENT_RETENTION_S = 7 * 86400.0
HOUSEKEEPING_S = 60.0
PURGE_EVERY_S = 3600.0
STOP_FLUSH_S = 2.0
DEAD_FACTOR = 1.5
DB_RETRY_S = 1.0
# Room for the topic, properties and MQTT header of a message, on top of its payload.
HEADROOM_BYTES = 1024

_OK_RC = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)


class LinkState(enum.Enum):
    """Connection state of the link, as seen by the uplink thread."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost; paho is reconnecting with backoff


# -- events from paho's thread to the uplink thread ---------------------------------------


@dataclass(frozen=True, slots=True)
class _Connected:
    session_present: bool
    max_packet: int | None
    receive_max: int | None


@dataclass(frozen=True, slots=True)
class _ConnectFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class _Published:
    mid: int
    failure: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Wake:
    pass


_Event = _Connected | _ConnectFailed | _Disconnected | _Published | _Message | _Wake
_WAKE = _Wake()


@dataclass
class LinkStats:
    """Counters of the link (a snapshot; see :meth:`MqttLink.stats`).

    Attributes:
        state: connection state name.
        connects: successful connects (CONNACK success).
        disconnects: connections lost or closed.
        dead_connections: connections dropped by the watchdog (silent broker or network).
        published: outbox rows whose sending started (each attempt counts).
        sent: rows delivered (PUBACK, or the receipt when receipts are on).
        sent_by_kind: ``sent`` per outbox kind.
        acked: rows acknowledged by the broker and waiting for a receipt.
        receipts: rows confirmed by a receiver's receipt.
        failed: attempts that failed (error reason code, publish error).
        requeued: rows sent again after no answer in time.
        dropped: rows given up (unreadable media, too large, out of attempts).
        commands: commands handled.
        stats_published: stats messages published.
    """

    state: str = LinkState.STOPPED.value
    connects: int = 0
    disconnects: int = 0
    dead_connections: int = 0
    published: int = 0
    sent: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in Kind})
    acked: int = 0
    receipts: int = 0
    failed: int = 0
    requeued: int = 0
    dropped: int = 0
    commands: int = 0
    stats_published: int = 0


def _status_payload(state: str, clock: Clock) -> bytes:
    body = {"state": state, "ts": rfc3339(clock.wall()), "version": __version__}
    return json.dumps(body, separators=(",", ":")).encode()


def check_credentials(cfg: Config) -> str | None:
    """Check the files the MQTT link needs before anything else starts.

    Returns:
        The MQTT password (None when no ``mqtt.password_file`` is configured).

    Raises:
        ConfigError: naming the key: a TLS file is missing, or the password file is missing,
            empty or readable by other users.
    """
    m = cfg.mqtt
    if not m.enabled:
        return None
    if m.tls:
        for key, value in (("mqtt.ca_file", m.ca_file), ("mqtt.cert_file", m.cert_file),
                           ("mqtt.key_file", m.key_file)):
            if value and not Path(value).is_file():
                raise ConfigError(key, f"file not found: {value}")
    if m.password_file:
        return read_password_file("mqtt.password_file", m.password_file)
    return None


@dataclass
class _Transfer:
    """One outbox row being sent: its messages (one, or the chunks of a media file)."""

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
    mids: dict[int, int] = field(default_factory=dict)  # mid → chunk index

    def remaining(self) -> list[int]:
        """Chunks not yet acknowledged by the broker."""
        return sorted(set(self.pending) | self.inflight)

    def message(self, i: int) -> tuple[str, bytes, Properties | None]:
        if not self.media:
            return self.topic, self.data, None
        props = new_properties(PacketTypes.PUBLISH)
        props.ContentType = "image/jpeg"
        props.UserProperty = [("event", self.event_id or ""), ("chunk", str(i)),
                              ("of", str(self.of)), ("sha256", self.sha256)]
        return f"{self.topic}/{i}", self.data[i * self.chunk:(i + 1) * self.chunk], props


class MqttLink:
    """Drains the outbox over MQTT; :meth:`run` is the uplink thread's body.

    Args:
        cfg: unit id, ``mqtt``, ``outbox`` and ``storage.root`` (media rows are relative to it).
        db: the trap database (the link opens its own connection on its thread).
        clock: wall time for the outbox and status timestamps, monotonic time for timers.
        rng: random source of the retry jitter.
        chunk_bytes: media chunk size (default ``mqtt.chunk_bytes``).
        stats_source: extra fields for the stats message (the daemon's counters, models).
        on_config: called with the new configuration after any accepted settings change.
        settings: the trap's settings service (default: one of its own over ``db``).

    Raises:
        ConfigError: TLS is on and a CA/cert/key file named in the config does not exist, or
            the password file is missing, empty or readable by other users.
    """

    def __init__(
        self,
        cfg: Config,
        db: str | os.PathLike[str],
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        chunk_bytes: int | None = None,
        stats_source: Callable[[], dict[str, Any]] | None = None,
        on_config: Callable[[Config], None] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.cfg = cfg if settings is None else settings.config
        cfg = self.cfg
        self.db_path = Path(db)
        self.clock: Clock = clock or SystemClock()
        self._rng = rng
        self._chunk_override = chunk_bytes
        self._root = Path(cfg.storage.root)
        self._status_topic = status_topic(cfg.mqtt.topic_prefix, cfg.unit.id)
        self._ack_topic = ack_topic(cfg.mqtt.topic_prefix, cfg.unit.id)
        self._cmd_prefix = cmd_topic(cfg.mqtt.topic_prefix, cfg.unit.id, "")
        self._stats_source = stats_source
        self._on_config = on_config
        self._guard = DiskGuard.from_config(cfg)
        # The settings service owns the config; the link follows its changes (a standalone
        # link, as in tests, gets its own service over the same database).
        self.settings = settings if settings is not None else Settings(cfg, self.clock,
                                                                       self.db_path)
        self.settings.subscribe(self._apply_cfg)
        self._commands = Commands(self.settings, self.clock)
        self._events: queue.Queue[_Event] = queue.Queue()
        self._wake_pending = threading.Event()
        self._lock = threading.Lock()  # guards _stats for readers on other threads
        self._stats = LinkStats()
        self._state = LinkState.STOPPED
        self._started_mono = self.clock.monotonic()
        self._last_in = self._started_mono  # written by paho's thread (a float: atomic)
        # Owned by the uplink thread:
        self._transfers: dict[int, _Transfer] = {}
        self._mid_row: dict[int, tuple[int, int]] = {}
        self._to_sent: dict[int, str] = {}  # row id → kind, recorded at the next flush
        self._to_acked: dict[int, str] = {}
        self._to_receive: set[str] = set()
        self._db_retry_at: float | None = None
        self._max_packet: int | None = None
        self._receive_max: int | None = None
        self._connected_mono: float | None = None
        self._clean_since = self._started_mono
        self._next_stats = self._started_mono
        self._status_mid: int | None = None
        self._status_acked = False
        self._connect_warned = False
        # Fail at start-up (exit 2, naming the key), not in a restart loop.
        self._password = check_credentials(cfg)

    # -- API for other threads ----------------------------------------------------------

    def wake(self) -> None:
        """Tell the uplink thread there is new work (or a stop); cheap and non-blocking."""
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self._events.put_nowait(_WAKE)

    @property
    def state(self) -> LinkState:
        """The connection state as last seen by the uplink thread."""
        return self._state

    @property
    def sent_count(self) -> int:
        """Alerts delivered (for the demo summary)."""
        with self._lock:
            return self._stats.sent_by_kind[Kind.ALERT.value]

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        with self._lock:
            snap = LinkStats(**asdict(self._stats))
            snap.state = self._state.value
            return snap

    # -- the paho client ----------------------------------------------------------------

    @property
    def username(self) -> str:
        """The MQTT user name: ``mqtt.username``, else the unit id (the ACL's ``%u``)."""
        return self.cfg.mqtt.username or self.cfg.unit.id

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.cfg.mqtt_client_id,
            protocol=mqtt.MQTTv5,
        )
        if logger.isEnabledFor(logging.DEBUG):
            # Only when debugging: paho logs a normal DISCONNECT at ERROR level ("Client is
            # not connected"), which would put a false alarm in the journal at every stop.
            client.enable_logger(logging.getLogger("paho"))
        # Our own accounting bounds what is in flight; paho's limit must never be the one
        # that queues (it would hold an alert behind image chunks in its memory queue).
        client.max_inflight_messages_set(self.cfg.outbox.max_inflight + 8)
        client.reconnect_delay_set(
            max(1, math.ceil(m.reconnect_min_s)), max(1, math.ceil(m.reconnect_max_s))
        )
        # The will's ts is when this client was set up (paho sends the will with CONNECT);
        # the moment of loss is when the broker publishes it.
        client.will_set(self._status_topic, _status_payload("lost", self.clock), qos=1,
                        retain=True)
        if self._password is not None:
            client.username_pw_set(self.username, self._password)
        if m.tls:
            self._set_tls(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    def _set_tls(self, client: mqtt.Client) -> None:
        m = self.cfg.mqtt
        check_credentials(self.cfg)
        try:
            client.tls_set(
                ca_certs=m.ca_file or None,
                certfile=m.cert_file or None,
                keyfile=m.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as e:
            raise ConfigError("mqtt.ca_file", f"TLS set-up failed: {e}") from e

    # Callbacks: paho's thread. Only queue puts, plus the online publish and subscriptions.

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._events.put_nowait(_ConnectFailed(str(reason_code)))
            return
        client.publish(self._status_topic, _status_payload("online", self.clock), qos=1,
                       retain=True)
        # No Local: the unit publishes its command results under cmd/…/result and must not
        # receive them back.
        opts = SubscribeOptions(qos=1, noLocal=True)
        client.subscribe([(self._ack_topic, opts), (self._cmd_prefix + "#", opts)])
        max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._events.put_nowait(_Connected(bool(flags.session_present),
                                           int(max_packet) if max_packet else None,
                                           int(receive_max) if receive_max else None))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._events.put_nowait(_ConnectFailed("connection failed"))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._events.put_nowait(_Disconnected(str(reason_code)))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._events.put_nowait(_Published(mid, reason_code.is_failure, str(reason_code)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._events.put_nowait(_Message(msg.topic, bytes(msg.payload)))

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # paho logs every packet it reads as "Received <TYPE> …", PINGRESP included, which is
        # the only way to see keepalive answers without touching its internals.
        if buf.startswith("Received "):
            self._last_in = self.clock.monotonic()

    # -- the uplink thread --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Drain the outbox until ``stop`` is set (call :meth:`wake` after setting it).

        Raises:
            ConfigError: TLS files missing or unusable.
            StorageError: the database cannot be opened.
        """
        conn = open_db(self.db_path)
        try:
            outbox = Outbox(conn, self.clock, self.cfg.outbox, self._rng)
            # A previous run of this thread (or process) may have left rows in flight whose
            # messages died with its paho client: they go out again.
            outbox.recover()
            self._reset()
            client = self._make_client()
            self._set_state(LinkState.CONNECTING)
            m = self.cfg.mqtt
            props = new_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            logger.info("MQTT: connecting to %s:%d as %s (tls=%s, receipts=%s)", m.host, m.port,
                        self.cfg.mqtt_client_id, m.tls, m.receipts)
            client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                 properties=props)
            client.loop_start()
            try:
                self._loop(stop, client, outbox, conn)
            finally:
                self._shutdown(client, outbox, conn)
        finally:
            conn.close()

    def _reset(self) -> None:
        self._transfers.clear()
        self._mid_row.clear()
        self._to_sent.clear()
        self._to_acked.clear()
        self._to_receive.clear()
        self._db_retry_at = None

    def _loop(
        self, stop: threading.Event, client: mqtt.Client, outbox: Outbox,
        conn: sqlite3.Connection,
    ) -> None:
        next_housekeeping = self.clock.monotonic()
        next_purge = next_housekeeping
        while not stop.is_set():
            now, mono = self.clock.wall(), self.clock.monotonic()
            if mono >= next_housekeeping:
                self._housekeeping(outbox, now, purge=mono >= next_purge)
                next_housekeeping = mono + HOUSEKEEPING_S
                if mono >= next_purge:
                    next_purge = mono + PURGE_EVERY_S
            self._flush(outbox, now, mono)
            if self._state is LinkState.CONNECTED:
                self._check_alive(client, mono)
            if self._state is LinkState.CONNECTED and not self._db_blocked(mono):
                # Only while connected: during an outage paho holds the messages and resends
                # them on reconnect, and requeueing them too would send every one twice.
                self._check_timeouts(outbox, now, mono)
                self._requeue_unreceipted(outbox, now, mono)
                self._pump(client, outbox, now, mono)
            if self._state is LinkState.CONNECTED and self._stats_due(mono):
                self._publish_stats(client, outbox, mono)
            wait_s = self._wait_s(outbox, now, mono, next_housekeeping)
            events: list[_Event] = []
            with contextlib.suppress(queue.Empty):
                events.append(self._events.get(timeout=wait_s))
            self._drain_into(events)
            self._process(events, client, outbox, conn)

    def _drain_into(self, events: list[_Event]) -> None:
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return

    # -- timers -------------------------------------------------------------------------

    def _max_priority(self, mono: float) -> int:
        """Rows above this priority number wait: full images need a good link, one at a time."""
        if any(t.kind == Kind.IMAGE for t in self._transfers.values()):
            return PRIORITY[Kind.THUMB]
        return PRIORITY[Kind.IMAGE] if self._images_ok(mono) else PRIORITY[Kind.THUMB]

    def _images_ok(self, mono: float) -> bool:
        return mono >= self._images_from()

    def _images_from(self) -> float:
        start = self._clean_since
        if self._connected_mono is not None:
            start = max(start, self._connected_mono)
        return start + self.cfg.mqtt.image_min_link_s

    def _stats_due(self, mono: float) -> bool:
        return self.cfg.mqtt.stats_interval_s > 0 and mono >= self._next_stats

    def _db_blocked(self, mono: float) -> bool:
        return self._db_retry_at is not None and mono < self._db_retry_at

    def _wait_s(self, outbox: Outbox, now: float, mono: float, next_housekeeping: float) -> float:
        """Seconds until something needs the uplink thread, if no event comes first."""
        wake = next_housekeeping
        if self._db_retry_at is not None:
            wake = min(wake, self._db_retry_at)
        if self._state is LinkState.CONNECTED:
            wake = min(wake, self._last_in + DEAD_FACTOR * self.cfg.mqtt.keepalive_s + 0.01)
            if self.cfg.mqtt.stats_interval_s > 0:
                wake = min(wake, self._next_stats)
            timers: list[float | None] = []
            try:
                if len(self._mid_row) < self._max_inflight():
                    max_p = self._max_priority(mono)
                    timers.append(outbox.next_ready_at(now, max_priority=max_p))
                    if max_p < PRIORITY[Kind.IMAGE]:
                        timers.append(now + (self._images_from() - mono))
                timers.append(outbox.next_receipt_deadline(now))
            except sqlite3.Error as e:
                logger.warning("MQTT: cannot read the outbox: %s", e)
                timers.append(now + DB_RETRY_S)
            for t in timers:
                if t is not None:
                    wake = min(wake, mono + (t - now))
            for tr in self._transfers.values():
                if tr.inflight:
                    wake = min(wake, tr.last_progress + self.cfg.outbox.inflight_timeout_s)
        return max(0.0, wake - mono)

    # -- events -------------------------------------------------------------------------

    def _process(
        self, events: list[_Event], client: mqtt.Client, outbox: Outbox,
        conn: sqlite3.Connection,
    ) -> None:
        failed: dict[int, tuple[str, int]] = {}
        commands: list[tuple[str, bytes]] = []
        mono = self.clock.monotonic()
        for ev in events:
            if isinstance(ev, _Wake):
                self._wake_pending.clear()
            elif isinstance(ev, _Published):
                self._on_ack(ev, mono, failed)
            elif isinstance(ev, _Message):
                self._on_incoming(ev, commands)
            elif isinstance(ev, _Connected):
                self._on_connected(ev, mono)
            elif isinstance(ev, _Disconnected):
                self._count(disconnects=1)
                self._connected_mono = None
                self._clean_since = mono
                if self._state is LinkState.STOPPED:
                    logger.info("MQTT: disconnected (%s)", ev.reason)
                    continue
                self._set_state(LinkState.DISCONNECTED)
                logger.warning("MQTT: disconnected (%s); %d message(s) in flight will be "
                               "resent", ev.reason, len(self._mid_row))
            else:  # _ConnectFailed: paho keeps retrying with its backoff
                # One warning per outage, not one per retry for days on end.
                level = logging.DEBUG if self._connect_warned else logging.WARNING
                self._connect_warned = True
                logger.log(level, "MQTT: cannot connect to %s:%d (%s); retrying",
                           self.cfg.mqtt.host, self.cfg.mqtt.port, ev.reason)
        now = self.clock.wall()
        self._flush(outbox, now, mono)
        for rid, (reason, chunk) in failed.items():
            self._refused(outbox, rid, chunk, reason, now)
        for name, payload in commands:
            self._run_command(client, conn, name, payload)

    def _on_connected(self, ev: _Connected, mono: float) -> None:
        self._connect_warned = False
        self._max_packet = ev.max_packet
        self._receive_max = ev.receive_max
        self._connected_mono = mono
        self._last_in = mono
        self._set_state(LinkState.CONNECTED)
        self._count(connects=1)
        # paho resends what was in flight right now: restart their timeout clocks.
        for t in self._transfers.values():
            t.last_progress = mono
        self._next_stats = mono  # tell the base how we are as soon as we are back
        logger.info("MQTT: connected (session present: %s), %d message(s) in flight",
                    ev.session_present, len(self._mid_row))

    def _on_ack(self, ev: _Published, mono: float, failed: dict[int, tuple[str, int]]) -> None:
        if ev.mid == self._status_mid:
            self._status_acked = True
            return
        entry = self._mid_row.pop(ev.mid, None)
        if entry is None:
            return  # status, stats, a command result, or a message of a row forgotten since
        rid, chunk = entry
        t = self._transfers.get(rid)
        if t is None:
            return
        t.mids.pop(ev.mid, None)
        t.inflight.discard(chunk)
        if ev.failure:
            failed[rid] = (ev.reason, chunk)
            return
        t.last_progress = mono
        if t.pending or t.inflight:
            return
        del self._transfers[rid]
        if self.cfg.mqtt.receipts and t.kind in RECEIPT_KINDS:
            self._to_acked[rid] = t.kind
        else:
            self._to_sent[rid] = t.kind

    def _on_incoming(self, ev: _Message, commands: list[tuple[str, bytes]]) -> None:
        if ev.topic == self._ack_topic:
            ids = _receipt_ids(ev.payload)
            if ids is None:
                logger.warning("MQTT: malformed receipt on %s ignored", ev.topic)
                return
            self._to_receive.update(ids)
        elif ev.topic.startswith(self._cmd_prefix):
            name = ev.topic[len(self._cmd_prefix):]
            if name and not name.endswith("/result") and name != "result":
                commands.append((name, ev.payload))

    def _refused(self, outbox: Outbox, rid: int, chunk: int, reason: str, now: float) -> None:
        """The broker refused a message of row ``rid`` (failure reason code): back off."""
        t = self._forget(rid)
        chunks = None
        if t is not None and t.media:
            chunks = sorted(set(t.remaining()) | {chunk})
        try:
            when = outbox.mark_failed(rid, now, f"broker refused: {reason}", chunks)
        except sqlite3.Error as e:
            logger.error("MQTT: cannot record a refusal of row %d: %s", rid, e)
            return
        self._count(failed=1)
        self._clean_since = self.clock.monotonic()
        if when is None:
            self._count(dropped=1)
        logger.warning("MQTT: row %d refused by the broker (%s); %s", rid, reason,
                       "given up" if when is None else f"retry in {when - now:.1f} s")

    def _flush(self, outbox: Outbox, now: float, mono: float) -> None:
        """Record deliveries, broker acknowledgements and receipts (batched: one fsync each).

        After a database error (a full card) they stay in memory and are retried a second
        later; nothing is resent meanwhile because the rows stay in flight.
        """
        if self._db_blocked(mono) or not (self._to_sent or self._to_acked or self._to_receive):
            return
        acked = 0
        changed: list[tuple[int, str]] = []
        try:
            with transaction(outbox.conn):  # one commit, one fsync for the lot
                if self._to_sent:
                    outbox.mark_sent(list(self._to_sent), now)
                if self._to_acked:
                    acked = outbox.mark_acked(list(self._to_acked), now)
                if self._to_receive:
                    changed = outbox.mark_received(self._to_receive, now)
        except sqlite3.Error as e:
            logger.error("MQTT: cannot record deliveries (%s); retrying in %.0f s", e,
                         DB_RETRY_S)
            self._db_retry_at = mono + DB_RETRY_S
            return
        self._db_retry_at = None
        self._count_sent(self._to_sent.values())
        self._count(acked=acked, receipts=len(changed))
        self._count_sent(kind for _rid, kind in changed)
        self._to_sent.clear()
        self._to_acked.clear()
        self._to_receive.clear()
        for rid, _kind in changed:
            self._forget(rid)

    def _run_command(
        self, client: mqtt.Client, conn: sqlite3.Connection, name: str, payload: bytes
    ) -> None:
        result = self._commands.handle(name, payload, conn)
        self._count(commands=1)
        topic = cmd_result_topic(self.cfg.mqtt.topic_prefix, self.cfg.unit.id, name)
        client.publish(topic, json.dumps(result, separators=(",", ":")).encode(), qos=1)

    def _apply_cfg(self, new: Config) -> None:
        """A ``config/set`` was accepted: use it here and hand it to the daemon."""
        if new.mqtt.stats_interval_s != self.cfg.mqtt.stats_interval_s:
            self._next_stats = self.clock.monotonic()
        self.cfg = new
        if self._on_config is not None:
            self._on_config(new)

    # -- sending ------------------------------------------------------------------------

    def _max_inflight(self) -> int:
        """Messages awaiting PUBACK at once: ours, capped by the broker's Receive Maximum
        (MQTT 5 forbids exceeding it; paho does not enforce it, so we do)."""
        limit = self.cfg.outbox.max_inflight
        if self._receive_max:
            limit = min(limit, self._receive_max)
        return max(1, limit)

    def _message_limit(self) -> int:
        limit = self.cfg.mqtt.max_message_bytes
        if self._max_packet:
            limit = min(limit, self._max_packet)
        return limit

    def _chunk_size(self) -> int:
        size = self._chunk_override or self.cfg.mqtt.chunk_bytes
        return max(256, min(size, self._message_limit() - HEADROOM_BYTES))

    def _pump(self, client: mqtt.Client, outbox: Outbox, now: float, mono: float) -> None:
        """Start due rows and feed chunks, most urgent first, up to :meth:`_max_inflight`."""
        free = self._max_inflight() - len(self._mid_row)
        if free <= 0:
            return
        try:
            rows = outbox.due(now, free, max_priority=self._max_priority(mono))
        except sqlite3.Error as e:
            logger.error("MQTT: cannot read the outbox: %s", e)
            self._db_retry_at = mono + DB_RETRY_S
            return
        image_busy = any(t.kind == Kind.IMAGE for t in self._transfers.values())
        starting: list[_Transfer] = []
        for row in rows:
            if row.kind == Kind.IMAGE:
                if image_busy:
                    continue
                image_busy = True
            t = self._start(outbox, row, now, mono)
            if t is not None:
                starting.append(t)
        if starting:
            try:
                outbox.mark_inflight_many([t.row_id for t in starting], now)
            except sqlite3.Error as e:
                logger.error("MQTT: cannot mark rows in flight: %s", e)
                self._db_retry_at = mono + DB_RETRY_S
                return
            for t in starting:
                self._transfers[t.row_id] = t
            self._count(published=len(starting))
        window = self.cfg.mqtt.media_window
        for t in sorted(self._transfers.values(), key=lambda t: (t.priority, t.row_id)):
            while free > 0 and t.pending and (not t.media or len(t.inflight) < window):
                if not self._send_chunk(client, outbox, t, now):
                    break
                free -= 1
            if free <= 0:
                break

    def _start(self, outbox: Outbox, row: OutboxRow, now: float, mono: float) -> _Transfer | None:
        """Prepare a row's messages; a row that can never be sent becomes dead (logged)."""
        limit = self._message_limit()
        if row.media_path is None:
            assert row.payload is not None
            if len(row.payload) + len(row.topic) + HEADROOM_BYTES > limit:
                self._give_up(outbox, row, now, f"message of {len(row.payload)} bytes is "
                              f"larger than the broker accepts ({limit} bytes)")
                return None
            return _Transfer(row.id, row.kind, row.priority, row.event_id, row.topic,
                             row.payload, max(1, len(row.payload)), 1, False, "",
                             deque([0]), mono)
        try:
            data = (self._root / row.media_path).read_bytes()
        except OSError as e:
            self._give_up(outbox, row, now, f"media unreadable: {e}")
            return None
        chunk = self._chunk_size()
        of = max(1, math.ceil(len(data) / chunk))
        wanted = [c for c in (row.chunks or []) if 0 <= c < of] or list(range(of))
        return _Transfer(row.id, row.kind, row.priority, row.event_id, row.topic, data, chunk,
                         of, True, hashlib.sha256(data).hexdigest(), deque(wanted), mono)

    def _give_up(self, outbox: Outbox, row: OutboxRow, now: float, why: str) -> None:
        try:
            outbox.mark_dead(row.id, now, why)
        except sqlite3.Error as e:
            logger.error("MQTT: cannot mark row %d dead: %s", row.id, e)
            return
        self._count(dropped=1)
        logger.error("MQTT: row %d (%s %s) dropped: %s", row.id, row.kind, row.event_id or "",
                     why)

    def _send_chunk(self, client: mqtt.Client, outbox: Outbox, t: _Transfer, now: float) -> bool:
        i = t.pending.popleft()
        topic, payload, props = t.message(i)
        error = ""
        try:
            info = client.publish(topic, payload, qos=1, properties=props)
        except ValueError as e:  # payload too large, bad topic
            error = str(e)
        else:
            # NO_CONN: the connection dropped a moment ago; paho queued the message and sends
            # it after reconnecting, so it counts as in flight.
            if info.rc not in _OK_RC:
                error = mqtt.error_string(info.rc)
        if not error:
            t.inflight.add(i)
            t.mids[info.mid] = i
            self._mid_row[info.mid] = (t.row_id, i)
            return True
        t.pending.appendleft(i)
        self._forget(t.row_id)
        try:
            outbox.mark_failed(t.row_id, now, f"publish failed: {error}",
                               t.remaining() if t.media else None)
        except sqlite3.Error as e:
            logger.error("MQTT: cannot record a failed publish of row %d: %s", t.row_id, e)
        self._count(failed=1)
        logger.warning("MQTT: row %d not published: %s", t.row_id, error)
        return False

    def _forget(self, rid: int) -> _Transfer | None:
        """Drop a row's transfer; late PUBACKs for its messages are then ignored."""
        t = self._transfers.pop(rid, None)
        if t is not None:
            for mid in t.mids:
                self._mid_row.pop(mid, None)
        return t

    def _check_timeouts(self, outbox: Outbox, now: float, mono: float) -> None:
        timeout = self.cfg.outbox.inflight_timeout_s
        for t in list(self._transfers.values()):
            if not t.inflight or mono - t.last_progress < timeout:
                continue
            self._forget(t.row_id)
            self._clean_since = mono
            try:
                state = outbox.requeue(t.row_id, now, "no acknowledgement in time",
                                       t.remaining() if t.media else None)
            except sqlite3.Error as e:
                logger.error("MQTT: cannot requeue row %d: %s", t.row_id, e)
                continue
            self._count(requeued=1, dropped=1 if state == "dead" else 0)
            logger.warning("MQTT: row %d (%s) unacknowledged after %.0f s: %s", t.row_id,
                           t.kind, timeout, "given up" if state == "dead" else "sending again")

    def _requeue_unreceipted(self, outbox: Outbox, now: float, mono: float) -> None:
        try:
            deadline = outbox.next_receipt_deadline(now)
            if deadline is not None and deadline <= now:
                self._count(requeued=outbox.requeue_unreceipted(now))
        except sqlite3.Error as e:
            logger.error("MQTT: cannot requeue unreceipted events: %s", e)
            self._db_retry_at = mono + DB_RETRY_S

    def _check_alive(self, client: mqtt.Client, mono: float) -> None:
        """Drop a connection that has been silent for 1.5 × keepalive (see module docstring)."""
        keepalive = self.cfg.mqtt.keepalive_s
        silent = mono - self._last_in
        if silent <= DEAD_FACTOR * keepalive:
            return
        sock = client.socket()
        if sock is None:
            return
        logger.warning("MQTT: nothing from the broker for %.1f s (keepalive %d s): connection "
                       "dead, reconnecting", silent, keepalive)
        try:
            # shutdown, not close: paho's thread is in select() on this socket; it sees EOF,
            # reports the loss and reconnects with its backoff. The base-class method also
            # works on an SSLSocket without tearing down its TLS state under paho's feet.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
        except OSError as e:
            logger.debug("MQTT: shutdown of a dead socket: %s", e)
            return
        self._last_in = mono
        self._clean_since = mono
        self._connected_mono = None
        self._count(dead_connections=1)
        self._set_state(LinkState.DISCONNECTED)

    def _housekeeping(self, outbox: Outbox, now: float, purge: bool) -> None:
        """Expire rows, requeue rows in flight that the link lost track of, purge old rows."""
        try:
            outbox.expire(now)
            pending = self._transfers.keys() | self._to_sent.keys() | self._to_acked.keys()
            for row in outbox.ls(1000, states=["inflight"]):
                if row.id not in pending:
                    # Only after a database error left a row in flight without a transfer.
                    outbox.requeue(row.id, now, "lost track of it")
            if purge:
                outbox.purge(older_than_s=SENT_RETENTION_S, now=now)
        except sqlite3.Error as e:
            logger.error("MQTT: housekeeping failed: %s", e)

    # -- stats --------------------------------------------------------------------------

    def stats_payload(self, outbox: Outbox | None = None) -> dict[str, Any]:
        """The body of the stats message (ARCHITECTURE §6), plus ``disk_low``."""
        free = self._guard.free_bytes()
        s = self.stats()
        depth: dict[str, int] | None = None
        if outbox is not None:
            try:
                depth = outbox.depth()
            except sqlite3.Error as e:
                logger.warning("MQTT: outbox depth unavailable for stats: %s", e)
        body: dict[str, Any] = {
            "unit": self.cfg.unit.id,
            "ts": rfc3339(self.clock.wall()),
            "version": __version__,
            "uptime_s": round(self.clock.monotonic() - self._started_mono, 1),
            "battery_v": None,
            "temp_c": None,
            "disk_free_bytes": free,
            "disk_low": free < self._guard.min_free_bytes,
            "outbox": depth,
            "links": {"mqtt": {
                "state": s.state, "connects": s.connects, "disconnects": s.disconnects,
                "dead_connections": s.dead_connections, "sent": s.sent, "acked": s.acked,
                "receipts": s.receipts, "failed": s.failed, "requeued": s.requeued,
                "dropped": s.dropped, "signal": None,
            }},
        }
        if self._stats_source is not None:
            body.update(self._stats_source())
        return body

    def _publish_stats(self, client: mqtt.Client, outbox: Outbox, mono: float) -> None:
        payload = json.dumps(self.stats_payload(outbox), separators=(",", ":")).encode()
        client.publish(stats_topic(self.cfg.mqtt.topic_prefix, self.cfg.unit.id), payload,
                       qos=1, retain=True)
        self._count(stats_published=1)
        self._next_stats = mono + max(1.0, self.cfg.mqtt.stats_interval_s)

    # -- stop ---------------------------------------------------------------------------

    def _shutdown(self, client: mqtt.Client, outbox: Outbox, conn: sqlite3.Connection) -> None:
        """Publish ``offline``, wait briefly for it and pending PUBACKs, disconnect cleanly."""
        if self._state is LinkState.CONNECTED:
            self._status_acked = False
            info = client.publish(self._status_topic, _status_payload("offline", self.clock),
                                  qos=1, retain=True)
            self._status_mid = info.mid
            deadline = self.clock.monotonic() + STOP_FLUSH_S
            while not self._status_acked:
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    logger.warning("MQTT: offline status not acknowledged in %.0f s",
                                   STOP_FLUSH_S)
                    break
                events: list[_Event] = []
                try:
                    events.append(self._events.get(timeout=left))
                except queue.Empty:
                    continue
                self._drain_into(events)
                self._process(events, client, outbox, conn)
        self._set_state(LinkState.STOPPED)
        client.disconnect()
        client.loop_stop()
        # PUBACKs that arrived while stopping are real confirmations: record them.
        events = []
        self._drain_into(events)
        self._db_retry_at = None
        self._process([e for e in events if not isinstance(e, _Message)], client, outbox, conn)
        self._status_mid = None
        if self._mid_row:
            logger.info("MQTT: stopped with %d message(s) unacknowledged; they are resent "
                        "at the next start", len(self._mid_row))

    # -- small helpers ------------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        with self._lock:
            self._state = state

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    def _count_sent(self, kinds: Any) -> None:
        with self._lock:
            for kind in kinds:
                self._stats.sent += 1
                self._stats.sent_by_kind[kind] = self._stats.sent_by_kind.get(kind, 0) + 1


def _receipt_ids(payload: bytes) -> list[str] | None:
    """The event ids of a receipt ``{"ids": [...]}``; None if malformed."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        return None
    return [str(i) for i in ids]


__all__ = ["LinkState", "LinkStats", "MqttLink", "check_credentials", "new_properties",
           "read_password_file"]
