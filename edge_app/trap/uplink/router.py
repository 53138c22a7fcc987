"""The LoRaWAN link: the modem adapter around the LoRa send policy.

What goes over LoRa: alerts (11 bytes, fPort 10) and a status report every few hours
(fPort 11). Never images, thumbnails or event JSON — a 30 KB photo would be 15 minutes of SF12
airtime (the outbox refuses such rows). ``lorawan.mode`` picks *which* alerts:

* ``always`` (default; ARCHITECTURE §4: an alert is "sent on every link"): every alert also
  goes over LoRa, and the ranger dedupes the two copies;
* ``fallback``: an alert goes over LoRa only while MQTT has not delivered it — at once when
  the MQTT link is down, or after ``fallback_after_s`` when MQTT looks up but has not
  confirmed it; an alert MQTT delivered before its LoRa turn is ``skipped`` (for parks with
  good cellular coverage, or TTN's fair-use budget).

Durable through the outbox: the store queues a ``link = 'lorawan'`` alert row in the same
transaction as the event (:mod:`edge_app.trap.store.pipeline`), so an alert decided just before a
power cut is found again at the next start, and one already sent is not sent again. At start
the router also adopts alerts catalogued within ``max_age_s`` that have no LoRa row (stored
while LoRa was off, or before a software update). The duty-cycle ledger (``lora_airtime``, see
:mod:`edge_app.trap.uplink.airtime`) is charged *before* each transmission and refunded when the
modem says nothing went on the air, so a crash mid-send can only over-count airtime, never
under-count it.

What to send next, how failures are retried and when to give up are decided by the pure
policy of :mod:`edge_app.trap.uplink.lora_policy`; downlink commands pass the guarded door of
:mod:`edge_app.trap.uplink.lora_door`. This module is the adapter: modem lifecycle, join,
transmissions, and the rows. Retries are the router's: the modem is set to no retransmissions
(``AT+RETY=0``), so every transmission is in the ledger and the duty cycle spaces them.

:meth:`LoraRouter.step` does at most one radio action and returns when it next wants to run;
:meth:`LoraRouter.run` is the supervised loop around it. Tests drive :meth:`step` directly with
a fake clock to play a whole day in a second.
"""

from __future__ import annotations

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
from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import Config, LorawanConfig
from edge_app.core.errors import ConfigError, StorageError
from edge_app.core.guard import Refusals
from edge_app.trap.settings import Settings
from edge_app.trap.store.db import open_db
from edge_app.trap.store.lora_rows import LoraRows, Waiting
from edge_app.trap.store.outbox import Link
from edge_app.trap.store.upkeep import OutboxUpkeep
from edge_app.trap.uplink.airtime import DutyCycleLedger, Tx, band_plan, uplink_airtime_s
from edge_app.trap.uplink.counters import Counters
from edge_app.trap.uplink.lora_door import Command, DownlinkDoor
from edge_app.trap.uplink.lora_policy import (
    RESCAN_S,
    AlertOrder,
    LinkHealth,
    StatusSchedule,
    after_attempts,
    plan_step,
)
from edge_app.trap.uplink.lora_radio import LoraRadio, ModemFactory
from edge_app.trap.uplink.lorawan import (
    Downlink,
    LoRaModem,
    LorawanKeys,
    ModemError,
    SendStatus,
    Timings,
    load_secrets,
    make_modem,
)

logger = logging.getLogger(__name__)

#: Applies remote settings (dotted key → value); raises ConfigError if they are invalid. The
#: daemon's is ``Settings.apply(values, "lorawan")``, which persists them.
SettingsHook = Callable[[dict[str, Any]], object]


