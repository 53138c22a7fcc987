"""The supervisor MCU driver: the Pi's end of ``firmware/PROTOCOL.md`` over pyserial.

What the MCU does for the trap (firmware/README.md): it keeps the PIR, the RTC and the Pi's
load switch while the Pi is off, so in gated mode the Pi boots *because of* a trigger and
learns about it afterwards. This driver is how it learns: the MCU's TRIGGER frames become
:class:`~edge_app.core.events.TriggerEvent` (stamped with the MCU's RTC time of the PIR edge,
not the Pi's boot time), handed to the pipeline, and only then acknowledged (TRIGGER_ACK), so
a trigger is never lost between the MCU's memory and the trap's queue: until it is acked the
MCU sends it again, and the driver drops the repeats it has already delivered.

It also keeps the MCU's watchdog fed (HEARTBEAT with the stages' health), reads battery, solar,
temperature and the MCU's state for the stats (GET_STATUS), sets the MCU's RTC from the Pi's
clock while NTP or GPS keeps that one right (SET_TIME, hourly at most), and offers the power
commands a power policy needs: :meth:`McuDriver.power_off` (the shutdown handshake: POWER_OFF,
then halt; the MCU cuts the power when the halt pin rises) and :meth:`McuDriver.power_cycle`.

Threads and waits: the serial link (:mod:`edge_app.trap.hardware.mcu_link`) has a reader thread
blocked in ``serial.read`` (select, no polling); replies wake the command that waits for them
(matched by ``seq``), HELLO and TRIGGER go to the stage's inbox. The stage loop
(:meth:`McuDriver.run`, a supervised worker) sleeps until the inbox or the next heartbeat /
status / time-sync deadline of the pure :class:`McuTimers` wakes it. Every command times out
and is retried (same ``seq``, so a late ACK of the first try still counts), then fails with
:class:`McuError` — a missing MCU never blocks a stage for longer than that.

Why the driver speaks first after opening the port instead of waiting for HELLO: the MCU only
sends the pending triggers after the Pi's first valid frame, and waiting up to HELLO's 2 s
period would add that to every gated wake's trigger latency. A HELLO that does arrive (the
port was open when the MCU powered the Pi, or the MCU restarted) is logged, counted and
answered with GET_STATUS, which also ends the HELLOs.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock
from edge_app.core.config import McuConfig
from edge_app.core.events import TriggerEvent
from edge_app.core.mcu_protocol import (
    GetStatus,
    Heartbeat,
    Hello,
    Message,
    Mode,
    PiState,
    PowerCycle,
    PowerOff,
    ResetCause,
    Schedule,
    SetTime,
    Status,
    TimeSource,
    Trigger,
    TriggerAck,
    WakeReason,
    code_name,
)
from edge_app.trap.hardware.mcu_link import McuError, McuLink, McuRefused

__all__ = ["McuDriver", "McuError", "McuRefused", "McuRtcView", "McuTimers",
           "trigger_event"]

logger = logging.getLogger(__name__)

REOPEN = Backoff(1.0, 60.0, jitter="none")
SYNC_RETRY_S = 60.0
"""A failed or ineffective SET_TIME is tried again after this, not at every heartbeat."""
BACKDATE_AFTER_S = 1.0
"""A trigger the MCU's clock says is older than this (its RTC counts whole seconds) gets its
``mono`` moved back by its age, so latency figures include the boot it waited for."""
INBOX_MAX = 256
SEEN_MAX = 256


# -- pure parts -------------------------------------------------------------------------------


@dataclass
class McuTimers:
    """When the next heartbeat, status request and RTC sync are due; pure and clock-free.

    The RTC is set while the Pi's clock is good (NTP or GPS): at once when never set in this
    run or when a STATUS newer than the last sync says the RTC is not valid, then every
    ``sync_every_s``; a failed try waits :data:`SYNC_RETRY_S`.
    """

    heartbeat_s: float
    status_every_s: float
    sync_every_s: float
    next_heartbeat: float = 0.0
    next_status: float = 0.0
    synced_at: float | None = None
    sync_tried_at: float | None = None
    rtc_invalid: bool = False

    def due(self, now: float, time_good: bool) -> list[str]:
        out = []
        if now >= self.next_heartbeat:
            out.append("heartbeat")
        if now >= self.next_status:
            out.append("status")
        if time_good and now >= self._sync_at():
            out.append("time")
        return out

    def _sync_at(self) -> float:
        want = 0.0 if self.synced_at is None or self.rtc_invalid \
            else self.synced_at + self.sync_every_s
        if self.sync_tried_at is not None:
            want = max(want, self.sync_tried_at + SYNC_RETRY_S)
        return want

    def next_deadline(self, time_good: bool) -> float:
        """The earliest due time (the sync only counts while the Pi's clock is good; when it
        becomes good the next heartbeat notices)."""
        at = min(self.next_heartbeat, self.next_status)
        return min(at, self._sync_at()) if time_good else at

    def done(self, action: str, now: float, ok: bool) -> None:
        if action == "heartbeat":
            self.next_heartbeat = now + self.heartbeat_s
        elif action == "status":
            self.next_status = now + self.status_every_s
        elif action == "time":
            self.sync_tried_at = now
            if ok:
                self.synced_at, self.rtc_invalid = now, False
                self.next_status = now  # read back the RTC's new validity

    def status_seen(self, rtc_valid: bool) -> None:
        if not rtc_valid:
            self.rtc_invalid = True


@dataclass
class McuRtcView:
    """The MCU's clock seen from the Pi's monotonic clock, to date pending triggers.

    A STATUS carries the RTC's whole seconds; ``offset`` maps Pi monotonic time to RTC time
    with the half second the truncation loses on average. Works whether the RTC was ever set
    or not: only differences are used.
    """

    offset: float | None = None

    def update(self, rtc_time: int, mono: float) -> None:
        self.offset = rtc_time + 0.5 - mono

    def age(self, trigger_time: float, mono: float) -> float | None:
        """Seconds from the trigger to ``mono``, or None before the first STATUS."""
        return None if self.offset is None else mono + self.offset - trigger_time


def trigger_event(t: Trigger, mono: float, wall: float, rtc: McuRtcView) -> TriggerEvent:
    """The pipeline's view of an MCU trigger received at ``mono`` / ``wall``.

    ``wall`` is the MCU's RTC time of the PIR edge when the RTC is valid (``time_source =
    rtc``), else the Pi's time minus the trigger's age on the MCU's clock. ``mono`` is moved
    back by that age when it is over :data:`BACKDATE_AFTER_S`.
    """
    age = rtc.age(t.time, mono)
    back = age if age is not None and age > BACKDATE_AFTER_S else 0.0
    back = min(back, 7 * 86400.0)  # a bad RTC must not send mono to the distant past
    if t.rtc_valid:
        return TriggerEvent(t.number, mono - back, t.time, "mcu", "rtc")
    return TriggerEvent(t.number, mono - back, wall - back, "mcu")


def status_stats(st: Status) -> dict[str, Any]:
    """A STATUS as the stats message shows it (codes by name)."""
    return {
        "state": code_name(PiState, st.state), "mode": code_name(Mode, st.mode),
        "boot_count": st.boot_count, "reset_cause": code_name(ResetCause, st.reset_cause),
        "wake_reason": code_name(WakeReason, st.wake_reason), "rtc_valid": st.rtc_valid,
        "low_voltage": st.low_voltage, "boot_backoff": st.boot_backoff,
        "solar_charging": st.solar_charging, "triggers_total": st.triggers_total,
        "triggers_pending": st.triggers_pending, "mcu_bad_frames": st.bad_frames,
    }


# -- the driver (a supervised stage) ----------------------------------------------------------


@dataclass
class DriverCounters:
    hellos: int = 0
    triggers_received: int = 0
    triggers_delivered: int = 0
    trigger_duplicates: int = 0
    triggers_ignored: int = 0  # trigger.source = gpio: acked, not delivered
    trigger_ack_failures: int = 0
    inbox_dropped: int = 0
    time_sets: int = 0
    heartbeats: int = 0
    command_failures: int = 0
    port_failures: int = 0


class McuDriver:
    """The supervisor MCU as the trap sees it. Run :meth:`run` as a supervised stage.

    Args:
        cfg: the ``[mcu]`` section.
        clock: waits and timestamps.
        on_trigger: receives each MCU trigger once (``trigger.source = "mcu"``); must not
            block (push into a bounded queue). None: triggers are acknowledged and counted
            but not delivered (``trigger.source = "gpio"`` with ``mcu.enabled``).
        port: overrides ``cfg.port`` (the simulator's pty).
        health: the stages' health for the heartbeat (True when every stage is on time).
        time_source: the Pi clock's source now (``gps``, ``ntp``, ``none``).
        beat: called every turn of the loop, at least every ``heartbeat_s`` (the stage's
            heart for the watchdog; settable after construction).
    """

    def __init__(self, cfg: McuConfig, clock: Clock,
                 on_trigger: Callable[[TriggerEvent], None] | None, *,
                 port: str | None = None, health: Callable[[], bool] | None = None,
                 time_source: Callable[[], str] | None = None,
                 beat: Callable[[], None] | None = None) -> None:
        self.cfg, self.clock = cfg, clock
        self._on_trigger = on_trigger
        self._health = health or (lambda: True)
        self._time_source = time_source or (lambda: "none")
        self.beat: Callable[[], None] = beat or (lambda: None)
        self.link = McuLink(port or cfg.port, cfg.baudrate, clock, self._inbound,
                            self.interrupt)
        self.counters = DriverCounters()
        self.rtc = McuRtcView()
        self.hello: Hello | None = None
        self.status: Status | None = None
        self.status_at: float | None = None
        self._lock = threading.Lock()  # guards _inbox, _seen
        self._inbox: deque[Message] = deque()
        self._seen: deque[tuple[int, int, int]] = deque(maxlen=SEEN_MAX)
        self._wake = threading.Event()
        self._sched = McuTimers(cfg.heartbeat_s, cfg.status_every_s, cfg.time_sync_every_s)
        self._powering_off = False
        self._silent = 0  # scheduled commands failed in a row (log throttle)

    # -- commands (any thread; the stage must be running) --------------------------------

    def _request(self, msg: Message) -> Message:
        try:
            return self.link.request(msg, self.cfg.reply_timeout_s, self.cfg.attempts)
        except McuError:
            self.counters.command_failures += 1
            raise

    def get_status(self) -> Status:
        """Ask now; also becomes :attr:`status`. Raises :class:`McuError`."""
        reply = self._request(GetStatus())
        assert isinstance(reply, Status)
        return reply

    def heartbeat(self, healthy: bool) -> None:
        self._request(Heartbeat(1 if healthy else 0))
        self.counters.heartbeats += 1

    def set_time(self, unix_s: int | None = None, source: TimeSource = TimeSource.NTP) -> None:
        """Set the MCU's RTC; by default to the Pi's clock, sent on a whole second.

        The DS3231 takes whole seconds and the firmware starts the new second when the frame
        arrives, so the frame is sent just after the Pi's clock turns a second (waiting at
        most one second): the RTC then agrees with the Pi to the UART's few milliseconds
        instead of up to a second.
        """
        if unix_s is None:
            frac = self.clock.wall() % 1.0
            if frac > 0.005:
                self.clock.wait(threading.Event(), 1.0 - frac)
            unix_s = round(self.clock.wall())
        unix = unix_s
        self._request(SetTime(unix, int(source)))
        self.counters.time_sets += 1
        logger.info("MCU RTC set to %d (%s)", unix, source.name.lower())

    def set_schedule(self, mode: Mode, hybrid_above_mv: int = 0,
                     windows: tuple[tuple[int, int], ...] = ()) -> None:
        self._request(Schedule(int(mode), hybrid_above_mv, windows))

    def power_cycle(self, grace_s: int, off_s: int) -> None:
        """Ask for a hard power-cycle: power cut after ``grace_s`` (or at halt), back on
        ``off_s`` later (e.g. after the camera stayed hung through every reopening)."""
        self._request(PowerCycle(grace_s, off_s))
        logger.warning("MCU will power-cycle the Pi in %d s (off for %d s)", grace_s, off_s)

    def power_off(self, timeout_s: int | None = None,
                  halt: Callable[[], None] | None = None) -> None:
        """The shutdown handshake: POWER_OFF, then ``halt`` (e.g. ``systemctl poweroff``).

        The MCU cuts the Pi's power when the halt pin rises (gpio-poweroff, once the kernel
        has halted) or ``timeout_s`` after the command, whichever comes first; heartbeats and
        status requests stop, so the MCU's watchdog cannot take the halt for a hang.
        """
        self._request(PowerOff(timeout_s or self.cfg.power_off_timeout_s))
        self._powering_off = True
        logger.info("MCU acknowledged POWER_OFF: halting")
        if halt is not None:
            halt()

    # -- readings --------------------------------------------------------------------------

    def readings(self) -> tuple[float | None, float | None]:
        """(battery V, temperature °C) from the latest STATUS, for events and LoRa status."""
        st = self.status
        return (None, None) if st is None else (st.battery_v, st.temp_c)

    def stats(self) -> dict[str, Any]:
        """The stats message's part: ``battery_v``, ``solar_v``, ``temp_c`` and ``mcu``."""
        st, hello, now = self.status, self.hello, self.clock.monotonic()
        last = self.link.last_rx
        mcu: dict[str, Any] = {
            "connected": last is not None and now - last < 3 * self.cfg.heartbeat_s,
            "firmware": None if hello is None else f"{hello.fw_major}.{hello.fw_minor}",
            "status_age_s": None if self.status_at is None else round(now - self.status_at, 1),
            **({} if st is None else status_stats(st)),
            "rx": {**self.link.rx.counts, "bad_frames": self.link.rx.bad_frames},
            **asdict(self.counters), **asdict(self.link.counters),
        }
        return {"battery_v": None if st is None else st.battery_v,
                "solar_v": None if st is None else st.solar_v,
                "temp_c": None if st is None else st.temp_c, "mcu": mcu}

    # -- the stage ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Open the port (retrying with backoff while it is missing) and serve it."""
        failures = 0
        while not stop.is_set():
            self.beat()  # a missing MCU is logged and retried, never a reason to restart
            try:
                self.link.open()
            except McuError as e:
                failures += 1
                self.counters.port_failures += 1
                delay = REOPEN.delay(failures)
                logger.error("MCU: %s; trying again in %.0f s", e, delay)
                self.clock.wait(stop, delay)
                continue
            try:
                self._serve(stop)
            finally:
                self.link.close()
            if not stop.is_set():
                failures += 1
                self.counters.port_failures += 1
                self.clock.wait(stop, REOPEN.delay(failures))

    def _serve(self, stop: threading.Event) -> None:
        now = self.clock.monotonic()
        self._sched.next_heartbeat = self._sched.next_status = now  # speak first: ends HELLOs
        while not stop.is_set():
            if self.link.broken:
                logger.error("MCU: port failed (%s); reopening", self.link.broken)
                return
            self.beat()
            self._wake.clear()
            self._drain_inbox()
            if not self._powering_off:
                self._due()
            good = self._time_source() in ("ntp", "gps")
            wait = self._sched.next_deadline(good) - self.clock.monotonic()
            self.clock.wait(self._wake, max(0.0, min(wait, self.cfg.heartbeat_s)))

    def _due(self) -> None:
        now = self.clock.monotonic()
        source = self._time_source()
        for action in self._sched.due(now, source in ("ntp", "gps")):
            ok = True
            try:
                if action == "heartbeat":
                    self.heartbeat(self._health())
                elif action == "status":
                    self.get_status()
                else:
                    self.set_time(None, TimeSource.GPS if source == "gps" else TimeSource.NTP)
            except McuError as e:
                ok = False
                self._silent += 1
                if self._silent in (1, 10) or self._silent % 100 == 0:  # not a line a second
                    logger.warning("MCU: %s failed: %s (%d in a row)", action, e, self._silent)
            if ok and self._silent:
                logger.info("MCU answers again after %d failed commands", self._silent)
                self._silent = 0
            self._sched.done(action, self.clock.monotonic(), ok)

    # -- inbound (reader thread → inbox → stage) ---------------------------------------------

    def _inbound(self, msg: Message) -> None:
        """Reader thread: keep STATUS at once, queue the rest for the stage; never block."""
        if isinstance(msg, Status):
            now = self.clock.monotonic()
            self.status, self.status_at = msg, now
            self.rtc.update(msg.rtc_time, now)
            self._sched.status_seen(msg.rtc_valid)
            return
        with self._lock:
            if len(self._inbox) >= INBOX_MAX:
                self.counters.inbox_dropped += 1  # the MCU resends an unacked trigger
                return
            self._inbox.append(msg)
        self._wake.set()

    def _drain_inbox(self) -> None:
        while True:
            with self._lock:
                if not self._inbox:
                    return
                msg = self._inbox.popleft()
            if isinstance(msg, Hello):
                self._hello(msg)
            elif isinstance(msg, Trigger):
                self._trigger(msg)

    def _hello(self, h: Hello) -> None:
        self.hello = h
        self.counters.hellos += 1
        logger.info("MCU firmware %d.%d: woke the Pi for %s (boot %d, MCU reset: %s, mode %s)",
                    h.fw_major, h.fw_minor, code_name(WakeReason, h.wake_reason), h.boot_count,
                    code_name(ResetCause, h.reset_cause), code_name(Mode, h.mode))
        self._sched.next_status = self.clock.monotonic()  # answering ends the HELLOs
        self._powering_off = False

    def _trigger(self, t: Trigger) -> None:
        self.counters.triggers_received += 1
        key = (t.number, t.rtc_time, t.rtc_ms)
        if key in self._seen:
            self.counters.trigger_duplicates += 1
        elif self._on_trigger is None:
            self.counters.triggers_ignored += 1
            self._seen.append(key)
        else:
            ev = trigger_event(t, self.clock.monotonic(), self.clock.wall(), self.rtc)
            logger.info("MCU trigger #%d at %.3f (%s%s)", t.number, ev.wall,
                        ev.time_source or "Pi clock", ", taken while the Pi was off"
                        if t.while_off else "")
            try:
                self._on_trigger(ev)
            except Exception:
                # Not acknowledged: the MCU sends it again and it gets another chance.
                logger.exception("on_trigger failed for MCU trigger #%d", t.number)
                return
            self._seen.append(key)
            self.counters.triggers_delivered += 1
        try:
            self._request(TriggerAck(t.number))
        except McuError as e:
            self.counters.trigger_ack_failures += 1
            logger.warning("MCU: TRIGGER_ACK %d failed (%s); it will be sent again", t.number, e)
