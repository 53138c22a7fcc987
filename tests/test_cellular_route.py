"""The cellular stage tells the MQTT link when the bearer is up or down (``on_route``), and the
data plan counts the link's own bytes where the modem gives no bearer counters.

ModemManager is python-dbusmock's on a private ``dbus-daemon``; the broker is a real
mosquitto; the IP route is :class:`BearerRoute` (test_cellular_stage.py), a relay that only
carries traffic while the mock's bearer is connected — the one fake, named so there.
"""

from __future__ import annotations

import dataclasses
import io
import random
import time
from pathlib import Path
from typing import Any

import dbus
import pytest
from conftest import Broker
from PIL import Image
from store_support import burst_and_verdict, make_cfg, wait_for
from test_cellular_dbus import BEARER_PATH, Mock, bus_address, mock  # noqa: F401
from test_cellular_stage import BearerRoute, Running, session_bus  # noqa: F401

from edge_app.core.clock import SystemClock
from edge_app.core.config import Config
from edge_app.station.receiver import Receiver
from edge_app.trap.cellular.modem import BEARER
from edge_app.trap.cellular.stage import CellularStage, make_cellular, mqtt_work
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.mqtt import LinkState, MqttLink
from edge_app.trap.uplink.mqtt_session import HELD_RETRY_S

pytestmark = pytest.mark.broker


def route_cfg(root: Path, port: int, reconnect_s: tuple[float, float],
              **cell: Any) -> Config:
    return make_cfg(root, port,
                    mqtt={"stats_interval_s": 0, "reconnect_min_s": reconnect_s[0],
                          "reconnect_max_s": reconnect_s[1]},
                    outbox={"image_expiry_s": 0},
                    cellular={"enabled": True, "mode": "always", "signal_rate_s": 0, **cell})


class Trap:
    """Store, MQTT link and cellular stage wired as the daemon wires them (``on_route``,
    the store's wake of both), on their own threads; a ranger receiving alerts and media."""

    def __init__(self, cfg: Config, broker_port: int, route: bool = True) -> None:
        self.store = EventStore(cfg)
        self.store.open()
        self.link = MqttLink(cfg, self.store.db_path, rng=random.Random(5))
        stage = make_cellular(cfg, SystemClock(), lambda: mqtt_work(self.store, self.link))
        assert isinstance(stage, CellularStage)
        self.stage = stage
        if route:
            stage.on_route = self.link.route
        self.store.notify = lambda: (self.link.wake(), stage.wake())
        self.alerts: list[tuple[float, str]] = []
        self.media: list[str] = []
        self.ranger = Receiver("127.0.0.1", broker_port, client_id="ranger-route",
                               store_dir=Path(cfg.storage.root).parent / "station",
                               on_alert=lambda a: self.alerts.append(
                                   (time.monotonic(), str(a.get("id")))),
                               on_media=lambda unit, mid, path: self.media.append(mid))
        self.ranger.start()
        assert self.ranger.wait_connected(10)
        self.uplink = Running("uplink", self.link.run, self.link.wake)
        self.cell = Running("cellular", stage.run, stage.wake)

    def close(self) -> None:
        self.cell.stop()
        self.uplink.stop()
        self.ranger.stop()
        self.store.close()


def recorded_id(store: EventStore, noisy: bool = False) -> str:
    """Store an alert; ``noisy``: its frames are JPEGs of noise (~100 kB, incompressible)."""
    burst, verdict = burst_and_verdict("alert")
    if noisy:
        rng = random.Random(11)
        out = io.BytesIO()
        Image.frombytes("RGB", (320, 240), rng.randbytes(320 * 240 * 3)).save(
            out, "JPEG", quality=90)
        burst = dataclasses.replace(burst, frames=tuple(
            dataclasses.replace(f, jpeg=out.getvalue()) for f in burst.frames))
    rec = store.record(burst, verdict)
    assert rec is not None
    return rec.event_id


def drop_registration(mm: Mock) -> None:
    """Registration lost: the bearer goes down and the modem searches."""
    mm.obj(BEARER_PATH).UpdateProperties(BEARER, {"Connected": False})
    mm.set_modem(State=dbus.Int32(7))


