"""IR outputs through gpiozero's MockFactory: pin states and timing on a fake clock, the
max-on guard, shedding, and the [ir] config checks."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from edge_app.core import config
from edge_app.core.clock import Clock, FakeClock, SystemClock
from edge_app.core.config import IrConfig, LocationConfig
from edge_app.core.errors import ConfigError, HardwareUnavailable
from edge_app.trap.hardware.ir import (
    CAPTURE_S,
    IrOutputs,
    Lighting,
    ir_on_s_per_trigger,
    longest_on_s,
    make_lighting,
    pulsed_per_frame,
)

LED, NIGHT, DAY = 13, 5, 6
IR = IrConfig(enabled=True)


class ClockedPin(MockPin):
    """gpiozero's MockPin (an API fake of a GPIO pin) that also logs each change with the
    time on the test's clock, and signals changes so a test can await one."""

    def __init__(self, factory: Any, info: Any, clock: Clock) -> None:
        self.clock = clock
        self.log: list[tuple[float, bool]] = []
        self.changed = threading.Event()
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed:
            self.log.append((self.clock.monotonic(), bool(value)))
            self.changed.set()
        return changed


def pins(clock: Clock, *numbers: int) -> tuple[MockFactory, dict[int, ClockedPin]]:
    factory = MockFactory()
    made = {n: factory.pin(n, pin_class=ClockedPin, clock=clock) for n in numbers}
    return factory, made


def outputs(cfg: IrConfig = IR, clock: Clock | None = None
            ) -> tuple[IrOutputs, dict[int, ClockedPin], Clock]:
    clock = clock or FakeClock()
    factory, made = pins(clock, LED, NIGHT, DAY)
    out = IrOutputs(cfg, clock, factory)
    out.open()
    return out, made, clock


# -- the filter ---------------------------------------------------------------------------------


def test_open_claims_every_pin_inactive() -> None:
    _out, p, _clock = outputs()
    assert [p[n].state for n in (LED, NIGHT, DAY)] == [False, False, False]
    assert all(p[n].function == "output" for n in (LED, NIGHT, DAY))
    _out, p, _clock = outputs(dataclasses.replace(IR, led_active_high=False,
                                                  filter_active_high=False))
    assert [p[n].state for n in (LED, NIGHT, DAY)] == [True, True, True]  # inactive = high


def test_latching_filter_gets_one_pulse_of_filter_ms_per_move() -> None:
    out, p, clock = outputs(dataclasses.replace(IR, filter="pulse", filter_ms=120.0))
    assert isinstance(clock, FakeClock)
    t0 = clock.monotonic()
    out.set_filter(True)
    assert p[NIGHT].log == [(t0, True), (pytest.approx(t0 + 0.12), False)]
    assert p[DAY].log == []
    out.set_filter(True)  # already out: no pulse, no time spent
    assert len(p[NIGHT].log) == 2
    assert clock.monotonic() == pytest.approx(t0 + 0.12)
    out.set_filter(False)
    assert p[DAY].log == [(pytest.approx(t0 + 0.12), True), (pytest.approx(t0 + 0.24), False)]
    assert len(p[NIGHT].log) == 2  # never both active
    assert out.filter_moves == 2
    assert out.filter_night is False


def test_level_filter_follows_the_mode_and_honours_active_low() -> None:
    cfg = dataclasses.replace(IR, filter="level", filter_active_high=False, filter_ms=50.0)
    out, p, clock = outputs(cfg)
    t0 = clock.monotonic()
    out.set_filter(True)
    assert p[NIGHT].state is False  # active low: night = pin low
    assert clock.monotonic() == pytest.approx(t0 + 0.05)  # the settle wait
    out.set_filter(False)
    assert p[NIGHT].state is True
    assert p[DAY].function == "input"  # level mode leaves the day pin alone


def test_no_filter_claims_no_filter_pin() -> None:
    out, p, _clock = outputs(dataclasses.replace(IR, filter="none"))
    out.set_filter(True)
    assert out.filter_moves == 0
    assert p[NIGHT].log == []
    assert p[NIGHT].function == "input"


def test_a_pin_in_use_is_hardware_unavailable_and_frees_what_it_took() -> None:
    clock = FakeClock()
    factory, _p = pins(clock, LED, NIGHT, DAY)
    squatter = DigitalOutputDevice(DAY, pin_factory=factory)
    out = IrOutputs(IR, clock, factory)
    with pytest.raises(HardwareUnavailable, match="IR outputs"):
        out.open()
    squatter.close()
    DigitalOutputDevice(LED, pin_factory=factory).close()  # released again


# -- the illuminator ----------------------------------------------------------------------------


def test_illuminator_on_time_is_measured_on_the_clock() -> None:
    out, p, clock = outputs()
    assert isinstance(clock, FakeClock)
    t0 = clock.monotonic()
    out.illuminator_on()
    out.illuminator_on()  # already on: one flash
    clock.advance(0.7)
    out.illuminator_off()
    out.illuminator_off()
    assert p[LED].log == [(t0, True), (pytest.approx(t0 + 0.7), False)]
    assert (out.flashes, out.on_s, out.illuminating) == (1, pytest.approx(0.7), False)


