"""Burst capture: order, indices, pre-trigger frames, spacing, and stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.config import CameraConfig
from edge_app.core.events import Frame, TriggerEvent
from edge_app.sim.cameras import ReplayCamera, SyntheticCamera
from edge_app.trap.capture import capture_burst

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
