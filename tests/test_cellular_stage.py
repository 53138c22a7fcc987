"""The cellular stage in the running trap's shape: the store queues, the MQTT link sends over a
real mosquitto, the stage brings the bearer up and down through ModemManager on a real
``dbus-daemon`` (python-dbusmock's template, the fixtures of test_cellular_dbus.py).

The IP route itself is the one fake here: :class:`BearerRoute`, a TCP relay between the trap
and the broker that carries traffic only while the mock's bearer is connected, and cuts every
connection when it drops — what the trap sees of an LTE bearer going down.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dbus
import pytest
from conftest import Broker
from store_support import burst_and_verdict, make_cfg, wait_for
from test_cellular_dbus import BEARER_PATH, Mock, bus_address, mock  # noqa: F401 (fixtures)

from edge_app.core.clock import SystemClock
from edge_app.core.config import Config
from edge_app.sim.broker import free_port
from edge_app.station.receiver import Receiver
from edge_app.station.web.fleet_view import unit_health
from edge_app.trap.cellular.modem import BEARER
from edge_app.trap.cellular.stage import BEAT_S, CellularStage, LinkWork, make_cellular, mqtt_work
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.mqtt import LinkState, MqttLink

pytestmark = pytest.mark.broker

PROPS = "org.freedesktop.DBus.Properties"


class BearerRoute:
    """A fake IP route (see the module docstring): relays TCP to ``target`` while the mock's
    bearer is connected; one thread, select-driven; the bearer is read over its own D-Bus
    connection every 50 ms. ``rate``: bytes per second it carries (0: as fast as it can), a
    slow LTE uplink so a transfer can be cut halfway."""

    def __init__(self, address: str, target: int, rate: float = 0.0) -> None:
        self.port = free_port()
        self._address, self._target, self._rate = address, target, rate
        self._stop = threading.Event()
        self.cuts = 0
        self.refused = 0  # connection attempts while the bearer was down
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._run, name="route", daemon=True)
        self._thread.start()

    def _up(self, bus: Any) -> bool:
        try:
            obj = bus.get_object("org.freedesktop.ModemManager1", BEARER_PATH)
            return bool(obj.Get(BEARER, "Connected", dbus_interface=PROPS))
        except dbus.exceptions.DBusException:
            return False

    def _run(self) -> None:
        bus = dbus.bus.BusConnection(self._address)
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        pairs: dict[socket.socket, socket.socket] = {}

        def drop(s: socket.socket) -> None:
            other = pairs.pop(s, None)
            for x in (s, other):
                if x is not None:
                    pairs.pop(x, None)
                    with contextlib.suppress(KeyError, ValueError):
                        sel.unregister(x)
                    x.close()

        up = False
        next_look = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_look:
                up, next_look = self._up(bus), time.monotonic() + 0.05
                if not up and pairs:
                    self.cuts += 1
                    for s in list(pairs):
                        drop(s)
            for key, _ in sel.select(0.05):
                if time.monotonic() >= next_look:
                    break  # look at the bearer between two reads, also on a busy route
                if key.data is None:
                    conn, _addr = self._listener.accept()
                    if not up:
                        conn.close()  # no route
                        self.refused += 1
                        continue
                    out = socket.create_connection(("127.0.0.1", self._target))
                    pairs[conn], pairs[out] = out, conn
                    sel.register(conn, selectors.EVENT_READ, "c")
                    sel.register(out, selectors.EVENT_READ, "c")
                    continue
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(int(min(65536, max(1024, self._rate / 20)))
                                  if self._rate else 65536)
                except OSError:
                    data = b""
                if not data or s not in pairs:
                    drop(s)
                    continue
                with contextlib.suppress(OSError):
                    pairs[s].sendall(data)
                if self._rate:
                    time.sleep(len(data) / self._rate)
        for s in list(pairs):
            drop(s)
        self._listener.close()
        bus.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Running:
    """A thread running a stage loop (the uplink's or the cellular one)."""

    def __init__(self, name: str, target: Any, wake: Any) -> None:
        self.stop_event = threading.Event()
        self._wake = wake
        self.thread = threading.Thread(target=target, args=(self.stop_event,), name=name,
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self._wake()
        self.thread.join(10)
        assert not self.thread.is_alive()


def cellular_cfg(root: Path, port: int, **cell: Any) -> Config:
    return make_cfg(root, port, mqtt={"stats_interval_s": 0}, outbox={"image_expiry_s": 0},
                    cellular={"enabled": True, "mode": "on-demand", "status_every_s": 0,
                              "idle_disconnect_s": 5, "signal_rate_s": 30, **cell})


@pytest.fixture
def session_bus(bus_address: str,  # noqa: F811
                monkeypatch: pytest.MonkeyPatch) -> str:
    """The sim backend finds ModemManager on the session bus: this test's private one."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus_address)
    return bus_address


def test_on_demand_up_for_an_alert_down_when_idle_and_the_session_survives(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=3)  # disabled: radio off until there is work
    route = BearerRoute(session_bus, broker.port)
    cfg = cellular_cfg(tmp_path / "data", route.port)
    applied: list[Config] = []
    store = EventStore(cfg)
    store.open()
    link = MqttLink(cfg, store.db_path, rng=random.Random(3), on_config=applied.append)
    stage = make_cellular(cfg, SystemClock(), lambda: mqtt_work(store, link))
    assert stage is not None
    store.notify = lambda: (link.wake(), stage.wake())
    ranger = Receiver("127.0.0.1", broker.port, client_id="ranger-cell")
    ranger.start()
    assert ranger.wait_connected(10)
    uplink = Running("uplink", link.run, link.wake)
    cell = Running("cellular", stage.run, stage.wake)
    try:
        time.sleep(0.5)  # nothing queued: the modem stays off
        assert mock.calls("Connect") == []
        assert link.state is not LinkState.CONNECTED
        t0 = time.monotonic()
        store.record(*burst_and_verdict("alert"))
        wait_for(lambda: mock.calls("Connect") == [[{}]], timeout_s=10, what="connect")
        up_s = time.monotonic() - t0
        wait_for(lambda: sum(store.outbox.depth("mqtt").values()) == 0, timeout_s=20,
                 what="the alert delivered and receipted")
        wait_for(lambda: mock.calls("Disconnect") == [["/"]], timeout_s=20,
                 what="disconnect after idle")
        wait_for(lambda: link.state is not LinkState.CONNECTED, timeout_s=10,
                 what="MQTT down with the bearer")
        assert route.cuts == 1
        assert mock.calls("Enable")[-1] == [False]  # radio off again
        # offline: the station sends a command; the broker keeps it in the trap's session
        cid = ranger.send_command("T-1", "config/set", {"values": {"mqtt.send_images": False}})
        assert cid
        time.sleep(1.0)
        assert applied == []
        store.record(*burst_and_verdict("alert"))  # the next alert brings the link up
        wait_for(lambda: len(mock.calls("Connect")) == 2, timeout_s=10, what="reconnect")
        wait_for(lambda: [c.mqtt.send_images for c in applied] == [False], timeout_s=20,
                 what="the command sent while offline, applied")
        assert stage.stats_.connects == 2
        assert stage.stats_.disconnects == 1
        s = stage.stats()
        assert s["link"]["connects"] == 2
        assert s["signal"]["operator"] == "TheOperator"
        assert s["signal"]["rsrp"] == -101.0
        print(f"\nconnect {up_s:.2f} s after the alert was queued; "
              f"{stage.stats_.steps} steps in {time.monotonic() - t0:.1f} s")
    finally:
        cell.stop()
        uplink.stop()
        ranger.stop()
        route.close()
        store.close()


def test_an_idle_stage_sleeps_and_a_wake_steps_it_at_once(
        tmp_path: Path, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=3)
    work = {"depth": 0}
    cfg = cellular_cfg(tmp_path / "data", 1883)
    stage = make_cellular(cfg, SystemClock(),
                          lambda: LinkWork(outbox_depth=work["depth"]))
    assert isinstance(stage, CellularStage)
    run = Running("cellular", stage.run, stage.wake)
    try:
        wait_for(lambda: stage.stats_.steps >= 1, timeout_s=5, what="first step")
        time.sleep(2.0)
        assert stage.stats_.steps <= 2, "an idle stage must sleep, not poll"
        assert stage.last_step is not None
        assert stage.last_step.decision.next_check_mono - time.monotonic() > BEAT_S - 5
        work["depth"] = 1
        t0 = time.monotonic()
        stage.wake()
        wait_for(lambda: mock.calls("Enable") == [[True]], timeout_s=2, what="woken step")
        assert time.monotonic() - t0 < 1.0
        wait_for(lambda: stage.stats()["link"]["state"] == "up", timeout_s=10,
                 what="bearer up")
    finally:
        run.stop()


def test_stats_and_the_fleet_view_show_signal_data_and_flags(
        tmp_path: Path, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    cfg = cellular_cfg(tmp_path / "data", 1883, mode="always", plan_mb=1.0)
    stage = make_cellular(cfg, SystemClock(), lambda: LinkWork())
    assert stage is not None
    stage.step()  # connect
    mock.set_stats(rx=300_000, tx=650_000)
    stage.step()
    s = stage.stats()
    assert s["signal"]["bearer_up"] is True
    assert (s["signal"]["state"], s["signal"]["technology"], s["signal"]["quality"]) == (
        "connected", "lte", 70)
    assert s["signal"]["sinr"] == 7.5
    assert s["link"]["state"] == "up"
    assert s["data"]["used_mb"] == pytest.approx(0.95)
    assert s["data"]["plan_mb"] == 1.0
    assert {"projected_mb", "held_images", "images_waiting", "cycle_end"} <= set(s["data"])
    now = time.time()
    h = unit_health({"state": "online", "last_seen": now, "stats": {"cellular": s}}, "T-1",
                    now, 300)
    assert h.link is not None
    assert "LTE lte 70 %" in h.link
    assert "RSRP \u2212101 dBm" in h.link
    assert "1.0/1 MB" in h.link or "0.9/1 MB" in h.link
    assert "data plan 95 % used" in h.flags
    mock.set_modem(State=dbus.Int32(7), SignalQuality=dbus.Struct((dbus.UInt32(0), True)))
    stage.link.client.close()
    stage.step()
    h = unit_health({"state": "online", "last_seen": now, "stats": {"cellular": stage.stats()}},
                    "T-1", now, 300)
    assert "no signal" in h.flags
    stage.link.client.close(final=True)


def test_images_held_by_the_budget_are_counted_in_stats(
        tmp_path: Path, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    cfg = cellular_cfg(tmp_path / "data", 1883, plan_mb=1.0)
    stage = make_cellular(cfg, SystemClock(), lambda: LinkWork(3, 0, None, 2))
    assert stage is not None
    stage.step()
    mock.set_stats(rx=0, tx=950_000)
    stage.step()
    wall = time.time()
    assert stage.allows_image(10_000, wall) is False
    assert stage.allows_image(10_000, wall) is False
    s = stage.stats()
    assert s["data"]["held_images"] == 2
    assert s["data"]["images_waiting"] == 2
    saved = (tmp_path / "data" / "data_budget.json").read_text()
    assert '"held_images": 2' in saved
    stage.link.client.close(final=True)

