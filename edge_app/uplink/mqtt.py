"""The MQTT link: drains the durable outbox to a broker over MQTT 5 (paho-mqtt 2.x).

Threads and ownership:

* **paho's network thread** (``loop_start``) runs the callbacks. They only put small event
  objects on ``self._events``; an exception there would kill paho's loop, and a database write
  there would stall the network. (The one exception is the retained ``online`` status, which
  ``on_connect`` publishes itself so that it is the first thing the broker hears from us.)
* **the uplink thread** (:meth:`MqttLink.run`) owns its own SQLite connection and everything
  else: it takes due rows, publishes them, maps each message id (``mid``) to its outbox row,
  and marks the row ``sent`` only when ``on_publish`` reports a PUBACK with a success reason
  code. It blocks on the event queue with a timeout computed from the outbox (next retry
  time, oldest in-flight message), so an idle link uses no CPU.

Nothing is lost when the link drops:

* a row stays ``inflight`` across a disconnect: paho keeps unacknowledged QoS 1 messages in
  memory and resends them after reconnecting (``clean_start=False`` plus a session expiry, so
  the broker keeps our session too);
* a row in flight longer than ``outbox.inflight_timeout_s`` is requeued and sent again
  (at-least-once; receivers dedupe on the event id);
* if the process dies, :meth:`Outbox.recover` puts in-flight rows back to ready at the next
  start.

Status: the Last Will is a retained ``{"state": "lost"}`` on ``<prefix>/<unit>/status``;
``online`` is published (retained) on every successful connect and ``offline`` on a clean stop,
just before a normal DISCONNECT (which tells the broker not to send the will).

Media rows are published in chunks on ``<prefix>/<unit>/media/<media_id>/<chunk>`` with user
properties ``event``, ``chunk``, ``of`` and ``sha256``; the row is sent when every chunk is
acknowledged.
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
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_app import __version__
from edge_app.clock import Clock, SystemClock, rfc3339
from edge_app.config import Config
from edge_app.errors import ConfigError
from edge_app.store.db import open_db
from edge_app.store.outbox import Kind, Outbox, OutboxRow
from edge_app.uplink.topics import status_topic

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
SENT_RETENTION_S = 7 * 86400.0
HOUSEKEEPING_S = 3600.0
STOP_FLUSH_S = 2.0

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
class _Wake:
    pass


_Event = _Connected | _ConnectFailed | _Disconnected | _Published | _Wake
_WAKE = _Wake()


@dataclass
class LinkStats:
    """Counters of the link (a snapshot; see :meth:`MqttLink.stats`).

    Attributes:
        state: connection state name.
        connects: successful connects (CONNACK success).
        disconnects: connections lost or closed.
        published: outbox rows handed to paho (each attempt counts).
        sent: rows confirmed by the broker.
        sent_by_kind: ``sent`` per outbox kind.
        failed: attempts that failed (error reason code, publish error).
        requeued: rows requeued after the in-flight timeout.
    """

    state: str = LinkState.STOPPED.value
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    sent: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in Kind})
    failed: int = 0
    requeued: int = 0


def new_properties(packet_type: int) -> Properties:
    """MQTT 5 properties for a packet type (paho's constructor is untyped)."""
    props: Properties = Properties(packet_type)  # type: ignore[no-untyped-call]
    return props


def _status_payload(state: str, clock: Clock) -> bytes:
    body = {"state": state, "ts": rfc3339(clock.wall()), "version": __version__}
    return json.dumps(body, separators=(",", ":")).encode()


class MqttLink:
    """Drains the outbox over MQTT; :meth:`run` is the uplink thread's body.

    Args:
        cfg: unit id, ``mqtt``, ``outbox`` and ``storage.root`` (media rows are relative to it).
        db: the trap database (the link opens its own connection on its thread).
        clock: wall time for the outbox and status timestamps.
        rng: random source of the retry jitter.
        chunk_bytes: media chunk size.

    Raises:
        ConfigError: TLS is on and a CA/cert/key file named in the config does not exist.
    """

    def __init__(
        self,
        cfg: Config,
        db: str | os.PathLike[str],
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.cfg = cfg
        self.db_path = Path(db)
        self.clock: Clock = clock or SystemClock()
        self._rng = rng
        self._chunk = max(1, chunk_bytes)
        self._root = Path(cfg.storage.root)
        self._status_topic = status_topic(cfg.mqtt.topic_prefix, cfg.unit.id)
        self._events: queue.Queue[_Event] = queue.Queue()
        self._wake_pending = threading.Event()
        self._lock = threading.Lock()  # guards _stats for readers on other threads
        self._stats = LinkStats()
        self._state = LinkState.STOPPED
        # Owned by the uplink thread:
        self._mid_row: dict[int, int] = {}
        self._row_mids: dict[int, set[int]] = {}
        self._row_kind: dict[int, str] = {}
        self._status_mid: int | None = None
        self._status_acked = False
        self._connect_warned = False
        if cfg.mqtt.enabled and cfg.mqtt.tls:
            self._check_tls_files()  # fail at start-up (exit 2), not in a restart loop

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
        """Alerts confirmed by the broker (for the demo summary)."""
        with self._lock:
            return self._stats.sent_by_kind[Kind.ALERT.value]

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        with self._lock:
            s = self._stats
            return LinkStats(
                state=self._state.value, connects=s.connects, disconnects=s.disconnects,
                published=s.published, sent=s.sent, sent_by_kind=dict(s.sent_by_kind),
                failed=s.failed, requeued=s.requeued,
            )

    # -- the paho client ----------------------------------------------------------------

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
        client.max_inflight_messages_set(max(20, self.cfg.outbox.max_inflight))
        client.reconnect_delay_set(
            max(1, math.ceil(m.reconnect_min_s)), max(1, math.ceil(m.reconnect_max_s))
        )
        # The will's ts is when this client was set up (paho sends the will with CONNECT);
        # the moment of loss is when the broker publishes it.
        client.will_set(self._status_topic, _status_payload("lost", self.clock), qos=1,
                        retain=True)
        if m.tls:
            self._set_tls(client)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _check_tls_files(self) -> None:
        m = self.cfg.mqtt
        for key, value in (("mqtt.ca_file", m.ca_file), ("mqtt.cert_file", m.cert_file),
                           ("mqtt.key_file", m.key_file)):
            if value and not Path(value).is_file():
                raise ConfigError(key, f"file not found: {value}")

    def _set_tls(self, client: mqtt.Client) -> None:
        m = self.cfg.mqtt
        self._check_tls_files()
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

    # Callbacks: paho's thread. Only queue puts and the online publish.

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
        self._events.put_nowait(_Connected(bool(flags.session_present)))

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
            self._mid_row.clear()
            self._row_mids.clear()
            self._row_kind.clear()
            client = self._make_client()
            self._set_state(LinkState.CONNECTING)
            m = self.cfg.mqtt
            props = new_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            logger.info("MQTT: connecting to %s:%d as %s (tls=%s)", m.host, m.port,
                        self.cfg.mqtt_client_id, m.tls)
            client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                 properties=props)
            client.loop_start()
            try:
                self._loop(stop, client, outbox)
            finally:
                self._shutdown(client, outbox)
        finally:
            conn.close()

    def _loop(self, stop: threading.Event, client: mqtt.Client, outbox: Outbox) -> None:
        timeout_s = self.cfg.outbox.inflight_timeout_s
        next_housekeeping = self.clock.wall()
        while not stop.is_set():
            now = self.clock.wall()
            if now >= next_housekeeping:
                outbox.purge(older_than_s=SENT_RETENTION_S, now=now)
                next_housekeeping = now + HOUSEKEEPING_S
            if self._state is LinkState.CONNECTED:
                # Only while connected: during an outage paho holds the messages and resends
                # them on reconnect, and requeueing them too would send every one twice.
                for rid in outbox.requeue_stale_inflight(now, timeout_s):
                    self._forget(rid)
                    self._count(requeued=1)
                self._publish_due(client, outbox, now)
            wait_s = self._wait_s(outbox, now, next_housekeeping)
            events: list[_Event] = []
            with contextlib.suppress(queue.Empty):
                events.append(self._events.get(timeout=wait_s))
            self._drain_into(events)
            self._process(events, outbox)

    def _drain_into(self, events: list[_Event]) -> None:
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return

    def _wait_s(self, outbox: Outbox, now: float, next_housekeeping: float) -> float:
        """Seconds until something needs the uplink thread, if no event comes first."""
        wake_at = next_housekeeping
        if self._state is LinkState.CONNECTED:
            if len(self._row_mids) < self.cfg.outbox.max_inflight:
                ready = outbox.next_ready_at(now)
                if ready is not None:
                    wake_at = min(wake_at, ready)
            oldest = outbox.oldest_inflight_since()
            if oldest is not None:
                wake_at = min(wake_at, oldest + self.cfg.outbox.inflight_timeout_s)
        return max(0.0, wake_at - now)

    def _process(self, events: list[_Event], outbox: Outbox) -> None:
        acked: list[int] = []
        failed: dict[int, str] = {}
        for ev in events:
            if isinstance(ev, _Wake):
                self._wake_pending.clear()
            elif isinstance(ev, _Published):
                self._on_ack(ev, acked, failed)
            elif isinstance(ev, _Connected):
                self._connect_warned = False
                self._set_state(LinkState.CONNECTED)
                self._count(connects=1)
                # paho resends what was in flight right now: restart their timeout clocks.
                outbox.restart_inflight(self.clock.wall())
                logger.info("MQTT: connected (session present: %s), %d message(s) in flight",
                            ev.session_present, len(self._row_mids))
            elif isinstance(ev, _Disconnected):
                self._count(disconnects=1)
                if self._state is LinkState.STOPPED:
                    logger.info("MQTT: disconnected (%s)", ev.reason)
                    continue
                self._set_state(LinkState.DISCONNECTED)
                logger.warning("MQTT: disconnected (%s); %d message(s) in flight will be "
                               "resent", ev.reason, len(self._row_mids))
            else:  # _ConnectFailed: paho keeps retrying with its backoff
                # One warning per outage, not one per retry for days on end.
                level = logging.DEBUG if self._connect_warned else logging.WARNING
                self._connect_warned = True
                logger.log(level, "MQTT: cannot connect to %s:%d (%s); retrying",
                           self.cfg.mqtt.host, self.cfg.mqtt.port, ev.reason)
        now = self.clock.wall()
        if acked:
            outbox.mark_sent(acked, now)
            by_kind: dict[str, int] = {}
            for rid in acked:
                kind = self._row_kind.pop(rid, None)
                if kind is not None:
                    by_kind[kind] = by_kind.get(kind, 0) + 1
            with self._lock:
                self._stats.sent += len(acked)
                for kind, n in by_kind.items():
                    self._stats.sent_by_kind[kind] = self._stats.sent_by_kind.get(kind, 0) + n
        for rid, reason in failed.items():
            when = outbox.mark_failed(rid, now, f"broker refused: {reason}")
            self._count(failed=1)
            logger.warning("MQTT: row %d refused by the broker (%s); retry in %.1f s", rid,
                           reason, (when or now) - now)

    def _on_ack(self, ev: _Published, acked: list[int], failed: dict[int, str]) -> None:
        if ev.mid == self._status_mid:
            self._status_acked = True
            return
        rid = self._mid_row.pop(ev.mid, None)
        if rid is None:
            return  # the online status, or a message of a row requeued since
        if ev.failure:
            failed[rid] = ev.reason
            self._forget(rid)
            return
        mids = self._row_mids.get(rid)
        if mids is None:
            return
        mids.discard(ev.mid)
        if not mids:
            del self._row_mids[rid]
            acked.append(rid)

    def _forget(self, rid: int) -> None:
        """Drop the message ids of a row; late PUBACKs for them are then ignored."""
        for mid in self._row_mids.pop(rid, set()):
            self._mid_row.pop(mid, None)
        self._row_kind.pop(rid, None)

    def _publish_due(self, client: mqtt.Client, outbox: Outbox, now: float) -> None:
        free = self.cfg.outbox.max_inflight - len(self._row_mids)
        if free <= 0:
            return
        outbox.expire(now)
        for row in outbox.due(now, free):
            self._publish_row(client, outbox, row, now)

    def _messages(self, row: OutboxRow) -> list[tuple[str, bytes, Properties | None]]:
        """The MQTT messages of a row: its payload, or the chunks of its media file.

        Raises:
            OSError: the media file cannot be read.
        """
        if row.media_path is None:
            assert row.payload is not None
            return [(row.topic, row.payload, None)]
        data = (self._root / row.media_path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        chunks = [data[i:i + self._chunk] for i in range(0, len(data), self._chunk)] or [b""]
        out: list[tuple[str, bytes, Properties | None]] = []
        for i, chunk in enumerate(chunks):
            props = new_properties(PacketTypes.PUBLISH)
            props.UserProperty = [("event", row.event_id or ""), ("chunk", str(i)),
                                  ("of", str(len(chunks))), ("sha256", digest)]
            out.append((f"{row.topic}/{i}", chunk, props))
        return out

    def _publish_row(
        self, client: mqtt.Client, outbox: Outbox, row: OutboxRow, now: float
    ) -> None:
        try:
            messages = self._messages(row)
        except OSError as e:
            outbox.mark_dead(row.id, now, f"media unreadable: {e}")
            logger.error("MQTT: row %d (%s) dropped: media unreadable: %s", row.id, row.kind, e)
            return
        outbox.mark_inflight(row.id, now)
        mids: set[int] = set()
        self._row_mids[row.id] = mids
        self._row_kind[row.id] = row.kind
        error = ""
        for topic, payload, props in messages:
            try:
                info = client.publish(topic, payload, qos=1, properties=props)
            except ValueError as e:  # payload too large, bad topic
                error = str(e)
                break
            # NO_CONN: the connection dropped a moment ago; paho queued the message and sends
            # it after reconnecting, so it counts as in flight.
            if info.rc not in _OK_RC:
                error = mqtt.error_string(info.rc)
                break
            mids.add(info.mid)
            self._mid_row[info.mid] = row.id
        self._count(published=1)
        if error:
            self._forget(row.id)
            outbox.mark_failed(row.id, now, f"publish failed: {error}")
            self._count(failed=1)
            logger.warning("MQTT: row %d not published: %s", row.id, error)

    def _shutdown(self, client: mqtt.Client, outbox: Outbox) -> None:
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
                self._process(events, outbox)
        self._set_state(LinkState.STOPPED)
        client.disconnect()
        client.loop_stop()
        # PUBACKs that arrived while stopping are real confirmations: record them.
        events = []
        self._drain_into(events)
        self._process(events, outbox)
        self._status_mid = None
        if self._row_mids:
            logger.info("MQTT: stopped with %d message(s) unacknowledged; they are resent "
                        "at the next start", len(self._row_mids))

    # -- small helpers ------------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        with self._lock:
            self._state = state

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)
