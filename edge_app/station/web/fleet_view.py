"""What the Fleet page says about one unit, from the station's fleet row (pure, no I/O).

The row is what :meth:`edge_app.station.store.RangerStore.unit` returns. Its ``stats`` is the
unit's last stats message (``edge_app/trap/uplink/mqtt_stats.py::stats_body`` plus the
daemon's ``stats_extra``): it came over MQTT through a door that checked only size, depth and
finite numbers, so every field here is read defensively. A wrong type, a missing key or an
absurd value gives ``None`` (and, where a ranger should know, a flag), never an exception: one
broken unit must not take the whole Fleet page down.

States (``UnitHealth.state``):

- ``online``: the unit said so (or sent something without a status yet) and was heard lately.
- ``silent``: it claims to be online but nothing was heard for longer than
  ``expected_interval_s`` plus a grace of ``max(SILENT_GRACE_MIN_S, SILENT_GRACE_FRACTION ×
  expected_interval_s)``. One late stats message is normal (a reconnect with backoff, a busy
  uplink); a unit gone quiet for a whole interval and a half has usually lost power or its
  link without the broker noticing yet.
- ``lost``: the broker published the unit's Last Will (the connection died uncleanly).
- ``offline``: a clean stop. In the ``gated`` power mode this is the normal state between
  triggers, so it is information, not a warning.
- ``never``: no row at all (a unit the station expects but has never heard).

Battery thresholds: the stats carry the pack voltage but not (yet) the chemistry or the cell
count. They are read from ``battery_chemistry`` / ``battery_cells`` (or ``mcu.chemistry`` /
``mcu.cells``) if a unit ever sends them; else the chemistry is the supervisor's default,
LiFePO4 (``firmware/supervisor/config.py``), and the cell count is the smallest usual pack of
that chemistry (:data:`PACK_CELLS`; LiFePO4: 1, 2, 4 or 8 cells) whose full-charge voltage
covers the reading. A deeply discharged 4-cell LiFePO4 pack then still reads as 4 cells (low),
never as a healthy smaller one, so the guess errs toward a warning. (Li-ion 3 and 4 cells
overlap: 12.0 V reads as a fine 3-cell pack; send ``battery_cells`` to settle it.) We warn a
little above the MCU's cut-off (it cuts the Pi at 3.00 V per LiFePO4 cell) so a ranger can
plan a visit before the trap goes dark, and the MCU's own ``low_voltage`` flag is always an
alarm.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SILENT_GRACE_FRACTION = 0.5
"""The grace after ``expected_interval_s`` before an online unit counts as silent, as a
fraction of the interval ..."""
SILENT_GRACE_MIN_S = 60.0
"""... and at least this long (a reconnect with backoff takes tens of seconds)."""

DEFAULT_CHEMISTRY = "lifepo4"
"""The supervisor's default chemistry (``firmware/supervisor/config.py``)."""
CELL_V: dict[str, tuple[float, float, float]] = {
    # chemistry: (MCU cut-off per cell, warn below per cell, full charge per cell), volts.
    # Cut-offs are the supervisor's (firmware/supervisor/config.py CHEMISTRY); "warn" sits
    # where a resting cell has roughly 10-20 % left, "full" is the charger's end voltage.
    "lifepo4": (3.00, 3.10, 3.65),
    "li_ion": (3.30, 3.45, 4.20),
    "lead_acid": (1.95, 2.00, 2.45),
}
PACK_CELLS: dict[str, tuple[int, ...]] = {
    # Usual packs, smallest first: LiFePO4 3.2/6.4/12.8/25.6 V, Li-ion 3.7 to 22.2 V,
    # lead-acid 6/12/24 V (see the module docstring for why the smallest that fits).
    "lifepo4": (1, 2, 4, 8),
    "li_ion": (1, 2, 3, 4, 6),
    "lead_acid": (3, 6, 12),
}
MAX_CELLS = 24
"""A ``battery_cells`` above this is a wrong value."""

OUTBOX_WARN = 100
"""More rows than this waiting in the unit's outbox: its uplink is not keeping up."""
COLD_C = -25.0
"""Colder than this: the Pi Zero 2 W is rated to -20 °C, batteries sag, lenses frost."""
HOT_C = 60.0
"""Hotter than this: near the Pi's 70 °C limit (a trap in full sun in a closed case)."""
TEMP_RANGE_C = (-70.0, 125.0)
"""Readings outside this are a broken sensor, not weather: shown as None and flagged."""
VOLT_RANGE = (0.0, 60.0)
"""Battery/solar readings outside this (exclusive of 0: no divider fitted) are refused."""
MAX_DISK_BYTES = 100 * 10**12
"""A card larger than 100 TB is a wrong reading."""
MAX_OUTBOX_ROWS = 10**9
"""Per-kind depths above this are a wrong reading."""
MAX_TEXT = 64
"""Longest name or version shown (the page escapes it; this keeps the table readable)."""
DATA_PLAN_WARN = 0.9
"""The SIM's month used (or projected) beyond this fraction of its plan: a ranger is told
before full images stop going (the trap holds them once the projection would not fit)."""
MAX_MB = 1e7
"""Data figures above this (10 TB) are a wrong reading."""

