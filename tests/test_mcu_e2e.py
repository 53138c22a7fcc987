"""Driver ↔ firmware, end to end, inside the real trap: the firmware itself (its logic, codec
and fake board) on a pty, the App with trigger.source = "mcu" on real pyserial, real models on
field frames, a real mosquitto and the ranger's receiver.

PIR on the MCU's pin while the Pi is off → the MCU powers the Pi → HELLO and the pending
TRIGGER → an event with the MCU's trigger time, delivered → TRIGGER_ACK clears it on the MCU →
line noise both ways, survived and counted → the power-off handshake cuts the Pi's power.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker
from lorawan_support import write_secrets

from edge_app.core import config
from edge_app.core import mcu_protocol as mp
from edge_app.core.clock import rfc3339
from edge_app.sim.mcu import McuEmulator
from edge_app.station.receiver import Receiver
from edge_app.trap.daemon import App

pytestmark = [pytest.mark.models]

PEOPLE = ("animl-r/examples__test_data__Peru__S90__SDZG_1__EK000001.JPG",
          "animl-py/examples__Southwest__B012_2021-05-27_human.jpg")
FIRMWARE = {"mode": "gated", "power_on_at_start": False, "pir_holdoff_ms": 500,
            "halt_cut_delay_ms": 200}
PULSE_S = 0.2
"""A short PIR pulse: a pin held high past the hold-off re-fires (retrigger mode)."""


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition the trap's own threads make true."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def people(field_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for i, rel in enumerate(PEOPLE):
        shutil.copy(field_dir / rel, dest / f"{i}-{Path(rel).name}")
    return dest


def trap_config(root: Path, images: Path, **sections: Any) -> config.Config:
    return config.parse({
        "unit": {"id": "LL-042"},
        "hardware": {"backend": "sim"},
        "trigger": {"source": "mcu"},
        "camera": {"source": "replay", "images_dir": str(images), "burst_frames": 2,
                   "burst_interval_s": 0.05, "pre_trigger_frames": 1},
        "policy": {"alert_on": ["animal", "person", "vehicle", "leopard", "tiger"],
                   "audit_every": 0},
        "storage": {"root": str(root)},
        "mcu": {"heartbeat_s": 1.0, "status_every_s": 5.0, "reply_timeout_s": 0.3},
        **sections,
    })


class Alerts:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def __len__(self) -> int:
        with self.lock:
            return len(self.events)


@pytest.mark.broker
def test_pir_while_off_to_delivered_event_to_power_off(
        tmp_path: Path, broker: Broker, models_dir: Path, field_dir: Path) -> None:
    alerts = Alerts()
    receiver = Receiver("127.0.0.1", broker.port, on_alert=alerts, client_id="ranger-mcu")
    receiver.start()
    assert receiver.wait_connected(10)
    emu = McuEmulator(config=FIRMWARE).start()
    cfg = trap_config(tmp_path / "trap", people(field_dir, tmp_path / "img"),
                      mqtt={"host": "127.0.0.1", "port": broker.port, "tls": False,
                            "keepalive_s": 5},
                      # Gated like the firmware (the power stage hands the MCU this mode);
                      # long enough that the test, not the policy, runs the handshake.
                      power={"mode": "gated", "idle_shutdown_s": 600, "max_uptime_s": 3600})
    app = App(cfg, models_dir, mcu_sim=emu)
    assert app.trigger is None
    assert app.mcu is not None
    assert app.world is not None
    app.start()  # camtrap listens; to the MCU the Pi is off, so it hears nothing yet
    try:
        assert not emu.pi_powered
        app.world.visit(PULSE_S)  # an animal walks past: the PIR on the MCU's pin
        assert emu.wait_power(True, 5), "the MCU did not power the Pi for the PIR"
        wait_for(lambda: app.mcu is not None and app.mcu.counters.hellos == 1, 10, "HELLO")
        assert app.mcu.hello is not None
        assert app.mcu.hello.wake_reason == mp.WakeReason.PIR
        wait_for(lambda: len(alerts) == 1, 60, "the event at the ranger")
        trig = next(m for m in emu.sent if isinstance(m, mp.Trigger))
        assert trig.while_off
        assert trig.rtc_valid
        event = alerts.events[0]
        # The trigger's time is the MCU's RTC stamp of the PIR edge, not the Pi's boot.
        assert event["ts"] == rfc3339(trig.time)
        assert event["time_source"] == "rtc"
        assert event["time_synced"] is True
        assert event["outcome"] == "alert"  # a person in a field frame
        assert event["battery_v"] == pytest.approx(13.2, abs=0.01)
        assert event["temp_c"] == pytest.approx(-4.5)
        wait_for(lambda: emu.sup.triggers.pending() == 0, 5, "TRIGGER_ACK on the MCU")
        assert app.mcu.counters.triggers_delivered == 1

        # Line noise both ways, then a second (live) trigger still goes through.
        emu.inject(b"\x00\xff\xa5\x5a\x09\x13\x37" + bytes(range(0x20, 0x40)))
        app.mcu.link.send_raw(b"\xff" * 16 + b"\xa5\x5a\x01\x10\x00\x01\x01\x00\x00")
        app.world.visit(PULSE_S)
        wait_for(lambda: len(alerts) == 2, 60, "the second event")
        live = [m for m in emu.sent if isinstance(m, mp.Trigger)][-1]
        assert not live.while_off
        assert alerts.events[1]["ts"] == rfc3339(live.time)
        wait_for(lambda: app.mcu is not None and app.mcu.get_status().triggers_pending == 0,
                 5, "the second TRIGGER_ACK")
        stats = app.stats_extra()
        mcu = stats["mcu"]
        assert mcu["rx"]["garbage_bytes"] > 0
        assert mcu["rx"]["bad_header"] >= 1
        fw_rx = emu.rx_counters()
        assert fw_rx["garbage_bytes"] >= 16
        assert fw_rx["bad_crc"] == 1
        assert (stats["battery_v"], stats["solar_v"], stats["temp_c"]) == pytest.approx(
            (13.2, 18.0, -4.5), abs=0.01)
        assert stats["time_source"] == "ntp"
        assert (mcu["state"], mcu["mode"], mcu["wake_reason"]) == ("up", "gated", "pir")
        assert (mcu["boot_count"], mcu["reset_cause"]) == (1, "power_on")
        assert mcu["triggers_total"] == 2
        assert mcu["triggers_delivered"] == 2
        assert mcu["mcu_bad_frames"] >= 1

        # The shutdown handshake: POWER_OFF, then the Pi halts; the halt pin, not the 30 s
        # timeout, cuts the power.
        t0 = time.monotonic()
        app.mcu.power_off(30, halt=lambda: setattr(emu, "halt", True))
        assert emu.wait_power(False, 10)
        assert time.monotonic() - t0 < 10
        assert emu.sup.state == mp.PiState.OFF
    finally:
        late = app.stop(5)
        emu.stop()
        receiver.stop()
    assert late == []
    assert emu.resets == 0  # the firmware never raised
    assert app.counters.triggers == 2
    assert app.counters.kept == 2


def test_sim_backend_runs_the_firmware_itself_and_feeds_lora_status(
        tmp_path: Path, models_dir: Path, field_dir: Path) -> None:
    # No emulator given: the App makes one and supervises it; the sim world's animals walk
    # past the MCU's PIR; the LoRa status carries the MCU's battery and temperature.
    secrets = write_secrets(tmp_path / "lorawan.toml")
    cfg = trap_config(tmp_path / "trap", people(field_dir, tmp_path / "img"),
                      mqtt={"enabled": False},
                      lorawan={"enabled": True, "port": str(tmp_path / "no-modem"),
                               "secrets_file": str(secrets), "status_every_h": 0})
    app = App(cfg, models_dir)
    assert app.mcu_sim is not None
    assert app.world is not None
    assert app.lora is not None
    names = [w.name for w in app.supervisor.workers]
    assert names.index("capture") < names.index("mcu-sim") < names.index("mcu")
    app.start()
    try:
        wait_for(lambda: app.mcu is not None and app.mcu.status is not None, 10, "a STATUS")
        status = app.lora._status_source()  # what the next fPort-11 report says
        assert (status.battery_v, status.temp_c) == pytest.approx((13.2, -4.5), abs=0.01)
        app.world.visit(PULSE_S)
        wait_for(lambda: app.counters.kept == 1, 60, "the event")
        stats = app.stats_extra()
        assert None not in (stats["battery_v"], stats["solar_v"], stats["temp_c"])
        assert stats["mcu"]["wake_reason"] == "power_on"  # power_on_at_start
    finally:
        late = app.stop(5)
    assert late == []
