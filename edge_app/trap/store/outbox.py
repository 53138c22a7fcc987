"""The durable outbox: every message that must leave the trap, as a SQLite row with a state.

Why our own queue: paho keeps unacknowledged QoS 1 messages only in memory and a LoRa modem
keeps nothing at all, so a reboot or a power cut would lose them. Here a message exists as a
row *before* anyone tries to send it, and it only leaves the ``ready``/``inflight`` states when
its link has confirmed delivery (MQTT PUBACK with a success reason code; LoRaWAN ACK, or the
transmission of an unconfirmed uplink)::

    ready ──mark_inflight──► inflight ──mark_sent──────────────────────► sent ──purge──► (gone)
      ▲                         │  │                                       ▲
      ├──mark_failed (backoff)──┘  └─mark_acked─► acked-by-broker ─receipt─┘
      ├──requeue (no ACK in time)─────────────────────┘ (no receipt in time: requeue_unreceipted)
      │
    ready ──expire──► dead      ready ──another link delivered it──► skipped
    recover(): inflight → ready        media file pruned: → dead

Transport-neutral: a row says *what* to deliver (``kind``: alert, status, event, thumb, image;
a payload or a media file; the event id) and *over which link* (``link``: ``mqtt`` or
``lorawan``). An alert on a unit with both links is two rows, one per link, each confirmed by
its own link. Each link renders its wire form at send time: the MQTT link its topics and
chunks, the LoRa link the 11-byte alert. Images, thumbnails and event JSON never go over LoRa
(refused here and by the schema).

``acked-by-broker`` (MQTT) exists because a broker's PUBACK is not delivery: a broker killed
with -9 can lose what it acknowledged. With receipts on, an ``alert``/``event`` row stays there
until the receiver's end-to-end receipt names its event id (see
:mod:`edge_app.trap.store.receipts`).

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
worth the airtime, a late alert always is (alerts never expire unless configured). Expiry,
purging and the other upkeep run in the store's housekeeping (:mod:`edge_app.trap.store.upkeep`),
whatever links are on.
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

from edge_app.core.backoff import Backoff
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


class Link(StrEnum):
    """Which link delivers a row."""

    MQTT = "mqtt"
    LORAWAN = "lorawan"


class State(StrEnum):
    """Where a row is in its life."""

    READY = "ready"
    INFLIGHT = "inflight"
    ACKED = "acked-by-broker"
    SENT = "sent"
    SKIPPED = "skipped"
    DEAD = "dead"


#: Kinds that carry event JSON and are confirmed by the receiver's receipt (when enabled).
RECEIPT_KINDS: frozenset[str] = frozenset({"alert", "event"})
#: Kinds whose row points to a media file.
MEDIA_KINDS: frozenset[str] = frozenset({"thumb", "image"})
#: States of a row that has not reached the receiver yet (what ``depth`` counts).
UNSENT_STATES: tuple[str, ...] = ("ready", "inflight", "acked-by-broker")
#: States of a finished row (what housekeeping may purge after a while).
DONE_STATES: tuple[str, ...] = ("sent", "skipped", "dead")
#: What each link can carry: 11 bytes of LoRa airtime are for alerts (and status), never media.
LINK_KINDS: dict[Link, frozenset[str]] = {
    Link.MQTT: frozenset(k.value for k in Kind),
    Link.LORAWAN: frozenset({"alert", "status"}),
}


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


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox row, as read.

    Attributes:
        link: which link delivers it (``mqtt``, ``lorawan``).
        payload: the message body, or None for a media row (``media_path`` is read at send
            time, so large images are not duplicated into the database).
        media_path: a file relative to the storage root (or absolute), for media rows.
        inflight_since: when the current attempt started (``inflight`` rows only).
        done_at: when the row became ``sent``, ``skipped`` or ``dead``.
        chunks: media rows only: the chunk indices still to send (None: all).
        confirmed: LoRa rows: True if an ACK confirmed it, False if sent unconfirmed.
    """

    id: int
    event_id: str | None
    kind: str
    link: str
    priority: int
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
    confirmed: bool | None = None

    @property
    def media_id(self) -> str | None:
        """``<event id>-<kind>`` of a media row (what the receiver files it under)."""
        if self.kind not in MEDIA_KINDS or not self.event_id:
            return None
        return f"{self.event_id}-{self.kind}"

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OutboxRow:
        payload, chunks, confirmed = r["payload"], r["chunks"], r["confirmed"]
        return cls(
            id=r["id"], event_id=r["event_id"], kind=r["kind"], link=r["link"],
            priority=r["priority"], payload=None if payload is None else bytes(payload),
            media_path=r["media_path"], created=r["created"], attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"], expires_at=r["expires_at"],
            state=r["state"], inflight_since=r["inflight_since"], done_at=r["done_at"],
            last_error=r["last_error"],
            chunks=None if chunks is None else [int(c) for c in json.loads(chunks)],
            confirmed=None if confirmed is None else bool(confirmed),
        )

    def to_json(self) -> dict[str, Any]:
        """A summary for ``camtrap outbox ls --json`` (the payload itself is left out)."""
        return {
            "id": self.id, "event_id": self.event_id, "kind": self.kind, "link": self.link,
            "state": self.state,
            "bytes": None if self.payload is None else len(self.payload),
            "media_path": self.media_path, "created": self.created, "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at, "expires_at": self.expires_at,
            "last_error": self.last_error, "chunks": self.chunks, "confirmed": self.confirmed,
        }


