"""The ``[cellular]`` section: when the LTE bearer is up, and the SIM's monthly plan.

Why a section of its own, parsed here: the link policy (:mod:`.policy`), the data budget
(:mod:`.budget`) and the ModemManager adapter (:mod:`.modem`) read it, nothing else does. The
fields carry the same metadata as ``edge_app.core.config`` (``doc``, ``min``, ``max``) so the
section can be hooked into :class:`~edge_app.core.config.Config` as it is and the README's
config reference generated from it; :func:`parse_cellular` is the stand-alone door until then
and gives the same errors (``ConfigError("cellular.<key>", reason)``).
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_app.core.config import _f
from edge_app.core.errors import ConfigError

LinkMode = Literal["always", "on-demand", "windows"]
SECTION = "cellular"
MAX_WINDOWS = 6
_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class CellularConfig:
    """The LTE modem under ModemManager, its link policy and the SIM's data plan."""

    enabled: bool = _f(False, "manage the LTE modem through ModemManager (D-Bus); off: the "
                       "MQTT link assumes an IP route exists, as before")
    mode: LinkMode = _f("on-demand", "always: the bearer stays up (commands arrive at once, "
                        "the modem draws power all day); on-demand: up when the outbox holds "
                        "work for MQTT, and status_every_s after it was last up for commands and "
                        "status, down "
                        "after idle_disconnect_s; windows: up only inside the windows")
    windows: list[str] = _f([], "windows mode: 'HH:MM-HH:MM' in the timezone below (end before "
                            "start wraps midnight; at most 6)")
    timezone: str = _f("UTC", "the windows' time zone, an IANA name (e.g. Asia/Vladivostok)")
    status_every_s: float = _f(1800.0, "on-demand: connect at least this often so the station's "
                               "commands and the status report get through (0 = only for the "
                               "outbox)", min=0, max=7 * 86400)
    idle_disconnect_s: float = _f(120.0, "on-demand: disconnect once nothing was queued or in "
                                  "flight for this long", min=5, max=86400)
    connect_timeout_s: float = _f(90.0, "a connect that has not given a bearer within this long "
                                  "counts as failed (backoff)", min=5, max=3600)
    retry_base_s: float = _f(30.0, "first wait after a failed connect (doubles, jittered)",
                             min=1, max=86400)
    retry_cap_s: float = _f(1800.0, "longest wait between connect attempts", min=1,
                            max=86400)
    modem_off_when_idle: bool = _f(True, "disable the modem (radio off, low power) while the "
                                   "link is meant to be down")
    apn: str = _f("", "the SIM's APN for Simple.Connect ('' = the modem's default profile)")
    signal_rate_s: int = _f(60, "ModemManager Signal.Setup refresh rate (RSSI/RSRP/SINR; 0 = "
                            "do not ask)", min=0, max=3600)
    plan_mb: float = _f(0.0, "the SIM's monthly data plan in MB (10^6 bytes; 0 = no plan, "
                        "every image goes)", min=0, max=1e7)
    cycle_day: int = _f(1, "day of the month the plan restarts (29-31 mean the last day in "
                        "shorter months)", min=1, max=31)
    full_image_margin: float = _f(0.1, "full images go only while the projected month stays "
                                  "under plan_mb × (1 - this)", min=0, max=0.9)

    def window_minutes(self) -> tuple[tuple[int, int], ...]:
        """The windows as (start, end) minutes after local midnight (checked at parse)."""
        return tuple(parse_window(w) for w in self.windows)


def parse_window(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` → minutes after midnight; end < start wraps midnight."""
    m = _WINDOW_RE.match(text.strip())
    if m is None:
        raise ValueError(f"must be 'HH:MM-HH:MM' (24 h), got {text!r}")
    start = int(m.group(1)) * 60 + int(m.group(2))
    end = int(m.group(3)) * 60 + int(m.group(4))
    if start == end:
        raise ValueError(f"start and end are the same in {text!r}")
    return start, end


def parse_cellular(data: Mapping[str, Any]) -> CellularConfig:
    """The ``[cellular]`` table → :class:`CellularConfig`.

    Raises:
        ConfigError: an unknown key, a wrong type, a value out of its limits, a bad window or
            time zone, or ``windows`` mode without windows; ``key`` is ``cellular.<key>``.
    """
    hints = typing.get_type_hints(CellularConfig)
    known = {f.name: f for f in fields(CellularConfig)}
    for k in data:
        if k not in known:
            raise ConfigError(f"{SECTION}.{k}",
                              f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {name: _convert(f"{SECTION}.{name}", hints[name], data[name], f.metadata)
              for name, f in known.items() if name in data}
    cfg = CellularConfig(**kwargs)
    check(cfg)
    return cfg


def check(cfg: CellularConfig) -> None:
    """The rules across keys (also for a section built by ``edge_app.core.config``)."""
    if len(cfg.windows) > MAX_WINDOWS:
        raise ConfigError(f"{SECTION}.windows", f"at most {MAX_WINDOWS} windows")
    for i, w in enumerate(cfg.windows):
        try:
            parse_window(w)
        except ValueError as e:
            raise ConfigError(f"{SECTION}.windows[{i}]", str(e)) from None
    if cfg.mode == "windows" and not cfg.windows:
        raise ConfigError(f"{SECTION}.windows", "windows mode needs at least one window")
    try:
        ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{SECTION}.timezone",
                          f"not a known IANA time zone: {cfg.timezone!r}") from None
    if cfg.retry_cap_s < cfg.retry_base_s:
        raise ConfigError(f"{SECTION}.retry_cap_s", "must be ≥ retry_base_s")


def _convert(key: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            choices = " | ".join(repr(a) for a in get_args(tp))
            raise ConfigError(key, f"must be one of {choices}, got {value!r}")
        return value
    if get_origin(tp) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {value!r}")
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if tp is int and not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(key, f"must be a finite number, got {value}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value}")
    if "min" in meta and number < meta["min"]:
        raise ConfigError(key, f"must be ≥ {meta['min']}, got {value}")
    if "max" in meta and number > meta["max"]:
        raise ConfigError(key, f"must be ≤ {meta['max']}, got {value}")
    return value if tp is int else number
