"""The LoRaWAN side of the uplink: which alert goes over LoRa, when, within the duty cycle.

What goes over LoRa: alerts (11 bytes, fPort 10) and a status report every few hours
(fPort 11). Never images, thumbnails or event JSON — a 30 KB photo would be 15 minutes of SF12
airtime. ``lorawan.mode`` picks *which* alerts:

* ``always`` (default; ARCHITECTURE §4: an alert is "sent on every link"): every alert also
  goes over LoRa, and the ranger dedupes the two copies;
* ``fallback``: an alert goes over LoRa only while MQTT has not delivered it — at once when
  the MQTT link is down, or after ``fallback_after_s`` when MQTT looks up but has not
  confirmed it; an alert MQTT delivered before its LoRa turn is skipped (for parks with good
  cellular coverage, or TTN's fair-use budget).

Durable without touching the outbox: the router finds alerts in the ``events`` catalogue
(``outcome = 'alert'``) and keeps its own table, ``lora_tx`` (one row per event id: pending,
sent, skipped, expired, failed), in the same database; it only *reads* the outbox
(``event_id``/``kind``/``state``) to see what MQTT delivered. So an alert decided just before
a power cut is found again at the next start, and one already sent is not sent again. The
duty-cycle ledger (``lora_airtime``, see :mod:`edge_app.trap.uplink.airtime`) is charged *before*
each transmission and refunded when the modem says nothing went on the air, so a crash
mid-send can only over-count airtime, never under-count it.

Order of service: ``lorawan.priority`` (people and vehicles first by default, then big cats),
oldest first within a class. A waiting alert does not hold the airtime: when the ledger says
"not before T", the router sleeps until T (or a wake-up) and then picks again, so an alert of
higher priority that arrived meanwhile goes first.

Retries are the router's: the modem is set to no retransmissions (``AT+RETY=0``), so every
transmission is in the ledger and the duty cycle spaces them. A lost ACK costs one attempt
(``max_attempts``); busy or duty-cycle refusals cost none. The join backs off exponentially
with jitter (so a park of traps rebooted by the same storm do not join in lock-step).

:meth:`LoraRouter.step` does at most one radio action and returns when it next wants to run;
:meth:`LoraRouter.run` is the supervised loop around it. Tests drive :meth:`step` directly with
a fake clock to play a whole day in a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_app.core import lora_codec as codec
from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, StorageError
from edge_app.trap.store.db import open_db
from edge_app.trap.uplink.airtime import (
    DutyCycleLedger,
    Tx,
    band_plan,
    dr_to_sf,
    join_airtime_s,
    uplink_airtime_s,
)
from edge_app.trap.uplink.lorawan import (
    Downlink,
    LoRaModem,
    LorawanKeys,
    ModemError,
    SendResult,
    SendStatus,
    Timings,
    load_secrets,
    make_modem,
)

logger = logging.getLogger(__name__)

RESCAN_S = 60.0  # backstop: look for new alerts and fallback deadlines at least this often
MODEM_RETRY_MIN_S = 10.0
MODEM_RETRY_MAX_S = 600.0
BUSY_RETRY_S = 3.0
NO_ACK_JITTER_S = 5.0
STATUS_RECHECK_S = 600.0
#: Confirmed uplinks in a row without an ACK after which the session is presumed lost (the
#: network server forgot the device, the gateway moved): join again rather than keep
#: shouting into a session nobody holds.
REJOIN_AFTER_NO_ACKS = 4
MQTT_DELIVERED = ("sent", "acked-by-broker")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS lora_tx (
        event_id        TEXT PRIMARY KEY,
        seq             INTEGER NOT NULL,
        priority        INTEGER NOT NULL,
        event_ts        REAL NOT NULL,
        created         REAL NOT NULL,
        state           TEXT NOT NULL
                        CHECK (state IN ('pending', 'sent', 'skipped', 'expired', 'failed')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        done_at         REAL,
        confirmed       INTEGER,
        last_error      TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS lora_tx_pending ON lora_tx (state, priority, event_ts)",
    "CREATE TABLE IF NOT EXISTS lora_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

ModemFactory = Callable[[Callable[[], None]], LoRaModem]
#: Applies remote settings (dotted key → value) to the running trap; raises ConfigError if
#: they are invalid. The daemon's is ``Settings.apply(values, "lorawan")``, which persists them.
SettingsHook = Callable[[dict[str, Any]], object]
THRESHOLD_KEYS = {"detector": "detector.score_threshold",
                  "species": "detector.species_threshold"}


@dataclass
class RouterStats:
    """Counters of the LoRa path (a snapshot is in :meth:`LoraRouter.stats`)."""

    joined: bool = False
    join_attempts: int = 0
    join_failures: int = 0
    alerts_queued: int = 0
    alerts_sent: int = 0  # confirmed (ACKed) or, unconfirmed, transmitted
    alerts_skipped: int = 0  # delivered by MQTT first (fallback mode)
    alerts_expired: int = 0
    alerts_failed: int = 0
    transmissions: int = 0
    no_ack: int = 0
    busy: int = 0
    modem_resets: int = 0
    rejoins: int = 0  # joins forced by a run of lost ACKs
    modem_errors: int = 0
    timeouts: int = 0
    status_sent: int = 0
    downlinks: int = 0
    commands: int = 0
    bad_downlinks: int = 0
    airtime_s: float = 0.0


@dataclass(frozen=True, slots=True)
class _Pending:
    event_id: str
    seq: int
    priority: int
    event_ts: float
    created: float
    attempts: int
    next_attempt_at: float


def default_modem_factory(cfg: Config) -> ModemFactory:
    """Build the driver named by ``lorawan.module`` on ``lorawan.port``."""
    lw = cfg.lorawan
    timings = Timings(command_s=lw.command_timeout_s)

    def factory(on_idle_line: Callable[[], None]) -> LoRaModem:
        return make_modem(lw.module, lw.port, lw.baudrate, timings, on_idle_line)

    return factory


class LoraRouter:
    """The LoRaWAN stage.

    Args:
        cfg: ``lorawan``, ``unit`` and ``storage`` (for the database).
        db: the trap database.
        clock: wall time for the ledger and the schedule (inject a fake one in tests).
        keys: OTAA keys (default: read from ``lorawan.secrets_file``, mode 0600).
        modem_factory: builds the driver (default: from the config).
        mqtt_connected: whether the MQTT link is up now (None: MQTT is not running).
        status_source: the figures of a status report.
        on_settings: applies a ``set_threshold`` command as a remote setting; the router also
            stores it in the ``settings`` table (source ``lorawan``), where the same
            mechanism as MQTT ``config/set`` re-applies it at every start.
        rng: jitter source.

    Raises:
        ConfigError: the secrets file is missing, loose or malformed.
    """

    def __init__(
        self,
        cfg: Config,
        db: str | Path,
        clock: Clock | None = None,
        *,
        keys: LorawanKeys | None = None,
        modem_factory: ModemFactory | None = None,
        mqtt_connected: Callable[[], bool] | None = None,
        status_source: Callable[[], codec.Status] | None = None,
        on_settings: SettingsHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.lw = cfg.lorawan
        self.db_path = Path(db)
        self.clock: Clock = clock or SystemClock()
        self.keys = keys or load_secrets(self.lw.secrets_file)
        self._factory = modem_factory or default_modem_factory(cfg)
        self._mqtt_connected = mqtt_connected
        self._status_source = status_source
        self._on_settings = on_settings
        self._rng = rng or random.Random()
        self.plan = band_plan(self.lw.region, self.lw.duty_cycle)
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stats = RouterStats()
        self._conn: sqlite3.Connection | None = None
        self.ledger: DutyCycleLedger | None = None
        self.modem: LoRaModem | None = None
        self._provisioned = False
        self._modem_failures = 0
        self._modem_retry_at = 0.0
        self._join_failures = 0
        self._join_at = 0.0
        self._status_requested = False
        self._stopping = False
        self._opened_at = 0.0
        self._expiry_warned_at = -1e18
        self._meta_cache: dict[str, str] = {}
        self._events_rowid = 0
        self._dr: int | None = None
        self._rejoin = False
        self._no_ack_streak = 0

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open the database, create the router's tables, load the ledger (router thread)."""
        if self._conn is not None:
            return
        conn = open_db(self.db_path)
        for stmt in _SCHEMA:
            conn.execute(stmt)
        self._conn = conn
        now = self.clock.wall()
        self._opened_at = now
        self._meta_cache = {str(k): str(v) for k, v in
                            conn.execute("SELECT key, value FROM lora_meta").fetchall()}
        # Start looking at the catalogue where alerts young enough for LoRa begin.
        row = conn.execute("SELECT MIN(rowid) FROM events WHERE ts >= ?",
                           (now - self.lw.max_age_s,)).fetchone()
        self._events_rowid = (int(row[0]) - 1) if row[0] is not None else int(
            conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0])
        self.ledger = DutyCycleLedger(self.plan, conn, fair_use=self.lw.fair_use)
        self.ledger.load(now)

    def close(self) -> None:
        if self.modem is not None:
            self.modem.close()
            self.modem = None
        self._provisioned = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LoraRouter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wake(self) -> None:
        """New alert stored, or the modem spoke: run a step soon (any thread)."""
        self._wake.set()

    def interrupt(self) -> None:
        """Supervisor stop: wake the loop and cut a modem wait short (any thread)."""
        self._stopping = True
        self._wake.set()
        modem = self.modem
        if modem is not None:
            with contextlib.suppress(Exception):
                modem.close()

    def run(self, stop: threading.Event) -> None:
        """The supervised loop: :meth:`step`, then sleep until it wants to run again."""
        self._stopping = False
        self.open()
        try:
            while not stop.is_set() and not self._stopping:
                self._wake.clear()
                wake_at = self.step()
                delay = wake_at - self.clock.wall()
                if delay > 0 and not stop.is_set():
                    self.clock.wait(self._wake, min(delay, RESCAN_S))
        finally:
            self.close()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters and the airtime budget."""
        with self._lock:
            out = asdict(self._stats)
        if self.ledger is not None:
            out["budget"] = self.ledger.summary(self.clock.wall())
        return out

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    # -- the step -----------------------------------------------------------------------

    def step(self) -> float:
        """Do at most one radio action; return the wall time of the next step wanted."""
        self.open()
        now = self.clock.wall()
        wake_at = now + RESCAN_S
        self._sync_alerts(now)
        try:
            modem = self._ready_modem(now)
            if modem is None:
                return min(wake_at, max(self._modem_retry_at, now + 0.001))
            modem.poll()
            if modem.take_reset():
                self._count(modem_resets=1)
                self._provisioned = False
                modem = self._ready_modem(now)
                if modem is None:
                    return min(wake_at, max(self._modem_retry_at, now + 0.001))
            self._handle_downlinks(modem.take_downlinks())
            if not modem.joined or self._rejoin:
                return min(wake_at, self._try_join(modem, now))
            return min(wake_at, self._serve(modem, now))
        except ModemError as e:
            self._modem_failed(now, str(e))
            return min(wake_at, self._modem_retry_at)

    # -- modem and join -----------------------------------------------------------------

    def _ready_modem(self, now: float) -> LoRaModem | None:
        if self._provisioned and self.modem is not None:
            return self.modem
        if now < self._modem_retry_at or self._stopping:
            return None
        try:
            if self.modem is None:
                self.modem = self._factory(self.wake)
                self.modem.open()
            self.modem.provision(self.keys, self.lw.region, adr=self.lw.adr,
                                 data_rate=self.lw.data_rate)
        except ModemError as e:
            self._modem_failed(now, str(e))
            return None
        self._provisioned = True
        self._modem_failures = 0
        self._dr = None
        logger.info("LoRa: %s on %s provisioned for %s (DevEUI %s)", self.modem.name,
                    self.modem.url, self.lw.region, self.keys.dev_eui)
        return self.modem

    def _modem_failed(self, now: float, why: str) -> None:
        self._count(modem_errors=1)
        self._modem_failures += 1
        delay = _backoff(self._modem_failures, MODEM_RETRY_MIN_S, MODEM_RETRY_MAX_S, self._rng)
        self._modem_retry_at = now + delay
        # A stop closes the port under a waiting command: that is not worth a warning.
        level = (logging.WARNING if self._modem_failures <= 3 and not self._stopping
                 else logging.DEBUG)
        logger.log(level, "LoRa: modem unusable (%s); retrying in %.0f s", why, delay)
        if self.modem is not None:
            self.modem.close()
            self.modem = None
        self._provisioned = False

    def _sf_bw(self, modem: LoRaModem) -> tuple[int, int]:
        """SF and bandwidth of the data rate last read from the modem (read it if unknown).

        Planning uses this cached rate, so a step that only waits does not talk to the
        modem; :meth:`_rate_changed` re-reads it just before a transmission (ADR may have
        moved it), and the step re-plans if it did.
        """
        if self._dr is None:
            self._dr = modem.data_rate()
        try:
            return dr_to_sf(self._dr)
        except ValueError:
            return 12, 125_000  # unknown rate: assume the slowest (charges the most airtime)

    def _rate_changed(self, modem: LoRaModem) -> bool:
        """Re-read the data rate before transmitting; True if the plan used a stale one."""
        before, self._dr = self._dr, modem.data_rate()
        if before != self._dr:
            logger.info("LoRa: data rate now DR%d (was DR%s)", self._dr, before)
            return True
        return False

    def _try_join(self, modem: LoRaModem, now: float) -> float:
        if now < self._join_at:
            return self._join_at
        assert self.ledger is not None
        sf, bw = self._sf_bw(modem)
        airtime = join_airtime_s(sf, bw)
        allowed = self.ledger.next_allowed(airtime, now)
        if allowed > now:
            return allowed
        if self._rate_changed(modem):
            return now
        row = self._charge(now, airtime, "join")
        self._count(join_attempts=1)
        result = modem.join(airtime, force=self._rejoin)
        if not result.transmitted:
            self._refund(row, airtime)
        self._dr = None  # a join may set the data rate
        if result.joined:
            self._join_failures = 0
            self._rejoin = False
            self._no_ack_streak = 0
            with self._lock:
                self._stats.joined = True
            logger.info("LoRa: joined (%s)", result.detail)
            return now
        with self._lock:
            self._stats.joined = False
        self._join_failures += 1
        self._count(join_failures=1)
        delay = _backoff(self._join_failures, self.lw.join_backoff_min_s,
                         self.lw.join_backoff_max_s, self._rng)
        if result.retry_after_s is not None:
            delay = max(delay, result.retry_after_s)
        self._join_at = now + delay
        logger.warning("LoRa: join attempt %d failed (%s); next in %.0f s", self._join_failures,
                       result.detail, delay)
        return self._join_at

    # -- airtime ------------------------------------------------------------------------

    def _charge(self, now: float, airtime_s: float, kind: str) -> int:
        """Book airtime before transmitting (see the module docstring); returns the row id."""
        assert self.ledger is not None
        assert self._conn is not None
        self.ledger.record(Tx(now, self.plan.default_band.name, airtime_s, kind))
        self._count(transmissions=1, airtime_s=airtime_s)
        row = self._conn.execute("SELECT last_insert_rowid()").fetchone()
        return int(row[0])

    def _refund(self, row_id: int, airtime_s: float) -> None:
        """Undo a booking when the modem says nothing went on the air."""
        assert self.ledger is not None
        assert self._conn is not None
        self._conn.execute("DELETE FROM lora_airtime WHERE id = ?", (row_id,))
        self.ledger.load(self.clock.wall())
        self._count(transmissions=-1, airtime_s=-airtime_s)

    # -- alerts -------------------------------------------------------------------------

    def _mode(self) -> str:
        return self._meta("mode") or self.lw.mode

    def _status_every_s(self) -> float:
        v = self._meta("status_every_h")
        return 3600.0 * (float(v) if v is not None else self.lw.status_every_h)

    def _mqtt_up(self) -> bool:
        if self._mqtt_connected is None:
            return False
        try:
            return bool(self._mqtt_connected())
        except Exception:  # a broken probe must not stop alerts: assume down, use LoRa
            logger.exception("LoRa: MQTT state probe failed")
            return False

    def priority_of(self, label: str, species: str | None) -> int:
        """Index in ``lorawan.priority`` of the species, else the label; unlisted go last."""
        order = self.lw.priority
        for name in (species, label):
            if name is not None and name in order:
                return order.index(name)
        return len(order)

    def _sync_alerts(self, now: float) -> None:
        """Adopt alerts catalogued since the last look; skip those MQTT delivered meanwhile.

        New rows are found by rowid (the store is the only writer of ``events``, so rowids
        grow in commit order): one indexed query per step, however big the catalogue.
        """
        conn = self._conn
        assert conn is not None
        cutoff = now - self.lw.max_age_s
        rows = conn.execute(
            "SELECT rowid AS rid, id, seq, ts, label, species, outcome, audit FROM events "
            "WHERE rowid > ? ORDER BY rowid LIMIT 5000", (self._events_rowid,)).fetchall()
        adopted = 0
        for r in rows:
            self._events_rowid = r["rid"]
            if r["outcome"] != "alert" or r["audit"] or r["ts"] < cutoff:
                continue
            cur = conn.execute(
                "INSERT OR IGNORE INTO lora_tx (event_id, seq, priority, event_ts, created, "
                "state, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (r["id"], r["seq"], self.priority_of(r["label"], r["species"]), r["ts"], now,
                 now))
            adopted += cur.rowcount
        if adopted:
            self._count(alerts_queued=adopted)
            logger.info("LoRa: %d new alert(s) to consider", adopted)
        if self._mode() == "fallback":
            try:
                cur = conn.execute(
                    "UPDATE lora_tx SET state = 'skipped', done_at = ?, "
                    "last_error = 'delivered by MQTT' WHERE state = 'pending' AND EXISTS "
                    "(SELECT 1 FROM outbox o WHERE o.event_id = lora_tx.event_id "
                    "AND o.kind = 'alert' AND o.state IN (?, ?))", (now, *MQTT_DELIVERED))
                if cur.rowcount:
                    self._count(alerts_skipped=cur.rowcount)
            except sqlite3.OperationalError as e:  # no outbox table: nothing delivered by MQTT
                logger.debug("LoRa: outbox not readable: %s", e)

    def _expire(self, pending: list[_Pending], now: float) -> list[_Pending]:
        """Drop alerts too old for LoRa from the queue; returns the rest."""
        assert self._conn is not None
        cutoff = now - self.lw.max_age_s
        stale = [p.event_id for p in pending if p.event_ts < cutoff]
        if not stale:
            return pending
        self._conn.executemany(
            "UPDATE lora_tx SET state = 'expired', done_at = ?, last_error = 'too old for LoRa' "
            "WHERE event_id = ? AND state = 'pending'", [(now, e) for e in stale])
        self._count(alerts_expired=len(stale))
        # Once an hour at most: a long backlog would otherwise log every alert it drops.
        level = logging.WARNING if now - self._expiry_warned_at >= 3600 else logging.DEBUG
        if level == logging.WARNING:
            self._expiry_warned_at = now
        logger.log(level, "LoRa: %d alert(s) older than %.0f s dropped from the LoRa queue "
                   "(%d so far; they still go by MQTT)", len(stale), self.lw.max_age_s,
                   self._stats.alerts_expired)
        return [p for p in pending if p.event_ts >= cutoff]

    def _pending(self) -> list[_Pending]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT event_id, seq, priority, event_ts, created, attempts, next_attempt_at "
            "FROM lora_tx WHERE state = 'pending' ORDER BY priority, event_ts").fetchall()
        return [_Pending(*tuple(r)) for r in rows]

    def _serve(self, modem: LoRaModem, now: float) -> float:
        """Send the first eligible alert (or a status), within the ledger."""
        assert self.ledger is not None
        pending = self._expire(self._pending(), now)
        mqtt_up = self._mqtt_up()
        fallback = self._mode() == "fallback"
        wake_at = now + RESCAN_S
        chosen: _Pending | None = None
        for p in pending:
            eligible_at = p.next_attempt_at
            if fallback and mqtt_up:
                eligible_at = max(eligible_at, p.created + self.lw.fallback_after_s)
            if eligible_at <= now:
                chosen = p
                break
            wake_at = min(wake_at, eligible_at)
        sf, bw = self._sf_bw(modem)
        # A status a whole interval late (alerts kept the airtime busy) or asked for by a
        # downlink goes first, so a backlogged trap still says it is alive and backlogged.
        overdue = self._status_overdue(now)
        if overdue:
            sent, status_at = self._maybe_status(modem, sf, bw, now, bool(pending))
            if sent:
                return now
            wake_at = min(wake_at, status_at)
        if chosen is not None:
            airtime = uplink_airtime_s(codec.ALERT_BYTES, sf, bw)
            allowed = self.ledger.next_allowed(airtime, now)
            if allowed > now:
                return min(wake_at, allowed)  # waits; a higher priority may take the slot
            if not self._rate_changed(modem):
                self._send_alert(modem, chosen, len(pending) > 1, mqtt_up, airtime, now)
            return now
        if overdue:
            return wake_at
        sent, status_at = self._maybe_status(modem, sf, bw, now, bool(pending))
        return now if sent else min(wake_at, status_at)

    def _alert_of(self, event_id: str, backlog: bool, mqtt_up: bool) -> codec.Alert | None:
        assert self._conn is not None
        row = self._conn.execute(
            "SELECT seq, ts, label, species, score, event_json FROM events WHERE id = ?",
            (event_id,)).fetchone()
        if row is None:
            return None
        try:
            event: dict[str, Any] = json.loads(row["event_json"])
        except (TypeError, ValueError):
            event = {}
        dets = event.get("detections")
        count = sum(1 for d in (dets if isinstance(dets, list) else [])
                    if isinstance(d, dict) and d.get("category") == row["label"])
        battery = event.get("battery_v")
        return codec.Alert(
            label=row["label"], species=row["species"], confidence=float(row["score"]),
            time=int(row["ts"]), seq=int(row["seq"]), count=max(count, 1),
            battery_v=float(battery) if isinstance(battery, int | float) else None,
            time_synced=event.get("time_synced") is not False, backlog=backlog,
            mqtt_down=not mqtt_up)

    def _send_alert(self, modem: LoRaModem, p: _Pending, backlog: bool, mqtt_up: bool,
                    airtime: float, now: float) -> None:
        assert self.ledger is not None
        assert self._conn is not None
        alert = self._alert_of(p.event_id, backlog, mqtt_up)
        if alert is None:  # the catalogue row was removed (retention): nothing to send
            self._finish(p.event_id, "failed", now, error="event no longer in the catalogue")
            return
        payload = codec.encode_alert(alert)
        confirmed = self.lw.confirmed and self.ledger.downlinks_left(now) > 0
        row = self._charge(now, airtime, "alert")
        result = modem.send(codec.PORT_ALERT, payload, confirmed, airtime)
        if not result.transmitted:
            self._refund(row, airtime)
        if result.status is SendStatus.ACKED:
            self.ledger.record(Tx(now, self.plan.default_band.name, 0.0, "ack", downlink=True))
        self._handle_downlinks(result.downlinks)
        attempts = p.attempts + (1 if result.transmitted else 0)
        st = result.status
        if st is SendStatus.ACKED:
            self._no_ack_streak = 0
        if st in (SendStatus.ACKED, SendStatus.SENT):
            self._finish(p.event_id, "sent", now, attempts=attempts,
                         confirmed=st is SendStatus.ACKED)
            self._count(alerts_sent=1)
            logger.info("LoRa: alert %s delivered (%s, attempt %d, %d bytes, %.0f ms on air)",
                        p.event_id, st.value, attempts, len(payload), airtime * 1000)
            return
        retry_at = self._after_failure(result, now)
        if st is SendStatus.NO_ACK:
            self._count(no_ack=1)
            self._no_ack_streak += 1
            if self._no_ack_streak >= REJOIN_AFTER_NO_ACKS:
                logger.warning("LoRa: %d confirmed uplinks in a row without an ACK: the session "
                               "looks lost; joining again", self._no_ack_streak)
                self._rejoin = True
                self._join_at = now
                self._count(rejoins=1)
        if result.transmitted and attempts >= self.lw.max_attempts:
            self._finish(p.event_id, "failed", now, attempts=attempts, error=result.detail)
            self._count(alerts_failed=1)
            logger.error("LoRa: alert %s given up after %d transmissions (it still goes by "
                         "MQTT)", p.event_id, attempts)
            return
        self._conn.execute(
            "UPDATE lora_tx SET attempts = ?, next_attempt_at = ?, last_error = ? "
            "WHERE event_id = ?", (attempts, retry_at, f"{st.value}: {result.detail}"[:200],
                                   p.event_id))
        logger.warning("LoRa: alert %s not delivered (%s %s); attempt %d of %d, retry after "
                       "%.0f s", p.event_id, st.value, result.detail, attempts,
                       self.lw.max_attempts, retry_at - now)

    def _after_failure(self, result: SendResult, now: float) -> float:
        """React to a failed send; returns when the message may be tried again."""
        st = result.status
        if st in (SendStatus.NOT_JOINED, SendStatus.RESET):
            if st is SendStatus.RESET:
                self._count(modem_resets=1)
                if self.modem is not None:
                    self.modem.take_reset()
            self._provisioned = False  # set everything again, then re-join
            self._join_at = now
            with self._lock:
                self._stats.joined = False
            return now
        if st is SendStatus.TIMEOUT:
            self._count(timeouts=1)
            self._provisioned = False  # probe and set up the module again before the retry
            return now
        if st in (SendStatus.BUSY, SendStatus.DUTY_CYCLE):
            self._count(busy=1)
            return now + (result.retry_after_s or BUSY_RETRY_S)
        if st is SendStatus.NO_ACK:
            # The ledger spaces the retry by the time-off anyway; the jitter de-synchronises
            # traps whose uplinks collided.
            return now + self._rng.uniform(0.0, NO_ACK_JITTER_S)
        return now + BUSY_RETRY_S  # REJECTED: a bug or a DR too slow; try again later

    def _finish(self, event_id: str, state: str, now: float, *, attempts: int | None = None,
                confirmed: bool | None = None, error: str | None = None) -> None:
        assert self._conn is not None
        self._conn.execute(
            "UPDATE lora_tx SET state = ?, done_at = ?, attempts = COALESCE(?, attempts), "
            "confirmed = ?, last_error = ? WHERE event_id = ?",
            (state, now, attempts, None if confirmed is None else int(confirmed), error,
             event_id))

    # -- status -------------------------------------------------------------------------

    def _last_status(self) -> float:
        """When the last status went; before the first one, as if one had gone an interval
        before this start (so the first is due at once, and overdue an interval later)."""
        v = self._meta("status_at")
        return float(v) if v is not None else self._opened_at - self._status_every_s()

    def _status_overdue(self, now: float) -> bool:
        every = self._status_every_s()
        return self._status_requested or (every > 0 and now >= self._last_status() + 2 * every)

    def _maybe_status(self, modem: LoRaModem, sf: int, bw: int, now: float,
                      backlog: bool) -> tuple[bool, float]:
        """Send the periodic status when due and the budget leaves room for alerts.

        Returns:
            (sent, when to look again).
        """
        assert self.ledger is not None
        every = self._status_every_s()
        last = self._last_status()
        if not self._status_requested and (every <= 0 or now < last + every):
            return False, (last + every if every > 0 else now + RESCAN_S)
        airtime = uplink_airtime_s(codec.STATUS_BYTES, sf, bw)
        alert_airtime = uplink_airtime_s(codec.ALERT_BYTES, sf, bw)
        if self.ledger.headroom_s(now) - airtime < self.lw.status_reserve * alert_airtime:
            return False, now + STATUS_RECHECK_S  # keep the airtime for alerts
        allowed = self.ledger.next_allowed(airtime, now)
        if allowed > now:
            return False, allowed
        if self._rate_changed(modem):
            return False, now
        status = self._status(backlog)
        row = self._charge(now, airtime, "status")
        result = modem.send(codec.PORT_STATUS, codec.encode_status(status), False, airtime)
        if not result.transmitted:
            self._refund(row, airtime)
        self._handle_downlinks(result.downlinks)
        if result.status in (SendStatus.SENT, SendStatus.ACKED):
            self._status_requested = False
            self._set_meta("status_at", repr(now))
            self._count(status_sent=1)
            logger.info("LoRa: status sent")
            return True, now
        self._after_failure(result, now)
        return False, now + BUSY_RETRY_S

    def _status(self, backlog: bool) -> codec.Status:
        base = codec.Status()
        if self._status_source is not None:
            try:
                base = self._status_source()
            except Exception:  # figures are nice to have; the report still goes
                logger.exception("LoRa: status figures failed")
        return codec.Status(
            battery_v=base.battery_v, temp_c=base.temp_c, disk_free_gb=base.disk_free_gb,
            outbox_depth=base.outbox_depth, uptime_min=base.uptime_min,
            time_synced=base.time_synced, mqtt_connected=self._mqtt_up(),
            disk_low=base.disk_low, lora_backlog=backlog)

    # -- downlinks ----------------------------------------------------------------------

    def _handle_downlinks(self, downlinks: list[Downlink]) -> None:
        for dl in downlinks:
            self._count(downlinks=1)
            if self.ledger is not None:
                self.ledger.record(Tx(self.clock.wall(), self.plan.default_band.name, 0.0,
                                      "downlink", downlink=True))
            res = codec.decode_downlink(dl.port, dl.payload)
            if not res.ok:
                self._count(bad_downlinks=1)
                logger.warning("LoRa: downlink on port %d ignored: %s", dl.port,
                               "; ".join(res.errors))
                continue
            if not self.lw.accept_commands:
                logger.warning("LoRa: command %s ignored (lorawan.accept_commands = false)",
                               res.data.get("command"))
                continue
            self._command(res.data)

    def _command(self, data: dict[str, Any]) -> None:
        self._count(commands=1)
        name = data["command"]
        logger.warning("LoRa: downlink command %s", data)
        if name == "request_status":
            self._status_requested = True
        elif name == "set_status_interval":
            self._set_meta("status_every_h", str(data["hours"]))
        elif name == "set_mode":
            self._set_meta("mode", str(data["mode"]))
        elif name == "set_threshold":
            self._set_threshold(THRESHOLD_KEYS[str(data["target"])], float(data["threshold"]))

    def _set_threshold(self, key: str, value: float) -> None:
        """Hand a threshold to the settings service, exactly like an MQTT ``config/set``:
        it validates, persists (source ``lorawan``) and applies it to every stage."""
        if self._on_settings is None:
            logger.warning("LoRa: %s = %s not applied: no settings hook", key, value)
            return
        try:
            self._on_settings({key: value})
        except (ConfigError, StorageError) as e:
            logger.warning("LoRa: %s = %s refused: %s", key, value, e)

    # -- meta ---------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        return self._meta_cache.get(key)

    def _set_meta(self, key: str, value: str) -> None:
        """Persist a router setting (status time, downlink-set mode and interval)."""
        assert self._conn is not None
        self._conn.execute("INSERT OR REPLACE INTO lora_meta (key, value) VALUES (?, ?)",
                           (key, value))
        self._meta_cache[key] = value


def _backoff(n: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random (n ≥ 1)."""
    base = min(hi, lo * (1 << min(n - 1, 30)))
    return base / 2 + rng.uniform(0.0, base / 2)
