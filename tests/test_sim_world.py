"""The simulated outdoors: visits change the scene, then pulse the PIR through gpiozero mocks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.config import CameraConfig, TriggerConfig
from edge_app.core.events import TriggerEvent
from edge_app.sim.cameras import ReplayCamera, SyntheticCamera
from edge_app.sim.world import SimWorld
from edge_app.trap.capture import capture_burst
from edge_app.trap.hardware.camera import PiCamera2Camera
from edge_app.trap.hardware.trigger import PirTrigger, make_pin_factory


@pytest.fixture
def factory() -> Iterator[Any]:
    f = make_pin_factory("sim")
    yield f
    f.close()  # type: ignore[attr-defined]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        Image.new("RGB", (16, 16), (80 * i, 40, 40)).save(tmp_path / name, "JPEG")
    return tmp_path


def states(pin: Any) -> list[bool]:
    """The pin's level history with repeats collapsed."""
    out: list[bool] = []
    for s in pin.states:
        if not out or out[-1] != bool(s.state):
            out.append(bool(s.state))
    return out


def test_visit_advances_the_scene_then_drives_high_and_leave_drives_low(
    factory: Any, folder: Path
) -> None:
    cam = ReplayCamera(folder, clock=FakeClock())
    world = SimWorld(factory, 17, cam, FakeClock())
    assert not world.pir_high
    assert world.visit() == "a.jpg"
    assert world.pir_high
    assert cam.scene == "a.jpg"
    world.leave()
    assert not world.pir_high
    assert world.visit() == "b.jpg"
    world.close()
    assert states(factory.pin(17)) == [False, True, False, True, False]
    assert world.visits == 2


def test_visit_with_pulse_leaves_by_itself(factory: Any, folder: Path) -> None:
    world = SimWorld(factory, 17, ReplayCamera(folder), SystemClock())
    world.visit(pulse_s=0.05)
    assert world.pir_high
    deadline = time.monotonic() + 2.0
    while world.pir_high and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not world.pir_high


def test_a_new_visit_keeps_the_pin_high_and_reschedules_the_leave(
    factory: Any, folder: Path
) -> None:
    world = SimWorld(factory, 17, ReplayCamera(folder), SystemClock())
    world.visit(pulse_s=0.05)
    world.visit()  # still moving in front of a retriggerable PIR: no scheduled leave now
    time.sleep(0.15)
    assert world.pir_high
    world.leave()
    assert states(factory.pin(17)) == [False, True, False]


def test_run_makes_scheduled_visits_and_ends_low(factory: Any) -> None:
    clock = FakeClock()
    cam = SyntheticCamera(64, 64, 1, 70, clock)
    world = SimWorld(factory, 17, cam, clock)
    t0 = clock.monotonic()
    world.run(threading.Event(), every_s=10.0, pulse_s=1.0, max_visits=3)
    assert world.visits == 3
    assert cam.scene.startswith("synthetic-0003")
    assert clock.monotonic() - t0 == pytest.approx(3 * 10.0 + 1.0)  # last visit's pulse
    assert states(factory.pin(17)) == [False, True, False, True, False, True, False]


def test_run_stops_on_stop_and_when_a_replay_ends(factory: Any, folder: Path) -> None:
    stop = threading.Event()
    stop.set()
    world = SimWorld(factory, 17, ReplayCamera(folder), FakeClock())
    world.run(stop, every_s=1.0)
    assert world.visits == 0
    once = SimWorld(factory, 17, ReplayCamera(folder, loop=False), FakeClock())
    once.run(threading.Event(), every_s=1.0)
    assert once.visits == 3
    assert not once.pir_high


def test_world_refuses_a_camera_without_scenes(factory: Any) -> None:
    with pytest.raises(TypeError):
        SimWorld(factory, 17, PiCamera2Camera(CameraConfig(), FakeClock()), FakeClock())


def test_visit_reaches_a_burst_end_to_end(factory: Any, folder: Path) -> None:
    """World → MockFactory pin → MotionSensor → filter → trigger → burst of the new scene."""
    clock = SystemClock()
    cam = ReplayCamera(folder, clock=clock)
    world = SimWorld(factory, 17, cam, clock)
    got: queue.Queue[TriggerEvent] = queue.Queue(maxsize=4)
    cfg = TriggerConfig(pin=17, sample_rate_hz=100.0, debounce_s=0.02, holdoff_s=0.2)
    pir = PirTrigger(cfg, clock, got.put_nowait, factory)
    try:
        pir.start()
        cam.start()
        cam.advance()  # a.jpg was in front of the camera before
        assert world.visit(pulse_s=0.1) == "b.jpg"
        ev = got.get(timeout=2.0)
        assert ev.source == "pir:17"
        cam_cfg = CameraConfig(source="replay", images_dir=str(folder), burst_frames=2,
                               burst_interval_s=0.01, pre_trigger_frames=1)
        burst = capture_burst(cam, ev, cam_cfg, clock, threading.Event())
        assert [f.name for f in burst.frames] == ["b.jpg"] * 3
        assert burst.frames[1].jpeg == (folder / "b.jpg").read_bytes()
    finally:
        pir.close()
        world.close()
