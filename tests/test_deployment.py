"""The deployment record: start/end in the catalogue, history kept, every event stamped."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from store_support import burst_and_verdict, make_cfg
from test_store import V1_SCHEMA

from edge_app.cli import main as cli
from edge_app.core.clock import FakeClock
from edge_app.core.errors import StorageError
from edge_app.trap.store.db import SCHEMA_VERSION, open_db
from edge_app.trap.store.deployments import Deployment, DeploymentBook, DeploymentError
from edge_app.trap.store.pipeline import EventStore

T0 = 1_790_000_000.0  # 2026-09-21 UTC
DAY = 86_400.0


def dep(dep_id: str, start: float, **kw: object) -> Deployment:
    return Deployment(id=dep_id, start=start, lat=43.1, lon=131.9, **kw)  # type: ignore[arg-type]


def test_events_carry_the_deployment_their_trigger_falls_in_and_history_stays(
        tmp_path: Path) -> None:
    store = EventStore(make_cfg(tmp_path / "data"), FakeClock(start_wall=T0))
    with store:
        book = DeploymentBook(store._conn)  # type: ignore[arg-type]
        before = store.record(*burst_and_verdict(wall=T0 - 60))
        book.start(dep("KP-1", T0, camera_height_m=0.6, camera_heading_deg=270,
                       feature="trailGame", setup_by="Anna"))
        first = store.record(*burst_and_verdict(wall=T0 + 3600))
        book.end(T0 + DAY, "KP-1")
        gap = store.record(*burst_and_verdict(wall=T0 + DAY + 60))
        book.start(dep("KP-2", T0 + 2 * DAY, habitat="oak forest"))
        second = store.record(*burst_and_verdict(wall=T0 + 2 * DAY + 5))
        # A trigger stamped (by the MCU's RTC) inside the first deployment but recorded
        # later is still attributed by its own time.
        late = store.record(*burst_and_verdict(wall=T0 + 7200))
        history = book.all()
        rows = {r.id: r.event["deployment_id"] for r in store.catalog.recent(10)}
    assert [r.event["deployment_id"] for r in (before, first, gap, second, late)
            if r is not None] == [None, "KP-1", None, "KP-2", "KP-1"]
    assert rows == {"T-1-1": None, "T-1-2": "KP-1", "T-1-3": None, "T-1-4": "KP-2",
                    "T-1-5": "KP-1"}
    assert [(d.id, d.start, d.end) for d in history] == [
        ("KP-1", T0, T0 + DAY), ("KP-2", T0 + 2 * DAY, None)]
    assert history[0].camera_heading_deg == 270
    assert history[0].feature == "trailGame"
    assert history[1].habitat == "oak forest"


def test_only_one_open_deployment_and_no_overlap(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "camtrap.db")
    book = DeploymentBook(conn)
    book.start(dep("A", T0))
    with pytest.raises(StorageError, match="A is still open"):
        book.start(dep("B", T0 + 10))
    with pytest.raises(StorageError, match="not B"):
        book.end(T0 + 10, "B")
    with pytest.raises(DeploymentError, match="end"):
        book.end(T0 - 10)  # before its start
    book.end(T0 + 100)
    with pytest.raises(StorageError, match="no deployment is open"):
        book.end(T0 + 200)
    with pytest.raises(StorageError, match="used before"):
        book.start(dep("A", T0 + 200))
    with pytest.raises(StorageError, match="before the end"):
        book.start(dep("B", T0 + 50))
    # The partial unique index holds even for a writer that skips DeploymentBook.
    book.start(dep("B", T0 + 200))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO deployments (id, start_ts, lat, lon) VALUES ('C', 1, 0, 0)")
    conn.close()


@pytest.mark.parametrize(("change", "field"), [
    ({"id": "../x"}, "id"), ({"lat": 91.0}, "lat"), ({"lon": float("nan")}, "lon"),
    ({"camera_height_m": -1.0}, "height"), ({"camera_heading_deg": 400}, "heading"),
    ({"feature": "lake"}, "feature"), ({"habitat": "a\x00b"}, "habitat"),
    ({"start": float("inf")}, "start"),
])
def test_bad_field_values_are_refused_by_name(change: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"id": "D1", "start": T0, "lat": 43.0, "lon": 131.0}
    values.update(change)
    with pytest.raises(DeploymentError) as e:
        Deployment(**values).check()  # type: ignore[arg-type]
    assert e.value.field == field


def test_a_v3_database_gains_the_deployments_table(tmp_path: Path) -> None:
    """v1 → … → v4 in one open: the field database keeps its rows and gets the new table."""
    path = tmp_path / "camtrap.db"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    old.close()
    conn = open_db(path)
    try:
        assert SCHEMA_VERSION == 4
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == "4"
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
        DeploymentBook(conn).start(dep("D1", T0))
        assert DeploymentBook(conn).at(T0 + 1) == "D1"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_cli_start_end_ls_with_the_config_location(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "unit.toml"
    cfg.write_text(f'[unit]\nid = "T-1"\n[unit.location]\nlat = 43.25\nlon = 131.5\n'
                   f'name = "ridge 3"\n[hardware]\nbackend = "sim"\n[camera]\n'
                   f'source = "synthetic"\n[storage]\nroot = "{data}"\n')
    assert cli(["deployment", "start", "KP-3", "--config", str(cfg), "--at",
                "2026-12-01T09:00:00+10:00", "--height", "0.7", "--heading", "180",
                "--feature", "trailGame", "--setup-by", "Anna", "--no-bait"]) == 0
    assert cli(["deployment", "start", "KP-4", "--config", str(cfg)]) == 1  # KP-3 open
    assert "KP-3 is still open" in capsys.readouterr().err
    assert cli(["deployment", "start", "KP-4", "--storage", str(data), "--lat", "95",
                "--lon", "0"]) == 2
    assert "lat" in capsys.readouterr().err
    assert cli(["deployment", "end", "--storage", str(data), "--at",
                "2026-12-20T09:00:00+10:00"]) == 0
    capsys.readouterr()
    assert cli(["deployment", "ls", "--storage", str(data), "--json"]) == 0
    [d] = json.loads(capsys.readouterr().out)
    assert d["id"] == "KP-3"
    assert (d["lat"], d["lon"]) == (43.25, 131.5)
    assert d["location_name"] == "ridge 3"
    assert d["bait"] is False
    assert d["end"] - d["start"] == 19 * DAY
