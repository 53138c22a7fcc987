"""The capture guard: every camera call bounded, a hung camera reopened, a dead one given up.

Hangs are real (a thread blocked in the picamera2 API fake, or in a test camera), the bounds
are real time and short (a few tenths of a second); the back-off waits run on a fake clock.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from edge_app.core import config
from edge_app.core.backoff import Backoff
from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import CameraFailed, ConfigError
from edge_app.core.events import Frame
from edge_app.sim.cameras import ReplayCamera
from edge_app.sim.picamera2_fake import CameraFaults, Picamera2
from edge_app.trap.hardware.camera import PiCamera2Camera
from edge_app.trap.hardware.camera_guard import CALL_MARGIN_S, CameraGuard, ReopenPolicy

# -- the policy (pure) ----------------------------------------------------------------------------


def test_policy_backs_off_gives_up_after_max_reopens_and_resets_on_success() -> None:
    policy = ReopenPolicy(3, Backoff(1.0, 30.0, "none"))
    assert [policy.next_reopen() for _ in range(3)] == [1.0, 2.0, 4.0]
    policy.succeeded()  # the third reopening brought a frame
    assert policy.next_reopen() == 1.0
    assert policy.next_reopen() == 2.0
    assert policy.next_reopen() == 4.0
    assert policy.next_reopen() is None  # three in a row without a frame
    assert policy.gave_up
    policy.succeeded()
    assert policy.next_reopen() is None  # giving up is final
    with pytest.raises(ValueError, match="max_reopens"):
        ReopenPolicy(0, Backoff(1.0, 30.0))


def test_policy_backoff_is_capped() -> None:
    policy = ReopenPolicy(20, Backoff(1.0, 30.0, "none"))
    delays = [policy.next_reopen() for _ in range(10)]
    assert max(d for d in delays if d is not None) == 30.0


# -- the guard over the Pi adapter and the picamera2 fake -----------------------------------------


def scene(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (160, 120), (150, 110, 60)).save(folder / "a.jpg")
    return folder


class PiRig:
    """A guarded Pi adapter over the picamera2 fake, with a short capture bound."""

    def __init__(self, images: Path, max_reopens: int = 2, capture_timeout_s: float = 0.3,
                 open_timeout_s: float = 1.0) -> None:
        self.clock = FakeClock()
        self.faults = CameraFaults()
        self.given_up: list[str] = []
        cfg = CameraConfig(source="picamera2", width=320, height=240, lores_width=160,
                           pre_trigger_frames=0, capture_timeout_s=capture_timeout_s,
                           settle_timeout_s=0.5)
        self.cam = PiCamera2Camera(cfg, self.clock, lambda: Picamera2(
            images=images, clock=self.clock, faults=self.faults))
        self.guard = CameraGuard(self.cam, self.clock, capture_timeout_s=capture_timeout_s,
                                 open_timeout_s=open_timeout_s, max_reopens=max_reopens,
                                 reopen_backoff_s=1.0, on_give_up=self.given_up.append)


@pytest.fixture
def pi(tmp_path: Path) -> Iterator[Callable[..., PiRig]]:
    rigs: list[PiRig] = []

    def make(**kw: float) -> PiRig:
        rig = PiRig(scene(tmp_path / "img"), **kw)  # type: ignore[arg-type]
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.faults.release()
        rig.guard.close()


def test_a_hung_capture_is_abandoned_the_camera_reopened_and_the_frame_taken(
        pi: Callable[..., PiRig], caplog: pytest.LogCaptureFixture) -> None:
    rig = pi()
    rig.guard.start()
    rig.guard.capture(0)
    rig.faults.stall(0, openings=1, mode="hang")  # a deadlock below picamera2's own timeout
    with caplog.at_level(logging.WARNING, "edge_app.trap.hardware.camera_guard"):
        frame = rig.guard.capture(1)
    assert frame.pixels is not None
    c = rig.guard.counters()
    assert c["captures"] == 2
    assert c["timeouts"] == 1
    assert c["reopens"] == 1
    assert c["abandoned_threads"] >= 1  # the stuck capture (and the stuck close)
    assert c["gave_up"] == 0
    assert rig.cam.openings == 2  # in-process: a new Picamera2, same adapter
    assert "timed out" in caplog.text
    assert "camera reopened" in caplog.text
    assert rig.given_up == []


def test_a_frontend_timeout_comes_back_from_picamera2_without_abandoning_a_thread(
        tmp_path: Path) -> None:
    clock = FakeClock()
    faults = CameraFaults()
    cfg = CameraConfig(source="picamera2", width=320, height=240, lores_width=160,
                       pre_trigger_frames=0, capture_timeout_s=0.5, settle_timeout_s=0.5,
                       reopen_backoff_s=0.0)
    cam = PiCamera2Camera(cfg, clock, lambda: Picamera2(images=scene(tmp_path / "img"),
                                                        clock=clock, faults=faults))
    guard = CameraGuard.from_config(cam, cfg, clock)
    assert guard.capture_timeout_s == cfg.capture_timeout_s + CALL_MARGIN_S
    try:
        guard.start()
        faults.stall(0, openings=1)  # "Camera frontend has timed out!": frames stop
        assert guard.capture(0).pixels is not None
        c = guard.counters()
        assert c["timeouts"] == 1  # picamera2's wait= ran out first
        assert c["abandoned_threads"] == 0
        assert c["reopens"] == 1
    finally:
        faults.release()
        guard.close()


def test_a_camera_that_stays_hung_is_given_up_once_and_the_stage_fails(
        pi: Callable[..., PiRig]) -> None:
    rig = pi(max_reopens=2)
    rig.guard.start()
    rig.faults.stall(0, openings=None, mode="hang")
    with pytest.raises(CameraFailed) as err:
        rig.guard.capture(0)
    assert err.value.reopens == 2
    c = rig.guard.counters()
    assert c["gave_up"] == 1
    assert c["reopen_failures"] + c["reopens"] == 2
    assert len(rig.given_up) == 1
    assert "2 reopenings" in rig.given_up[0]
    opens = rig.faults.opens
    with pytest.raises(CameraFailed, match="given up earlier"):
        rig.guard.capture(1)  # at once, without touching the device again
    with pytest.raises(CameraFailed):
        rig.guard.recent(1)
    assert rig.faults.opens == opens
    assert len(rig.given_up) == 1


def test_a_reopening_that_fails_to_start_is_counted_and_the_next_one_works(
        pi: Callable[..., PiRig]) -> None:
    rig = pi(max_reopens=3)
    rig.guard.start()
    rig.faults.stall(0, openings=1)
    rig.faults.fail_starts(1)
    assert rig.guard.capture(0).pixels is not None
    c = rig.guard.counters()
    assert c["reopen_failures"] == 1
    assert c["reopens"] == 1
    assert c["gave_up"] == 0


def test_metadata_goes_around_the_camera_thread(pi: Callable[..., PiRig]) -> None:
    rig = pi(capture_timeout_s=5.0)
    rig.guard.start()
    rig.guard.capture(0)
    rig.faults.stall(0, openings=None, mode="hang")
    t = threading.Thread(target=lambda: rig.guard.capture(1))  # back once released
    t.start()
    try:
        assert rig.faults.blocked.wait(10)
        assert rig.guard.metadata()["Lux"] > 0  # the guard's lock is held; this is not
    finally:
        rig.faults.release()
        t.join(30)


# -- the guard over any camera --------------------------------------------------------------------


class FlakyCamera:
    """A Camera (the protocol, not a mock of ours) over a replay camera, whose next calls can
    be made to fail or to hang until released."""

    def __init__(self, inner: ReplayCamera) -> None:
        self.inner = inner
        self.fail_next = 0
        self.hang_next = 0
        self.release = threading.Event()
        self.starts = 0
        self.closes = 0

    def start(self) -> None:
        self.starts += 1
        self.inner.start()

    def capture(self, index: int) -> Frame:
        if self.hang_next > 0:
            self.hang_next -= 1
            self.release.wait()
            raise RuntimeError("released")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise OSError("I/O error on the camera")
        return self.inner.capture(index)

    def recent(self, n: int) -> list[Frame]:
        return self.inner.recent(n)

    def metadata(self) -> dict[str, float]:
        return self.inner.metadata()

    def close(self) -> None:
        self.closes += 1
        self.inner.close()


def test_any_camera_failure_is_reopened_and_counted(tmp_path: Path) -> None:
    flaky = FlakyCamera(ReplayCamera(scene(tmp_path / "img"), clock=FakeClock()))
    guard = CameraGuard(flaky, FakeClock(), capture_timeout_s=0.3, open_timeout_s=1.0,
                        max_reopens=2)
    guard.start()
    flaky.fail_next = 1
    assert guard.capture(0).jpeg == (tmp_path / "img" / "a.jpg").read_bytes()
    flaky.hang_next = 1
    assert guard.capture(1).name == "a.jpg"
    c = guard.counters()
    assert (c["failures"], c["timeouts"], c["reopens"], c["captures"]) == (1, 1, 2, 2)
    assert (flaky.starts, flaky.closes) == (3, 2)
    assert guard.starts == 3  # the inner camera's own attributes come through
    flaky.release.set()
    guard.close()
    guard.close()
    assert flaky.closes == 3


def test_close_interrupts_a_reopening_back_off(tmp_path: Path) -> None:
    class WaitingClock(SystemClock):
        """The system clock, telling the test when a long wait starts."""

        def __init__(self) -> None:
            self.waiting = threading.Event()

        def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
            if timeout_s is not None and timeout_s >= 10:
                self.waiting.set()
            return event.wait(timeout_s)

    clock = WaitingClock()
    flaky = FlakyCamera(ReplayCamera(scene(tmp_path / "img"), clock=clock))
    guard = CameraGuard(flaky, clock, capture_timeout_s=1.0, max_reopens=3,
                        reopen_backoff_s=30.0)
    guard.start()
    flaky.fail_next = 1
    errors: list[BaseException] = []

    def capture() -> None:
        try:
            guard.capture(0)
        except CameraFailed as e:
            errors.append(e)

    t = threading.Thread(target=capture)
    t.start()
    assert clock.waiting.wait(10)  # in the 30 s back-off now
    guard.close()  # returns long before 30 s
    t.join(10)
    assert not t.is_alive()
    assert "closing" in str(errors[0])
    assert flaky.closes == 1


def test_no_camera_thread_is_left_after_a_clean_close(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    guard = CameraGuard(ReplayCamera(scene(tmp_path / "img"), clock=FakeClock()), FakeClock())
    guard.start()
    for k in range(3):
        guard.capture(k)
    guard.close()
    assert set(threading.enumerate()) <= before  # the camera thread was joined
    assert guard.counters()["captures"] == 3


# -- configuration --------------------------------------------------------------------------------


BASE = {"unit": {"id": "LL-1"}, "mqtt": {"host": "127.0.0.1", "tls": False}}


@pytest.mark.parametrize(("camera", "key"), [
    ({"capture_timeout_s": 0.0}, "camera.capture_timeout_s"),
    ({"max_reopens": 0}, "camera.max_reopens"),
    ({"reopen_backoff_s": -1.0}, "camera.reopen_backoff_s"),
    ({"open_timeout_s": 2.0, "settle_timeout_s": 5.0}, "camera.open_timeout_s"),
    ({"lores_width": 2000, "width": 1280}, "camera.lores_width"),
    ({"source": "picamera2-fake"}, "camera.images_dir"),
])
def test_config_refuses_bad_camera_keys(camera: dict[str, object], key: str) -> None:
    hw = {"backend": "sim" if camera.get("source") == "picamera2-fake" else "pi"}
    with pytest.raises(ConfigError) as err:
        config.parse({**BASE, "hardware": hw, "camera": camera})
    assert err.value.key == key


def test_check_config_exits_2_naming_the_camera_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[unit]\nid = "LL-1"\n[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
                 '[camera]\nmax_reopens = 0\n')
    r = subprocess.run([sys.executable, "-m", "edge_app", "check-config", str(f)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "camera.max_reopens" in r.stderr
