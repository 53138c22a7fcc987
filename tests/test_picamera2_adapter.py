"""The Pi camera adapter against the picamera2 API fake, and the fake against picamera2's API.

The adapter (``PiCamera2Camera`` and its session) is the code that runs on the Pi; here it gets
``edge_app.sim.picamera2_fake.Picamera2`` through its factory seam instead of
``picamera2.Picamera2``. The fake's own tests pin the return shapes it copies from picamera2
(stream layouts, ``wait=`` semantics, configuration errors), so the adapter is tested against
the API it will meet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import CameraTimeout, ConfigError, HardwareUnavailable
from edge_app.sim.cameras import FakePiCamera, FakePiCameraRig, ReplayCamera, SyntheticCamera
from edge_app.sim.picamera2_fake import CameraFaults, ColourSpace, Picamera2
from edge_app.trap.hardware import yuv
from edge_app.trap.hardware.camera import PiCamera2Camera
from edge_app.trap.hardware.picam import clean_metadata, lores_size

DAY = (200, 120, 40)  # a colourful (day) scene: tawny
NIGHT = (90, 90, 90)  # a colourless (infrared night) scene


def scenes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (320, 240), DAY).save(folder / "a_day.jpg", quality=95)
    Image.new("RGB", (320, 240), NIGHT).save(folder / "b_night.jpg", quality=95)
    return folder


class Rig:
    """The adapter, the fakes it opened and their shared fault plan."""

    def __init__(self, images: Path, clock: object, cfg: CameraConfig, **fake: object) -> None:
        self.faults = CameraFaults()
        self.opened: list[Picamera2] = []

        def factory() -> Picamera2:
            cam = Picamera2(images=images, clock=clock, faults=self.faults,  # type: ignore[arg-type]
                            **fake)  # type: ignore[arg-type]
            self.opened.append(cam)
            return cam

        self.cam = PiCamera2Camera(cfg, clock, factory)  # type: ignore[arg-type]

    @property
    def fake(self) -> Picamera2:
        return self.opened[-1]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def _make(clock: object | None = None, images: Path | None = None, **kw: object) -> Rig:
        fake = {k: kw.pop(k) for k in ("frame_rate", "settle_frames", "ae_key") if k in kw}
        cfg = CameraConfig(**{"source": "picamera2", "pre_trigger_frames": 0,
                              "capture_timeout_s": 0.5, **kw})  # type: ignore[arg-type]
        rig = Rig(images or scenes(tmp_path / "img"), clock or FakeClock(), cfg, **fake)
        rigs.append(rig)
        return rig

    yield _make
    for rig in rigs:
        rig.faults.release()
        rig.cam.close()


# -- the adapter -------------------------------------------------------------------------------


def test_start_configures_main_and_lores_and_settles_before_the_first_shot(
        make: Callable[..., Rig]) -> None:
    rig = make(width=1280, height=720, lores_width=640)
    rig.cam.start()
    cfg = rig.fake.camera_configuration()
    assert cfg["main"]["format"] == "BGR888"
    assert cfg["main"]["size"] == (1280, 720)
    assert cfg["lores"]["format"] == "YUV420"
    assert cfg["lores"]["size"] == (640, 360)
    assert rig.fake.started
    session = rig.cam.session
    assert session is not None
    # the fake's exposure and white balance move for 6 frames; the adapter waited them out
    assert session.settled_after is not None
    assert session.settled_after > rig.fake.settle_frames
    frame = rig.cam.capture(0)
    assert frame.metadata["AeLocked"] == 1.0
    assert frame.pixels is not None
    # settled means the frame is as bright as the scene (an unsettled one is dimmed)
    assert np.abs(frame.pixels.reshape(-1, 3).mean(axis=0) - DAY).max() < 4


@pytest.mark.parametrize("ae_key", ["AeState", None])
def test_settling_reads_ae_state_or_falls_back_on_stable_exposure(
        make: Callable[..., Rig], ae_key: str | None) -> None:
    rig = make(ae_key=ae_key)
    rig.cam.start()
    assert rig.cam.session is not None
    settled = rig.cam.session.settled_after
    assert settled is not None
    assert settled > rig.fake.settle_frames


def test_settling_is_bounded_when_the_camera_never_settles(make: Callable[..., Rig]) -> None:
    rig = make(settle_frames=10_000, settle_timeout_s=0.5)
    rig.cam.start()  # the fake clock advances one frame (33 ms) per metadata read
    assert rig.cam.session is not None
    assert rig.cam.session.settled_after is None
    assert 10 <= rig.fake.frames <= 20  # ~0.5 s of frames, not 10 000
    assert rig.cam.capture(0).pixels is not None  # shooting anyway


def test_capture_hands_over_rgb_pixels_lores_grey_and_metadata(
        make: Callable[..., Rig], tmp_path: Path) -> None:
    rig = make(width=640, height=480, lores_width=320)
    rig.cam.start()
    frame = rig.cam.capture(4)
    assert frame.jpeg == b""  # encoded only by the store, for kept events
    assert frame.index == 4
    assert not frame.pre_trigger
    assert frame.pixels is not None
    assert frame.lores is not None
    assert frame.pixels.shape == (480, 640, 3)
    assert frame.pixels.dtype == np.uint8
    # BGR888 arrives as R, G, B: the tawny scene reads red-high, blue-low
    r, g, b = frame.pixels.reshape(-1, 3).mean(axis=0)
    assert r > g > b
    assert frame.lores.shape == (240, 320)
    grey = 0.299 * DAY[0] + 0.587 * DAY[1] + 0.114 * DAY[2]
    assert abs(float(frame.lores.mean()) - grey) < 4  # full-range grey, as a decoded JPEG's
    for key in ("Lux", "ExposureTime", "AnalogueGain"):
        assert key in frame.metadata
    assert rig.fake.held == 0  # every request released back to the camera


def test_light_metadata_tells_night_from_day(make: Callable[..., Rig]) -> None:
    rig = make()
    rig.cam.start()
    day = rig.cam.capture(0).metadata
    rig.fake.next_scene()
    night = rig.cam.capture(1).metadata
    assert rig.fake.scene_name == "b_night.jpg"
    assert day["Lux"] > 20 * night["Lux"]
    assert night["Lux"] < 10
    assert night["AnalogueGain"] > day["AnalogueGain"]
    assert rig.cam.metadata()["Lux"] == night["Lux"]


def test_the_ring_runs_on_lores_and_recent_converts_it(make: Callable[..., Rig]) -> None:
    rig = make(SystemClock(), width=640, height=480, lores_width=320, pre_trigger_frames=2,
               burst_interval_s=0.1, frame_rate=0)
    rig.cam.start()
    session = rig.cam.session
    assert session is not None
    assert session.wait_ring(3, 10.0)
    frames = rig.cam.recent(2)
    assert [f.pre_trigger for f in frames] == [True, True]
    assert frames[0].mono <= frames[1].mono
    for f in frames:
        assert f.pixels is not None
        assert f.pixels.shape == (240, 320, 3)  # lores size: the ring is cheap
        # YUV420 → RGB in the stream's colour space gives the scene's colour back
        assert np.abs(f.pixels.reshape(-1, 3).mean(axis=0) - DAY).max() < 4
    assert rig.cam.recent(0) == []


def test_metadata_never_waits_for_a_hung_capture(make: Callable[..., Rig]) -> None:
    rig = make(capture_timeout_s=30.0)
    rig.cam.start()
    rig.cam.capture(0)
    rig.faults.stall(0, mode="hang")
    errors: list[BaseException] = []

    def capture() -> None:
        try:
            rig.cam.capture(1)
        except HardwareUnavailable as e:
            errors.append(e)

    blocked = threading.Thread(target=capture)
    blocked.start()
    try:
        assert rig.faults.blocked.wait(10)  # the capture is stuck in the camera now
        assert "Lux" in rig.cam.metadata()  # returns at once, from the last frame
    finally:
        rig.faults.release()
        blocked.join(10)
    assert not blocked.is_alive()
    assert "released" in str(errors[0])  # it was hung until the release, not before


def test_a_frontend_timeout_is_a_camera_timeout_within_the_bound(
        make: Callable[..., Rig]) -> None:
    rig = make(SystemClock(), capture_timeout_s=0.5, frame_rate=0)
    rig.cam.start()
    rig.faults.stall(0)
    with pytest.raises(CameraTimeout):
        rig.cam.capture(0)  # picamera2's wait= bound, not a hang
    rig.cam.close()  # a stalled frontend still closes
    assert rig.fake.closed


def test_corrupt_metadata_is_refused_counted_and_the_frame_kept(
        make: Callable[..., Rig]) -> None:
    rig = make()
    rig.cam.start()
    rig.faults.corrupt_metadata(1)
    frame = rig.cam.capture(0)
    assert frame.pixels is not None
    assert "Lux" not in frame.metadata
    assert "ExposureTime" not in frame.metadata
    assert "AeLocked" not in frame.metadata
    assert rig.cam.session is not None
    assert rig.cam.session.refused == 4
    assert rig.cam.capture(1).metadata["Lux"] > 0  # the next frame is fine again


def test_clean_metadata_limits() -> None:
    md, refused = clean_metadata({"Lux": 12.5, "ExposureTime": 10_000, "AnalogueGain": True,
                                  "DigitalGain": "2", "ColourTemperature": 1e12,
                                  "AeLocked": False, "Unknown": object()})
    assert md == {"Lux": 12.5, "ExposureTime": 10_000.0, "AeLocked": 0.0}
    assert sorted(refused) == ["AnalogueGain", "ColourTemperature", "DigitalGain"]
    assert clean_metadata(None) == ({}, ["<not a mapping>"])


def test_a_failing_start_or_open_is_hardware_unavailable_and_leaks_nothing(
        make: Callable[..., Rig]) -> None:
    rig = make()
    rig.faults.fail_starts(1)
    with pytest.raises(HardwareUnavailable, match="Device or resource busy"):
        rig.cam.start()
    assert rig.fake.closed  # the half-opened camera was closed again
    assert rig.cam.session is None
    rig.faults.fail_opens(1)
    with pytest.raises(HardwareUnavailable, match="__init__ sequence"):
        rig.cam.start()
    rig.cam.start()
    assert rig.cam.openings == 1


def test_close_is_idempotent_and_start_reopens(make: Callable[..., Rig]) -> None:
    rig = make(SystemClock(), pre_trigger_frames=1, burst_interval_s=0.1, frame_rate=0)
    rig.cam.start()
    first = rig.fake
    rig.cam.close()
    rig.cam.close()
    assert first.closed
    with pytest.raises(HardwareUnavailable, match="not started"):
        rig.cam.capture(0)
    rig.cam.start()
    assert rig.fake is not first
    assert rig.cam.openings == 2
    assert rig.cam.session is not None
    assert rig.cam.session.wait_ring(1, 10.0)  # the new session's ring runs
    assert rig.cam.capture(0).pixels is not None


def test_lores_size_keeps_the_aspect_ratio_and_even_sides() -> None:
    assert lores_size(CameraConfig(lores_width=640), (1280, 720)) == (640, 360)
    assert lores_size(CameraConfig(lores_width=641), (2028, 1520)) == (640, 480)
    assert lores_size(CameraConfig(lores_width=4096), (1280, 720)) == (1280, 720)


def test_with_the_field_images(make: Callable[..., Rig], field_dir: Path) -> None:
    rig = make(images=field_dir, width=1280, height=720)
    rig.cam.start()
    seen = set()
    for k in range(5):
        f = rig.cam.capture(k)
        assert f.pixels is not None
        assert f.pixels.shape == (720, 1280, 3)  # every photo, whatever its shape
        seen.add(rig.fake.scene_name)
        rig.fake.next_scene()
    assert len(seen) == 5


# -- the YUV420 conversion ----------------------------------------------------------------------


@pytest.mark.parametrize("cs", [ColourSpace.Sycc(), ColourSpace.Smpte170m(),
                                ColourSpace.Rec709()])
def test_yuv420_round_trip_with_padded_rows(cs: ColourSpace) -> None:
    rng = np.random.default_rng(3)
    rgb = np.repeat(np.repeat(rng.integers(30, 220, (12, 20, 3), dtype=np.uint8), 2, 0), 2, 1)
    matrix = yuv.matrix_of(cs)
    assert matrix is not None
    arr = yuv.from_rgb(rgb, matrix)
    assert arr.shape == (24 * 3 // 2, 64)  # rows padded to 64 bytes, as on the VC4
    back = yuv.to_rgb(arr, 40, 24, matrix)
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 2


def test_yuv_matrix_of_reads_libcamera_names() -> None:
    assert yuv.matrix_of(ColourSpace.Sycc()) == yuv.BT601_FULL
    assert yuv.matrix_of(ColourSpace.Smpte170m()) == yuv.BT601_LIMITED
    assert yuv.matrix_of(ColourSpace.Rec709()) == yuv.BT709_LIMITED
    assert yuv.matrix_of(None) is None
    assert yuv.matrix_of(ColourSpace("x", "y", "YcbcrEncoding.Rec2020", "Range.Full")) is None
    with pytest.raises(ValueError, match="YUV420"):
        yuv.planes(np.zeros((10, 64), np.uint8), 40, 24)


# -- the fake, against picamera2's API ------------------------------------------------------------


def test_fake_stream_layouts_match_picamera2(tmp_path: Path) -> None:
    cam = Picamera2(images=scenes(tmp_path), clock=FakeClock(), settle_frames=0)
    cfg = cam.create_video_configuration(main={"size": (64, 48), "format": "RGB888"},
                                         lores={"size": (32, 24)})
    assert cfg["buffer_count"] == 6  # picamera2's video default
    assert str(cfg["colour_space"]) == "SMPTE170M"  # below 1280×720
    cam.configure(cfg)
    cam.start()
    req = cam.capture_request(wait=1.0)
    bgr = req.make_array("main")
    lo = req.make_array("lores")
    md = req.get_metadata()
    req.release()
    assert bgr.shape == (48, 64, 3)
    assert np.abs(bgr[0, 0].astype(int) - DAY[::-1]).max() <= 2  # RGB888: B, G, R in memory
    assert lo.shape == (36, 64)  # (h*3/2, stride)
    assert {"SensorTimestamp", "ExposureTime", "AnalogueGain", "Lux", "ColourGains",
            "AeLocked"} <= md.keys()
    with pytest.raises(RuntimeError, match="negative ref_count"):
        req.release()
    with pytest.raises(RuntimeError, match="not defined"):
        cam.capture_array("raw", wait=1.0)
    cam.stop()
    cam.configure(cam.create_video_configuration(main={"size": (64, 48), "format": "XBGR8888"}))
    cam.start()
    x = cam.capture_array("main", wait=1.0)
    assert x.shape == (48, 64, 4)
    assert np.abs(x[0, 0].astype(int) - (*DAY, 255)).max() <= 2
    assert x[0, 0, 3] == 255
    still = cam.create_still_configuration()
    assert str(still["colour_space"]) == "sYCC"
    assert still["buffer_count"] == 1


@pytest.mark.parametrize(("main", "lores", "message"), [
    ({"size": (64, 48), "format": "BGR888"}, {"size": (128, 96), "format": "YUV420"},
     "may not exceed"),
    ({"size": (64, 48), "format": "BGR888"}, {"size": (32, 24), "format": "BGR888"},
     "must be YUV"),
    ({"size": (63, 48), "format": "BGR888"}, None, "should be even"),
    ({"size": (64, 48), "format": "MJPG"}, None, "Bad format"),
])
def test_fake_refuses_configurations_as_picamera2_does(
        tmp_path: Path, main: dict[str, object], lores: dict[str, object] | None,
        message: str) -> None:
    cam = Picamera2(images=scenes(tmp_path), clock=FakeClock())
    cfg = cam.create_video_configuration(main=main, lores=lores)
    with pytest.raises(RuntimeError, match=message):
        cam.configure(cfg)


def test_fake_waits_time_out_or_are_cancelled_like_picamera2(tmp_path: Path) -> None:
    faults = CameraFaults()
    cam = Picamera2(images=scenes(tmp_path), clock=SystemClock(), faults=faults, frame_rate=0)
    cam.configure(cam.create_video_configuration(main={"size": (64, 48)}))
    cam.start()
    cam.capture_metadata(wait=1.0)
    faults.stall(0)
    with pytest.raises(TimeoutError):
        cam.capture_array("main", wait=0.05)
    result: list[BaseException] = []

    def wait_for_ever() -> None:
        try:
            cam.capture_metadata()
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=wait_for_ever)
    t.start()
    cam.cancel_all_and_flush()
    t.join(10)
    assert isinstance(result[0], CancelledError)
    with pytest.raises(RuntimeError, match="not advertised"):
        cam.set_controls({"Bogus": 1})
    cam.set_controls({"AeEnable": False, "ExposureTime": 5000})


def test_fake_request_leak_stalls_like_a_real_camera(tmp_path: Path) -> None:
    cam = Picamera2(images=scenes(tmp_path), clock=FakeClock(), frame_rate=0)
    cam.configure(cam.create_video_configuration(main={"size": (64, 48)}, buffer_count=2))
    cam.start()
    held = [cam.capture_request(wait=1.0), cam.capture_request(wait=1.0)]
    with pytest.raises(TimeoutError):
        cam.capture_request(wait=0.05)  # every buffer held by the application
    held[0].release()
    cam.capture_request(wait=1.0).release()


def test_fake_open_failures_and_camera_numbers(tmp_path: Path) -> None:
    faults = CameraFaults()
    faults.fail_opens(1)
    with pytest.raises(RuntimeError, match="__init__ sequence did not complete"):
        Picamera2(images=scenes(tmp_path), faults=faults)
    with pytest.raises(IndexError):
        Picamera2(1, images=scenes(tmp_path))
    assert Picamera2(images=scenes(tmp_path), faults=faults).sensor_resolution == (4608, 2592)


# -- the simulated cameras' metadata -------------------------------------------------------------


def test_sim_cameras_report_light_from_the_image(tmp_path: Path) -> None:
    replay = ReplayCamera(scenes(tmp_path), clock=FakeClock())
    replay.advance()
    day = replay.metadata()
    replay.advance()
    night = replay.metadata()
    assert day["Lux"] > 20 * night["Lux"]
    for key in ("Lux", "ExposureTime", "AnalogueGain"):
        assert key in day
    synthetic = SyntheticCamera(64, 48, 1, 80, FakeClock())
    md = synthetic.metadata()
    assert md["Lux"] > 20  # a daylight landscape
    synthetic.advance()
    assert synthetic.metadata()["Lux"] != md["Lux"]  # each scene its own light


def test_the_fake_pi_camera_keeps_its_scene_across_reopenings(tmp_path: Path) -> None:
    clock = FakeClock()
    rig = FakePiCameraRig(scenes(tmp_path), clock)
    cam = FakePiCamera(CameraConfig(source="picamera2-fake", images_dir=str(tmp_path),
                                    pre_trigger_frames=0), clock, rig)
    cam.start()
    assert cam.advance() == "b_night.jpg"
    cam.close()
    cam.start()
    assert rig.current is not None
    assert rig.current.scene_name == "b_night.jpg"
    assert cam.capture(0).metadata["Lux"] < 10
    cam.close()


def test_the_fake_pi_camera_needs_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = CameraConfig(source="picamera2-fake", images_dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as err:
        FakePiCamera(cfg, FakeClock())
    assert err.value.key == "camera.images_dir"
