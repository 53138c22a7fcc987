"""End-to-end receipts: an MQTT event row is delivered when the receiver says so, not the broker.

Why: a broker's PUBACK is not delivery. A broker killed with -9 (or one without persistence)
can lose what it acknowledged, so with ``mqtt.receipts`` on an ``alert``/``event`` row goes
from ``inflight`` to ``acked-by-broker`` on PUBACK and only to ``sent`` when a receiver's
receipt on ``<prefix>/<unit>/ack`` names its event id. A row whose receipt does not come in time
goes back to ready and is sent again; the timeout doubles per resend (no jitter: a technician
must be able to predict it) up to ``outbox.receipt_timeout_max_s``, so a unit whose receiver is
away for a week does not resend every alert every few minutes over a metered link.

Receipts are an MQTT thing: they settle only ``link = 'mqtt'`` rows. A LoRa row of the same
event is confirmed by its own network ACK.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable

from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock
from edge_app.core.config import OutboxConfig
from edge_app.trap.store.db import transaction
from edge_app.trap.store.outbox import Link, Outbox, State

logger = logging.getLogger(__name__)


class Receipts:
    """The receipt side of the outbox, on the MQTT link's connection.

    Args:
        conn: a connection from :func:`edge_app.trap.store.db.open_db`.
        clock: wall time for ``now`` defaults.
        cfg: ``receipt_timeout_s`` and ``receipt_timeout_max_s``.
    """

    def __init__(self, conn: sqlite3.Connection, clock: Clock, cfg: OutboxConfig) -> None:
        self._conn = conn
        self._clock = clock
        self._cfg = cfg
        self._timeout = Backoff(cfg.receipt_timeout_s, cfg.receipt_timeout_max_s, "none")

    def _now(self, now: float | None) -> float:
        return self._clock.wall() if now is None else now

    def receipt_timeout_s(self, attempts: int) -> float:
        """How long an ``acked-by-broker`` row waits for its receipt before it is resent."""
        return self._timeout.delay(attempts)

    def mark_acked(self, row_ids: Iterable[int], now: float | None = None) -> int:
        """The broker acknowledged these rows; they now wait for the receiver's receipt."""
        t = self._now(now)
        n = 0
        with transaction(self._conn):
            for rid in row_ids:
                r = self._conn.execute(
                    "SELECT attempts FROM outbox WHERE id = ? AND state IN ('inflight', 'ready')",
                    (rid,),
                ).fetchone()
                if r is None:
                    continue
                self._conn.execute(
                    "UPDATE outbox SET state = 'acked-by-broker', inflight_since = NULL, "
                    "last_error = NULL, next_attempt_at = ? WHERE id = ?",
                    (t + self.receipt_timeout_s(int(r[0])), rid),
                )
                n += 1
        return n

    def mark_received(
        self, event_ids: Iterable[str], now: float | None = None
    ) -> list[tuple[int, str]]:
        """A receiver's receipt: the MQTT event rows of these ids reached it; they are sent.

        Applies to unsent ``alert``/``event`` rows in any state (a receipt can overtake the
        PUBACK, or arrive after a timeout requeued the row). Unknown ids are ignored: a
        receipt may be a duplicate, or name an event purged long ago.

        Returns:
            (row id, kind) of the rows that changed (so the link can forget their message ids
            and count them).
        """
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return []
        t = self._now(now)
        changed: list[tuple[int, str]] = []
        with transaction(self._conn):
            for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                part = ids[i:i + 500]
                marks = ", ".join("?" for _ in part)
                rows = self._conn.execute(
                    f"UPDATE outbox SET state = 'sent', done_at = ?, inflight_since = NULL, "  # noqa: S608 - placeholders only
                    f"last_error = NULL WHERE link = ? AND kind IN ('alert', 'event') "
                    f"AND event_id IN ({marks}) "
                    f"AND state IN ('ready', 'inflight', 'acked-by-broker') RETURNING id, kind",
                    (t, Link.MQTT.value, *part),
                ).fetchall()
                changed.extend((int(r[0]), str(r[1])) for r in rows)
        return changed

    def requeue_unreceipted(self, now: float | None = None) -> int:
        """``acked-by-broker`` rows whose receipt did not come in time go back to ready."""
        t = self._now(now)
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'ready', next_attempt_at = ?, "
            "last_error = 'no receipt in time' WHERE state = 'acked-by-broker' "
            "AND (next_attempt_at <= ? OR next_attempt_at > ?)",
            (t, t, t + self._cfg.receipt_timeout_max_s + 1.0),
        )
        if cur.rowcount:
            logger.warning("%d event(s) acknowledged by the broker but not received: sending "
                           "them again", cur.rowcount)
        return cur.rowcount

    def next_deadline(self, outbox: Outbox, now: float | None = None) -> float | None:
        """When the first ``acked-by-broker`` row times out (None if there is none)."""
        return outbox.next_timer(State.ACKED, now, self._cfg.receipt_timeout_max_s + 1.0,
                                 Link.MQTT)
