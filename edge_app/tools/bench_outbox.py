"""``camtrap bench outbox``: how fast alerts go into the durable outbox and out to a receiver.

What is measured, on this machine's disk, against a private mosquitto on a free loopback port
(started and stopped here; plain TCP, no persistence, so the broker is not the bottleneck):

* ``enqueue_per_s``: durable enqueues, each one transaction (catalogue row + outbox row, WAL,
  ``synchronous=FULL``: one fsync), as the store stage does per event;
* ``backlog_10k_drain_s``: those alerts were queued while the trap had no link; seconds from
  the moment the link comes back (the uplink starts and connects) until every one of them is
  confirmed by the receiver's receipt (scaled to 10,000 if ``--backlog`` differs). The broker
  and the receiver stay up, as at a base station; paho's reconnect backoff after a long
  outage (``mqtt.reconnect_max_s``) comes on top in the field;
* ``drain_per_s``: with the link up, a burst of alerts queued at once, per second until every
  one is receipted (QoS 1, receipts on unless ``--no-receipts``);
* ``lost``: alerts queued but never stored by the receiver; ``duplicates``: alerts the receiver
  got more than once (deduplicated by event id).

The receiver is the real one, ``camtrap alerts --store`` in its own process (as at a base
station, and so that it does not share this process's GIL): it stores each event in its own
SQLite file before sending the receipt.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``camtrap bench outbox`` (cheap: no heavy imports here)."""
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--backlog", type=int, default=10_000,
                        help="alerts queued during the outage (default 10000)")
    parser.add_argument("--burst", type=int, default=2_000,
                        help="alerts queued at once for the drain rate (default 2000)")
    parser.add_argument("--no-receipts", action="store_true",
                        help="count a PUBACK as delivery (no end-to-end receipts)")
    parser.add_argument("--max-inflight", type=int, default=0,
                        help="outbox.max_inflight (default: the config default)")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 1 if mosquitto is missing or an alert was lost."""
    from edge_app.sim.broker import find_mosquitto

    exe = find_mosquitto()
    if exe is None:
        print("camtrap bench outbox: mosquitto not found (apt-get install mosquitto)",
              file=sys.stderr)
        return 1
    if args.dir:
        work = Path(args.dir)
        work.mkdir(parents=True, exist_ok=True)
        result = run_bench(exe, work, args)
    else:
        with tempfile.TemporaryDirectory(prefix="camtrap-bench-") as tmp:
            result = run_bench(exe, Path(tmp), args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 1 if result["lost"] else 0


def run_bench(exe: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The three phases of the module docstring; returns the figures."""
    from edge_app.core import config
    from edge_app.sim.broker import PrivateBroker
    from edge_app.station.store import RangerStore
    from edge_app.trap.uplink.mqtt import LinkState, MqttLink

    bdir = work / "broker"
    bdir.mkdir(exist_ok=True)
    broker = PrivateBroker(exe, bdir)
    receipts = not args.no_receipts
    mqtt: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "tls": False,
                            "keepalive_s": 30, "reconnect_min_s": 1.0,
                            "reconnect_max_s": 1.0, "receipts": receipts,
                            "stats_interval_s": 0.0}
    outbox: dict[str, Any] = {"backoff_min_s": 0.5, "backoff_max_s": 5.0,
                              "receipt_timeout_s": 120.0}
    if args.max_inflight:
        outbox["max_inflight"] = args.max_inflight
    cfg = config.parse({"unit": {"id": "BENCH-1"}, "hardware": {"backend": "sim"},
                        "camera": {"source": "synthetic"},
                        "storage": {"root": str(work / "trap"), "min_free_mb": 0.0},
                        "outbox": outbox, "mqtt": mqtt})
    db = Path(cfg.storage.root) / "camtrap.db"
    store_dir = work / "ranger"
    queuer = _Queuer(cfg, db)
    link = MqttLink(cfg, db)
    stop = threading.Event()
    uplink = threading.Thread(target=link.run, args=(stop,), name="uplink", daemon=True)
    receiver: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        receiver = _start_receiver(broker.port, store_dir, receipts)
        t0 = time.perf_counter()
        backlog_ids = queuer.enqueue_each(args.backlog)  # no link: the outage
        enqueue_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        uplink.start()  # the link is back
        queuer.wait_delivered(receipts, timeout_s=300)
        backlog_s = time.perf_counter() - t1

        _wait(lambda: link.state is LinkState.CONNECTED, 10)
        t2 = time.perf_counter()
        burst_ids = queuer.enqueue_batch(args.burst)
        link.wake()
        queuer.wait_delivered(receipts, timeout_s=300)
        drain_s = time.perf_counter() - t2
        if not receipts:  # PUBACKs came back; give the receiver time to store the last ones
            _wait(lambda: _stored(store_dir) >= args.backlog + args.burst + 1, 60)
    finally:
        stop.set()
        link.wake()
        if uplink.is_alive():
            uplink.join(10)
        if receiver is not None:
            _stop(receiver)
        broker.stop()
        queuer.close()
    got = RangerStore(store_dir)
    try:
        stored = set(got.event_ids())
        duplicates = got.duplicates()
    finally:
        got.close()
    wanted = set(backlog_ids) | set(burst_ids)
    return {
        "enqueue_per_s": round(args.backlog / enqueue_s, 1),
        "drain_per_s": round(args.burst / drain_s, 1),
        "backlog_10k_drain_s": round(backlog_s * 10_000 / max(1, args.backlog), 2),
        "lost": len(wanted - stored),
        "duplicates": duplicates,
        "backlog": args.backlog,
        "burst": args.burst,
        "receipts": receipts,
        "max_inflight": cfg.outbox.max_inflight,
        "link_connects": link.stats().connects,
    }