STATES = ("online", "offline", "lost", "silent", "never")


class Severity(enum.IntEnum):
    """How much a row needs a ranger; the page sorts by it, worst first."""

    OK = 0
    INFO = 1  # worth knowing (a clean stop, a pack on trial), nothing to do
    WARN = 2  # act soon (battery low, disk low, outbox backing up, never heard)
    ALARM = 3  # act now (lost, silent, camera given up, battery at the cut-off)


@dataclass(frozen=True, slots=True)
class UnitHealth:
    """One row of the Fleet page.

    Attributes:
        unit: the unit id.
        state: one of :data:`STATES`.
        severity: the worst of the state's and the flags' severities.
        last_seen: wall time anything was last heard from the unit, None if never.
        state_at: wall time of the last status (online/offline/lost), None if none.
        stats_at: wall time of the last stats message, None if none.
        battery_v, solar_v, temp_c: the supervisor MCU's readings (None: absent or absurd).
        disk_free_gb: free space on the unit's card in GB (10⁹ bytes).
        disk_low: the unit says its card is below its own minimum.
        outbox_depth: rows waiting in the unit's outbox, summed over kinds.
        link: the uplink as the unit sees it, e.g. ``"mqtt connected · LoRa joined"``.
        model: the detector (and the active model pack), e.g. ``"md_v5a · pack 2026-11"``.
        firmware: the unit's camtrap version and the supervisor's firmware.
        flags: warnings a ranger acts on, worst first.
    """

    unit: str
    state: str
    severity: Severity
    last_seen: float | None = None
    state_at: float | None = None
    stats_at: float | None = None
    battery_v: float | None = None
    solar_v: float | None = None
    temp_c: float | None = None
    disk_free_gb: float | None = None
    disk_low: bool = False
    outbox_depth: int | None = None
    link: str | None = None
    model: str | None = None
    firmware: str | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)


def unit_health(row: dict[str, Any] | None, unit: str, now: float,
                expected_interval_s: float) -> UnitHealth:
    """The Fleet page's view of ``unit`` at wall time ``now``.

    Args:
        row: the station's fleet row of the unit, None if it was never heard.
        unit: the unit id (used when ``row`` is None or lacks it).
        now: wall time, seconds since the epoch.
        expected_interval_s: how often the unit should be heard (its stats interval).
    """
    if row is None or not isinstance(row, Mapping):
        return UnitHealth(unit=unit, state="never", severity=Severity.WARN,
                          flags=("never heard",))
    flags = _Flags()
    last_seen = _time(row.get("last_seen"))
    state_at = _time(row.get("state_at"))
    stats_at = _time(row.get("stats_at"))
    state = _state(row.get("state"), last_seen, now, expected_interval_s, state_at, flags)
    raw = row.get("stats")
    stats: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    battery = _volts(stats.get("battery_v"), "battery_v", flags)
    solar = _volts(stats.get("solar_v"), "solar_v", flags)
    temp = _temp(stats.get("temp_c"), flags)
    mcu = _map(stats.get("mcu"))
    _battery_flags(battery, stats, mcu, flags)
    disk_gb = _disk_gb(stats.get("disk_free_bytes"), flags)
    disk_low = stats.get("disk_low") is True
    if disk_low:
        flags.add(Severity.WARN, "disk low" if disk_gb is None
                  else f"disk low ({_num(disk_gb, 1)} GB free)")
    depth = _outbox(stats.get("outbox"))
    if depth is not None and depth > OUTBOX_WARN:
        flags.add(Severity.WARN, f"outbox {depth} waiting")
    _other_flags(stats, mcu, flags)
    return UnitHealth(
        unit=unit, state=state, severity=flags.worst(), last_seen=last_seen,
        state_at=state_at, stats_at=stats_at, battery_v=battery, solar_v=solar, temp_c=temp,
        disk_free_gb=disk_gb, disk_low=disk_low, outbox_depth=depth,
        link=_link(stats), model=_model(stats), firmware=_firmware(stats, mcu),
        flags=flags.texts())


def fleet_order(healths: Iterable[UnitHealth]) -> list[UnitHealth]:
    """Worst first; among equals the longest unheard first, then by unit id."""
    def key(h: UnitHealth) -> tuple[int, float, str]:
        return (-int(h.severity), h.last_seen if h.last_seen is not None else -math.inf,
                h.unit)
    return sorted(healths, key=key)


