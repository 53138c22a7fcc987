"""The issue's cases end to end — nothing lost in any: the modem appearing late, registration
lost in the middle of an image upload, full images held by a spent plan not keeping the
bearer up. A real mosquitto, ModemManager from python-dbusmock on a private ``dbus-daemon``,
and :class:`BearerRoute` (test_cellular_stage.py), the fake IP route, here also a slow one."""

from __future__ import annotations

import dataclasses
import io
import random
import time
from pathlib import Path

import dbus
import pytest
from conftest import Broker
from PIL import Image
from store_support import burst_and_verdict, wait_for
from test_cellular_dbus import BEARER_PATH, Mock, bus_address, mock  # noqa: F401
from test_cellular_route import Trap, drop_registration, recorded_id, route_cfg
from test_cellular_stage import BearerRoute, session_bus  # noqa: F401

from edge_app.trap.store.outbox import Link
from edge_app.trap.uplink.mqtt import LinkState

pytestmark = pytest.mark.broker


def test_the_modem_appears_late_and_the_alert_queued_meanwhile_goes(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    route = BearerRoute(session_bus, broker.port)  # no modem: no route
    cfg = route_cfg(tmp_path / "data", route.port, (0.3, 0.5))
    trap = Trap(cfg, broker.port)
    try:
        wait_for(lambda: trap.stage.stats()["link"]["state"] == "no modem", timeout_s=10,
                 what="the stage without a modem")
        event_id = recorded_id(trap.store)
        time.sleep(1.0)
        assert trap.alerts == []
        assert trap.link.state is not LinkState.CONNECTED
        mock.add_lte_modem(state=3)  # ModemManager finished probing: a disabled modem
        wait_for(lambda: any(e == event_id for _t, e in trap.alerts), timeout_s=15,
                 what="the alert after the modem appeared")
        assert mock.calls("Enable") == [[True]]
        assert len(mock.calls("Connect")) == 1
        assert trap.stage.stats()["link"]["state"] == "up"
    finally:
        trap.close()
        route.close()


def big_noisy_alert() -> tuple[object, object]:
    """An alert whose full image is ~250 kB of noise (seconds on the slow route)."""
    burst, verdict = burst_and_verdict("alert")
    out = io.BytesIO()
    rng = random.Random(3)
    Image.frombytes("RGB", (640, 480), rng.randbytes(640 * 480 * 3)).save(out, "JPEG",
                                                                          quality=92)
    frames = tuple(dataclasses.replace(f, jpeg=out.getvalue()) for f in burst.frames)
    return dataclasses.replace(burst, frames=frames), verdict


def test_registration_lost_in_the_middle_of_an_image_upload_loses_nothing(
        tmp_path: Path, broker: Broker, mock: Mock, session_bus: str) -> None:  # noqa: F811
    mock.add_lte_modem(state=8)
    route = BearerRoute(session_bus, broker.port, rate=120_000.0)  # ~1 Mbit/s uplink
    cfg = route_cfg(tmp_path / "data", route.port, (0.3, 0.5))
    trap = Trap(cfg, broker.port)
    media = trap.media
    try:
        wait_for(lambda: trap.link.state is LinkState.CONNECTED, timeout_s=15, what="MQTT up")
        burst, verdict = big_noisy_alert()
        rec = trap.store.record(burst, verdict)  # type: ignore[arg-type]
        assert rec is not None
        image = [r for r in trap.store.outbox.ls(50, kinds=["image"])
                 if r.event_id == rec.event_id]
        size = (Path(cfg.storage.root) / str(image[0].media_path)).stat().st_size
        assert size > 200_000
        wait_for(lambda: trap.link.stats().published >= 3, timeout_s=10,
                 what="the image's upload started")
        time.sleep(0.6)  # part of it on the air
        assert f"{rec.event_id}-image" not in media
        drop_registration(mock)
        wait_for(lambda: trap.link.state is not LinkState.CONNECTED, timeout_s=10,
                 what="MQTT down with the bearer")
        time.sleep(1.0)
        mock.set_modem(State=dbus.Int32(8))  # back on the network
        wait_for(lambda: f"{rec.event_id}-image" in media, timeout_s=30,
                 what="the whole image after the bearer came back")
        wait_for(lambda: sum(trap.store.outbox.depth(Link.MQTT).values()) == 0,
                 timeout_s=20, what="every row delivered")
        assert route.cuts >= 1
        assert any(e == rec.event_id for _t, e in trap.alerts)
        assert trap.link.stats().dropped == 0
    finally:
        trap.close()
        route.close()
