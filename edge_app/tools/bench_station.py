"""``camtrap bench station``: how fast the station takes events in, how soon a page sees one.

What is measured, against a private mosquitto on a free loopback port (started and stopped
here; plain TCP, no persistence, so the broker is not the bottleneck) and the real ``camtrap
station`` in its own process (its own GIL, its own SQLite writes, as on a station server):

* ``ingest_per_s``: ``--events`` events, each with its thumbnail (a real JPEG, one chunk with
  the ``event``/``chunk``/``of``/``sha256`` properties a trap sends), published from ``--units``
  simulated units as fast as the publisher can; per second from the first publish until every
  event row *and* every thumbnail is on the station's disk (fsynced: WAL, ``synchronous=FULL``);
* ``lost``: events published but not stored; ``duplicates``: copies beyond the first (a
  redelivery after a reconnect; 0 on a clean run);
* ``page_latency_ms_p50`` / ``_p95``: with the station's page open in a logged-in session on
  its live stream (server-sent events), ``--samples`` events published one at a time: from
  the moment the station stored each one (its row's ``received`` time, the station's clock,
  which is this machine's) to the moment the stream delivered it here.

The goal the issue sets: ``ingest_per_s`` ≥ 1,000 on this machine, nothing lost.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``camtrap bench station`` (cheap: no heavy imports here)."""
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--events", type=int, default=5_000, help="events to ingest "
                        "(default 5000)")
    parser.add_argument("--units", type=int, default=20, help="simulated units (default 20)")
    parser.add_argument("--publishers", type=int, default=2,
                        help="processes the simulated units publish from (default 2)")
    parser.add_argument("--samples", type=int, default=50,
                        help="events timed to the open page (default 50; 0: skip)")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 1 if mosquitto is missing or an event was lost."""
    from edge_app.sim.broker import find_mosquitto

    exe = find_mosquitto()
    if exe is None:
        print("camtrap bench station: mosquitto not found (apt-get install mosquitto)",
              file=sys.stderr)
        return 1
    if args.dir:
        work = Path(args.dir)
        work.mkdir(parents=True, exist_ok=True)
        out = run_bench(exe, work, args)
    else:
        with tempfile.TemporaryDirectory(prefix="camtrap-bench-station-") as tmp:
            out = run_bench(exe, Path(tmp), args)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"ingest: {out['events']} events with thumbnails from {out['units']} units "
              f"({out['publishers']} publisher processes) in "
              f"{out['ingest_s']:.2f} s = {out['ingest_per_s']:.0f}/s; lost {out['lost']}, "
              f"duplicates {out['duplicates']}")
        if out["page_latency_ms_p50"] is not None:
            print(f"page: stored → on the open page p50 {out['page_latency_ms_p50']:.1f} ms, "
                  f"p95 {out['page_latency_ms_p95']:.1f} ms ({out['samples']} events)")
    return 1 if out["lost"] else 0


_BENCH_PASSWORD = secrets.token_urlsafe(12)


def _thumb() -> bytes:
    from PIL import Image

    img = Image.new("RGB", (320, 180), (40, 90, 60))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _event(unit: str, seq: int, thumb: bytes) -> dict[str, Any]:
    return {"id": f"{unit}-{seq}", "unit": unit, "seq": seq,
            "ts": "2026-12-03T03:12:00.000+10:00", "time_synced": True, "outcome": "alert",
            "label": "animal", "species": "leopard", "score": 0.9, "detections": [],
            "frames": 3, "battery_v": 3.9, "temp_c": -12.0,
            "media": [{"id": f"{unit}-{seq}-thumb", "kind": "thumb", "bytes": len(thumb),
                       "sha256": hashlib.sha256(thumb).hexdigest()}]}


def _config(work: Path, port: int, web_port: int | None, secret: Path) -> Path:
    web = (f'[web]\nhost = "127.0.0.1"\nport = {web_port}\nsecret_file = "{secret}"\n'
           if web_port is not None else "[web]\nenabled = false\n")
    p = work / "station.toml"
    p.write_text(f'[station]\nstore = "{work / "store"}"\ntimezone = "Asia/Vladivostok"\n'
                 f'[mqtt]\nbroker = "127.0.0.1:{port}"\nclient_id = "bench-station"\n'
                 f"lorawan = false\n{web}")
    return p


def _counts(store: Path) -> tuple[int, int, int]:
    """(events, thumbnails, duplicate copies) on the station's disk."""
    db = store / "ranger.db"
    if not db.exists():
        return 0, 0, 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        e, d = con.execute("SELECT COUNT(*), COALESCE(SUM(copies - 1), 0) FROM events"
                           ).fetchone()
        m = con.execute("SELECT COUNT(*) FROM media").fetchone()[0]
        return int(e), int(m), int(d)
    except sqlite3.OperationalError:
        return 0, 0, 0
    finally:
        con.close()


