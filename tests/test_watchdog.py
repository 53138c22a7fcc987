"""The watchdog proves the trap works: pings only while every stage beats.

The pure parts (stage health, the interval from systemd's environment) run on a fake clock.
The pings go to a real ``NOTIFY_SOCKET`` (a unix datagram socket this test binds and reads),
and the last test hangs the capture stage of a real in-process trap and watches the pings stop.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from edge_app.core import config
from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.events import Frame
from edge_app.trap.daemon import App
from edge_app.trap.hardware.camera import Camera
from edge_app.trap.health import IDLE_BEAT_S, StageHealth
from edge_app.trap.supervisor import StageQueue, Supervisor, sd_notify
from edge_app.trap.watchdog import DEFAULT_INTERVAL_S, Watchdog, interval_from_env

# -- stage health (pure) ----------------------------------------------------------------------


def test_a_stage_is_late_only_after_its_deadline_without_a_beat() -> None:
    clock = FakeClock()
    health = StageHealth(clock)
    capture = health.watch("capture", 10.0)
    health.watch("detect", 30.0)
    clock.advance(9.9)
    assert health.late() == []
    clock.advance(0.2)
    assert [name for name, _ in health.late()] == ["capture"]
    capture()
    assert health.healthy()
    clock.advance(31.0)
    late = health.late()
    assert [name for name, _ in late] == ["detect", "capture"]  # worst first
    assert late[0][1] == pytest.approx(41.1)
    snap = health.snapshot()
    assert snap["capture"] == {"deadline_s": 10.0, "beat_age_s": 31.0, "beats": 1}


def test_an_unwatched_stage_never_counts_and_idle_beats_fit_the_deadline() -> None:
    clock = FakeClock()
    health = StageHealth(clock)
    health.beat("housekeeping")  # not watched: ignored
    clock.advance(1e6)
    assert health.healthy()
    assert health.watch("fast", 3.0).every_s == pytest.approx(1.0)
    assert health.watch("slow", 120.0).every_s == IDLE_BEAT_S
    with pytest.raises(ValueError, match="deadline"):
        health.watch("bad", 0.0)


def test_a_waiting_consumer_beats_and_a_busy_one_does_not() -> None:
    clock = SystemClock()
    sup = Supervisor(clock)
    sup.add("detect", lambda stop: None, deadline_s=0.3)
    q: StageQueue[int] = StageQueue("q", 2)
    stop = threading.Event()
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(q.get(stop, sup.heart("detect"))))
    t.start()
    time.sleep(0.6)  # two deadlines of waiting: the idle beats keep it healthy
    assert sup.health.healthy()
    q.put_drop_oldest(7)
    t.join(5)
    assert got == [7]
    time.sleep(0.4)  # now "busy" with the item and not beating
    assert [n for n, _ in sup.health.late()] == ["detect"]


# -- systemd's environment ----------------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (DEFAULT_INTERVAL_S, False)),
    ({"WATCHDOG_USEC": "60000000"}, (30.0, True)),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, (30.0, True)),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, (DEFAULT_INTERVAL_S, False)),
    ({"WATCHDOG_USEC": "-5"}, (DEFAULT_INTERVAL_S, False)),
    ({"WATCHDOG_USEC": "nan"}, (DEFAULT_INTERVAL_S, False)),
    ({"WATCHDOG_USEC": "0"}, (DEFAULT_INTERVAL_S, False)),
])
def test_interval_follows_watchdog_usec_for_this_process_only(
        env: dict[str, str], expected: tuple[float, bool]) -> None:
    assert interval_from_env(env, 4242) == expected


# -- pings on a real NOTIFY_SOCKET ------------------------------------------------------------


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(256).decode())
        except TimeoutError:
            return out


def test_pings_while_healthy_withheld_while_late_and_the_mcu_hears_the_verdict(
        notify_socket: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    health = StageHealth(clock)
    beat = health.watch("capture", 10.0)
    verdicts: list[bool] = []
    dog = Watchdog(health, clock, sd_notify, 5.0, on_tick=verdicts.append)
    assert dog.tick()
    assert received(notify_socket) == ["WATCHDOG=1"]
    clock.advance(11.0)
    with caplog.at_level(logging.ERROR):
        assert not dog.tick()
        assert not dog.tick()
    assert received(notify_socket) == []
    assert sum("capture" in r.message for r in caplog.records) == 1  # once, not per tick
    beat()
    assert dog.tick()
    assert received(notify_socket) == ["WATCHDOG=1"]
    assert verdicts == [True, False, False, True]
    assert (dog.stats.pings, dog.stats.withheld) == (2, 2)


def test_a_failing_heartbeat_hook_does_not_stop_the_pings(notify_socket: socket.socket) -> None:
    clock = FakeClock()
    health = StageHealth(clock)

    def broken(_ok: bool) -> None:
        raise OSError("the MCU's UART is gone")

    assert Watchdog(health, clock, sd_notify, 5.0, on_tick=broken).tick()
    assert received(notify_socket) == ["WATCHDOG=1"]


class HangingCamera:
    """A camera whose captures hang from the n-th on, as a frontend that never returns does
    (wraps the sim camera; releases when the test ends so the thread can finish)."""

    def __init__(self, inner: Camera, hang_from: int) -> None:
        self.inner = inner
        self.hang_from = hang_from
        self.calls = 0
        self.release = threading.Event()
        self.hung = threading.Event()

    def start(self) -> None:
        self.inner.start()

    def capture(self, index: int) -> Frame:
        self.calls += 1
        if self.calls >= self.hang_from:
            self.hung.set()
            self.release.wait()
        return self.inner.capture(index)

    def recent(self, n: int) -> list[Frame]:
        return self.inner.recent(n)

    def close(self) -> None:
        self.release.set()
        self.inner.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.models
def test_a_hung_camera_stops_the_pings_and_names_the_stage(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path,
        notify_socket: socket.socket) -> None:
    cfg = config.parse({
        "unit": {"id": "LL-007"},
        "hardware": {"backend": "sim"},
        "trigger": {"holdoff_s": 0.0, "debounce_s": 0.02, "sample_rate_hz": 100.0},
        "camera": {"source": "replay", "images_dir": str(cameratrapai_dir), "burst_frames": 1,
                   "pre_trigger_frames": 0},
        "storage": {"root": str(tmp_path / "trap")},
        "mqtt": {"enabled": False},
        "watchdog": {"stage_deadline_s": 1.5},
    })
    app = App(cfg, models_dir)
    camera = HangingCamera(app.camera, hang_from=2)
    app.camera = camera
    app.watchdog.interval_s = 0.25
    done = threading.Event()
    dog = threading.Thread(target=app.watchdog.run, args=(done,))
    app.start()
    dog.start()
    try:
        assert app.world is not None
        app.world.visit()  # first trigger: captured, detected, stored
        deadline = time.monotonic() + 60
        while app.counters.empty + app.counters.kept < 1:
            assert time.monotonic() < deadline, "first trigger never decided"
            time.sleep(0.05)
        app.world.leave()
        time.sleep(1.0)
        assert "WATCHDOG=1" in received(notify_socket)  # healthy while working and idle
        app.world.visit()  # second trigger: the camera hangs
        assert camera.hung.wait(10)
        time.sleep(cfg.watchdog.stage_deadline_s + 0.6)
        received(notify_socket)  # drop pings sent before the deadline passed
        time.sleep(1.0)
        assert received(notify_socket) == []
        assert app.watchdog.stats.late_now == ("capture",)
        stats = app.stats_extra()
        assert stats["watchdog"]["late"] == ["capture"]
        assert stats["stages"]["crashes"]["capture"] == 0
        assert stats["stages"]["health"]["capture"]["beat_age_s"] > 1.5
        camera.release.set()  # the frame arrives after all: the stage beats again
        deadline = time.monotonic() + 30
        while "WATCHDOG=1" not in received(notify_socket):
            assert time.monotonic() < deadline, "pings never came back"
    finally:
        done.set()
        camera.release.set()
        app.stop()
        dog.join(5)


def test_stage_crashes_are_counted_for_the_stats() -> None:
    sup = Supervisor(SystemClock(), max_restarts=1, window_s=60.0, restart_delay_s=0.01)
    runs = []

    def flaky(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a bad frame")
        stop.wait()

    sup.add("detect", flaky)
    sup.start()
    deadline = time.monotonic() + 5
    while len(runs) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sup.crash_counts() == {"detect": 1}
    sup.stop(2.0)


def test_config_refuses_a_deadline_out_of_range() -> None:
    with pytest.raises(config.ConfigError, match=r"watchdog\.stage_deadline_s"):
        config.parse({"unit": {"id": "LL-1"}, "watchdog": {"stage_deadline_s": 0.5}})
    parsed = config.parse({"unit": {"id": "LL-1"}})
    assert dataclasses.asdict(parsed)["watchdog"]["stage_deadline_s"] == 120.0
