"""``camtrap deployment start|end|ls``: the technician's record of a placement, in the catalogue.

Run on the unit (``--config``) or against a card on a laptop (``--storage``) while the trap
runs or not: the catalogue is SQLite in WAL mode, and the store thread reads the deployments
table per event, so the next trigger after ``start`` already carries the new id. The location
defaults to the config's ``unit.location``; a technician with a GPS reading passes
``--lat/--lon``. See :mod:`edge_app.trap.store.deployments` for why this is a record and not
a config section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _when(text: str) -> float:
    """``now`` or an ISO 8601 time with an offset (a field note's time, typed afterwards)."""
    if text == "now":
        return time.time()
    if len(text) > 40:
        raise argparse.ArgumentTypeError("too long")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC offset, e.g. 2026-12-03T09:30:00+10:00")
    return dt.timestamp()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    src = common.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="the unit's config (its storage.root)")
    src.add_argument("--storage", type=Path, help="a storage root, e.g. a card on a laptop")
    common.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser("start", parents=[common], help="open a deployment (ends none: "
                       "end the previous one first)")
    s.add_argument("id", help="deployment id, e.g. KP-ridge3-2026-12")
    s.add_argument("--at", type=_when, default="now", help="start time (default now)")
    s.add_argument("--lat", type=float, help="latitude (default: the config's unit.location)")
    s.add_argument("--lon", type=float, help="longitude (default: the config's unit.location)")
    s.add_argument("--location-name", default=None, help="site name (default: the config's)")
    s.add_argument("--height", type=float, help="camera height above ground, m")
    s.add_argument("--heading", type=int, help="camera heading, degrees from north (0..360)")
    bait = s.add_mutually_exclusive_group()
    bait.add_argument("--bait", dest="bait", action="store_true", default=None,
                      help="bait or lure in view")
    bait.add_argument("--no-bait", dest="bait", action="store_false", help="no bait")
    s.add_argument("--feature", default="", help="what the camera watches (Camtrap DP "
                   "featureType, e.g. trailGame, roadDirt, waterSource)")
    s.add_argument("--habitat", default="", help="free text, e.g. 'oak forest, ridge'")
    s.add_argument("--setup-by", default="", help="who set the unit up")
    s.add_argument("--comments", default="", help="free text")
    e = sub.add_parser("end", parents=[common], help="close the open deployment")
    e.add_argument("id", nargs="?", help="the deployment meant (checked against the open one)")
    e.add_argument("--at", type=_when, default="now", help="end time (default now)")
    sub.add_parser("ls", parents=[common], help="the unit's deployment history")


def main(args: argparse.Namespace) -> int:
    from edge_app.core import config
    from edge_app.core.errors import StorageError
    from edge_app.trap.store.db import db_path, open_db
    from edge_app.trap.store.deployments import Deployment, DeploymentBook, DeploymentError

    cfg = config.load(args.config) if args.config else None
    root = Path(cfg.storage.root) if cfg is not None else Path(args.storage)
    if args.action != "start" and not db_path(root).is_file():
        print(f"camtrap deployment: no catalogue at {db_path(root)}", file=sys.stderr)
        return EXIT_FAIL
    try:
        conn = open_db(db_path(root))
    except StorageError as e:
        print(f"camtrap deployment: {e}", file=sys.stderr)
        return EXIT_FAIL
    book = DeploymentBook(conn)
    try:
        if args.action == "start":
            loc = cfg.unit.location if cfg is not None else None
            lat = args.lat if args.lat is not None else loc.lat if loc is not None else None
            lon = args.lon if args.lon is not None else loc.lon if loc is not None else None
            if lat is None or lon is None:
                print("camtrap deployment: --lat and --lon are needed without --config",
                      file=sys.stderr)
                return EXIT_USAGE
            name = args.location_name if args.location_name is not None else (
                loc.name if loc is not None else "")
            deps = [book.start(Deployment(
                id=args.id, start=args.at, lat=lat, lon=lon, location_name=name,
                camera_height_m=args.height, camera_heading_deg=args.heading, bait=args.bait,
                feature=args.feature, habitat=args.habitat, setup_by=args.setup_by,
                comments=args.comments))]
        elif args.action == "end":
            deps = [book.end(args.at, args.id)]
        else:
            deps = book.all()
    except DeploymentError as e:
        print(f"camtrap deployment: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as e:
        print(f"camtrap deployment: {e}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        conn.close()
    if args.json:
        print(json.dumps([asdict(d) for d in deps], indent=2))
    else:
        for d in deps:
            end = "open" if d.end is None else _fmt(d.end)
            print(f"{d.id}  {_fmt(d.start)} .. {end}  {d.lat:.5f},{d.lon:.5f}  "
                  f"{d.location_name}")
    return EXIT_OK


def _fmt(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
