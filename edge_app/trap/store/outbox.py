"""The durable outbox: every message that must leave the trap, as a SQLite row with a state.

Why our own queue: paho keeps unacknowledged QoS 1 messages only in memory, so a reboot or a
power cut would lose them. Here a message exists as a row *before* anyone tries to send it, and
it only leaves the ``ready``/``inflight`` states when the link has confirmed delivery (MQTT
PUBACK with a success reason code)::

    ready ──mark_inflight──► inflight ──mark_sent──────────────────────► sent ──purge──► (gone)
      ▲                         │  │                                       ▲
      ├──mark_failed (backoff)──┘  └─mark_acked─► acked-by-broker ─receipt─┘
      ├──requeue (no ACK in time)─────────────────────┘ (no receipt in time: requeue_unreceipted)
      │
    ready ──expire──► dead        recover(): inflight → ready        prune: media row → dead

``acked-by-broker`` exists because a broker's PUBACK is not delivery: a broker killed with -9
can lose what it acknowledged. With receipts on, an ``alert``/``event`` row stays there until
the receiver's end-to-end receipt names its event id, and is sent again when the receipt does
not come in time (the timeout doubles per resend, up to ``receipt_timeout_max_s``).

Delivery is at-least-once: a row that was on the air when the power went is sent again after
:meth:`Outbox.recover`; every message carries its event id so receivers deduplicate.

Times are wall-clock seconds (the rows outlive the process, so monotonic time is meaningless
for them). A Pi has no RTC and its clock can step when NTP syncs; a backwards step must not
park a row for hours, so a ``next_attempt_at`` further ahead than the longest backoff counts as
due.

Order of service: ``alert`` < ``status`` < ``event`` < ``thumb`` < ``image`` (``priority`` 0 is
served first), then oldest first. ``event`` is the event JSON of a trigger that was kept but did
not raise an alert: it must reach the base after alerts and status, and before the (large)
media, so that a thumbnail never arrives before the event it belongs to.

Expiry is per kind (``outbox.<kind>_expiry_s``): a week-old stats message or full image is not
worth the airtime, a late alert always is (alerts never expire unless configured).
"""

from __future__ import annotations

import enum
import json
import logging
import random
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edge_app.core.clock import Clock
from edge_app.core.config import OutboxConfig
from edge_app.trap.store.db import transaction

logger = logging.getLogger(__name__)


class Kind(StrEnum):
    """What a row carries."""

    ALERT = "alert"
    STATUS = "status"
    EVENT = "event"
    THUMB = "thumb"
    IMAGE = "image"


class State(StrEnum):
    """Where a row is in its life."""

    READY = "ready"
    INFLIGHT = "inflight"
    ACKED = "acked-by-broker"
    SENT = "sent"
    DEAD = "dead"


#: Kinds that carry event JSON and are confirmed by the receiver's receipt (when enabled).
RECEIPT_KINDS: frozenset[str] = frozenset({"alert", "event"})
#: Kinds whose row points to a media file.
MEDIA_KINDS: frozenset[str] = frozenset({"thumb", "image"})
#: States of a row that has not reached the receiver yet (what ``depth`` counts).
UNSENT_STATES: tuple[str, ...] = ("ready", "inflight", "acked-by-broker")


class _Default(enum.Enum):
    BY_KIND = 0


#: ``Outbox.enqueue(expires_at=BY_KIND)``: the expiry configured for the row's kind.
BY_KIND = _Default.BY_KIND


PRIORITY: dict[Kind, int] = {
    Kind.ALERT: 0,
    Kind.STATUS: 1,
    Kind.EVENT: 2,
    Kind.THUMB: 3,
    Kind.IMAGE: 4,
}

