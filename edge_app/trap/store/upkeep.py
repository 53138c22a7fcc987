"""Outbox upkeep: expiry, purging of finished rows and the LoRa ledger's old rows.

Why here and not in a link: until schema v3 these ran in the MQTT link's loop, so a LoRa-only
trap (``mqtt.enabled = false``) never purged anything and its tables grew for as long as it
ran. The store owns the tables, so the store's housekeeping stage keeps them bounded, whatever
links are on (:class:`edge_app.trap.store.retention.Housekeeper` calls :meth:`OutboxUpkeep.tick`).

What is kept, and for how long:

* unsent rows (ready, in flight, acked-by-broker): until delivered or expired — never purged
  here. An alert row does not expire unless ``outbox.alert_expiry_s`` says so;
* ``sent`` and ``skipped`` rows: :data:`SENT_RETENTION_S` after they finished (a receiver that
  asks for a resend within a week finds the row; after that ``resend`` rebuilds it from the
  catalogue);
* ``dead`` rows: :data:`DEAD_RETENTION_S`, so a technician can still see what was given up and
  why (``camtrap outbox ls --state dead``);
* the LoRa airtime ledger: :data:`AIRTIME_RETENTION_S` (the longest window it enforces is 24 h).

The catalogue (``events``) is the trap's record of what it kept and is not purged.
"""

from __future__ import annotations

import logging
import sqlite3

from edge_app.core.clock import Clock
from edge_app.core.config import OutboxConfig
from edge_app.trap.store.db import transaction
from edge_app.trap.store.outbox import DONE_STATES, Link, State

logger = logging.getLogger(__name__)

SENT_RETENTION_S = 7 * 86400.0
DEAD_RETENTION_S = 30 * 86400.0
AIRTIME_RETENTION_S = 2 * 86400.0
EXPIRE_EVERY_S = 60.0
PURGE_EVERY_S = 3600.0


class OutboxUpkeep:
    """Expiry and purging on one connection (the housekeeping thread's).

    Args:
        conn: a connection from :func:`edge_app.trap.store.db.open_db`.
        clock: wall time for ``now`` defaults.
        cfg: the outbox settings (not used for expiry: each row carries its ``expires_at``).
    """

    def __init__(self, conn: sqlite3.Connection, clock: Clock, cfg: OutboxConfig) -> None:
        self._conn = conn
        self._clock = clock
        self._cfg = cfg
        self._next_expire: float | None = None
        self._next_purge: float | None = None

    def _now(self, now: float | None) -> float:
        return self._clock.wall() if now is None else now

    def tick(self, now: float | None = None) -> dict[str, int]:
        """Run what is due: expiry every :data:`EXPIRE_EVERY_S`, purging every
        :data:`PURGE_EVERY_S` (wall time; a clock stepping back runs them early, which is
        harmless). Returns what was done, for tests and logs."""
        t = self._now(now)
        done = {"expired": 0, "purged": 0, "airtime_purged": 0}
        if self._next_expire is None or t >= self._next_expire or t < self._next_expire - \
                EXPIRE_EVERY_S:
            done["expired"] = self.expire(t)
            self._next_expire = t + EXPIRE_EVERY_S
        if self._next_purge is None or t >= self._next_purge or t < self._next_purge - \
                PURGE_EVERY_S:
            done["purged"] = self.purge_finished(t)
            done["airtime_purged"] = self.purge_airtime(t)
            self._next_purge = t + PURGE_EVERY_S
        return done

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

    def purge(
        self,
        states: tuple[str, ...] | list[str] = (State.SENT,),
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

    def purge_finished(self, now: float | None = None) -> int:
        """The retention policy of the module docstring, in one transaction."""
        t = self._now(now)
        with transaction(self._conn):
            n = self.purge([s for s in DONE_STATES if s != State.DEAD], SENT_RETENTION_S, t)
            n += self.purge([State.DEAD.value], DEAD_RETENTION_S, t)
        if n:
            logger.info("outbox: purged %d finished row(s)", n)
        return n

    def purge_airtime(self, now: float | None = None) -> int:
        """Forget airtime older than any window the LoRa ledger enforces."""
        t = self._now(now)
        cur = self._conn.execute("DELETE FROM lora_airtime WHERE ts < ?",
                                 (t - AIRTIME_RETENTION_S,))
        return cur.rowcount

    def adopt_alerts(self, link: Link | str, since: float, now: float | None = None) -> int:
        """Queue for ``link`` the alerts catalogued since ``since`` that have no row on it.

        For a link that was off (or not yet in the schema, before v3) when they were stored:
        the LoRa link calls it when it starts, with ``since`` its ``max_age_s`` ago, so an
        alert decided just before a software update or before LoRa was switched on still goes.
        The window is capped at :data:`SENT_RETENTION_S`, inside which a delivered row has
        not been purged yet (so nothing delivered is adopted twice).

        Returns:
            How many rows were queued.
        """
        t = self._now(now)
        lk = Link(link).value
        cur = self._conn.execute(
            "INSERT INTO outbox (event_id, kind, link, priority, payload, created, "
            "next_attempt_at) "
            "SELECT e.id, 'alert', ?, 0, CAST(e.event_json AS BLOB), ?, ? FROM events e "
            "WHERE e.outcome = 'alert' AND e.audit = 0 AND e.ts >= ? AND NOT EXISTS "
            "(SELECT 1 FROM outbox o WHERE o.event_id = e.id AND o.link = ? "
            "AND o.kind = 'alert') ORDER BY e.ts, e.id",
            (lk, t, t, max(since, t - SENT_RETENTION_S), lk),
        )
        if cur.rowcount:
            logger.info("outbox: %d alert(s) queued for %s that it had not seen", cur.rowcount,
                        lk)
        return cur.rowcount
