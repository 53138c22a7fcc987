"""``camtrap doctor`` in simulation: a healthy sim unit passes every line, and each injected
fault fails (or warns) on the line a technician would look at, with a fix.

The broker lines run against the shipped base-station mosquitto config with the credentials
``make-credentials`` makes (TLS and passwords), the way a unit meets it in the field.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lorawan_support import write_secrets
from station_support import deploy_broker

from edge_app import cli
from edge_app.sim.broker import PrivateBroker, free_port
from edge_app.trap.doctor.context import Probes
from edge_app.trap.doctor.devices import judge_exposure
from edge_app.trap.doctor.report import Check, as_json, bounded, exit_code, table
from edge_app.trap.doctor.run import run_doctor
from edge_app.trap.hardware.timesource import fixed
from edge_app.trap.hardware.trigger import make_pin_factory

pytestmark = [pytest.mark.models, pytest.mark.broker]

UNIT = "LL-042"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The shipped broker config over TLS with make-credentials' CA and passwords."""
    broker, pki = deploy_broker(tmp_path_factory.mktemp("base"), [UNIT], [])
    try:
        yield broker.port, pki
    finally:
        broker.kill()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def write_config(d: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path = d / "camtrap.toml"
    path.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in
                                                 kv.items()) for s, kv in sections.items()))
    return path


def unit(tmp: Path, models: Path, images: Path, port: int, pki: Path | None,
         **over: dict[str, Any]) -> Path:
    """A healthy sim unit's config; ``over`` replaces keys per section."""
    mqtt: dict[str, Any] = {"enabled": True, "host": "localhost", "port": port,
                            "tls": pki is not None}
    if pki is not None:
        pw = tmp / "mqtt-password"
        pw.write_text((pki / "units" / UNIT / "mqtt-password").read_text())
        pw.chmod(0o600)
        mqtt |= {"ca_file": str(pki / "ca.crt"), "password_file": str(pw)}
    sections: dict[str, dict[str, Any]] = {
        "unit": {"id": UNIT}, "hardware": {"backend": "sim"},
        "camera": {"source": "replay", "images_dir": str(images)},
        "detector": {"models_dir": str(models)},
        "storage": {"root": str(tmp / "data"), "min_free_mb": 1.0},
        "mqtt": mqtt,
    }
    for sec, kv in over.items():
        sections.setdefault(sec, {}).update(kv)
    return write_config(tmp, sections)


def doctor(path: Path, probes: Probes | None = None, **kw: Any) -> dict[str, Check]:
    probes = probes or Probes(time_source=fixed("ntp"))
    checks = run_doctor(str(path), timeout_s=kw.pop("timeout_s", 10.0), pir_window_s=0.3,
                        probes=probes, **kw)
    return {c.name: c for c in checks}


def only_failing(res: dict[str, Check], name: str, status: str = "fail") -> Check:
    """``name`` has ``status`` with a fix, and no other line is worse than warn."""
    bad = {n: c for n, c in res.items() if c.status in ("fail", "warn") and n != name}
    assert not bad, bad
    assert res[name].status == status, res[name]
    assert res[name].fix
    return res[name]


def test_healthy_sim_unit_all_pass_over_tls_with_password(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path,
        tls_broker: tuple[int, Path]) -> None:
    port, pki = tls_broker
    res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, port, pki,
                      mcu={"enabled": True}))
    assert {c.status for c in res.values()} == {"pass", "skip"}, res
    assert res["lora"].status == "skip"
    assert "TLS, password" in res["mqtt"].detail
    assert "battery 13.2" in res["mcu"].detail
    assert "sha256" in res["models"].detail


def test_cli_json_shape_and_exit_codes(tmp_path: Path, models_dir: Path,
                                       cameratrapai_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    broker = PrivateBroker(shutil.which("mosquitto") or "mosquitto", tmp_path)
    broker.start()
    try:
        cfg = unit(tmp_path, models_dir, cameratrapai_dir, broker.port, None)
        assert cli.main(["doctor", "--config", str(cfg), "--json", "--pir-window", "0.2"]) == 0
    finally:
        broker.stop()
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert [c["name"] for c in out["checks"]] == [
        "config", "models", "camera", "pir", "mcu", "clock", "lora", "cellular", "mqtt", "disk",
        "outbox"]
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in out["checks"])
    # the broker is gone now: the same unit fails on the mqtt line, exit 1, still a table
    assert cli.main(["doctor", "--config", str(cfg), "--pir-window", "0.2"]) == 1
    text = capsys.readouterr().out
    assert "FAIL  mqtt" in text
    assert "connection refused" in text
    assert "NOT OK" in text


