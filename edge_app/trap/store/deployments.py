"""The deployment record: where and how a unit was set up, kept as history in the catalogue.

Why a table written by ``camtrap deployment start|end`` and not a ``[deployment]`` config
section: a technician sets a unit up in the field, after the card was provisioned, and moves it
later; the config describes the unit, not its placements. In the catalogue every placement the
unit ever had stays (a config edit would overwrite the last one), the start and end are the
moments the technician said so, and every event is attributed to the deployment whose
interval holds its trigger time (``deployment_id`` in the event JSON), so an export months
later still knows which camera height and heading each photo was taken with.

At most one deployment is open (no end) at a time, enforced by a partial unique index: two open
placements of one camera cannot both be true.
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass

from edge_app.core.errors import StorageError
from edge_app.trap.store.db import transaction

# Camtrap DP 1.0.2 deployments.featureType (deployments-table-schema.json).
FEATURE_TYPES: tuple[str, ...] = (
    "roadPaved", "roadDirt", "trailHiking", "trailGame", "roadUnderpass", "roadOverpass",
    "roadBridge", "culvert", "burrow", "nestSite", "carcass", "waterSource", "fruitingTree",
)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TEXT = 500
MAX_HEIGHT_M = 30.0  # a camera on a tall pole or a tree; above that the value is a typo


class DeploymentError(ValueError):
    """A deployment value was refused; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Deployment:
    """One placement of the unit (times in Unix seconds, ``end`` None while it runs)."""

    id: str
    start: float
    lat: float
    lon: float
    end: float | None = None
    location_name: str = ""
    camera_height_m: float | None = None
    camera_heading_deg: int | None = None
    bait: bool | None = None
    feature: str = ""
    habitat: str = ""
    setup_by: str = ""
    comments: str = ""

    def check(self) -> Deployment:
        """Return self if every value is in range; technicians type these in the field.

        Raises:
            DeploymentError: the first bad value, named.
        """
        if not ID_RE.match(self.id):
            raise DeploymentError("id", "1-64 letters, digits, '_', '.', '-' (first a letter "
                                  "or digit)")
        _finite("start", self.start, 0.0, 4102444800.0)  # up to 2100-01-01
        _finite("lat", self.lat, -90.0, 90.0)
        _finite("lon", self.lon, -180.0, 180.0)
        if self.end is not None:
            _finite("end", self.end, self.start, 4102444800.0)
        if self.camera_height_m is not None:
            _finite("height", self.camera_height_m, 0.0, MAX_HEIGHT_M)
        if self.camera_heading_deg is not None and not 0 <= self.camera_heading_deg <= 360:
            raise DeploymentError("heading", "0..360 degrees")
        if self.feature and self.feature not in FEATURE_TYPES:
            raise DeploymentError("feature", f"one of {', '.join(FEATURE_TYPES)}")
        for name in ("location_name", "habitat", "setup_by", "comments"):
            text = getattr(self, name)
            if len(text) > MAX_TEXT or any(ord(c) < 32 for c in text):
                raise DeploymentError(name, f"at most {MAX_TEXT} printable characters")
        return self

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Deployment:
        return cls(
            id=r["id"], start=r["start_ts"], end=r["end_ts"], lat=r["lat"], lon=r["lon"],
            location_name=r["location_name"], camera_height_m=r["camera_height_m"],
            camera_heading_deg=r["camera_heading_deg"],
            bait=None if r["bait"] is None else bool(r["bait"]), feature=r["feature"],
            habitat=r["habitat"], setup_by=r["setup_by"], comments=r["comments"],
        )


def _finite(name: str, v: float, lo: float, hi: float) -> None:
    if not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise DeploymentError(name, f"a finite number in {lo:g}..{hi:g}, got {v!r}")


class DeploymentBook:
    """The ``deployments`` table seen through one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def start(self, dep: Deployment) -> Deployment:
        """Open a deployment.

        Raises:
            DeploymentError: a value is out of range.
            StorageError: another deployment is still open, the id is taken, or the new one
                would begin before the previous one ended.
        """
        dep.check()
        if dep.end is not None:
            raise DeploymentError("end", "a new deployment starts open")
        try:
            with transaction(self._conn):
                open_ = self.active()
                if open_ is not None:
                    raise StorageError(f"deployment {open_.id} is still open: end it first "
                                       "(camtrap deployment end)")
                if self.get(dep.id) is not None:
                    raise StorageError(f"deployment id {dep.id} was used before")
                last = self._conn.execute("SELECT MAX(end_ts) FROM deployments").fetchone()[0]
                if last is not None and dep.start < last:
                    raise StorageError("the start is before the end of the previous deployment")
                self._conn.execute(
                    "INSERT INTO deployments (id, start_ts, end_ts, lat, lon, location_name, "
                    "camera_height_m, camera_heading_deg, bait, feature, habitat, setup_by, "
                    "comments) VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (dep.id, dep.start, dep.lat, dep.lon, dep.location_name,
                     dep.camera_height_m, dep.camera_heading_deg,
                     None if dep.bait is None else int(dep.bait), dep.feature, dep.habitat,
                     dep.setup_by, dep.comments),
                )
        except sqlite3.Error as e:
            raise StorageError(f"cannot record deployment {dep.id}: {e}") from e
        return dep

    def end(self, when: float, dep_id: str | None = None) -> Deployment:
        """Close the open deployment (checked against ``dep_id`` when given).

        Raises:
            StorageError: nothing is open, the open one is another, or ``when`` is before
                its start.
        """
        try:
            with transaction(self._conn):
                dep = self.active()
                if dep is None:
                    raise StorageError("no deployment is open")
                if dep_id is not None and dep.id != dep_id:
                    raise StorageError(f"the open deployment is {dep.id}, not {dep_id}")
                _finite("end", when, dep.start, 4102444800.0)
                self._conn.execute("UPDATE deployments SET end_ts = ? WHERE id = ?",
                                   (when, dep.id))
        except sqlite3.Error as e:
            raise StorageError(f"cannot end the deployment: {e}") from e
        got = self.get(dep.id)
        assert got is not None
        return got

    def get(self, dep_id: str) -> Deployment | None:
        r = self._conn.execute("SELECT * FROM deployments WHERE id = ?", (dep_id,)).fetchone()
        return None if r is None else Deployment.from_row(r)

    def active(self) -> Deployment | None:
        """The open deployment, if any."""
        r = self._conn.execute("SELECT * FROM deployments WHERE end_ts IS NULL").fetchone()
        return None if r is None else Deployment.from_row(r)

    def at(self, ts: float) -> str | None:
        """The id of the deployment whose interval [start, end) holds ``ts``, if any."""
        r = self._conn.execute(
            "SELECT id FROM deployments WHERE start_ts <= ? AND (end_ts IS NULL OR ? < end_ts) "
            "ORDER BY start_ts DESC LIMIT 1", (ts, ts)).fetchone()
        return None if r is None else str(r[0])

    def all(self) -> list[Deployment]:
        """Every deployment, oldest first: the unit's history."""
        rows = self._conn.execute("SELECT * FROM deployments ORDER BY start_ts, id").fetchall()
        return [Deployment.from_row(r) for r in rows]
