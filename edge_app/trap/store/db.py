"""The one SQLite database of a trap: catalogue and outbox in the same file.

Why one file: the catalogue row of an event and its outbox rows must be written in one
transaction. With two files a power cut between the two commits could leave an event that is
catalogued but never sent (a lost alert) or a message for an event that does not exist.

Why these settings: the SD card of a field unit loses power without warning. WAL with
``synchronous=FULL`` fsyncs the log on every commit, so a committed alert survives the cut
(with ``NORMAL`` the last commits can vanish). ``busy_timeout`` lets the store thread and the
uplink thread, each on its own connection, wait for each other's short write transactions
instead of failing with ``database is locked``.

Schema versions: v1 (the first release) had no ``acked-by-broker`` outbox state, no per-row
chunk list and no ``settings`` table; v2 outbox rows carried MQTT topics, and the LoRa router
kept its queue in tables of its own outside the versioning; v3 has one transport-neutral
outbox (a ``link`` per row) and every table of every link in this schema; v4 adds the
``deployments`` table (``camtrap deployment start|end``, trap/store/deployments.py). :func:`open_db`
upgrades an older database in place, in one transaction, so a unit in the field keeps its
queued alerts across a software update.

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

from edge_app.core.errors import StorageError

logger = logging.getLogger(__name__)

DB_NAME = "camtrap.db"
SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000

# -- the outbox, per schema version ----------------------------------------------------------
#
# Each version's table is kept as written, as a template: a migration builds the next version
# under a temporary name, copies the rows and renames it (SQLite cannot alter a CHECK
# constraint or drop a NOT NULL column in place).

# v2: state ``acked-by-broker`` (the broker sent PUBACK, the row waits for the receiver's
# end-to-end receipt or its timeout, ``next_attempt_at``); ``chunks``: for a media row, a JSON
# list of the chunk indices still to send (NULL: all of them). Rows carried MQTT topics.
_OUTBOX_V2 = """
CREATE TABLE IF NOT EXISTS {name} (
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
                    CHECK (state IN ('ready', 'inflight', 'acked-by-broker', 'sent', 'dead')),
    inflight_since  REAL,
    done_at         REAL,
    last_error      TEXT,
    chunks          TEXT,
    CHECK (payload IS NOT NULL OR media_path IS NOT NULL)
);
"""

# v3, transport-neutral: a row says *what* to deliver (kind, payload or media file, event id)
# and *over which link* (``link``); each link renders its wire form (MQTT topic and chunks, the
# 11-byte LoRa alert) at send time, so nothing in a row depends on a link's settings. State
# ``skipped``: not needed on this link any more because another link delivered it (LoRa in
# fallback mode). ``confirmed``: LoRa only, 1 for an ACKed confirmed uplink, 0 for an
# unconfirmed one. Images, thumbnails and event JSON never go over LoRa (the last CHECK).
_OUTBOX_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT REFERENCES events (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL
                    CHECK (kind IN ('alert', 'status', 'event', 'thumb', 'image')),
    link            TEXT NOT NULL CHECK (link IN ('mqtt', 'lorawan')),
    priority        INTEGER NOT NULL,
    payload         BLOB,
    media_path      TEXT,
    created         REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    expires_at      REAL,
    state           TEXT NOT NULL DEFAULT 'ready'
                    CHECK (state IN ('ready', 'inflight', 'acked-by-broker', 'sent', 'skipped',
                                     'dead')),
    inflight_since  REAL,
    done_at         REAL,
    last_error      TEXT,
    chunks          TEXT,
    confirmed       INTEGER,
    CHECK (payload IS NOT NULL OR media_path IS NOT NULL),
    CHECK (link = 'mqtt' OR kind IN ('alert', 'status'))
);
"""