def test_config_unreadable_is_a_failing_line_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_config(tmp_path, {"camera": {"burst_frames": 999}})
    assert cli.main(["doctor", "--config", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["checks"][0]["status"] == "fail"
    assert "camera.burst_frames" in out["checks"][0]["detail"]
    assert {c["status"] for c in out["checks"][1:]} == {"skip"}
    res = doctor(tmp_path / "missing.toml")
    assert res["config"].status == "fail"


def test_camera_absent(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    empty = tmp_path / "no-images"
    empty.mkdir()
    res = doctor(unit(tmp_path, models_dir, empty, 1, None, mqtt={"enabled": False}))
    assert "camera.images_dir" in only_failing(res, "camera").detail


def test_pir_stuck_high(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    pins = make_pin_factory("sim")
    pins.pin(17).drive_high()  # type: ignore[attr-defined]
    res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, 1, None,
                      mqtt={"enabled": False}),
                 Probes(pin_factory=pins, time_source=fixed("ntp")))
    assert "PIR stuck high" in only_failing(res, "pir").detail


def test_modem_silent(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    import os

    master, slave = os.openpty()  # a pty with nothing answering on the other end
    try:
        secrets = tmp_path / "lorawan.toml"
        write_secrets(secrets)
        res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, 1, None,
                          mqtt={"enabled": False},
                          lorawan={"enabled": True, "port": os.ttyname(slave),
                                   "secrets_file": str(secrets),
                                   "command_timeout_s": 0.2}))
    finally:
        os.close(master)
        os.close(slave)
    assert "no answer to AT" in only_failing(res, "lora").detail


def test_modem_answering_but_not_joined_warns(tmp_path: Path, models_dir: Path,
                                              cameratrapai_dir: Path) -> None:
    from edge_app.sim.modems import Rui3Modem

    secrets = tmp_path / "lorawan.toml"
    write_secrets(secrets)
    with Rui3Modem() as modem:
        res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, 1, None,
                          mqtt={"enabled": False},
                          lorawan={"enabled": True, "port": modem.port,
                                   "secrets_file": str(secrets)}))
    assert "not joined" in only_failing(res, "lora", "warn").detail


def other_ca(d: Path) -> Path:
    """A CA the broker's certificate was not signed by."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else's CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = d / "other-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_wrong_ca(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path,
                  tls_broker: tuple[int, Path]) -> None:
    port, pki = tls_broker
    res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, port, pki,
                      mqtt={"ca_file": str(other_ca(tmp_path))}))
    assert "wrong CA" in only_failing(res, "mqtt").detail


def test_wrong_password(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path,
                        tls_broker: tuple[int, Path]) -> None:
    port, pki = tls_broker
    cfg = unit(tmp_path, models_dir, cameratrapai_dir, port, pki)
    (tmp_path / "mqtt-password").write_text("not-the-password\n")
    assert "wrong password" in only_failing(doctor(cfg), "mqtt").detail


def test_broker_down(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path,
                     tls_broker: tuple[int, Path]) -> None:
    _port, pki = tls_broker
    res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, free_port(), pki))
    assert "connection refused" in only_failing(res, "mqtt").detail


def test_unsynced_clock_warns_unless_the_rtc_is_trusted(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    cfg = unit(tmp_path, models_dir, cameratrapai_dir, 1, None, mqtt={"enabled": False})
    res = doctor(cfg, Probes(time_source=fixed("none")))
    assert "not synced" in only_failing(res, "clock", "warn").detail
    assert exit_code(list(res.values())) == 0  # a warning alone is not a failure
    with_mcu = unit(tmp_path, models_dir, cameratrapai_dir, 1, None, mqtt={"enabled": False},
                    mcu={"enabled": True})
    res = doctor(with_mcu, Probes(time_source=fixed("none")))
    assert res["clock"].status == "pass"
    assert "RTC" in res["clock"].detail


def test_disk_low(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    res = doctor(unit(tmp_path, models_dir, cameratrapai_dir, 1, None, mqtt={"enabled": False},
                      storage={"min_free_mb": 1e12}))
    assert "MB free" in only_failing(res, "disk").detail


def test_hash_mismatch(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    model = copy / "yolov8n_coco_int8_640.tflite"
    model.chmod(0o644)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    res = doctor(unit(tmp_path, copy, cameratrapai_dir, 1, None, mqtt={"enabled": False}))
    line = only_failing(res, "models")
    assert "detector.detector" in line.detail
    assert "sha256" in line.detail


def test_outbox_backed_up(tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    import sqlite3

    from edge_app.trap.store.db import db_path, open_db

    cfg = unit(tmp_path, models_dir, cameratrapai_dir, 1, None, mqtt={"enabled": False})
    (tmp_path / "data").mkdir()
    open_db(db_path(tmp_path / "data")).close()
    res = doctor(cfg)
    assert res["outbox"].status == "pass"
    conn = sqlite3.connect(db_path(tmp_path / "data"))
    with conn:
        conn.execute("INSERT INTO outbox (kind, link, priority, payload, created, "
                     "next_attempt_at) VALUES ('alert', 'mqtt', 0, x'00', ?, 0)",
                     (time.time() - 4 * 86400,))
    conn.close()
    assert "1 waiting" in only_failing(doctor(cfg), "outbox").detail


def test_exposure_judgement_and_the_time_bound() -> None:
    good = {"Lux": 400.0, "ExposureTime": 8000.0, "AnalogueGain": 1.0}
    assert judge_exposure(good, 120.0).status == "pass"
    assert judge_exposure(good, 254.0).status == "fail"
    assert judge_exposure(good, 1.0).status == "warn"
    assert judge_exposure({**good, "Lux": float("nan")}, 120.0).status == "fail"
    assert judge_exposure({}, 120.0).status == "warn"
    import threading

    never = threading.Event()
    hung = bounded("camera", lambda: (never.wait(5), Check("camera", "pass", ""))[1], 0.1,
                   "power-cycle")
    assert hung.status == "fail"
    assert "no answer within 0.1 s" in hung.detail
    never.set()
    crash = bounded("x", lambda: 1 / 0, 1.0, "f")  # type: ignore[arg-type,return-value]
    assert crash.status == "fail"
    assert "ZeroDivisionError" in crash.detail
    lines = [Check("a", "pass", "fine"), Check("b", "warn", "hm", "do this")]
    assert "fix: do this" in table(lines)
    assert json.loads(as_json(lines))["ok"] is True
