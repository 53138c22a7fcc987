"""Where a Camtrap DP export reads from: a unit's card, or the station's receiver store.

A card has it all: the deployment history and the catalogue (``camtrap.db``) and the media.
The station's store (``ranger.db`` + ``media/<unit>/``) has the events of many units as they
arrived, each naming its deployment (``deployment_id`` in the event JSON), and the media that
were sent (thumbnails always, full frames for alerts), but not the deployment records: those
stay on the units. So a station export is given them as a file: the ``camtrap deployment ls
--json`` output of each unit (one list, or several concatenated into one list), checked
value by value as typed input.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_app.tools.cdp_build import SourceEvent, parse_ts
from edge_app.trap.store.deployments import Deployment, DeploymentBook, DeploymentError

SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_DEPLOYMENTS_FILE = 4 * 1024 * 1024


@dataclass(slots=True)
class Source:
    """What to export: deployments, events, the files to copy (source, package path) and which
    unit each deployment belongs to (``cameraID``)."""

    deployments: list[Deployment]
    events: list[SourceEvent]
    files: list[tuple[Path, str]] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)


def _media_id(ev: dict[str, Any], kind: str) -> str | None:
    return next((str(m["id"]) for m in ev.get("media") or []
                 if isinstance(m, dict) and m.get("kind") == kind and "id" in m), None)


def _add(src: Source, ev: dict[str, Any], ts: float, file: Path | None, media_id: str | None,
         created: float | None) -> None:
    """One event, with its frame when the file is there and the names are safe as paths."""
    dep = ev.get("deployment_id")
    if file is None or media_id is None or not file.is_file() or not isinstance(dep, str) \
            or not SAFE.match(dep):
        src.events.append(SourceEvent(ev, ts, classified_at=created))
        return
    pkg = f"media/{dep}/{file.name}"
    src.files.append((file, pkg))
    src.events.append(SourceEvent(ev, ts, media_id, pkg, created))


def read_card(root: Path) -> Source:
    """A unit's storage root (``--storage`` or the config's ``storage.root``).

    Raises:
        ValueError: there is no catalogue there.
    """
    from edge_app.trap.store.catalog import EventRecord
    from edge_app.trap.store.db import db_path, open_db

    if not db_path(root).is_file():
        raise ValueError(f"no camtrap catalogue at {db_path(root)}")
    conn = open_db(db_path(root))
    try:
        deployments = DeploymentBook(conn).all()
        rows = [EventRecord.from_row(r) for r in conn.execute("SELECT * FROM events ORDER BY ts")]
    finally:
        conn.close()
    src = Source(deployments, [])
    if rows:
        src.units = {d.id: rows[0].unit for d in deployments}
    for rec in rows:
        try:
            ev = rec.event
        except ValueError:
            continue  # a damaged row: nothing to export from it
        rel, kind = (rec.image_path, "image") if rec.image_path else (rec.thumb_path, "thumb")
        _add(src, ev, rec.ts, root / rel if rel else None, _media_id(ev, kind), rec.created)
    return src


def load_deployments(path: Path) -> tuple[list[Deployment], dict[str, str]]:
    """Deployment records from ``camtrap deployment ls --json`` output (a JSON list).

    Each item may carry ``unit`` (the unit it belongs to). Raises:
        ValueError: the file is too big, not a list of objects, or a value is out of range.
    """
    if path.stat().st_size > MAX_DEPLOYMENTS_FILE:
        raise ValueError(f"{path}: larger than {MAX_DEPLOYMENTS_FILE} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON: {e}") from e
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError(f"{path}: expected a list of deployment objects")
    names = {f.name for f in fields(Deployment)}
    out, units = [], {}
    for i, item in enumerate(data):
        try:
            dep = Deployment(**{k: v for k, v in item.items() if k in names}).check()
        except (TypeError, DeploymentError) as e:
            raise ValueError(f"{path}: deployment {i}: {e}") from e
        out.append(dep)
        if isinstance(item.get("unit"), str):
            units[dep.id] = item["unit"]
    if len({d.id for d in out}) != len(out):
        raise ValueError(f"{path}: a deployment id appears twice")
    return out, units


def read_station(folder: Path, deployments_file: Path) -> Source:
    """The receiver's store folder (``camtrap alerts --store``) plus the deployment records.

    Raises:
        ValueError: no store there, or a bad deployments file.
    """
    db = folder / "ranger.db"
    if not db.is_file():
        raise ValueError(f"no receiver store at {db}")
    deployments, units = load_deployments(deployments_file)
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT unit, json, received FROM events "
                              "ORDER BY received, rowid").fetchall()
        media = {(str(u), str(i)): str(p)
                 for u, i, p in conn.execute("SELECT unit, id, path FROM media")}
    finally:
        conn.close()
    src = Source(deployments, [], units=units)
    for unit, text, received in events:
        try:
            ev = json.loads(text)
        except json.JSONDecodeError:
            continue
        ts = parse_ts(ev.get("ts")) if isinstance(ev, dict) else None
        if ts is None:
            continue
        dep = ev.get("deployment_id")
        if isinstance(dep, str):
            src.units.setdefault(dep, str(unit))
        for kind in ("image", "thumb"):
            mid = _media_id(ev, kind)
            rel = media.get((str(unit), mid)) if mid else None
            if rel is not None and SAFE.match(mid or ""):
                _add(src, ev, ts, folder / rel, mid, received)
                break
        else:
            _add(src, ev, ts, None, None, received)
    return src
