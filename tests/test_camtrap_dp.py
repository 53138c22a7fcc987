"""Camtrap DP 1.0.2 export of a simulated run, validated offline against the vendored profile.

The validator itself is shown to work on the standard's own example package (passes) and on
broken copies of it (fail, naming the reason), so a pass on our export means something.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED
from store_support import burst_and_verdict, make_cfg

from edge_app.cli import main as cli
from edge_app.core.clock import FakeClock
from edge_app.station.store import RangerStore, StoredEvent
from edge_app.tools.camtrap_dp import Options, export
from edge_app.tools.cdp_sources import read_card
from edge_app.tools.cdp_validate import validate
from edge_app.trap.detect.cards import find_card, load_card
from edge_app.trap.store.catalog import Catalog
from edge_app.trap.store.db import open_db
from edge_app.trap.store.deployments import Deployment, DeploymentBook
from edge_app.trap.store.pipeline import EventStore

EXAMPLE = SHARED / "reference" / "camtrap-dp-1.0.2" / "example"  # the standard's own
T0 = 1_790_000_000.0  # 2026-09-21 UTC
DAY = 86_400.0


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A unit's storage root after a simulated run over two deployments."""
    root = tmp_path_factory.mktemp("card") / "data"
    store = EventStore(make_cfg(root, policy={"audit_every": 1}), FakeClock(start_wall=T0))
    with store:
        book = DeploymentBook(store._conn)  # type: ignore[arg-type]
        store.record(*burst_and_verdict(wall=T0 - 600))  # before any deployment
        book.start(Deployment(id="KP-1", start=T0, lat=43.1234, lon=131.5678,
                              location_name="ridge 3", camera_height_m=0.6,
                              camera_heading_deg=270, bait=False, feature="trailGame",
                              habitat="oak forest", setup_by="Anna"))
        store.record(*burst_and_verdict("alert", "animal", "leopard", 0.91, wall=T0 + 3600))
        store.record(*burst_and_verdict("alert", "person", None, 0.8, wall=T0 + 7200))
        store.record(*burst_and_verdict("discard", "empty", None, 0.05, wall=T0 + 9000))
        book.end(T0 + DAY)
        book.start(Deployment(id="KP-2", start=T0 + 2 * DAY, lat=43.2, lon=131.7,
                              setup_by="Boris"))
        store.record(*burst_and_verdict("keep", "animal", "tiger", 0.55,
                                        wall=T0 + 2 * DAY + 60))
    return root


