"""The ``camtrap`` command.

Exit codes are a contract: 0 ok, 1 runtime failure (e.g. an image failed in ``detect``, a
stage gave up), 2 bad usage or bad configuration (the message names the key).
Heavy modules are imported inside each handler so ``camtrap check-config`` stays fast and
works on a machine without the model runtime.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_app import __version__
from edge_app.core.errors import ConfigError, ModelError
from edge_app.core.models_dir import SEARCH_HELP

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def _setup_logging(verbose: int, quiet: bool = False) -> None:
    """Commands that print results are quiet (warnings only) unless -v/-vv asks for more."""
    if verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    else:
        level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_check_config(args: argparse.Namespace) -> int:
    """``run`` without the running: the same :func:`edge_app.trap.preflight.check`.

    ``--schema-only`` is for a config being prepared on a laptop for another machine, where
    the unit's files (certificates, models, storage) are not there to check.
    """
    from edge_app.core import config

    if args.explain:
        print("\n".join(config.explain()))
        return EXIT_OK
    if not args.file:
        print("check-config: give a FILE (or --explain)", file=sys.stderr)
        return EXIT_USAGE
    cfg = config.load(args.file)
    what = f"unit {cfg.unit.id}, backend {cfg.hardware.backend}"
    if args.schema_only:
        print(f"{args.file}: ok ({what}; schema only: files, models and storage not checked)")
        return EXIT_OK
    from edge_app.trap.preflight import check

    ready = check(cfg, args.models, load_models=True)
    for note in ready.notes:
        print(f"{args.file}: note: {note}", file=sys.stderr)
    print(f"{args.file}: ok ({what}, models {ready.models_dir})")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_app.core import config

    cfg = config.load(args.config)  # before the heavy imports: a bad config fails fast
    from edge_app.trap.daemon import run_daemon

    return run_daemon(cfg, models=args.models)  # checks the machine first (trap/preflight)


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_app.tools.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            seconds=args.seconds,
            images=args.images,
            models=args.models,
            as_json=args.json,
            every_s=args.every,
            unit=args.unit,
            synthetic=args.synthetic,
        )
    )


def _cmd_detect(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edge_app.core.config import DetectorConfig
    from edge_app.core.models_dir import resolve_models_dir
    from edge_app.tools.batch import run_detect

    models_dir = resolve_models_dir(args.models, "")
    md = Path(args.md_json) if args.md_json else None
    if md is not None and not md.parent.is_dir():
        print(f"detect: folder of --md-json {md} does not exist", file=sys.stderr)
        return EXIT_USAGE
    det = DetectorConfig()
    if args.detector:
        det = replace(det, detector=args.detector)
    if args.classifier is not None:
        det = replace(det, classifier=args.classifier)
    return run_detect(args.paths, models_dir, det, args.json, sys.stdout, md_json=md)


def _cmd_alerts(args: argparse.Namespace) -> int:
    from edge_app.station.alerts import AlertsOptions, run_alerts

    opts = AlertsOptions(ca_file=args.ca_file, username=args.username,
                         password_file=args.password_file, store_dir=args.store,
                         receipts=not args.no_receipts, include_keep=args.keep,
                         lorawan=not args.no_lorawan, lorawan_devices=args.lorawan_devices,
                         tz=args.tz, fleet_file=args.fleet)
    return run_alerts(args.broker, args.json, sys.stdout, prefix=args.prefix,
                      client_id=args.client_id, options=opts)


def _cmd_outbox(args: argparse.Namespace) -> int:
    from edge_app.core import config
    from edge_app.trap.store.cli import outbox_command

    cfg = config.load(args.config)
    return outbox_command(cfg, args.action, sys.stdout, as_json=args.json, limit=args.limit,
                          states=args.state, kinds=args.kind, older_than_s=args.older_than)


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports ``module`` only when its command runs (keeps start-up cheap)."""

    def handler(args: argparse.Namespace) -> int:
        rc: int = getattr(importlib.import_module(module), func)(args)
        return rc

    return handler


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camtrap", description="Edge software for camera traps.")
    p.add_argument("--version", action="version", version=f"camtrap {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="a whole simulated trap, broker and ranger receiver")
    d.add_argument("--seconds", type=float, default=25.0, help="how long the trap runs")
    d.add_argument("--images", help="folder of JPEGs to replay (default: the shared "
                   "camera-trap photos in ../shared when present)")
    d.add_argument("--synthetic", action="store_true",
                   help="replay generated scenes instead of photos")
    d.add_argument("--models", help=SEARCH_HELP)
    d.add_argument("--every", type=float, default=1.5, help="seconds between simulated visits")
    d.add_argument("--unit", default="DEMO-001", help="unit id")
    d.add_argument("--json", action="store_true", help="event JSON per line, summary last")
    d.set_defaults(func=_cmd_demo, quiet=True)

    r = sub.add_parser("run", help="the trap daemon")
    r.add_argument("--config", required=True, help="TOML config file")
    r.add_argument("--models", help=SEARCH_HELP)
    r.set_defaults(func=_cmd_run, quiet=False)

    c = sub.add_parser("check-config", help="validate a config file (exit 2 if bad)")
    c.add_argument("file", nargs="?")
    c.add_argument("--explain", action="store_true", help="list every key with default and doc")
    c.add_argument("--models", help=SEARCH_HELP + " (as for run)")
    c.add_argument("--schema-only", action="store_true",
                   help="check the file alone, not this machine (a config for another unit)")
    c.set_defaults(func=_cmd_check_config, quiet=True)

    t = sub.add_parser("detect", help="run detection on image files or folders")
    t.add_argument("paths", nargs="+", metavar="PATH")
    t.add_argument("--models", help=SEARCH_HELP)
    t.add_argument("--json", action="store_true", help="one JSON object per image")
    t.add_argument("--md-json", metavar="OUT",
                   help="also write MegaDetector batch output (format 1.6) to OUT")
    t.add_argument("--detector", metavar="CARD",
                   help="detector card (default: the config default, yolov8n_coco_int8_640)")
    t.add_argument("--classifier", metavar="CARD", default=None,
                   help="crop classifier card, '' for none (default: the config default)")
    t.set_defaults(func=_cmd_detect, quiet=True)

    a = sub.add_parser("alerts", help="ranger side: print alerts as they arrive")
    a.add_argument("--broker", required=True, metavar="HOST:PORT")
    a.add_argument("--prefix", default="camtrap", help="topic prefix")
    a.add_argument("--json", action="store_true", help="event JSON per line")
    a.add_argument("--store", metavar="DIR",
                   help="persist events and media in DIR (receipts are sent after storing)")
    a.add_argument("--ca-file", help="CA certificate of the broker (enables TLS)")
    a.add_argument("--username", help="MQTT user name")
    a.add_argument("--password-file", help="file with the MQTT password (mode 0600)")
    a.add_argument("--client-id", help="fixed MQTT client id (default: per host and user)")
    a.add_argument("--no-receipts", action="store_true",
                   help="do not confirm received events to the traps")
    a.add_argument("--keep", action="store_true", help="also print non-alert events")
    a.add_argument("--lorawan-devices", metavar="FILE",
                   help="the fleet's LoRaWAN devices: TOML mapping DevEUI → unit (uplinks "
                   "of other devices are counted as unknown, never shown as a unit)")
    a.add_argument("--no-lorawan", action="store_true",
                   help="do not subscribe to ChirpStack/TTN uplinks")
    a.add_argument("--tz", default="local", metavar="ZONE",
                   help="show times in ZONE (default: this machine's; e.g. Asia/Vladivostok, "
                   "UTC)")
    a.add_argument("--fleet", metavar="CSV",
                   help="the fleet file: site names next to unit ids")
    a.set_defaults(func=_cmd_alerts, quiet=True)

    o = sub.add_parser("outbox", help="inspect the durable outbox")
    o.add_argument("action", choices=["ls", "stats", "purge"])
    o.add_argument("--config", required=True, help="TOML config file (for storage.root)")
    o.add_argument("--json", action="store_true")
    o.add_argument("--state", action="append", metavar="STATE",
                   choices=["ready", "inflight", "acked-by-broker", "sent", "skipped", "dead"],
                   help="ls: only rows in this state / purge: delete rows in this state "
                   "(repeatable; purge default: sent)")
    o.add_argument("--kind", action="append", metavar="KIND",
                   choices=["alert", "status", "event", "thumb", "image"],
                   help="ls: only rows of this kind (repeatable)")
    o.add_argument("--limit", type=int, default=50, help="ls: at most this many rows")
    o.add_argument("--older-than", type=float, default=0.0, metavar="SECONDS",
                   help="purge: only rows finished at least this long ago")
    o.set_defaults(func=_cmd_outbox, quiet=True)

    # Area commands register their own options in their own modules (one module per concern):
    # each module has ``add_arguments(parser)`` and ``main(args) -> int``.
    b = sub.add_parser("bench", help="benchmarks that print figures (--json for scripts)")
    bsub = b.add_subparsers(dest="bench", required=True)
    for name, module, text in BENCHES:
        bp = bsub.add_parser(name, help=text)
        importlib.import_module(module).add_arguments(bp)
        bp.set_defaults(func=_lazy(module, "main"), quiet=True)
    for name, module, text in AREA_COMMANDS:
        ap = sub.add_parser(name, help=text)
        importlib.import_module(module).add_arguments(ap)
        ap.set_defaults(func=_lazy(module, "main"), quiet=True)
    return p


# (command, module, help). The modules must import cheaply: heavy imports go inside main().
BENCHES: list[tuple[str, str, str]] = [
    ("detect", "edge_app.tools.bench_detect", "per-stage detection timings vs bare invoke(), RSS "
     "(--live: camera arrays, no JPEG decode)"),
    ("motion", "edge_app.tools.bench_motion", "what the motion gate saves on real bursts"),
    ("outbox", "edge_app.tools.bench_outbox", "durable enqueue, drain with receipts, 10k backlog "
     "(starts its own mosquitto)"),
    ("station", "edge_app.tools.bench_station", "events with thumbnails ingested per second by "
     "camtrap station (starts its own mosquitto), and stored → open page latency"),
    ("lorawan", "edge_app.tools.bench_lorawan", "LoRaWAN alert size, airtime and alerts/hour "
     "per SF, emulated end-to-end latency (starts its own mosquitto)"),
]
AREA_COMMANDS: list[tuple[str, str, str]] = [
    ("eval", "edge_app.tools.evaluate", "precision/recall of the detector on labelled images "
     "(--head, --loso)"),
    ("models", "edge_app.tools.models_cli", "list model cards / verify model files / adapt "
     "a site head"),
    ("label", "edge_app.tools.label", "label a folder of frames in the browser (the CSV models "
     "adapt reads)"),
    ("lorawan", "edge_app.tools.lorawan_cli", "LoRaWAN payload tools: encode/decode alerts, "
     "status and commands"),
    ("power-budget", "edge_app.tools.power_budget", "days on a battery and trigger latency "
     "per power mode (always-on, gated, hybrid), with sources"),
    ("data-budget", "edge_app.tools.data_budget", "MB a month of alerts, images, keepalives and "
     "TLS handshakes per cellular link policy (always, on-demand, windows), with measured "
     "overheads"),
    ("deployment", "edge_app.tools.deployment_cli", "record where and how the unit is set up "
     "(start/end/ls); every event carries the open deployment's id"),
    ("export", "edge_app.tools.camtrap_dp", "a unit's card or the station's store as a "
     "Camtrap DP 1.0.2 package (camtrap-dp OUT), validated offline"),
    ("provision", "edge_app.tools.provision", "write a unit's config, secrets, wheelhouse and "
     "first-boot hook onto a flashed card's boot partition (folder or FAT image), offline"),
    ("doctor", "edge_app.trap.doctor.command", "self-test of a unit: pass / warn / fail per "
     "part (config, models, camera, PIR, MCU, modem, broker, clock, disk, outbox), each with "
     "a fix"),
    ("station", "edge_app.station.command", "the base station: store every unit's events and "
     "media, the rangers' page, notifications (run / check / adduser)"),
    ("walktest", "edge_app.trap.walktest", "aim the camera: each PIR trigger blinks an LED, "
     "prints what the detector saw and saves a thumbnail for a phone"),
]


def main(argv: Sequence[str] | None = None) -> int:
    # A shell script that starts us in the background hands SIGINT down as *ignored*, and
    # Python then installs no KeyboardInterrupt handler: `kill -INT` would do nothing.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, quiet=args.quiet)
    try:
        rc: int = args.func(args)
    except ConfigError as e:
        print(f"camtrap: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModelError as e:
        print(f"camtrap: model error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `camtrap detect --json dir | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    return rc
