"""The CLI contracts scripts rely on: demo --json, detect --json, alerts --json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.sim.broker import PrivateBroker as Broker

CAMTRAP = [sys.executable, "-m", "edge_app"]


@pytest.mark.models
@pytest.mark.broker
def test_demo_json_contract(models_dir: Path, cameratrapai_dir: Path) -> None:
    r = subprocess.run(
        [*CAMTRAP, "demo", "--json", "--seconds", "5", "--every", "0.7",
         "--images", str(cameratrapai_dir), "--models", str(models_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert set(summary) == {"triggers", "frames", "empty", "kept", "alerts_sent",
                            "alerts_received", "outbox_depth", "latency_ms_p50",
                            "station_url"}
    assert summary["station_url"].startswith("http://127.0.0.1:")
    events = lines[:-1]
    assert summary["triggers"] >= 5
    assert summary["alerts_received"] == len(events) == summary["alerts_sent"] >= 4
    assert summary["outbox_depth"] == 0
    assert summary["frames"] == 3 * summary["triggers"]
    assert summary["latency_ms_p50"] > 0
    assert len({e["id"] for e in events}) == len(events)
    for e in events:
        assert e["unit"] == "DEMO-001"
        assert e["label"] in {"animal", "person", "vehicle"}


@pytest.mark.models
def test_demo_without_mosquitto_runs_queue_only(models_dir: Path, cameratrapai_dir: Path) -> None:
    r = subprocess.run(
        [*CAMTRAP, "demo", "--json", "--seconds", "2", "--every", "0.5",
         "--images", str(cameratrapai_dir), "--models", str(models_dir)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "CAMTRAP_MOSQUITTO": "/nonexistent/mosquitto"},
    )
    assert r.returncode == 0, r.stderr
    assert "mosquitto not found" in r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert summary["alerts_received"] == summary["alerts_sent"] == 0
    assert summary["station_url"] is None
    assert summary["kept"] >= 1
    assert summary["outbox_depth"] >= summary["kept"]  # everything kept is still queued


@pytest.mark.models
@pytest.mark.broker
def test_demo_synthetic_scenes_run_the_whole_path(models_dir: Path) -> None:
    r = subprocess.run(
        [*CAMTRAP, "demo", "--json", "--synthetic", "--seconds", "2", "--every", "0.5",
         "--models", str(models_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert summary["triggers"] >= 2
    assert summary["frames"] == 3 * summary["triggers"]
    assert summary["empty"] + summary["kept"] == summary["triggers"]


def test_demo_refuses_missing_images_folder(tmp_path: Path) -> None:
    r = subprocess.run([*CAMTRAP, "demo", "--images", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "nope" in r.stderr


@pytest.mark.models
def test_detect_json_lines_and_exit_codes(
    tmp_path: Path, models_dir: Path, cameratrapai_dir: Path
) -> None:
    for name in ("blank.jpg", "human.jpg", "african_elephants_cmyk.jpg"):
        shutil.copy(cameratrapai_dir / name, tmp_path / name)
    r = subprocess.run([*CAMTRAP, "detect", "--json", "--models", str(models_dir),
                        str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    by_file = {Path(o["file"]).name: o for o in map(json.loads, r.stdout.splitlines())}
    assert by_file["blank.jpg"]["label"] == "empty"
    assert by_file["human.jpg"]["label"] == "person"
    assert by_file["african_elephants_cmyk.jpg"]["label"] == "animal"
    for o in by_file.values():
        assert set(o) >= {"file", "label", "species", "score", "detections", "timings_ms"}
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    r = subprocess.run([*CAMTRAP, "detect", "--json", "--models", str(models_dir),
                        str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1
    out = {Path(o["file"]).name: o for o in map(json.loads, r.stdout.splitlines())}
    assert set(out) == {"blank.jpg", "human.jpg", "african_elephants_cmyk.jpg", "broken.jpg"}
    assert "error" in out["broken.jpg"]


def test_detect_without_models_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every place of the search is named (tests/test_models_dir.py has the search itself)."""
    from edge_app.core.models_dir import INSTALLED_MODELS_DIR

    if INSTALLED_MODELS_DIR.is_dir():
        pytest.fail(f"{INSTALLED_MODELS_DIR} exists on this machine: a bare `camtrap detect` "
                    "finds models there, so this test cannot see the error")
    monkeypatch.delenv("CAMTRAP_MODELS", raising=False)
    monkeypatch.setenv("CAMTRAP_SHARED", str(tmp_path / "no-shared"))
    r = subprocess.run([*CAMTRAP, "detect", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2
    for place in ("--models", "detector.models_dir", "CAMTRAP_MODELS",
                  str(INSTALLED_MODELS_DIR), "../shared/data/models"):
        assert place in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.models
def test_a_bare_detect_in_a_clone_finds_the_shared_pack(cameratrapai_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last place of the search: ../shared/data/models beside the clone."""
    monkeypatch.delenv("CAMTRAP_MODELS", raising=False)
    r = subprocess.run([*CAMTRAP, "detect", "--json", str(cameratrapai_dir / "human.jpg")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["label"] == "person"


@pytest.mark.broker
def test_alerts_prints_each_event_once(broker: Broker) -> None:
    proc = subprocess.Popen(
        [*CAMTRAP, "alerts", "--broker", broker.address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    event = {"id": "LL-001-7", "unit": "LL-001", "seq": 7, "ts": "2026-11-27T03:12:00+00:00",
             "outcome": "alert", "label": "animal", "species": "leopard", "score": 0.91,
             "detections": [], "frames": 3, "media": []}
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cli-test-pub",
                      protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        # Re-send until the receiver has subscribed and printed: duplicates are the point.
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            pub.publish("camtrap/LL-001/event", json.dumps(event), qos=1).wait_for_publish(5)
            time.sleep(0.2)
        for payload in ("not json", json.dumps(event), json.dumps(event)):
            pub.publish("camtrap/LL-001/event", payload, qos=1).wait_for_publish(5)
        time.sleep(0.5)
    finally:
        pub.loop_stop()
        pub.disconnect()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"camtrap alerts did not stop on SIGINT; printed {lines!r}")
        reader.join(5)
        err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err
    assert [json.loads(line)["id"] for line in lines] == ["LL-001-7"], err


@pytest.mark.broker
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_alerts_stops_on_signal_even_when_started_with_sigint_ignored(
    broker: Broker, sig: signal.Signals
) -> None:
    # A non-interactive shell starts background jobs with SIGINT ignored; CI does that.
    proc = subprocess.Popen(
        [*CAMTRAP, "-v", "alerts", "--broker", broker.address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    log: list[str] = []
    connected = threading.Event()

    def read() -> None:
        for line in proc.stderr or []:
            log.append(line)
            if "receiver: connected" in line:
                connected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert connected.wait(30), "".join(log)
        proc.send_signal(sig)
        rc = proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"camtrap alerts ignored {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert rc == 0, "".join(log)


def test_demo_shows_its_alerts_on_the_station_page(models_dir: Path,
                                                   cameratrapai_dir: Path) -> None:
    """Issue 12 item 6: the demo prints the page's address and a login; the alerts the demo's
    trap raises are on that page while it runs."""
    import httpx

    proc = subprocess.Popen(
        [*CAMTRAP, "demo", "--seconds", "40", "--every", "0.7", "--images",
         str(cameratrapai_dir), "--models", str(models_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        page_line = ""
        deadline = time.monotonic() + 60
        while not page_line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "the station's page: " in line:
                page_line = line
        assert page_line, "".join(lines)
        url = page_line.split("the station's page: ")[1].split()[0]
        user, password = page_line.split("log in as ")[1].split(";")[0].split(" / ")
        lines.extend(proc.stdout.readline() for _ in range(3))  # the first alerts' lines
        with httpx.Client(base_url=url, timeout=10) as web:
            token = web.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
            r = web.post("/login", data={"name": user, "password": password, "csrf": token})
            assert r.status_code in (200, 303)
            page = web.get("/")
            assert page.status_code == 200
            assert "DEMO-001" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
