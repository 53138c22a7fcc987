"""The LoRa link's view of the outbox: its alert rows with the event facts its policy needs.

Why a view of its own: the LoRa link picks what to send by ``lorawan.priority`` (people before
leopards), by the event's age (stale alerts are not worth scarce airtime when another link
carries them) and, in fallback mode, by whether MQTT delivered the alert first. Those facts
live in the catalogue and in the MQTT rows of the same event, so the link reads its rows
joined with them here, in the store, instead of keeping tables and SQL of its own (before
schema v3 it had ``lora_tx`` and ``lora_meta``, outside the versioned schema).

Attempts count transmissions only: a row is not marked in flight while the modem works (the
send is synchronous within one router step, and a crash mid-send must not count an attempt
that never reached the air). The LoRa link's own state (last status time, the mode and status
interval set by downlink) is kept in ``meta`` under ``lorawan.``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from edge_app.trap.store.outbox import Link

#: MQTT states in which an alert counts as delivered (fallback mode skips its LoRa row).
MQTT_DELIVERED: tuple[str, ...] = ("sent", "acked-by-broker")
_META = "lorawan."


@dataclass(frozen=True, slots=True)
class Waiting:
    """A LoRa alert row that still has to go, with its event's facts.

    Attributes:
        row_id: the outbox row.
        event_ts: wall time of the trigger (the age that ``lorawan.max_age_s`` limits).
        created: when the row was queued (the fallback delay counts from here).
        next_attempt_at: not before this (a retry's time).
        elsewhere: another link carries this alert too (an MQTT row not given up): the LoRa
            row may then be dropped when stale or out of attempts; a LoRa-only alert never is.
    """

    row_id: int
    event_id: str
    seq: int
    label: str
    species: str | None
    score: float
    event_ts: float
    event_json: str
    created: float
    attempts: int
    next_attempt_at: float
    elsewhere: bool


class LoraRows:
    """The LoRa link's rows on its own connection (the router's thread).

    Args:
        conn: a connection from :func:`edge_app.trap.store.db.open_db`.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def waiting(self, limit: int = 10_000) -> list[Waiting]:
        """Ready LoRa alert rows, oldest trigger first, with their events."""
        rows = self._conn.execute(
            "SELECT o.id, o.event_id, e.seq, e.label, e.species, e.score, e.ts, e.event_json, "
            "o.created, o.attempts, o.next_attempt_at, EXISTS (SELECT 1 FROM outbox m "
            "WHERE m.event_id = o.event_id AND m.link != o.link AND m.kind = 'alert' "
            "AND m.state IN ('ready', 'inflight', 'acked-by-broker', 'sent')) "
            "FROM outbox o JOIN events e ON e.id = o.event_id "
            "WHERE o.link = ? AND o.kind = 'alert' AND o.state = 'ready' "
            "ORDER BY e.ts, o.id LIMIT ?", (Link.LORAWAN.value, max(0, limit))).fetchall()
        return [Waiting(int(r[0]), str(r[1]), int(r[2]), str(r[3]), r[4], float(r[5]),
                        float(r[6]), str(r[7]), float(r[8]), int(r[9]), float(r[10]),
                        bool(r[11])) for r in rows]

    def orphans(self, now: float) -> int:
        """Ready LoRa rows whose event left the catalogue can never be rendered: dead."""
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'dead', done_at = ?, "
            "last_error = 'event no longer in the catalogue' WHERE link = ? AND state = 'ready' "
            "AND (event_id IS NULL OR NOT EXISTS (SELECT 1 FROM events e "
            "WHERE e.id = outbox.event_id))", (now, Link.LORAWAN.value))
        return cur.rowcount

    def sent(self, row_id: int, now: float, attempts: int, confirmed: bool) -> None:
        """The network ACKed it (or, unconfirmed, the modem transmitted it)."""
        self._conn.execute(
            "UPDATE outbox SET state = 'sent', done_at = ?, attempts = ?, confirmed = ?, "
            "last_error = NULL, inflight_since = NULL WHERE id = ? AND state = 'ready'",
            (now, attempts, int(confirmed), row_id))

    def retry(self, row_id: int, when: float, attempts: int, error: str) -> None:
        """Not delivered this time: try again at ``when``."""
        self._conn.execute(
            "UPDATE outbox SET next_attempt_at = ?, attempts = ?, last_error = ? "
            "WHERE id = ? AND state = 'ready'", (when, attempts, error[:200], row_id))

    def give_up(self, row_ids: list[int], now: float, error: str,
                attempts: int | None = None) -> None:
        """Drop rows from the LoRa queue (only ever rows another link carries)."""
        self._conn.executemany(
            "UPDATE outbox SET state = 'dead', done_at = ?, last_error = ?, "
            "attempts = COALESCE(?, attempts) WHERE id = ? AND state = 'ready'",
            [(now, error[:200], attempts, rid) for rid in row_ids])

    def skip_delivered(self, now: float) -> int:
        """Fallback mode: LoRa rows of alerts that MQTT delivered first are not needed."""
        cur = self._conn.execute(
            "UPDATE outbox SET state = 'skipped', done_at = ?, last_error = 'delivered by MQTT' "
            "WHERE link = ? AND kind = 'alert' AND state = 'ready' AND EXISTS "
            "(SELECT 1 FROM outbox m WHERE m.event_id = outbox.event_id AND m.link = ? "
            "AND m.kind = 'alert' AND m.state IN (?, ?))",
            (now, Link.LORAWAN.value, Link.MQTT.value, *MQTT_DELIVERED))
        return cur.rowcount

    def meta(self) -> dict[str, str]:
        """The link's persisted state, keys without the ``lorawan.`` prefix."""
        rows = self._conn.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                                  (_META + "%",)).fetchall()
        return {str(k)[len(_META):]: str(v) for k, v in rows}

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           (_META + key, value))

    def delete_meta(self, key: str) -> None:
        self._conn.execute("DELETE FROM meta WHERE key = ?", (_META + key,))
