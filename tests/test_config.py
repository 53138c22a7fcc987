"""Config: strict parsing, errors that name the key, and the example files stay valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_app.core import config
from edge_app.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = {"unit": {"id": "LL-042"}, "mqtt": {"host": "127.0.0.1", "tls": False}}


def _with(section: str, **kv: object) -> dict[str, object]:
    data: dict[str, object] = {k: dict(v) for k, v in BASE.items()}
    data.setdefault(section, {})
    data[section].update(kv)  # type: ignore[attr-defined]
    return data


def test_defaults_are_valid() -> None:
    cfg = config.parse(BASE)
    assert cfg.unit.id == "LL-042"
    assert cfg.camera.burst_frames == 3
    assert cfg.mqtt_client_id == "camtrap-LL-042"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_with("camera", burst_frame=3), "camera.burst_frame"),
        (_with("camera", burst_frames="3"), "camera.burst_frames"),
        (_with("camera", burst_frames=0), "camera.burst_frames"),
        (_with("camera", source="webcam"), "camera.source"),
        (_with("trigger", holdoff_s=True), "trigger.holdoff_s"),
        (_with("policy", alert_on=["leopard", "yeti"]), "policy.alert_on[1]"),
        (_with("policy", alert_on="leopard"), "policy.alert_on"),
        (_with("mqtt", host="broker.example", tls=False), "mqtt.tls"),
        (_with("mqtt", cert_file="/x.crt"), "mqtt.key_file"),
        ({**BASE, "unit": {"id": "bad id!"}}, "unit.id"),
        ({**BASE, "unit": {}}, "unit.id"),
        ({**BASE, "extra": {}}, "extra"),
        ({**BASE, "camera": 5}, "camera"),
        (_with("camera", source="replay"), "camera.images_dir"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(data)
    assert e.value.key == key


def test_int_accepted_for_float_and_insecure_allowed_explicitly() -> None:
    cfg = config.parse(_with("mqtt", host="10.0.0.5", tls=False, allow_insecure=True))
    assert cfg.mqtt.host == "10.0.0.5"
    assert config.parse(_with("trigger", holdoff_s=3)).trigger.holdoff_s == 3.0


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "config").glob("*.toml")))
def test_example_configs_are_valid(path: Path) -> None:
    config.load(path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_app", *args], capture_output=True, text=True, timeout=60,
        check=False,
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[unit]\nid = "LL-1"\n[mqtt]\nhost = "127.0.0.1"\ntls = false\n')
    r = _cli("check-config", str(good))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[unit]\nid = "LL-1"\n[camera]\nburst_frames = "many"\n')
    r = _cli("check-config", str(bad))
    assert r.returncode == 2
    assert "camera.burst_frames" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[unit\nid=")
    r = _cli("check-config", str(broken))
    assert r.returncode == 2
    assert "not valid TOML" in r.stderr
    r = _cli("check-config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2


def test_run_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[unit]\nid = "LL-1"\nlocaton = "typo"\n')
    r = _cli("run", "--config", str(bad))
    assert r.returncode == 2
    assert "unit.locaton" in r.stderr
