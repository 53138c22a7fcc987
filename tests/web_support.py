"""Helpers of the station web tests: a real store with real JPEGs, and a real uvicorn.

The "ingest" here is the test thread calling :class:`RangerStore` and ``bus.publish`` the way
the receiver's worker does (``edge_app/station/ingest.py``): store first, then announce.
"""

from __future__ import annotations

import hashlib
import io
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import uvicorn
from PIL import Image
from starlette.applications import Starlette

from edge_app.core.clock import FakeClock
from edge_app.station.store import RangerStore, StoredEvent
from edge_app.station.web.accounts import add_user
from edge_app.station.web.app import StationServer, make_app
from edge_app.station.web.bus import EventBus
from edge_app.station.web.context import UnitInfo, WebContext

VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")
T0 = 1_790_000_000.0
"""The fake clock's start (2026-09-21 14:13:20 UTC)."""
UNITS = {
    "LL-001": UnitInfo("LL-001", "Kedrovaya Pad ridge", 43.10, 131.55, "north"),
    "LL-002": UnitInfo("LL-002", "Barsovy creek", 43.05, 131.62, "north"),
    "LL-003": UnitInfo("LL-003", "Old road", None, None, "south"),
}
PASSWORDS = {"olga": "ranger-pass-1", "ivan": "admin-pass-1"}


def jpeg(photo: Path, width: int) -> bytes:
    """``photo`` scaled to ``width`` pixels wide, as JPEG bytes (a real camera-trap frame)."""
    with Image.open(photo) as im:
        im = im.convert("RGB")
        im.thumbnail((width, width))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=80)
    return out.getvalue()


def event(unit: str, seq: int, ts: float, **over: Any) -> dict[str, Any]:
    """An event JSON as a trap sends it (tests/station_support.py::event, with boxes)."""
    body: dict[str, Any] = {
        "id": f"{unit}-{seq}", "unit": unit, "seq": seq,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts)),
        "time_synced": True, "outcome": "alert", "label": "animal", "species": "leopard",
        "score": 0.91,
        "detections": [
            {"category": "animal", "conf": 0.93, "bbox": [0.20, 0.30, 0.35, 0.40],
             "class": "animal", "species": "leopard", "species_conf": 0.91},
            {"category": "animal", "conf": 0.55, "bbox": [0.65, 0.50, 0.20, 0.25],
             "class": "animal", "species": None, "species_conf": None}],
        "frames": 3, "media": [{"id": f"{unit}-{seq}-thumb", "kind": "thumb"}],
        "battery_v": 3.9, "temp_c": -12.0}
    body.update(over)
    return body


def lora_event(unit: str, seq: int, ts: float) -> dict[str, Any]:
    """An alert as :meth:`LorawanDecoder.alert_event` makes it: no boxes, no media."""
    return {"id": f"{unit}-{seq}", "unit": unit, "seq": seq, "seq16": seq & 0xFFFF,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts)),
            "time_synced": True, "outcome": "alert", "label": "animal", "species": "leopard",
            "score": 0.8, "count": 1, "detections": [], "frames": None, "media": [],
            "battery_v": 3.8, "temp_c": None, "source": "lorawan", "lorawan": {}}


class Station:
    """A store, a web context and an app over it, fed like the receiver feeds them."""

    def __init__(self, folder: Path, photo: Path, public_url: str = "http://127.0.0.1") -> None:
        self.folder = folder
        self.store = RangerStore(folder)
        self.clock = FakeClock(start_wall=T0)
        self.bus = EventBus()
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self.thumb = jpeg(photo, 320)
        self.image = jpeg(photo, 1024)
        self.ctx = WebContext(
            store_dir=folder, tz=VLADIVOSTOK, units=UNITS, bus=self.bus,
            secret_key=b"k" * 32, expected_interval_s=3600.0, boundary=None, tile_url=None,
            clock=self.clock, send_command=self._send, public_url=public_url)
        self.app: Starlette = make_app(self.ctx)
        db_path = folder / "ranger.db"
        add_user(db_path, "olga", PASSWORDS["olga"], "ranger")
        add_user(db_path, "ivan", PASSWORDS["ivan"], "admin")

    def _send(self, unit: str, name: str, body: dict[str, Any]) -> str:
        """A fake command link (records what an admin sent)."""
        self.commands.append((unit, name, body))
        return f"cmd-{len(self.commands)}"

    def add(self, body: dict[str, Any], link: str = "mqtt", thumb: bool = True,
            image: bool = False, publish: bool = True) -> str:
        """Store an event (and its media) as the receiver would, then announce it."""
        unit, event_id = str(body["unit"]), str(body["id"])
        now = self.clock.wall()
        new = self.store.add_events(
            [StoredEvent(event_id, unit, str(body.get("outcome", "alert")), body)], now, link)
        self.store.update_unit(unit, now)
        for kind, want, data in (("thumb", thumb, self.thumb), ("image", image, self.image)):
            if want and link == "mqtt":
                self.store.add_media(unit, f"{event_id}-{kind}", event_id, data,
                                     hashlib.sha256(data).hexdigest(), now)
        if publish:
            self.bus.publish(unit, event_id, link, (unit, event_id) in new)
        return event_id


@contextmanager
def serve(station: Station) -> Iterator[str]:
    """The station's app on a real uvicorn on 127.0.0.1 (a free port), in a thread (as
    ``camtrap station`` runs it: :class:`StationServer`); yields its URL and stops it with
    ``handle_exit``, what SIGTERM does."""
    server = StationServer(uvicorn.Config(station.app, host="127.0.0.1", port=0,
                                          log_level="warning", timeout_graceful_shutdown=5),
                           station.bus)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(15)


class _TileHandler(BaseHTTPRequestHandler):
    """A fake tile server (the station's offline one): a plain PNG for every /z/x/y.png."""

    png = b""
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def tile_server() -> Iterator[tuple[str, list[str]]]:
    """A local tile server; yields its URL template and the paths it was asked for."""
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 220, 190)).save(out, "PNG")
    paths: ClassVar[list[str]] = []
    handler = type("Tiles", (_TileHandler,), {"png": out.getvalue(), "paths": paths})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{{z}}/{{x}}/{{y}}.png", paths
    finally:
        httpd.shutdown()
        httpd.server_close()
