"""The ModemManager adapter on a real D-Bus: a private ``dbus-daemon --session`` and
python-dbusmock's ``modemmanager`` template in its own process.

The template gives the manager object and ``AddSimpleModem`` (a modem with the Modem, 3GPP
interfaces); each test adds what ModemManager has and the template lacks — Modem.Enable,
Simple.Connect/Disconnect with a bearer and its Stats, the Signal interface, the 3GPP
registration state — with dbusmock's ``AddMethod``/``AddProperties``, so the code under test
speaks real D-Bus to a fake ModemManager (the fake is the mock process; nothing of ours is
faked). The control side uses dbus-python, which dbusmock needs anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dbus
import pytest

from edge_app.core.clock import FakeClock
from edge_app.trap.cellular.budget import DataBudget
from edge_app.trap.cellular.config import parse_cellular
from edge_app.trap.cellular.link import CellularLink
from edge_app.trap.cellular.modem import (
    BEARER,
    BUS_NAME,
    GPP,
    MODEM,
    ROOT,
    SIGNAL,
    SIMPLE,
    ModemManagerClient,
)
from edge_app.trap.cellular.policy import LinkObservation, LinkPolicy

MOCK = "org.freedesktop.DBus.Mock"
MODEM_PATH = "/org/freedesktop/ModemManager1/Modems/8"
BEARER_PATH = "/org/freedesktop/ModemManager1/Bearer/0"


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def bus_address(tmp_path: Path) -> Iterator[str]:
    """A private session bus; fails (never skips) when dbus-daemon is missing."""
    exe = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
    if not os.path.exists(exe):
        pytest.fail("dbus-daemon is not installed (apt-get install dbus-daemon)")
    proc = subprocess.Popen([exe, "--session", "--nofork", "--print-address=1"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    assert address.startswith(("unix:", "tcp:")), address
    yield address
    proc.terminate()
    proc.wait(timeout=10)


class Mock:
    """python-dbusmock's ModemManager template in a child process on the private bus."""

    def __init__(self, address: str, log: Path) -> None:
        env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--session", "-t", "modemmanager", "-l",
             str(log)], env=env, stdout=subprocess.DEVNULL)
        self.bus = dbus.bus.BusConnection(address)
        wait_until(lambda: bool(self.bus.name_has_owner(BUS_NAME)), what="the mock's name")

    def obj(self, path: str = ROOT) -> Any:
        return dbus.Interface(self.bus.get_object(BUS_NAME, path), MOCK)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.bus.close()

    def add_lte_modem(self, state: int = 6) -> None:
        """The template's modem plus what a real LTE modem under ModemManager has."""
        self.obj().AddSimpleModem()
        m = self.obj(MODEM_PATH)
        m.AddProperties(MODEM, {"Bearers": dbus.Array([], signature="o")})
        m.UpdateProperties(MODEM, {"State": dbus.Int32(state)})
        m.AddProperties(GPP, {"RegistrationState": dbus.UInt32(1 if state >= 8 else 0)})
        m.AddMethod(MODEM, "Enable", "b", "",
                    "self.UpdateProperties('org.freedesktop.ModemManager1.Modem', "
                    "{'State': dbus.Int32(8 if args[0] else 3)})")
        m.AddProperties(SIGNAL, {
            "Rate": dbus.UInt32(0),
            "Lte": dbus.Dictionary({"rssi": -71.0, "rsrp": -101.0, "rsrq": -11.0,
                                    "snr": 7.5}, signature="sv"),
            "Gsm": dbus.Dictionary({}, signature="sv")})
        m.AddMethod(SIGNAL, "Setup", "u", "",
                    "self.UpdateProperties('org.freedesktop.ModemManager1.Modem.Signal', "
                    "{'Rate': dbus.UInt32(args[0])})")
        m.AddMethod(SIMPLE, "Connect", "a{sv}", "o", CONNECT_CODE)
        m.AddMethod(SIMPLE, "Disconnect", "o", "", DISCONNECT_CODE)

    def set_modem(self, **props: Any) -> None:
        self.obj(MODEM_PATH).UpdateProperties(MODEM, props)

    def set_stats(self, rx: int, tx: int) -> None:
        self.obj(BEARER_PATH).UpdateProperties(BEARER, {"Stats": dbus.Dictionary(
            {"rx-bytes": dbus.UInt64(rx), "tx-bytes": dbus.UInt64(tx)}, signature="sv")})

    def calls(self, method: str) -> list[Any]:
        return [list(c[1]) for c in self.obj(MODEM_PATH).GetMethodCalls(method)]