@pytest.fixture(scope="module")
def package(card: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("export") / "pkg"
    summary = export(read_card(card), out, Options(contributors=(("Anna", "contact"),)),
                     now=T0 + 3 * DAY)
    return out, summary


def test_export_of_a_simulated_run_is_valid_camtrap_dp(
        package: tuple[Path, dict[str, object]]) -> None:
    out, summary = package
    assert summary["problems"] == []
    assert summary["validated"] is True
    assert (summary["deployments"], summary["media"], summary["skipped_events"]) == (2, 4, 1)
    assert validate(out) == []  # and again, from the files alone


def test_the_tables_say_what_the_trap_saw(card: Path,
                                         package: tuple[Path, dict[str, object]]) -> None:
    out, _ = package
    deps = {d["deploymentID"]: d for d in read_csv(out / "deployments.csv")}
    assert deps["KP-1"]["deploymentEnd"] == "2026-09-22T14:13:20Z"
    assert deps["KP-1"]["cameraHeading"] == "270"
    assert deps["KP-1"]["featureType"] == "trailGame"
    assert deps["KP-2"]["deploymentEnd"] == "2026-09-24T14:13:20Z"  # open: the export time
    media = read_csv(out / "media.csv")
    assert [m["mediaID"] for m in media] == ["T-1-2-image", "T-1-3-image", "T-1-4-image",
                                             "T-1-5-image"]
    for m in media:
        copied = out / m["filePath"]
        original = next(card.glob(f"media/*/*/*/{m['fileName']}"))
        assert copied.read_bytes() == original.read_bytes()
        assert m["filePublic"] == "false"
        assert m["captureMethod"] == "activityDetection"
    obs = {o["observationID"]: o for o in read_csv(out / "observations.csv")}
    leopard = obs["T-1-2"]
    assert (leopard["observationLevel"], leopard["observationType"],
            leopard["scientificName"]) == ("event", "animal", "Panthera pardus")
    assert leopard["classificationMethod"] == "machine"
    sha = load_card(find_card("yolov8n_coco_int8_640", None)).sha256
    assert f"yolov8n_coco_int8_640 (sha256 {sha[:12]})" in leopard["classifiedBy"]
    assert float(leopard["classificationProbability"]) == 0.91
    box = obs["T-1-2-b1"]  # the detector's box on the stored frame: [0.4, 0.3, 0.2, 0.2]
    assert (box["mediaID"], box["eventID"], box["observationLevel"]) == ("T-1-2-image",
                                                                         "T-1-2", "media")
    assert [float(box[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")] == [
        0.4, 0.3, 0.2, 0.2]
    assert obs["T-1-3"]["observationType"] == "human"
    assert obs["T-1-4"]["observationType"] == "blank"
    assert obs["T-1-5"]["scientificName"] == "Panthera tigris"
    assert obs["T-1-5"]["deploymentID"] == "KP-2"
    assert "T-1-1" not in obs  # before the first deployment
    dp = json.loads((out / "datapackage.json").read_text())
    assert dp["profile"].endswith("/1.0.2/camtrap-dp-profile.json")
    assert [t["scientificName"] for t in dp["taxonomic"]] == ["Panthera pardus",
                                                              "Panthera tigris"]
    assert dp["temporal"] == {"start": "2026-09-21", "end": "2026-09-24"}
    assert dp["spatial"]["type"] == "Polygon"
    assert dp["contributors"] == [{"title": "Anna", "role": "contact"}]


def test_coordinates_can_be_rounded_to_protect_the_sites(
        card: Path, tmp_path: Path) -> None:
    summary = export(read_card(card), tmp_path / "pkg", Options(coordinate_precision=0.01),
                     now=T0 + 3 * DAY)
    assert summary["problems"] == []
    deps = read_csv(tmp_path / "pkg" / "deployments.csv")
    assert [(d["latitude"], d["longitude"]) for d in deps] == [("43.12", "131.57"),
                                                               ("43.2", "131.7")]
    dp = json.loads((tmp_path / "pkg" / "datapackage.json").read_text())
    assert dp["coordinatePrecision"] == 0.01


def test_cli_exports_and_refuses_a_non_empty_folder(card: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pkg"
    assert cli(["export", "camtrap-dp", str(out), "--storage", str(card), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == []
    assert summary["observations"] >= 4
    assert cli(["export", "camtrap-dp", str(out), "--storage", str(card)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert cli(["export", "camtrap-dp", str(tmp_path / "x"), "--storage",
                str(tmp_path / "nothing")]) == 1
    assert "no camtrap catalogue" in capsys.readouterr().err


# -- the validator on the standard's own example -------------------------------------------


def test_the_standards_example_package_passes_the_validator() -> None:
    assert EXAMPLE.is_dir(), f"the Camtrap DP example is missing: {EXAMPLE}"
    assert validate(EXAMPLE) == []


def _broken(tmp_path: Path, table: str, column: str, value: str) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(EXAMPLE, pkg)
    rows = read_csv(pkg / f"{table}.csv")
    rows[0][column] = value
    with (pkg / f"{table}.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return pkg


@pytest.mark.parametrize(("table", "column", "value", "reason"), [
    ("observations", "observationType", "cat", "observationType"),
    ("observations", "bboxX", "1.5", "bboxX"),
    ("media", "filePath", "../outside.jpg", "filePath"),
    ("media", "deploymentID", "nowhere", "foreign"),
    ("deployments", "latitude", "91", "latitude"),
])
def test_a_broken_copy_of_the_example_fails_with_the_reason(
        tmp_path: Path, table: str, column: str, value: str, reason: str) -> None:
    problems = validate(_broken(tmp_path, table, column, value))
    assert problems, "the broken package passed"
    assert any(reason in p for p in problems), problems


def test_a_descriptor_that_breaks_the_profile_fails_with_the_reason(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(EXAMPLE, pkg)
    dp = json.loads((pkg / "datapackage.json").read_text())
    del dp["project"]
    dp["temporal"]["start"] = "May 2020"
    (pkg / "datapackage.json").write_text(json.dumps(dp))
    problems = validate(pkg)
    assert any("'project' is a required property" in p for p in problems), problems
    assert any("temporal/start" in p for p in problems), problems


# -- from the station's receiver store -------------------------------------------------------


def test_export_from_the_station_store_with_the_units_deployment_records(
        card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The receiver's own store, filled through its API with what the unit sent (event JSON;
    the full frame of alerts, the thumbnail of the rest), plus `deployment ls --json`."""
    conn = open_db(card / "camtrap.db")
    records = Catalog(conn).recent(100)
    conn.close()
    station = RangerStore(tmp_path / "station")
    station.add_events([StoredEvent(r.id, r.unit, r.outcome, r.event) for r in records], T0)
    for r in records:
        rel, kind = (r.image_path, "image") if r.outcome == "alert" else (r.thumb_path, "thumb")
        assert rel is not None
        data = (card / rel).read_bytes()
        station.add_media(r.unit, f"{r.id}-{kind}", r.id, data,
                          hashlib.sha256(data).hexdigest(), T0)
    station.close()
    assert cli(["deployment", "ls", "--storage", str(card), "--json"]) == 0
    deps = tmp_path / "deployments.json"
    deps.write_text(capsys.readouterr().out)

    out = tmp_path / "pkg"
    assert cli(["export", "camtrap-dp", str(out), "--station-store", str(tmp_path / "station"),
                "--deployments", str(deps), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == []
    assert summary["units"] == ["T-1"]
    assert (summary["deployments"], summary["media"], summary["skipped_events"]) == (2, 4, 1)
    media = {m["mediaID"]: m for m in read_csv(out / "media.csv")}
    assert set(media) == {"T-1-2-image", "T-1-3-image", "T-1-4-thumb", "T-1-5-thumb"}
    assert media["T-1-5-thumb"]["filePath"] == "media/KP-2/T-1-5-thumb.jpg"
    assert [d["cameraID"] for d in read_csv(out / "deployments.csv")] == ["T-1", "T-1"]

    assert cli(["export", "camtrap-dp", str(tmp_path / "x"), "--station-store",
                str(tmp_path / "station")]) == 2
    deps.write_text('[{"id": "KP-1", "start": 1, "lat": 99, "lon": 0}]')
    assert cli(["export", "camtrap-dp", str(tmp_path / "y"), "--station-store",
                str(tmp_path / "station"), "--deployments", str(deps)]) == 1
    assert "lat" in capsys.readouterr().err
