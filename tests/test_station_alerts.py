"""``camtrap alerts`` says on stderr what it is doing, without ``-v`` (station/alerts.py)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker
from paho.mqtt.enums import CallbackAPIVersion
from station_support import event

from edge_app.sim.broker import find_mosquitto
from edge_app.station.session import LinkNote, ReconnectBackoff

pytestmark = pytest.mark.broker


class Lines:
    """A stream of a subprocess, line by line on a queue."""

    def __init__(self, stream: object) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.q.put(line.rstrip("\n"))

    def expect(self, text: str, timeout_s: float = 20.0) -> str:
        """The next line containing ``text`` (earlier lines are kept in ``seen``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} within {timeout_s} s; got {self.seen!r}")


def test_alerts_says_it_cannot_reach_the_broker_then_that_it_is_connected(
    tmp_path: Path,
) -> None:
    exe = find_mosquitto()
    assert exe is not None
    (tmp_path / "b").mkdir()
    broker = Broker(exe, tmp_path / "b", persistent=True)  # its port: nothing listens yet
    addr = broker.address
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_app", "alerts", "--broker", addr, "--json",
         "--client-id", "ranger-says"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stderr is not None
    err, out = Lines(proc.stderr), Lines(proc.stdout)
    try:
        err.expect("no --lorawan-devices: LoRaWAN uplinks will be counted as unknown")
        assert err.expect(f"cannot reach {addr}") == (
            f"camtrap alerts: cannot reach {addr} (Connection refused), retrying in 1 s")
        assert err.expect(f"cannot reach {addr}").endswith("retrying in 2 s")
        broker.start()
        assert err.expect("connected to") == (
            f"camtrap alerts: connected to {addr}, waiting for alerts")
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("camtrap/LL-1/event", json.dumps(event("LL-1", 4)), qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        assert json.loads(out.expect("LL-1-4"))["id"] == "LL-1-4"

        broker.kill()  # and again on reconnect
        lost = err.expect("lost the connection")
        assert lost.startswith(f"camtrap alerts: lost the connection to {addr} (")
        assert lost.endswith("reconnecting in 1 s")
        assert err.expect(f"cannot reach {addr}").endswith("retrying in 2 s")
        broker.start()
        assert err.expect("connected to") == (
            f"camtrap alerts: connected to {addr}, waiting for alerts")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.kill()
    assert proc.returncode == 0


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = ReconnectBackoff(1.0, 30.0)
    assert [b.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next() == 1


def test_link_notes_read_as_sentences() -> None:
    assert str(LinkNote("connected", "h:1")) == "connected to h:1, waiting for alerts"
    assert str(LinkNote("unreachable", "h:1", "Name or service not known", 4.0)) == (
        "cannot reach h:1 (Name or service not known), retrying in 4 s")
    assert str(LinkNote("refused", "[::1]:8883", "Not authorized", 1.0)) == (
        "[::1]:8883 refused the connection (Not authorized), retrying in 1 s")