_MAX_EXPONENT = 30  # 2**30 × backoff_min_s is far above any cap; avoids huge ints


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox row, as read.

    Attributes:
        payload: the message body, or None for a media row (``media_path`` is read at send
            time, so large images are not duplicated into the database).
        media_path: a file relative to the storage root (or absolute), for media rows.
        inflight_since: when the current attempt started (``inflight`` rows only).
        done_at: when the row became ``sent`` or ``dead``.
        chunks: media rows only: the chunk indices still to send (None: all).
    """

    id: int
    event_id: str | None
    kind: str
    priority: int
    topic: str
    payload: bytes | None
    media_path: str | None
    created: float
    attempts: int
    next_attempt_at: float
    expires_at: float | None
    state: str
    inflight_since: float | None
    done_at: float | None
    last_error: str | None
    chunks: list[int] | None = None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OutboxRow:
        payload = r["payload"]
        chunks = r["chunks"]
        return cls(
            id=r["id"],
            event_id=r["event_id"],
            kind=r["kind"],
            priority=r["priority"],
            topic=r["topic"],
            payload=None if payload is None else bytes(payload),
            media_path=r["media_path"],
            created=r["created"],
            attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"],
            expires_at=r["expires_at"],
            state=r["state"],
            inflight_since=r["inflight_since"],
            done_at=r["done_at"],
            last_error=r["last_error"],
            chunks=None if chunks is None else [int(c) for c in json.loads(chunks)],
        )

    def to_json(self) -> dict[str, Any]:
        """A summary for ``camtrap outbox ls --json`` (the payload itself is left out)."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "kind": self.kind,
            "state": self.state,
            "topic": self.topic,
            "bytes": None if self.payload is None else len(self.payload),
            "media_path": self.media_path,
            "created": self.created,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "expires_at": self.expires_at,
            "last_error": self.last_error,
            "chunks": self.chunks,
        }


