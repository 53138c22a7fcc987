"""Issue 9, inputs 1 and 3 against the real `camtrap run` and mosquitto: poison on the command
and receipt topics (retained too) and a NaN `config/set` leave the trap running, its settings
unchanged, and its alerts flowing, across a restart.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from chaos_support import daemon_config, query, start_daemon, stop_daemon, wait_until

from edge_app.sim.broker import PrivateBroker as Broker

pytestmark = [pytest.mark.models, pytest.mark.broker]

UNIT = "LL-007"
DEEP = b"[" * 100_000 + b"]" * 100_000


class Watcher:
    """A plain paho client: counts the trap's events and keeps its command results."""

    def __init__(self, port: int) -> None:
        self.events: set[str] = set()
        self.results: list[bytes] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"camtrap/{UNIT}/event", 1), (f"camtrap/{UNIT}/cmd/+/result", 1),
                               (f"camtrap/{UNIT}/cmd/+/+/result", 1)])
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic.endswith("/event"):
                self.events.add(json.loads(msg.payload)["id"])
            else:
                self.results.append(msg.payload)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_poison_commands_and_receipts_never_stop_the_trap(
    tmp_path: Path, broker: Broker, models_dir: Path, cameratrapai_dir: Path
) -> None:
    root = tmp_path / "trap"
    db = root / "camtrap.db"
    log = tmp_path / "daemon.log"
    cfg = daemon_config(tmp_path / "trap.toml", root, cameratrapai_dir, broker.port,
                        unit=UNIT, every_s=0.5)
    watcher = Watcher(broker.port)
    cmd = f"camtrap/{UNIT}/cmd"
    # Retained poison waits for the trap on its command and receipt topics: it is re-read at
    # every start, so handling it badly once would mean a crash loop.
    watcher.publish(f"{cmd}/config/set", DEEP, retain=True)
    watcher.publish(f"camtrap/{UNIT}/ack", DEEP, retain=True)
    proc = start_daemon(cfg, models_dir, log)
    try:
        wait_until(lambda: watcher.count() >= 2, 90, "first alerts", log)
        before = watcher.count()
        for _ in range(8):  # more than the supervisor's restart budget of six a minute
            watcher.publish(f"{cmd}/config/set", DEEP)
            watcher.publish(f"camtrap/{UNIT}/ack", DEEP)
            watcher.publish(f"{cmd}/resend", b"\xff\xfe garbage")
        watcher.publish(f"{cmd}/config/set",
                        b'{"id": "nan1", "values": {"detector.score_threshold": NaN}}')
        watcher.publish(f"{cmd}/config/set",
                        b'{"id": "inf1", "values": {"policy.empty_below": 1e999}}')
        wait_until(lambda: watcher.count() >= before + 4, 90, "alerts after the poison", log)

        def answered() -> set[str]:
            with watcher.lock:
                return {json.loads(r).get("id") for r in watcher.results}

        wait_until(lambda: {"nan1", "inf1"} <= answered(), 30, "answers to the NaN commands",
                   log)
        assert proc.poll() is None, "the daemon exited"
        # Every command got an answer, and every answer is valid JSON with ok: false.
        with watcher.lock:
            results = [json.loads(r) for r in watcher.results]
        assert results, "no command result"
        assert all(r["ok"] is False for r in results)
        assert {"nan1", "inf1"} <= {r.get("id") for r in results}
        # NaN and infinity changed nothing.
        assert query(db, "SELECT COUNT(*) FROM settings") == [(0,)]
    finally:
        stop_daemon(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    # A restart reads the retained poison again and still delivers.
    proc = start_daemon(cfg, models_dir, log)
    try:
        n = watcher.count()
        wait_until(lambda: watcher.count() >= n + 3, 90, "alerts after the restart", log)
        time.sleep(1.0)
        assert proc.poll() is None, "the daemon exited after the restart"
    finally:
        stop_daemon(proc)
        watcher.publish(f"{cmd}/config/set", b"", retain=True)  # clear the retained messages
        watcher.publish(f"camtrap/{UNIT}/ack", b"", retain=True)
        watcher.close()
    assert "Traceback" not in log.read_text()
