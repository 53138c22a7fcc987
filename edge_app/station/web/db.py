"""The web app's own tables in ``ranger.db``, and one short-lived connection per call.

Why a connection per call: the receiver's thread writes the same file (WAL), and a page is
served from a thread pool; a connection is cheap and never shared between threads. Why the
tables are prefixed ``web_`` and made with ``CREATE TABLE IF NOT EXISTS``: the schema version
(``PRAGMA user_version``) belongs to :mod:`edge_app.station.store`, and these tables must not
disturb its migrations.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from edge_app.station.store import RangerStore

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS web_users (
        name     TEXT PRIMARY KEY,
        hash     TEXT NOT NULL,             -- argon2id
        role     TEXT NOT NULL,             -- 'ranger' or 'admin'
        created  REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS web_acks (
        unit     TEXT NOT NULL,
        id       TEXT NOT NULL,             -- event id
        user     TEXT NOT NULL,
        note     TEXT NOT NULL,
        at       REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS web_acks_event ON web_acks (unit, id)",
    """CREATE TABLE IF NOT EXISTS web_sessions (
        id       TEXT PRIMARY KEY,          -- sha256 of the id in the cookie
        user     TEXT NOT NULL,
        created  REAL NOT NULL
    )""",
)


@contextmanager
def connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode that waits for the ingest thread's writes."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        yield conn
    finally:
        conn.close()


def ensure(db_path: Path) -> None:
    """Create the store (if the receiver has not yet) and the web tables."""
    RangerStore(db_path.parent).close()
    with connect(db_path) as conn:
        for ddl in _SCHEMA:
            conn.execute(ddl)


def call(db_path: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` with a fresh connection (in the calling thread)."""
    with connect(db_path) as conn:
        return fn(conn)


async def acall(db_path: Path, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` with a fresh connection, in the thread pool (SQLite may wait for a writer)."""
    return await run_in_threadpool(call, db_path, fn)
