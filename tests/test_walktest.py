"""``camtrap walktest``: the warm-up gate and the box drawing on their own, then the whole walk
test in simulation: mock PIR pulses in front of the replay camera showing the shared photos,
the real detector, an LED on a mock pin, and the pictures a phone would show."""

from __future__ import annotations

import queue
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

from edge_app.core import config
from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.events import Detection
from edge_app.trap.hardware.factory import make_sim_world
from edge_app.trap.hardware.trigger import make_pin_factory
from edge_app.trap.walktest import LATEST, Walktest, WarmupGate, draw_boxes, save_atomic


def test_warmup_gate_ignores_and_counts_early_triggers_with_a_countdown() -> None:
    gate = WarmupGate(100.0, 60.0, every_s=10.0)
    assert gate.countdown(100.0) == "PIR warming up: 60 s left (triggers ignored meanwhile)"
    assert gate.countdown(105.0) is None  # not due yet
    assert gate.next_tick() == 110.0
    assert not gate.admit(101.0)
    assert not gate.admit(159.9)
    line = gate.countdown(110.0)
    assert line is not None
    assert "50 s left" in line
    assert gate.admit(160.0)
    ready = gate.countdown(160.0)
    assert ready is not None
    assert ready.startswith("PIR ready (2 trigger(s) ignored")
    assert gate.countdown(1000.0) is None  # said once
    assert gate.ignored == 2


def test_no_warmup_is_ready_at_once() -> None:
    gate = WarmupGate(5.0, 0.0)
    assert gate.admit(5.0)
    line = gate.countdown(5.0)
    assert line is not None
    assert line.startswith("PIR ready (0 trigger(s)")


def test_boxes_are_drawn_where_the_detection_is(tmp_path: Path) -> None:
    im = Image.new("RGB", (2000, 1000), (0, 0, 0))
    d = Detection("person", 0.9, (0.5, 0.5, 0.25, 0.25), "person")
    out = draw_boxes(im, [d], px=400)
    assert out.size == (400, 200)
    assert out.getpixel((100, 150)) == (0, 0, 0)  # outside the box: untouched
    assert out.getpixel((200, 125)) == (255, 64, 64)  # the box's left edge, in person red
    assert out.getpixel((250, 125)) == (0, 0, 0)  # inside the box: not filled
    path = tmp_path / "x.jpg"
    save_atomic(out, path)
    with Image.open(path) as back:
        assert back.size == (400, 200)
    assert [p.name for p in tmp_path.iterdir()] == ["x.jpg"]  # no temporary left


def red_pixels(im: Image.Image) -> int:
    """Pixels of the person box's red (after JPEG: strong red, little green and blue)."""
    import numpy as np

    a = np.asarray(im.convert("RGB")).astype(int)
    return int(((a[..., 0] > 200) & (a[..., 1] < 110) & (a[..., 2] < 110)).sum())


@pytest.mark.models
def test_walk_test_in_simulation(tmp_path: Path, models_dir: Path,
                                 cameratrapai_dir: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("human.jpg", "vehicle.jpg"):  # each visit brings the next, in this order
        shutil.copy(cameratrapai_dir / name, images)
    cfg = config.parse({
        "unit": {"id": "LL-042"}, "hardware": {"backend": "sim"},
        "trigger": {"holdoff_s": 0.0, "debounce_s": 0.02, "sample_rate_hz": 100.0},
        "camera": {"source": "replay", "images_dir": str(images)},
        "detector": {"models_dir": str(models_dir)},
        "storage": {"root": str(tmp_path / "data")}, "mqtt": {"enabled": False}})
    pins = make_pin_factory("sim")
    lines: queue.Queue[str] = queue.Queue()
    out = tmp_path / "out"
    wt = Walktest(cfg, out, models_dir, SystemClock(), pin_factory=pins, led_pin=22,
                  warmup_s=0.6, say=lines.put)
    world = make_sim_world(pins, 17, wt.camera, SystemClock())
    runner = threading.Thread(target=wt.run, name="walktest")
    runner.start()

    def next_line(containing: str) -> str:
        while True:
            line = lines.get(timeout=20)
            if containing in line:
                return line

    try:
        next_line("PIR warming up")
        pir = pins.pin(17)  # type: ignore[attr-defined]
        pir.drive_high()  # a spurious trigger during the warm-up
        threading.Event().wait(0.1)
        pir.drive_low()
        assert "1 trigger(s) ignored" in next_line("PIR ready")
        led = pins.pin(22)  # type: ignore[attr-defined]
        world.visit(pulse_s=0.1)
        line = next_line("#1")
        assert "person" in line
        assert line.endswith("-> walktest-0001.jpg")
        assert any(s.state for s in led.states)  # the LED was switched on
        with Image.open(out / LATEST) as im, Image.open(images / "human.jpg") as raw:
            assert max(im.size) <= 960
            plain = raw.convert("RGB")
            plain.thumbnail((960, 960))
            assert red_pixels(im) > red_pixels(plain) + 100  # the person's box was drawn
        assert (out / "walktest-0001.jpg").read_bytes() == (out / LATEST).read_bytes()
        world.visit(pulse_s=0.1)
        assert "vehicle" in next_line("#2")
        assert (out / "walktest-0002.jpg").read_bytes() == (out / LATEST).read_bytes()
    finally:
        wt.stop()
        runner.join(10)
    assert not runner.is_alive()
    assert "2 trigger(s) shown, 1 ignored" in next_line("walk test over")


def test_a_fake_clock_drives_the_gate_without_sleeping() -> None:
    clock = FakeClock()
    gate = WarmupGate(clock.monotonic(), 30.0)
    said = []
    stop = threading.Event()
    while (line := gate.countdown(clock.monotonic())) is None or not line.startswith("PIR r"):
        if line:
            said.append(line)
        clock.wait(stop, gate.next_tick() - clock.monotonic())
    assert [s.split(":")[1].strip().split()[0] for s in said] == ["30", "20", "10"]