CONNECT_CODE = """
if self.Get('org.freedesktop.ModemManager1.Modem', 'State') < 8:
    raise dbus.exceptions.DBusException('not registered',
        name='org.freedesktop.ModemManager1.Error.Core.WrongState')
path = '/org/freedesktop/ModemManager1/Bearer/0'
if path not in objects:
    self.AddObject(path, 'org.freedesktop.ModemManager1.Bearer',
        {'Connected': dbus.Boolean(False), 'Interface': dbus.String('wwan0'),
         'Stats': dbus.Dictionary({}, signature='sv')}, [])
objects[path].UpdateProperties('org.freedesktop.ModemManager1.Bearer', {
    'Connected': dbus.Boolean(True),
    'Stats': dbus.Dictionary({'rx-bytes': dbus.UInt64(0), 'tx-bytes': dbus.UInt64(0)},
                             signature='sv')})
self.UpdateProperties('org.freedesktop.ModemManager1.Modem', {'State': dbus.Int32(11),
    'Bearers': dbus.Array([dbus.ObjectPath(path)], signature='o')})
ret = dbus.ObjectPath(path)
"""

DISCONNECT_CODE = """
path = '/org/freedesktop/ModemManager1/Bearer/0'
if path in objects:
    objects[path].UpdateProperties('org.freedesktop.ModemManager1.Bearer',
                                   {'Connected': dbus.Boolean(False)})
self.UpdateProperties('org.freedesktop.ModemManager1.Modem', {'State': dbus.Int32(8)})
"""


@pytest.fixture
def mock(bus_address: str, tmp_path: Path) -> Iterator[Mock]:
    m = Mock(bus_address, tmp_path / "dbusmock.log")
    yield m
    m.close()


@pytest.fixture
def client(bus_address: str) -> Iterator[ModemManagerClient]:
    c = ModemManagerClient(bus_address, timeout_s=5.0, connect_timeout_s=5.0)
    yield c
    c.close()


def test_no_modemmanager_on_the_bus_is_a_state_not_an_exception(
        client: ModemManagerClient) -> None:
    snap = client.snapshot()
    assert snap.state == "absent"
    assert client.errors["no-modemmanager"] == 1
    assert client.enable(True) is False
    assert client.connect() is None


def test_unreachable_bus_is_counted(tmp_path: Path) -> None:
    clock = FakeClock(start_mono=0.0)
    c = ModemManagerClient(f"unix:path={tmp_path}/nobus", timeout_s=1.0, clock=clock)
    assert c.snapshot().state == "absent"
    assert c.wait_for_change(30.0) is False
    assert clock.monotonic() == 30.0  # waited the timeout out: a loop around it cannot spin
    assert c.errors["bus"] >= 2


def test_modem_absent_then_appears_late(mock: Mock, client: ModemManagerClient) -> None:
    assert client.snapshot().state == "absent"
    assert client.errors == {}
    assert client.wait_for_change(0.05) is False
    mock.add_lte_modem()
    assert client.wait_for_change(5.0) is True  # InterfacesAdded woke it
    snap = client.snapshot()
    assert snap.state == "enabled"
    assert snap.path == MODEM_PATH
    assert snap.technologies == ("lte",)
    assert snap.signal_percent == 70
    assert snap.operator_name == "TheOperator"
    assert snap.operator_code == "00101"
    assert snap.bearer is None