def run_bench(exe: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Ingest, then (with ``--samples``) page latency; returns the figures."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge_app.sim.broker import PrivateBroker, free_port

    bdir = work / "broker"
    bdir.mkdir(exist_ok=True)
    # The shipped base station's queue limits (deploy/mosquitto/mosquitto.conf): mosquitto's
    # default of 1000 queued messages per client would drop QoS 1 messages of a burst here.
    broker = PrivateBroker(exe, bdir, extra=("max_queued_messages 100000",
                                             "max_inflight_messages 50"))
    web_port = free_port() if args.samples else None
    secret = work / "web-secret"
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    thumb = _thumb()
    sha = hashlib.sha256(thumb).hexdigest()
    station: subprocess.Popen[bytes] | None = None
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-traps",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    latencies: list[float] = []
    try:
        broker.start()
        cfg = _config(work, broker.port, web_port, secret)
        if web_port is not None:  # an account for the page's stream
            from edge_app.station.web.accounts import add_user

            (work / "store").mkdir(parents=True, exist_ok=True)
            add_user(work / "store" / "ranger.db", "bench", _BENCH_PASSWORD, "ranger")
        log = (work / "station.log").open("ab")
        station = subprocess.Popen([sys.executable, "-m", "edge_app", "-v", "station",
                                    "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: b"connected to" in (work / "station.log").read_bytes(), 30)
        if web_port is not None:
            _wait(lambda: b"the page is at" in (work / "station.log").read_bytes(), 30)
        time.sleep(0.3)  # its SUBSCRIBE follows the CONNACK
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        units = [f"B-{i:03d}" for i in range(args.units)]
        # The traps are many devices: one Python publisher tops out near 1,000 events with
        # thumbnails a second here, so the units are spread over publisher processes and
        # the station, not the simulated fleet, is what is measured.
        ctx = multiprocessing.get_context("spawn")
        shares = [units[i::args.publishers] for i in range(args.publishers)]
        per_unit = args.events // len(units)
        procs = [ctx.Process(target=_publish_share, args=(broker.port, share, per_unit),
                             daemon=True) for share in shares if share]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join(300)
        _wait(lambda: _counts(work / "store")[:2] >= (per_unit * len(units),) * 2, 300)
        ingest_s = time.perf_counter() - t0
        if web_port is not None:
            latencies = _page_latency(work, web_port, pub, units[0], per_unit, args.samples,
                                      thumb, sha, Properties, PacketTypes)
    finally:
        pub.loop_stop()
        pub.disconnect()
        if station is not None:
            station.send_signal(signal.SIGTERM)
            try:
                station.wait(20)
            except subprocess.TimeoutExpired:
                station.kill()
        broker.stop()
    events, thumbs, dups = _counts(work / "store")
    events_sent = (args.events // args.units) * args.units
    published = events_sent + (args.samples if web_port is not None else 0)
    lat = sorted(latencies)
    return {
        "events": events_sent, "units": args.units, "publishers": args.publishers,
        "ingest_s": round(ingest_s, 3), "ingest_per_s": round(events_sent / ingest_s, 1),
        "lost": max(0, published - events) + max(0, published - thumbs),
        "duplicates": dups, "samples": len(lat),
        "page_latency_ms_p50": round(_pct(lat, 50), 2) if lat else None,
        "page_latency_ms_p95": round(_pct(lat, 95), 2) if lat else None,
    }


def _publish(pub: Any, unit: str, seq: int, thumb: bytes, sha: str, properties: Any,
             packet_types: Any) -> list[Any]:
    ev = _event(unit, seq, thumb)
    props = properties(packet_types.PUBLISH)
    props.UserProperty = [("event", ev["id"]), ("chunk", "0"), ("of", "1"), ("sha256", sha)]
    return [pub.publish(f"camtrap/{unit}/event", json.dumps(ev), qos=1),
            pub.publish(f"camtrap/{unit}/media/{ev['id']}-thumb/0", thumb, qos=1,
                        properties=props)]


def _publish_share(port: int, units: list[str], per_unit: int) -> None:
    """One publisher process: its units' events and thumbnails, interleaved, QoS 1."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    thumb = _thumb()
    sha = hashlib.sha256(thumb).hexdigest()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{units[0]}",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = []
    for seq in range(1, per_unit + 1):
        for unit in units:
            infos.extend(_publish(pub, unit, seq, thumb, sha, Properties, PacketTypes))
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()


def _page_latency(work: Path, port: int, pub: Any, unit: str, start_seq: int, samples: int,
                  thumb: bytes, sha: str, properties: Any, packet_types: Any) -> list[float]:
    """Stored → on the open page, per event (see the module docstring): a logged-in session
    holds the page's live stream open while events are published one at a time."""
    import threading

    import httpx

    from edge_app.station.web.views import dom_id

    arrived: dict[str, float] = {}
    cond = threading.Condition()
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=httpx.Timeout(10.0, read=None))
    token = client.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post("/login", data={"name": "bench", "password": _BENCH_PASSWORD,
                                    "csrf": token})
    if r.status_code not in (200, 303):
        raise RuntimeError(f"bench station: cannot log in ({r.status_code})")
    stop = threading.Event()

    def listen() -> None:
        try:
            with client.stream("GET", "/events") as resp:
                for line in resp.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("data: "):
                        got = time.time()
                        ident = json.loads(line[6:]).get("id")
                        with cond:
                            arrived.setdefault(str(ident), got)
                            cond.notify_all()
        except httpx.HTTPError:
            if not stop.is_set():
                raise

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    time.sleep(0.5)  # the stream is open
    out: list[float] = []
    db = work / "store" / "ranger.db"
    for k in range(samples):
        seq = start_seq + 1000 + k
        for info in _publish(pub, unit, seq, thumb, sha, properties, packet_types):
            info.wait_for_publish(10)
        key = dom_id(unit, f"{unit}-{seq}")
        with cond:
            if not cond.wait_for(lambda key=key: key in arrived, 10):  # type: ignore[misc]
                continue
            seen = arrived[key]
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            stored = con.execute("SELECT received FROM events WHERE unit = ? AND id = ?",
                                 (unit, f"{unit}-{seq}")).fetchone()[0]
        finally:
            con.close()
        out.append((seen - float(stored)) * 1000.0)
    stop.set()
    client.close()
    return out


def _pct(values: list[float], p: float) -> float:
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _wait(cond: Any, timeout_s: float, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench station: gave up after {timeout_s:.0f} s")
        time.sleep(poll_s)
