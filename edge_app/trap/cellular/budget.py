"""The SIM's monthly data plan: bytes counted, the month projected, full images allowed or held.

Why pure and wall-clock driven: a plan is a calendar thing (the operator's month restarts on a
day of the month), so every method takes the Unix time it is asked about; the state is small
and saved as JSON (:meth:`DataBudget.save`, an atomic write) so a reboot mid-month does not
forget what was spent. No D-Bus here: the adapter passes the bearer's counters in.

Counting:

* **The bearer's counters** (ModemManager ``Bearer.Stats`` rx/tx bytes) are what the operator
  bills, TLS and TCP included. They restart from zero when the bearer reconnects (and after a
  reboot), so the budget counts *deltas* per bearer: a value below the last one seen is a
  reset, and the new value is all new bytes. Bytes between the last sample and a drop are
  missed, so the adapter samples before it disconnects and at least every few minutes.
* **The app's own count** (payload bytes the MQTT client wrote and read) is the fallback where
  the modem gives no counters. The month's usage is the larger of the two: the bearer counts
  more (headers, handshakes), the app's count covers time the bearer was not sampled.
* **Projection** to the end of the cycle: the usage rate since the cycle began (or since the
  budget started, mid-cycle), over at least ``MIN_RATE_WINDOW_S`` so an upload in the first
  hour does not project a hundred gigabytes.

Decisions: alerts, thumbnails and status always go (they are the point of the trap and are
small); a full image goes only while ``projected + its size`` stays under
``plan × (1 - margin)``; otherwise it is held until the month rolls over (or the station asks
for it). A plan of 0 means no plan: everything goes.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from edge_app.core.files import atomic_write

logger = logging.getLogger(__name__)

Kind = Literal["alert", "thumbnail", "status", "full_image"]
MB = 1_000_000
MIN_RATE_WINDOW_S = 86400.0
STATE_VERSION = 1
MAX_STATE_BYTES = 64 * 1024
MAX_BEARERS_KEPT = 16


def _cycle_start_in(year: int, month: int, day: int, tz: ZoneInfo) -> float:
    clamped = min(day, calendar.monthrange(year, month)[1])
    return datetime(year, month, clamped, tzinfo=tz).timestamp()


def cycle_bounds(wall: float, cycle_day: int, tz: ZoneInfo) -> tuple[float, float]:
    """The (start, end) Unix times of the plan month holding ``wall``.

    The month starts at local midnight of ``cycle_day``; a day past the month's end (29–31 in
    a short month) means its last day.
    """
    local = datetime.fromtimestamp(wall, tz)
    y, m = local.year, local.month
    start = _cycle_start_in(y, m, cycle_day, tz)
    if wall < start:
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
        start = _cycle_start_in(y, m, cycle_day, tz)
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return start, _cycle_start_in(ny, nm, cycle_day, tz)


@dataclass
class BudgetState:
    """What survives a restart (saved as JSON).

    Attributes:
        cycle_start: Unix time the current plan month began.
        bearer_bytes: bytes counted from the bearer counters this month.
        app_bytes: bytes the app counted itself this month.
        tracked_since: when counting began in this month (a budget started mid-month).
        bearers: last (rx, tx) seen per bearer, to count deltas across restarts.
        held_images: full images held back this month (for stats).
    """

    cycle_start: float
    bearer_bytes: int = 0
    app_bytes: int = 0
    tracked_since: float = 0.0
    bearers: dict[str, tuple[int, int]] = field(default_factory=dict)
    held_images: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "cycle_start": self.cycle_start,
                "bearer_bytes": self.bearer_bytes, "app_bytes": self.app_bytes,
                "tracked_since": self.tracked_since, "held_images": self.held_images,
                "bearers": {k: list(v) for k, v in self.bearers.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> BudgetState:
        """Parse a saved state; ValueError when it is not one of ours."""
        if not isinstance(obj, dict) or obj.get("version") != STATE_VERSION:
            raise ValueError("not a data budget state")
        ints = {k: obj.get(k) for k in ("bearer_bytes", "app_bytes", "held_images")}
        floats = {k: obj.get(k) for k in ("cycle_start", "tracked_since")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in ints.values()):
            raise ValueError("bad counters")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in floats.values()):
            raise ValueError("bad times")
        raw = obj.get("bearers")
        if not isinstance(raw, dict) or len(raw) > MAX_BEARERS_KEPT:
            raise ValueError("bad bearers")
        bearers: dict[str, tuple[int, int]] = {}
        for k, v in raw.items():
            if (not isinstance(v, list) or len(v) != 2
                    or not all(isinstance(n, int) and n >= 0 for n in v)):
                raise ValueError("bad bearer counters")
            bearers[str(k)] = (v[0], v[1])
        return cls(float(floats["cycle_start"] or 0.0), int(ints["bearer_bytes"] or 0),
                   int(ints["app_bytes"] or 0), float(floats["tracked_since"] or 0.0),
                   bearers, int(ints["held_images"] or 0))


@dataclass(frozen=True)
class Usage:
    """The month so far, for stats and ``camtrap doctor``.

    Attributes:
        used_bytes: counted this month (the larger of bearer and app counts).
        source: ``bearer`` or ``app``: which count that is.
        projected_bytes: at the end of the month at the current rate.
        plan_bytes: the plan (0 = none).
        cycle_start, cycle_end: Unix times of the plan month.
        held_images: full images held back this month.
    """

    used_bytes: int
    source: str
    projected_bytes: int
    plan_bytes: int
    cycle_start: float
    cycle_end: float
    held_images: int

    def to_json(self) -> dict[str, Any]:
        return {"used_mb": round(self.used_bytes / MB, 3), "source": self.source,
                "projected_mb": round(self.projected_bytes / MB, 3),
                "plan_mb": round(self.plan_bytes / MB, 3), "cycle_start": self.cycle_start,
                "cycle_end": self.cycle_end, "held_images": self.held_images}


class DataBudget:
    """The monthly budget (module docstring).

    Args:
        plan_mb: the plan in MB (10^6 bytes); 0 = no plan.
        cycle_day: day of the month the plan restarts (1–31, clamped in short months).
        margin: full images need ``projected + size ≤ plan × (1 - margin)``.
        tz: the time zone of the operator's month (the trap's local time).
        wall: the time now; a fresh month starts counting here.
        state: a saved state (from :meth:`load`), None for a fresh one.
    """

    def __init__(self, plan_mb: float, cycle_day: int, margin: float, tz: ZoneInfo,
                 wall: float, state: BudgetState | None = None) -> None:
        if plan_mb < 0 or not 1 <= cycle_day <= 31 or not 0 <= margin < 1:
            raise ValueError(f"bad plan {plan_mb} MB / day {cycle_day} / margin {margin}")
        self.plan_bytes = int(plan_mb * MB)
        self.cycle_day = cycle_day
        self.margin = margin
        self.tz = tz
        start, _ = cycle_bounds(wall, cycle_day, tz)
        self.state = state if state is not None else BudgetState(start, tracked_since=wall)
        self._roll(wall)

    def _roll(self, wall: float) -> None:
        start, _ = cycle_bounds(wall, self.cycle_day, self.tz)
        if start != self.state.cycle_start:
            # a new month (or a state from another plan day): keep the counters' last values
            # so the bearer's deltas continue across the boundary
            logger.info("data plan month rolled over: %.1f MB were used",
                        self.used_bytes() / MB)
            self.state = BudgetState(start, tracked_since=start,
                                     bearers=dict(self.state.bearers))

    def observe_bearer(self, bearer: str, rx: int, tx: int, wall: float) -> int:
        """Count a sample of a bearer's counters; returns the new bytes counted."""
        self._roll(wall)
        rx, tx = max(0, int(rx)), max(0, int(tx))
        last = self.state.bearers.get(bearer)
        if last is None or rx < last[0] or tx < last[1]:
            # a new bearer, or its counters restarted (reconnect, reboot): all new bytes;
            # (a restart that finds the same bearer still counting up continues its deltas)
            delta = rx + tx
        else:
            delta = (rx - last[0]) + (tx - last[1])
        self.state.bearers[bearer] = (rx, tx)
        while len(self.state.bearers) > MAX_BEARERS_KEPT:
            self.state.bearers.pop(next(iter(self.state.bearers)))
        self.state.bearer_bytes += delta
        return delta

    def count_app(self, nbytes: int, wall: float) -> None:
        """The app's own count of bytes written and read on the link."""
        self._roll(wall)
        self.state.app_bytes += max(0, int(nbytes))

    def used_bytes(self) -> int:
        return max(self.state.bearer_bytes, self.state.app_bytes)

    def usage(self, wall: float) -> Usage:
        """The month so far and its projection."""
        self._roll(wall)
        start, end = cycle_bounds(wall, self.cycle_day, self.tz)
        used = self.used_bytes()
        since = max(start, self.state.tracked_since)
        elapsed = max(wall - since, MIN_RATE_WINDOW_S)
        projected = used + int(used / elapsed * max(0.0, end - wall))
        source = "bearer" if self.state.bearer_bytes >= self.state.app_bytes else "app"
        return Usage(used, source, projected, self.plan_bytes, start, end,
                     self.state.held_images)

    def fits(self, kind: Kind, size_bytes: int, wall: float) -> bool:
        """Whether a message of ``kind`` would go now; counts nothing (a question, e.g. the
        stage asking whether held images are work again after the month rolled over)."""
        if kind != "full_image" or self.plan_bytes == 0:
            return True
        projected = self.usage(wall).projected_bytes
        return projected + size_bytes <= self.plan_bytes * (1 - self.margin)

    def allows(self, kind: Kind, size_bytes: int, wall: float) -> bool:
        """Whether a message of ``kind`` may go now (module docstring). A held full image
        is counted in ``held_images``."""
        if self.fits(kind, size_bytes, wall):
            return True
        self.state.held_images += 1
        return False

    def save(self, path: Path) -> None:
        """Write the state atomically (a power cut leaves the old file or the new one)."""
        atomic_write(path, json.dumps(self.state.to_json(), sort_keys=True).encode())

    @staticmethod
    def load(path: Path) -> BudgetState | None:
        """The saved state, or None when missing or unreadable (logged: usage restarts at 0,
        which under-counts one month at worst; never a crash at boot)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            logger.warning("data budget state %s unreadable: %s", path, e)
            return None
        if len(raw) > MAX_STATE_BYTES:
            logger.warning("data budget state %s too large, ignored", path)
            return None
        try:
            return BudgetState.from_json(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as e:
            logger.warning("data budget state %s ignored: %s", path, e)
            return None