@dataclass
class RouterStats:
    """Counters of the LoRa path (a snapshot is in :meth:`LoraRouter.stats`)."""

    joined: bool = False
    join_attempts: int = 0
    join_failures: int = 0
    alerts_queued: int = 0  # adopted at start (the store queues the others)
    alerts_sent: int = 0  # confirmed (ACKed) or, unconfirmed, transmitted
    alerts_skipped: int = 0  # delivered by MQTT first (fallback mode)
    alerts_expired: int = 0  # stale, left to MQTT
    alerts_failed: int = 0  # out of attempts, left to MQTT
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
        on_settings: applies a ``set_threshold`` command (default with ``settings``:
            ``settings.apply(values, "lorawan")``, which validates and persists it).
        settings: the settings service; the router reads the current config from it.
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
        settings: Settings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg, self._settings = cfg, settings
        self.db_path = Path(db)
        self.clock: Clock = clock or SystemClock()
        self.keys = keys or load_secrets(self.lw.secrets_file)
        self._mqtt_connected = mqtt_connected
        self._status_source = status_source
        if on_settings is None and settings is not None:
            on_settings = lambda values: settings.apply(values, "lorawan")  # noqa: E731
        self._on_settings = on_settings
        self._rng = rng or random.Random()
        self.plan = band_plan(self.lw.region, self.lw.duty_cycle)
        self._wake = threading.Event()
        self.beat: Callable[[], None] = lambda: None  # the watchdog's, set by the daemon
        self.counters = Counters(RouterStats())  # written by the router, read by stats
        self.refusals = Refusals("lorawan downlinks", self.clock)
        self.door = DownlinkDoor(self.refusals, self._count, lambda: self.lw.accept_commands,
                                 self._command)
        self._conn: sqlite3.Connection | None = None
        self._rows: LoraRows | None = None
        self.ledger: DutyCycleLedger | None = None
        self.health = LinkHealth(Backoff(self.lw.join_backoff_min_s,
                                         self.lw.join_backoff_max_s, "equal"), self._rng)
        self.radio = LoraRadio(modem_factory or default_modem_factory(cfg), self.keys,
                               lambda: self.lw, self.health, self._count,
                               lambda joined: self.counters.set(joined=joined),
                               self.wake)
        self.status = StatusSchedule(0.0, 0.0)
        self._meta: dict[str, str] = {}
        self._stale_logged_at = -1e18

    @property
    def cfg(self) -> Config:
        """The current config (the settings service's, when there is one)."""
        return self._settings.config if self._settings is not None else self._cfg

    @property
    def lw(self) -> LorawanConfig:
        return self.cfg.lorawan

    @property
    def modem(self) -> LoRaModem | None:
        """The modem driver while it is open."""
        return self.radio.modem

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open the database, adopt unqueued alerts, load the ledger (router thread)."""
        if self._conn is not None:
            return
        conn = open_db(self.db_path)
        self._conn, self._rows = conn, LoraRows(conn)
        now = self.clock.wall()
        self._count(alerts_queued=OutboxUpkeep(conn, self.clock, self.cfg.outbox).adopt_alerts(
            Link.LORAWAN, now - self.lw.max_age_s, now))
        self._meta = self._rows.meta()
        adopt_legacy_settings(self._rows, self._meta, self._on_settings)
        every = self._status_every_s()
        # Before the first status: as if one had gone an interval before this start (so the
        # first is due at once, and overdue an interval later).
        last = float(self._meta.get("status_at", now - every))
        self.status = StatusSchedule(every, last)
        self.ledger = DutyCycleLedger(self.plan, conn, fair_use=self.lw.fair_use)
        self.ledger.load(now)

    def close(self) -> None:
        self.radio.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = self._rows = None

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
        self.radio.interrupt()
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """The supervised loop: :meth:`step`, then sleep until it wants to run again."""
        self.radio.stopping = False
        self.open()
        try:
            while not stop.is_set() and not self.radio.stopping:
                self.beat()
                self._wake.clear()
                delay = self.step() - self.clock.wall()
                if delay > 0 and not stop.is_set():
                    self.clock.wait(self._wake, min(delay, RESCAN_S))
        finally:
            self.close()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters, the refusals and the airtime budget."""
        out = asdict(self.counters.snapshot())
        out["refusals"] = self.refusals.snapshot()
        if self.ledger is not None:
            out["budget"] = self.ledger.summary(self.clock.wall())
        return out

    def _count(self, **deltas: float) -> None:
        self.counters.add(**deltas)

    # -- the step -----------------------------------------------------------------------

    def step(self) -> float:
        """Do at most one radio action; return the wall time of the next step wanted."""
        self.open()
        assert self.ledger is not None
        now = self.clock.wall()
        wake_at = now + RESCAN_S
        radio = self.radio
        try:
            modem = radio.ready(now)
            if modem is None:
                return min(wake_at, max(radio.retry_at, now + 0.001))
            self._handle_downlinks(modem.take_downlinks())
            if not modem.joined or radio.rejoin:
                return min(wake_at, radio.try_join(self.ledger, now))
            return min(wake_at, self._serve(modem, now))
        except ModemError as e:
            radio.failed(now, str(e))
            return min(wake_at, radio.retry_at)

    # -- alerts and status --------------------------------------------------------------

    def _mode(self) -> str:
        return self.lw.mode

    def _status_every_s(self) -> float:
        return 3600.0 * self.lw.status_every_h


    def _mqtt_up(self) -> bool:
        return _probe(self._mqtt_connected)

    def _serve(self, modem: LoRaModem, now: float) -> float:
        """Ask the policy what goes now; send it (one alert or one status) or wait."""
        assert self._rows is not None
        assert self.ledger is not None
        fallback = self._mode() == "fallback"
        if fallback:
            self._count(alerts_skipped=self._rows.skip_delivered(now))
        self._rows.orphans(now)
        order = AlertOrder(self.lw.priority, self.lw.max_age_s, self.lw.fallback_after_s)
        triage = order.triage(self._rows.waiting(), now)
        self._drop_stale(triage.drop, now)
        mqtt_up = self._mqtt_up()
        alert, alert_wake = order.first_eligible(triage.queue, now, fallback and mqtt_up)
        sf, bw = self.radio.sf_bw()
        self.status.every_s = self._status_every_s()
        plan = plan_step(now, alert, alert_wake, self.status, self.ledger,
                         uplink_airtime_s(codec.ALERT_BYTES, sf, bw),
                         uplink_airtime_s(codec.STATUS_BYTES, sf, bw), self.lw.status_reserve)
        if plan.action == "wait":
            return plan.wake_at
        if self.radio.rate_changed():
            return now  # planned with a stale data rate: plan again
        backlog = len(triage.queue) > (1 if plan.alert is not None else 0)
        if plan.alert is not None:
            self._send_alert(modem, plan.alert, backlog, mqtt_up, now)
        else:
            self._send_status(modem, bool(triage.queue), now)
        return now

    def _drop_stale(self, stale: list[Waiting], now: float) -> None:
        """Stale alerts another link carries leave the LoRa queue (logged once an hour)."""
        if not stale:
            return
        assert self._rows is not None
        self._rows.give_up([w.row_id for w in stale], now, "too old for LoRa")
        self._count(alerts_expired=len(stale))
        level = logging.WARNING if now - self._stale_logged_at >= 3600 else logging.DEBUG
        if level == logging.WARNING:
            self._stale_logged_at = now
        logger.log(level, "LoRa: %d alert(s) older than %.0f s dropped from the LoRa queue "
                   "(%d so far; they still go by MQTT)", len(stale), self.lw.max_age_s,
                   self.counters.read(lambda s: s.alerts_expired))

    def _send_alert(self, modem: LoRaModem, w: Waiting, backlog: bool, mqtt_up: bool,
                    now: float) -> None:
        assert self.ledger is not None
        assert self._rows is not None
        payload = codec.encode_alert(_alert_of(w, backlog, mqtt_up))
        airtime = uplink_airtime_s(codec.ALERT_BYTES, *self.radio.sf_bw())
        confirmed = self.lw.confirmed and self.ledger.downlinks_left(now) > 0
        result = self.radio.transmit(self.ledger, now, airtime, "alert", lambda: modem.send(
            codec.PORT_ALERT, payload, confirmed, airtime))
        st = result.status
        if st is SendStatus.ACKED:
            self.ledger.record(Tx(now, self.plan.default_band.name, 0.0, "ack", downlink=True))
            self.health.acked()
        self._handle_downlinks(result.downlinks)
        attempts = w.attempts + (1 if result.transmitted else 0)
        if st in (SendStatus.ACKED, SendStatus.SENT):
            self._rows.sent(w.row_id, now, attempts, st is SendStatus.ACKED)
            self._count(alerts_sent=1)
            logger.info("LoRa: alert %s delivered (%s, attempt %d, %d bytes, %.0f ms on air)",
                        w.event_id, st.value, attempts, len(payload), airtime * 1000)
            return
        retry_at = self._react(result.status, result.retry_after_s, now)
        if not result.transmitted:
            self._rows.retry(w.row_id, retry_at, attempts, f"{st.value}: {result.detail}")
            return
        when = after_attempts(w, attempts, self.lw.max_attempts, retry_at, now, self._rng)
        if when is None:
            self._rows.give_up([w.row_id], now, f"gave up after {attempts} transmissions: "
                               f"{result.detail}", attempts)
            self._count(alerts_failed=1)
            logger.error("LoRa: alert %s given up after %d transmissions (it still goes by "
                         "MQTT)", w.event_id, attempts)
            return
        self._rows.retry(w.row_id, when, attempts, f"{st.value}: {result.detail}")
        logger.warning("LoRa: alert %s not delivered (%s %s); attempt %d of %d, retry after "
                       "%.0f s", w.event_id, st.value, result.detail, attempts,
                       self.lw.max_attempts, when - now)

    def _react(self, status: SendStatus, retry_after_s: float | None, now: float) -> float:
        """Apply the policy's reaction to a failed send; returns the message's retry time."""
        reaction = self.health.after_failure(status, retry_after_s, now)
        self.radio.react(reaction, status, now)
        return reaction.retry_at

    def _send_status(self, modem: LoRaModem, backlog: bool, now: float) -> None:
        assert self._rows is not None
        assert self.ledger is not None
        airtime = uplink_airtime_s(codec.STATUS_BYTES, *self.radio.sf_bw())
        payload = codec.encode_status(status_figures(self._status_source, self._mqtt_up(),
                                                     backlog))
        result = self.radio.transmit(self.ledger, now, airtime, "status", lambda: modem.send(
            codec.PORT_STATUS, payload, False, airtime))
        self._handle_downlinks(result.downlinks)
        if result.status in (SendStatus.SENT, SendStatus.ACKED):
            self.status.sent(now)
            self._rows.set_meta("status_at", repr(now))
            self._count(status_sent=1)
            logger.info("LoRa: status sent")
            return
        self.status.failed(now)
        self._react(result.status, result.retry_after_s, now)

    # -- downlinks ----------------------------------------------------------------------

    def _handle_downlinks(self, downlinks: list[Downlink]) -> None:
        if self.ledger is not None:  # each one counts against the fair-use downlinks
            for _ in downlinks:
                self.ledger.record(Tx(self.clock.wall(), self.plan.default_band.name, 0.0,
                                      "downlink", downlink=True))
        self.door.handle(downlinks)

    def _command(self, cmd: Command) -> None:
        if cmd.name == "request_status":
            self.status.requested = True
            return
        # Validated, persisted (source "lorawan") and applied to every stage by the settings
        # service, exactly like an MQTT config/set.
        apply_remote(self._on_settings, cmd.settings())



