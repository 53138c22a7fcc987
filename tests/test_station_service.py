"""``camtrap station`` as one process: receiver, page and notifications together.

A simulated trap publishes an alert with its thumbnail to a real mosquitto; the station stores
both, rings the rangers' phones once — with the picture, because the notification waits for it
(``station/picture_wait.py``) — and the alert is on the page for a logged-in ranger, with the
unit's site from the fleet file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from notify_support import Recorder
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from station_support import event, wait_until

from edge_app.sim.broker import free_port
from edge_app.station.picture_wait import PictureWait

REPO = Path(__file__).resolve().parents[1]
FLEET = ("unit_id,site_name,lat,lon,deployment_id,broker_host\n"
         "LL-042,Kedrovaya 3,43.1,131.9,LL-042-2026-12,base.example\n")


def test_picture_wait_holds_an_alert_for_its_thumbnail_only() -> None:
    w = PictureWait(wait_s=20.0)
    lora = {"id": "A-1-1", "unit": "A-1", "source": "lorawan", "media": []}
    mqtt_ev = {"id": "A-1-2", "unit": "A-1", "media": [{"id": "A-1-2-thumb", "kind": "thumb"}]}
    assert [r.event for r in w.alert(lora, 0.0)] == [lora]  # nothing to wait for
    assert w.alert(mqtt_ev, 0.0) == []
    assert w.next_due() == 20.0
    r = w.picture("A-1", "A-1-2", Path("t.jpg"))
    assert r is not None
    assert (r.event, r.picture) == (mqtt_ev, Path("t.jpg"))
    assert w.picture("A-1", "A-1-2", Path("t.jpg")) is None  # released once
    w.alert({**mqtt_ev, "id": "A-1-3"}, 5.0)
    assert w.due(24.9) == []
    (late,) = w.due(25.0)
    assert (late.event["id"], late.picture) == ("A-1-3", None)
    small = PictureWait(max_pending=2)
    for n in range(3):
        out = small.alert({**mqtt_ev, "id": f"A-1-{n}"}, 0.0)
    assert [r.event["id"] for r in out] == ["A-1-0"]  # the oldest goes without its picture


def _thumb() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 40)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.broker
def test_an_alert_rings_once_with_its_picture_and_is_on_the_page(
        tmp_path: Path, broker: Any) -> None:
    web_port = free_port()
    (tmp_path / "fleet.csv").write_text(FLEET)
    with Recorder() as rec:
        cfg = tmp_path / "station.toml"
        cfg.write_text(f"""
[station]
store = "store"
timezone = "Asia/Vladivostok"
fleet_file = "fleet.csv"
[mqtt]
broker = "127.0.0.1:{broker.port}"
client_id = "station-1"
lorawan = false
[web]
host = "127.0.0.1"
port = {web_port}
secret_file = "web-secret"
public_url = "http://127.0.0.1:{web_port}/"
[notify]
base_url = "http://127.0.0.1:{web_port}/"
timezone = "Asia/Vladivostok"
[[notify.targets]]
name = "rangers"
url = "{rec.url('json')}"
[[notify.rules]]
labels = ["leopard", "tiger", "person"]
targets = ["rangers"]
""")
        pw = tmp_path / "pw"
        pw.write_text("correct horse battery\n")
        r = subprocess.run([sys.executable, "-m", "edge_app", "station", "adduser", "anna",
                            "--role", "ranger", "--config", str(cfg), "--password-file",
                            str(pw)], capture_output=True, text=True, timeout=60, cwd=REPO,
                           check=False)
        assert r.returncode == 0, r.stderr
        log = tmp_path / "station.log"
        with log.open("wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "edge_app", "-v", "station",
                                     "--config", str(cfg)], stdout=f, stderr=subprocess.STDOUT,
                                    cwd=REPO)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="LL-042",
                          protocol=mqtt.MQTTv5)
        try:
            wait_until(lambda: b"connected to" in log.read_bytes(), 30, "the station")
            wait_until(lambda: b"the page is at" in log.read_bytes(), 30, "the page")
            time.sleep(0.5)
            assert (tmp_path / "web-secret").stat().st_mode & 0o777 == 0o600
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            thumb = _thumb()
            sha = hashlib.sha256(thumb).hexdigest()
            ev = event("LL-042", 17, label="animal", species="leopard",
                       media=[{"id": "LL-042-17-thumb", "kind": "thumb", "bytes": len(thumb),
                               "sha256": sha}])
            pub.publish("camtrap/LL-042/event", json.dumps(ev), qos=1).wait_for_publish(10)
            time.sleep(0.3)  # the picture follows the event, as over a real link
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("event", "LL-042-17"), ("chunk", "0"), ("of", "1"),
                                  ("sha256", sha)]
            pub.publish("camtrap/LL-042/media/LL-042-17-thumb/0", thumb, qos=1,
                        properties=props).wait_for_publish(10)
            (req,) = rec.wait(1, 20)
            body = req.json()
            assert "Kedrovaya 3" in body["title"]
            assert "LL-042" in body["title"]
            (att,) = body["attachments"]
            assert base64.b64decode(att["base64"]) == thumb
            time.sleep(1.0)
            assert len(rec.received) == 1  # one buzz, not text and then picture
            with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10) as web:
                page = web.get("/login")
                assert page.status_code == 200
                token = page.text.split('name="csrf" value="')[1].split('"')[0]
                r2 = web.post("/login", data={"name": "anna", "password": "correct horse "
                                              "battery", "csrf": token})
                assert r2.status_code in (200, 303), r2.text[:500]
                alerts = web.get("/")
                assert alerts.status_code == 200
                assert "LL-042" in alerts.text
                assert "Kedrovaya 3" in alerts.text
        finally:
            pub.loop_stop()
            pub.disconnect()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
    assert rc == 0, log.read_text()[-3000:]
