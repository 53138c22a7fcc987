"""The MQTT link's counters and the body of the periodic stats message (ARCHITECTURE §6).

Kept apart from the link so that what the base station sees (``<prefix>/<unit>/stats``) is
defined in one place: uptime, battery, temperature, disk, outbox depth per kind, the link's
counters, and what its doors refused, per kind.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_app import __version__
from edge_app.core.clock import Clock, rfc3339
from edge_app.trap.store.outbox import Kind, OutboxReader
from edge_app.trap.store.retention import DiskGuard

logger = logging.getLogger(__name__)


class LinkState(enum.Enum):
    """Connection state of the link, as seen by the uplink thread."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost; paho is reconnecting with backoff


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
        pack_chunks: model pack chunks written to the card.
        stats_published: stats messages published.
        retained_cleared: retained messages cleared from our inbound topics.
        route_nudges: times the cellular stage said the bearer came up (connect at once).
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
    pack_chunks: int = 0
    stats_published: int = 0
    retained_cleared: int = 0
    route_nudges: int = 0


def stats_body(*, unit: str, wall: float, uptime_s: float, free_bytes: int, min_free: int,
               depth: dict[str, int] | None, link: LinkStats,
               refusals: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The stats message, before the daemon adds its own figures."""
    return {
        "unit": unit,
        "ts": rfc3339(wall),
        "version": __version__,
        "uptime_s": round(uptime_s, 1),
        "battery_v": None,
        "temp_c": None,
        "disk_free_bytes": free_bytes,
        "disk_low": free_bytes < min_free,
        "outbox": depth,
        "links": {"mqtt": {
            "state": link.state, "connects": link.connects, "disconnects": link.disconnects,
            "dead_connections": link.dead_connections, "sent": link.sent, "acked": link.acked,
            "receipts": link.receipts, "failed": link.failed, "requeued": link.requeued,
            "dropped": link.dropped, "signal": None, "refusals": refusals,
        }},
    }


class StatsReport:
    """When the stats message is due, and what it says.

    Args:
        clock: wall time for ``ts``, monotonic time for uptime and the schedule.
        guard: the disk guard (free space, ``disk_low``).
        source: the daemon's own figures (counters, last 24 h, models), added last.
    """

    def __init__(self, clock: Clock, guard: DiskGuard,
                 source: Callable[[], dict[str, Any]] | None) -> None:
        self.clock, self.guard, self.source = clock, guard, source
        self.started = self.next_at = clock.monotonic()

    def due(self, now: float, interval_s: float) -> bool:
        return interval_s > 0 and now >= self.next_at

    def sent(self, now: float, interval_s: float) -> None:
        self.next_at = now + max(1.0, interval_s)

    def body(self, unit: str, outbox: OutboxReader | None, link: LinkStats,
             refusals: dict[str, dict[str, int]]) -> dict[str, Any]:
        """The body of the stats message (ARCHITECTURE §6), plus ``disk_low``."""
        depth: dict[str, int] | None = None
        if outbox is not None:
            try:
                depth = outbox.depth()
            except sqlite3.Error as e:
                logger.warning("MQTT: outbox depth unavailable for stats: %s", e)
        out = stats_body(unit=unit, wall=self.clock.wall(),
                         uptime_s=self.clock.monotonic() - self.started,
                         free_bytes=self.guard.free_bytes(), min_free=self.guard.min_free_bytes,
                         depth=depth, link=link, refusals=refusals)
        if self.source is not None:
            out.update(self.source())
        return out
