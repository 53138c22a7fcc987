"""The supervisor: a tick-driven state machine over the HAL (hal.py), no I/O of its own.

``Supervisor(hal, cfg)``; the main loop calls ``tick(now_ms)`` every few tens of ms and the PIR
interrupt calls ``on_pir(now_ms)``, which only records the edge. ``now_ms`` is any monotonic
millisecond count (main.py extends ``time.ticks_ms`` past its wrap), so the same object runs
on the RP2040, in host tests and behind a pty as the Pi's simulator.

The Pi's power (protocol ``state``): OFF → BOOTING (HELLO every 2 s) → UP (the Pi's first valid
frame) → SHUTTING_DOWN (POWER_OFF / POWER_CYCLE / low voltage: cut on the halt pin or at the
deadline) → OFF, LOW_VOLTAGE_OFF or BACKOFF. What powers the Pi on lives in schedule.PowerPlan
(mode, windows, hybrid battery rule) plus: a PIR trigger, the end of a power-cycle, the end of a
back-off, the battery recovering. Safety comes first in every tick: low voltage, then the
heartbeat watchdog, then everything else.
"""

import config as config_mod
import led
import proto
from link import LinkMixin
from pir import PirFilter, TriggerQueue
from power import Meter, VoltageGuard
from rtcclock import RtcClock
from schedule import PowerPlan, minute_of_day

FW_MAJOR = 1
FW_MINOR = 0
PENDING_MAX = 64

OFF = proto.STATE_OFF
BOOTING = proto.STATE_BOOTING
UP = proto.STATE_UP
SHUTTING_DOWN = proto.STATE_SHUTTING_DOWN
LOW_VOLTAGE_OFF = proto.STATE_LOW_VOLTAGE_OFF
BACKOFF = proto.STATE_BACKOFF
POWERED = (BOOTING, UP, SHUTTING_DOWN)


