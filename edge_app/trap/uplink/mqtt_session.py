"""The paho-mqtt client of the trap: connection, TLS, Last Will, subscriptions, reconnects.

A thin adapter. paho's network thread (``loop_start``) runs the callbacks; they only put small
event objects on the link's queue (an exception there would kill paho's loop, and a database
write there would stall the network). Two exceptions: ``on_connect`` publishes the retained
``online`` status and subscribes, so that they are the first things the broker hears from us;
``on_log`` stamps the time of the last packet received (for the dead-connection watchdog).

Reconnects: paho reconnects by itself, waiting its ``reconnect_delay``. The delay before each
attempt is set here, from the project's one backoff rule (:mod:`edge_app.core.backoff`, equal
jitter between ``mqtt.reconnect_min_s`` and ``reconnect_max_s``), so a park of traps that lost
the same base station does not reconnect in the same second.

The route's word (the cellular stage knows when the LTE bearer is up): :meth:`Session.hold`
while the bearer is down stretches the wait to :data:`HELD_RETRY_S` (attempts with no route
cost nothing but are pointless; a probe stays, in case the trap has another route the stage
does not see), and :meth:`Session.retry_now` when it comes up ends paho's wait and connects at
once with the backoff reset. paho's wait cannot be interrupted (it sleeps in steps of at most
1 s checking only for a stop), so ``retry_now`` stops paho's network thread — within that
second — and starts it again on a fresh ``connect_async``: messages awaiting a PUBACK stay in
paho's session and are resent after the CONNACK as on any reconnect.

Subscriptions (receipts on ``<prefix>/<unit>/ack``, commands under ``.../cmd/#``) use MQTT 5
options: No Local (the unit's own command results and clearing messages must not come back),
Retain As Published (a retained message is recognisable, so the link can clear it), and
Retain Handling "do not send" — a message someone left retained on these topics is never
replayed at subscribe time, so a retained poison message cannot be re-read at every start.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_app import __version__
from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock, rfc3339
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError
from edge_app.core.mqtt_common import new_properties, read_password_file
from edge_app.core.topics import ack_topic, cmd_topic, pack_topic, status_topic
from edge_app.trap.uplink.mqtt_bytes import SocketBytes

logger = logging.getLogger(__name__)

DEAD_FACTOR = 1.5
"""A connection silent for this many keepalive periods is dead (paho alone waits two)."""
HELD_RETRY_S = 900.0
"""Reconnect delay while the route is known to be down (:meth:`Session.hold`)."""
OK_RC = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)
"""Publish return codes that mean "in flight": NO_CONN means the connection dropped a moment
ago; paho queued the message and sends it after reconnecting."""


# -- events from paho's thread to the uplink thread ---------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool
    max_packet: int | None
    receive_max: int | None


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class Published:
    mid: int
    failure: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Wake:
    pass


@dataclass(frozen=True, slots=True)
class Route:
    """The cellular bearer came up (True) or went down (False), or there is no modem to
    say (None); from the cellular stage."""

    up: bool | None


Event = Connected | ConnectFailed | Disconnected | Published | Message | Wake | Route
WAKE = Wake()


def status_payload(state: str, clock: Clock) -> bytes:
    """The retained status body: ``{"state", "ts", "version"}``."""
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


class Session:
    """One paho client, from connect to disconnect.

    Args:
        cfg: the configuration at start (broker, TLS, credentials, topics).
        clock: monotonic time of the last packet in, wall time of status messages.
        events: where the callbacks put what happened.
        password: from :func:`check_credentials`.
        max_inflight: our own in-flight limit (paho's must never be the one that queues).
        rng: jitter of the reconnect delay.
        counter: counts the bytes the client's sockets carry (the data plan's fallback).
    """

    def __init__(self, cfg: Config, clock: Clock, events: queue.Queue[Event],
                 password: str | None, max_inflight: int, rng: random.Random,
                 counter: SocketBytes | None = None) -> None:
        m = cfg.mqtt
        self.cfg, self.clock, self._events, self._rng = cfg, clock, events, rng
        self.bytes = counter if counter is not None else SocketBytes()
        self.status_topic = status_topic(m.topic_prefix, cfg.unit.id)
        self.ack_topic = ack_topic(m.topic_prefix, cfg.unit.id)
        self.cmd_prefix = cmd_topic(m.topic_prefix, cfg.unit.id, "")
        # Model pack chunks only for a unit that can check a pack's signature.
        self.pack_filter = (pack_topic(m.topic_prefix, cfg.unit.id, "#")
                            if cfg.detector.pack_public_key else None)
        self._reconnect = Backoff(m.reconnect_min_s, m.reconnect_max_s, "equal")
        self._failures = 0
        self.held = False  # the route is down: read by paho's thread (a bool: atomic)
        self.last_in = clock.monotonic()  # written by paho's thread (a float: atomic)
        self.client = self._make_client(password, max_inflight)

    def _make_client(self, password: str | None, max_inflight: int) -> mqtt.Client:
        m = self.cfg.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.mqtt_client_id,
                             protocol=mqtt.MQTTv5)
        if logger.isEnabledFor(logging.DEBUG):
            # Only when debugging: paho logs a normal DISCONNECT at ERROR level ("Client is
            # not connected"), which would put a false alarm in the journal at every stop.
            client.enable_logger(logging.getLogger("paho"))
        client.max_inflight_messages_set(max_inflight + 8)
        self._set_delay(client, m.reconnect_min_s)
        # The will's ts is when this client was set up (paho sends the will with CONNECT);
        # the moment of loss is when the broker publishes it.
        client.will_set(self.status_topic, status_payload("lost", self.clock), qos=1,
                        retain=True)
        if password is not None:
            client.username_pw_set(m.username or self.cfg.unit.id, password)
        if m.tls:
            check_credentials(self.cfg)
            try:
                client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None,
                               keyfile=m.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                               tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (ssl.SSLError, OSError, ValueError) as e:
                raise ConfigError("mqtt.ca_file", f"TLS set-up failed: {e}") from e
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        client.on_socket_open = lambda _c, _u, sock: self.bytes.opened(sock)
        client.on_socket_close = lambda _c, _u, sock: self.bytes.closed(sock)
        return client

    @staticmethod
    def _set_delay(client: mqtt.Client, seconds: float) -> None:
        delay = max(1, math.ceil(seconds))
        client.reconnect_delay_set(delay, delay)

    def start(self) -> None:
        """Connect in the background (paho's thread retries until it gets through)."""
        m = self.cfg.mqtt
        props = new_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def hold(self, held: bool) -> None:
        """The route is down (True) or no longer known to be: paho's next wait is
        :data:`HELD_RETRY_S` instead of the backoff (module docstring)."""
        self.held = held

    def retry_now(self) -> bool:
        """The route just came up: end paho's reconnect wait and connect now, the backoff
        reset (module docstring). False when already connected (nothing to do). Blocks the
        caller up to ~1 s (paho's thread finishing its sleep step)."""
        self.held = False
        self._failures = 0
        self._set_delay(self.client, self.cfg.mqtt.reconnect_min_s)
        if self.client.is_connected():
            return False
        self.client.loop_stop()
        self.start()
        return True

    def stop(self) -> None:
        """A normal DISCONNECT (the broker does not send the will), then paho's thread ends."""
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                properties: Properties | None = None) -> tuple[int | None, str]:
        """QoS 1 publish; returns (message id, "") or (None, why it was not published)."""
        try:
            info = self.client.publish(topic, payload, qos=1, retain=retain,
                                       properties=properties)
        except ValueError as e:  # payload too large, bad topic
            return None, str(e)
        if info.rc not in OK_RC:
            return None, mqtt.error_string(info.rc)
        self.bytes.estimate(len(topic) + len(payload))
        return info.mid, ""

    def clear_retained(self, topic: str) -> None:
        """Delete a message someone left retained on one of our inbound topics."""
        self.client.publish(topic, b"", qos=1, retain=True)

    def silent_for(self, now: float) -> float:
        return now - self.last_in

    def drop_dead(self, now: float) -> bool:
        """Drop a connection silent for :data:`DEAD_FACTOR` × keepalive; True if dropped.

        ``shutdown``, not ``close``: paho's thread is in select() on this socket; it sees EOF,
        reports the loss and reconnects with its backoff. The base-class method also works on
        an SSLSocket without tearing down its TLS state under paho's feet.
        """
        keepalive = self.cfg.mqtt.keepalive_s
        silent = self.silent_for(now)
        if silent <= DEAD_FACTOR * keepalive:
            return False
        sock = self.client.socket()
        if sock is None:
            return False
        logger.warning("MQTT: nothing from the broker for %.1f s (keepalive %d s): connection "
                       "dead, reconnecting", silent, keepalive)
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
        except OSError as e:
            logger.debug("MQTT: shutdown of a dead socket: %s", e)
            return False
        self.last_in = now
        return True

    def dead_at(self) -> float:
        """Monotonic time at which the current silence becomes a dead connection."""
        return self.last_in + DEAD_FACTOR * self.cfg.mqtt.keepalive_s + 0.01

    # -- callbacks: paho's thread -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._events.put_nowait(ConnectFailed(str(reason_code)))
            return
        self._failures = 0
        client.publish(self.status_topic, status_payload("online", self.clock), qos=1,
                       retain=True)
        opts = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True,
                                retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        subs = [(self.ack_topic, opts), (self.cmd_prefix + "#", opts)]
        if self.pack_filter is not None:
            subs.append((self.pack_filter, opts))
        client.subscribe(subs)
        max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._events.put_nowait(Connected(bool(flags.session_present),
                                          int(max_packet) if max_packet else None,
                                          int(receive_max) if receive_max else None))

    def _next_delay(self, client: mqtt.Client) -> None:
        """Before paho's next reconnect wait: the project's backoff, jittered."""
        self._failures += 1
        delay = (HELD_RETRY_S if self.held
                 else self._reconnect.delay(self._failures, self._rng))
        self._set_delay(client, delay)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._next_delay(client)
        self._events.put_nowait(ConnectFailed("connection failed"))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        self._next_delay(client)
        self._events.put_nowait(Disconnected(str(reason_code)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties) -> None:
        self._events.put_nowait(Published(mid, reason_code.is_failure, str(reason_code)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Queued as bytes, parsed on the uplink thread behind the door; paho sends the QoS 1
        # PUBACK when this returns, whatever the payload holds.
        self._events.put_nowait(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))
        self.bytes.estimate(len(msg.topic) + len(msg.payload))

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # paho logs every packet it reads as "Received <TYPE> …", PINGRESP included, which is
        # the only way to see keepalive answers without touching its internals.
        if buf.startswith("Received "):
            self.last_in = self.clock.monotonic()
