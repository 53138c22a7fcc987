"""The ranger-side receiver: subscribe to the traps' events, dedupe, show or hand to a hook.

Delivery from a trap is at-least-once (a message in flight when the link dropped is sent
again), so the receiver deduplicates by event ``id`` and calls the hook once per id. It connects
with a fixed client id, ``clean_start=False`` and a session expiry, so the broker queues alerts
published while the receiver is away (a laptop asleep, a base-station reboot) and delivers them
when it comes back.

Callbacks run on paho's network thread; the hook is called there too, guarded so that a
failing hook is logged and never stops the receiver. Malformed payloads are logged and counted.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_app.uplink.mqtt import new_properties

logger = logging.getLogger(__name__)

DEDUPE_SIZE = 10_000
SESSION_EXPIRY_S = 7 * 86400

AlertHook = Callable[[dict[str, Any]], None]
StatusHook = Callable[[str, dict[str, Any]], None]


@dataclass
class ReceiverStats:
    """Counters of a :class:`Receiver`.

    Attributes:
        received: event messages received (duplicates included).
        delivered: events handed to the hook (once per id).
        duplicates: events whose id was already delivered.
        ignored: well-formed events that are not alerts (``keep``), when not wanted.
        malformed: payloads that were not an event object with an ``id``.
        hook_errors: times the hook raised.
    """

    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    ignored: int = 0
    malformed: int = 0
    hook_errors: int = 0


def default_client_id() -> str:
    """A stable id per host and user, so the broker keeps this receiver's session."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "ranger"
    return f"camtrap-ranger-{socket.gethostname()}-{user}"[:64]


class Receiver:
    """Subscribes ``<prefix>/+/event`` (and ``/status``) and calls ``on_alert`` once per id.

    Args:
        host: broker host.
        port: broker port.
        prefix: topic prefix of the traps.
        client_id: fixed client id (default: :func:`default_client_id`). Two receivers with
            the same id take the session from each other: give each its own.
        on_alert: called with the event dict, once per event id.
        on_status: called with (unit, status dict) for ``online``/``offline``/``lost``.
        include_keep: also deliver events whose outcome is not ``alert``.
        dedupe_size: how many recent ids are remembered.
        session_expiry_s: how long the broker keeps our session while we are away.
        ca_file: CA certificate; when given, TLS is used.
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
        include_keep: bool = False,
        dedupe_size: int = DEDUPE_SIZE,
        session_expiry_s: int = SESSION_EXPIRY_S,
        ca_file: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.client_id = client_id or default_client_id()
        self.on_alert = on_alert
        self.on_status = on_status
        self.include_keep = include_keep
        self._dedupe_size = max(1, dedupe_size)
        self._session_expiry_s = session_expiry_s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._cond = threading.Condition()
        self._connected = False
        self._last_message = time.monotonic()
        self.stats = ReceiverStats()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        self._client.reconnect_delay_set(1, 30)
        if ca_file:
            self._client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (paho retries while the broker is unreachable)."""
        props = new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(self.host, self.port, keepalive=30, clean_start=False,
                                   properties=props)
        self._client.loop_start()
        self._started = True

    def stop(self) -> None:
        """Disconnect cleanly (the broker keeps the session) and stop paho's thread."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()

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
        """Block until no message arrived for ``quiet_s`` (at most ``timeout_s``).

        Used to let queued messages drain before stopping (e.g. at the end of the demo).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                quiet_at = self._last_message + quiet_s
                if now >= quiet_at:
                    return True
                if now >= deadline:
                    return False
                self._cond.wait(min(quiet_at, deadline) - now)

    @property
    def connected(self) -> bool:
        return self._connected

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
        client.subscribe([(f"{self.prefix}/+/event", 1), (f"{self.prefix}/+/status", 1)])
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
        with self._cond:
            self._last_message = time.monotonic()
            self._cond.notify_all()
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        unit, leaf = parts[1], parts[2]
        body = _decode(msg.payload)
        if leaf == "status":
            self._handle_status(unit, body)
        elif leaf == "event":
            self._handle_event(msg.topic, body)

    def _handle_status(self, unit: str, body: dict[str, Any] | None) -> None:
        if body is None or not isinstance(body.get("state"), str):
            self.stats.malformed += 1
            logger.warning("receiver: malformed status from %s", unit)
            return
        level = logging.WARNING if body["state"] == "lost" else logging.INFO
        logger.log(level, "unit %s is %s (%s)", unit, body["state"], body.get("ts"))
        if self.on_status is not None:
            self._call(self.on_status, unit, body)

    def _handle_event(self, topic: str, event: dict[str, Any] | None) -> None:
        self.stats.received += 1
        if event is None or not isinstance(event.get("id"), str) or not event["id"]:
            self.stats.malformed += 1
            logger.warning("receiver: malformed event on %s (not an object with an id)", topic)
            return
        if not self.include_keep and event.get("outcome", "alert") != "alert":
            self.stats.ignored += 1
            return
        event_id: str = event["id"]
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            self.stats.duplicates += 1
            logger.debug("receiver: duplicate %s", event_id)
            return
        self._seen[event_id] = None
        if len(self._seen) > self._dedupe_size:
            self._seen.popitem(last=False)
        self.stats.delivered += 1
        if self.on_alert is not None:
            self._call(self.on_alert, event)

    def _call(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # a user hook must not kill paho's network thread
            self.stats.hook_errors += 1
            logger.exception("receiver: hook failed")


def _decode(payload: bytes | bytearray) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
    return (f"{ts}  {event.get('unit', '?')}  {tag}{what}  score {_num(event.get('score'))}  "
            f"{event.get('id', '?')}")


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


def run_alerts(
    broker: str,
    as_json: bool,
    out: TextIO,
    stop: threading.Event | None = None,
    *,
    prefix: str = "camtrap",
    client_id: str | None = None,
) -> int:
    """``camtrap alerts``: print one line per alert until ``stop`` is set or Ctrl-C.

    Args:
        broker: ``HOST:PORT``.
        as_json: print the event JSON (one line) instead of :func:`format_alert`.
        out: where the lines go (flushed per line, for pipes).
        stop: ends the run when set (None: run until KeyboardInterrupt).
        prefix: topic prefix of the traps.
        client_id: receiver client id (default: per host and user).

    Returns:
        0 after a stop, 2 if ``broker`` is not ``HOST:PORT``.
    """
    try:
        host, port = parse_broker(broker)
    except ValueError as e:
        print(f"camtrap alerts: --broker: {e}", file=sys.stderr)
        return 2
    lock = threading.Lock()

    def on_alert(event: dict[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":"), ensure_ascii=False) if as_json
                else format_alert(event))
        with lock:
            out.write(line + "\n")
            out.flush()

    receiver = Receiver(host, port, prefix, client_id, on_alert)
    done = stop or threading.Event()
    receiver.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        s = receiver.stats
        logger.info("alerts: %d delivered, %d duplicate(s), %d malformed", s.delivered,
                    s.duplicates, s.malformed)
    return 0
