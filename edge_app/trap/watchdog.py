"""The keep-alive that proves the trap works: systemd's watchdog (and the MCU's heartbeat).

``WATCHDOG=1`` is sent only while every watched stage has beaten within its deadline
(:class:`~edge_app.trap.health.StageHealth`). A stuck capture or detector therefore stops the
pings, systemd's ``WatchdogSec=`` expires and it restarts the service — the layering of
formats-and-field §7.3: app → systemd → (hardware watchdog / supervisor MCU). The same
decision feeds the supervisor MCU's heartbeat (``on_tick``), so a trap whose restarts do not
help is power-cycled by the MCU, the last layer.

The interval follows systemd's ``WATCHDOG_USEC`` (half of it, as sd_watchdog_enabled(3)
recommends); without systemd the loop still runs so the MCU heartbeat and the logs work.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge_app.core.clock import Clock
from edge_app.trap.health import StageHealth

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 20.0
"""Ping interval when systemd did not set ``WATCHDOG_USEC`` (not run under systemd)."""


def interval_from_env(env: Mapping[str, str], pid: int) -> tuple[float, bool]:
    """(ping interval in s, whether systemd expects pings from this process).

    ``WATCHDOG_USEC`` is set by systemd; ``WATCHDOG_PID``, when present, names the process it
    is meant for (a child must not ping for its parent). Unparsable values are ignored rather
    than trusted: the environment of a service is configuration, not a command.
    """
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) <= 0:
        return DEFAULT_INTERVAL_S, False
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return DEFAULT_INTERVAL_S, False
    return max(0.05, int(raw) / 2e6), True


@dataclass
class WatchdogStats:
    """What the watchdog did, for the stats message."""

    pings: int = 0
    withheld: int = 0
    late_now: tuple[str, ...] = ()


class Watchdog:
    """Ping while healthy, withhold (and say which stage) while not.

    Args:
        health: the stages' beats.
        clock: waits.
        notify: sends one sd_notify state (``edge_app.trap.supervisor.sd_notify``).
        interval_s: seconds between decisions.
        on_tick: called with the health verdict at each decision (the MCU heartbeat).
    """

    def __init__(self, health: StageHealth, clock: Clock, notify: Callable[[str], bool],
                 interval_s: float, on_tick: Callable[[bool], None] | None = None) -> None:
        self._health = health
        self._clock = clock
        self._notify = notify
        self.interval_s = interval_s
        self.on_tick = on_tick
        self.stats = WatchdogStats()

    def tick(self) -> bool:
        """One decision: ping if every stage is within its deadline. Returns the verdict."""
        late = self._health.late()
        names = tuple(name for name, _ in late)
        if late:
            self.stats.withheld += 1
            if names != self.stats.late_now:  # once per change, not every interval
                logger.error("watchdog: withholding the ping, stage(s) stuck: %s",
                             ", ".join(f"{n} (no beat for {age:.0f} s)" for n, age in late))
        else:
            if self.stats.late_now:
                logger.warning("watchdog: every stage beats again; pinging")
            self._notify("WATCHDOG=1")
            self.stats.pings += 1
        self.stats.late_now = names
        if self.on_tick is not None:
            try:
                self.on_tick(not late)
            except Exception:  # the MCU link failing must not stop the systemd pings
                logger.exception("watchdog: heartbeat hook failed")
        return not late

    def run(self, done: threading.Event) -> None:
        """Tick every ``interval_s`` until ``done`` is set (the daemon's main thread)."""
        while not self._clock.wait(done, self.interval_s):
            self.tick()


def from_environment(health: StageHealth, clock: Clock, notify: Callable[[str], bool],
                     on_tick: Callable[[bool], None] | None = None) -> Watchdog:
    """The watchdog with systemd's interval (``WATCHDOG_USEC``) when run under systemd."""
    interval, by_systemd = interval_from_env(os.environ, os.getpid())
    if by_systemd:
        logger.info("watchdog: systemd expects a ping every %.0f s; pinging every %.1f s "
                    "while every stage beats", interval * 2, interval)
    return Watchdog(health, clock, notify, interval, on_tick)