_OUTBOX_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_service ON outbox (link, state, priority, id);
CREATE INDEX IF NOT EXISTS outbox_event ON outbox (event_id);
CREATE INDEX IF NOT EXISTS outbox_timer ON outbox (link, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_done ON outbox (state, done_at);
"""

_V1_OUTBOX_COLUMNS = (
    "id, event_id, kind, priority, topic, payload, media_path, created, attempts, "
    "next_attempt_at, expires_at, state, inflight_since, done_at, last_error"
)
_V2_TO_V3_COLUMNS = (
    "id, event_id, kind, priority, payload, media_path, created, attempts, next_attempt_at, "
    "expires_at, state, inflight_since, done_at, last_error, chunks"
)

# The LoRa duty-cycle ledger (trap/uplink/airtime.py): airtime spent, per transmission, kept
# two days so that a restart cannot re-spend the regulatory budget.
AIRTIME_TABLE = """
CREATE TABLE IF NOT EXISTS lora_airtime (
    id        INTEGER PRIMARY KEY,
    ts        REAL NOT NULL,
    band      TEXT NOT NULL,
    airtime_s REAL NOT NULL,
    kind      TEXT NOT NULL,
    downlink  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS lora_airtime_ts ON lora_airtime (ts);
"""

# Catalogue, counters and settings: unchanged since v1 (``settings`` since v2).
_BASE = """
-- Key/value state of the store and the links: 'schema_version'; 'lorawan.<key>' for the LoRa
-- link's own state (last status time, mode and interval set by downlink).
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

-- Remote configuration changes (trap/settings.py), applied over the TOML file at start.
CREATE TABLE IF NOT EXISTS settings (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,  -- JSON
    updated REAL NOT NULL,
    source  TEXT NOT NULL DEFAULT ''
);
"""

# v4: where and how the unit was set up, one row per placement, kept as history; at most one
# open (end_ts NULL) at a time. Events name theirs in the event JSON (``deployment_id``).
DEPLOYMENTS_TABLE = """
CREATE TABLE IF NOT EXISTS deployments (
    id                 TEXT PRIMARY KEY,
    start_ts           REAL NOT NULL,
    end_ts             REAL,
    lat                REAL NOT NULL,
    lon                REAL NOT NULL,
    location_name      TEXT NOT NULL DEFAULT '',
    camera_height_m    REAL,
    camera_heading_deg INTEGER,
    bait               INTEGER,
    feature            TEXT NOT NULL DEFAULT '',
    habitat            TEXT NOT NULL DEFAULT '',
    setup_by           TEXT NOT NULL DEFAULT '',
    comments           TEXT NOT NULL DEFAULT '',
    CHECK (end_ts IS NULL OR end_ts >= start_ts)
);
CREATE UNIQUE INDEX IF NOT EXISTS deployments_one_open ON deployments ((end_ts IS NULL))
    WHERE end_ts IS NULL;
"""

_SCHEMA = (_BASE + _OUTBOX_TABLE.format(name="outbox") + _OUTBOX_INDEXES + AIRTIME_TABLE
           + DEPLOYMENTS_TABLE)


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
    if version is not None and version < SCHEMA_VERSION:
        version = _migrate(conn, p)
    if version is None or version > SCHEMA_VERSION:
        raise StorageError(
            f"database {p} has schema version {version}, this camtrap knows up to "
            f"{SCHEMA_VERSION}: upgrade camtrap instead of downgrading the database"
        )


def _migrate(conn: sqlite3.Connection, p: Path) -> int:
    """Upgrade an older database to :data:`SCHEMA_VERSION` in one transaction.

    The version is read again inside the write transaction: the store and uplink threads open
    the database at the same time, and only the first of them may migrate. The steps run in
    order (v1 → v2 → v3 → v4), each against the tables as that version left them.

    Returns:
        The schema version afterwards.

    Raises:
        StorageError: the upgrade failed; the database is left as it was.
    """
    start = 0
    try:
        with transaction(conn):
            version = start = _read_version(conn) or 0
            if version == 1:
                _migrate_1_to_2(conn)
                version = 2
            if version == 2:
                _migrate_2_to_3(conn)
                version = 3
            if version == 3:
                for stmt in _statements(DEPLOYMENTS_TABLE):  # v3 → v4: a new table only
                    conn.execute(stmt)
                version = 4
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                         (str(version),))
    except sqlite3.Error as e:
        raise StorageError(f"cannot upgrade the schema of {p}: {e}") from e
    if version != start:
        logger.info("database %s upgraded from schema version %d to %d", p, start, version)
    return version


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """v1 → v2: new outbox state and ``chunks`` column (a table rebuild: SQLite cannot alter a
    CHECK constraint), the ``outbox_timer`` index and the ``settings`` table."""
    for stmt in _statements(_OUTBOX_V2.format(name="outbox_v2")):
        conn.execute(stmt)
    conn.execute(
        f"INSERT INTO outbox_v2 ({_V1_OUTBOX_COLUMNS}) "  # noqa: S608 - constant column list
        f"SELECT {_V1_OUTBOX_COLUMNS} FROM outbox"
    )
    conn.execute("DROP TABLE outbox")
    conn.execute("ALTER TABLE outbox_v2 RENAME TO outbox")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_timer ON outbox (state, next_attempt_at)")
    conn.execute("""CREATE TABLE IF NOT EXISTS settings (
        key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL,
        source TEXT NOT NULL DEFAULT '')""")


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """v2 → v3: one transport-neutral outbox for every link.

    * Outbox rows lose their MQTT topic (the MQTT link renders it at send time) and gain
      ``link = 'mqtt'`` — every v2 row was an MQTT row.
    * The LoRa router's own tables, created outside the versioning until v2, come in: each
      ``lora_tx`` row becomes a ``link = 'lorawan'`` alert row carrying its event's JSON
      (pending → ready, sent and skipped stay, expired and failed → dead, with the reason);
      ``lora_meta`` moves into ``meta`` under ``lorawan.``; ``lora_airtime`` keeps its rows.
    """
    for stmt in _statements(_OUTBOX_TABLE.format(name="outbox_v3")):
        conn.execute(stmt)
    conn.execute(
        f"INSERT INTO outbox_v3 ({_V2_TO_V3_COLUMNS}, link) "  # noqa: S608 - constant columns
        f"SELECT {_V2_TO_V3_COLUMNS}, 'mqtt' FROM outbox"
    )
    conn.execute("DROP TABLE outbox")
    conn.execute("ALTER TABLE outbox_v3 RENAME TO outbox")
    if _has_table(conn, "lora_tx"):
        conn.execute(
            "INSERT INTO outbox (event_id, kind, link, priority, payload, created, attempts, "
            "next_attempt_at, state, done_at, last_error, confirmed) "
            "SELECT t.event_id, 'alert', 'lorawan', 0, CAST(e.event_json AS BLOB), t.created, "
            "t.attempts, t.next_attempt_at, "
            "CASE t.state WHEN 'pending' THEN 'ready' WHEN 'sent' THEN 'sent' "
            "WHEN 'skipped' THEN 'skipped' ELSE 'dead' END, t.done_at, "
            "CASE t.state WHEN 'expired' THEN 'too old for LoRa' "
            "WHEN 'failed' THEN COALESCE(t.last_error, 'given up') "
            "WHEN 'skipped' THEN COALESCE(t.last_error, 'delivered by MQTT') "
            "ELSE t.last_error END, t.confirmed "
            "FROM lora_tx t JOIN events e ON e.id = t.event_id ORDER BY t.created, t.event_id"
        )
        conn.execute("DROP TABLE lora_tx")
    if _has_table(conn, "lora_meta"):
        conn.execute("INSERT OR REPLACE INTO meta (key, value) "
                     "SELECT 'lorawan.' || key, value FROM lora_meta")
        conn.execute("DROP TABLE lora_meta")
    for stmt in _statements(_OUTBOX_INDEXES + AIRTIME_TABLE):
        conn.execute(stmt)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                       (name,)).fetchone()
    return row is not None


def airtime_table(conn: sqlite3.Connection) -> None:
    """Create the airtime ledger's table on a connection that did not come from
    :func:`open_db` (the ledger's own tests and benchmarks); a no-op on a trap database."""
    for stmt in _statements(AIRTIME_TABLE):
        conn.execute(stmt)


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
