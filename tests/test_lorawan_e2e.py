"""Trigger → alert on the ranger's screen over LoRaWAN, through every real part.

Mock PIR pin → replay camera → real models → SQLite → LoRa router → real pyserial on a pty →
RAK3172 (RUI3) or Wio-E5 emulator → emulated ChirpStack v4 / TTN v3 → real mosquitto →
``camtrap alerts`` (a separate process) or the receiver, decoding with the codec.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker
from lorawan_support import KEYS, UNIT, write_secrets
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.core import config
from edge_app.core import lora_codec as codec
from edge_app.core.errors import ConfigError
from edge_app.sim.modems import PtyModem, Rui3Modem, WioE5Modem
from edge_app.sim.netserver import NetworkServer
from edge_app.station.lorawan import LorawanDecoder
from edge_app.station.receiver import Receiver
from edge_app.trap.daemon import App

pytestmark = [pytest.mark.models, pytest.mark.broker]


def trap_config(root: Path, images: Path, port: str, secrets: Path, module: str = "rak3172",
                mqtt_port: int | None = None) -> config.Config:
    return config.parse({
        "unit": {"id": UNIT},
        "hardware": {"backend": "sim"},
        "trigger": {"holdoff_s": 0.0, "debounce_s": 0.02, "sample_rate_hz": 100.0},
        "camera": {"source": "replay", "images_dir": str(images), "burst_frames": 2,
                   "burst_interval_s": 0.05, "pre_trigger_frames": 1},
        "policy": {"audit_every": 0},
        "storage": {"root": str(root)},
        "mqtt": ({"enabled": False} if mqtt_port is None else
                 {"host": "127.0.0.1", "port": mqtt_port, "tls": False, "keepalive_s": 5,
                  "receipts": False}),
        # SF7 and the 10 % the Russian rules allow on 868.7-869.2 MHz keep the join's
        # time-off under a second of real time.
        "lorawan": {"enabled": True, "module": module, "port": port,
                    "secrets_file": str(secrets), "mode": "always", "status_every_h": 0,
                    "adr": False, "data_rate": 5, "duty_cycle": 0.1},
    })


@pytest.fixture
def leopard_dir(tmp_path: Path, field_dir: Path) -> Path:
    """One photo the pipeline names leopard: a jaguar the detector boxes large (the night
    ocelot no longer is one: a boxless small spotted cat is other_big_cat, issue 13)."""
    d = tmp_path / "images"
    d.mkdir()
    shutil.copy(field_dir / "animl-py" / "examples__Jaguar__AABP_13_20051007_1205.jpg",
                d / "jaguar.jpg")
    return d


def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class AlertsProcess:
    """``camtrap alerts --json`` in its own process; its lines on a queue."""

    def __init__(self, broker: Broker, devices: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "edge_app", "alerts", "--broker", broker.address, "--json",
               "--no-receipts", "--client-id", f"ranger-{time.monotonic_ns()}"]
        if devices is not None:
            cmd += ["--lorawan-devices", str(devices)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def wait_listening(self, broker: Broker, timeout_s: float = 20.0) -> None:
        """Publish a probe alert (ChirpStack format) until the process prints it: from then
        on it is subscribed (network-server uplinks are QoS 0: nothing is queued for it)."""
        probe = {"deviceInfo": {"deviceName": "PROBE", "devEui": "ffffffffffffffff"},
                 "fPort": 10, "fCnt": 0, "data": base64.b64encode(codec.encode_alert(
                     codec.Alert("person", None, 0.5, 1, 0))).decode()}
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                client.publish("application/probe/device/ffffffffffffffff/event/up",
                               json.dumps(probe))
                try:
                    if self.lines.get(timeout=0.3)["unit"] == "PROBE":
                        return
                except queue.Empty:
                    continue
            pytest.fail(f"camtrap alerts did not start: {self.stop()}")
        finally:
            client.loop_stop()
            client.disconnect()

    def next_alert(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ev = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev.get("unit") != "PROBE":
                return ev
        pytest.fail(f"no alert from camtrap alerts within {timeout_s} s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def alerts_process(broker: Broker, tmp_path: Path) -> Iterator[AlertsProcess]:
    devices = tmp_path / "devices.toml"  # the fleet: only listed DevEUIs are shown as units
    devices.write_text(f'"{KEYS.dev_eui}" = "{UNIT}"\n"FFFFFFFFFFFFFFFF" = "PROBE"\n')
    proc = AlertsProcess(broker, devices)
    try:
        proc.wait_listening(broker)
        yield proc
    finally:
        proc.stop()


def trigger_once(app: App) -> None:
    assert app.world is not None
    before = app.counters.kept
    app.world.visit()
    wait_for(lambda: app.counters.kept > before, 60, "the trigger to be stored")
    app.world.leave()


@pytest.mark.parametrize(("flavour", "module"), [
    ("chirpstack", "rak3172"), ("ttn", "rak3172"), ("chirpstack", "wio-e5")])
def test_trigger_to_alert_on_camtrap_alerts_over_lorawan(
    tmp_path: Path, broker: Broker, models_dir: Path, leopard_dir: Path,
    alerts_process: AlertsProcess, flavour: str, module: str,
) -> None:
    ns = NetworkServer("127.0.0.1", broker.port, flavour).start()  # type: ignore[arg-type]
    ns.register(KEYS.dev_eui, KEYS.join_eui, KEYS.app_key, UNIT)
    emu_cls: type[PtyModem] = Rui3Modem if module == "rak3172" else WioE5Modem
    emu = emu_cls(ns, time_factor=0.01, dr=5, duty_cycle=0.1).start()
    secrets = write_secrets(tmp_path / "lorawan.toml")
    cfg = trap_config(tmp_path / "trap", leopard_dir, emu.port, secrets, module)
    app = App(cfg, models_dir)
    app.start()
    try:
        trigger_once(app)
        ev = alerts_process.next_alert(30)
    finally:
        app.stop(5)
        emu.stop()
        ns.stop()
    assert (ev["unit"], ev["label"], ev["species"], ev["source"]) == (
        UNIT, "animal", "leopard", "lorawan")
    assert ev["id"] == f"{UNIT}-1"
    assert ev["seq"] == 1
    assert ev["lorawan"]["network"] == flavour
    assert ev["lorawan"]["sf"] == 7
    assert 0.35 <= ev["score"] <= 1.0
    topic_end = "/event/up" if flavour == "chirpstack" else "/up"
    assert [t for t, _ in ns.published if t.endswith(topic_end)]


def test_lora_alert_and_the_later_mqtt_event_show_once(
    tmp_path: Path, broker: Broker, models_dir: Path, leopard_dir: Path
) -> None:
    """``mode = always``: the alert arrives twice (LoRa and MQTT); the ranger shows it once,
    and the MQTT copy (with its photos) is still stored."""
    seen: list[dict[str, Any]] = []
    decoder = LorawanDecoder({KEYS.dev_eui: UNIT})
    rx = Receiver("127.0.0.1", broker.port, client_id="ranger-dedupe", on_alert=seen.append,
                  extra=decoder.sources(), store_dir=tmp_path / "ranger")
    rx.start()
    assert rx.wait_connected(10)
    ns = NetworkServer("127.0.0.1", broker.port, "chirpstack").start()
    ns.register(KEYS.dev_eui, KEYS.join_eui, KEYS.app_key, "some-other-name")
    emu = Rui3Modem(ns, time_factor=0.01, dr=5, duty_cycle=0.1).start()
    cfg = trap_config(tmp_path / "trap", leopard_dir, emu.port,
                      write_secrets(tmp_path / "lorawan.toml"), mqtt_port=broker.port)
    app = App(cfg, models_dir)
    app.start()
    try:
        trigger_once(app)
        wait_for(lambda: rx.stats.received >= 2, 30, "both copies of the alert")
        rx.wait_quiet(0.5)
    finally:
        app.stop(5)
        emu.stop()
        ns.stop()
        rx.stop()
    assert len(seen) == 1, seen
    assert seen[0]["unit"] == UNIT  # mapped from the DevEUI, not the device's name
    assert rx.stats.duplicates == 1
    assert decoder.stats.alerts == 1


def test_a_loose_secrets_file_stops_the_daemon_at_start(
    tmp_path: Path, models_dir: Path, leopard_dir: Path
) -> None:
    secrets = write_secrets(tmp_path / "lorawan.toml", mode=0o640)
    cfg = trap_config(tmp_path / "trap", leopard_dir, "/dev/null", secrets)
    with pytest.raises(ConfigError, match=r"lorawan\.secrets_file"):
        App(cfg, models_dir)
