"""The live path: camera arrays to the detector without a JPEG round trip, JPEG only for the
frame the store keeps; and the whole trap running it over the picamera2 API fake."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from store_support import burst_and_verdict, make_cfg

from edge_app.core import config
from edge_app.core.clock import FakeClock, SystemClock
from edge_app.core.config import CameraConfig, DetectorConfig
from edge_app.core.errors import ImageError
from edge_app.core.events import Burst, Frame
from edge_app.sim.picamera2_fake import Picamera2
from edge_app.trap.detect.burst import slim_burst
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.preprocess import image_from_pixels, reduce_factor
from edge_app.trap.hardware.camera import PiCamera2Camera
from edge_app.trap.store.media import encode_pixels
from edge_app.trap.store.pipeline import EventStore

# -- the array door -------------------------------------------------------------------------------


def test_an_array_is_reduced_by_a_whole_factor_for_the_model_input() -> None:
    rgb = np.zeros((720, 1280, 3), np.uint8)
    rgb[:, :640] = (200, 100, 50)
    d = image_from_pixels(rgb, (640, 640))
    assert d.size == (640, 360)  # 1280×720 / 2: exactly the letterbox size, no resize
    assert d.original_size == (1280, 720)
    assert not d.truncated
    assert d.image.getpixel((10, 10))[:3] == (200, 100, 50)
    assert image_from_pixels(rgb, (256, 256)).size == (256, 144)
    assert image_from_pixels(rgb, None).size == (1280, 720)
    assert reduce_factor((2028, 1520), (640, 640)) == 3  # 676×507, then resized to fit
    assert reduce_factor((2028, 1520), (640, 640), "stretch") == 2
    assert reduce_factor((320, 240), (640, 640)) == 1


def test_rgbx_arrays_are_wrapped_without_a_copy_and_grey_is_accepted() -> None:
    rgbx = np.full((48, 64, 4), 255, np.uint8)
    d = image_from_pixels(rgbx, None)
    assert d.source_mode == "RGBX"
    rgbx[0, 0, :3] = (1, 2, 3)  # the image is a view of the camera's array
    assert d.image.getpixel((0, 0))[:3] == (1, 2, 3)
    grey = image_from_pixels(np.full((48, 64), 77, np.uint8), None)
    assert grey.image.mode == "RGB"
    assert grey.image.getpixel((5, 5)) == (77, 77, 77)


@pytest.mark.parametrize("bad", [
    np.zeros((48, 64, 3), np.float32), np.zeros((48, 64, 2), np.uint8),
    np.zeros((4, 48, 64, 3), np.uint8), np.zeros((0, 64, 3), np.uint8), b"not an array",
])
def test_the_array_door_refuses_what_is_not_an_image(bad: object) -> None:
    with pytest.raises(ImageError):
        image_from_pixels(bad, (640, 640))  # type: ignore[arg-type]


def test_the_array_door_refuses_too_many_pixels_naming_the_key() -> None:
    with pytest.raises(ImageError, match=r"detector\.max_pixels"):
        image_from_pixels(np.zeros((100, 200, 3), np.uint8), None, max_pixels=100 * 199)


# -- the store encodes only what it keeps ---------------------------------------------------------


def live_burst(outcome: str = "alert") -> tuple[Burst, object]:
    """burst_and_verdict's burst with the JPEGs replaced by camera arrays (no JPEG at all)."""
    burst, verdict = burst_and_verdict(outcome)  # type: ignore[arg-type]
    ramp = np.linspace(0, 150, 320, dtype=np.float32)[None, :, None]
    frames = tuple(replace(f, jpeg=b"", pixels=(ramp + np.array([40 * i, 60, 100 - 30 * i])
                                                ).astype(np.uint8).repeat(180, axis=0),
                           lores=np.zeros((90, 160), np.uint8))
                   for i, f in enumerate(burst.frames))
    return replace(burst, frames=frames), verdict


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(make_cfg(tmp_path / "data"), FakeClock())
    s.open()
    yield s
    s.close()


