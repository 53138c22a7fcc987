"""Burst capture: order, indices, pre-trigger frames, spacing, stop, and IR day/night."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin
from PIL import Image

from edge_app.core.clock import Clock, FakeClock, SystemClock
from edge_app.core.config import CameraConfig, IrConfig, LocationConfig
from edge_app.core.errors import HardwareUnavailable
from edge_app.core.events import Burst, Frame, TriggerEvent, Verdict
from edge_app.sim.cameras import ReplayCamera, SyntheticCamera
from edge_app.trap.capture import CapturedBurst, capture_burst
from edge_app.trap.hardware.ir import Lighting, make_lighting
from edge_app.trap.store.pipeline import build_event

TRIGGER = TriggerEvent(number=7, mono=1000.0, wall=1_790_000_000.0, source="pir:17")


@pytest.fixture
def replay(tmp_path: Path) -> ReplayCamera:
    for name, colour in (("a.jpg", (200, 0, 0)), ("b.jpg", (0, 200, 0))):
        Image.new("RGB", (16, 16), colour).save(tmp_path / name, "JPEG")
    return ReplayCamera(tmp_path, clock=FakeClock())


def test_burst_order_indices_and_spacing() -> None:
    clock = FakeClock()
    cam = SyntheticCamera(64, 64, 1, 70, clock)
    cam.advance(occupied=True)
    cfg = CameraConfig(source="synthetic", burst_frames=3, burst_interval_s=0.3,
                       pre_trigger_frames=2)
    t0 = clock.monotonic()
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event())
    assert burst.trigger is TRIGGER
    assert [f.index for f in burst.frames] == [0, 1, 2, 3, 4]
    assert [f.pre_trigger for f in burst.frames] == [True, True, False, False, False]
    monos = [f.mono for f in burst.frames]
    assert monos == sorted(monos)
    assert monos[2:] == pytest.approx([t0, t0 + 0.3, t0 + 0.6])
    assert all(f.mono < t0 for f in burst.frames[:2])
    assert len({f.jpeg for f in burst.frames}) == 5  # a moving animal: every frame differs


def test_burst_without_pre_trigger_frames(replay: ReplayCamera) -> None:
    cfg = CameraConfig(source="replay", images_dir="x", burst_frames=2, pre_trigger_frames=0)
    burst = capture_burst(replay, TRIGGER, cfg, FakeClock(), threading.Event())
    assert [(f.index, f.pre_trigger) for f in burst.frames] == [(0, False), (1, False)]


def test_burst_frames_show_the_scene_at_capture(replay: ReplayCamera, tmp_path: Path) -> None:
    name = replay.advance()
    cfg = CameraConfig(source="replay", images_dir="x", burst_frames=2, pre_trigger_frames=1)
    burst = capture_burst(replay, TRIGGER, cfg, FakeClock(), threading.Event())
    assert {f.jpeg for f in burst.frames} == {(tmp_path / name).read_bytes()}
    assert {f.name for f in burst.frames} == {name}


def test_stop_set_before_the_burst_still_takes_one_frame(replay: ReplayCamera) -> None:
    stop = threading.Event()
    stop.set()
    cfg = CameraConfig(source="replay", images_dir="x", burst_frames=5, pre_trigger_frames=1)
    burst = capture_burst(replay, TRIGGER, cfg, FakeClock(), stop)
    assert [(f.index, f.pre_trigger) for f in burst.frames] == [(0, True), (1, False)]


class StopAfter:
    """A camera that sets ``stop`` after its n-th capture (a shutdown mid-burst)."""

    def __init__(self, inner: ReplayCamera, stop: threading.Event, n: int) -> None:
        self.inner, self.stop, self.n, self.captured = inner, stop, n, 0

    def start(self) -> None:
        self.inner.start()

    def capture(self, index: int) -> Frame:
        self.captured += 1
        if self.captured == self.n:
            self.stop.set()
        return self.inner.capture(index)

    def recent(self, n: int) -> list[Frame]:
        return self.inner.recent(n)

    def close(self) -> None:
        self.inner.close()


def test_stop_during_a_burst_keeps_the_frames_taken(replay: ReplayCamera) -> None:
    stop = threading.Event()
    cam = StopAfter(replay, stop, 2)
    cfg = CameraConfig(source="replay", images_dir="x", burst_frames=5, pre_trigger_frames=0)
    burst = capture_burst(cam, TRIGGER, cfg, FakeClock(), stop)
    assert [f.index for f in burst.frames] == [0, 1]
    assert cam.captured == 2


def test_stop_interrupts_a_real_wait(replay: ReplayCamera) -> None:
    stop = threading.Event()
    cfg = CameraConfig(source="replay", images_dir="x", burst_frames=3, burst_interval_s=10.0,
                       pre_trigger_frames=0)
    timer = threading.Timer(0.05, stop.set)
    timer.start()
    t0 = time.monotonic()
    burst = capture_burst(replay, TRIGGER, cfg, SystemClock(), stop)
    assert time.monotonic() - t0 < 2.0
    assert len(burst.frames) == 1
    timer.join()


# -- day and night: IR control around the burst -------------------------------------------------

LED, NIGHT, DAY = 13, 5, 6
IR = IrConfig(enabled=True)
DARK = {"Lux": 1.5, "ExposureTime": 33_000.0, "AnalogueGain": 16.0}
BRIGHT = {"Lux": 3000.0, "ExposureTime": 2_000.0, "AnalogueGain": 1.0}


class LitCamera:
    """A synthetic camera with picamera2-style ``metadata()`` that notes, at every capture,
    the time on the test's clock and whether the IR illuminator pin was high; it can fail
    its n-th capture or hang in it until released (a fake at the Camera protocol)."""

    def __init__(self, clock: Clock, led: Any, md: dict[str, float], *, fail_at: int = 0,
                 hang: threading.Event | None = None) -> None:
        self.inner = SyntheticCamera(64, 64, 1, 70, clock)
        self.clock, self.led, self.md = clock, led, md
        self.fail_at, self.hang = fail_at, hang
        self.shots: list[tuple[float, bool]] = []

    def start(self) -> None:
        self.inner.start()

    def capture(self, index: int) -> Frame:
        self.shots.append((self.clock.monotonic(), bool(self.led.state)))
        if len(self.shots) == self.fail_at:
            raise HardwareUnavailable("camera frontend timeout")
        if self.hang is not None:
            assert self.hang.wait(10.0), "the test never released the camera"
        return self.inner.capture(index)

    def recent(self, n: int) -> list[Frame]:
        return self.inner.recent(n)

    def metadata(self) -> dict[str, float]:
        return dict(self.md)

    def close(self) -> None:
        self.inner.close()


def lit_rig(md: dict[str, float], ir: IrConfig = IR, clock: Clock | None = None,
            battery_v: float | None = None, **cam_kw: Any
            ) -> tuple[Lighting, LitCamera, Any, Clock]:
    clock = clock or FakeClock()
    factory = MockFactory()
    lighting = make_lighting(ir, LocationConfig(), clock, factory, battery_v=lambda: battery_v)
    assert lighting is not None
    lighting.start()
    led = factory.pin(LED)
    return lighting, LitCamera(clock, led, md, **cam_kw), factory, clock


def test_night_burst_lights_only_the_burst_frames_and_is_tagged() -> None:
    lighting, cam, factory, clock = lit_rig(DARK)
    cfg = CameraConfig(source="synthetic", burst_frames=3, burst_interval_s=0.3,
                       pre_trigger_frames=2)
    t_begin = clock.monotonic()
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    assert burst.night is True
    assert [f.pre_trigger for f in burst.frames] == [True, True, False, False, False]
    assert [lit for _t, lit in cam.shots] == [True, True, True]
    times = [t for t, _lit in cam.shots]
    # filter pulse (0.1 s) + settle (0.6 s) before the first frame, then 0.3 s apart
    assert times == pytest.approx([t_begin + 0.7, t_begin + 1.0, t_begin + 1.3])
    assert factory.pin(LED).state is False  # off right after the burst
    assert lighting.outputs.flashes == 1  # continuous: 0.3 s gaps are < 2 × settle
    assert lighting.outputs.on_s == pytest.approx(0.6 + 0.6)
    assert lighting.outputs.filter_night is True


def test_day_burst_never_lights_and_is_tagged_day() -> None:
    lighting, cam, _factory, clock = lit_rig(BRIGHT)
    cfg = CameraConfig(source="synthetic", burst_frames=3, pre_trigger_frames=1)
    t0 = clock.monotonic()
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    assert burst.night is False
    assert [lit for _t, lit in cam.shots] == [False] * 3
    assert cam.shots[0][0] == t0  # no settle, no filter move by day
    assert lighting.outputs.flashes == 0
    assert lighting.outputs.filter_moves == 1


def test_without_ir_control_the_burst_is_untagged(replay: ReplayCamera) -> None:
    cfg = CameraConfig(source="replay", images_dir="x", burst_frames=1)
    assert capture_burst(replay, TRIGGER, cfg, FakeClock(), threading.Event()).night is None


def test_long_gaps_pulse_the_illuminator_per_frame() -> None:
    lighting, cam, factory, clock = lit_rig(DARK)
    cfg = CameraConfig(source="synthetic", burst_frames=3, burst_interval_s=2.0,
                       pre_trigger_frames=0)
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    assert burst.night is True
    times = [t for t, _lit in cam.shots]
    assert [lit for _t, lit in cam.shots] == [True, True, True]
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([2.0, 2.0])
    assert lighting.outputs.flashes == 3
    assert lighting.outputs.on_s == pytest.approx(3 * 0.6)  # settle per frame; captures instant
    assert factory.pin(LED).state is False


def test_a_failing_capture_still_switches_the_illuminator_off() -> None:
    lighting, cam, factory, clock = lit_rig(DARK, fail_at=2)
    cfg = CameraConfig(source="synthetic", burst_frames=3, pre_trigger_frames=0)
    with pytest.raises(HardwareUnavailable):
        capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    assert cam.shots[1][1] is True
    assert factory.pin(LED).state is False
    assert not lighting.outputs.illuminating


def test_stop_mid_burst_switches_the_illuminator_off_and_keeps_the_frames() -> None:
    lighting, cam, factory, clock = lit_rig(DARK)
    stop = threading.Event()
    cam_stop = StopAfterLit(cam, stop, 1)
    cfg = CameraConfig(source="synthetic", burst_frames=4, pre_trigger_frames=0)
    burst = capture_burst(cam_stop, TRIGGER, cfg, clock, stop, lighting)
    assert len(burst.frames) == 1
    assert burst.night is True
    assert factory.pin(LED).state is False


class StopAfterLit(LitCamera):
    """A LitCamera that sets ``stop`` after its n-th capture (a shutdown mid-burst)."""

    def __init__(self, inner: LitCamera, stop: threading.Event, n: int) -> None:
        super().__init__(inner.clock, inner.led, inner.md)
        self.stop, self.n = stop, n

    def capture(self, index: int) -> Frame:
        frame = super().capture(index)
        if len(self.shots) == self.n:
            self.stop.set()
        return frame


def test_max_on_time_cuts_a_long_burst_on_the_clock() -> None:
    ir = dataclasses.replace(IR, max_on_s=1.5)  # shorter than the burst (no config check here)
    lighting, cam, _factory, clock = lit_rig(DARK, ir=ir)
    cfg = CameraConfig(source="synthetic", burst_frames=6, burst_interval_s=0.3,
                       pre_trigger_frames=0)
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    # on at settle start; frames at 0.6, 0.9, 1.2 s of on-time lit, 1.5 s reached: cut
    assert [lit for _t, lit in cam.shots] == [True, True, True, False, False, False]
    assert len(burst.frames) == 6
    assert lighting.outputs.guard_trips == 1


def test_a_hung_capture_cannot_keep_the_illuminator_on() -> None:
    """Real time: the camera hangs in its first capture with the illuminator on; the guard
    thread switches it off while the capture thread is still stuck."""
    release = threading.Event()
    ir = dataclasses.replace(IR, settle_s=0.0, max_on_s=0.1, filter="none")
    lighting, cam, factory, clock = lit_rig(DARK, ir=ir, clock=SystemClock(), hang=release)
    cfg = CameraConfig(source="synthetic", burst_frames=1, pre_trigger_frames=0)
    led = factory.pin(LED)
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(
        capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)))
    worker.start()
    try:
        assert lighting.outputs.guard_tripped.wait(5.0), "the illuminator stayed on"
        assert led.state is False
        assert worker.is_alive()
        assert [lit for _t, lit in cam.shots] == [True]
    finally:
        release.set()
        worker.join(5.0)
    assert result
    assert result[0].night is True
    assert lighting.outputs.guard_trips == 1


def test_low_battery_night_burst_is_dark_but_tagged_night() -> None:
    ir = dataclasses.replace(IR, shed_below_v=11.8)
    lighting, cam, _factory, clock = lit_rig(DARK, ir=ir, battery_v=11.2)
    cfg = CameraConfig(source="synthetic", burst_frames=2, pre_trigger_frames=0)
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    assert burst.night is True
    assert [lit for _t, lit in cam.shots] == [False, False]
    assert lighting.stats()["shed"] == 1
    assert lighting.outputs.flashes == 0


class BrokenPin(MockPin):
    """gpiozero's MockPin (an API fake) whose writes fail once armed, like a GPIO chip
    that went away."""

    armed = False

    def _change_state(self, value: bool) -> bool:
        if self.armed:
            raise OSError("GPIO write failed")
        changed: bool = super()._change_state(value)
        return changed


def test_ir_trouble_does_not_cost_the_frames() -> None:
    clock = FakeClock()
    factory = MockFactory()
    broken = factory.pin(NIGHT, pin_class=BrokenPin)
    lighting = make_lighting(IR, LocationConfig(), clock, factory)
    assert lighting is not None
    lighting.start()
    broken.armed = True
    cam = LitCamera(clock, factory.pin(LED), DARK)
    cfg = CameraConfig(source="synthetic", burst_frames=2, pre_trigger_frames=0)
    burst = capture_burst(cam, TRIGGER, cfg, clock, threading.Event(), lighting)
    assert len(burst.frames) == 2
    assert burst.night is None
    assert factory.pin(LED).state is False


def test_the_event_json_carries_the_night_tag() -> None:
    frame = Frame(b"x", 1.0, 2.0, 0, False)
    verdict = Verdict("keep", "animal", None, 0.9, 0, (None,))
    for night in (True, False, None):
        event = build_event(event_id="LL-1-1", unit="LL-1", seq=1,
                            burst=CapturedBurst(TRIGGER, (frame,), night=night),
                            verdict=verdict, media=[], battery_v=None, temp_c=None,
                            time_synced=True)
        assert event["night"] is night
    plain = build_event(event_id="LL-1-1", unit="LL-1", seq=1, burst=Burst(TRIGGER, (frame,)),
                        verdict=verdict, media=[], battery_v=None, temp_c=None,
                        time_synced=True)
    assert plain["night"] is None
