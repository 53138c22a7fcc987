"""The receiver's MQTT connection: connect, stay connected, and say what is happening.

Why not paho's ``loop_start``: its reconnect loop swallows the reason a connection failed and
keeps its delay to itself, so a ranger starting ``camtrap alerts`` against a wrong address or a
broker that is down saw nothing at all. Here one network thread of ours connects, runs paho's
``loop()``, and on every failure reports a :class:`LinkNote` — "cannot reach HOST:PORT
(Connection refused), retrying in 2 s" — with the reason and the delay it is about to wait
(:class:`ReconnectBackoff`, 1 s doubling to 30 s, reset by a successful CONNACK). Waits go
through the injected :class:`~edge_app.core.clock.Clock`.

Thread safety: paho writes to the socket from the caller's thread when no paho thread exists,
which would interleave our worker's receipts with this thread's writes. Registering a (no-op)
``on_socket_register_write`` callback — paho's documented hook for external event loops — makes
every publish and PUBACK only queue its packet and wake the loop, so all socket I/O happens on
this thread.

The session is the broker's: a fixed client id, ``clean_start=False`` and a session expiry, so
the broker queues what arrives while the receiver is away. (A broker with
``use_username_as_clientid`` replaces the client id with the user name, which is just as stable.)
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock
from edge_app.core.mqtt_common import new_properties

logger = logging.getLogger(__name__)

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
KEEPALIVE_S = 30
LOOP_S = 0.2
"""How long one paho ``loop()`` waits; also how quickly a stop is noticed."""

Subscriptions = list[tuple[str, SubscribeOptions]]
MessageHook = Callable[[mqtt.MQTTMessage], None]


class ReconnectBackoff:
    """Reconnect delays by the project's one backoff rule (:mod:`edge_app.core.backoff`):
    ``min_s``, doubling per failure up to ``max_s``, reset by a successful connection.

    No jitter: one station reconnecting is no herd, and a person reads the delays it prints.
    """

    def __init__(self, min_s: float = RECONNECT_MIN_S, max_s: float = RECONNECT_MAX_S) -> None:
        self._rule = Backoff(min_s, max(min_s, max_s), jitter="none")
        self._failures = 0

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        self._failures += 1
        return self._rule.delay(self._failures)

    def reset(self) -> None:
        self._failures = 0


@dataclass(frozen=True, slots=True)
class LinkNote:
    """One change of the connection, for a person: see :meth:`__str__`.

    Attributes:
        kind: ``connected``, ``unreachable`` (no TCP/TLS connection), ``refused`` (the broker
            answered the login with an error) or ``lost`` (an established connection ended).
        address: ``HOST:PORT``.
        reason: why (empty for ``connected``).
        retry_s: the delay before the next attempt (None for ``connected``).
    """

    kind: Literal["connected", "unreachable", "refused", "lost"]
    address: str
    reason: str = ""
    retry_s: float | None = None

    def __str__(self) -> str:
        retry = f"{self.retry_s:g} s" if self.retry_s is not None else "a moment"
        if self.kind == "connected":
            return f"connected to {self.address}, waiting for alerts"
        if self.kind == "unreachable":
            return f"cannot reach {self.address} ({self.reason}), retrying in {retry}"
        if self.kind == "refused":
            return f"{self.address} refused the connection ({self.reason}), retrying in {retry}"
        return f"lost the connection to {self.address} ({self.reason}), reconnecting in {retry}"


NoteHook = Callable[[LinkNote], None]


def address(host: str, port: int) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 literal)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


class MqttSession:
    """A paho client on a network thread of ours (see the module docstring).

    Args:
        host: broker host.
        port: broker port.
        client_id: fixed client id.
        clock: for the reconnect waits.
        on_message: called on the network thread for every message (must only queue it).
        subscriptions: what to subscribe to after every successful CONNACK.
        on_note: called on the network thread with every :class:`LinkNote` (else logged).
        session_expiry_s: how long the broker keeps the session while we are away.
        ca_file: CA certificate; when given, TLS is used.
        username: MQTT user name (with ``password``).
        password: MQTT password.
        backoff: reconnect delays (default 1 s doubling to 30 s).
    """

    def __init__(self, host: str, port: int, client_id: str, clock: Clock, *,
                 on_message: MessageHook, subscriptions: Callable[[], Subscriptions],
                 on_note: NoteHook | None = None, session_expiry_s: int = 7 * 86400,
                 ca_file: str | None = None, username: str | None = None,
                 password: str | None = None, backoff: ReconnectBackoff | None = None) -> None:
        self.host = host
        self.port = port
        self.address = address(host, port)
        self.client_id = client_id
        self._clock = clock
        self._on_message = on_message
        self._subscriptions = subscriptions
        self._on_note = on_note
        self._session_expiry_s = session_expiry_s
        self._backoff = backoff or ReconnectBackoff()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: self._on_message(msg)
        self.client.on_socket_register_write = lambda _c, _u, _sock: None  # see module doc
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._connected = False
        self._subscribed = False
        self._refused: str | None = None
        self._lost: str | None = None
        self._thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; failures are reported and retried, never raised."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ranger-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, then DISCONNECT (the broker keeps the session), and end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until the broker has acknowledged the subscriptions (or ``timeout_s``).

        Waiting for the SUBACK, not the CONNACK: on a first connection a message published
        between the two would not be routed to us, and a caller that goes on to publish (a
        test, a tool) would lose it.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._connected and self._subscribed, timeout_s)

    # -- used by the worker -----------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a message (QoS 1 ones are kept across a reconnect by paho)."""
        self.client.publish(topic, payload, qos=qos)

    def ack(self, mid: int, qos: int) -> None:
        """PUBACK a message (manual acknowledgement: only once it is handled)."""
        if qos > 0:
            self.client.ack(mid, qos)

    # -- the network thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a bug here must be visible, not a silently dead thread
            self.failed = e
            logger.exception("receiver: the MQTT network thread failed")
        finally:
            self._set_connected(False)

    def _loop(self) -> None:
        props = new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry_s
        while not self._stop.is_set():
            self._refused = self._lost = None
            try:
                self.client.connect(self.host, self.port, keepalive=KEEPALIVE_S,
                                    clean_start=False, properties=props)
            except OSError as e:  # refused, unreachable, DNS, TLS: all OSError
                self._retry(LinkNote("unreachable", self.address, _why(e)))
                continue
            rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            disconnecting = False
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._stop.is_set() and not disconnecting:
                    self.client.disconnect()  # queued after the last receipts and PUBACKs
                    disconnecting = True
                rc = self.client.loop(LOOP_S)
            self._set_connected(False)
            if self._stop.is_set():
                break
            if self._refused is not None:
                self._retry(LinkNote("refused", self.address, self._refused))
            else:
                self._retry(LinkNote("lost", self.address,
                                     self._lost or mqtt.error_string(rc).rstrip(".")))

    def _retry(self, note: LinkNote) -> None:
        delay = self._backoff.next()
        self._note(LinkNote(note.kind, note.address, note.reason, delay))
        self._clock.wait(self._stop, delay)

    def _note(self, note: LinkNote) -> None:
        if self._on_note is not None:
            logger.debug("receiver: %s", note)
            self._on_note(note)
        else:
            level = logging.INFO if note.kind == "connected" else logging.WARNING
            logger.log(level, "receiver: %s", note)

    def _set_connected(self, value: bool) -> None:
        with self._cond:
            self._connected = value
            if not value:
                self._subscribed = False
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Properties | None) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            return
        self._backoff.reset()
        # Subscribing again on a resumed session is harmless and covers a lost session.
        client.subscribe(self._subscriptions())
        logger.info("receiver: connected to %s as %s (session present: %s)", self.address,
                    self.client_id, flags.session_present)
        self._set_connected(True)
        self._note(LinkNote("connected", self.address))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        if flags.is_disconnect_packet_from_server:
            self._lost = str(reason_code)  # e.g. "Session taken over"
        self._set_connected(False)