def test_a_kept_live_frame_is_encoded_once_with_its_thumbnail(store: EventStore) -> None:
    burst, verdict = live_burst("alert")
    rec = store.record(burst, verdict)  # type: ignore[arg-type]
    assert rec is not None
    row = store.catalog.get(rec[0])
    assert row is not None
    assert row.image_path is not None
    assert row.thumb_path is not None
    image = Image.open(store.root / row.image_path)
    assert image.format == "JPEG"
    assert image.size == (320, 180)
    assert image.getexif().get_ifd(0x8769)[0xA420] == rec[0]  # the event's EXIF went in
    stored = np.asarray(image.convert("RGB"), np.int16)
    diffs = [float(np.abs(stored - f.pixels.astype(np.int16)).mean())  # type: ignore[union-attr]
             for f in burst.frames]
    assert diffs[1] < 2  # the verdict's best frame, through one JPEG encode
    assert min(diffs[0], diffs[2]) > 10
    thumb = Image.open(store.root / row.thumb_path)
    assert max(thumb.size) <= store.cfg.storage.thumb_px
    assert all(f.jpeg == b"" for f in burst.frames)  # frames stay as they came


def test_a_discarded_live_trigger_encodes_nothing(store: EventStore) -> None:
    burst, verdict = live_burst("discard")
    assert store.record(burst, verdict) is None  # type: ignore[arg-type]
    assert not list(store.root.rglob("*.jpg"))


def test_a_frame_with_neither_pixels_nor_jpeg_is_stored_without_media(store: EventStore) -> None:
    burst, verdict = live_burst("keep")
    burst = replace(burst, frames=tuple(replace(f, pixels=None) for f in burst.frames))
    rec = store.record(burst, verdict)  # type: ignore[arg-type]
    assert rec is not None
    assert rec[1]["media"] == []


def test_slim_burst_keeps_only_the_stored_frames_pixels() -> None:
    burst, verdict = live_burst("alert")
    slim = slim_burst(burst, verdict)  # type: ignore[arg-type]
    assert [f.pixels is not None for f in slim.frames] == [False, True, False]
    assert all(f.lores is not None for f in slim.frames)  # small: kept
    jpeg_burst, v = burst_and_verdict("alert")
    assert slim_burst(jpeg_burst, v) is jpeg_burst


# -- the detector on camera frames (real models) --------------------------------------------------


def camera(images: list[Path], width: int = 1280, height: int = 720,
           **cam: object) -> PiCamera2Camera:
    clock = SystemClock()
    cfg = CameraConfig(**{"source": "picamera2", "width": width, "height": height,  # type: ignore[arg-type]
                          "pre_trigger_frames": 0, **cam})
    return PiCamera2Camera(cfg, clock, lambda: Picamera2(images=images, clock=clock,
                                                         frame_rate=0))


def capture_each(images: list[Path], **cam: object) -> list[Frame]:
    cam_ = camera(images, **cam)
    cam_.start()
    try:
        fake = cam_.session.cam  # type: ignore[union-attr]
        frames = []
        for i in range(len(images)):
            fake.show(i)
            frames.append(cam_.capture(i))
        return frames
    finally:
        cam_.close()


@pytest.mark.models
def test_live_frames_give_the_jpeg_paths_results(models_dir: Path,
                                                 cameratrapai_dir: Path) -> None:
    names = ["american_black_bear.jpg", "human.jpg", "vehicle.jpg", "blank.jpg", "ocelot.jpg"]
    frames = capture_each([cameratrapai_dir / n for n in names])
    with Pipeline(DetectorConfig(), models_dir) as p:
        for f in frames:
            assert f.jpeg == b""  # nothing to decode: the array path or an ImageError
            assert f.pixels is not None
            live = p.analyse(f)
            jpeg = p.analyse(encode_pixels(f.pixels, 95))
            # Same verdict and box. The confidence itself is not compared: the int8 detector
            # moves it by up to ~0.2 between a box-filtered and a DCT-scaled frame (0.91 vs
            # 0.70 on the bear), while the label and the box stay put.
            assert live.label == jpeg.label, f.name
            assert live.species == jpeg.species
            assert len(live.detections) == len(jpeg.detections)
            if live.detections:
                a, b = np.array(live.detections[0].bbox), np.array(jpeg.detections[0].bbox)
                assert np.abs(a - b).max() < 0.03


