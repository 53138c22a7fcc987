"""What the pages read from ``ranger.db`` (and the acknowledgements they write).

Plain functions of a connection: the routes run them in the thread pool through
:func:`edge_app.station.web.db.acall`. Event JSON comes back as stored; it passed the
receiver's door but its fields are the unit's word, so :mod:`.views` checks every type.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

PAGE = 50
"""Alerts per page."""


@dataclass(frozen=True, slots=True)
class Ack:
    user: str
    note: str
    at: float


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One stored alert with what the page shows beside it."""

    rowid: int
    unit: str
    event_id: str
    received: float
    event: dict[str, Any]
    links: dict[str, float]
    media: list[str] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)


def _row(conn: sqlite3.Connection, r: tuple[Any, ...]) -> AlertRow:
    rowid, unit, event_id, received, body = int(r[0]), str(r[1]), str(r[2]), float(r[3]), r[4]
    try:
        event = json.loads(body)
    except ValueError:
        event = {}
    if not isinstance(event, dict):
        event = {}
    links = {str(a): float(b) for a, b in conn.execute(
        "SELECT link, received FROM sightings WHERE unit = ? AND id = ? ORDER BY received",
        (unit, event_id))}
    media = [str(m[0]) for m in conn.execute(
        "SELECT id FROM media WHERE unit = ? AND (event_id = ?2 OR id IN (?2 || '-thumb', "
        "?2 || '-image')) ORDER BY id", (unit, event_id))]
    return AlertRow(rowid, unit, event_id, received, event, links, media, acks(conn, unit,
                                                                               event_id))


def alerts(conn: sqlite3.Connection, before: int | None = None, limit: int = PAGE,
           unit: str | None = None) -> list[AlertRow]:
    """Alerts newest first (by when the station first stored them), older than ``before``."""
    rows = conn.execute(
        "SELECT rowid, unit, id, received, json FROM events WHERE outcome = 'alert' "
        "AND (?1 IS NULL OR rowid < ?1) AND (?2 IS NULL OR unit = ?2) "
        "ORDER BY rowid DESC LIMIT ?3", (before, unit, limit)).fetchall()
    return [_row(conn, r) for r in rows]


def alert(conn: sqlite3.Connection, unit: str, event_id: str) -> AlertRow | None:
    """One event (of any outcome), None if there is none."""
    r = conn.execute("SELECT rowid, unit, id, received, json FROM events WHERE unit = ? "
                     "AND id = ?", (unit, event_id)).fetchone()
    return None if r is None else _row(conn, r)


def acks(conn: sqlite3.Connection, unit: str, event_id: str) -> list[Ack]:
    return [Ack(str(a), str(b), float(c)) for a, b, c in conn.execute(
        "SELECT user, note, at FROM web_acks WHERE unit = ? AND id = ? ORDER BY at, rowid",
        (unit, event_id))]


def add_ack(conn: sqlite3.Connection, unit: str, event_id: str, user: str, note: str,
            at: float) -> bool:
    """Record an acknowledgement; False if there is no such event."""
    if conn.execute("SELECT 1 FROM events WHERE unit = ? AND id = ?",
                    (unit, event_id)).fetchone() is None:
        return False
    conn.execute("INSERT INTO web_acks (unit, id, user, note, at) VALUES (?, ?, ?, ?, ?)",
                 (unit, event_id, user, note, at))
    return True


def media_file(conn: sqlite3.Connection, unit: str, media_id: str) -> str | None:
    """The stored relative path of a media file, None if the store has no such row."""
    r = conn.execute("SELECT path FROM media WHERE unit = ? AND id = ?",
                     (unit, media_id)).fetchone()
    return None if r is None else str(r[0])


def units(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every unit heard of: its ``units`` row (as :meth:`RangerStore.unit` returns it)."""
    out: dict[str, dict[str, Any]] = {}
    for unit, state, state_at, last_seen, stats, stats_at in conn.execute(
            "SELECT unit, state, state_at, last_seen, stats, stats_at FROM units ORDER BY unit"):
        try:
            parsed = None if stats is None else json.loads(stats)
        except ValueError:
            parsed = None
        out[str(unit)] = {"unit": unit, "state": state, "state_at": state_at,
                          "last_seen": last_seen, "stats": parsed if isinstance(parsed, dict)
                          else None, "stats_at": stats_at}
    return out