def test_enable_disable_connect_disconnect_reach_the_mock(
        mock: Mock, client: ModemManagerClient) -> None:
    mock.add_lte_modem(state=3)
    cfg = parse_cellular({"enabled": True, "mode": "always"})
    policy = LinkPolicy(cfg, start_mono=0.0)
    steps: list[str] = []
    for t in range(8):
        snap = client.snapshot()
        d = policy.decide(LinkObservation(mono=float(t), wall=1.79e9 + t, modem=snap.state))
        steps.append(d.action)
        if d.action == "enable-modem":
            assert client.enable(True)
        elif d.action == "connect":
            assert client.connect("internet") == BEARER_PATH
        elif snap.state == "connected":
            break
    assert steps[:3] == ["enable-modem", "connect", "none"]
    assert mock.calls("Enable") == [[True]]
    assert mock.calls("Connect") == [[{"apn": "internet"}]]
    snap = client.snapshot()
    assert snap.bearer == BEARER_PATH
    assert snap.bearer_connected
    assert client.disconnect()
    assert mock.calls("Disconnect") == [["/"]]
    assert client.snapshot().state == "registered"
    assert client.enable(False)
    assert client.snapshot().state == "disabled"


def test_signal_measurements_after_setup(mock: Mock, client: ModemManagerClient) -> None:
    mock.add_lte_modem()
    assert client.snapshot().signal == {}  # not asked for yet
    assert client.setup_signal(30)
    assert mock.calls("Setup") == [[30]]
    snap = client.snapshot()
    assert snap.signal == {"tech": "lte", "rssi": -71.0, "rsrp": -101.0, "rsrq": -11.0,
                           "sinr": 7.5}
    assert snap.to_json()["technology"] == "lte"


def test_no_signal(mock: Mock, client: ModemManagerClient) -> None:
    mock.add_lte_modem(state=7)
    m = mock.obj(MODEM_PATH)
    m.UpdateProperties(MODEM, {"SignalQuality": dbus.Struct((dbus.UInt32(0), True))})
    m.UpdateProperties(SIGNAL, {"Lte": dbus.Dictionary({}, signature="sv")})
    m.UpdateProperties(GPP, {"RegistrationState": dbus.UInt32(2)})
    assert client.setup_signal(30)
    snap = client.snapshot()
    assert (snap.state, snap.signal_percent, snap.signal) == ("searching", 0, {})
    assert snap.registration == "searching"
    # the policy waits for a network instead of hammering Connect
    policy = LinkPolicy(parse_cellular({"mode": "always"}), start_mono=0.0)
    d = policy.decide(LinkObservation(mono=0.0, wall=1.79e9, modem=snap.state,
                                      signal_percent=snap.signal_percent))
    assert d.action == "none"
    assert "waiting for a network" in d.reason
    assert client.connect() is None  # Simple.Connect refused: counted, not raised
    assert client.errors["connect"] == 1


def test_registration_lost_and_bearer_drop_keep_the_budget_right(
        mock: Mock, client: ModemManagerClient) -> None:
    mock.add_lte_modem(state=8)
    budget = DataBudget(500, 1, 0.1, ZoneInfo("UTC"), wall=1.79e9)
    assert client.connect() == BEARER_PATH
    mock.set_stats(rx=50_000, tx=20_000)
    snap = client.snapshot()
    assert (snap.rx_bytes, snap.tx_bytes) == (50_000, 20_000)
    assert snap.bearer is not None
    assert snap.rx_bytes is not None
    assert snap.tx_bytes is not None
    assert budget.observe_bearer(snap.bearer, snap.rx_bytes, snap.tx_bytes, 1.79e9) == 70_000
    # registration lost mid-upload: the bearer drops, the modem searches
    mock.obj(BEARER_PATH).UpdateProperties(BEARER, {"Connected": False})
    mock.set_modem(State=dbus.Int32(7))
    mock.obj(MODEM_PATH).UpdateProperties(GPP, {"RegistrationState": dbus.UInt32(2)})
    assert client.wait_for_change(5.0)
    snap = client.snapshot()
    assert (snap.state, snap.registration, snap.bearer_connected) == (
        "searching", "searching", False)
    assert client.connect() is None  # not registered: refused, counted
    # the network is back; the bearer reconnects with its counters from zero
    mock.set_modem(State=dbus.Int32(8))
    mock.obj(MODEM_PATH).UpdateProperties(GPP, {"RegistrationState": dbus.UInt32(1)})
    assert client.connect() == BEARER_PATH
    mock.set_stats(rx=3_000, tx=1_000)
    snap = client.snapshot()
    assert snap.state == "connected"
    assert snap.registration == "home"
    assert snap.bearer is not None
    assert snap.rx_bytes is not None
    assert snap.tx_bytes is not None
    assert budget.observe_bearer(snap.bearer, snap.rx_bytes, snap.tx_bytes, 1.79e9 + 60) \
        == 4_000
    assert budget.used_bytes() == 74_000


