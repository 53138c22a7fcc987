"""The field unit as a whole (issue 10): the firmware emulated behind a pty, the real driver,
the picamera2 API fake and the real models inside one trap.

* gated mode: a PIR on the MCU's pin powers the Pi, the event is stored, the power stage hands
  the MCU its schedule and, once nothing is left to do, runs the POWER_OFF handshake; the MCU
  cuts the power at the halt pin.
* a camera that stays hung: the guard reopens it, gives it up, the capture stage stops
  counting as healthy so the systemd pings stop, and the MCU is asked for a power cycle.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_app.core import config
from edge_app.core import mcu_protocol as mp
from edge_app.sim.mcu import McuEmulator
from edge_app.trap.daemon import App

pytestmark = [pytest.mark.models]

FIRMWARE = {"mode": "gated", "power_on_at_start": False, "pir_holdoff_ms": 500,
            "halt_cut_delay_ms": 200, "cycle_off_s": 1}


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def images(cameratrapai_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("human.jpg", "vehicle.jpg"):
        shutil.copy(cameratrapai_dir / name, dest / name)
    return dest


def unit_config(root: Path, img: Path, **sections: Any) -> config.Config:
    camera = {"source": "picamera2-fake", "images_dir": str(img), "burst_frames": 2,
              "burst_interval_s": 0.1, "pre_trigger_frames": 1,
              **sections.pop("camera", {})}
    return config.parse({
        "unit": {"id": "LL-101"},
        "hardware": {"backend": "sim"},
        "trigger": {"source": "mcu"},
        "camera": camera,
        "policy": {"alert_on": ["person", "vehicle"], "audit_every": 0},
        "storage": {"root": str(root)},
        "mqtt": {"enabled": False},
        "mcu": {"heartbeat_s": 1.0, "status_every_s": 5.0, "reply_timeout_s": 0.3,
                **sections.pop("mcu", {})},
        **sections,
    })


def pings(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            n += sock.recv(64) == b"WATCHDOG=1"
        except TimeoutError:
            return n


def test_gated_wake_stores_the_event_then_powers_itself_off(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    emu = McuEmulator(config=FIRMWARE).start()
    cfg = unit_config(tmp_path / "trap", images(cameratrapai_dir, tmp_path / "img"),
                      power={"mode": "gated", "idle_shutdown_s": 2.0, "max_uptime_s": 120.0},
                      mcu={"power_off_timeout_s": 30})
    app = App(cfg, models_dir, mcu_sim=emu)
    assert app.power is not None
    app.start()
    try:
        assert app.world is not None
        assert not emu.pi_powered
        app.world.visit(0.2)
        assert emu.wait_power(True, 5), "the MCU did not power the Pi for the PIR"
        wait_for(lambda: app.counters.kept == 1, 60, "the event to be stored")
        # The policy waits idle_shutdown_s for another trigger, then the handshake: POWER_OFF
        # acknowledged, the halt (here the emulated halt pin), the power cut at the pin.
        assert emu.wait_power(False, 30), "the Pi was never powered off"
        assert app.supervisor.done.is_set()  # the OS halt stops the trap
        stats = app.stats_extra()["power"]
        assert stats["shutdowns"] == 1
        assert stats["schedules_sent"] >= 1
        assert "no trigger for" in stats["reason"]
        assert emu.sup.state == mp.PiState.OFF
        assert emu.sup.plan.mode == mp.Mode.GATED  # the schedule the Pi handed over
    finally:
        late = app.stop(5)
        emu.stop()
    assert late == []


def test_a_camera_that_stays_hung_stops_the_pings_and_asks_for_a_power_cycle(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path,
        notify_socket: socket.socket) -> None:
    emu = McuEmulator(config={**FIRMWARE, "mode": "always_on", "power_on_at_start": True})
    emu.start()
    cfg = unit_config(tmp_path / "trap", images(cameratrapai_dir, tmp_path / "img"),
                      camera={"capture_timeout_s": 0.5, "reopen_backoff_s": 0.0,
                              "max_reopens": 2, "open_timeout_s": 2.0,
                              "settle_timeout_s": 0.5},
                      power={"mode": "always-on"}, mcu={"power_off_timeout_s": 1},
                      watchdog={"stage_deadline_s": 1.5})
    app = App(cfg, models_dir, mcu_sim=emu)
    app.watchdog.interval_s = 0.25
    rig = app.camera.inner.rig  # type: ignore[attr-defined]
    done = threading.Event()
    dog = threading.Thread(target=app.watchdog.run, args=(done,))
    app.start()
    dog.start()
    try:
        assert emu.wait_power(True, 5)
        assert app.world is not None
        app.world.visit(0.2)
        wait_for(lambda: app.counters.kept == 1, 60, "the first event")
        time.sleep(0.5)
        assert pings(notify_socket) > 0  # healthy: pinging
        rig.faults.stall(0, openings=None, mode="hang")  # the camera dies for good
        app.world.visit(0.2)
        wait_for(lambda: app.camera.counters()["gave_up"] == 1, 30, "the guard to give up")
        c = app.camera.counters()
        assert c["timeouts"] >= 1
        assert c["reopen_failures"] + c["reopens"] >= 2
        # The MCU was asked for a power cycle: it cuts the Pi after power_off_timeout_s.
        assert emu.wait_power(False, 10), "no power cycle"
        # And the capture stage no longer counts as healthy, so systemd stops being fed.
        wait_for(lambda: "capture" in app.watchdog.stats.late_now, 10, "capture to be late")
        pings(notify_socket)
        time.sleep(1.0)
        assert pings(notify_socket) == 0
        assert app.stats_extra()["stages"]["crashes"]["capture"] >= 1
    finally:
        done.set()
        rig.faults.release()
        app.stop(5)
        dog.join(5)
        emu.stop()
