"""Two ``camtrap station`` workers on one mosquitto, splitting the load through an MQTT 5
shared subscription: every event stored exactly once in their one store, and a worker killed
with SIGKILL mid-stream loses nothing (its queued messages arrive when systemd starts it again).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from station_support import event, wait_until

from edge_app.station.store import DB_NAME

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.broker
N = 300


def config(tmp: Path, name: str, port: int) -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(f"""
[station]
store = "{tmp / 'store'}"
timezone = "Asia/Vladivostok"
[mqtt]
broker = "127.0.0.1:{port}"
client_id = "{name}"
shared_group = "stations"
lorawan = false
[web]
enabled = false
""")
    return p


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", "edge_app", "-v", "station", "--config",
                                 str(cfg)], stdout=f, stderr=subprocess.STDOUT, cwd=REPO)


def stored(tmp: Path) -> list[tuple[str, int]]:
    db = tmp / "store" / DB_NAME
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [(str(r[0]), int(r[1])) for r in con.execute("SELECT id, copies FROM events")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def received(log: Path) -> list[int]:
    """Event messages each stop of a worker reported (one number per clean stop)."""
    return [int(line.split("this worker received ")[1].split()[0])
            for line in log.read_text(errors="replace").splitlines()
            if "this worker received" in line]


def test_two_workers_store_every_event_once_and_a_killed_one_loses_nothing(
        tmp_path: Path, broker: object) -> None:
    port = broker.port  # type: ignore[attr-defined]
    logs = {n: tmp_path / f"{n}.log" for n in ("w1", "w2")}
    procs = {n: start(config(tmp_path, n, port), logs[n]) for n in ("w1", "w2")}
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="trap-sim", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for n in ("w1", "w2"):
            wait_until(lambda n=n: "connected to" in logs[n].read_text(errors="replace"), 30,
                       f"{n} connected")
        time.sleep(0.5)  # the SUBSCRIBE follows the CONNACK log line
        units = ("A-1", "B-2", "C-3")
        sent = []
        for i in range(N):
            unit = units[i % 3]
            seq = i // 3 + 1
            sent.append(pub.publish(f"camtrap/{unit}/event",
                                    json.dumps(event(unit, seq)), qos=1))
            if i == N // 2:  # mid-stream, once both have stored some: a power cut on w2
                for info in sent:
                    info.wait_for_publish(10)
                wait_until(lambda: len(stored(tmp_path)) >= N // 3, 30, "the first third")
                os.kill(procs["w2"].pid, signal.SIGKILL)
                procs["w2"].wait(10)
        for info in sent:
            info.wait_for_publish(10)
        time.sleep(1.0)
        procs["w2"] = start(config(tmp_path, "w2", port), logs["w2"])  # systemd restarts it
        wait_until(lambda: len(stored(tmp_path)) == N, 60, f"all {N} events stored")
        rows = stored(tmp_path)
        assert sorted(i for i, _ in rows) == sorted(f"{u}-{s}" for u in units
                                                     for s in range(1, N // 3 + 1))
        assert len(rows) == len({i for i, _ in rows})  # once each
    finally:
        pub.loop_stop()
        pub.disconnect()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(20)
        for n, f in logs.items():  # shown by pytest only when the test fails
            print(f"--- {n}.log ---\n" + "\n".join(
                line for line in f.read_text(errors="replace").splitlines()
                if " DEBUG " not in line)[-3000:])
    counts = {n: received(logs[n]) for n in logs}
    assert len(counts["w1"]) == 1
    assert counts["w1"][0] > 0
    assert len(counts["w2"]) == 1  # the run after the restart (the killed one said nothing)
    assert counts["w2"][0] > 0  # its share queued while it was down, and what it had not
    # The load was split: worker 1 did not get everything (worker 2's share before the kill,
    # and its queued share after the restart, went to worker 2).
    assert counts["w1"][0] < N