def test_max_on_time_on_the_clock() -> None:
    out, p, clock = outputs(dataclasses.replace(IR, max_on_s=2.0))
    assert isinstance(clock, FakeClock)
    out.illuminator_on()
    clock.advance(1.99)
    assert out.expire() is False
    assert p[LED].state is True
    clock.advance(0.01)
    assert out.expire() is True
    assert p[LED].state is False
    assert out.guard_trips == 1
    assert out.on_s == pytest.approx(2.0)


def test_guard_thread_switches_off_when_nothing_else_does() -> None:
    """The capture thread is stuck (nobody calls off or expire): the guard's real-time
    timer switches the illuminator off."""
    out, p, _clock = outputs(dataclasses.replace(IR, max_on_s=0.05), clock=SystemClock())
    out.illuminator_on()
    p[LED].changed.clear()
    assert p[LED].changed.wait(5.0), "the guard never switched the illuminator off"
    assert p[LED].state is False
    assert out.guard_trips == 1
    assert not out.illuminating
    out.illuminator_off()  # the capture thread comes back later: harmless
    assert out.guard_trips == 1
    assert not [t for t in threading.enumerate() if t.name == "ir-guard" and t.is_alive()]


def test_off_before_the_limit_disarms_the_guard() -> None:
    out, _p, _clock = outputs(dataclasses.replace(IR, max_on_s=0.2), clock=SystemClock())
    out.illuminator_on()
    out.illuminator_off()  # joins the guard thread: it has ended, without tripping
    assert out.guard_trips == 0
    assert not [t for t in threading.enumerate() if t.name == "ir-guard" and t.is_alive()]


def test_close_switches_off_and_releases() -> None:
    out, p, _clock = outputs()
    out.illuminator_on()
    out.close()
    out.close()
    assert p[LED].state is False
    assert out.guard_trips == 0
    out.illuminator_on()  # after close: nothing
    assert p[LED].state is False
    factory = p[LED].factory
    DigitalOutputDevice(LED, pin_factory=factory).close()  # the pin is free again


# -- Lighting: metadata, battery, start -----------------------------------------------------------


class MetaCamera:
    """A fake of the Camera protocol's ``metadata()`` only (what Lighting reads)."""

    def __init__(self, md: object = None, error: Exception | None = None) -> None:
        self.md, self.error, self.calls = md, error, 0

    def metadata(self) -> object:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.md


def lighting(cfg: IrConfig = IR, battery: float | str | None = None,
             location: LocationConfig | None = None
             ) -> tuple[Lighting, dict[int, ClockedPin], FakeClock]:
    clock = FakeClock()
    factory, made = pins(clock, LED, NIGHT, DAY)
    lit = make_lighting(cfg, location or LocationConfig(), clock, factory,
                        battery_v=lambda: battery)  # type: ignore[arg-type,return-value]
    assert lit is not None
    lit.start()
    return lit, made, clock


def test_begin_reads_the_camera_and_moves_the_filter() -> None:
    lit, p, _clock = lighting()
    assert lit.policy.night is False
    assert p[NIGHT].log == []
    d = lit.begin(MetaCamera({"Lux": 2.0}))
    assert (d.night, d.illuminate, d.basis) == (True, True, "lux")
    assert [s for _t, s in p[NIGHT].log] == [True, False]  # one pulse: filter out


def test_metadata_right_after_a_lit_burst_is_skipped() -> None:
    lit, _p, clock = lighting()
    lit.begin(MetaCamera({"Lux": 2.0}))
    lit.on()
    clock.advance(0.5)
    lit.off()
    cam = MetaCamera({"Lux": 5000.0})  # the frame the illuminator lit
    clock.advance(0.5)
    assert lit.begin(cam).night is True
    assert cam.calls == 0
    assert lit.skipped_lit == 1
    clock.advance(400.0)
    assert lit.begin(cam).night is False
    assert cam.calls == 1


@pytest.mark.parametrize("cam", [MetaCamera(error=RuntimeError("frontend timeout")),
                                 MetaCamera(md=[1, 2]), object()])
def test_a_camera_without_good_metadata_keeps_the_burst_going(cam: object) -> None:
    lit, _p, _clock = lighting()
    d = lit.begin(cam)
    assert (d.night, d.basis) == (False, "kept")
    assert lit.metadata_errors == (0 if type(cam) is object else 1)


