"""The power-mode stage: the thin adapter between :class:`~edge_app.trap.power.PowerPolicy`
and the supervisor MCU.

It hands the MCU the schedule it must hold while the Pi is off (SCHEDULE, once per MCU
connection and after a settings change), then asks the policy, whenever something may have
changed, whether the Pi should stay up. On ``shutdown`` it runs the handshake of
firmware/PROTOCOL.md: POWER_OFF(timeout) to the MCU, then the OS halt; the MCU cuts the power
when the halt pin rises or the timeout passes.

Why a recheck period and not only events: "the outbox is delivered" happens on the uplink's
thread deep inside paho's acknowledgements, and wiring a callback for it through every link
costs more than reading one SQLite count every :data:`RECHECK_S` while the Pi is up (a gated
Pi is up for seconds to minutes per wake). Triggers and stage changes wake the stage at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_app.core.clock import Clock
from edge_app.core.mcu_protocol import Mode
from edge_app.trap.hardware.mcu import McuDriver, McuError
from edge_app.trap.power import PowerObservation, PowerPolicy

logger = logging.getLogger(__name__)

RECHECK_S = 5.0
"""Longest wait between two decisions while the Pi is up (see the module docstring)."""

SCHEDULE_RETRY_S = 5.0
"""A SCHEDULE the MCU did not acknowledge (not powered yet, booting) is sent again this much
later; and always before a shutdown."""


@dataclass
class PowerStats:
    """What the stage did, for the stats message."""

    decisions: int = 0
    schedules_sent: int = 0
    schedule_failures: int = 0
    shutdowns: int = 0
    reason: str = ""


class PowerStage:
    """Runs the policy against live observations and acts on its decisions.

    Args:
        policy: the rules.
        mcu: the supervisor MCU's driver (connected by its own stage).
        clock: waits and deadlines.
        observe: what the trap looks like now (built by the daemon: outbox depth, stages,
            last trigger, battery).
        halt: the OS halt (``systemctl poweroff`` on a Pi; the simulator's halt pin in tests).
    """

    def __init__(self, policy: PowerPolicy, mcu: McuDriver, clock: Clock,
                 observe: Callable[[], PowerObservation], halt: Callable[[], None]) -> None:
        self.policy = policy
        self._mcu = mcu
        self._clock = clock
        self._observe = observe
        self._halt = halt
        self._wake = threading.Event()
        self._schedule_due = 0.0  # mono; 0 = now
        self.stats = PowerStats()
        self.beat: Callable[[], None] = lambda: None  # the watchdog's, set by the daemon

    def wake(self) -> None:
        """Something changed (a trigger, a decided event, a settings change): decide now."""
        self._wake.set()

    def resend_schedule(self) -> None:
        """The power settings changed: the MCU must hear the new schedule."""
        self._schedule_due = 0.0
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.beat()
            self._wake.clear()
            now = self._clock.monotonic()
            if now >= self._schedule_due:
                self._send_schedule(now)
            decision = self.policy.decide(self._observe())
            self.stats.decisions += 1
            if decision.reason != self.stats.reason:
                logger.info("power: %s", decision.reason)
                self.stats.reason = decision.reason
            if decision.shutdown and self._shutdown(decision.power_off_timeout_s):
                return
            wait = RECHECK_S
            deadline = self.policy.next_deadline()
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            if self._schedule_due > now:
                wait = min(wait, self._schedule_due - now)
            self._clock.wait(self._wake, wait)
            if stop.is_set():
                return

    def _send_schedule(self, now: float) -> None:
        sched = self.policy.schedule()
        try:
            self._mcu.set_schedule(Mode(sched.mode), sched.hybrid_above_mv, sched.windows)
        except McuError as e:  # the MCU is not there yet (booting, cable): try again later
            self.stats.schedule_failures += 1
            self._schedule_due = now + SCHEDULE_RETRY_S
            logger.debug("power: SCHEDULE not acknowledged (%s); retrying", e)
            return
        self.stats.schedules_sent += 1
        self._schedule_due = float("inf")
        logger.info("power: MCU holds mode %d, windows %s, battery rule %d mV", sched.mode,
                    list(sched.windows) or "none", sched.hybrid_above_mv)

    def _shutdown(self, timeout_s: int) -> bool:
        """POWER_OFF then halt; True once the halt is under way. If the MCU does not answer,
        stay up (a Pi that halts without the MCU knowing would only come back through the
        MCU's heartbeat watchdog, minutes later) and decide again at the next turn.

        The schedule goes first if the MCU has not acknowledged it yet: what powers the Pi on
        again (windows, battery rule, mode) must be on the MCU before the Pi is off."""
        if self._schedule_due != float("inf"):
            self._send_schedule(self._clock.monotonic())
            if self._schedule_due != float("inf"):
                return False
        try:
            self._mcu.power_off(timeout_s, self._halt)
        except McuError as e:
            logger.error("power: the MCU did not acknowledge POWER_OFF (%s): staying up", e)
            return False
        self.stats.shutdowns += 1
        return True
