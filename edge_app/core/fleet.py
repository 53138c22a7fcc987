"""The fleet file: one row per unit, kept by hand in a spreadsheet — read by ``camtrap
provision`` (what goes on each card) and by the station (each unit's site name and position).

Every cell is untrusted: the file is size-limited, each cell length-limited, numbers must be
finite and in range, identifiers match the same pattern ``deploy/mosquitto/make-credentials``
enforces for account names (the unit id is the MQTT user name), and the LoRaWAN keys are hex of
the right length. A bad row is refused as a :class:`ConfigError` whose key names the line and
the column, so the technician can find the cell.

Columns (header row required, order free, extra columns refused so a typo is not ignored):

=============== ======== ==============================================================
unit_id         required letters, digits, ``-`` and ``_``, at most 32 (e.g. ``LL-042``)
site_name       required the place, for people (at most 100 characters)
lat, lon        required decimal degrees, WGS 84
deployment_id   required letters, digits, ``-``, ``_`` and ``.``, at most 64
dev_eui         optional 16 hex digits; with join_eui and app_key (all three or none):
join_eui        optional 16 hex digits   the unit then sends alerts over LoRaWAN too
app_key         optional 32 hex digits
broker_host     required the base station's MQTT broker (host name or IP, no scheme/port)
broker_port     optional default 8883
=============== ======== ==============================================================
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from edge_app.core.config import host_problem
from edge_app.core.errors import ConfigError

MAX_FLEET_BYTES = 4 * 1024 * 1024  # ~40 000 rows: far beyond any fleet, small for a laptop
MAX_CELL = 256
COLUMNS = ("unit_id", "site_name", "lat", "lon", "deployment_id", "dev_eui", "join_eui",
           "app_key", "broker_host", "broker_port")
REQUIRED = ("unit_id", "site_name", "lat", "lon", "deployment_id", "broker_host")
_UNIT_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX = re.compile(r"^[0-9A-F]*$")


@dataclass(frozen=True)
class FleetRow:
    """One unit of the fleet, validated."""

    unit_id: str
    site_name: str
    lat: float
    lon: float
    deployment_id: str
    broker_host: str
    broker_port: int
    dev_eui: str = ""
    join_eui: str = ""
    app_key: str = ""

    @property
    def lorawan(self) -> bool:
        return bool(self.app_key)


def _number(where: str, text: str, lo: float, hi: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(where, f"must be a number, got {text[:40]!r}") from None
    if not math.isfinite(v):
        raise ConfigError(where, f"must be finite, got {text[:40]!r}")
    if not lo <= v <= hi:
        raise ConfigError(where, f"must be between {lo:g} and {hi:g}, got {v:g}")
    return v


def _hex(where: str, text: str, digits: int) -> str:
    v = text.replace(":", "").replace("-", "").strip().upper()
    if len(v) != digits or not _HEX.match(v):
        # Never echo the value: app_key is the device's root key.
        raise ConfigError(where, f"must be {digits} hex digits")
    return v


def parse_row(cells: dict[str, str], where: str) -> FleetRow:
    """Validate one row; ``where`` is ``FILE line N`` for the error key."""
    for col in COLUMNS:
        v = cells.get(col, "")
        if len(v) > MAX_CELL:
            raise ConfigError(f"{where}: {col}", f"is longer than {MAX_CELL} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ConfigError(f"{where}: {col}", "holds a control character")
    for col in REQUIRED:
        if not cells.get(col, "").strip():
            raise ConfigError(f"{where}: {col}", "is required")
    unit_id = cells["unit_id"].strip()
    if not _UNIT_ID.match(unit_id):
        raise ConfigError(f"{where}: unit_id", "must be 1-32 letters, digits, - or _, "
                          f"got {unit_id[:40]!r}")
    site = cells["site_name"].strip()
    if len(site) > 100:
        raise ConfigError(f"{where}: site_name", "is longer than 100 characters")
    dep = cells["deployment_id"].strip()
    if not _DEPLOYMENT_ID.match(dep):
        raise ConfigError(f"{where}: deployment_id", "must be 1-64 letters, digits, -, _ or "
                          f"., got {dep[:40]!r}")
    lat = _number(f"{where}: lat", cells["lat"].strip(), -90, 90)
    lon = _number(f"{where}: lon", cells["lon"].strip(), -180, 180)
    host = cells["broker_host"].strip()
    problem = host_problem(host)
    if problem:
        raise ConfigError(f"{where}: broker_host", problem)
    port_text = cells.get("broker_port", "").strip() or "8883"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: broker_port", f"must be 1-65535, got {port_text[:40]!r}")
    keys = {c: cells.get(c, "").strip() for c in ("dev_eui", "join_eui", "app_key")}
    if any(keys.values()):
        for col, digits in (("dev_eui", 16), ("join_eui", 16), ("app_key", 32)):
            if not keys[col]:
                raise ConfigError(f"{where}: {col}", "is required when any LoRaWAN key is given "
                                  "(dev_eui, join_eui, app_key: all three or none)")
            keys[col] = _hex(f"{where}: {col}", keys[col], digits)
    return FleetRow(unit_id=unit_id, site_name=site, lat=lat, lon=lon, deployment_id=dep,
                    broker_host=host, broker_port=int(port_text), **keys)


def read_fleet(path: Path) -> dict[str, FleetRow]:
    """Every row of the fleet file, by unit id; the whole file is checked, not just one row,
    so a mistake anywhere is found on the first card rather than the hundredth."""
    name = path.name
    try:
        size = path.stat().st_size
        if size > MAX_FLEET_BYTES:
            raise ConfigError(name, f"is larger than {MAX_FLEET_BYTES} bytes")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ConfigError(name, f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError:
        raise ConfigError(name, "is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise ConfigError(f"{name} header", f"unknown column {unknown[0][:40]!r} (columns: "
                          f"{', '.join(COLUMNS)})")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"{name} header", f"column {missing[0]} is missing")
    reader.fieldnames = header
    rows: dict[str, FleetRow] = {}
    try:
        for raw in reader:
            where = f"{name} line {reader.line_num}"
            if None in raw:
                raise ConfigError(where, "has more cells than the header")
            cells = {k: (v or "") for k, v in raw.items()}
            if not any(v.strip() for v in cells.values()):
                continue
            row = parse_row(cells, where)
            if row.unit_id in rows:
                raise ConfigError(f"{where}: unit_id", f"{row.unit_id} appears twice")
            rows[row.unit_id] = row
    except csv.Error as e:
        raise ConfigError(f"{name} line {reader.line_num}", f"is not valid CSV: {e}") from None
    return rows