def test_low_battery_sheds_the_illuminator_and_bad_readings_are_refused() -> None:
    cfg = dataclasses.replace(IR, shed_below_v=11.8)
    lit, _p, _clock = lighting(cfg, battery=11.5)
    d = lit.begin(MetaCamera({"Lux": 1.0}))
    assert (d.night, d.illuminate) == (True, False)
    assert lit.stats()["shed"] == 1
    for bad in (math.nan, "12", -3.0):
        lit, _p, _clock = lighting(cfg, battery=bad)  # type: ignore[arg-type]
        assert lit.begin(MetaCamera({"Lux": 1.0})).illuminate is True
        assert lit.refused_battery == 1
    lit, _p, _clock = lighting(cfg, battery=12.6)
    assert lit.begin(MetaCamera({"Lux": 1.0})).illuminate is True


def test_start_puts_the_filter_where_the_sun_says() -> None:
    clock = FakeClock(start_wall=1_718_978_400.0)  # 2024-06-21 14:00 UTC: midnight at UTC+10
    factory, p = pins(clock, LED, NIGHT, DAY)
    lit = make_lighting(IR, LocationConfig(lat=43.1, lon=131.5), clock, factory)
    assert lit is not None
    lit.start()
    assert lit.policy.night is True
    assert [s for _t, s in p[NIGHT].log] == [True, False]
    stats = lit.stats()
    assert stats["night"] is True
    assert stats["by_schedule"] == 1
    assert stats["filter_moves"] == 1
    lit.close()


def test_disabled_is_none() -> None:
    assert make_lighting(IrConfig(), LocationConfig(), FakeClock(), MockFactory()) is None


# -- figures and config ---------------------------------------------------------------------------


def test_on_time_per_trigger_figures() -> None:
    # defaults: 3 frames 0.3 s apart, settle 0.6 s: continuous
    assert not pulsed_per_frame(0.3, 0.6)
    assert ir_on_s_per_trigger(3, 0.3, 0.6) == pytest.approx(0.6 + 0.6 + CAPTURE_S)
    # 2 s apart: pulsed per frame
    assert pulsed_per_frame(2.0, 0.6)
    assert ir_on_s_per_trigger(3, 2.0, 0.6) == pytest.approx(3 * (0.6 + CAPTURE_S))


def ir_toml(**ir: object) -> dict[str, Any]:
    return {"unit": {"id": "LL-1"}, "mqtt": {"host": "127.0.0.1", "tls": False},
            "ir": {"enabled": True, **ir}}


@pytest.mark.parametrize(("ir", "camera", "key"), [
    ({"night_below_lux": 40.0, "day_above_lux": 40.0}, {}, "ir.day_above_lux"),
    ({"night_above_exposure": 50.0}, {}, "ir.night_above_exposure"),
    ({"led_pin": 17}, {}, "ir.led_pin"),  # the PIR's pin
    ({"filter_day_pin": 5}, {}, "ir.filter_day_pin"),
    ({"filter_night_pin": 13}, {}, "ir.filter_night_pin"),
    ({"max_on_s": 2.0}, {}, "ir.max_on_s"),  # 0.6 + 2 × 0.3 + 1 = 2.2 needed
    ({}, {"burst_frames": 20}, "ir.max_on_s"),
    ({"filter_ms": 0.5}, {}, "ir.filter_ms"),
    ({"settle_s": math.inf}, {}, "ir.settle_s"),
])
def test_bad_ir_config_names_the_key(ir: dict[str, object], camera: dict[str, object],
                                     key: str) -> None:
    data = ir_toml(**ir)
    if camera:
        data["camera"] = camera
    with pytest.raises(ConfigError) as e:
        config.parse(data)
    assert e.value.key == key


def test_good_ir_configs_pass() -> None:
    assert config.parse(ir_toml()).ir.enabled
    config.parse(ir_toml(filter="none", filter_day_pin=13))  # unused pins may clash
    config.parse(ir_toml(led_pin=17) | {"trigger": {"source": "mcu"}})  # no PIR on the Pi
    config.parse(ir_toml(max_on_s=2.2))


@pytest.mark.parametrize(("frames", "interval", "settle"), [
    (3, 0.3, 0.6), (10, 1.0, 0.6), (10, 1.3, 0.6), (30, 10.0, 0.6), (5, 0.0, 0.0), (2, 0.5, 0.2),
])
def test_config_check_and_the_adapter_agree_on_the_longest_on_time(
        frames: int, interval: float, settle: float) -> None:
    need = longest_on_s(frames, interval, settle) + config.IR_CAPTURE_MARGIN_S
    cam = {"burst_frames": frames, "burst_interval_s": interval}
    config.parse(ir_toml(settle_s=settle, max_on_s=need) | {"camera": cam})
    with pytest.raises(ConfigError, match=r"ir\.max_on_s"):
        config.parse(ir_toml(settle_s=settle, max_on_s=need - 0.01) | {"camera": cam})


def test_check_config_refuses_with_exit_2_naming_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[unit]\nid = "LL-1"\n[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
                 '[ir]\nenabled = true\nnight_below_lux = 50.0\n')
    r = subprocess.run([sys.executable, "-m", "edge_app", "check-config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "ir.day_above_lux" in r.stderr