def _alert_of(w: Waiting, backlog: bool, mqtt_up: bool) -> codec.Alert:
    """The 11-byte alert of a waiting row: its wire form, rendered at send time."""
    try:
        event: dict[str, Any] = json.loads(w.event_json)
    except ValueError:
        event = {}
    if not isinstance(event, dict):
        event = {}
    dets = event.get("detections")
    count = sum(1 for d in (dets if isinstance(dets, list) else [])
                if isinstance(d, dict) and d.get("category") == w.label)
    battery = event.get("battery_v")
    return codec.Alert(
        label=w.label, species=w.species, confidence=w.score, time=int(w.event_ts),
        seq=w.seq, count=max(count, 1),
        battery_v=float(battery) if isinstance(battery, int | float) else None,
        time_synced=event.get("time_synced") is not False, backlog=backlog,
        mqtt_down=not mqtt_up)


def status_figures(source: Callable[[], codec.Status] | None, mqtt_up: bool,
                   backlog: bool) -> codec.Status:
    """The status report: the daemon's figures plus the link's own flags."""
    base = codec.Status()
    if source is not None:
        try:
            base = source()
        except Exception:  # figures are nice to have; the report still goes
            logger.exception("LoRa: status figures failed")
    return codec.Status(
        battery_v=base.battery_v, temp_c=base.temp_c, disk_free_gb=base.disk_free_gb,
        outbox_depth=base.outbox_depth, uptime_min=base.uptime_min,
        time_synced=base.time_synced, mqtt_connected=mqtt_up, disk_low=base.disk_low,
        lora_backlog=backlog, cellular=base.cellular, cell_signal_low=base.cell_signal_low)


