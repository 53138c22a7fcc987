"""The supervisor MCU driver: its pure rules (schedule, trigger dating, time source), then the
real driver on real pyserial against the firmware itself on a pty (edge_app/sim/mcu.py), then
the [mcu] config keys through check-config."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_app.core import config
from edge_app.core import mcu_protocol as mp
from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.config import McuConfig
from edge_app.core.errors import ConfigError
from edge_app.core.events import TriggerEvent
from edge_app.sim.mcu import FIRMWARE_ENV, FirmwareNotFound, McuEmulator, firmware_dir
from edge_app.trap.hardware.factory import make_mcu
from edge_app.trap.hardware.mcu import (
    McuDriver,
    McuError,
    McuRtcView,
    McuTimers,
    trigger_event,
)
from edge_app.trap.hardware.timesource import TimeSourceProbe, classify, kernel_clock_synced

FAST = McuConfig(heartbeat_s=1.0, status_every_s=5.0, reply_timeout_s=0.3, attempts=3)


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition the system under test sets from its own threads."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- pure rules -------------------------------------------------------------------------------


def test_schedule_heartbeat_status_and_time_sync_rules() -> None:
    s = McuTimers(heartbeat_s=30, status_every_s=60, sync_every_s=3600)
    assert s.due(0.0, time_good=False) == ["heartbeat", "status"]
    assert s.due(0.0, time_good=True) == ["heartbeat", "status", "time"]
    for action in ("heartbeat", "status"):
        s.done(action, 0.0, ok=True)
    s.done("time", 0.0, ok=False)  # the MCU did not answer
    assert s.due(30.0, time_good=True) == ["heartbeat"]
    assert s.next_deadline(time_good=True) == 30.0
    assert s.due(60.0, time_good=True) == ["heartbeat", "status", "time"]  # retried after 60 s
    s.done("time", 60.0, ok=True)
    assert s.next_status == 60.0  # read back the RTC at once
    s.done("status", 60.0, ok=True)
    assert "time" not in s.due(3659.0, time_good=True)
    assert "time" in s.due(3660.0, time_good=True)  # hourly
    assert "time" not in s.due(3660.0, time_good=False)  # never from an unsynced Pi clock
    s.done("time", 3660.0, ok=True)
    s.status_seen(rtc_valid=False)  # e.g. the RTC's coin cell died
    assert "time" not in s.due(3700.0, time_good=True)
    assert "time" in s.due(3720.0, time_good=True)


def test_trigger_dating_rtc_backdating_and_pi_clock() -> None:
    rtc = McuRtcView()
    t = mp.Trigger(9, 1_790_000_000, 250, mp.TRIG_WHILE_OFF | mp.TRIG_RTC_VALID)
    ev = trigger_event(t, mono=500.0, wall=1_234.0, rtc=rtc)  # before any STATUS
    assert ev == TriggerEvent(9, 500.0, 1_790_000_000.25, "mcu", "rtc")
    rtc.update(1_790_000_040, mono=500.0)  # the MCU's clock reads 40.5 s after the trigger
    ev = trigger_event(t, mono=500.0, wall=1_234.0, rtc=rtc)
    assert ev.wall == 1_790_000_000.25
    assert ev.mono == pytest.approx(500.0 - 40.25)
    unset = mp.Trigger(9, 1_790_000_000, 250, mp.TRIG_WHILE_OFF)  # RTC never set: Pi's clock
    ev = trigger_event(unset, mono=500.0, wall=1_234.0, rtc=rtc)
    assert (ev.wall, ev.time_source) == (pytest.approx(1_234.0 - 40.25), "")
    live = mp.Trigger(10, 1_790_000_040, 300, mp.TRIG_RTC_VALID)  # 0.2 s old: not backdated
    assert trigger_event(live, mono=500.0, wall=1_234.0, rtc=rtc).mono == 500.0
    rtc.update(2_000_000_000, mono=500.0)  # a wild RTC cannot push mono back by years
    assert trigger_event(t, 500.0, 1_234.0, rtc).mono == 500.0 - 7 * 86400


def test_time_source_rules_and_cache() -> None:
    assert classify(None, None) == "none"
    assert classify(False, "GPS") == "none"
    assert classify(True, None) == "ntp"
    assert classify(True, "192.168.1.1") == "ntp"
    assert classify(True, "PPS") == "gps"
    assert classify(True, "gps") == "gps"
    assert kernel_clock_synced() in (True, False, None)  # asks the real kernel, never raises
    clock = FakeClock()
    calls: list[str] = []
    synced = [False]

    def ref() -> str:
        calls.append("ref")
        raise RuntimeError("chronyc crashed")  # a probe failure is never an exception

    probe = TimeSourceProbe(clock, synced=lambda: synced[0], refclock=ref, cache_s=60)
    assert probe() == "none"
    assert calls == []
    synced[0] = True
    assert probe() == "none"  # cached
    clock.advance(61)
    assert probe() == "ntp"
    assert calls == ["ref"]


# -- the driver against the firmware on a pty -------------------------------------------------


@dataclass
class Rig:
    emu: McuEmulator
    drv: McuDriver
    got: list[TriggerEvent] = field(default_factory=list)
    healthy: list[bool] = field(default_factory=lambda: [True])


@pytest.fixture
def rig_factory() -> Iterator[Callable[..., Rig]]:
    stops: list[tuple[threading.Event, threading.Thread, McuDriver, McuEmulator]] = []

    def make(fw: dict[str, Any] | None = None, cfg: McuConfig = FAST,
             on_trigger: Callable[[TriggerEvent], None] | None = None,
             time_source: str = "none") -> Rig:
        emu = McuEmulator(config=fw).start()
        rig = Rig(emu, None)  # type: ignore[arg-type]
        rig.drv = McuDriver(cfg, SystemClock(), on_trigger or rig.got.append, port=emu.port,
                            health=lambda: rig.healthy[0], time_source=lambda: time_source)
        stop = threading.Event()
        th = threading.Thread(target=rig.drv.run, args=(stop,), daemon=True)
        th.start()
        stops.append((stop, th, rig.drv, emu))
        return rig

    yield make
    for stop, th, drv, emu in stops:
        stop.set()
        drv.interrupt()
        th.join(5.0)
        assert not th.is_alive(), "the MCU stage did not stop"
        emu.stop()
        assert emu.resets == 0, "the firmware raised"


def test_up_readings_status_and_heartbeat_health(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()  # the firmware powers the Pi at start; the driver speaks first
    wait_for(lambda: rig.drv.status is not None, 5, "the first STATUS")
    assert rig.emu.sup.state == mp.PiState.UP
    st = rig.drv.get_status()
    assert (st.battery_v, st.solar_v, st.temp_c) == pytest.approx((13.2, 18.0, -4.5), abs=0.01)
    assert st.wake_reason == mp.WakeReason.POWER_ON
    assert st.boot_count == 1
    assert st.rtc_valid
    rig.emu.battery_v, rig.emu.temp_c = 12.1, 3.5
    wait_for(lambda: rig.drv.get_status().temp_c == 3.5, 5, "a new temperature")
    assert rig.drv.readings()[1] == 3.5
    assert rig.emu.sup.health == 1
    rig.healthy[0] = False  # a stage is late: the MCU hears it in the next heartbeat
    wait_for(lambda: rig.emu.sup.health == 0, 5, "an unhealthy heartbeat")
    stats = rig.drv.stats()
    assert stats["solar_v"] == pytest.approx(18.0, abs=0.01)
    assert stats["mcu"]["state"] == "up"
    assert stats["mcu"]["connected"] is True
    assert stats["mcu"]["mode"] == "gated"
    assert stats["mcu"]["reset_cause"] == "power_on"


def test_live_trigger_delivered_once_with_rtc_time_then_acked(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    wait_for(lambda: rig.emu.sup.state == mp.PiState.UP, 5, "the Pi up")
    pin = rig.emu.pin(rig.emu.pir_pin)
    before = time.time()
    pin.drive_high()
    wait_for(lambda: bool(rig.got), 5, "the trigger")
    pin.drive_low()
    (ev,) = rig.got
    sent = [m for m in rig.emu.sent if isinstance(m, mp.Trigger)]
    assert ev.wall == sent[0].time
    assert ev.source == "mcu"
    assert ev.time_source == "rtc"
    assert not sent[0].while_off
    assert before - 1.0 <= ev.wall <= time.time()  # the emulated RTC runs on this clock
    wait_for(lambda: rig.emu.sup.triggers.pending() == 0, 5, "TRIGGER_ACK to clear it")
    # The same trigger again (a resend whose ACK crossed ours): acked, not delivered twice.
    rig.emu.inject(sent[0].frame(200))
    wait_for(lambda: rig.drv.counters.trigger_duplicates == 1, 5, "the duplicate")
    assert len(rig.got) == 1


def test_a_failed_handover_is_not_acked_and_comes_back(
        rig_factory: Callable[..., Rig]) -> None:
    got: list[TriggerEvent] = []
    fails = [1]

    def flaky(ev: TriggerEvent) -> None:
        if fails[0]:
            fails[0] -= 1
            raise RuntimeError("queue exploded")
        got.append(ev)

    rig = rig_factory(fw={"trigger_resend_ms": 300}, on_trigger=flaky)
    wait_for(lambda: rig.emu.sup.state == mp.PiState.UP, 5, "the Pi up")
    rig.emu.set_pir(True)
    wait_for(lambda: bool(got), 5, "the resent trigger")
    assert rig.drv.counters.triggers_received == 2
    assert rig.drv.counters.triggers_delivered == 1
    wait_for(lambda: rig.emu.sup.triggers.pending() == 0, 5, "TRIGGER_ACK")


def test_garbage_both_ways_is_counted_and_survived(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    wait_for(lambda: rig.drv.status is not None, 5, "the first STATUS")
    rig.emu.inject(b"\x00\xff\x13\x37" + b"\xa5\x5a\x07")  # noise, then a bad header
    rig.emu.inject(mp.encode_frame(0x7F, 1, b"\x01"))  # a type the Pi does not know
    rig.drv.link.send_raw(b"\x55" * 10 + b"\xa5\x5a\x01\x10\x01\x01\x00\x00")  # + bad CRC
    assert rig.drv.get_status().battery_v == pytest.approx(13.2, abs=0.01)
    rx = rig.drv.link.rx.counts
    assert rx["garbage_bytes"] >= 4
    assert rx["bad_header"] == 1
    assert rx["unknown_type"] == 1
    fw = rig.emu.rx_counters()
    assert fw["garbage_bytes"] >= 10
    assert fw["bad_crc"] == 1
    assert rig.drv.get_status().bad_frames == 1  # the MCU's own count, over the wire
    assert rig.drv.stats()["mcu"]["rx"]["bad_frames"] == 2


def test_set_time_power_cycle_and_refusals(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(fw={"cycle_off_s": 1})
    wait_for(lambda: rig.emu.sup.state == mp.PiState.UP, 5, "the Pi up")
    rig.drv.set_time(1_800_000_000, mp.TimeSource.MANUAL)
    assert 1_800_000_000 <= rig.drv.get_status().rtc_time <= 1_800_000_002
    with pytest.raises(ValueError, match="unix_s"):
        rig.drv.set_time(1_600_000_000)  # our own bug: never sent
    rig.drv.power_cycle(grace_s=0, off_s=1)
    assert rig.emu.wait_power(False, 5)
    assert rig.emu.wait_power(True, 5)
    wait_for(lambda: rig.drv.get_status().wake_reason == mp.WakeReason.REQUESTED, 5,
             "wake reason 'requested'")
    assert rig.drv.get_status().boot_count == 2


def test_the_driver_runs_the_sync_while_the_pi_clock_is_good(
        rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(time_source="ntp")
    wait_for(lambda: rig.drv.counters.time_sets == 1, 5, "SET_TIME")
    rtc = rig.drv.get_status().rtc_time
    assert abs(rtc - time.time()) < 1.5


def test_no_answer_times_out_and_a_missing_port_is_retried() -> None:
    emu = McuEmulator(config={"power_on_at_start": False}).start()  # Pi off: the UART is dead
    drv = McuDriver(FAST, SystemClock(), None, port=emu.port)
    try:
        drv.link.open()
        t0 = time.monotonic()
        with pytest.raises(McuError, match="no reply to GET_STATUS after 3 tries"):
            drv.get_status()
        assert time.monotonic() - t0 < 3 * FAST.reply_timeout_s + 1.0
        assert drv.link.counters.timeouts == 1
        assert drv.link.counters.retries == 2
    finally:
        drv.link.close()
        emu.stop()
    gone = McuDriver(FAST, SystemClock(), None, port="/dev/nonexistent-mcu")
    stop = threading.Event()
    th = threading.Thread(target=gone.run, args=(stop,), daemon=True)
    th.start()
    wait_for(lambda: gone.counters.port_failures >= 1, 5, "a failed open")
    stop.set()
    th.join(3.0)
    assert not th.is_alive()
    assert gone.stats()["mcu"]["connected"] is False
    assert gone.stats()["battery_v"] is None


# -- config -----------------------------------------------------------------------------------

BASE: dict[str, Any] = {"unit": {"id": "LL-7"}, "mqtt": {"host": "127.0.0.1", "tls": False}}


@pytest.mark.parametrize(("section", "values", "key"), [
    ("mcu", {"heartbeat_s": 0}, "mcu.heartbeat_s"),
    ("mcu", {"heartbeat_s": float("nan")}, "mcu.heartbeat_s"),
    ("mcu", {"power_off_timeout_s": 601}, "mcu.power_off_timeout_s"),
    ("mcu", {"baudrate": 300}, "mcu.baudrate"),
    ("mcu", {"attempts": 0}, "mcu.attempts"),
    ("mcu", {"enabled": "yes"}, "mcu.enabled"),
    ("mcu", {"porT": "/dev/ttyS0"}, "mcu.porT"),
    ("mcu", {"enabled": True, "port": ""}, "mcu.port"),
    ("trigger", {"source": "radio"}, "trigger.source"),
])
def test_bad_mcu_config_names_the_key(section: str, values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({**BASE, section: values})
    assert e.value.key == key


def test_mcu_in_use_and_check_config_exit_2(tmp_path: Path) -> None:
    assert not config.parse(BASE).mcu_in_use
    assert config.parse({**BASE, "trigger": {"source": "mcu"}}).mcu_in_use
    assert config.parse({**BASE, "mcu": {"enabled": True}}).mcu_in_use
    bad = tmp_path / "bad.toml"
    bad.write_text('[unit]\nid = "LL-1"\n[trigger]\nsource = "mcu"\n'
                   '[mcu]\nheartbeat_s = 1000\n')
    r = subprocess.run([sys.executable, "-m", "edge_app", "check-config", str(bad)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "mcu.heartbeat_s" in r.stderr


def test_the_emulator_says_where_it_looked_for_the_firmware(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = firmware_dir()
    assert (real / "logic.py").is_file()  # the checkout's own firmware
    monkeypatch.setenv(FIRMWARE_ENV, str(tmp_path))
    with pytest.raises(FirmwareNotFound, match=str(tmp_path)):
        McuEmulator()
    cfg = config.parse({**BASE, "hardware": {"backend": "sim"},
                        "camera": {"source": "synthetic"}, "trigger": {"source": "mcu"}})
    with pytest.raises(ConfigError) as e:  # camtrap run exits 2 naming the key
        make_mcu(cfg, SystemClock(), lambda ev: None)
    assert e.value.key == "trigger.source"
    monkeypatch.setenv(FIRMWARE_ENV, str(real.parent))  # the firmware/ folder works too
    drv, emu = make_mcu(cfg, SystemClock(), lambda ev: None)
    assert drv is not None
    assert emu is not None
    assert drv.link.port == emu.port
    emu.close()
