"""``camtrap doctor``'s cellular line against ModemManager served by python-dbusmock on a real
private bus (the fixtures of test_cellular_dbus.py), and the data budget's saved state."""

from __future__ import annotations

import time
from pathlib import Path
from zoneinfo import ZoneInfo

import dbus
from store_support import make_cfg
from test_cellular_dbus import MODEM_PATH, Mock, bus_address, mock  # noqa: F401 (fixtures)

from edge_app.core.config import Config
from edge_app.trap.cellular.budget import DataBudget
from edge_app.trap.cellular.modem import MODEM
from edge_app.trap.cellular.stage import STATE_FILE
from edge_app.trap.doctor.cellular import check_cellular
from edge_app.trap.doctor.context import Ctx, Probes
from edge_app.trap.doctor.run import steps


def cfg_for(root: Path, **cell: object) -> Config:
    return make_cfg(root, outbox={"image_expiry_s": 0},
                    cellular={"enabled": True, "plan_mb": 500.0, **cell})


def spend(root: Path, mb: float, days_ago: float) -> None:
    """A saved month: ``mb`` used since ``days_ago`` days (the start of counting)."""
    now = time.time()
    b = DataBudget(500.0, 1, 0.1, ZoneInfo("UTC"), now - days_ago * 86400)
    b.state.tracked_since = max(b.state.cycle_start, now - days_ago * 86400)
    b.observe_bearer("/b/0", 0, int(mb * 1e6), now)
    root.mkdir(parents=True, exist_ok=True)
    b.save(root / STATE_FILE)


def test_the_line_sits_before_mqtt_and_skips_when_off(tmp_path: Path) -> None:
    names = [n for n, _fn, _fix in steps()]
    assert names.index("cellular") == names.index("mqtt") - 1
    c = check_cellular(Ctx(make_cfg(tmp_path)))
    assert c.status == "skip"


def test_no_modemmanager_fails_with_a_fix(tmp_path: Path, bus_address: str) -> None:  # noqa: F811
    c = check_cellular(Ctx(cfg_for(tmp_path), probes=Probes(modem_bus=bus_address)))
    assert c.status == "fail"
    assert "no modem" in c.detail
    assert "mmcli -L" in c.fix


def test_registered_modem_with_plan_to_spare_passes(
        tmp_path: Path, mock: Mock, bus_address: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    spend(tmp_path, 10.0, days_ago=1)
    c = check_cellular(Ctx(cfg_for(tmp_path), probes=Probes(modem_bus=bus_address)))
    assert c.status == "pass", c
    assert "registered" in c.detail
    assert "TheOperator" in c.detail
    assert "signal 70 %" in c.detail
    assert "data 10.0 of 500 MB" in c.detail


def test_warns_before_the_plan_runs_out(
        tmp_path: Path, mock: Mock, bus_address: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    spend(tmp_path, 300.0, days_ago=1)  # 300 MB in a day: far past the plan by month end
    c = check_cellular(Ctx(cfg_for(tmp_path), probes=Probes(modem_bus=bus_address)))
    assert c.status == "warn", c
    assert "projected" in c.detail
    assert "cellular.plan_mb" in c.fix


def test_no_network_warns(tmp_path: Path, mock: Mock, bus_address: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=7)
    mock.obj(MODEM_PATH).UpdateProperties(MODEM, {
        "SignalQuality": dbus.Struct((dbus.UInt32(0), True))})
    c = check_cellular(Ctx(cfg_for(tmp_path), probes=Probes(modem_bus=bus_address)))
    assert c.status == "warn", c
    assert "no network" in c.detail
    assert "antenna" in c.fix
