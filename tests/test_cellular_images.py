"""Full images the data plan holds, asked for one by one from the station (``images/send``,
and the station page's ``media/request`` for an ``-image``): end to end over a real mosquitto,
with ModemManager from python-dbusmock (a bearer that reports no counters, so the month is
the link's own count) and the IP route of :class:`BearerRoute` (the one fake, named there)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dbus
import pytest
from conftest import Broker
from store_support import wait_for
from test_cellular_dbus import BEARER_PATH, Mock, bus_address, mock  # noqa: F401
from test_cellular_route import recorded_id, route_cfg
from test_cellular_stage import BearerRoute, Running, session_bus  # noqa: F401

from edge_app.core.clock import SystemClock
from edge_app.core.config import Config
from edge_app.station.receiver import Receiver
from edge_app.trap.cellular.budget import DataBudget
from edge_app.trap.cellular.modem import BEARER
from edge_app.trap.cellular.stage import STATE_FILE, CellularStage, make_cellular, mqtt_work
from edge_app.trap.store.outbox import Link
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.mqtt import LinkState, MqttLink

pytestmark = pytest.mark.broker


def spent_month(cfg: Config, used_bytes: int) -> None:
    """The budget's saved state: ``used_bytes`` already counted this month (a trap that has
    been running since the month began)."""
    c = cfg.cellular
    now = time.time()
    b = DataBudget(c.plan_mb, c.cycle_day, c.full_image_margin, ZoneInfo(c.timezone), now)
    b.count_app(used_bytes, now)
    path = Path(cfg.storage.root) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    b.save(path)


class Station:
    """A ranger station's receiver: alerts, media files, command results."""

    def __init__(self, port: int, store: Path) -> None:
        self.alerts: list[str] = []
        self.media: list[str] = []
        self.results: list[dict[str, Any]] = []
        self.rx = Receiver("127.0.0.1", port, client_id="station-img", store_dir=store,
                           on_alert=lambda a: self.alerts.append(str(a.get("id"))),
                           on_media=lambda unit, mid, path: self.media.append(mid),
                           on_result=lambda unit, body: self.results.append(body))
        self.rx.start()
        assert self.rx.wait_connected(10)

    def wait_subscribed(self) -> None:
        """Until the trap answers: its first session subscribes to its commands just after
        the CONNACK, and a command published before that SUBSCRIBE reaches the broker is not
        for anyone (the test's race, not the link's: later sessions keep the subscription).
        The probe changes nothing (an empty event id) and repeats under one id."""
        deadline = time.monotonic() + 10
        while not any(r.get("id") == "probe" for r in self.results):
            assert time.monotonic() < deadline, "the trap never answered a command"
            self.rx.send_command("T-1", "images/send", {"id": "probe", "event": ""})
            time.sleep(0.3)

    def result(self, cmd_id: str) -> dict[str, Any]:
        wait_for(lambda: any(r.get("id") == cmd_id for r in self.results), timeout_s=10,
                 what=f"the result of {cmd_id}")
        return next(r for r in self.results if r.get("id") == cmd_id)


@pytest.fixture
def plan_spent(tmp_path: Path, broker: Broker, mock: Mock,  # noqa: F811
               session_bus: str) -> Any:  # noqa: F811
    mock.add_lte_modem(state=8)
    route = BearerRoute(session_bus, broker.port)
    cfg = route_cfg(tmp_path / "data", route.port, (0.3, 0.5), plan_mb=1.0)
    spent_month(cfg, 950_000)
    store = EventStore(cfg)
    store.open()
    links: list[MqttLink] = []  # the daemon's order: the stage first, the link asks its plan
    stage = make_cellular(cfg, SystemClock(),
                          lambda: mqtt_work(store, links[0] if links else None))
    assert isinstance(stage, CellularStage)
    link = MqttLink(cfg, store.db_path, image_gate=stage.allows_image)
    links.append(link)
    stage.on_route = link.route
    store.notify = lambda: (link.wake(), stage.wake())
    station = Station(broker.port, tmp_path / "station")
    uplink = Running("uplink", link.run, link.wake)
    cell = Running("cellular", stage.run, stage.wake)
    try:
        wait_for(lambda: link.state is LinkState.CONNECTED, timeout_s=15, what="MQTT up")
        station.wait_subscribed()
        # this modem reports no bearer counters: the month is the link's own count
        mock.obj(BEARER_PATH).UpdateProperties(
            BEARER, {"Stats": dbus.Dictionary({}, signature="sv")})
        yield store, link, stage, station
    finally:
        cell.stop()
        uplink.stop()
        station.rx.stop()
        store.close()
        route.close()