def _in(values: Sequence[str]) -> str:
    return ", ".join("?" for _ in values)


class OutboxReader:
    """The outbox table seen through one connection, read only: what is due, and what is
    there (for the links' timers, the stats message and ``camtrap outbox``).

    Args:
        conn: a connection from :func:`edge_app.trap.store.db.open_db`.
        clock: wall time for ``now`` defaults.
        cfg: the outbox settings (the longest backoff bounds a clock step back).
    """

    def __init__(self, conn: sqlite3.Connection, clock: Clock, cfg: OutboxConfig) -> None:
        self._conn = conn
        self._clock = clock
        self._cfg = cfg

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (for a caller that groups several updates in one transaction)."""
        return self._conn

    @property
    def cfg(self) -> OutboxConfig:
        return self._cfg

    def _now(self, now: float | None) -> float:
        return self._clock.wall() if now is None else now

    # -- link side: what is due ---------------------------------------------------------

    def skew_s(self) -> float:
        """How far ahead a retry time may be before we assume the clock stepped back."""
        return self._cfg.backoff_max_s + 1.0

    def due(
        self,
        now: float | None = None,
        limit: int = 10,
        *,
        link: Link | str | None = None,
        max_priority: int | None = None,
    ) -> list[OutboxRow]:
        """Ready rows whose time has come, most urgent first (priority, then age).

        Args:
            now: reference time (None: the clock).
            limit: at most this many rows.
            link: only this link's rows (None: every link's, for inspection).
            max_priority: only rows of this priority or more urgent (e.g. to hold full images
                back while the link is not good enough for them).
        """
        t = self._now(now)
        # "link = :link" literally, not "(:link IS NULL OR ...)": only then does the planner
        # walk outbox_service in service order (the other form sorted every ready row of a
        # 10,000-row backlog at each turn of the uplink loop).
        rows = self._conn.execute(
            "SELECT * FROM outbox WHERE state = 'ready' "  # noqa: S608 - constant text only
            + ("" if link is None else "AND link = :link ")
            + "AND (next_attempt_at <= :now OR next_attempt_at > :now + :skew) "
            "AND (expires_at IS NULL OR expires_at > :now) "
            "AND priority <= :maxp "
            "ORDER BY priority, id LIMIT :limit",
            {"now": t, "skew": self.skew_s(), "limit": max(0, limit),
             "link": None if link is None else Link(link).value,
             "maxp": max(PRIORITY.values()) if max_priority is None else max_priority},
        ).fetchall()
        return [OutboxRow.from_row(r) for r in rows]

    def next_ready_at(
        self, now: float | None = None, *, link: Link | str | None = None,
        max_priority: int | None = None,
    ) -> float | None:
        """When the next ready row becomes due (None if there is none).

        Capped at ``now + backoff_max_s`` so a backwards clock step cannot put it far off.
        """
        return self.next_timer(State.READY, now, self.skew_s(), link, max_priority)

    def next_timer(
        self, state: State, now: float | None, cap_s: float, link: Link | str | None = None,
        max_priority: int | None = None,
    ) -> float | None:
        """The earliest ``next_attempt_at`` of unexpired rows in ``state``, capped at
        ``now + cap_s`` (None if there is none)."""
        t = self._now(now)
        links = [Link(link).value] if link is not None else [lk.value for lk in Link]
        maxp = max(PRIORITY.values()) if max_priority is None else max_priority
        best: float | None = None
        for lk in links:
            # Expired rows are never served (see due()), so they must not wake anyone either.
            # INDEXED BY: walk the timer index in time order and stop at the first match; the
            # planner would otherwise pick outbox_service and scan every ready row (a
            # 10,000-row backlog made each turn of the uplink loop 20 times slower).
            r = self._conn.execute(
                "SELECT next_attempt_at FROM outbox INDEXED BY outbox_timer "
                "WHERE link = ? AND state = ? AND priority <= ? "
                "AND (expires_at IS NULL OR expires_at > ?) "
                "ORDER BY next_attempt_at LIMIT 1",
                (lk, state.value, maxp, t),
            ).fetchone()
            if r is not None and (best is None or float(r[0]) < best):
                best = float(r[0])
        return None if best is None else min(best, t + cap_s)

    # -- inspection ---------------------------------------------------------------------

    def depth(self, link: Link | str | None = None) -> dict[str, int]:
        """Unsent rows (ready, in flight, acked-by-broker) per kind, every kind present."""
        out = {k.value: 0 for k in Kind}
        lk = None if link is None else Link(link).value
        for r in self._conn.execute(
            "SELECT kind, COUNT(*) FROM outbox WHERE state IN "
            "('ready', 'inflight', 'acked-by-broker') AND (? IS NULL OR link = ?) GROUP BY kind",
            (lk, lk),
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
        links: Sequence[str] | None = None,
    ) -> list[OutboxRow]:
        """Rows in service order: in flight, ready, acked, dead, skipped, sent; then priority
        and age."""
        conds: list[str] = []
        params: list[Any] = []
        for column, values, enum_type in (("state", states, State), ("kind", kinds, Kind),
                                          ("link", links, Link)):
            if values:
                conds.append(f"{column} IN ({_in(values)})")
                params.extend(enum_type(v).value for v in values)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        params.append(max(0, limit))
        rows = self._conn.execute(
            f"SELECT * FROM outbox {where} ORDER BY CASE state WHEN 'inflight' THEN 0 "  # noqa: S608 - placeholders only
            "WHEN 'ready' THEN 1 WHEN 'acked-by-broker' THEN 2 WHEN 'dead' THEN 3 "
            "WHEN 'skipped' THEN 4 ELSE 5 END, priority, id LIMIT ?",
            params,
        ).fetchall()
        return [OutboxRow.from_row(r) for r in rows]


class Outbox(OutboxReader):
    """The outbox table seen through one connection: what producers and links call.

    Each thread builds its own ``Outbox`` on its own connection (the store thread enqueues,
    each link thread serves its own rows); SQLite's locking serialises their writes.

    Args:
        conn: a connection from :func:`edge_app.trap.store.db.open_db`.
        clock: wall time for ``now`` defaults.
        cfg: backoff limits and expiry per kind.
        rng: random source of the backoff jitter (inject a seeded one in tests).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        clock: Clock,
        cfg: OutboxConfig,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(conn, clock, cfg)
        self._rng = rng or random.Random()  # jitter, not cryptography
        self.backoff = Backoff(cfg.backoff_min_s, cfg.backoff_max_s, "full")

    # -- producer side ------------------------------------------------------------------

    def enqueue(
        self,
        kind: Kind | str,
        *,
        link: Link | str = Link.MQTT,
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
            link: the link that delivers it (one row per link: an alert for MQTT and LoRa is
                two rows).
            payload: the message body (exclusive with ``media_path``).
            media_path: a media file written *before* this call (atomically).
            event_id: the event the row belongs to, for dedupe, media ids and ``ls``.
            expires_at: wall time after which the row is not worth sending; None: never;
                :data:`BY_KIND` (default): ``outbox.<kind>_expiry_s`` from the config.
            now: creation time (default: the clock).
            chunks: media rows only: send just these chunk indices (a receiver's request).

        Returns:
            The row id.

        Raises:
            ValueError: unknown kind or link, a kind the link cannot carry (an image over
                LoRa), or neither/both of payload and media_path.
        """
        k, lk = Kind(kind), Link(link)
        if k.value not in LINK_KINDS[lk]:
            raise ValueError(f"a {k.value} row cannot go over {lk.value}")
        if (payload is None) == (media_path is None):
            raise ValueError("give exactly one of payload and media_path")
        if chunks is not None and media_path is None:
            raise ValueError("chunks only apply to media rows")
        t = self._now(now)
        expiry = self.expiry_for(k, t) if expires_at is BY_KIND else expires_at
        chunk_json = None if chunks is None else json.dumps(sorted({int(c) for c in chunks}))
        with transaction(self._conn):
            cur = self._conn.execute(
                "INSERT INTO outbox (event_id, kind, link, priority, payload, media_path, "
                "created, next_attempt_at, expires_at, chunks) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event_id, k.value, lk.value, PRIORITY[k], payload, media_path, t, t, expiry,
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

    # -- link side: state changes -------------------------------------------------------

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

    def mark_sent(self, row_ids: int | Iterable[int], now: float | None = None, *,
                  confirmed: bool | None = None) -> int:
        """The link confirmed delivery; returns how many rows changed.

        Takes several ids so that a burst of PUBACKs costs one fsync, not one each. A row
        already ``sent`` is left alone; a row that was requeued in the meantime is still
        marked sent (the link did confirm it).

        Args:
            row_ids: the rows.
            now: time of the confirmation (None: the clock).
            confirmed: LoRa: whether an ACK confirmed it (None: not applicable).
        """
        ids = [row_ids] if isinstance(row_ids, int) else list(row_ids)
        if not ids:
            return 0
        t = self._now(now)
        conf = None if confirmed is None else int(confirmed)
        n = 0
        with transaction(self._conn):
            for rid in ids:
                cur = self._conn.execute(
                    "UPDATE outbox SET state = 'sent', done_at = ?, inflight_since = NULL, "
                    "last_error = NULL, chunks = NULL, confirmed = ? "
                    "WHERE id = ? AND state IN ('inflight', 'ready', 'acked-by-broker')",
                    (t, conf, rid),
                )
                n += cur.rowcount
        return n

    def requeue(
        self, row_id: int, now: float | None, error: str, chunks: Sequence[int] | None = None
    ) -> str | None:
        """An attempt got no answer in time: back to ready at once (no backoff).

        No backoff because the cause is a lost message, not a refusal. A media row that has
        used ``max_media_attempts`` becomes ``dead`` instead (an image that never gets through
        a bad link must not hold the link forever); alerts and events are never given up.

        Returns:
            The new state, or None if the row was not in flight or ready.
        """
        return self._retry(row_id, self._now(now), error, chunks, backoff=False)

    def mark_failed(
        self, row_id: int, now: float | None, error: str, chunks: Sequence[int] | None = None
    ) -> float | None:
        """The attempt failed: back to ready after a backoff (:attr:`backoff`, full jitter).

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
        if self._retry(row_id, t, error, chunks, backoff=True) != State.READY:
            return None
        r = self._conn.execute("SELECT next_attempt_at FROM outbox WHERE id = ?",
                               (row_id,)).fetchone()
        return float(r[0])

    def _retry(
        self, row_id: int, t: float, error: str, chunks: Sequence[int] | None, backoff: bool
    ) -> str | None:
        with transaction(self._conn):
            r = self._conn.execute(
                "SELECT attempts, kind FROM outbox WHERE id = ? "
                "AND state IN ('inflight', 'ready')", (row_id,)).fetchone()
            if r is None:
                return None
            attempts, kind = int(r[0]), str(r[1])
            if kind in MEDIA_KINDS and attempts >= self._cfg.max_media_attempts:
                self._conn.execute(
                    "UPDATE outbox SET state = 'dead', done_at = ?, inflight_since = NULL, "
                    "last_error = ? WHERE id = ?",
                    (t, f"gave up after {attempts} attempts: {error}"[:500], row_id))
                logger.error("outbox row %d (%s) given up after %d attempts: %s", row_id, kind,
                             attempts, error)
                return State.DEAD.value
            when = t + self.backoff_s(max(attempts, 1)) if backoff else t
            self.retry_at(row_id, when, error, chunks=chunks)
        return State.READY.value

    def retry_at(self, row_id: int, when: float, error: str, *,
                 chunks: Sequence[int] | None = None, attempts: int | None = None) -> bool:
        """Back to ready, due at ``when`` (a link that computes its own retry time, e.g. from
        the duty cycle). Returns False if the row was not in flight or ready.

        Args:
            row_id: the row.
            when: wall time of the next attempt.
            error: why, kept in ``last_error``.
            chunks: media rows: the chunks still to send (None: keep the current list).
            attempts: set the attempt count (None: keep it).
        """
        sets = ("state = 'ready', next_attempt_at = ?, inflight_since = NULL, last_error = ?, "
                "attempts = COALESCE(?, attempts)")
        params: list[Any] = [when, error[:500], attempts]
        if chunks is not None:
            sets += ", chunks = ?"
            params.append(json.dumps(sorted({int(c) for c in chunks})))
        cur = self._conn.execute(
            f"UPDATE outbox SET {sets} WHERE id = ? "  # noqa: S608 - constant
            "AND state IN ('inflight', 'ready')", (*params, row_id))
        return cur.rowcount > 0

    def backoff_s(self, attempts: int) -> float:
        """Full-jitter exponential backoff: uniform in [0, min(max, min × 2^(attempts−1))].

        Full jitter spreads the retries of many units that lost the same base station, so
        they do not all come back in the same second.
        """
        return self.backoff.delay(attempts, self._rng)

    def mark_dead(self, row_id: int, now: float | None, error: str) -> None:
        """Give up on a row that can never be sent (e.g. its media file is gone)."""
        self._conn.execute(
            "UPDATE outbox SET state = 'dead', done_at = ?, inflight_since = NULL, "
            "last_error = ? WHERE id = ? AND state IN ('ready', 'inflight')",
            (self._now(now), error[:500], row_id),
        )

    def mark_media_pruned(self, media_path: str, now: float | None = None) -> int:
        """A media file was deleted to free space: its unsent rows can never be sent."""
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'dead', done_at = ?, inflight_since = NULL, "
            "last_error = 'pruned: disk low' WHERE media_path = ? "
            "AND state IN ('ready', 'inflight', 'acked-by-broker')",
            (self._now(now), media_path),
        )
        return cur.rowcount

    # -- restart ------------------------------------------------------------------------

    def recover(self, now: float | None = None, *, link: Link | str | None = None) -> int:
        """At start-up: rows in flight when the process died go back to ready, due now."""
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'ready', inflight_since = NULL, next_attempt_at = ? "
            "WHERE state = 'inflight' AND (? IS NULL OR link = ?)",
            (self._now(now), *([None if link is None else Link(link).value] * 2)),
        )
        if cur.rowcount:
            logger.info("recovered %d in-flight message(s) from the last run", cur.rowcount)
        return cur.rowcount

    def resend_events(self, event_ids: Sequence[str], now: float | None = None) -> list[str]:
        """Send these events' JSON again over MQTT (a receiver lost them); returns the ids
        requeued.

        A row that is still waiting (ready, in flight) is left as it is; a finished one
        (sent, dead, acked-by-broker) goes back to ready, due now. An event whose row was
        purged gets a new row from the catalogue. Audit samples are never sent.
        """
        t = self._now(now)
        done: list[str] = []
        with transaction(self._conn):
            for eid in dict.fromkeys(event_ids):
                ev = self._conn.execute(
                    "SELECT outcome, audit, event_json FROM events WHERE id = ?", (eid,)
                ).fetchone()
                if ev is None or ev["audit"] or ev["outcome"] not in ("alert", "keep"):
                    continue
                row = self._conn.execute(
                    "SELECT id, state FROM outbox WHERE event_id = ? AND link = 'mqtt' "
                    "AND kind IN ('alert', 'event') ORDER BY id DESC LIMIT 1", (eid,),
                ).fetchone()
                if row is None:
                    kind = Kind.ALERT if ev["outcome"] == "alert" else Kind.EVENT
                    self.enqueue(kind, payload=ev["event_json"].encode("utf-8"), event_id=eid,
                                 expires_at=None, now=t)
                elif row["state"] not in ("ready", "inflight"):
                    self._conn.execute(
                        "UPDATE outbox SET state = 'ready', next_attempt_at = ?, done_at = NULL, "
                        "last_error = 'resend requested' WHERE id = ?", (t, row["id"]))
                done.append(eid)
        return done
