"""Config: strict parsing, errors that name the key, and the example files stay valid."""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_check_config_exit_codes(tmp_path: Path, models_dir: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[unit]\nid = "LL-1"\n[hardware]\nbackend = "sim"\n[camera]\n'
                    'source = "synthetic"\n[storage]\nroot = "data"\n'
                    '[mqtt]\nhost = "127.0.0.1"\ntls = false\n')
    r = _cli("check-config", "--models", str(models_dir), str(good))
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


# --------------------------------------------------------------------------- non-finite numbers


def _float_keys() -> list[str]:
    """Every float key of the schema (from --explain, which lists them all with their type)."""
    return [line.split(" = ", 1)[0] for line in config.explain() if "  # float;" in line]


def _nested(key: str, value: object) -> dict[str, object]:
    data: dict[str, object] = {k: dict(v) for k, v in BASE.items()}
    *path, name = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[name] = value
    return data


def test_the_schema_has_float_keys_to_test() -> None:
    keys = _float_keys()
    assert len(keys) > 50
    assert {"detector.score_threshold", "outbox.backoff_min_s", "unit.location.lat"} <= set(keys)


@given(key=st.sampled_from(_float_keys()),
       literal=st.sampled_from(["nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e999",
                                "-1e999"]))
def test_non_finite_floats_are_refused_naming_the_key(key: str, literal: str) -> None:
    """TOML allows nan and inf; a NaN threshold turns every comparison false."""
    *path, name = key.split(".")
    toml = (f"[{'.'.join(path)}]\n{name} = {literal}\n" if path else f"{name} = {literal}\n")
    data = tomllib.loads(toml)
    merged = _nested(key, data_value(data, key))
    assert not math.isfinite(data_value(data, key))
    with pytest.raises(ConfigError) as e:
        config.parse(merged)
    assert e.value.key == key
    assert "finite" in e.value.reason


def data_value(data: dict[str, object], key: str) -> float:
    node: object = data
    for part in key.split("."):
        assert isinstance(node, dict)
        node = node[part]
    assert isinstance(node, float)
    return node


@given(key=st.sampled_from(_float_keys()), value=st.floats(allow_nan=False,
                                                          allow_infinity=False))
def test_finite_floats_are_never_refused_for_being_non_finite(key: str, value: float) -> None:
    """The check refuses exactly the non-finite: a finite value passes it or fails a limit."""
    reason = ""
    try:
        config.parse(_nested(key, value))
    except ConfigError as e:
        reason = e.reason
    assert "finite" not in reason


def test_nan_in_a_file_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    cfg = tmp_path / "nan.toml"
    cfg.write_text('[unit]\nid = "LL-1"\n[policy]\nempty_below = nan\n')
    for argv in (["check-config", str(cfg)], ["run", "--config", str(cfg)]):
        r = _cli(*argv)
        assert r.returncode == 2, r.stderr
        assert "policy.empty_below: must be a finite number, got nan" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.toml"]


# --------------------------------------------------------------------------- paths and hosts


def test_relative_paths_are_taken_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = tmp_path / "etc" / "camtrap"
    unit.mkdir(parents=True)
    (unit / "camtrap.toml").write_text(
        '[unit]\nid = "LL-1"\n[camera]\nimages_dir = "img"\n'
        '[detector]\nmodels_dir = "../models"\nhead = "site.npz"\n'
        '[storage]\nroot = "/var/lib/camtrap"\n'
        '[mqtt]\nca_file = "ca.crt"\npassword_file = "~/pw"\ncert_file = ""\n'
        '[lorawan]\nsecrets_file = "keys/lorawan.toml"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = config.load(Path("etc/camtrap/camtrap.toml"))  # a relative name, from elsewhere
    assert cfg.camera.images_dir == str(unit / "img")
    assert Path(cfg.detector.models_dir) == unit / ".." / "models"
    assert cfg.storage.root == "/var/lib/camtrap"  # absolute: as given
    assert cfg.mqtt.ca_file == str(unit / "ca.crt")
    assert cfg.mqtt.password_file == str(tmp_path / "home" / "pw")
    assert cfg.mqtt.cert_file == ""  # empty means none
    assert cfg.lorawan.secrets_file == str(unit / "keys" / "lorawan.toml")
    assert cfg.detector.head == "site.npz"  # relative to the models folder, as documented
    assert set(config.path_keys()) == {
        "camera.images_dir", "detector.models_dir", "storage.root", "mqtt.ca_file",
        "mqtt.cert_file", "mqtt.key_file", "mqtt.password_file", "lorawan.secrets_file"}
    assert config.parse(BASE).storage.root == "/var/lib/camtrap"


@pytest.mark.parametrize("host", ["mqtts://base.example", "base.example:8883", "bad host",
                                  "-base.example", "base..example", "", "a" * 64 + ".example"])
def test_bad_broker_hosts_name_the_key(host: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(_with("mqtt", host=host, tls=True))
    assert e.value.key == "mqtt.host"


@pytest.mark.parametrize("host", ["base.leopard.example", "localhost", "10.0.0.5", "::1",
                                  "fe80::1", "broker-2.example.", "x"])
def test_good_broker_hosts_pass(host: str) -> None:
    assert config.parse(_with("mqtt", host=host, tls=True)).mqtt.host == host


def test_a_disabled_link_does_not_need_a_host() -> None:
    assert config.parse(_with("mqtt", host="", enabled=False)).mqtt.host == ""


@pytest.mark.parametrize(("value", "ok"), [(4096, True), (100_000_000, True),
                                           (config.MAX_PIXELS_LIMIT, True), (4095, False),
                                           (config.MAX_PIXELS_LIMIT + 1, False)])
def test_max_pixels_limits(value: int, ok: bool) -> None:
    data = _with("detector", max_pixels=value)
    if ok:
        assert config.parse(data).detector.max_pixels == value
    else:
        with pytest.raises(ConfigError, match=r"detector\.max_pixels"):
            config.parse(data)
