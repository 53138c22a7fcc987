"""The bytes the MQTT link's sockets carried: the data plan's count where the modem has none.

Why: the cellular data budget counts from the bearer's counters (what the operator bills),
but some modems report none; then the app's own count is all there is. paho-mqtt exposes no
byte counts, so they are read from the kernel: Linux's ``TCP_INFO`` on the client's socket
gives, per connection, the TCP payload bytes sent (``tcpi_bytes_sent``, retransmissions
included; ``tcpi_bytes_acked`` on kernels before 4.19) and received, and the segments each
way. Payload here is everything above TCP — MQTT packets, PINGREQs, TLS records and the TLS
handshake — so nothing is estimated but the IP and TCP headers, :data:`HEADER_BYTES` per
segment (IPv4 20 + TCP 20 + the timestamp option 12). Only where ``TCP_INFO`` cannot be read
(another OS) does the link fall back to an estimate: each message's topic and payload plus
:data:`MESSAGE_OVERHEAD`, and no handshakes (:meth:`SocketBytes.estimate`).

Threads: paho's network thread opens and closes sockets (``on_socket_open``/``close``, called
before the socket is closed, so its last bytes are read then); the cellular stage's thread
takes the count (:meth:`SocketBytes.take`). One lock: a socket is read only while registered,
and it is unregistered before paho closes it, so its descriptor cannot be reused under a read.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from typing import Any

TCP_INFO = getattr(socket, "TCP_INFO", 11)
HEADER_BYTES = 52
"""IP and TCP headers per segment (IPv4 20, TCP 20, timestamps 12): the one estimate."""
MESSAGE_OVERHEAD = 40
"""Per message where ``TCP_INFO`` is missing: MQTT fixed header, packet id, properties, the
PUBACK, a TLS record's header and tag (the fallback's estimate)."""
_ACKED, _RECEIVED, _SEGS, _SENT = 120, 128, 136, 200  # offsets in Linux's struct tcp_info


def tcp_counts(sock: Any) -> tuple[int, int, int] | None:
    """(payload bytes sent, received, segments both ways) of a TCP socket; None when the
    kernel does not say (not Linux, not TCP, closed)."""
    try:
        raw = socket.socket.getsockopt(sock, socket.IPPROTO_TCP, TCP_INFO, 256)
    except (OSError, TypeError, ValueError):
        return None
    if len(raw) < _SEGS + 8:
        return None
    acked, received = struct.unpack_from("=QQ", raw, _ACKED)
    segs_out, segs_in = struct.unpack_from("=II", raw, _SEGS)
    sent = struct.unpack_from("=Q", raw, _SENT)[0] if len(raw) >= _SENT + 8 else acked
    return sent, received, segs_out + segs_in


class SocketBytes:
    """Bytes carried by the link's sockets since the last :meth:`take` (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Any = None
        self._last = 0
        self._pending = 0
        self.kernel = sys.platform.startswith("linux")
        """Whether the counts come from ``TCP_INFO`` (else from :meth:`estimate`)."""
        self.total = 0

    def _total_of(self, sock: Any) -> int | None:
        counts = tcp_counts(sock) if self.kernel else None
        if counts is None:
            return None
        sent, received, segments = counts
        return sent + received + segments * HEADER_BYTES

    def _sample(self) -> None:
        if self._sock is None:
            return
        total = self._total_of(self._sock)
        if total is not None and total >= self._last:
            self._pending += total - self._last
            self.total += total - self._last
            self._last = total

    def opened(self, sock: Any) -> None:
        """paho opened a socket (``on_socket_open``): count it from zero."""
        with self._lock:
            self._sample()  # a socket replaced without a close callback: its last bytes
            self._sock, self._last = sock, 0

    def closed(self, sock: Any) -> None:
        """paho is about to close a socket (``on_socket_close``): its last bytes."""
        with self._lock:
            if sock is self._sock:
                self._sample()
                self._sock = None

    def estimate(self, nbytes: int) -> None:
        """A message of ``nbytes`` (topic and payload) went or came: counted only where the
        kernel gives no counts."""
        with self._lock:
            if not self.kernel:
                self._pending += nbytes + MESSAGE_OVERHEAD
                self.total += nbytes + MESSAGE_OVERHEAD

    def take(self) -> int:
        """The bytes since the last take (any thread)."""
        with self._lock:
            self._sample()
            n, self._pending = self._pending, 0
            return n