def _start_receiver(port: int, store_dir: Path, receipts: bool) -> subprocess.Popen[bytes]:
    """``camtrap alerts --store`` in its own process, returned once it is subscribed.

    Subscribed is proven, not guessed: a probe event is published until the receiver has
    stored it.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cmd = [sys.executable, "-m", "edge_app", "alerts", "--broker", f"127.0.0.1:{port}",
           "--store", str(store_dir), "--client-id", "bench-ranger"]
    if not receipts:
        cmd.append("--no-receipts")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe",
                        protocol=mqtt.MQTTv5)
    probe.connect("127.0.0.1", port)
    probe.loop_start()
    try:
        deadline = time.monotonic() + 20
        while _stored(store_dir) == 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                _stop(proc)
                raise TimeoutError("bench: the receiver did not start")
            probe.publish("camtrap/PROBE/event", b'{"id": "PROBE-1", "outcome": "alert"}',
                          qos=1)
            time.sleep(0.2)
    finally:
        probe.disconnect()
        probe.loop_stop()
    return proc


def _stored(store_dir: Path) -> int:
    import sqlite3

    db = store_dir / "ranger.db"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return int(con.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # camtrap alerts finishes its queue and disconnects
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _Queuer:
    """Writes alerts the way the store stage does: catalogue row + outbox row, one commit."""

    def __init__(self, cfg: Any, db: Path) -> None:
        from edge_app.core.clock import SystemClock
        from edge_app.trap.store.catalog import Catalog
        from edge_app.trap.store.db import open_db
        from edge_app.trap.store.outbox import Outbox

        self.cfg = cfg
        self.conn = open_db(db)
        self.catalog = Catalog(self.conn)
        self.outbox = Outbox(self.conn, SystemClock(), cfg.outbox)

    def _one(self) -> str:
        from edge_app.trap.store.catalog import EventRecord

        unit = self.cfg.unit.id
        seq = self.catalog.allocate_seq(unit)
        event_id = f"{unit}-{seq}"
        now = time.time()
        event = {"id": event_id, "unit": unit, "seq": seq, "outcome": "alert",
                 "label": "animal", "species": "leopard", "score": 0.9, "detections": [],
                 "frames": 3, "media": [], "battery_v": None, "temp_c": None}
        payload = json.dumps(event, separators=(",", ":"))
        self.catalog.insert(EventRecord(
            id=event_id, unit=unit, seq=seq, ts=now, outcome="alert", label="animal",
            species="leopard", score=0.9, audit=False, reason="bench", event_json=payload,
            image_path=None, thumb_path=None, created=now))
        self.outbox.enqueue("alert", payload=payload.encode(), event_id=event_id,
                            now=now)
        return event_id

    def enqueue_each(self, n: int) -> list[str]:
        """``n`` alerts, one durable transaction each."""
        from edge_app.trap.store.db import transaction

        ids = []
        for _ in range(n):
            with transaction(self.conn):
                ids.append(self._one())
        return ids

    def enqueue_batch(self, n: int) -> list[str]:
        """``n`` alerts in one transaction (the drain, not the enqueue, is measured)."""
        from edge_app.trap.store.db import transaction

        with transaction(self.conn):
            return [self._one() for _ in range(n)]

    def wait_delivered(self, receipts: bool, timeout_s: float) -> None:
        states = "('ready', 'inflight', 'acked-by-broker')" if receipts else \
            "('ready', 'inflight')"
        _wait(lambda: self.conn.execute(
            f"SELECT COUNT(*) FROM outbox WHERE state IN {states}"  # noqa: S608 - constant
        ).fetchone()[0] == 0, timeout_s, poll_s=0.01)

    def close(self) -> None:
        self.conn.close()


def _wait(cond: Any, timeout_s: float, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: not done after {timeout_s} s")
        time.sleep(poll_s)
