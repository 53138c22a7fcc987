"""station.toml: ``camtrap station check`` refuses what ``camtrap station`` would, naming
the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_app.core.errors import ConfigError
from edge_app.station import config

REPO = Path(__file__).resolve().parents[1]
GOOD = """
[station]
store = "store"
timezone = "Asia/Vladivostok"
expected_interval_s = 600
[mqtt]
broker = "base.example:8883"
shared_group = "stations"
[web]
port = 8080
public_url = "https://station.example/"
"""


def test_a_good_file_with_paths_resolved_against_its_folder(tmp_path: Path) -> None:
    p = tmp_path / "station.toml"
    p.write_text(GOOD)
    cfg = config.load(p)
    assert cfg.store == tmp_path / "store"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.shared_group) == ("base.example", 8883,
                                                                      "stations")
    assert str(cfg.tz) == "Asia/Vladivostok"
    assert (cfg.web.port, cfg.expected_interval_s) == (8080, 600.0)


@pytest.mark.parametrize(("change", "key"), [
    ('[station]\nstore = "s"\nstroe = "x"\n', "station.stroe"),
    ('[station]\ntimezone = "Mars/Olympus"\nstore = "s"\n', "station.timezone"),
    ("[station]\nexpected_interval_s = nan\nstore = \"s\"\n", "station.expected_interval_s"),
    ('[station]\nstore = "s"\n[mqtt]\nbroker = "mqtts://base:8883"\n', "mqtt.broker"),
    ('[station]\nstore = "s"\n[mqtt]\nbroker = "base"\n', "mqtt.broker"),
    ('[station]\nstore = "s"\n[mqtt]\nshared_group = "a/b"\n', "mqtt.shared_group"),
    ('[station]\nstore = "s"\n[mqtt]\nca_file = "missing.crt"\n', "mqtt.ca_file"),
    ('[station]\nstore = "s"\n[web]\nport = 70000\n', "web.port"),
    ('[station]\nstore = "s"\n[web]\npublic_url = "ftp://x"\n', "web.public_url"),
    ("[mqtt]\n", "station.store"),
    ('[station]\nstore = "s"\n[bogus]\n', "bogus"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, change: str, key: str) -> None:
    p = tmp_path / "station.toml"
    p.write_text(change)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert e.value.key == key
    r = subprocess.run([sys.executable, "-m", "edge_app", "station", "check", "--config",
                        str(p)], capture_output=True, text=True, timeout=60, cwd=REPO,
                       check=False)
    assert r.returncode == 2
    assert f"config error: {key}: " in r.stderr


def test_check_says_ok_and_reads_the_fleet_file(tmp_path: Path) -> None:
    (tmp_path / "fleet.csv").write_text(
        "unit_id,site_name,lat,lon,deployment_id,broker_host\n"
        "LL-042,Kedrovaya 3,43.1,131.9,LL-042-2026-12,base.example\n")
    p = tmp_path / "station.toml"
    p.write_text(GOOD.replace('store = "store"', 'store = "store"\nfleet_file = "fleet.csv"'))
    r = subprocess.run([sys.executable, "-m", "edge_app", "station", "check", "--config",
                        str(p)], capture_output=True, text=True, timeout=60, cwd=REPO,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "fleet " in r.stdout
    assert "1 unit(s)" in r.stdout
    assert r.stdout.rstrip().endswith(": ok")
