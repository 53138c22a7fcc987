"""Camtrap DP 1.0.2 rows from camtrap's deployments and events: pure, no files, no clock.

Mapping decisions, and why:

* One **event** per stored trigger (``eventID`` = camtrap's event id): an event-level
  observation carries the verdict (label, species, score); media-level observations carry one
  detector box each on the stored frame, with the detection's own category and confidence.
* ``observationType``: camtrap's ``animal`` / ``vehicle`` stay, ``person`` becomes ``human``,
  ``empty`` becomes ``blank``, and an empty label on a trigger kept only because its frames
  could not be read (``kept_by`` ``unreadable``) becomes ``unknown``.
* ``scientificName``: ``leopard`` → *Panthera pardus*, ``tiger`` → *Panthera tigris*,
  ``other_big_cat`` → Felidae (family). Not the subspecies (*P. p. orientalis*, *P. t.
  altaica*): the classifier tells species apart from a photo, not subspecies, which are a
  matter of range and genetics; the range is what the deployment coordinates already record.
  GBIF matches the species names to its backbone without ambiguity.
* Boxes: camtrap's ``bbox`` is ``[x, y, w, h]`` normalised with a top-left origin, the
  convention of Camtrap DP's ``bboxX``/``bboxY``/``bboxWidth``/``bboxHeight`` (and of
  MegaDetector), so the values pass through, clipped to the frame.
* Times are UTC (``Z``), as the unit records them; ``timestampIssues`` is set on a deployment
  one of whose events was stamped by a clock that was never synced.
* ``filePublic`` is false: the photos show where an endangered cat walks, and people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge_app.trap.store.deployments import Deployment

OBSERVATION_TYPE = {"animal": "animal", "person": "human", "vehicle": "vehicle",
                    "empty": "blank"}
_FELIDAE = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Mammalia",
            "order": "Carnivora", "family": "Felidae"}
TAXA: dict[str, dict[str, Any]] = {
    "leopard": {"scientificName": "Panthera pardus", "taxonRank": "species", **_FELIDAE,
                "genus": "Panthera", "vernacularNames": {"eng": "leopard"}},
    "tiger": {"scientificName": "Panthera tigris", "taxonRank": "species", **_FELIDAE,
              "genus": "Panthera", "vernacularNames": {"eng": "tiger"}},
    "other_big_cat": {"scientificName": "Felidae", "taxonRank": "family", **_FELIDAE},
}
DEPLOYMENT_FIELDS = (
    "deploymentID", "locationID", "locationName", "latitude", "longitude",
    "coordinateUncertainty", "deploymentStart", "deploymentEnd", "setupBy", "cameraID",
    "cameraModel", "cameraDelay", "cameraHeight", "cameraDepth", "cameraTilt", "cameraHeading",
    "detectionDistance", "timestampIssues", "baitUse", "featureType", "habitat",
    "deploymentGroups", "deploymentTags", "deploymentComments",
)
MEDIA_FIELDS = (
    "mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic",
    "fileName", "fileMediatype", "exifData", "favorite", "mediaComments",
)
OBSERVATION_FIELDS = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd",
    "observationLevel", "observationType", "cameraSetupType", "scientificName", "count",
    "lifeStage", "sex", "behavior", "individualID", "individualPositionRadius",
    "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth", "bboxHeight",
    "classificationMethod", "classifiedBy", "classificationTimestamp",
    "classificationProbability", "observationTags", "observationComments",
)

Row = dict[str, Any]


def iso(ts: float) -> str:
    """Camtrap DP's datetime form (``%Y-%m-%dT%H:%M:%S%z``; no fractions allowed)."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(text: Any) -> float | None:
    """An event JSON ``ts`` (RFC 3339) as Unix seconds, None if unreadable."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.timestamp() if dt.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """One event to export: its JSON, and the package-relative path of its copied frame."""

    event: dict[str, Any]
    ts: float
    media_id: str | None = None
    file_path: str | None = None
    classified_at: float | None = None


@dataclass(slots=True)
class Tables:
    """The three tables and what the descriptor needs to know about them."""

    deployments: list[Row] = field(default_factory=list)
    media: list[Row] = field(default_factory=list)
    observations: list[Row] = field(default_factory=list)
    species: set[str] = field(default_factory=set)
    times: list[float] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)


def deployment_row(dep: Deployment, *, unit: str, now: float, issues: bool,
                   precision: float | None) -> Row:
    """A ``deployments.csv`` row; an open deployment ends at the export time."""
    lat, lon = dep.lat, dep.lon
    if precision:
        lat, lon = round(round(lat / precision) * precision, 6), \
            round(round(lon / precision) * precision, 6)
    comments = dep.comments
    if dep.end is None:
        comments = ("still running at export; deploymentEnd is the export time. "
                    + comments).strip()
    return {
        "deploymentID": dep.id, "locationName": dep.location_name or None,
        "latitude": lat, "longitude": lon, "deploymentStart": iso(dep.start),
        "deploymentEnd": iso(dep.end if dep.end is not None else max(now, dep.start)),
        "setupBy": dep.setup_by or None, "cameraID": unit, "cameraModel": "camtrap",
        "cameraHeight": dep.camera_height_m, "cameraHeading": dep.camera_heading_deg,
        "timestampIssues": issues, "baitUse": dep.bait, "featureType": dep.feature or None,
        "habitat": dep.habitat or None, "deploymentComments": comments or None,
    }


def observation_type(label: Any, kept_by: Any) -> str:
    if label == "empty" and isinstance(kept_by, list) and "unreadable" in kept_by:
        return "unknown"
    return OBSERVATION_TYPE.get(str(label), "unknown")


def _clip(v: Any, lo: float) -> float | None:
    if not isinstance(v, int | float) or v != v:
        return None
    return round(min(1.0, max(lo, float(v))), 6)


def _prob(v: Any) -> float | None:
    return _clip(v, 0.0)


def event_rows(src: SourceEvent, dep_id: str, classified_by: str) -> tuple[Row | None,
                                                                               list[Row]]:
    """The media row (None without a frame) and the observations of one event."""
    ev = src.event
    eid = str(ev.get("id"))
    when = iso(src.ts)
    media = None
    if src.media_id and src.file_path:
        media = {"mediaID": src.media_id, "deploymentID": dep_id,
                 "captureMethod": "activityDetection", "timestamp": when,
                 "filePath": src.file_path, "filePublic": False,
                 "fileName": src.file_path.rsplit("/", 1)[-1], "fileMediatype": "image/jpeg"}
    machine = {"classificationMethod": "machine", "classifiedBy": classified_by,
               "classificationTimestamp": iso(src.classified_at or src.ts)}
    otype = observation_type(ev.get("label"), ev.get("kept_by"))
    species = ev.get("species") if otype == "animal" else None
    dets = [d for d in ev.get("detections") or [] if isinstance(d, dict)]
    same = [d for d in dets if OBSERVATION_TYPE.get(str(d.get("category"))) == otype]
    obs = [{
        "observationID": eid, "deploymentID": dep_id, "eventID": eid, "eventStart": when,
        "eventEnd": when, "observationLevel": "event", "observationType": otype,
        "scientificName": TAXA[species]["scientificName"] if species in TAXA else None,
        "count": len(same) or None, **machine,
        "classificationProbability": None if otype == "blank" else _prob(ev.get("score")),
        "observationTags": f"outcome:{ev.get('outcome')}",
    }]
    if media is not None:
        for i, d in enumerate(dets, 1):
            bbox = d.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4):
                continue
            dtype = OBSERVATION_TYPE.get(str(d.get("category")), "unknown")
            dsp = d.get("species") if dtype == "animal" else None
            conf = d.get("species_conf") if dsp in TAXA else d.get("conf")
            obs.append({
                "observationID": f"{eid}-b{i}", "deploymentID": dep_id,
                "mediaID": src.media_id, "eventID": eid, "eventStart": when, "eventEnd": when,
                "observationLevel": "media", "observationType": dtype,
                "scientificName": TAXA[dsp]["scientificName"] if dsp in TAXA else None,
                "count": 1, "bboxX": _clip(bbox[0], 0.0), "bboxY": _clip(bbox[1], 0.0),
                "bboxWidth": _clip(bbox[2], 1e-6), "bboxHeight": _clip(bbox[3], 1e-6),
                **machine, "classificationProbability": _prob(conf),
            })
    return media, obs


def build_tables(deployments: list[Deployment], events: list[SourceEvent], *, unit: str,
                 now: float, classified_by: str, precision: float | None = None,
                 units: dict[str, str] | None = None) -> Tables:
    """All rows of a package: every deployment, and every event that names one of them.

    ``units``: the unit (``cameraID``) of each deployment id, ``unit`` when not given."""
    known = {d.id for d in deployments}
    t = Tables()
    issues: set[str] = set()
    for src in sorted(events, key=lambda s: s.ts):
        dep_id = src.event.get("deployment_id")
        if dep_id not in known:
            continue
        if src.event.get("time_source") == "none" or src.event.get("time_synced") is False:
            issues.add(str(dep_id))
        media, obs = event_rows(src, str(dep_id), classified_by)
        if media is not None:
            t.media.append(media)
        t.observations += obs
        t.species |= {str(s) for s in (src.event.get("species"),) if s in TAXA}
        t.species |= {str(d.get("species")) for d in src.event.get("detections") or []
                      if isinstance(d, dict) and d.get("species") in TAXA}
        t.times.append(src.ts)
    for dep in deployments:
        row = deployment_row(dep, unit=(units or {}).get(dep.id, unit), now=now,
                             issues=dep.id in issues, precision=precision)
        t.deployments.append(row)
        t.points.append((row["longitude"], row["latitude"]))
        t.times += [dep.start, dep.end if dep.end is not None else max(now, dep.start)]
    return t


def spatial(points: list[tuple[float, float]]) -> dict[str, Any]:
    """GeoJSON coverage: the point of a single location, else the bounding box polygon."""
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    if len(set(points)) == 1:
        return {"type": "Point", "coordinates": [lons[0], lats[0]]}
    w, e, s, n = min(lons), max(lons), min(lats), max(lats)
    return {"type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def taxonomic(species: set[str]) -> list[dict[str, Any]]:
    return [TAXA[s] for s in sorted(species)]
