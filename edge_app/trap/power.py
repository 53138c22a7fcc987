"""Power-mode policy: should the Pi stay up, or shut down now, and what the MCU should hold.

Pure and clock-driven like :class:`~edge_app.trap.hardware.trigger.TriggerFilter`: a thin
adapter feeds it :class:`PowerObservation` s (times, battery, outbox depth per link, last
trigger, uptime, busy stages) and acts on the :class:`PowerDecision`: on ``shutdown`` it
asks the MCU for ``POWER_OFF(power_off_timeout_s)`` and halts. Between observations it sleeps
until :meth:`PowerPolicy.next_deadline` or the next event (a trigger, an outbox change, an MCU
status), never polling. No I/O here, so every rule is tested with exact times.

The rules, by mode (``[power]`` in the config):

* ``always-on``: stay up. Latency is the streamed frame's (~0.1 s with the debounce) and the
  pre-trigger ring holds frames from *before* the PIR fired.
* ``gated``: the MCU powered the Pi for a trigger (or a schedule). Stay up while a stage is
  busy, while any link's outbox still holds messages, and until no trigger came for
  ``idle_shutdown_s`` (a lingering animal re-triggers without paying a second boot). Then shut
  down. ``max_uptime_s`` caps a wake whatever the outbox says: with the link down the queue
  never empties, and a trap that waits for it drains its battery in days; the next wake
  retries. A stage still busy at the cap gets ``BUSY_GRACE_S`` more (a burst half stored is
  worse than 30 s of power), then the cap wins, because a hung stage is busy forever.
* ``hybrid``: always-on inside a window (UTC, like the MCU's schedule) or while the battery is
  at or above ``hybrid_above_v`` (left below ``hybrid_above_v - hybrid_hysteresis_v``);
  gated otherwise.

Why the Pi decides shutdown and the MCU decides power-on: only the Pi knows whether the
outbox is delivered and the stages are idle; only the MCU is awake while the Pi is off.
:meth:`PowerPolicy.schedule` is what the MCU needs to power on by itself (the SCHEDULE frame,
firmware/PROTOCOL.md): the mode code, the windows in minutes after UTC midnight and the
battery level in mV.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge_app.core.config import PowerConfig, parse_window

logger = logging.getLogger(__name__)

Mode = Literal["always-on", "gated", "hybrid"]

#: SCHEDULE ``mode`` codes (firmware/PROTOCOL.md "Codes").
MODE_CODES: Mapping[str, int] = {"always-on": 0, "gated": 1, "hybrid": 2}
#: Extra time a stage that is busy when ``max_uptime_s`` runs out gets to finish.
BUSY_GRACE_S = 30.0
DAY_MIN = 1440


@dataclass(frozen=True)
class PowerObservation:
    """What the adapter saw, at one moment.

    Attributes:
        mono: monotonic time (s) of the observation; deadlines are in this clock.
        wall: Unix time (s, UTC) at the same moment; windows are read from it.
        uptime_s: seconds since the Pi booted (``time.clock_gettime(CLOCK_BOOTTIME)``).
        battery_v: the MCU's latest battery voltage, None when unknown. Untrusted: a
            non-finite or negative value is counted and treated as unknown.
        outbox_depth: undelivered messages per link (``{"mqtt": 3, "lorawan": 0}``).
        last_trigger_mono: the latest trigger's ``mono``, None when none came this wake.
        busy: names of the stages working on something (capture, detect, store).
        mode: overrides the configured mode (a remote settings change), None = configured.
        in_window: overrides window membership (e.g. a schedule the MCU reported), None =
            read from ``wall`` and the configured windows.
    """

    mono: float
    wall: float
    uptime_s: float
    battery_v: float | None = None
    outbox_depth: Mapping[str, int] = field(default_factory=dict)
    last_trigger_mono: float | None = None
    busy: frozenset[str] = frozenset()
    mode: Mode | None = None
    in_window: bool | None = None


@dataclass(frozen=True)
class PowerDecision:
    """Stay up or shut down now.

    Attributes:
        shutdown: True = ask the MCU for POWER_OFF and halt now.
        reason: one line for the log and the stats message.
        power_off_timeout_s: for the POWER_OFF frame: the MCU cuts power this long after it
            at the latest, if the halt pin never goes high.
    """

    shutdown: bool
    reason: str
    power_off_timeout_s: int


@dataclass(frozen=True)
class McuSchedule:
    """The SCHEDULE frame's fields (firmware/PROTOCOL.md).

    Attributes:
        mode: 0 always-on, 1 gated, 2 hybrid.
        windows: (start_min, end_min) after UTC midnight; ``end < start`` wraps midnight.
            Only hybrid sends windows: gated wakes on the PIR, always-on never sleeps.
        hybrid_above_mv: hybrid's battery level in mV, 0 = off.
    """

    mode: int
    windows: tuple[tuple[int, int], ...]
    hybrid_above_mv: int


def in_windows(wall: float, windows: tuple[tuple[int, int], ...]) -> bool:
    """Whether the UTC minute of ``wall`` is inside any window (start inclusive, end not)."""
    minute = int((wall % 86400) // 60)
    return any(_inside(minute, start, end) for start, end in windows)


def _inside(minute: int, start: int, end: int) -> bool:
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight


def next_window_edge(wall: float, windows: tuple[tuple[int, int], ...]) -> float | None:
    """The wall time of the next window start or end after ``wall`` (None without windows)."""
    if not windows:
        return None
    day = wall - (wall % 86400)
    now_s = wall - day
    best: float | None = None
    for start, end in windows:
        for edge_min in (start, end):
            edge = edge_min * 60.0
            later = edge - now_s if edge > now_s else edge + 86400 - now_s
            if best is None or later < best:
                best = later
    assert best is not None
    return wall + best


class PowerPolicy:
    """The power-mode rules; pure and single-threaded (the adapter owns the locking).

    Call :meth:`decide` with each observation, then sleep until :meth:`next_deadline` or the
    next event. The battery rule keeps state (its hysteresis); everything else is a function
    of the observation.

    Args:
        cfg: the ``[power]`` section (already validated by the config).
        power_off_timeout_s: ``mcu.power_off_timeout_s``, copied into every decision.
    """

    def __init__(self, cfg: PowerConfig, power_off_timeout_s: int) -> None:
        self.cfg = cfg
        self.power_off_timeout_s = power_off_timeout_s
        self.windows = tuple(parse_window(w) for w in cfg.windows)
        self._battery_on = False
        self._deadline: float | None = None
        self.refused_battery = 0  # non-finite or negative voltages seen (untrusted input)

    def schedule(self) -> McuSchedule:
        """What the MCU must hold to power the Pi on by itself in the configured mode."""
        hybrid = self.cfg.mode == "hybrid"
        return McuSchedule(
            mode=MODE_CODES[self.cfg.mode],
            windows=self.windows if hybrid else (),
            hybrid_above_mv=round(self.cfg.hybrid_above_v * 1000) if hybrid else 0,
        )

    def next_deadline(self) -> float | None:
        """When (mono) the last decision could change with no new observation; None = only an
        event (trigger, outbox change, battery reading, mode change) can change it."""
        return self._deadline

    def decide(self, obs: PowerObservation) -> PowerDecision:
        """Stay up or shut down, given ``obs``; also sets :meth:`next_deadline`."""
        mode = obs.mode or self.cfg.mode
        self._deadline = None
        if mode == "always-on":
            return self._stay("always-on")
        if mode == "hybrid":
            edge = next_window_edge(obs.wall, self.windows) if obs.in_window is None else None
            edge_mono = None if edge is None else obs.mono + (edge - obs.wall)
            in_window = (in_windows(obs.wall, self.windows) if obs.in_window is None
                         else obs.in_window)
            battery_on = self._battery_rule(obs.battery_v)
            if in_window:
                self._deadline = edge_mono
                return self._stay("hybrid: inside an always-on window")
            if battery_on:
                return self._stay(f"hybrid: battery {obs.battery_v:.2f} V ≥ "
                                  f"{self.cfg.hybrid_above_v:.2f} V")
            decision = self._gated(obs, "hybrid outside its windows")
            if edge_mono is not None and not decision.shutdown:
                self._deadline = _earliest(self._deadline, edge_mono)
            return decision
        return self._gated(obs, "gated")

    # -- rules ------------------------------------------------------------------------------

    def _gated(self, obs: PowerObservation, label: str) -> PowerDecision:
        cfg = self.cfg
        boot_mono = obs.mono - obs.uptime_s
        cap = boot_mono + cfg.max_uptime_s
        undelivered = {k: n for k, n in sorted(obs.outbox_depth.items()) if n > 0}
        if obs.mono >= cap:
            if obs.busy and obs.mono < cap + BUSY_GRACE_S:
                self._deadline = cap + BUSY_GRACE_S
                return self._stay(f"{label}: max uptime {cfg.max_uptime_s:.0f} s reached, "
                                  f"letting {_names(obs.busy)} finish")
            left = f", {_depths(undelivered)} left for the next wake" if undelivered else ""
            return self._shutdown(f"{label}: max uptime {cfg.max_uptime_s:.0f} s reached"
                                  f"{left}")
        self._deadline = cap
        if obs.busy:
            return self._stay(f"{label}: busy ({_names(obs.busy)})")
        if undelivered:
            return self._stay(f"{label}: outbox not delivered ({_depths(undelivered)})")
        quiet_since = boot_mono if obs.last_trigger_mono is None else obs.last_trigger_mono
        idle_end = quiet_since + cfg.idle_shutdown_s
        if obs.mono < idle_end:
            self._deadline = min(cap, idle_end)
            return self._stay(f"{label}: waiting {idle_end - obs.mono:.0f} s more for another "
                              "trigger")
        self._deadline = None
        return self._shutdown(f"{label}: outbox delivered, no trigger for "
                              f"{obs.mono - quiet_since:.0f} s")

    def _battery_rule(self, battery_v: float | None) -> bool:
        above = self.cfg.hybrid_above_v
        if not above:
            return False
        if battery_v is not None and (not math.isfinite(battery_v) or battery_v < 0):
            self.refused_battery += 1
            logger.warning("refused battery reading %r (not a voltage)", battery_v)
            battery_v = None
        if battery_v is None:
            self._battery_on = False  # unknown: the safe side is gated
        elif battery_v >= above:
            self._battery_on = True
        elif battery_v < above - self.cfg.hybrid_hysteresis_v:
            self._battery_on = False
        return self._battery_on

    def _stay(self, reason: str) -> PowerDecision:
        return PowerDecision(False, reason, self.power_off_timeout_s)

    def _shutdown(self, reason: str) -> PowerDecision:
        return PowerDecision(True, reason, self.power_off_timeout_s)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _names(busy: frozenset[str]) -> str:
    return ", ".join(sorted(busy))


def _depths(depths: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in depths.items())
