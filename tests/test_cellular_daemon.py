"""The cellular stage inside the running trap (``App``, sim backend): the store's wake brings
the bearer up for an alert, the stats message carries signal and data, the stage stops with
the trap. ModemManager is python-dbusmock's on this test's private session bus (where the sim
backend looks for it); the broker is a real mosquitto."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import Broker
from store_support import wait_for
from test_cellular_dbus import Mock, bus_address, mock  # noqa: F401 (fixtures)

from edge_app.core import config
from edge_app.trap.daemon import App

pytestmark = [pytest.mark.models, pytest.mark.broker]


def test_an_alert_in_the_running_trap_brings_the_bearer_up_and_stats_show_it(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path, broker: Broker,
        mock: Mock, bus_address: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus_address)
    mock.add_lte_modem(state=3)
    img = tmp_path / "img"
    img.mkdir()
    shutil.copy(cameratrapai_dir / "human.jpg", img / "human.jpg")
    cfg = config.parse({
        "unit": {"id": "LL-115"}, "hardware": {"backend": "sim"},
        "camera": {"source": "picamera2-fake", "images_dir": str(img), "burst_frames": 2,
                   "burst_interval_s": 0.1, "pre_trigger_frames": 1},
        "policy": {"alert_on": ["person", "vehicle"], "audit_every": 0},
        "storage": {"root": str(tmp_path / "trap")},
        "outbox": {"image_expiry_s": 0},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": False, "receipts": False,
                 "stats_interval_s": 0, "reconnect_min_s": 0.5, "reconnect_max_s": 1.0},
        "cellular": {"enabled": True, "mode": "on-demand", "status_every_s": 0,
                     "idle_disconnect_s": 5, "plan_mb": 500},
    })
    app = App(cfg, models_dir)
    assert app.cellular is not None
    assert "cellular" in [w.name for w in app.supervisor.workers]
    app.start()
    try:
        assert app.world is not None
        wait_for(lambda: app.cellular is not None and app.cellular.stats_.steps >= 1,
                 timeout_s=10, what="the stage's first step")
        assert mock.calls("Connect") == []  # nothing queued: the modem stays off
        app.world.visit(0.2)
        wait_for(lambda: app.counters.alerts == 1, timeout_s=60, what="the alert stored")
        wait_for(lambda: mock.calls("Connect") == [[{}]], timeout_s=10, what="bearer up")
        wait_for(lambda: app.outbox_depth() == 0, timeout_s=30, what="the outbox sent")
        s = app.stats_extra()["cellular"]
        assert s["signal"]["technology"] == "lte"
        assert s["signal"]["operator"] == "TheOperator"
        assert s["data"]["plan_mb"] == 500
        assert s["link"]["mode"] == "on-demand"
        wait_for(lambda: mock.calls("Disconnect") == [["/"]], timeout_s=20,
                 what="down after idle")
        assert app.supervisor.health.snapshot()  # the stage is watched
    finally:
        late = app.stop(5)
    assert late == []
