"""The MQTT link: drains the durable outbox to a broker over MQTT 5 (paho-mqtt 2.x).

The adapter around three parts: :mod:`~edge_app.trap.uplink.mqtt_session` (the paho client:
connection, TLS, will, subscriptions, reconnect backoff), :mod:`~edge_app.trap.uplink.mqtt_policy`
(the pure send policy: what starts, what is in flight, what a PUBACK means) and
:mod:`~edge_app.trap.uplink.mqtt_inbound` (what the link receives, behind the guarded door of
:mod:`~edge_app.trap.uplink.mqtt_door`). Rows are transport-neutral; their topics and chunks
are rendered at send time (:mod:`~edge_app.trap.uplink.mqtt_wire`).

Threads and ownership:

* **paho's network thread** (``loop_start``) runs the callbacks, which only queue small events
  (see :mod:`~edge_app.trap.uplink.mqtt_session`).
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
one keepalive) and drops the socket after 1.5 × keepalive of silence; paho then reconnects,
waiting the project's jittered backoff (``mqtt.reconnect_min_s`` … ``reconnect_max_s``).

Received messages pass the door: a receipt that is not a small, shallow ``{"ids": [...]}`` is
refused, counted per kind (``links.mqtt.refusals`` in the stats message) and logged with a
throttle — never raised into the uplink loop — and still acknowledged. A message found retained
on the receipt or command topics is cleared from the broker, so it cannot come back.

With an LTE modem, the cellular stage tells the link when the bearer comes up or goes down
(:meth:`MqttLink.route`: connect at once, or stop spending reconnect attempts; see
:mod:`~edge_app.trap.uplink.mqtt_session`), reads the bytes its sockets carried for the data
plan (:meth:`MqttLink.take_bytes`, :mod:`~edge_app.trap.uplink.mqtt_bytes`), and gates full
images (``image_gate``; a station's ``images/send`` passes it once).

Expiry, purging and retention of rows are the store's housekeeping
(:mod:`edge_app.trap.store.upkeep`), whatever links are on.

Status: the Last Will is a retained ``{"state": "lost"}`` on ``<prefix>/<unit>/status``;
``online`` is published (retained) on every successful connect and ``offline`` on a clean stop,
just before a normal DISCONNECT (which tells the broker not to send the will). Health goes to
``<prefix>/<unit>/stats`` (retained) every ``mqtt.stats_interval_s`` and at each connect. Stats,
status and command results are published directly, not through the outbox: they are replaced
by the next one, and they must work when the card is full.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import Config
from edge_app.core.mqtt_common import new_properties, read_password_file
from edge_app.core.topics import stats_topic
from edge_app.trap.packs.remote import RemotePacks
from edge_app.trap.settings import Settings
from edge_app.trap.store.db import open_db
from edge_app.trap.store.outbox import Kind, Link, Outbox
from edge_app.trap.store.receipts import Receipts
from edge_app.trap.store.retention import DiskGuard
from edge_app.trap.uplink.counters import Counters
from edge_app.trap.uplink.mqtt_bytes import SocketBytes
from edge_app.trap.uplink.mqtt_door import CommandCall
from edge_app.trap.uplink.mqtt_inbound import Inbound
from edge_app.trap.uplink.mqtt_policy import Refusal, SendPolicy
from edge_app.trap.uplink.mqtt_rows import DB_RETRY_S, ImageGate, MqttRows
from edge_app.trap.uplink.mqtt_session import (
    WAKE,
    Connected,
    ConnectFailed,
    Disconnected,
    Event,
    Message,
    Published,
    Route,
    Session,
    Wake,
    check_credentials,
    status_payload,
)
from edge_app.trap.uplink.mqtt_stats import LinkState, LinkStats, StatsReport

logger = logging.getLogger(__name__)

HOUSEKEEPING_S = 60.0
STOP_FLUSH_S = 2.0


class MqttLink:
    """Drains the outbox over MQTT; :meth:`run` is the uplink thread's body.

    Args:
        cfg: unit id, ``mqtt``, ``outbox`` and ``storage.root`` (media rows are relative to it).
        db: the trap database (the link opens its own connection on its thread).
        clock: wall time for the outbox and status timestamps, monotonic time for timers.
        rng: random source of the retry and reconnect jitter.
        chunk_bytes: media chunk size (default ``mqtt.chunk_bytes``).
        stats_source: extra fields for the stats message (the daemon's counters, models).
        on_config: called with the new configuration after any accepted settings change.
        settings: the trap's settings service, the link's source of the current config
            (default: one of its own over ``db``).
        image_gate: the data plan's word on each full image, ``(size, wall) → bool`` (the
            cellular stage's; None: no plan). Alerts, thumbnails and status never ask.

    Raises:
        ConfigError: TLS is on and a CA/cert/key file named in the config does not exist, or
            the password file is missing, empty or readable by other users.
    """

    def __init__(self, cfg: Config, db: str | os.PathLike[str], clock: Clock | None = None, *,
                 rng: random.Random | None = None, chunk_bytes: int | None = None,
                 stats_source: Callable[[], dict[str, Any]] | None = None,
                 on_config: Callable[[Config], None] | None = None,
                 settings: Settings | None = None, packs: RemotePacks | None = None,
                 image_gate: ImageGate | None = None) -> None:
        self.db_path = Path(db)
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or Settings(cfg, self.clock, self.db_path)
        cfg = self.cfg
        self._rng = rng or random.Random()
        self._chunk_override = chunk_bytes
        self._image_gate = image_gate
        # When a row's message was last published or acknowledged, or a message came in: the
        # cellular stage's idle timer. One float, written here, read there.
        self.activity_mono: float | None = None
        self.socket_bytes = SocketBytes()  # paho's sockets, read by the cellular stage
        self._on_config = on_config
        self.report = StatsReport(self.clock, DiskGuard.from_config(cfg), stats_source)
        self.inbound = Inbound(cfg, self.settings, self.clock, packs,
                               lambda event_id: self.rows.let_through(event_id), self._count)
        self.receipt_refusals = self.inbound.receipt_refusals
        self.door = self.inbound.door
        self._events: queue.Queue[Event] = queue.Queue()
        self._wake_pending = threading.Event()
        self.beat: Callable[[], None] = lambda: None  # the watchdog's, set by the daemon
        self.counters = Counters(LinkStats())  # written here, read by other threads
        self._state = LinkState.STOPPED
        self._started_mono = self.clock.monotonic()
        # Owned by the uplink thread:
        self.policy = SendPolicy(cfg.mqtt, cfg.outbox, self._started_mono)
        self._session: Session | None = None
        self._status_mid: int | None = None
        self._status_acked = self._connect_warned = False
        self.settings.subscribe(self._apply_cfg)
        # Fail at start-up (exit 2, naming the key), not in a restart loop.
        self._password = check_credentials(cfg)

    @property
    def cfg(self) -> Config:
        """The current config (the settings service's)."""
        return self.settings.config

    @property
    def pack_activity_mono(self) -> float | None:
        """When a model pack last moved (the power stage keeps the Pi up through a download
        in gated mode)."""
        return self.inbound.pack_activity_mono

    @property
    def username(self) -> str:
        """The MQTT user name: ``mqtt.username``, else the unit id (the ACL's ``%u``)."""
        return self.cfg.mqtt.username or self.cfg.unit.id

    # -- API for other threads ----------------------------------------------------------

    def wake(self) -> None:
        """Tell the uplink thread there is new work (or a stop); cheap and non-blocking."""
        if not self._wake_pending.is_set():
            self._wake_pending.set()
            self._events.put_nowait(WAKE)

    def route(self, up: bool | None) -> None:
        """The cellular bearer came up or went down (the cellular stage's hook; any thread,
        never blocks): up, the link connects now instead of waiting out its backoff; down,
        it stops spending reconnect attempts (see :mod:`.mqtt_session`); None (no modem to
        say), its ordinary backoff."""
        self._events.put_nowait(Route(up))

    @property
    def reconnects_held(self) -> bool:
        """Whether reconnects wait for the bearer (the cellular stage said it is down)."""
        return self._session is not None and self._session.held

    @property
    def state(self) -> LinkState:
        """The connection state as last seen by the uplink thread."""
        return self._state

    @property
    def sent_count(self) -> int:
        """Alerts delivered (for the demo summary)."""
        return self.counters.read(lambda s: s.sent_by_kind[Kind.ALERT.value])

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        snap = self.counters.snapshot()
        snap.state = self._state.value
        return snap

    def take_bytes(self) -> int:
        """Bytes the link's sockets carried since the last call (any thread; the data plan's
        count where the modem has none, :mod:`.mqtt_bytes`)."""
        return self.socket_bytes.take()

    def in_flight(self) -> int:
        """Messages of rows awaiting a PUBACK (any thread: a torn read is harmless)."""
        return len(self.policy.mid_row)

    def images_held(self) -> bool:
        """Whether the data plan holds full images back now."""
        rows = getattr(self, "rows", None)
        return bool(rows is not None and rows.images_held)

    def image_requests(self) -> int:
        """Full images the station asked for that have not started yet (``images/send``)."""
        rows = getattr(self, "rows", None)
        return 0 if rows is None else len(rows.passes)

    def refusals(self) -> dict[str, dict[str, int]]:
        """What the link's doors refused, per door and kind."""
        return self.inbound.refusals()

    # -- the uplink thread --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Drain the outbox until ``stop`` is set (call :meth:`wake` after setting it).

        Raises:
            ConfigError: TLS files missing or unusable.
            StorageError: the database cannot be opened.
        """
        conn = open_db(self.db_path)
        try:
            cfg = self.cfg
            outbox = Outbox(conn, self.clock, cfg.outbox, self._rng)
            # A previous run of this thread (or process) may have left rows in flight whose
            # messages died with its paho client: they go out again.
            outbox.recover(link=Link.MQTT)
            self.policy.reset()
            self.rows = MqttRows(outbox, Receipts(conn, self.clock, cfg.outbox), self.policy,
                                 lambda: self.cfg, self._count, self._count_sent,
                                 self._chunk_override, self._image_gate)
            session = self._session = Session(cfg, self.clock, self._events, self._password,
                                              cfg.outbox.max_inflight, self._rng,
                                              self.socket_bytes)
            self._set_state(LinkState.CONNECTING)
            m = cfg.mqtt
            logger.info("MQTT: connecting to %s:%d as %s (tls=%s, receipts=%s)", m.host, m.port,
                        cfg.mqtt_client_id, m.tls, m.receipts)
            session.start()
            try:
                self._loop(stop, session, outbox, conn)
            finally:
                self._shutdown(session, outbox, conn)
        finally:
            conn.close()

    def _loop(self, stop: threading.Event, s: Session, outbox: Outbox,
              conn: sqlite3.Connection) -> None:
        next_housekeeping = self.clock.monotonic()
        while not stop.is_set():
            self.beat()
            now, mono = self.clock.wall(), self.clock.monotonic()
            if mono >= next_housekeeping:
                self.rows.housekeeping(now)
                next_housekeeping = mono + HOUSEKEEPING_S
            self.rows.flush(now, mono)
            if self._state is LinkState.CONNECTED and s.drop_dead(mono):
                self.policy.disconnected(mono)
                self._count(dead_connections=1)
                self._set_state(LinkState.DISCONNECTED)
            if self._state is LinkState.CONNECTED and not self.rows.blocked(mono):
                # Only while connected: during an outage paho holds the messages and resends
                # them on reconnect, and requeueing them too would send every one twice.
                self.rows.check_timeouts(now, mono)
                self.rows.requeue_unreceipted(now, mono)
                self.rows.pump(lambda t, b, p: s.publish(t, b, properties=p), now, mono)
            interval = self.cfg.mqtt.stats_interval_s
            if self._state is LinkState.CONNECTED and self.report.due(mono, interval):
                body = self.report.body(self.cfg.unit.id, outbox, self.stats(), self.refusals())
                s.publish(stats_topic(self.cfg.mqtt.topic_prefix, self.cfg.unit.id),
                          json.dumps(body, separators=(",", ":")).encode(), retain=True)
                self._count(stats_published=1)
                self.report.sent(mono, interval)
            events: list[Event] = []
            with contextlib.suppress(queue.Empty):
                events.append(self._events.get(timeout=self._wait_s(s, now, mono,
                                                                    next_housekeeping)))
            self._process(self._drain_into(events), s, outbox, conn)

    def _drain_into(self, events: list[Event]) -> list[Event]:
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _wait_s(self, s: Session, now: float, mono: float, next_housekeeping: float) -> float:
        """Seconds until something needs the uplink thread, if no event comes first."""
        wake = min(next_housekeeping, self.rows.retry_at or next_housekeeping)
        if self._state is LinkState.CONNECTED:
            wake = min(wake, s.dead_at(), self.policy.next_timeout() or wake)
            if self.cfg.mqtt.stats_interval_s > 0:
                wake = min(wake, self.report.next_at)
            try:
                timers = self.rows.timers(now, mono)
            except sqlite3.Error as e:
                logger.warning("MQTT: cannot read the outbox: %s", e)
                timers = [now + DB_RETRY_S]
            wake = min([wake] + [mono + (t - now) for t in timers if t is not None])
        return max(0.0, wake - mono)

    # -- events -------------------------------------------------------------------------

    def _process(self, events: list[Event], s: Session, outbox: Outbox,
                 conn: sqlite3.Connection) -> None:
        refused: dict[int, Refusal] = {}
        commands: list[CommandCall] = []
        mono = self.clock.monotonic()
        for ev in events:
            if isinstance(ev, Wake):
                self._wake_pending.clear()
            elif isinstance(ev, Published):
                self.activity_mono = mono
                if ev.mid == self._status_mid:
                    self._status_acked = True
                elif (r := self.policy.puback(ev.mid, ev.failure, ev.reason, mono)) is not None:
                    refused[r.row_id] = r
            elif isinstance(ev, Message):
                self.activity_mono = mono
                self.inbound.sort(ev, s, self.policy, commands)
            elif isinstance(ev, Connected):
                self._on_connected(ev, mono)
            elif isinstance(ev, Disconnected):
                self._count(disconnects=1)
                self.policy.disconnected(mono)
                if self._state is LinkState.STOPPED:
                    logger.info("MQTT: disconnected (%s)", ev.reason)
                    continue
                self._set_state(LinkState.DISCONNECTED)
                logger.warning("MQTT: disconnected (%s); %d message(s) in flight will be "
                               "resent", ev.reason, len(self.policy.mid_row))
            elif isinstance(ev, Route):
                self._on_route(ev.up, s)
            elif isinstance(ev, ConnectFailed):  # paho keeps retrying with its backoff
                # One warning per outage, not one per retry for days on end.
                level = logging.DEBUG if self._connect_warned else logging.WARNING
                self._connect_warned = True
                logger.log(level, "MQTT: cannot connect to %s:%d (%s); retrying",
                           self.cfg.mqtt.host, self.cfg.mqtt.port, ev.reason)
        now = self.clock.wall()
        self.rows.flush(now, mono)
        for r in refused.values():
            self.rows.refused(r, now, mono)
        self.inbound.run(commands, s, conn)

    def _on_connected(self, ev: Connected, mono: float) -> None:
        self._connect_warned = False
        self.policy.connected(mono, ev.receive_max, ev.max_packet)
        assert self._session is not None
        self._session.last_in = mono
        self._set_state(LinkState.CONNECTED)
        self._count(connects=1)
        self.report.next_at = mono  # tell the base how we are as soon as we are back
        logger.info("MQTT: connected (session present: %s), %d message(s) in flight",
                    ev.session_present, len(self.policy.mid_row))

    def _on_route(self, up: bool | None, s: Session) -> None:
        if self._state is LinkState.STOPPED:
            return  # stopping: paho's thread must not be started again
        if not up:
            s.hold(up is False)
            return
        self._count(route_nudges=1)
        if s.retry_now():
            logger.info("MQTT: the cellular bearer is up: connecting now")

    # -- stats and stop -----------------------------------------------------------------

    def _shutdown(self, s: Session, outbox: Outbox, conn: sqlite3.Connection) -> None:
        """Publish ``offline``, wait briefly for it and pending PUBACKs, disconnect cleanly."""
        if self._state is LinkState.CONNECTED:
            self._status_acked = False
            self._status_mid, _ = s.publish(s.status_topic,
                                            status_payload("offline", self.clock), retain=True)
            deadline = self.clock.monotonic() + STOP_FLUSH_S
            while not self._status_acked and self._status_mid is not None:
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    logger.warning("MQTT: offline status not acknowledged in %.0f s",
                                   STOP_FLUSH_S)
                    break
                with contextlib.suppress(queue.Empty):
                    self._process(self._drain_into([self._events.get(timeout=left)]), s,
                                  outbox, conn)
        self._set_state(LinkState.STOPPED)
        s.stop()
        # PUBACKs that arrived while stopping are real confirmations: record them.
        self.rows.retry_at = None
        self._process([e for e in self._drain_into([]) if not isinstance(e, Message)], s,
                      outbox, conn)
        self._status_mid = None
        if self.policy.mid_row:
            logger.info("MQTT: stopped with %d message(s) unacknowledged; they are resent "
                        "at the next start", len(self.policy.mid_row))

    # -- small helpers ------------------------------------------------------------------

    def _apply_cfg(self, new: Config) -> None:
        """A remote settings change was accepted: use it here and hand it on."""
        if new.mqtt.stats_interval_s != self.policy.mqtt.stats_interval_s:
            self.report.next_at = self.clock.monotonic()
        self.policy.configure(new.mqtt, new.outbox)
        if self._on_config is not None:
            self._on_config(new)

    def _set_state(self, state: LinkState) -> None:
        self._state = state  # one reference, written by this thread only

    def _count(self, **deltas: int) -> None:
        self.counters.add(**deltas)

    def _count_sent(self, kinds: Iterable[str]) -> None:
        def bump(s: LinkStats) -> None:
            for kind in kinds:
                s.sent += 1
                s.sent_by_kind[kind] = s.sent_by_kind.get(kind, 0) + 1

        self.counters.update(bump)


__all__ = ["LinkState", "LinkStats", "MqttLink", "check_credentials", "new_properties",
           "read_password_file"]
