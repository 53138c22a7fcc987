"""Helpers of the station tests: events as traps send them, raw MQTT clients, the shipped broker.

Real parts only: a real mosquitto (the shipped ``deploy/mosquitto`` config and credentials
script, paths and port rewritten), real paho clients, real TLS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from chaos_support import REPO, current_user
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_app.core.mqtt_common import new_properties
from edge_app.sim.broker import PrivateBroker, find_mosquitto


def event(unit: str, seq: int, **over: Any) -> dict[str, Any]:
    """An event JSON as a trap sends it (ARCHITECTURE §6)."""
    body: dict[str, Any] = {
        "id": f"{unit}-{seq}", "unit": unit, "seq": seq, "ts": "2026-09-21T10:15:00.123+00:00",
        "time_synced": True, "outcome": "alert", "label": "animal", "species": "leopard",
        "score": 0.9, "detections": [], "frames": 3, "media": [], "battery_v": 3.9,
        "temp_c": 20.0}
    body.update(over)
    return body


def wait_until(cond: Callable[[], bool], timeout_s: float = 20.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class Raw:
    """A paho MQTT 5 client recording connects, disconnects, messages and PUBACK reason codes.

    Args:
        port: broker port on 127.0.0.1.
        client_id: the client id it asks for.
        user: user name (with ``password``), or None.
        password: password.
        ca_file: CA certificate (TLS) or None (plain).
        persistent: ``clean_start=False`` with a session expiry (as traps and receivers do).
    """

    def __init__(self, port: int, client_id: str, user: str | None = None,
                 password: str | None = None, ca_file: Path | None = None,
                 persistent: bool = False) -> None:
        self.connects: list[tuple[str, bool]] = []  # (reason, session present)
        self.disconnects: list[str] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.puback: dict[int, str] = {}
        self.suback = 0
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.c.reconnect_delay_set(60, 60)  # a kicked client must not come back by itself
        if user is not None:
            self.c.username_pw_set(user, password)
        if ca_file is not None:
            self.c.tls_set(ca_certs=str(ca_file))
        self.c.on_connect = lambda c, u, f, rc, p: self.connects.append(
            (str(rc), bool(f.session_present)))
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(str(rc))
        self.c.on_message = self._on_message
        self.c.on_publish = lambda c, u, mid, rc, p: self.puback.__setitem__(mid, str(rc))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed()
        props: Properties | None = None
        if persistent:
            props = new_properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.c.connect_async("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.c.loop_start()

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(m)

    def _subscribed(self) -> None:
        self.suback += 1

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> int:
        info = self.c.publish(topic, payload, qos=qos)
        if qos:
            info.wait_for_publish(10)
        return info.mid

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def deploy_broker(tmp: Path, units: list[str], rangers: list[str]) -> tuple[PrivateBroker, Path]:
    """The shipped base-station config, ACL template and credentials script on a free port.

    The ACL is the one ``make-credentials`` writes (the template's ranger block per ranger).
    """
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA")
    pki = tmp / "pki"
    cmd = [str(REPO / "deploy/mosquitto/make-credentials"), str(pki),
           "--server-name", "localhost", "--server-ip", "127.0.0.1"]
    for u in units:
        cmd += ["--unit", u]
    for r in rangers:
        cmd += ["--ranger", r]
    subprocess.run(cmd, check=True, capture_output=True)
    work = tmp / "base"
    (work / "data").mkdir(parents=True)
    broker = PrivateBroker(exe, work)
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    conf = (conf.replace("/etc/mosquitto/camtrap/", f"{pki}/")
            .replace("/var/lib/mosquitto/", f"{work / 'data'}/")
            .replace("\nlistener 8883\n", f"\nlistener {broker.port} 127.0.0.1\n")
            .replace("log_dest syslog", f"log_dest file {work / 'mosquitto.log'}"))
    assert f"listener {broker.port} 127.0.0.1" in conf
    assert "use_username_as_clientid true" in conf
    broker.conf.write_text(conf + f"\nuser {current_user()}\n")
    broker.start()
    return broker, pki


def password(pki: Path, kind: str, name: str) -> str:
    """The password make-credentials made for ``kind`` (units/rangers) ``name``."""
    return (pki / kind / name / "mqtt-password").read_text().strip()


def acks(raw: Raw, unit: str) -> list[str]:
    """Every event id confirmed to ``unit`` on its ack topic, as ``raw`` received them."""
    out: list[str] = []
    for m in list(raw.messages):
        if m.topic == f"camtrap/{unit}/ack":
            out += json.loads(m.payload)["ids"]
    return out
