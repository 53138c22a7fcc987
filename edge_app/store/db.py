"""The one SQLite database of a trap: catalogue and outbox in the same file.

Why one file: the catalogue row of an event and its outbox rows must be written in one
transaction. With two files a power cut between the two commits could leave an event that is
catalogued but never sent (a lost alert) or a message for an event that does not exist.

Why these settings: the SD card of a field unit loses power without warning. WAL with
``synchronous=FULL`` fsyncs the log on every commit, so a committed alert survives the cut
(with ``NORMAL`` the last commits can vanish). ``busy_timeout`` lets the store thread and the
uplink thread, each on its own connection, wait for each other's short write transactions
instead of failing with ``database is locked``.

Connections are opened in autocommit mode (``isolation_level=None``); multi-statement writes go
through :func:`transaction`, which issues ``BEGIN IMMEDIATE`` so that a writer takes the lock up
front and never has to upgrade a read lock (the classic SQLite deadlock).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_app.errors import StorageError

logger = logging.getLogger(__name__)

DB_NAME = "camtrap.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Per-unit event counter: event ids are '<unit>-<seq>' and a LoRa alert carries the low 16
-- bits of seq, so seq must never repeat, even across restarts.
CREATE TABLE IF NOT EXISTS counters (
    unit TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);

-- Running totals that have no row of their own (discarded triggers are not stored).
CREATE TABLE IF NOT EXISTS tallies (
    name TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    id          TEXT PRIMARY KEY,
    unit        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    ts          REAL NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('alert', 'keep', 'discard')),
    label       TEXT NOT NULL,
    species     TEXT,
    score       REAL NOT NULL,
    audit       INTEGER NOT NULL DEFAULT 0,
    reason      TEXT NOT NULL DEFAULT '',
    event_json  TEXT NOT NULL,
    image_path  TEXT,
    thumb_path  TEXT,
    created     REAL NOT NULL,
    UNIQUE (unit, seq)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);

CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT REFERENCES events (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL
                    CHECK (kind IN ('alert', 'status', 'event', 'thumb', 'image')),
    priority        INTEGER NOT NULL,
    topic           TEXT NOT NULL,
    payload         BLOB,
    media_path      TEXT,
    created         REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    expires_at      REAL,
    state           TEXT NOT NULL DEFAULT 'ready'
                    CHECK (state IN ('ready', 'inflight', 'sent', 'dead')),
    inflight_since  REAL,
    done_at         REAL,
    last_error      TEXT,
    CHECK (payload IS NOT NULL OR media_path IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS outbox_service ON outbox (state, priority, id);
CREATE INDEX IF NOT EXISTS outbox_event ON outbox (event_id);
"""


def db_path(root: str | os.PathLike[str]) -> Path:
    """Where the database of a storage root lives (``<root>/camtrap.db``)."""
    return Path(root) / DB_NAME


def open_db(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (and create or check the schema of) the trap database.

    Each thread opens its own connection. The connection is created with
    ``check_same_thread=False`` only so that a stage object may be built on one thread and run
    on another; it must still be *used* by one thread at a time.

    Args:
        path: the database file; its folder is created if missing.

    Returns:
        An autocommit connection with ``sqlite3.Row`` rows, WAL, ``synchronous=FULL``,
        foreign keys on and a busy timeout.

    Raises:
        StorageError: the file cannot be opened, WAL cannot be enabled, or the database was
            written by a newer camtrap (schema version above ours).
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            p, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot open database {p}: {e}") from e
    try:
        _configure(conn, p)
        _ensure_schema(conn, p)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, p: Path) -> None:
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as e:
        raise StorageError(f"cannot configure database {p}: {e}") from e
    if str(mode).lower() != "wal":
        # WAL is refused on some network file systems; rollback journal + FULL would still be
        # durable, but the store and uplink threads would block each other's reads.
        raise StorageError(f"database {p}: journal_mode WAL refused (got {mode!r})")


def _ensure_schema(conn: sqlite3.Connection, p: Path) -> None:
    version = _read_version(conn)
    if version is None:
        # New (or half-created) database: create everything in one write transaction. The
        # common case, an existing database, takes no write lock at all, so opening a
        # short-lived connection (``camtrap outbox ls`` on a running trap) never blocks the
        # store or the uplink.
        try:
            with transaction(conn):
                for stmt in _statements(_SCHEMA):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        except sqlite3.Error as e:
            raise StorageError(f"cannot create the schema of {p}: {e}") from e
        version = _read_version(conn)
    if version is None or version > SCHEMA_VERSION:
        raise StorageError(
            f"database {p} has schema version {version}, this camtrap knows up to "
            f"{SCHEMA_VERSION}: upgrade camtrap instead of downgrading the database"
        )


def _read_version(conn: sqlite3.Connection) -> int | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:
        return None  # no meta table yet
    return None if row is None else int(row[0])


def _statements(script: str) -> list[str]:
    """Split the schema into statements (``executescript`` would COMMIT our transaction)."""
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run a block in one ``BEGIN IMMEDIATE`` … ``COMMIT``; roll back on any exception.

    Nested use joins the outer transaction, so helpers such as ``Outbox.enqueue`` can be
    called alone (their own transaction) or inside the store's event transaction (all or
    nothing).
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