def image_state(store: EventStore, event_id: str) -> list[str]:
    return [r.state for r in store.outbox.ls(200, kinds=["image"], links=[Link.MQTT])
            if r.event_id == event_id]


def test_the_station_asks_for_held_images_one_by_one(plan_spent: Any) -> None:
    store, link, stage, station = plan_spent
    first = recorded_id(store, noisy=True)
    second = recorded_id(store, noisy=True)
    wait_for(lambda: {first, second} <= set(station.alerts), timeout_s=15, what="alerts")
    wait_for(lambda: {f"{first}-thumb", f"{second}-thumb"} <= set(station.media),
             timeout_s=15, what="thumbnails")
    wait_for(link.images_held, timeout_s=10, what="the plan holding full images")
    time.sleep(0.5)
    assert image_state(store, first) == ["ready"]
    assert image_state(store, second) == ["ready"]
    assert not any(m.endswith("-image") for m in station.media)
    # held images alone do not keep the bearer up (on-demand would disconnect when idle)
    wait_for(lambda: mqtt_work(store, link).outbox_depth == 0, timeout_s=10,
             what="nothing but held images left")
    assert mqtt_work(store, link).images_waiting == 2
    # once the plan would let them go (the month rolled over), they are work again: nothing
    # else may bring an on-demand bearer up to find out
    assert mqtt_work(store, link, lambda: True).outbox_depth == 2
    assert not stage.images_fit()
    stage.wake()
    wait_for(lambda: stage.stats()["data"]["held_images"] >= 1, timeout_s=5, what="counted")
    used_before = stage.stats()["data"]["used_mb"]

    cmd = station.rx.send_command("T-1", "images/send", {"event": first})
    res = station.result(cmd)
    assert res["ok"], res
    assert (res["event"], res["state"]) == (first, "waiting")
    wait_for(lambda: f"{first}-image" in station.media, timeout_s=15, what="the asked image")
    image_bytes = (Path(store.cfg.storage.root) / next(
        r.media_path for r in store.outbox.ls(200, kinds=["image"]) if r.event_id == first
    )).stat().st_size
    wait_for(lambda: image_state(store, first) in (["sent"], ["acked-by-broker"]),
             timeout_s=10, what="the row sent")
    time.sleep(1.0)
    assert f"{second}-image" not in station.media  # only the one asked for
    assert image_state(store, second) == ["ready"]
    assert link.images_held()
    stage.wake()
    wait_for(lambda: (stage.stats()["data"]["used_mb"] - used_before) * 1e6 >= image_bytes,
             timeout_s=10, what="its bytes counted in the month")
    assert stage.stats()["data"]["source"] == "app"

    # the station page's button (media/request for the whole -image) takes the same door,
    # reusing the row that waits instead of queueing the image twice
    cmd = station.rx.send_command("T-1", "media/request", {"media": f"{second}-image"})
    res = station.result(cmd)
    assert res["ok"], res
    wait_for(lambda: f"{second}-image" in station.media, timeout_s=15, what="second image")
    assert len(store.outbox.ls(200, kinds=["image"])) == 2

    # an image sent already is queued again when asked (the station lost it)
    cmd = station.rx.send_command("T-1", "images/send", {"event": first})
    assert station.result(cmd)["state"] == "queued"
    wait_for(lambda: image_state(store, first) == ["sent", "sent"], timeout_s=15,
             what="the image sent again (the station files it once)")


def test_images_send_refuses_what_it_cannot_do(plan_spent: Any) -> None:
    store, _link, _stage, station = plan_spent
    for body, error in [({"event": "T-1-999"}, "no event"),
                        ({"event": ""}, "'event' must be"),
                        ({"event": "T-1-1", "extra": 1}, "unknown field")]:
        res = station.result(station.rx.send_command("T-1", "images/send", body))
        assert not res["ok"]
        assert error in res["error"], res
    assert store.outbox.ls(200, kinds=["image"]) == []
