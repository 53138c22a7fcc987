"""``camtrap export camtrap-dp OUT``: a unit's card as a Camtrap DP 1.0.2 data package.

The SD-card workflow: a technician brings cards back, and the scientists want what GBIF and
the camera-trap tools read. The source is a storage root (``--storage DIR``, a card mounted on
a laptop, or the one ``--config F`` names): its catalogue (``camtrap.db``: the deployment
history and every stored event) and its media. The package is self-contained: the frames are
copied into ``OUT/media/<deploymentID>/``, so the folder can be zipped, archived or uploaded
as it is. Events outside any deployment (the unit ran before ``camtrap deployment start``)
have no place in Camtrap DP and are left out, counted in the summary.

The station's receiver store (``--station-store DIR``) is a second source: the events and media
that reached the office, of every unit, with the deployment records given as the units'
``camtrap deployment ls --json`` output (``--deployments FILE``;
:mod:`edge_app.tools.cdp_sources`).

The result is validated before the command says it is done (``--no-validate`` skips it), with
the profile and table schemas shipped in the package: no network needed
(:mod:`edge_app.tools.cdp_validate`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_app import __version__
from edge_app.core.config import DetectorConfig

if TYPE_CHECKING:
    from edge_app.tools.cdp_sources import Source

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
SAMPLING_DESIGNS = ("simpleRandom", "systematicRandom", "clusteredRandom", "experimental",
                    "targeted", "opportunistic")
ROLES = ("contact", "principalInvestigator", "rightsHolder", "publisher", "contributor")


@dataclass(frozen=True, slots=True)
class Options:
    """What the package says about itself (``datapackage.json``)."""

    title: str = ""
    contributors: tuple[tuple[str, str], ...] = ()  # (name, role)
    sampling_design: str = "targeted"
    data_license: str = "CC-BY-4.0"
    media_license: str = "CC-BY-NC-4.0"
    coordinate_precision: float | None = None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    sub = ap.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = sub.add_parser("camtrap-dp", help="Camtrap DP 1.0.2 package (datapackage.json, "
                       "deployments/media/observations.csv, media/)")
    p.add_argument("out", type=Path, help="output folder (created; must be empty or absent)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="the unit's config: its storage.root is read")
    src.add_argument("--storage", type=Path, help="a storage root, e.g. a card on a laptop")
    src.add_argument("--station-store", type=Path, metavar="DIR",
                     help="the receiver's store folder (camtrap alerts --store); needs "
                     "--deployments")
    p.add_argument("--deployments", type=Path, metavar="FILE",
                   help="with --station-store: the units' 'camtrap deployment ls --json' "
                   "output (one JSON list)")
    p.add_argument("--title", default="", help="project title (default: 'camtrap unit <id>')")
    p.add_argument("--contributor", action="append", default=[], metavar="NAME[:ROLE]",
                   help=f"repeatable; ROLE one of {', '.join(ROLES)} (default contributor); "
                   "default: the deployments' 'set up by' names")
    p.add_argument("--sampling-design", choices=SAMPLING_DESIGNS, default="targeted",
                   help="how camera sites were chosen (default targeted: trails, for cats)")
    p.add_argument("--data-license", default="CC-BY-4.0", help="licence of the tables")
    p.add_argument("--media-license", default="CC-BY-NC-4.0", help="licence of the photos")
    p.add_argument("--coordinate-precision", type=float, default=None, metavar="DEG",
                   help="round coordinates to this step (e.g. 0.01) to protect the sites of "
                   "an endangered species; recorded as coordinatePrecision")
    p.add_argument("--no-validate", action="store_true", help="skip the offline validation")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _contributors(values: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        name, _, role = v.rpartition(":") if v.rsplit(":", 1)[-1] in ROLES else (v, "", "")
        name = name.strip()
        if not name or len(name) > 200:
            raise ValueError(f"--contributor {v!r}: a name of 1-200 characters")
        out.append((name, role or "contributor"))
    return tuple(out)


def main(args: argparse.Namespace) -> int:
    from edge_app.core import config as config_mod
    from edge_app.tools.cdp_sources import read_card, read_station

    detector, unit_id = config_mod.DetectorConfig(), ""
    if args.config:
        cfg = config_mod.load(args.config)
        detector, unit_id = cfg.detector, cfg.unit.id
    if args.station_store and args.deployments is None:
        print("camtrap export: --station-store needs --deployments FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        opts = Options(title=args.title, contributors=_contributors(args.contributor),
                       sampling_design=args.sampling_design, data_license=args.data_license,
                       media_license=args.media_license,
                       coordinate_precision=_precision(args.coordinate_precision))
    except ValueError as e:
        print(f"camtrap export: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        source = (read_station(args.station_store, args.deployments) if args.station_store
                  else read_card(Path(cfg.storage.root) if args.config else args.storage))
        summary = export(source, args.out, opts, detector=detector, unit_id=unit_id,
                         validate=not args.no_validate)
    except (OSError, ValueError) as e:
        print(f"camtrap export: {e}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.out}: {summary['deployments']} deployment(s), {summary['media']} media, "
              f"{summary['observations']} observation(s); {summary['skipped_events']} "
              f"event(s) outside any deployment left out")
        for p in summary["problems"]:
            print(f"  invalid: {p}")
        if summary["validated"] and not summary["problems"]:
            print("  valid Camtrap DP 1.0.2 (profile, table schemas, keys)")
    return EXIT_FAIL if summary["problems"] else EXIT_OK


def _precision(v: float | None) -> float | None:
    if v is None:
        return None
    if not math.isfinite(v) or not 1e-6 <= v <= 1.0:
        raise ValueError("--coordinate-precision: a step of 0.000001..1 degree")
    return v


def classified_by(detector: DetectorConfig) -> str:
    """``classifiedBy``: the detector (and classifier) model cards with a short sha256.

    The cards of the config the export is run with: the catalogue does not record which
    model judged each event, so a model changed during a deployment is not told apart."""
    from edge_app.core.errors import ModelError
    from edge_app.trap.detect.cards import find_card, load_card

    models = Path(detector.models_dir) if detector.models_dir else None
    names = [n for n in (detector.detector, detector.classifier) if n]
    parts = []
    for name in names:
        try:
            card = load_card(find_card(name, models))
            parts.append(f"{name} (sha256 {card.sha256[:12]})")
        except ModelError:
            parts.append(name)
    return f"camtrap {__version__}: " + " + ".join(parts)


def export(source: Source, out: Path, opts: Options, *,
           detector: DetectorConfig | None = None, unit_id: str = "", validate: bool = True,
           now: float | None = None) -> dict[str, Any]:
    """Write the package of ``source`` (:mod:`edge_app.tools.cdp_sources`) into ``out``;
    returns a summary (counts, ``problems`` found by the validation).

    Raises:
        ValueError: no deployment, or ``out`` is not empty.
        OSError: a file could not be read or written.
    """
    from edge_app.tools import cdp_build as b
    from edge_app.tools.cdp_validate import PROFILE_URL, TABLES, schema_url
    from edge_app.tools.cdp_validate import validate as check

    now = time.time() if now is None else now
    detector = detector or DetectorConfig()
    deployments, events = source.deployments, source.events
    units = sorted(set(source.units.values())) or [unit_id or "camtrap"]
    unit = units[0] if len(units) == 1 else "station"
    if not deployments:
        raise ValueError("no deployment recorded (camtrap deployment start)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    t = b.build_tables(deployments, events, units=source.units, unit=unit, now=now,
                       classified_by=classified_by(detector),
                       precision=opts.coordinate_precision)
    exported = {m["filePath"] for m in t.media}
    out.mkdir(parents=True, exist_ok=True)
    for src, pkg in source.files:
        if pkg in exported:
            (out / pkg).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / pkg)
    for name, fields, rows in (("deployments", b.DEPLOYMENT_FIELDS, t.deployments),
                               ("media", b.MEDIA_FIELDS, t.media),
                               ("observations", b.OBSERVATION_FIELDS, t.observations)):
        _write_csv(out / f"{name}.csv", fields, rows)
    people = opts.contributors or tuple(
        (n, "contributor") for n in dict.fromkeys(d.setup_by for d in deployments if d.setup_by))
    descriptor: dict[str, Any] = {
        "resources": [{"name": n, "path": f"{n}.csv", "profile": "tabular-data-resource",
                       "format": "csv", "mediatype": "text/csv", "encoding": "utf-8",
                       "schema": schema_url(n)} for n in TABLES],
        "profile": PROFILE_URL,
        "name": re.sub(r"[^a-z0-9._-]+", "-", f"camtrap-{unit}".lower()),
        "created": b.iso(now),
        "title": opts.title or f"camtrap unit {unit}",
        "contributors": [{"title": n, "role": r} for n, r in people]
        or [{"title": f"camtrap unit {unit}", "role": "contributor"}],
        "project": {"title": opts.title or f"camtrap unit {unit}",
                    "samplingDesign": opts.sampling_design,
                    "captureMethod": ["activityDetection"], "individualAnimals": False,
                    "observationLevel": ["media", "event"]},
        "spatial": b.spatial(t.points),
        "temporal": {"start": b.iso(min(t.times))[:10], "end": b.iso(max(t.times))[:10]},
        "taxonomic": b.taxonomic(t.species),
        "licenses": [{"name": opts.data_license, "scope": "data"},
                     {"name": opts.media_license, "scope": "media"}],
        "sources": [{"title": "camtrap", "version": __version__}],
    }
    if opts.coordinate_precision:
        descriptor["coordinatePrecision"] = opts.coordinate_precision
    (out / "datapackage.json").write_text(json.dumps(descriptor, indent=2, ensure_ascii=False)
                                          + "\n", encoding="utf-8")
    problems = check(out) if validate else []
    return {"out": str(out), "unit": unit, "deployments": len(t.deployments),
            "media": len(t.media), "observations": len(t.observations),
            "skipped_events": sum(1 for e in events
                                  if e.event.get("deployment_id") not in
                                  {d.id for d in deployments}),
            "species": sorted(t.species), "units": units, "validated": validate,
            "problems": problems}


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k)) for k in fields})


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
