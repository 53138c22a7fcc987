"""When the LTE bearer should be up: a pure, clock-driven link policy.

Why pure (the ``TriggerFilter`` / ``PowerPolicy`` pattern): the modem is the second-biggest
power draw after the Pi, and coverage in the forest comes and goes; the rules of when to bring
the bearer up, when to drop it and how long to wait after a failure must be testable at any
time of day in microseconds. A thin adapter observes (outbox depth for the MQTT link, messages
in flight, the modem's state from ModemManager) and acts on the :class:`LinkDecision`, then
sleeps until ``next_check_mono`` or the next event (an outbox change, a modem signal), never
polling.

Modes (``cellular.mode``):

* ``always``: the bearer stays up; the station's commands arrive at once.
* ``on-demand``: up while the outbox holds work for the link or messages are in flight, and
  ``status_every_s`` after the link was last up, for the station's commands and the status
  report (the MQTT session
  survives the disconnects, ``clean_start=False`` with a session expiry, so a command sent
  while the trap is offline is delayed, never lost). Down after ``idle_disconnect_s`` with
  nothing queued or in flight.
* ``windows``: up only inside the windows (local time of ``cellular.timezone``).

The modem itself: the policy asks ModemManager to enable it when the link is wanted and it is
disabled, and (``modem_off_when_idle``) to disable it when the link is down and not wanted —
the radio off is what saves power. A connect that fails, or that gives no bearer within
``connect_timeout_s``, waits :class:`~edge_app.core.backoff.Backoff` (equal jitter: a connect
too soon costs power and signalling, and a fleet that lost the same cell must not retry in
the same second). Messages in flight get ``INFLIGHT_GRACE_S`` past the end of a window or
idle period before the bearer drops (their QoS 1 retry survives a drop anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from edge_app.core.backoff import Backoff, Uniform
from edge_app.trap.cellular.config import CellularConfig

Action = Literal["connect", "disconnect", "enable-modem", "disable-modem", "none"]
ModemState = Literal["absent", "failed", "locked", "initializing", "disabled", "disabling",
                     "enabling", "enabled", "searching", "registered", "disconnecting",
                     "connecting", "connected", "unknown"]

RESCAN_S = 300.0
"""Backstop: look again at least this often whatever the deadlines say."""
SETTLE_S = 5.0
"""Recheck after a transition ModemManager is still making (enabling, connecting)."""
INFLIGHT_GRACE_S = 30.0
REGISTRATION_WAIT_S = 30.0
"""Recheck while the modem searches for a network (its signals usually wake us first)."""

_UP_STATES = frozenset({"connected"})
_READY_STATES = frozenset({"registered"})
_BUSY_STATES = frozenset({"initializing", "enabling", "disabling", "connecting",
                          "disconnecting"})
_ENABLED_STATES = frozenset({"enabled", "searching", "registered"})


@dataclass(frozen=True)
class LinkObservation:
    """What the adapter saw, at one moment.

    Attributes:
        mono: monotonic time (s); every deadline is in this clock.
        wall: Unix time (s) at the same moment; windows are read from it.
        outbox_depth: messages waiting for the cellular (MQTT) link.
        in_flight: messages sent and not yet acknowledged.
        last_activity_mono: the last send or receive on the link, None if none yet.
        modem: the modem's state (``absent`` when ModemManager lists none).
        signal_percent: ModemManager's SignalQuality (0–100), None when unknown; only
            reported, a weak signal still connects.
    """

    mono: float
    wall: float
    outbox_depth: int = 0
    in_flight: int = 0
    last_activity_mono: float | None = None
    modem: ModemState = "absent"
    signal_percent: int | None = None


@dataclass(frozen=True)
class LinkDecision:
    """What to do now and when to look again.

    Attributes:
        action: the one step to take now (``none``: wait).
        want_up: whether the link is wanted (for stats: "down by policy" vs "down, no signal").
        reason: one line for the log and the stats message.
        next_check_mono: ask again at this monotonic time at the latest.
    """

    action: Action
    want_up: bool
    reason: str
    next_check_mono: float


class LinkPolicy:
    """The link policy (module docstring). Feed it observations; report failed connects.

    Args:
        cfg: the ``[cellular]`` section.
        start_mono: monotonic time at start (the first scheduled connect is due at once in
            ``on-demand`` with a status interval, so the station hears from a fresh boot).
        rng: the jitter source of the connect backoff (a seeded one in tests).
    """

    def __init__(self, cfg: CellularConfig, start_mono: float,
                 rng: Uniform | None = None) -> None:
        self.cfg = cfg
        self._windows = cfg.window_minutes()
        self._tz = ZoneInfo(cfg.timezone)
        self._retry = Backoff(cfg.retry_base_s, cfg.retry_cap_s, "equal")
        self._rng = rng
        self.failures = 0
        self.retry_at = -math.inf
        self._connect_sent: float | None = None
        self._up_since: float | None = None
        self._last_up: float | None = None
        self._unwanted_since: float | None = None
        self._scheduled_until: float | None = None
        self._next_status = start_mono

    def connect_failed(self, mono: float, reason: str = "") -> float:
        """The adapter's connect (or enable) failed: back off. Returns when to try again."""
        del reason  # the adapter logs and counts it; the policy only needs the fact
        self.failures += 1
        self._connect_sent = None
        self.retry_at = mono + self._retry.delay(self.failures, self._rng)
        return self.retry_at

    def decide(self, obs: LinkObservation) -> LinkDecision:
        """The one step to take now (module docstring)."""
        self._track(obs)
        want, why = self._want(obs)
        if want:
            self._unwanted_since = None
            return self._bring_up(obs, why)
        return self._bring_down(obs, why)

    def _track(self, obs: LinkObservation) -> None:
        if obs.modem in _UP_STATES:
            if self._up_since is None:
                self._up_since = obs.mono
            self._last_up = obs.mono
            if self.cfg.status_every_s > 0:  # up is when commands arrive: the schedule restarts
                self._next_status = max(self._next_status, obs.mono + self.cfg.status_every_s)
            self._connect_sent = None
            self.failures = 0
            self.retry_at = -math.inf
            return
        self._up_since = None
        sent = self._connect_sent
        if sent is not None and obs.mono - sent >= self.cfg.connect_timeout_s:
            self.connect_failed(obs.mono, "timeout")

    def _want(self, obs: LinkObservation) -> tuple[bool, str]:
        mode = self.cfg.mode
        if mode == "always":
            return True, "always"
        if mode == "windows":
            inside = in_local_windows(obs.wall, self._windows, self._tz)
            return inside, "inside a window" if inside else "outside the windows"
        if obs.outbox_depth > 0 or obs.in_flight > 0:
            return True, f"outbox {obs.outbox_depth}, in flight {obs.in_flight}"
        every = self.cfg.status_every_s
        if every > 0 and obs.mono >= self._next_status:
            self._next_status = obs.mono + every
            # long enough to enable, register and connect; once up, the idle timer holds it
            self._scheduled_until = obs.mono + self.cfg.connect_timeout_s
        if self._scheduled_until is not None and obs.mono < self._scheduled_until:
            return True, "scheduled for commands and status"
        if self._up_since is not None:
            since = max(self._up_since, obs.last_activity_mono or -math.inf)
            if obs.mono - since < self.cfg.idle_disconnect_s:
                return True, "idle timer running"
        return False, "nothing to send"

    def _bring_up(self, obs: LinkObservation, why: str) -> LinkDecision:
        m = obs.modem
        if m in _UP_STATES:
            return self._decision("none", True, f"up ({why})", obs, self._up_deadline(obs))
        if m in ("absent", "failed", "locked", "unknown"):
            return self._decision("none", True, f"wanted ({why}) but the modem is {m}", obs,
                                  obs.mono + RESCAN_S)
        if obs.mono < self.retry_at:
            return self._decision("none", True, f"backing off after {self.failures} failed "
                                  "connects", obs, self.retry_at)
        if m in _BUSY_STATES:
            until = obs.mono + SETTLE_S
            if self._connect_sent is not None:
                until = min(until, self._connect_sent + self.cfg.connect_timeout_s)
            return self._decision("none", True, f"modem {m}", obs, until)
        if m == "disabled":
            return self._decision("enable-modem", True, f"enable the modem ({why})", obs,
                                  obs.mono + SETTLE_S)
        if m in _READY_STATES:
            if self._connect_sent is not None:
                return self._decision("none", True, "connect pending", obs,
                                      self._connect_sent + self.cfg.connect_timeout_s)
            self._connect_sent = obs.mono
            return self._decision("connect", True, f"connect ({why})", obs,
                                  obs.mono + SETTLE_S)
        return self._decision("none", True, f"waiting for a network (modem {m})", obs,
                              obs.mono + REGISTRATION_WAIT_S)

    def _bring_down(self, obs: LinkObservation, why: str) -> LinkDecision:
        m = obs.modem
        self._connect_sent = None
        wake = self._wake_deadline(obs)
        if m in _UP_STATES:
            if self._unwanted_since is None:
                self._unwanted_since = obs.mono
            grace_end = self._unwanted_since + INFLIGHT_GRACE_S
            if obs.in_flight > 0 and obs.mono < grace_end:
                return self._decision("none", False, f"{obs.in_flight} in flight", obs,
                                      grace_end)
            return self._decision("disconnect", False, f"disconnect ({why})", obs,
                                  obs.mono + SETTLE_S)
        if self.cfg.modem_off_when_idle and m in _ENABLED_STATES:
            return self._decision("disable-modem", False, f"modem off ({why})", obs, wake)
        return self._decision("none", False, f"down ({why})", obs, wake)

    def _up_deadline(self, obs: LinkObservation) -> float:
        if self.cfg.mode == "always":
            return obs.mono + RESCAN_S
        if self.cfg.mode == "windows":
            return self._wake_deadline(obs)
        ends = [obs.mono + self.cfg.idle_disconnect_s]
        if self._up_since is not None:
            since = max(self._up_since, obs.last_activity_mono or -math.inf)
            ends.append(since + self.cfg.idle_disconnect_s)
        if self._scheduled_until is not None and self._scheduled_until > obs.mono:
            ends.append(self._scheduled_until)
        return max(obs.mono + 1.0, min(ends))

    def _wake_deadline(self, obs: LinkObservation) -> float:
        """When the link may next be wanted without an event (window edge, status due)."""
        if self.cfg.mode == "windows":
            edge = next_local_edge(obs.wall, self._windows, self._tz)
            if edge is not None:
                return min(obs.mono + (edge - obs.wall), obs.mono + 24 * 3600.0)
        if self.cfg.mode == "on-demand" and self.cfg.status_every_s > 0:
            return max(obs.mono, self._next_status)
        return obs.mono + RESCAN_S

    def _decision(self, action: Action, want: bool, reason: str, obs: LinkObservation,
                  at: float) -> LinkDecision:
        at = min(at, obs.mono + RESCAN_S) if self.cfg.mode != "windows" else at
        return LinkDecision(action, want, reason, max(at, obs.mono))


def _minute_of_day(wall: float, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(wall, tz)
    return local.hour * 60 + local.minute


def in_local_windows(wall: float, windows: tuple[tuple[int, int], ...], tz: ZoneInfo) -> bool:
    """Whether the local minute of ``wall`` is in any window (start inclusive, end not)."""
    minute = _minute_of_day(wall, tz)
    for start, end in windows:
        inside = start <= minute < end if start < end else minute >= start or minute < end
        if inside:
            return True
    return False


def next_local_edge(wall: float, windows: tuple[tuple[int, int], ...],
                    tz: ZoneInfo) -> float | None:
    """The wall time of the next window start or end after ``wall`` (None without windows)."""
    if not windows:
        return None
    today = datetime.fromtimestamp(wall, tz).replace(hour=0, minute=0, second=0,
                                                     microsecond=0)
    best: float | None = None
    for day in range(3):
        base = today + timedelta(days=day)
        for start, end in windows:
            for edge_min in (start, end):
                local = base.replace(hour=edge_min // 60, minute=edge_min % 60)
                t = local.timestamp()
                if t > wall and (best is None or t < best):
                    best = t
    return best
