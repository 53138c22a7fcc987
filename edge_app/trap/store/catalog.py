"""The catalogue: one row per stored trigger (alert, keep, or audited discard) and the counters.

The catalogue is what a technician or a researcher reads back from the card: every event the
trap kept, its verdict, the event JSON exactly as sent, and where its media are. Discarded
triggers have no row (that is the point of the filter) but are counted in ``tallies``, so the
totals show what the filter did. One discard in ``policy.audit_every`` is stored anyway, marked
``audit``, and never sent: those rows let someone measure the filter's miss rate in the field.

All writes happen on the store thread inside :func:`edge_app.trap.store.db.transaction`, together
with the outbox rows of the same event.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from edge_app.core.events import Outcome


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One catalogue row.

    Attributes:
        ts: wall time of the trigger (Unix seconds).
        audit: True for a discarded trigger kept as an audit sample (never sent).
        event_json: the event JSON (ARCHITECTURE §6) as a string, as queued for sending.
        image_path: the stored frame, relative to the storage root (None if not written).
        thumb_path: the thumbnail, relative to the storage root (None if not written).
        created: wall time of the write.
    """

    id: str
    unit: str
    seq: int
    ts: float
    outcome: Outcome
    label: str
    species: str | None
    score: float
    audit: bool
    reason: str
    event_json: str
    image_path: str | None
    thumb_path: str | None
    created: float

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> EventRecord:
        return cls(
            id=r["id"],
            unit=r["unit"],
            seq=r["seq"],
            ts=r["ts"],
            outcome=r["outcome"],
            label=r["label"],
            species=r["species"],
            score=r["score"],
            audit=bool(r["audit"]),
            reason=r["reason"],
            event_json=r["event_json"],
            image_path=r["image_path"],
            thumb_path=r["thumb_path"],
            created=r["created"],
        )

    @property
    def event(self) -> dict[str, Any]:
        """The event JSON, parsed."""
        value: dict[str, Any] = json.loads(self.event_json)
        return value


class Catalog:
    """The catalogue tables seen through one connection (the store thread's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # -- sequence numbers ---------------------------------------------------------------

    def current_seq(self, unit: str) -> int:
        """The last seq allocated for ``unit`` (0 if none)."""
        r = self._conn.execute("SELECT seq FROM counters WHERE unit = ?", (unit,)).fetchone()
        return 0 if r is None else int(r[0])

    def allocate_seq(self, unit: str) -> int:
        """Take the next seq for ``unit``; call inside the event's transaction.

        Allocating inside the transaction means a crash before the commit gives the number
        back, so seq has no gaps from crashes and never repeats.
        """
        r = self._conn.execute(
            "INSERT INTO counters (unit, seq) VALUES (?, 1) "
            "ON CONFLICT (unit) DO UPDATE SET seq = seq + 1 RETURNING seq",
            (unit,),
        ).fetchone()
        return int(r[0])

    # -- events -------------------------------------------------------------------------

    def insert(self, rec: EventRecord) -> None:
        """Add an event row; call inside the event's transaction."""
        self._conn.execute(
            "INSERT INTO events (id, unit, seq, ts, outcome, label, species, score, audit, "
            "reason, event_json, image_path, thumb_path, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.id, rec.unit, rec.seq, rec.ts, rec.outcome, rec.label, rec.species,
                rec.score, int(rec.audit), rec.reason, rec.event_json, rec.image_path,
                rec.thumb_path, rec.created,
            ),
        )

    def get(self, event_id: str) -> EventRecord | None:
        """One event by id."""
        r = self._conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if r is None else EventRecord.from_row(r)

    def recent(self, limit: int = 50) -> list[EventRecord]:
        """The newest events first."""
        rows = self._conn.execute(
            "SELECT * FROM events ORDER BY ts DESC, seq DESC LIMIT ?", (max(0, limit),)
        ).fetchall()
        return [EventRecord.from_row(r) for r in rows]

    # -- tallies ------------------------------------------------------------------------

    def tally(self, name: str) -> int:
        """A running total (0 if never counted)."""
        r = self._conn.execute("SELECT n FROM tallies WHERE name = ?", (name,)).fetchone()
        return 0 if r is None else int(r[0])

    def bump(self, name: str, n: int = 1) -> int:
        """Add ``n`` to a running total; returns the new value."""
        r = self._conn.execute(
            "INSERT INTO tallies (name, n) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET n = n + excluded.n RETURNING n",
            (name, n),
        ).fetchone()
        return int(r[0])

    def counts(self) -> dict[str, int]:
        """What the filter did since the card was set up.

        Returns:
            ``alert`` and ``keep``: stored events; ``discard``: every discarded trigger,
            audited or not; ``audit``: discarded triggers stored as audit samples.
        """
        out = {"alert": 0, "keep": 0, "discard": self.tally("discard"), "audit": 0}
        for r in self._conn.execute(
            "SELECT outcome, audit, COUNT(*) FROM events GROUP BY outcome, audit"
        ):
            if r[1]:
                out["audit"] += int(r[2])
            elif r[0] in ("alert", "keep"):
                out[r[0]] += int(r[2])
        return out