class Outbox:
    """The outbox table seen through one connection.

    Each thread builds its own ``Outbox`` on its own connection (the store thread enqueues,
    the uplink thread does everything else); SQLite's locking serialises their writes.

    Args:
        conn: a connection from :func:`edge_app.trap.store.db.open_db`.
        clock: wall time for ``now`` defaults.
        cfg: backoff limits.
        rng: random source of the backoff jitter (inject a seeded one in tests).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        clock: Clock,
        cfg: OutboxConfig,
        rng: random.Random | None = None,
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._cfg = cfg
        self._rng = rng or random.Random()  # jitter, not cryptography

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (for a caller that groups several updates in one transaction)."""
        return self._conn

    def _now(self, now: float | None) -> float:
        return self._clock.wall() if now is None else now

    # -- producer side ------------------------------------------------------------------

    def enqueue(
        self,
        kind: Kind | str,
        topic: str,
        *,
        payload: bytes | None = None,
        media_path: str | None = None,
        event_id: str | None = None,
        expires_at: float | _Default | None = BY_KIND,
        now: float | None = None,
        chunks: Sequence[int] | None = None,
    ) -> int:
        """Add a ready row; joins the caller's transaction if one is open.

        Args:
            kind: one of :class:`Kind`; sets the priority.
            topic: where the link publishes it (for media rows, the chunk index is appended).
            payload: the message body (exclusive with ``media_path``).
            media_path: a media file written *before* this call (atomically).
            event_id: the event the row belongs to, for dedupe and ``ls``.
            expires_at: wall time after which the row is not worth sending; None: never;
                :data:`BY_KIND` (default): ``outbox.<kind>_expiry_s`` from the config.
            now: creation time (default: the clock).
            chunks: media rows only: send just these chunk indices (a receiver's request).

        Returns:
            The row id.

        Raises:
            ValueError: unknown kind, or neither/both of payload and media_path.
        """
        k = Kind(kind)
        if (payload is None) == (media_path is None):
            raise ValueError("give exactly one of payload and media_path")
        if chunks is not None and media_path is None:
            raise ValueError("chunks only apply to media rows")
        t = self._now(now)
        expiry = self.expiry_for(k, t) if expires_at is BY_KIND else expires_at
        chunk_json = None if chunks is None else json.dumps(sorted({int(c) for c in chunks}))
        with transaction(self._conn):
            cur = self._conn.execute(
                "INSERT INTO outbox (event_id, kind, priority, topic, payload, media_path, "
                "created, next_attempt_at, expires_at, chunks) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event_id, k.value, PRIORITY[k], topic, payload, media_path, t, t, expiry,
                 chunk_json),
            )
        row_id = cur.lastrowid
        assert row_id is not None
        return row_id

    def expiry_for(self, kind: Kind | str, now: float) -> float | None:
        """When a row of ``kind`` created at ``now`` expires (None: never)."""
        seconds = {
            Kind.ALERT: self._cfg.alert_expiry_s,
            Kind.STATUS: self._cfg.status_expiry_s,
            Kind.EVENT: self._cfg.event_expiry_s,
            Kind.THUMB: self._cfg.thumb_expiry_s,
            Kind.IMAGE: self._cfg.image_expiry_s,
        }[Kind(kind)]
        return now + seconds if seconds > 0 else None

    # -- link side ----------------------------------------------------------------------

    def _skew_s(self) -> float:
        """How far ahead a retry time may be before we assume the clock stepped back."""
        return self._cfg.backoff_max_s + 1.0

    def due(
        self,
        now: float | None = None,
        limit: int = 10,
        *,
        max_priority: int | None = None,
    ) -> list[OutboxRow]:
        """Ready rows whose time has come, most urgent first (priority, then age).

        Args:
            now: reference time (None: the clock).
            limit: at most this many rows.
            max_priority: only rows of this priority or more urgent (e.g. to hold full images
                back while the link is not good enough for them).
        """
        t = self._now(now)
        rows = self._conn.execute(
            "SELECT * FROM outbox WHERE state = 'ready' "
            "AND (next_attempt_at <= :now OR next_attempt_at > :now + :skew) "
            "AND (expires_at IS NULL OR expires_at > :now) "
            "AND priority <= :maxp "
            "ORDER BY priority, id LIMIT :limit",
            {"now": t, "skew": self._skew_s(), "limit": max(0, limit),
             "maxp": max(PRIORITY.values()) if max_priority is None else max_priority},
        ).fetchall()
        return [OutboxRow.from_row(r) for r in rows]

    def next_ready_at(
        self, now: float | None = None, *, max_priority: int | None = None
    ) -> float | None:
        """When the next ready row becomes due (None if there is none).

        Capped at ``now + backoff_max_s`` so a backwards clock step cannot put it far off.

        Args:
            now: reference time (None: the clock).
            max_priority: only rows of this priority or more urgent (as in :meth:`due`).
        """
        return self._next_timer(State.READY, now, self._skew_s(), max_priority)

    def next_receipt_deadline(self, now: float | None = None) -> float | None:
        """When the first ``acked-by-broker`` row times out (None if there is none)."""
        return self._next_timer(State.ACKED, now, self._cfg.receipt_timeout_max_s + 1.0)

    def _next_timer(
        self, state: State, now: float | None, cap_s: float, max_priority: int | None = None
    ) -> float | None:
        t = self._now(now)
        # Expired rows are never served (see due()), so they must not wake anyone either.
        # INDEXED BY: walk the timer index in time order and stop at the first match; the
        # planner would otherwise pick outbox_service and scan every ready row (a 10,000-row
        # backlog made each turn of the uplink loop 20 times slower).
        r = self._conn.execute(
            "SELECT next_attempt_at FROM outbox INDEXED BY outbox_timer "
            "WHERE state = ? AND priority <= ? AND (expires_at IS NULL OR expires_at > ?) "
            "ORDER BY next_attempt_at LIMIT 1",
            (state.value, max(PRIORITY.values()) if max_priority is None else max_priority, t),
        ).fetchone()
        if r is None:
            return None
        return min(float(r[0]), t + cap_s)

    def oldest_inflight_since(self) -> float | None:
        """Start of the oldest in-flight attempt (None if nothing is in flight)."""
        r = self._conn.execute(
            "SELECT MIN(inflight_since) FROM outbox WHERE state = 'inflight'"
        ).fetchone()
        return None if r[0] is None else float(r[0])

    def mark_inflight(self, row_id: int, now: float | None = None) -> None:
        """An attempt starts: count it and remember when (for the in-flight timeout)."""
        self._conn.execute(
            "UPDATE outbox SET state = 'inflight', attempts = attempts + 1, "
            "inflight_since = ? WHERE id = ? AND state = 'ready'",
            (self._now(now), row_id),
        )

    def mark_inflight_many(self, row_ids: Iterable[int], now: float | None = None) -> None:
        """:meth:`mark_inflight` for several rows in one transaction (one fsync)."""
        t = self._now(now)
        with transaction(self._conn):
            for rid in row_ids:
                self.mark_inflight(rid, t)

    def mark_sent(self, row_ids: int | Iterable[int], now: float | None = None) -> int:
        """The link confirmed delivery; returns how many rows changed.

        Takes several ids so that a burst of PUBACKs costs one fsync, not one each. A row
        already ``sent`` is left alone; a row that was requeued in the meantime is still
        marked sent (the broker did confirm it).
        """
        ids = [row_ids] if isinstance(row_ids, int) else list(row_ids)
        if not ids:
            return 0
        t = self._now(now)
        n = 0
        with transaction(self._conn):
            for rid in ids:
                cur = self._conn.execute(
                    "UPDATE outbox SET state = 'sent', done_at = ?, inflight_since = NULL, "
                    "last_error = NULL, chunks = NULL "
                    "WHERE id = ? AND state IN ('inflight', 'ready', 'acked-by-broker')",
                    (t, rid),
                )
                n += cur.rowcount
        return n

    def receipt_timeout_s(self, attempts: int) -> float:
        """How long an ``acked-by-broker`` row waits for its receipt before it is resent.

        Doubles per attempt up to ``receipt_timeout_max_s``: a unit whose receiver is away for
        a week must not resend every alert every few minutes over a metered link.
        """
        exp = min(max(attempts - 1, 0), _MAX_EXPONENT)
        return float(min(self._cfg.receipt_timeout_max_s, self._cfg.receipt_timeout_s * (2**exp)))

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
        """A receiver's receipt: the event rows of these ids reached it; they are sent.

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
                    f"last_error = NULL WHERE kind IN ('alert', 'event') AND event_id IN "
                    f"({marks}) AND state IN ('ready', 'inflight', 'acked-by-broker') "
                    f"RETURNING id, kind",
                    (t, *part),
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

    def requeue(
        self, row_id: int, now: float | None, error: str, chunks: Sequence[int] | None = None
    ) -> str | None:
        """An attempt got no answer in time: back to ready at once (no backoff).

        No backoff because the cause is a lost message, not a refusal. A media row that has
        used ``max_media_attempts`` becomes ``dead`` instead (an image that never gets through
        a bad link must not hold the link forever); alerts and events are never given up.

        Args:
            row_id: the row.
            now: time (None: the clock).
            error: why, kept in ``last_error``.
            chunks: media rows: the chunks still to send (None: keep the current list).

        Returns:
            The new state, or None if the row was not in flight or ready.
        """
        return self._retry(row_id, self._now(now), error, chunks, backoff=False)

    def _retry(
        self, row_id: int, t: float, error: str, chunks: Sequence[int] | None, backoff: bool
    ) -> str | None:
        with transaction(self._conn):
            r = self._conn.execute(
                "SELECT attempts, kind FROM outbox WHERE id = ? "
                "AND state IN ('inflight', 'ready')",
                (row_id,),
            ).fetchone()
            if r is None:
                return None
            attempts, kind = int(r[0]), str(r[1])
            if kind in MEDIA_KINDS and attempts >= self._cfg.max_media_attempts:
                self._conn.execute(
                    "UPDATE outbox SET state = 'dead', done_at = ?, inflight_since = NULL, "
                    "last_error = ? WHERE id = ?",
                    (t, f"gave up after {attempts} attempts: {error}"[:500], row_id),
                )
                logger.error("outbox row %d (%s) given up after %d attempts: %s", row_id, kind,
                             attempts, error)
                return State.DEAD.value
            when = t + self.backoff_s(max(attempts, 1)) if backoff else t
            sets = "state = 'ready', next_attempt_at = ?, inflight_since = NULL, last_error = ?"
            params: list[Any] = [when, error[:500]]
            if chunks is not None:
                sets += ", chunks = ?"
                params.append(json.dumps(sorted({int(c) for c in chunks})))
            self._conn.execute(f"UPDATE outbox SET {sets} WHERE id = ?",  # noqa: S608 - constant
                               (*params, row_id))
        return State.READY.value

    def backoff_s(self, attempts: int) -> float:
        """Full-jitter exponential backoff: uniform in [0, min(max, min × 2^(attempts−1))].

        Full jitter spreads the retries of many units that lost the same base station, so
        they do not all come back in the same second.
        """
        exp = min(max(attempts - 1, 0), _MAX_EXPONENT)
        cap = min(self._cfg.backoff_max_s, self._cfg.backoff_min_s * (2**exp))
        return self._rng.uniform(0.0, cap)

    def mark_failed(
        self, row_id: int, now: float | None, error: str, chunks: Sequence[int] | None = None
    ) -> float | None:
        """The attempt failed: back to ready after a backoff.

        Args:
            row_id: the row.
            now: time of the failure (None: the clock).
            error: why, kept in ``last_error`` for ``camtrap outbox ls``.
            chunks: media rows: the chunks still to send (None: keep the current list).

        Returns:
            The time of the next attempt, or None if the row was not in flight or ready, or
            was given up (a media row out of attempts, see :meth:`requeue`).
        """
        t = self._now(now)
        state = self._retry(row_id, t, error, chunks, backoff=True)
        if state != State.READY:
            return None
        r = self._conn.execute("SELECT next_attempt_at FROM outbox WHERE id = ?",
                               (row_id,)).fetchone()
        return float(r[0])

    def mark_dead(self, row_id: int, now: float | None, error: str) -> None:
        """Give up on a row that can never be sent (e.g. its media file is gone)."""
        self._conn.execute(
            "UPDATE outbox SET state = 'dead', done_at = ?, inflight_since = NULL, "
            "last_error = ? WHERE id = ? AND state IN ('ready', 'inflight')",
            (self._now(now), error[:500], row_id),
        )

    def requeue_stale_inflight(self, now: float | None, timeout_s: float) -> list[int]:
        """Return rows in flight for longer than ``timeout_s`` to ready (sent again at once).

        Returns:
            The ids requeued, so the link can forget its message ids for them.
        """
        t = self._now(now)
        with transaction(self._conn):
            ids = [
                int(r[0])
                for r in self._conn.execute(
                    "SELECT id FROM outbox WHERE state = 'inflight' "
                    "AND (inflight_since <= ? OR inflight_since > ?)",
                    (t - timeout_s, t + timeout_s),
                )
            ]
            for rid in ids:
                self._conn.execute(
                    "UPDATE outbox SET state = 'ready', inflight_since = NULL, "
                    "next_attempt_at = ?, last_error = 'no acknowledgement in time' "
                    "WHERE id = ?",
                    (t, rid),
                )
        if ids:
            logger.warning("requeued %d message(s) unacknowledged after %.0f s", len(ids),
                           timeout_s)
        return ids

    def restart_inflight(self, now: float | None = None) -> int:
        """Restart the in-flight clock of every in-flight row (after a reconnect).

        The MQTT client resends its unacknowledged messages when it reconnects; their
        timeout must count from then, or a long outage would make every one of them look
        stale and be sent twice.
        """
        cur = self._conn.execute(
            "UPDATE outbox SET inflight_since = ? WHERE state = 'inflight'", (self._now(now),)
        )
        return cur.rowcount

    def recover(self, now: float | None = None) -> int:
        """At start-up: rows in flight when the process died go back to ready, due now."""
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'ready', inflight_since = NULL, next_attempt_at = ? "
            "WHERE state = 'inflight'",
            (self._now(now),),
        )
        if cur.rowcount:
            logger.info("recovered %d in-flight message(s) from the last run", cur.rowcount)
        return cur.rowcount

    def expire(self, now: float | None = None) -> int:
        """Ready rows past their expiry become dead; returns how many."""
        t = self._now(now)
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'dead', done_at = ?, last_error = 'expired' "
            "WHERE state = 'ready' AND expires_at IS NOT NULL AND expires_at <= ?",
            (t, t),
        )
        if cur.rowcount:
            logger.warning("%d message(s) expired undelivered", cur.rowcount)
        return cur.rowcount

    # -- inspection and housekeeping ----------------------------------------------------

    def mark_media_pruned(self, media_path: str, now: float | None = None) -> int:
        """A media file was deleted to free space: its unsent rows can never be sent."""
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'dead', done_at = ?, inflight_since = NULL, "
            "last_error = 'pruned: disk low' WHERE media_path = ? "
            "AND state IN ('ready', 'inflight', 'acked-by-broker')",
            (self._now(now), media_path),
        )
        return cur.rowcount

    def resend_events(self, event_ids: Sequence[str], now: float | None = None) -> list[str]:
        """Send these events' JSON again (a receiver lost them); returns the ids requeued.

        A row that is still waiting (ready, in flight) is left as it is; a finished one
        (sent, dead, acked-by-broker) goes back to ready, due now. An event whose row was
        purged gets a new row from the catalogue. Audit samples are never sent.
        """
        t = self._now(now)
        done: list[str] = []
        with transaction(self._conn):
            for eid in dict.fromkeys(event_ids):
                ev = self._conn.execute(
                    "SELECT outcome, audit, event_json, unit FROM events WHERE id = ?", (eid,)
                ).fetchone()
                if ev is None or ev["audit"] or ev["outcome"] not in ("alert", "keep"):
                    continue
                row = self._conn.execute(
                    "SELECT id, state, topic FROM outbox WHERE event_id = ? "
                    "AND kind IN ('alert', 'event') ORDER BY id DESC LIMIT 1",
                    (eid,),
                ).fetchone()
                if row is None:
                    kind = Kind.ALERT if ev["outcome"] == "alert" else Kind.EVENT
                    topic = self._event_topic(eid)
                    if topic is None:
                        continue
                    self.enqueue(kind, topic, payload=ev["event_json"].encode("utf-8"),
                                 event_id=eid, expires_at=None, now=t)
                elif row["state"] not in ("ready", "inflight"):
                    self._conn.execute(
                        "UPDATE outbox SET state = 'ready', next_attempt_at = ?, done_at = NULL, "
                        "last_error = 'resend requested' WHERE id = ?",
                        (t, row["id"]),
                    )
                done.append(eid)
        return done

    def _event_topic(self, event_id: str) -> str | None:
        """The topic of an earlier event row of the same unit (the prefix is not stored)."""
        r = self._conn.execute(
            "SELECT topic FROM outbox WHERE kind IN ('alert', 'event') "
            "AND event_id LIKE ? ORDER BY id DESC LIMIT 1",
            (event_id.rsplit("-", 1)[0] + "-%",),
        ).fetchone()
        return None if r is None else str(r[0])

    def depth(self) -> dict[str, int]:
        """Unsent rows (ready, in flight, acked-by-broker) per kind, every kind present."""
        out = {k.value: 0 for k in Kind}
        for r in self._conn.execute(
            "SELECT kind, COUNT(*) FROM outbox "
            "WHERE state IN ('ready', 'inflight', 'acked-by-broker') GROUP BY kind"
        ):
            out[r[0]] = int(r[1])
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        """Row counts per kind and state, every kind and state present."""
        out = {k.value: {s.value: 0 for s in State} for k in Kind}
        for r in self._conn.execute(
            "SELECT kind, state, COUNT(*) FROM outbox GROUP BY kind, state"
        ):
            out[r[0]][r[1]] = int(r[2])
        return out

    def get(self, row_id: int) -> OutboxRow | None:
        """One row by id."""
        r = self._conn.execute("SELECT * FROM outbox WHERE id = ?", (row_id,)).fetchone()
        return None if r is None else OutboxRow.from_row(r)

    def ls(
        self,
        limit: int = 50,
        states: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> list[OutboxRow]:
        """Rows in service order: in flight, ready, acked, dead, sent; then priority and age."""
        conds: list[str] = []
        params: list[Any] = []
        if states:
            conds.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(State(s).value for s in states)
        if kinds:
            conds.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params.extend(Kind(k).value for k in kinds)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        params.append(max(0, limit))
        rows = self._conn.execute(
            f"SELECT * FROM outbox {where} ORDER BY CASE state WHEN 'inflight' THEN 0 "  # noqa: S608 - placeholders only
            "WHEN 'ready' THEN 1 WHEN 'acked-by-broker' THEN 2 WHEN 'dead' THEN 3 ELSE 4 END, "
            "priority, id LIMIT ?",
            params,
        ).fetchall()
        return [OutboxRow.from_row(r) for r in rows]

    def purge(
        self,
        states: Sequence[str] = (State.SENT,),
        older_than_s: float = 0.0,
        now: float | None = None,
    ) -> int:
        """Delete finished rows; returns how many.

        Args:
            states: which states to delete. Purging ``ready`` or ``inflight`` rows throws
                messages away and is only for an operator who means it.
            older_than_s: keep rows finished (or, if unfinished, created) more recently.
            now: reference time (None: the clock).
        """
        if not states:
            return 0
        t = self._now(now)
        values = [State(s).value for s in states]
        cur = self._conn.execute(
            f"DELETE FROM outbox WHERE state IN ({', '.join('?' for _ in values)}) "  # noqa: S608 - placeholders only
            "AND COALESCE(done_at, created) <= ?",
            (*values, t - older_than_s),
        )
        return cur.rowcount