def age_text(seconds: float) -> str:
    """A duration the way a ranger says it: ``45 s``, ``12 min``, ``3 h``, ``2 d``."""
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


# -- helpers ---------------------------------------------------------------------------------


class _Flags:
    """Flags with their severities; the state's severity is one of them (without text)."""

    def __init__(self) -> None:
        self._items: list[tuple[Severity, str]] = []
        self._floor = Severity.OK

    def add(self, severity: Severity, text: str) -> None:
        self._items.append((severity, text))

    def level(self, severity: Severity) -> None:
        self._floor = max(self._floor, severity)

    def worst(self) -> Severity:
        return max([self._floor, *(s for s, _ in self._items)])

    def texts(self) -> tuple[str, ...]:
        ordered = sorted(enumerate(self._items), key=lambda p: (-p[1][0], p[0]))
        return tuple(t for _, (_, t) in ordered)


def _number(value: Any) -> float | None:
    """A finite int/float (bools and strings are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)  # a huge int overflows
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _time(value: Any) -> float | None:
    f = _number(value)
    return f if f is not None and f >= 0 else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    """A short printable string, else None (the page escapes it anyway)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, int) and abs(value) > 10**18:  # str() of a huge int raises
        return None
    s = "".join(ch for ch in str(value) if ch.isprintable()).strip()
    if not s:
        return None
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT - 1] + "…"


def _num(value: float, digits: int) -> str:
    """A number with a real minus sign (−), as printed on the page."""
    return f"{value:.{digits}f}".replace("-", "\u2212")


def _state(raw: Any, last_seen: float | None, now: float, interval: float,
           state_at: float | None, flags: _Flags) -> str:
    grace = max(SILENT_GRACE_MIN_S, SILENT_GRACE_FRACTION * max(0.0, interval))
    if raw == "lost":
        flags.level(Severity.ALARM)
        since = state_at if state_at is not None else last_seen
        flags.add(Severity.ALARM, "connection lost" if since is None
                  else f"connection lost {age_text(now - since)} ago")
        return "lost"
    if raw == "offline":
        flags.level(Severity.INFO)
        return "offline"
    # "online", or a row made by events before any status: judge by what was heard.
    quiet = None if last_seen is None else now - last_seen
    if quiet is None or quiet > max(0.0, interval) + grace:
        flags.level(Severity.ALARM)
        flags.add(Severity.ALARM, "silent" if quiet is None else f"silent {age_text(quiet)}")
        return "silent"
    return "online"


def _volts(value: Any, name: str, flags: _Flags) -> float | None:
    if value is None:
        return None
    v = _number(value)
    if v is None or not VOLT_RANGE[0] < v <= VOLT_RANGE[1]:
        flags.add(Severity.INFO, f"bad reading: {name}")
        return None
    return v


def _temp(value: Any, flags: _Flags) -> float | None:
    if value is None:
        return None
    t = _number(value)
    if t is None or not TEMP_RANGE_C[0] <= t <= TEMP_RANGE_C[1]:
        flags.add(Severity.INFO, "bad reading: temp_c")
        return None
    if t < COLD_C or t > HOT_C:
        flags.add(Severity.WARN, f"temperature {_num(t, 0)} °C")
    return t


def _chemistry(stats: Mapping[str, Any], mcu: Mapping[str, Any]) -> str:
    for value in (stats.get("battery_chemistry"), mcu.get("chemistry")):
        if isinstance(value, str) and value in CELL_V:
            return value
    return DEFAULT_CHEMISTRY


def _cells(stats: Mapping[str, Any], mcu: Mapping[str, Any], chemistry: str,
           battery: float) -> int:
    for value in (stats.get("battery_cells"), mcu.get("cells")):
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CELLS:
            return value
    full = CELL_V[chemistry][2]
    packs = PACK_CELLS[chemistry]
    return next((n for n in packs if battery <= n * full), packs[-1])


def _battery_flags(battery: float | None, stats: Mapping[str, Any], mcu: Mapping[str, Any],
                   flags: _Flags) -> None:
    if mcu.get("low_voltage") is True:
        shown = "" if battery is None else f" {_num(battery, 2)} V"
        flags.add(Severity.ALARM, f"battery at cut-off{shown}")
        return
    if battery is None:
        return
    chemistry = _chemistry(stats, mcu)
    cut, warn, _ = CELL_V[chemistry]
    cells = _cells(stats, mcu, chemistry, battery)
    if battery < cells * cut:
        flags.add(Severity.ALARM, f"battery at cut-off {_num(battery, 2)} V")
    elif battery < cells * warn:
        flags.add(Severity.WARN, f"battery low {_num(battery, 2)} V")


