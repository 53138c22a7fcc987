"""The ranger-side receiver: subscribe to the traps, store, dedupe, send receipts, show alerts.

A thin adapter (a worker thread and an inbox) around parts each tested without a broker:

* :mod:`edge_app.station.doors` — the guarded door every message passes first. The unit is the
  topic's (bound to the credentials by the broker's ACL), never the body's: an event whose
  ``unit`` disagrees, or whose ``id`` is not ``<topic unit>-<seq>``, is refused. So is anything
  too large, too deep, not JSON or carrying NaN. A refusal is counted per kind
  (:attr:`Receiver.refusals`), logged with a throttle, acknowledged to the broker (a resend
  would be just as bad) and never raised into the worker;
* :mod:`edge_app.station.dedupe` — per-unit dedupe ((unit, id)), which events to show, which
  to confirm;
* :mod:`edge_app.station.media` — media reassembly and which chunks to ask for again, when;
* :mod:`edge_app.station.ingest` — the above applied to a batch, with the store and the hooks;
* :mod:`edge_app.station.session` — the MQTT connection, which says what it is doing.

Delivery from a trap is at-least-once, so the hook is called once per (unit, id). The session is
persistent (fixed client id, ``clean_start=False``, session expiry), so the broker queues alerts
published while the receiver is away.

End-to-end receipts: for every event it has *stored* under the unit that sent it, the receiver
publishes ``{"ids": [...]}`` on ``<prefix>/<unit>/ack`` (QoS 1); a trap with ``mqtt.receipts``
keeps the event queued until then. Stored means written to the store's SQLite file
(``store_dir``) or, without a store, handed to the hook. Messages are acknowledged to the broker
(manual PUBACK) only after that, so a receiver killed mid-batch gets them again.

Several workers (``shared_group``): events, status, stats, command results and LoRaWAN uplinks
are taken through MQTT 5 shared subscriptions (``$share/<group>/...``), so the broker hands each
message to one worker of the group and a cluster (EMQX, VerneMQ) spreads them over several
machines; the workers share one store folder, whose (unit, id) key makes every event stored
once whichever worker got it. Media chunks are the exception: a file's chunks must meet in one
assembler, so every worker subscribes to all media without sharing and assembles it — the
writes are atomic and identical, so the second is a no-op in effect, and a worker that dies
loses no file. Each worker needs its own account (the shipped broker ties the client id to the
user name).

Media (with a store only): chunks on ``<prefix>/<unit>/media/<media_id>/<chunk>`` are
reassembled, checked against the ``sha256`` user property and written to
``<store>/media/<unit>/<media_id>.jpg``; stalled or never-started transfers are asked for again
with ``cmd/media/request``.

Threads: the session's network thread only queues messages; one worker thread runs the doors,
stores, dedupes, calls the hooks, publishes receipts and acknowledges. A failing hook is logged
and counted. A bug that escapes the worker is kept in :attr:`Receiver.failed` (``camtrap
alerts`` then exits 1) instead of leaving a silent process.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import queue
import re
import socket
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.guard import Refusals
from edge_app.core.topics import cmd_topic
from edge_app.station.dedupe import DEDUPE_SIZE
from edge_app.station.display import format_alert, parse_broker
from edge_app.station.ingest import (
    AlertHook,
    EventHook,
    ExtraDecoder,
    Hooks,
    Incoming,
    Ingest,
    MediaHook,
    ReceiverStats,
    StatusHook,
)
from edge_app.station.media import MEDIA_TIMEOUT_S, THUMB_WAIT_S
from edge_app.station.session import LinkNote, MqttSession, NoteHook, Subscriptions
from edge_app.station.store import RangerStore

__all__ = ["BATCH", "DEDUPE_SIZE", "SESSION_EXPIRY_S", "AlertHook", "ExtraDecoder", "LinkNote",
           "MediaHook", "Receiver", "ReceiverStats", "StatusHook", "default_client_id",
           "format_alert", "parse_broker"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 86400
BATCH = 200
GATHER_S = 0.01
"""How long a busy worker waits for more of a burst before it writes (group commit)."""


_GROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
        client_id: fixed client id (default: :func:`default_client_id`); two receivers with
            the same id take the session from each other.
        on_alert: called with the event dict, once per (unit, event id).
        on_status: called with (unit, status dict) for ``online``/``offline``/``lost``.
        on_stats: called with (unit, stats dict).
        on_media: called with (unit, media id, path) for each stored media file.
        on_result: called with (unit, command result dict).
        on_event: called with (unit, event id, link, new) for every event stored (with a
            store): new ones, and ones that came again over another link or were completed.
        on_note: called with each :class:`LinkNote` (connected, cannot reach …); else logged.
        include_keep: also deliver events whose outcome is not ``alert``.
        dedupe_size: recent ids remembered per unit (without a store).
        session_expiry_s: how long the broker keeps our session while we are away.
        ca_file: CA certificate; when given, TLS is used.
        username: MQTT user name (with ``password``).
        password: MQTT password.
        store_dir: persist events and media there (see :mod:`edge_app.station.store`).
        receipts: publish end-to-end receipts.
        media_timeout_s: a stalled transfer's missing chunks are requested after this long.
        thumb_wait_s: an announced thumbnail not started after this long is requested.
        extra: (topic filter, decoder) pairs of other alert sources (LoRaWAN network
            servers): shown once per (unit, id); with a store, stored and completed in place
            by the MQTT event (never receipted: a LoRa uplink has no redelivery).
        shared_group: take events, status, stats, results and LoRa uplinks through the MQTT 5
            shared subscription ``$share/<group>/...`` (several workers, one store).
        clock: time for the media timers, store timestamps and reconnect waits.
    """

    def __init__(
        self, host: str, port: int, prefix: str = "camtrap", client_id: str | None = None,
        on_alert: AlertHook | None = None, *, on_status: StatusHook | None = None,
        on_stats: StatusHook | None = None, on_media: MediaHook | None = None,
        on_result: StatusHook | None = None, on_note: NoteHook | None = None,
        on_event: EventHook | None = None,
        include_keep: bool = False, dedupe_size: int = DEDUPE_SIZE,
        session_expiry_s: int = SESSION_EXPIRY_S, ca_file: str | None = None,
        username: str | None = None, password: str | None = None,
        store_dir: str | Path | None = None, receipts: bool = True,
        media_timeout_s: float = MEDIA_TIMEOUT_S, thumb_wait_s: float = THUMB_WAIT_S,
        extra: Sequence[tuple[str, ExtraDecoder]] = (), clock: Clock | None = None,
        shared_group: str = "",
    ) -> None:
        if shared_group and not _GROUP_RE.match(shared_group):
            raise ValueError("shared_group must be 1-64 letters, digits, - or _")
        self.shared_group = shared_group
        self.host, self.port, self.prefix = host, port, prefix
        self.client_id = client_id or default_client_id()
        self._clock: Clock = clock or SystemClock()
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._session = MqttSession(
            host, port, self.client_id, self._clock, on_message=self._on_message,
            subscriptions=self._subscriptions, on_note=on_note,
            session_expiry_s=session_expiry_s, ca_file=ca_file, username=username,
            password=password)
        self._client = self._session.client
        self._ingest = Ingest(
            prefix, publish=self._session.publish, ack=self._session.ack,
            command=self.send_command, clock=self._clock,
            hooks=Hooks(on_alert, on_status, on_stats, on_media, on_result, on_event),
            include_keep=include_keep, dedupe_size=dedupe_size, receipts=receipts, extra=extra,
            media_timeout_s=media_timeout_s, thumb_wait_s=thumb_wait_s)
        self.stats: ReceiverStats = self._ingest.stats
        self.refusals: Refusals = self._ingest.refusals
        self._inbox: queue.Queue[Incoming | None] = queue.Queue()
        self._cond = threading.Condition()
        self._last_message = self._clock.monotonic()
        self._worker: threading.Thread | None = None
        self._worker_failed: BaseException | None = None
        self._started = False

    @property
    def store(self) -> RangerStore | None:
        """The receiver's store (None without ``store_dir``); owned by the worker thread."""
        return self._ingest.store

    @property
    def receipts(self) -> bool:
        """Whether stored events are confirmed to their traps."""
        return self._ingest.receipts

    @receipts.setter
    def receipts(self, value: bool) -> None:
        self._ingest.receipts = value

    @property
    def failed(self) -> BaseException | None:
        """The error that stopped the worker or the network thread (None while healthy)."""
        return self._worker_failed or self._session.failed

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the store and connect in the background (retried, and said, while unreachable).

        Raises:
            StorageError: the store cannot be opened.
        """
        if self._store_dir is not None and self._ingest.store is None:
            self._ingest.open(self._store_dir)
        self._worker = threading.Thread(target=self._work, name="ranger-worker", daemon=True)
        self._worker.start()
        self._session.start()
        self._started = True

    def stop(self) -> None:
        """Finish the queued messages (store, receipts, acks), then disconnect cleanly."""
        if not self._started:
            return
        self._started = False
        self._inbox.put(None)
        if self._worker is not None:
            self._worker.join(10)
        self._session.stop()
        self._ingest.close()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until subscribed (or ``timeout_s``); True if connected."""
        return self._session.wait_connected(timeout_s)

    def wait_quiet(self, quiet_s: float, timeout_s: float = 30.0) -> bool:
        """Block until no message arrived or was processed for ``quiet_s`` (at most
        ``timeout_s``). Used to let queued messages drain before stopping."""
        deadline = self._clock.monotonic() + timeout_s
        with self._cond:
            while True:
                now = self._clock.monotonic()
                quiet_at = self._last_message + quiet_s
                if now >= quiet_at and self._inbox.empty():
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(max(0.01, min(quiet_at, deadline) - now))

    @property
    def connected(self) -> bool:
        return self._session.connected

    def send_command(self, unit: str, name: str, body: dict[str, Any]) -> str:
        """Publish a command to a trap (QoS 1); returns its id (``body['id']`` or a new one)."""
        cmd = dict(body)
        cmd.setdefault("id", uuid.uuid4().hex[:12])
        self._session.publish(cmd_topic(self.prefix, unit, name),
                              json.dumps(cmd, separators=(",", ":")).encode())
        return str(cmd["id"])

    # -- network thread -----------------------------------------------------------------

    def _subscriptions(self) -> Subscriptions:
        p = self.prefix
        share = f"$share/{self.shared_group}/" if self.shared_group else ""
        subs: Subscriptions = [
            (f"{share}{p}/+/event", SubscribeOptions(qos=1)),
            (f"{share}{p}/+/status", SubscribeOptions(qos=1)),
            (f"{share}{p}/+/stats", SubscribeOptions(qos=1)),
            # No Local: our own commands to the traps live under the same prefix. (MQTT 5
            # forbids No Local on a shared subscription: there our own commands are told
            # apart by the door, which passes only results.)
            (f"{share}{p}/+/cmd/#", SubscribeOptions(qos=1, noLocal=not share)),
        ]
        if self._store_dir is not None:  # never shared: see the module docstring
            subs.append((f"{p}/+/media/#", SubscribeOptions(qos=1)))
        return subs + [(f"{share}{f}", SubscribeOptions(qos=1))
                       for f, _decode in self._ingest.extra]

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        user = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        props = {str(k): str(v) for k, v in user} if user else {}
        self._inbox.put(Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, props))
        self._touch()

    def _touch(self) -> None:
        with self._cond:
            self._last_message = self._clock.monotonic()
            self._cond.notify_all()

    # -- the worker thread --------------------------------------------------------------

    def _work(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._next_batch()
                if batch:
                    self._ingest.handle(batch)
                self._ingest.timers()
                self._touch()
        except Exception as e:  # a bug: make it visible (camtrap alerts exits 1), not silent
            self._worker_failed = e
            logger.critical("receiver: the worker stopped on a bug", exc_info=True)
            self._touch()

    def _next_batch(self) -> tuple[list[Incoming], bool]:
        due = self._ingest.next_due_s()
        batch: list[Incoming] = []
        with contextlib.suppress(queue.Empty):
            first = self._inbox.get(timeout=3600.0 if due is None else max(0.05, due))
            if first is None:
                return batch, True
            batch.append(first)
        gather_until = self._clock.monotonic() + GATHER_S
        while len(batch) < BATCH:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                # Group commit: while messages are flowing (more than one was waiting), wait a
                # few ms for the rest of the burst, so one flush covers many messages. A lone
                # alert is handled at once.
                left = gather_until - self._clock.monotonic()
                if len(batch) < 2 or left <= 0:
                    break
                try:
                    item = self._inbox.get(timeout=left)
                except queue.Empty:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False