def _probe(mqtt_connected: Callable[[], bool] | None) -> bool:
    """Whether MQTT is up; False when it is not running or the probe fails (a broken probe
    must not stop alerts: assume down, use LoRa)."""
    if mqtt_connected is None:
        return False
    try:
        return bool(mqtt_connected())
    except Exception:
        logger.exception("LoRa: MQTT state probe failed")
        return False


def apply_remote(on_settings: SettingsHook | None, values: dict[str, Any]) -> None:
    """Hand settings a downlink changed to the settings service; a refusal is logged."""
    if on_settings is None:
        logger.warning("LoRa: %s not applied: no settings service", values)
        return
    try:
        on_settings(values)
    except (ConfigError, StorageError) as e:
        logger.warning("LoRa: %s refused: %s", values, e)


def adopt_legacy_settings(rows: LoraRows, meta: dict[str, str],
                          on_settings: SettingsHook | None) -> None:
    """Mode and status interval set by downlinks before the settings service owned them were
    kept in the router's meta table: hand them to the service once, then forget them, so
    there is one owner."""
    values: dict[str, Any] = {}
    if "mode" in meta:
        values["lorawan.mode"] = meta["mode"]
    if "status_every_h" in meta:
        try:
            values["lorawan.status_every_h"] = float(meta["status_every_h"])
        except ValueError:
            logger.warning("LoRa: unreadable earlier status interval dropped")
    if values:
        apply_remote(on_settings, values)
    for key in ("mode", "status_every_h"):
        rows.delete_meta(key)
        meta.pop(key, None)