def test_the_bearer_back_up_brings_mqtt_back_at_once_not_after_its_backoff(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    route = BearerRoute(session_bus, broker.port)
    # a reconnect backoff of 10-20 s: without the hook, MQTT comes back >= 5 s after a drop
    cfg = route_cfg(tmp_path / "data", route.port, (10.0, 20.0))
    trap = Trap(cfg, broker.port)
    try:
        wait_for(lambda: trap.link.state is LinkState.CONNECTED, timeout_s=15,
                 what="MQTT up over the bearer")
        drop_registration(mock)
        wait_for(lambda: trap.link.state is not LinkState.CONNECTED, timeout_s=10,
                 what="MQTT down with the bearer")
        event_id = recorded_id(trap.store)
        time.sleep(1.5)  # the modem searches; the alert waits in the outbox
        assert trap.alerts == []
        assert len(mock.calls("Connect")) == 1
        mock.set_modem(State=dbus.Int32(8))  # registered again: the stage connects
        wait_for(lambda: len(mock.calls("Connect")) == 2, timeout_s=10, what="reconnect")
        up = time.monotonic()
        wait_for(lambda: any(e == event_id for _t, e in trap.alerts), timeout_s=10,
                 what="the alert queued while down")
        delivered_s = next(t for t, e in trap.alerts if e == event_id) - up
        assert delivered_s < 4.0, f"{delivered_s:.1f} s: the link waited out its backoff"
        assert trap.link.stats().route_nudges >= 2  # the first connect, the reconnect
        assert route.cuts == 1
        print(f"\nalert delivered {delivered_s:.2f} s after the bearer came back "
              f"(MQTT backoff 10-20 s)")
    finally:
        trap.close()
        route.close()


def test_while_the_bearer_is_down_mqtt_spends_no_reconnect_attempts(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    route = BearerRoute(session_bus, broker.port)
    cfg = route_cfg(tmp_path / "data", route.port, (0.3, 0.5))  # would retry ~3 times a s
    trap = Trap(cfg, broker.port)
    try:
        wait_for(lambda: trap.link.state is LinkState.CONNECTED, timeout_s=15,
                 what="MQTT up")
        drop_registration(mock)
        wait_for(lambda: trap.link.state is not LinkState.CONNECTED, timeout_s=10,
                 what="MQTT down with the bearer")
        before = route.refused
        time.sleep(4.0)
        attempts = route.refused - before
        # at most the one attempt paho had already scheduled when the hold came
        assert attempts <= 1, f"{attempts} reconnect attempts with the bearer down"
        assert trap.link.reconnects_held
        event_id = recorded_id(trap.store)
        mock.set_modem(State=dbus.Int32(8))
        wait_for(lambda: any(e == event_id for _t, e in trap.alerts), timeout_s=10,
                 what="the alert after the bearer came back")
        assert not trap.link.reconnects_held
        print(f"\n{attempts} reconnect attempt(s) in 4 s with the bearer down "
              f"(held retry every {HELD_RETRY_S:.0f} s)")
    finally:
        trap.close()
        route.close()


def test_no_modem_leaves_mqtt_on_its_own_backoff(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    """No modem to say whether there is a route (another interface may carry it): the link
    is not held, and connects directly to the broker as without cellular."""
    cfg = route_cfg(tmp_path / "data", broker.port, (0.3, 0.5))
    trap = Trap(cfg, broker.port)
    try:
        wait_for(lambda: trap.stage.stats_.steps >= 1, timeout_s=10, what="a step")
        assert trap.stage.stats()["link"]["state"] == "no modem"
        event_id = recorded_id(trap.store)
        wait_for(lambda: any(e == event_id for _t, e in trap.alerts), timeout_s=10,
                 what="the alert over the other route")
        assert not trap.link.reconnects_held
    finally:
        trap.close()


def test_without_bearer_counters_the_plan_counts_the_links_own_bytes(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    route = BearerRoute(session_bus, broker.port)
    cfg = route_cfg(tmp_path / "data", route.port, (0.3, 0.5), plan_mb=500)
    trap = Trap(cfg, broker.port)
    try:
        wait_for(lambda: trap.link.state is LinkState.CONNECTED, timeout_s=15,
                 what="MQTT up")
        # this modem reports no counters: the bearer's Stats are empty
        mock.obj(BEARER_PATH).UpdateProperties(
            BEARER, {"Stats": dbus.Dictionary({}, signature="sv")})
        event_id = recorded_id(trap.store, noisy=True)
        wait_for(lambda: any(e == event_id for _t, e in trap.alerts), timeout_s=10,
                 what="the alert")
        wait_for(lambda: sum(trap.store.outbox.depth("mqtt").values()) == 0, timeout_s=20,
                 what="thumbnail and image sent")
        media = sum(p.stat().st_size for p in (tmp_path / "data").rglob("*.jpg"))
        assert media > 50_000
        trap.stage.wake()
        wait_for(lambda: trap.stage.stats()["data"]["used_mb"] * 1e6 >= media, timeout_s=10,
                 what="the link's bytes counted")
        data = trap.stage.stats()["data"]
        assert data["source"] == "app"
        used = data["used_mb"] * 1e6
        # everything the link wrote and read, TCP/IP headers estimated: more than the media,
        # not wildly more (alerts, events, the CONNECT, receipts: a few kB)
        assert media < used < media * 1.3 + 20_000, (media, used)
        assert trap.link.socket_bytes.kernel
        print(f"\nmedia {media} B; counted by the link {used:.0f} B "
              f"(+{(used - media) / media * 100:.1f} %)")
    finally:
        trap.close()
        route.close()
