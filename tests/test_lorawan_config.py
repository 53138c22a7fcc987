"""The [lorawan] config section, ``check-config`` on the keys file, and the bench contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Broker
from lorawan_support import KEYS, write_secrets

from edge_app.cli import main as camtrap
from edge_app.core import config
from edge_app.core.errors import ConfigError

BASE = {"unit": {"id": "LL-042"}, "hardware": {"backend": "sim"},
        "camera": {"source": "synthetic"}}


def test_defaults_are_off_ru864_one_percent_every_link() -> None:
    lw = config.parse(dict(BASE)).lorawan
    assert (lw.enabled, lw.module, lw.region, lw.duty_cycle, lw.mode) == (
        False, "rak3172", "RU864", 0.01, "always")
    assert lw.priority[:2] == ["person", "vehicle"]


@pytest.mark.parametrize(("section", "key"), [
    ({"mode": "fallback", "enabled": True}, "lorawan.mode"),
    ({"priority": ["leopard", "lynx"]}, "lorawan.priority[1]"),
    ({"duty_cycle": 0.5}, "lorawan.duty_cycle"),
    ({"module": "rn2483"}, "lorawan.module"),
    ({"join_backoff_min_s": 100.0, "join_backoff_max_s": 10.0}, "lorawan.join_backoff_max_s"),
    ({"app_key": KEYS.app_key}, "lorawan.app_key"),  # keys are not config keys
])
def test_bad_lorawan_settings_name_the_key(section: dict[str, object], key: str) -> None:
    data = {**BASE, "mqtt": {"enabled": False}, "lorawan": section}
    with pytest.raises(ConfigError) as e:
        config.parse(data)
    assert e.value.key == key
    assert KEYS.app_key not in str(e.value)


def test_check_config_checks_the_keys_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    secrets = write_secrets(tmp_path / "lorawan.toml", mode=0o644)
    cfg = tmp_path / "camtrap.toml"
    cfg.write_text(f'[unit]\nid = "LL-042"\n[hardware]\nbackend = "sim"\n[camera]\n'
                   f'source = "synthetic"\n[storage]\nroot = "data"\n'  # check-config probes it
                   f'[mqtt]\nenabled = false\n[lorawan]\nenabled = true\n'
                   f'mode = "always"\nsecrets_file = "{secrets}"\n')
    assert camtrap(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "lorawan.secrets_file" in err
    assert "chmod 600" in err
    secrets.chmod(0o600)
    assert camtrap(["check-config", str(cfg)]) == 0


@pytest.mark.broker
def test_bench_lorawan_json_contract(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    assert camtrap(["bench", "lorawan", "--json", "--alerts", "1", "--sf", "7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["alert_bytes"] == 11
    assert set(out["airtime_ms"]) == {f"SF{sf}" for sf in range(7, 13)}
    assert out["airtime_ms"]["SF7"] == 61.7
    assert out["airtime_ms"]["SF12"] == 1482.8
    assert out["alerts_per_hour"]["SF12"] == 24
    assert out["alerts_per_hour"]["SF7"] == 583
    assert out["latency_ms_p50"] is not None
    assert 61.7 <= out["latency_ms_p50"] < 1000