@pytest.mark.models
def test_the_motion_gate_runs_on_the_lores_grey_images(models_dir: Path,
                                                       cameratrapai_dir: Path) -> None:
    still = capture_each([cameratrapai_dir / "blank.jpg"] * 3)
    moved = capture_each([cameratrapai_dir / "blank.jpg", cameratrapai_dir / "human.jpg"])
    ring = replace(still[0], pre_trigger=True, index=0)
    burst = [ring, replace(still[1], index=1), replace(moved[1], index=2)]
    assert all(f.lores is not None for f in burst)
    cfg = replace(DetectorConfig(), motion_gate=True)
    with Pipeline(cfg, models_dir) as p:
        results = p.analyse_burst(burst)
    assert results[0] is not None
    assert not results[0].gated
    assert results[1] is not None
    assert results[1].gated  # the same scene: the reference's result, no inference
    assert results[2] is not None
    assert not results[2].gated
    assert results[2].label == "person"


# -- the whole trap on the live path --------------------------------------------------------------


@pytest.mark.models
def test_the_trap_runs_the_live_path_and_survives_a_hung_camera(
        tmp_path: Path, models_dir: Path, cameratrapai_dir: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    for name in ("human.jpg", "vehicle.jpg"):
        shutil.copy(cameratrapai_dir / name, images / name)
    cfg = config.parse({
        "unit": {"id": "LL-7"},
        "hardware": {"backend": "sim"},
        "trigger": {"holdoff_s": 0.0, "debounce_s": 0.02, "sample_rate_hz": 100.0},
        "camera": {"source": "picamera2-fake", "images_dir": str(images), "burst_frames": 2,
                   "burst_interval_s": 0.1, "pre_trigger_frames": 1, "capture_timeout_s": 0.5,
                   "reopen_backoff_s": 0.0, "max_reopens": 2},
        "policy": {"alert_on": ["person", "vehicle"], "audit_every": 0},
        "storage": {"root": str(tmp_path / "trap")},
        "mqtt": {"enabled": False},
    })
    from edge_app.trap.daemon import App

    app = App(cfg, models_dir)
    guard = app.camera
    rig = guard.inner.rig  # the simulated camera module (scene, faults)
    app.start()
    try:
        assert app.world is not None
        for visit in range(2):
            if visit == 1:
                rig.faults.stall(0, openings=1, mode="hang")  # the camera dies mid-run
            app.world.visit(pulse_s=0.2)
            deadline = time.monotonic() + 60
            while app.counters.kept < visit + 1:
                assert time.monotonic() < deadline, f"visit {visit} never stored"
                time.sleep(0.05)
        c = guard.counters()
        assert c["timeouts"] >= 1
        assert c["reopens"] >= 1
        assert c["gave_up"] == 0
        stored = sorted((tmp_path / "trap").rglob("LL-7-*.jpg"))
        images_only = [p for p in stored if not p.name.endswith("_thumb.jpg")]
        assert len(images_only) == 2
        for p in images_only:
            im = Image.open(io.BytesIO(p.read_bytes()))
            assert im.size == (1280, 720)  # the full-size main stream, encoded by the store
        assert guard.metadata()["Lux"] > 0
    finally:
        rig.faults.release()
        app.stop()


# -- the benchmark's contract ---------------------------------------------------------------------


@pytest.mark.models
def test_bench_detect_live_json_has_the_bench_shape(models_dir: Path,
                                                    cameratrapai_dir: Path,
                                                    tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    for name in ("human.jpg", "blank.jpg"):
        shutil.copy(cameratrapai_dir / name, images / name)
    r = subprocess.run(
        [sys.executable, "-m", "edge_app", "bench", "detect", "--live", "--json",
         "--models", str(models_dir), "--images", str(images), "--min-side", "0",
         "--repeat", "1", "--no-site", "--size", "640x480",
         "--detector", "ssd_mobilenet_v2_fpnlite_coco_uint8_256"],
        capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    [res] = doc["results"]
    assert res["model"] == "ssd_mobilenet_v2_fpnlite_coco_uint8_256"
    assert isinstance(res["overhead_ratio"], float)
    assert isinstance(res["jpeg_path"]["overhead_ratio"], float)
    assert res["path"] == "live"
    assert res["frames"] == 2
    assert doc["live"]["size"] == [640, 480]
    assert res["stages_ms"]["decode"] >= 0.0
