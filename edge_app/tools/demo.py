"""``camtrap demo``: a whole trap, a private broker and a ranger receiver in one process.

Everything on the data path is the real code (gpiozero MotionSensor on mock pins, the LiteRT
interpreter on the real models, SQLite outbox, paho over MQTT 5 to a real mosquitto); only the
world outside is simulated: an animal walks past every ``--every`` seconds, which advances the
replay camera to the next photo and pulses the PIR pin.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_app.core import config
from edge_app.core.clock import SystemClock
from edge_app.core.models_dir import resolve_models_dir, shared_data_dir
from edge_app.sim.broker import PrivateBroker, find_mosquitto
from edge_app.station.receiver import Receiver, format_alert
from edge_app.trap.daemon import App

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    seconds: float = 25.0
    images: str | None = None
    models: str | None = None
    as_json: bool = False
    every_s: float = 1.5
    unit: str = "DEMO-001"
    synthetic: bool = False


def _demo_config(opts: DemoOptions, root: Path, port: int, mqtt: bool) -> config.Config:
    camera: dict[str, Any] = {"source": "synthetic", "seed": 7}
    if opts.images:
        camera = {"source": "replay", "images_dir": opts.images, "order": "sorted"}
    camera.update(burst_frames=2, burst_interval_s=0.2, pre_trigger_frames=1)
    return config.parse({
        "unit": {"id": opts.unit, "location": {"name": "demo"}},
        "hardware": {"backend": "sim"},
        # Hold-off longer than the PIR pulse (min(1 s, every/2)) so one visit is one trigger.
        "trigger": {"holdoff_s": opts.every_s * 0.8, "sim_every_s": opts.every_s},
        "camera": camera,
        # The demo alerts on every animal so a newcomer sees the path work; the field default
        # alerts on leopard, tiger, person and vehicle only (ARCHITECTURE §4).
        "policy": {"alert_on": ["animal", "person", "vehicle", "leopard", "tiger",
                                "other_big_cat"], "audit_every": 0},
        "storage": {"root": str(root / "data")},
        "outbox": {"backoff_min_s": 0.5, "backoff_max_s": 5.0},
        "mqtt": {"enabled": mqtt, "host": "127.0.0.1", "port": port, "tls": False,
                 "keepalive_s": 10, "image_min_link_s": 0.0},
    })


def _latency_ms(event: dict[str, Any]) -> float | None:
    try:
        ts = datetime.fromisoformat(str(event["ts"])).timestamp()
    except (KeyError, ValueError):
        return None
    return (time.time() - ts) * 1000.0


def _with_defaults(opts: DemoOptions) -> DemoOptions:
    """Fill --images from the shared pack so a bare ``camtrap demo`` shows alerts.

    The models are found like every other command's (:func:`resolve_models_dir`, whose last
    place is the same shared pack).
    """
    shared = shared_data_dir()
    if shared is None or opts.images is not None:
        return opts
    if (shared / "images" / "cameratrapai").is_dir():
        return replace(opts, images=str(shared / "images" / "cameratrapai"))
    return opts


@dataclass
class DemoStation:
    """``camtrap station`` in the demo's process: store, page (on a free loopback port, with a
    one-off admin account) and the receiver, so a newcomer sees alerts arrive on the page."""

    station: Any
    server: Any
    thread: threading.Thread
    url: str
    user: str
    password: str

    @classmethod
    def start(cls, root: Path, port: int,
              on_alert: Any) -> DemoStation | None:
        """None when the station's extra (Starlette, uvicorn, …) is not installed."""
        try:
            from edge_app.station import config as station_config
            from edge_app.station.service import Station
            from edge_app.station.store import DB_NAME
            from edge_app.station.web.accounts import add_user
        except ImportError as e:
            logger.warning("demo: no station page (%s): pip install 'camtrap[station]'", e)
            return None
        from edge_app.sim.broker import free_port

        web_port = free_port()
        cfg = station_config.parse({
            "station": {"store": str(root / "station"), "timezone": _local_zone()},
            "mqtt": {"broker": f"127.0.0.1:{port}", "client_id": f"camtrap-demo-ranger-{port}",
                     "lorawan": False},
            "web": {"host": "127.0.0.1", "port": web_port,
                    "secret_file": str(root / "web-secret")},
        }, root)
        station = Station(cfg, on_alert=on_alert)
        password = secrets.token_urlsafe(9)
        (root / "station").mkdir(parents=True, exist_ok=True)
        add_user(root / "station" / DB_NAME, "demo", password, "admin")
        station.start()
        server = station.web_server()
        thread = threading.Thread(target=server.run, name="demo-page", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15.0
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        if not station.receiver.wait_connected(10):
            logger.warning("demo: the station did not connect to the broker in 10 s")
        return cls(station, server, thread, f"http://127.0.0.1:{web_port}/", "demo", password)

    def stop(self) -> None:
        self.server.handle_exit(signal.SIGTERM, None)  # also ends the open pages' streams
        self.thread.join(10)
        self.station.stop()


def _local_zone() -> str:
    """This machine's IANA zone (the page shows local time), UTC when it cannot tell."""
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return "UTC"
    _, sep, zone = target.partition("zoneinfo/")
    try:
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        return "UTC"
    return zone if sep else "UTC"


def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo and print alerts and a summary; returns the exit code."""
    if not opts.synthetic:
        opts = _with_defaults(opts)
    if opts.images and not Path(opts.images).is_dir():
        print(f"camtrap demo: --images {opts.images}: not a folder", file=sys.stderr)
        return 2
    models_dir = resolve_models_dir(opts.models, "")
    exe = find_mosquitto()
    with tempfile.TemporaryDirectory(prefix="camtrap-demo-") as tmp:
        root = Path(tmp)
        broker: PrivateBroker | None = None
        if exe is None:
            print("camtrap demo: mosquitto not found (apt-get install mosquitto): running "
                  "queue-only, alerts stay in the outbox", file=sys.stderr)
        else:
            broker = PrivateBroker(exe, root)
            broker.start()
        port = broker.port if broker else 1
        cfg = _demo_config(opts, root, port, mqtt=broker is not None)
        received: list[dict[str, Any]] = []
        latencies: list[float] = []
        lock = threading.Lock()

        def on_alert(event: dict[str, Any]) -> None:
            lat = _latency_ms(event)
            with lock:
                received.append(event)
                if lat is not None:
                    latencies.append(lat)
                line = json.dumps(event, separators=(",", ":")) if opts.as_json else (
                    format_alert(event))
                print(line, file=out, flush=True)

        receiver = None
        station: DemoStation | None = None
        if broker is not None:
            station = DemoStation.start(root, broker.port, on_alert)
            if station is None:  # the station extra is not installed: the terminal receiver
                receiver = Receiver("127.0.0.1", broker.port, on_alert=on_alert,
                                    client_id=f"camtrap-demo-ranger-{broker.port}")
                receiver.start()
        app = App(cfg, models_dir, SystemClock())
        if not opts.as_json:
            src = opts.images or ("synthetic scenes (the stand-in COCO detector sees no "
                                  "animal in them: expect no alerts; try --images DIR)")
            print(f"camtrap demo: unit {opts.unit}, camera replaying {src}, broker "
                  f"{broker.address if broker else 'none'}; running {opts.seconds:.0f} s",
                  file=out, flush=True)
            if station is not None:
                print(f"camtrap demo: the station's page: {station.url} (log in as "
                      f"{station.user} / {station.password}; it stays up while the demo runs: "
                      "--seconds to keep it longer)", file=out, flush=True)
        app.start()
        try:
            app.supervisor.done.wait(opts.seconds)
            # Stop the simulated animals, then let the pipeline and the outbox drain.
            app.stop_visits()
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and not app.supervisor.done.is_set():
                idle = (app.triggers.qsize() == 0 and app.bursts.qsize() == 0
                        and app.decided.qsize() == 0 and app.is_idle())
                if idle and (broker is None or app.outbox_depth() == 0):
                    break
                time.sleep(0.1)
            if receiver is not None:
                receiver.wait_quiet(1.0)
            if station is not None:
                station.station.receiver.wait_quiet(1.0)
        finally:
            app.stop(5.0)
            if receiver is not None:
                receiver.stop()
            if station is not None:
                station.stop()
            if broker is not None:
                broker.stop()
        c = app.counters
        summary = {
            "triggers": c.triggers,
            "frames": c.frames,
            "empty": c.empty,
            "kept": c.kept,
            "alerts_sent": app.link.sent_count if app.link else 0,
            "alerts_received": len(received),
            "outbox_depth": app.outbox_depth(),
            "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
            "station_url": station.url if station is not None else None,
        }
        if opts.as_json:
            print(json.dumps({"summary": summary}), file=out, flush=True)
        else:
            print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()), file=out,
                  flush=True)
    return 1 if app.supervisor.failed else 0
