"""Everything the web app is given from outside: store, time zone, fleet, bus, secrets.

One frozen value built by ``camtrap station`` (or a test), so the app has no globals and two
apps can run side by side in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from edge_app.core.clock import Clock, SystemClock
from edge_app.station.store import DB_NAME
from edge_app.station.web.bus import EventBus

#: (unit, command name, body) → command id; None when the station has no MQTT link to send on.
CommandSender = Callable[[str, str, dict[str, Any]], str]


@dataclass(frozen=True, slots=True)
class UnitInfo:
    """A unit as the fleet file knows it: where it stands and what it is called there."""

    unit: str
    site: str = ""
    lat: float | None = None
    lon: float | None = None
    group: str = ""


@dataclass(frozen=True, slots=True)
class WebContext:
    """What :func:`edge_app.station.web.app.make_app` serves.

    Attributes:
        store_dir: the receiver's store folder (``ranger.db`` and ``media/``).
        tz: the rangers' time zone; every time on a page is shown in it.
        units: unit id → its fleet-file entry (may be empty: units are then shown by id).
        bus: where the ingest thread announces stored events (the live page listens).
        secret_key: signs the session cookies (at least 32 random bytes, kept across restarts
            so rangers stay logged in).
        expected_interval_s: a unit silent longer than this is flagged on the fleet page.
        boundary: the park boundary as GeoJSON, or None.
        tile_url: an offline tile server's URL template, or None (no tiles).
        clock: wall time for "5 min ago", acknowledgements and the login throttle.
        send_command: sends a command to a unit (admins only), None without a link.
        public_url: the address rangers use (``https://…`` turns on ``Secure`` cookies).
        review: the review loop's jobs (:class:`edge_app.station.review_runner.ReviewRunner`),
            None when ``[review]`` is not configured (labelling still works).
    """

    store_dir: Path
    tz: ZoneInfo
    units: Mapping[str, UnitInfo]
    bus: EventBus
    secret_key: bytes
    expected_interval_s: float = 3600.0
    boundary: dict[str, Any] | None = None
    tile_url: str | None = None
    clock: Clock = field(default_factory=SystemClock)
    send_command: CommandSender | None = None
    public_url: str = "http://localhost:8080"
    review: Any = None

    @property
    def db_path(self) -> Path:
        return self.store_dir / DB_NAME

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.lower().startswith("https://")
