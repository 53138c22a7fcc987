"""Day or night: the camera's light estimate (or the sun) → IR-cut filter position and IR use.

Pure and clock-driven like :class:`~edge_app.trap.hardware.trigger.TriggerFilter`: times are
arguments, there are no threads and no I/O. The adapter that reads the camera and drives the
pins is :mod:`edge_app.trap.hardware.ir`.

The rule is thingino's gain hysteresis (formats-and-field §8.9) driven by picamera2's request
metadata instead of the sensor gain alone:

* ``Lux`` first: libcamera's scene-brightness estimate. Day → night below
  ``night_below_lux``; night → day above ``day_above_lux``. The gap between the two is the
  hysteresis, and it must be wide: with the IR-cut filter out the sensor also sees near-IR,
  so the same dawn reads brighter in night mode than in day mode; a narrow gap flaps at dawn.
* Without a usable ``Lux``: ``ExposureTime`` (ms) × ``AnalogueGain``, the camera's exposure
  effort. Night when it rises above ``night_above_exposure`` (the camera is running out of
  exposure), day when it falls below ``day_below_exposure``. An estimate of lux from the
  product alone would be wrong exactly when it matters: once auto-exposure is at its limit
  the product stops growing while the scene keeps darkening.
* A minimum dwell: after a switch the mode holds for ``dwell_s`` whatever the readings say,
  so headlights, a ranger's torch or a passing cloud cannot flap a mechanical filter. A mode
  that was only guessed (from the sun, or by default) is not protected by the dwell: the
  first real reading overrides a guess at once.
* No reading yet (a gated Pi just booted, the camera has not produced metadata): the sun's
  elevation at ``lat``/``lon`` decides, night below :data:`SUN_NIGHT_BELOW_DEG`.

Camera metadata is untrusted input: a value that is not a number, not finite, negative or
beyond physical limits is refused and counted, never a reason to stop the capture stage.

``battery_low`` sheds the illuminator first (§7.4: IR, then the modem, then capture): the
decision stays "night" (the filter still comes out, frames are still tagged), but
``illuminate`` is False and the shed is counted.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

logger = logging.getLogger(__name__)

#: Night when the sun is lower than this (degrees; civil twilight ends at −6°, a few lux).
SUN_NIGHT_BELOW_DEG = -5.0

#: Plausibility limits on metadata (sunlight is ~100 klx; the HQ camera exposes ≤ ~11 min).
MAX_LUX = 1e6
MAX_EXPOSURE_US = 1e9
MAX_GAIN = 1e3

_UNIX_J2000 = 946_728_000.0  # 2000-01-01 12:00 UTC, the epoch of the solar formulas

Basis = Literal["lux", "exposure", "schedule", "held", "kept", "default"]
"""Why a decision is what it is: a reading (``lux``, ``exposure``), the sun (``schedule``),
a switch refused by the dwell (``held``), no new information (``kept``) or nothing known at
all (``default``: day, the filter in)."""


def solar_elevation_deg(wall: float, lat: float, lon: float) -> float:
    """The sun's elevation above the horizon (degrees) at Unix time ``wall`` and a place.

    The low-precision solar coordinates of the Astronomical Almanac (good to ~0.01° in
    declination, far better than a light threshold needs); no refraction.
    """
    d = (wall - _UNIX_J2000) / 86400.0
    g = math.radians((357.529 + 0.98560028 * d) % 360.0)  # mean anomaly
    q = (280.459 + 0.98564736 * d) % 360.0  # mean longitude
    ecl_lon = math.radians(q + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g))
    obliquity = math.radians(23.439 - 0.00000036 * d)
    ra = math.atan2(math.cos(obliquity) * math.sin(ecl_lon), math.cos(ecl_lon))
    dec = math.asin(math.sin(obliquity) * math.sin(ecl_lon))
    gmst_deg = (280.46061837 + 360.98564736629 * d) % 360.0
    hour_angle = math.radians(gmst_deg + lon) - ra
    phi = math.radians(lat)
    sin_alt = (math.sin(phi) * math.sin(dec)
               + math.cos(phi) * math.cos(dec) * math.cos(hour_angle))
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_alt))))


def sun_says_night(wall: float, lat: float, lon: float,
                   below_deg: float = SUN_NIGHT_BELOW_DEG) -> bool:
    """True when the sun is below ``below_deg`` at that time and place (polar nights too)."""
    return solar_elevation_deg(wall, lat, lon) < below_deg


@dataclass(frozen=True, slots=True)
class Reading:
    """One usable light reading.

    Attributes:
        kind: ``lux`` (libcamera's estimate) or ``exposure`` (ExposureTime in ms ×
            AnalogueGain).
        value: lux, or ms × gain.
    """

    kind: Literal["lux", "exposure"]
    value: float


def read_metadata(md: Mapping[str, object] | None) -> tuple[Reading | None, tuple[str, ...]]:
    """The light reading in picamera2-style metadata, and the refusals met on the way.

    ``Lux`` wins; ``ExposureTime`` (µs) × ``AnalogueGain`` is used when ``Lux`` is missing or
    refused. Refusals are ``<key>:<kind>`` with kind ``bad_type``, ``non_finite`` or
    ``out_of_range``; a missing key is not a refusal.
    """
    if md is None:
        return None, ()
    refusals: list[str] = []
    lux = _number(md, "Lux", 0.0, MAX_LUX, refusals)
    if lux is not None:
        return Reading("lux", lux), tuple(refusals)
    exposure = _number(md, "ExposureTime", 1e-9, MAX_EXPOSURE_US, refusals)
    gain = _number(md, "AnalogueGain", 1e-9, MAX_GAIN, refusals)
    if exposure is None or gain is None:
        return None, tuple(refusals)
    return Reading("exposure", exposure / 1000.0 * gain), tuple(refusals)


def _number(md: Mapping[str, object], key: str, low: float, high: float,
            refusals: list[str]) -> float | None:
    if key not in md:
        return None
    raw = md[key]
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        refusals.append(f"{key}:bad_type")
        return None
    try:
        value = float(raw)
    except (OverflowError, ValueError):  # an int beyond a float
        refusals.append(f"{key}:non_finite")
        return None
    if not math.isfinite(value):
        refusals.append(f"{key}:non_finite")
        return None
    if not low <= value <= high:
        refusals.append(f"{key}:out_of_range")
        return None
    return value


@dataclass(frozen=True, slots=True)
class Decision:
    """What one burst should do.

    Attributes:
        night: night mode (IR-cut filter out); the burst's frames are tagged with it.
        illuminate: switch the illuminator on for the burst frames (night and not shed).
        changed: the mode differs from the previous decision (the filter must move).
        basis: why (see :data:`Basis`).
        reading: the reading used, if any.
    """

    night: bool
    illuminate: bool
    changed: bool
    basis: Basis
    reading: Reading | None = None


@dataclass(frozen=True, slots=True)
class DayNightStats:
    """Counters for the stats message.

    Attributes:
        decisions: calls to :meth:`DayNight.decide`.
        by_lux, by_exposure, by_schedule: decisions taken from each source.
        switches: day ↔ night changes (including the first mode taken).
        held: switches the readings asked for but the dwell refused.
        refused: metadata values refused (not a number, not finite, out of range).
        shed: night decisions without the illuminator because the battery was low.
    """

    decisions: int = 0
    by_lux: int = 0
    by_exposure: int = 0
    by_schedule: int = 0
    switches: int = 0
    held: int = 0
    refused: int = 0
    shed: int = 0


class DayNight:
    """Day/night with hysteresis and a minimum dwell; pure and single-threaded.

    Args:
        night_below_lux: day → night below this Lux.
        day_above_lux: night → day above this Lux (> ``night_below_lux``).
        night_above_exposure: without Lux, day → night above this ms × gain.
        day_below_exposure: without Lux, night → day below this ms × gain
            (< ``night_above_exposure``).
        dwell_s: minimum time in a measured mode before switching back.
        lat, lon: the site, for the sun when there is no reading; None = unknown.

    Raises:
        ValueError: non-finite or inverted thresholds, negative dwell.
    """

    def __init__(
        self,
        *,
        night_below_lux: float,
        day_above_lux: float,
        night_above_exposure: float,
        day_below_exposure: float,
        dwell_s: float,
        lat: float | None = None,
        lon: float | None = None,
    ) -> None:
        values = (night_below_lux, day_above_lux, night_above_exposure, day_below_exposure,
                  dwell_s)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("day/night thresholds must be finite")
        if not 0 < night_below_lux < day_above_lux:
            raise ValueError("need 0 < night_below_lux < day_above_lux")
        if not 0 < day_below_exposure < night_above_exposure:
            raise ValueError("need 0 < day_below_exposure < night_above_exposure")
        if dwell_s < 0:
            raise ValueError("dwell_s must be ≥ 0")
        if (lat is None) != (lon is None):
            raise ValueError("give both lat and lon, or neither")
        self.night_below_lux = night_below_lux
        self.day_above_lux = day_above_lux
        self.night_above_exposure = night_above_exposure
        self.day_below_exposure = day_below_exposure
        self.dwell_s = dwell_s
        self.lat, self.lon = lat, lon
        self._night: bool | None = None
        self._measured = False  # the mode came from a reading (the dwell protects it)
        self._since = 0.0  # mono of the last switch
        self._refused_kinds: set[str] = set()
        self._shedding = False
        self._n = {f.name: 0 for f in fields(DayNightStats)}

    @property
    def night(self) -> bool | None:
        """The current mode; None before the first decision."""
        return self._night

    @property
    def stats(self) -> DayNightStats:
        """A snapshot of the counters."""
        return DayNightStats(**self._n)

    def decide(
        self,
        metadata: Mapping[str, object] | None,
        mono: float,
        wall: float,
        *,
        battery_low: bool | None = None,
    ) -> Decision:
        """Decide for a burst starting now.

        Args:
            metadata: the latest frame's metadata (``Lux``, ``ExposureTime`` in µs,
                ``AnalogueGain``); None or ``{}`` when there is none (yet).
            mono: monotonic time, for the dwell.
            wall: Unix time, for the sun.
            battery_low: True sheds the illuminator; None = unknown (not shed).
        """
        self._n["decisions"] += 1
        reading, refusals = read_metadata(metadata)
        for kind in refusals:
            self._refuse(kind)
        before = self._night
        if reading is not None:
            night, basis = self._measure(reading, mono)
        else:
            night, basis = self._guess(mono, wall)
        illuminate = night and battery_low is not True
        if night and battery_low is True:
            self._n["shed"] += 1
            if not self._shedding:
                logger.warning("battery low: night frames without the IR illuminator")
        elif night and self._shedding:
            logger.info("battery no longer low: IR illuminator back in use")
        if night:
            self._shedding = battery_low is True
        return Decision(night=night, illuminate=illuminate, changed=night != before,
                        basis=basis, reading=reading)

    # -- internals --------------------------------------------------------------------------

    def _wants(self, reading: Reading) -> bool | None:
        """True/False when the reading is beyond a threshold, None inside the hysteresis band."""
        if reading.kind == "lux":
            if reading.value < self.night_below_lux:
                return True
            if reading.value > self.day_above_lux:
                return False
            if self._night is None:  # no mode to keep: the nearer threshold (geometric)
                return reading.value < math.sqrt(self.night_below_lux * self.day_above_lux)
            return None
        if reading.value > self.night_above_exposure:
            return True
        if reading.value < self.day_below_exposure:
            return False
        if self._night is None:
            return reading.value > math.sqrt(self.night_above_exposure * self.day_below_exposure)
        return None

    def _measure(self, reading: Reading, mono: float) -> tuple[bool, Basis]:
        self._n["by_lux" if reading.kind == "lux" else "by_exposure"] += 1
        want = self._wants(reading)
        if want is None or want == self._night:
            assert self._night is not None
            self._measured = True
            return self._night, reading.kind
        if self._night is not None and self._measured and mono - self._since < self.dwell_s:
            self._n["held"] += 1
            logger.debug("%s reading %.1f asks for %s; held for the dwell (%.0f s left)",
                         reading.kind, reading.value, "night" if want else "day",
                         self.dwell_s - (mono - self._since))
            return self._night, "held"
        self._switch(want, mono, f"{reading.kind} {reading.value:.1f}")
        self._measured = True
        return want, reading.kind

    def _guess(self, mono: float, wall: float) -> tuple[bool, Basis]:
        if self.lat is None or self.lon is None:
            if self._night is None:
                self._switch(False, mono, "nothing known: day")
                return False, "default"
            return self._night, "kept"
        self._n["by_schedule"] += 1
        want = sun_says_night(wall, self.lat, self.lon)
        if want == self._night:
            return want, "schedule" if not self._measured else "kept"
        if self._night is not None and self._measured and mono - self._since < self.dwell_s:
            self._n["held"] += 1
            return self._night, "held"
        self._switch(want, mono, "the sun")
        self._measured = False
        return want, "schedule"

    def _switch(self, night: bool, mono: float, why: str) -> None:
        logger.info("%s → %s (%s)", {None: "start", True: "night", False: "day"}[self._night],
                    "night" if night else "day", why)
        self._night = night
        self._since = mono
        self._n["switches"] += 1

    def _refuse(self, kind: str) -> None:
        self._n["refused"] += 1
        if kind not in self._refused_kinds:  # once per kind at warning level; then counted
            self._refused_kinds.add(kind)
            logger.warning("camera metadata refused: %s", kind)
        else:
            logger.debug("camera metadata refused: %s", kind)