def _disk_gb(value: Any, flags: _Flags) -> float | None:
    if value is None:
        return None
    b = _number(value)
    if b is None or not 0 <= b <= MAX_DISK_BYTES:
        flags.add(Severity.INFO, "bad reading: disk_free_bytes")
        return None
    return b / 1e9


def _outbox(value: Any) -> int | None:
    """The sum of the per-kind depths that are sane counts; None if there is none."""
    if not isinstance(value, Mapping):
        return None
    total, seen = 0, False
    for n in value.values():
        if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_OUTBOX_ROWS:
            total += n
            seen = True
    return total if seen else None


def _other_flags(stats: Mapping[str, Any], mcu: Mapping[str, Any], flags: _Flags) -> None:
    gave_up = _number(_map(stats.get("camera")).get("gave_up"))
    if gave_up is not None and gave_up > 0:
        flags.add(Severity.ALARM, "camera given up")
    if mcu and mcu.get("connected") is False:
        flags.add(Severity.WARN, "supervisor not answering")
    if stats.get("time_source") == "none":
        flags.add(Severity.WARN, "clock not set")
    pack = _map(_map(stats.get("models")).get("pack"))
    if pack.get("on_trial") is True:
        flags.add(Severity.INFO, "model pack on trial")
    _cellular_flags(_map(stats.get("cellular")), flags)


def _mb(value: Any) -> float | None:
    f = _number(value)
    return f if f is not None and 0 <= f <= MAX_MB else None


def _cellular_flags(cell: Mapping[str, Any], flags: _Flags) -> None:
    """The LTE link (``cellular`` in the stats): no modem, no signal, the data plan."""
    if not cell:
        return
    signal, data = _map(cell.get("signal")), _map(cell.get("data"))
    state = signal.get("state")
    if state == "absent":
        flags.add(Severity.WARN, "no modem")
    elif state == "searching" or _number(signal.get("quality")) == 0:
        flags.add(Severity.WARN, "no signal")
    used, plan = _mb(data.get("used_mb")), _mb(data.get("plan_mb"))
    projected = _mb(data.get("projected_mb"))
    if used is not None and plan:
        if used >= DATA_PLAN_WARN * plan:
            flags.add(Severity.WARN, f"data plan {100 * used / plan:.0f} % used")
        elif projected is not None and projected >= DATA_PLAN_WARN * plan:
            flags.add(Severity.INFO, f"data plan {100 * projected / plan:.0f} % by month end")


def _cellular_text(cell: Mapping[str, Any]) -> str | None:
    """``LTE lte 70 % · RSRP −101 dBm · 12.5/500 MB``: signal and data use, what is known."""
    if not cell:
        return None
    signal, data = _map(cell.get("signal")), _map(cell.get("data"))
    parts = ["LTE" + ("" if (tech := _text(signal.get("technology"))) is None
                      else f" {tech}")]
    quality = _number(signal.get("quality"))
    if quality is not None and 0 <= quality <= 100:
        parts[0] += f" {quality:.0f} %"
    rsrp = _number(signal.get("rsrp"))
    if rsrp is not None and -200 <= rsrp <= 0:
        parts.append(f"RSRP {_num(rsrp, 0)} dBm")
    link_state = _text(_map(cell.get("link")).get("state"))
    if link_state is not None:
        parts.append(link_state)
    used, plan = _mb(data.get("used_mb")), _mb(data.get("plan_mb"))
    if used is not None:
        parts.append(f"{used:.1f}/{plan:.0f} MB" if plan else f"{used:.1f} MB")
    return " ".join(parts[:1]) + "".join(f" · {p}" for p in parts[1:])


def _link(stats: Mapping[str, Any]) -> str | None:
    parts: list[str] = []
    mqtt = _text(_map(_map(stats.get("links")).get("mqtt")).get("state"))
    if mqtt is not None:
        parts.append(f"mqtt {mqtt}")
    lora = stats.get("lorawan")
    if isinstance(lora, Mapping):
        joined = lora.get("joined")
        if isinstance(joined, bool):
            parts.append("LoRa joined" if joined else "LoRa not joined")
    cell = _cellular_text(_map(stats.get("cellular")))
    if cell is not None:
        parts.append(cell)
    return " · ".join(parts) or None


def _model(stats: Mapping[str, Any]) -> str | None:
    models = _map(stats.get("models"))
    detector = _text(models.get("detector"))
    pack = _text(_map(models.get("pack")).get("active"))
    parts = [p for p in (detector, None if pack is None else f"pack {pack}") if p]
    return " · ".join(parts) or None


def _firmware(stats: Mapping[str, Any], mcu: Mapping[str, Any]) -> str | None:
    version = _text(stats.get("version"))
    mcu_fw = _text(mcu.get("firmware"))
    parts = [p for p in (None if version is None else f"camtrap {version}",
                         None if mcu_fw is None else f"MCU {mcu_fw}") if p]
    return " · ".join(parts) or None