def test_modem_removed_then_back(mock: Mock, client: ModemManagerClient) -> None:
    mock.add_lte_modem(state=8)
    assert client.snapshot().state == "registered"
    mock.obj().RemoveObject(MODEM_PATH)
    mock.obj().RemoveObject("/org/freedesktop/ModemManager1/SIM/2")
    snap = client.snapshot()
    assert snap.state == "absent"
    assert client.errors["read"] >= 1  # the cached path failed once, then it looked again
    mock.add_lte_modem(state=8)
    assert client.snapshot().state == "registered"


def test_link_steps_on_demand_through_a_drop_counting_every_byte(
        mock: Mock, client: ModemManagerClient, tmp_path: Path) -> None:
    """The policy, the budget and the client together: nothing counted twice or lost."""
    mock.add_lte_modem(state=3)
    clock = FakeClock(start_mono=0.0, start_wall=1.79e9)
    cfg = parse_cellular({"enabled": True, "mode": "on-demand", "status_every_s": 0,
                          "idle_disconnect_s": 60, "signal_rate_s": 30, "apn": "internet"})
    state = tmp_path / "data_budget.json"
    link = CellularLink(LinkPolicy(cfg, 0.0), DataBudget(500, 1, 0.1, ZoneInfo("UTC"),
                                                         clock.wall()),
                        client, clock, apn=cfg.apn, signal_rate_s=cfg.signal_rate_s,
                        state_path=state)
    assert link.step().decision.action == "none"  # disabled and nothing to send
    assert [link.step(outbox_depth=1).decision.action for _ in range(3)] == [
        "enable-modem", "connect", "none"]
    assert mock.calls("Setup") == [[30]]
    mock.set_stats(rx=40_000, tx=400_000)  # an image went up
    clock.advance(5)
    link.step(outbox_depth=1, in_flight=1)
    # the bearer drops mid-upload and the modem re-registers
    mock.obj(BEARER_PATH).UpdateProperties(BEARER, {"Connected": False})
    mock.set_modem(State=dbus.Int32(8))
    clock.advance(5)
    assert link.step(outbox_depth=1, in_flight=1).decision.action == "connect"
    mock.set_stats(rx=1_000, tx=200_000)  # counters from zero: the retry went up
    clock.advance(5)
    link.step(last_activity_mono=15.0)
    clock.advance(60)
    assert link.step(last_activity_mono=15.0).decision.action == "disconnect"
    assert link.step().decision.action == "disable-modem"
    assert mock.calls("Disconnect") == [["/"]]
    assert mock.calls("Enable") == [[True], [False]]
    assert link.budget.used_bytes() == 440_000 + 201_000
    saved = DataBudget.load(state)
    assert saved is not None
    assert saved.bearer_bytes == 641_000
    assert link.step().decision.action == "none"
    stats = link.stats()
    assert stats["data"]["used_mb"] == pytest.approx(0.641)
    assert stats["signal"]["state"] == "disabled"
    assert stats["signal"]["operator"] == "TheOperator"