class Supervisor(LinkMixin):
    def __init__(self, hal, cfg, bad_config=0, now_ms=0):
        self.hal = hal
        self.cfg = cfg
        self.bad_config = bad_config
        self.rx = proto.Receiver(proto.PI_TO_MCU)
        self.pir = PirFilter(cfg["pir_debounce_ms"], cfg["pir_holdoff_ms"],
                             cfg["pir_stuck_s"] * 1000)
        self.triggers = TriggerQueue(PENDING_MAX)
        self.clock = RtcClock()
        self.meter = Meter(hal, cfg)
        cut, rec = config_mod.thresholds(cfg)
        self.guard = VoltageGuard(cut, rec, cfg["lv_confirm_s"] * 1000)
        self.plan = PowerPlan(config_mod.mode_code(cfg), cfg["windows"], cfg["hybrid_above_mv"])
        self.reset_cause = hal.reset_cause()
        self.state = OFF
        self.wake_reason = proto.WAKE_POWER_ON
        self.boot_count = 0
        self.failed_boots = 0
        self.link_up = False
        self.hb_seen = False
        self.health = 0
        self.rtc_valid = False
        self.seq = 0
        self.counts = {"watchdog_cycles": 0, "backoffs": 0, "lv_cuts": 0, "commands": 0,
                       "refused": 0, "bad_state": 0, "encode_errors": 0}
        self._boot_ms = now_ms
        self._last_hb_ms = now_ms
        self._off_ms = now_ms - cfg["cycle_off_s"] * 1000
        self._power_on_at = now_ms if cfg["power_on_at_start"] else None
        self._power_on_reason = proto.WAKE_POWER_ON
        self._pir_wake = False
        self._cut_at = None
        self._halt_cut_at = None
        self._after_cut = None  # (state after the cut, power-on delay ms or None, wake reason)
        self._backoff_until = None
        self._next_hello = now_ms
        self._flash_until = None
        self._led_on = None
        self._ir_on = None
        self._load_state()
        hal.set_pi_power(False)

    # --- entry points ----------------------------------------------------------------------
    def on_pir(self, now_ms):
        """PIR rising edge (from the IRQ): only recorded; ``tick`` decides."""
        self.pir.edge(now_ms)

    def tick(self, now_ms):
        self.hal.wdt_feed()
        self.clock.sample(now_ms, self.hal.rtc_read())
        if self.meter.sample(now_ms):
            self.rtc_valid = bool(self.hal.rtc_valid())
            if self.guard.update(self.meter.battery_mv, now_ms) == "cut":
                self.counts["lv_cuts"] += 1
        t = self.pir.poll(now_ms, self.hal.pir_level())
        if t is not None:
            self._record_trigger(t, now_ms)
        for frame in self.rx.feed(self.hal.uart_read() or b"", now_ms):
            self._handle(frame, now_ms)
        self._step_power(now_ms)
        self._send_due(now_ms)
        self._outputs(now_ms)

    def sleep_ms(self):
        """How long the main loop may sleep before the next tick."""
        if self.state in POWERED or self.rx.busy() or self.pir.pending():
            return self.cfg["tick_ms"]
        return self.cfg["idle_tick_ms"]

    def may_lightsleep(self):
        """True when the next sleep may stop the clocks: the Pi is off (nothing to hear on
        the UART), no frame is half received and no PIR edge waits to be handled. The PIR
        IRQ still wakes the core; its edge is timestamped on wake, late by at most the sleep
        (``idle_tick_ms``), which is nothing next to a Pi's boot."""
        return (self.cfg["idle_sleep"] == "light" and self.state not in POWERED
                and not self.rx.busy() and not self.pir.pending())

    # --- state -------------------------------------------------------------------------------
    def _load_state(self):
        st = self.hal.load_state()
        if st is None:
            return
        sch = st.get("schedule") if isinstance(st, dict) else None
        if (isinstance(sch, dict) and sch.get("mode") in (0, 1, 2)
                and config_mod.valid("windows", sch.get("windows"))
                and config_mod.valid("hybrid_above_mv", sch.get("hybrid_above_mv"))):
            self.plan.set(sch["mode"], sch["windows"], sch["hybrid_above_mv"])
        else:
            self.counts["bad_state"] += 1

    def flags(self):
        f = proto.FLAG_RTC_VALID if self.rtc_valid else 0
        if self.guard.low:
            f |= proto.FLAG_LOW_VOLTAGE
        if self.state == BACKOFF or self.failed_boots >= self.cfg["boot_loop_limit"]:
            f |= proto.FLAG_BOOT_BACKOFF
        if self.meter.solar_charging():
            f |= proto.FLAG_SOLAR_CHARGING
        return f

    def status_fields(self, now_ms):
        """The STATUS payload fields as of ``now_ms``."""
        return {
            "rtc_time": self.clock.at(now_ms)[0] & 0xFFFFFFFF,
            "battery_mv": self.meter.battery_mv,
            "solar_mv": self.meter.solar_mv,
            "temp_dc": self.meter.temp_dc,
            "triggers_total": self.triggers.total & 0xFFFFFFFF,
            "triggers_pending": self.triggers.pending(),
            "boot_count": self.boot_count,
            "reset_cause": self.reset_cause,
            "wake_reason": self.wake_reason,
            "state": self.state,
            "mode": self.plan.mode,
            "flags": self.flags(),
            "bad_frames": self.rx.bad_frames(),
        }

    def hello_fields(self):
        return {"fw_major": FW_MAJOR, "fw_minor": FW_MINOR, "wake_reason": self.wake_reason,
                "reset_cause": self.reset_cause, "boot_count": self.boot_count,
                "mode": self.plan.mode, "flags": self.flags()}

    def _minute(self, now_ms):
        sec = self.clock.at(now_ms)[0]
        return minute_of_day(sec) if self.rtc_valid and sec else None

    # --- triggers ---------------------------------------------------------------------------
    def _record_trigger(self, t_ms, now_ms):
        sec, ms = self.clock.at(t_ms)
        flags = 0 if self.state == UP else proto.TRIG_WHILE_OFF
        if self.rtc_valid:
            flags |= proto.TRIG_RTC_VALID
        self.triggers.add(sec & 0xFFFFFFFF, ms, flags)
        self._flash_until = now_ms + led.PIR_FLASH_MS
        if self.state not in (BOOTING, UP):
            self._pir_wake = True

    # --- power ------------------------------------------------------------------------------
    def _step_power(self, now):
        want = self.plan.want(self._minute(now), self.meter.battery_mv)
        st = self.state
        low = self.guard.low
        if st in (BOOTING, UP):
            if low:
                self._begin_shutdown(now, self.cfg["lv_grace_s"] * 1000,
                                     (LOW_VOLTAGE_OFF, None, None))
            elif st == UP and self.hal.pi_halted():  # halted on its own (e.g. `sudo halt`)
                self.plan.disarm()
                self._begin_shutdown(now, self.cfg["halt_cut_delay_ms"], (OFF, None, None))
            elif now >= self._watchdog_deadline():
                self._watchdog(now)
        elif st == SHUTTING_DOWN:
            if low:
                self._begin_shutdown(now, self.cfg["lv_grace_s"] * 1000,
                                     (LOW_VOLTAGE_OFF, None, None))
            if self._halt_cut_at is None and self.hal.pi_halted():
                self._halt_cut_at = now + self.cfg["halt_cut_delay_ms"]
            if now >= self._cut_at or (self._halt_cut_at is not None
                                       and now >= self._halt_cut_at):
                self._cut(now)
        elif st == LOW_VOLTAGE_OFF:
            if not low:
                self._power_on(now, proto.WAKE_VOLTAGE_RESTORED)
        elif low:
            self.state = LOW_VOLTAGE_OFF
        elif st == BACKOFF:
            if now >= self._backoff_until:
                self._power_on(now, proto.WAKE_BACKOFF_RETRY)
        elif self._power_on_at is not None:
            if now >= self._power_on_at:
                self._power_on(now, self._power_on_reason)
        elif now - self._off_ms >= self.cfg["cycle_off_s"] * 1000:
            if self._pir_wake:
                self._power_on(now, proto.WAKE_PIR)
            elif want is not None:
                self._power_on(now, want)

    def _watchdog_deadline(self):
        grace_end = self._boot_ms + self.cfg["boot_grace_s"] * 1000
        if not self.hb_seen:
            return grace_end
        return max(grace_end, self._last_hb_ms + self.cfg["heartbeat_timeout_s"] * 1000)

    def _power_on(self, now, reason):
        self.hal.set_pi_power(True)
        self.state = BOOTING
        self.wake_reason = reason
        self.boot_count = min(self.boot_count + 1, 0xFFFF)
        self._boot_ms = now
        self.link_up = False
        self.hb_seen = False
        self._next_hello = now
        self._pir_wake = False
        self._power_on_at = None
        self._backoff_until = None
        self.triggers.unsend()

    def _hard_off(self, now):
        self.hal.set_pi_power(False)
        self._off_ms = now
        self.link_up = False
        self._cut_at = None
        self._halt_cut_at = None
        self._after_cut = None

    def _watchdog(self, now):
        """No heartbeat in time: hard power-cycle, or back off after K boots that never beat."""
        self.counts["watchdog_cycles"] += 1
        if not self.hb_seen:
            self.failed_boots += 1
        self._hard_off(now)
        if self.failed_boots >= self.cfg["boot_loop_limit"]:
            self.counts["backoffs"] += 1
            self.state = BACKOFF
            self._backoff_until = now + self.cfg["backoff_s"] * 1000
        else:
            self.state = OFF
            self._power_on_at = now + self.cfg["cycle_off_s"] * 1000
            self._power_on_reason = proto.WAKE_WATCHDOG

    def _begin_shutdown(self, now, delay_ms, after):
        if self.state == SHUTTING_DOWN:
            self._cut_at = min(self._cut_at, now + delay_ms)
            if self._after_cut[0] == LOW_VOLTAGE_OFF:
                return  # a low-voltage cut is not downgraded by a later request
        else:
            self.state = SHUTTING_DOWN
            self._cut_at = now + delay_ms
            self._halt_cut_at = None
        self._after_cut = after

    def _cut(self, now):
        state, delay, reason = self._after_cut
        self._hard_off(now)
        self.state = state
        if delay is not None:
            self._power_on_at = now + delay
            self._power_on_reason = reason

    # --- LED and IR rail ----------------------------------------------------------------------
    def fault(self):
        if not self.rtc_valid:
            return led.FAULT_RTC
        if self.bad_config:
            return led.FAULT_CONFIG
        if self.reset_cause == proto.RESET_WATCHDOG:
            return led.FAULT_MCU_WDT
        return 0

    def _outputs(self, now):
        on = bool(self.cfg["led"]) and led.level(now, self.state, self.fault(), self._flash_until)
        if on != self._led_on:
            self._led_on = on
            self.hal.set_led(on)
        ir = self.state == UP and not self.guard.low
        if ir != self._ir_on:
            self._ir_on = ir
            self.hal.set_ir(ir)
