"""Simulated cameras: replay folders byte for byte, synthetic scenes deterministic by seed."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.core.clock import FakeClock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import ConfigError, HardwareUnavailable
from edge_app.sim.cameras import FakePiCamera, ReplayCamera, SyntheticCamera
from edge_app.trap.hardware.camera import SIM_RING_INTERVAL_S, PiCamera2Camera, SceneCamera
from edge_app.trap.hardware.camera_guard import CameraGuard
from edge_app.trap.hardware.factory import make_camera


def jpegs(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (i * 20 % 256, 50, 90)).save(folder / name, "JPEG")
    return folder


# -- replay -----------------------------------------------------------------------------------


def test_replay_sorted_order_and_loop(tmp_path: Path) -> None:
    folder = jpegs(tmp_path / "imgs", ["c.jpg", "a.JPG", "b.jpeg"])
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.jpg").write_bytes(b"macOS resource fork")
    cam = ReplayCamera(folder, clock=FakeClock())
    assert [p.name for p in cam.files] == ["a.JPG", "b.jpeg", "c.jpg"]
    assert cam.scene == "a.JPG"  # looks at the first image before any visit
    assert [cam.advance() for _ in range(7)] == [
        "a.JPG", "b.jpeg", "c.jpg", "a.JPG", "b.jpeg", "c.jpg", "a.JPG"
    ]


def test_replay_without_loop_ends(tmp_path: Path) -> None:
    cam = ReplayCamera(jpegs(tmp_path, ["a.jpg", "b.jpg"]), loop=False, clock=FakeClock())
    assert cam.advance() == "a.jpg"
    assert cam.advance() == "b.jpg"
    with pytest.raises(EOFError):
        cam.advance()


def test_replay_shuffle_is_a_seeded_permutation(cameratrapai_dir: Path) -> None:
    clock = FakeClock()
    ordered = ReplayCamera(cameratrapai_dir, "sorted", 1, clock).files
    one = ReplayCamera(cameratrapai_dir, "shuffle", 1, clock).files
    again = ReplayCamera(cameratrapai_dir, "shuffle", 1, clock).files
    other = ReplayCamera(cameratrapai_dir, "shuffle", 2, clock).files
    assert one == again
    assert sorted(one) == list(ordered)
    assert one != ordered
    assert other != one
    assert len(ordered) == 14


def test_replay_frames_are_the_file_bytes(cameratrapai_dir: Path) -> None:
    clock = FakeClock()
    cam = ReplayCamera(cameratrapai_dir, clock=clock)
    cam.start()
    for _ in range(len(cam.files)):
        name = cam.advance()
        on_disk = (cameratrapai_dir / name).read_bytes()
        frame = cam.capture(4)
        # truncated, CMYK and EXIF-rotated files arrive untouched
        assert frame.jpeg == on_disk
        assert (frame.index, frame.pre_trigger, frame.name) == (4, False, name)
        assert frame.mono == clock.monotonic()
        assert frame.wall == clock.wall()
    cam.close()


def test_replay_recent_is_a_ring_of_the_current_scene(tmp_path: Path) -> None:
    clock = FakeClock()
    cam = ReplayCamera(jpegs(tmp_path, ["a.jpg", "b.jpg"]), clock=clock)
    cam.advance()
    name = cam.advance()
    frames = cam.recent(3)
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.pre_trigger for f in frames)
    assert {f.name for f in frames} == {name}
    assert {f.jpeg for f in frames} == {(tmp_path / name).read_bytes()}
    monos = [f.mono for f in frames]
    assert monos == sorted(monos)  # oldest first
    assert monos[-1] == pytest.approx(clock.monotonic() - SIM_RING_INTERVAL_S)
    assert cam.recent(0) == []


@pytest.mark.parametrize("make", ["missing", "file", "empty", "no_jpegs"])
def test_replay_bad_folder_names_the_config_key(tmp_path: Path, make: str) -> None:
    target = tmp_path / "imgs"
    if make == "file":
        target.write_bytes(b"x")
    elif make == "empty":
        target.mkdir()
    elif make == "no_jpegs":
        target.mkdir()
        (target / "a.png").write_bytes(b"png")
    with pytest.raises(ConfigError) as err:
        ReplayCamera(target)
    assert err.value.key == "camera.images_dir"


def test_replay_unknown_order(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        ReplayCamera(jpegs(tmp_path, ["a.jpg"]), "random")  # type: ignore[arg-type]
    assert err.value.key == "camera.order"


# -- synthetic --------------------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def sequence(seed: int) -> list[bytes]:
    cam = SyntheticCamera(160, 96, seed, 80, FakeClock())
    out = [cam.capture(0).jpeg]
    cam.advance(occupied=True)
    out += [f.jpeg for f in cam.recent(2)]
    out += [cam.capture(i).jpeg for i in range(3)]
    cam.advance(occupied=False)
    out.append(cam.capture(0).jpeg)
    cam.advance()
    out.append(cam.capture(0).jpeg)
    return out


def test_synthetic_same_seed_same_bytes() -> None:
    assert sequence(5) == sequence(5)
    assert sequence(5) != sequence(6)


def test_synthetic_frames_are_valid_jpegs_of_the_configured_size() -> None:
    for data in sequence(3):
        img = decode(data)
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (160, 96))


def test_synthetic_frames_vary_a_little_and_the_animal_moves() -> None:
    cam = SyntheticCamera(320, 180, 11, 90, FakeClock())
    empty = [np.asarray(decode(cam.capture(i).jpeg), np.float32) for i in range(2)]
    noise = float(np.abs(empty[0] - empty[1]).mean())
    assert 0.2 < noise < 8.0  # a live sensor, not a frozen picture
    assert cam.advance(occupied=True) == "synthetic-0001-animal"
    walk = [np.asarray(decode(cam.capture(i).jpeg), np.float32) for i in range(2)]
    moved = np.abs(walk[0] - walk[1]).max(axis=2) > 40
    assert moved.sum() > 0.002 * moved.size  # the animal's outline changed place
    assert float(np.abs(walk[0] - empty[0]).mean()) > noise


def test_synthetic_scene_names_and_recent_flags() -> None:
    clock = FakeClock()
    cam = SyntheticCamera(64, 64, 1, 70, clock)
    assert cam.scene == "synthetic-0000-empty"
    assert not cam.occupied
    names = {cam.advance() for _ in range(20)}
    assert any(n.endswith("-animal") for n in names)
    assert any(n.endswith("-empty") for n in names)
    frames = cam.recent(2)
    assert [(f.index, f.pre_trigger, f.name) for f in frames] == [
        (0, True, cam.scene), (1, True, cam.scene)
    ]
    assert frames[0].mono < frames[1].mono < clock.monotonic()


# -- factory and the Pi adapter --------------------------------------------------------------


def test_make_camera_by_source_always_guarded(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = jpegs(tmp_path, ["a.jpg"])
    replay = make_camera(CameraConfig(source="replay", images_dir=str(folder)), "sim", clock)
    synthetic = make_camera(CameraConfig(source="synthetic", width=64, height=64), "sim", clock)
    fake = make_camera(CameraConfig(source="picamera2-fake", images_dir=str(folder)), "sim",
                       clock)
    for cam in (replay, synthetic, fake):
        assert isinstance(cam, CameraGuard)
    assert isinstance(replay.inner, ReplayCamera)
    assert isinstance(synthetic.inner, SyntheticCamera)
    assert isinstance(fake.inner, FakePiCamera)
    # the guard passes the inner camera's own attributes through: the sim world's check
    for cam in (replay, synthetic, fake):
        assert isinstance(cam, SceneCamera)
    assert [p.name for p in replay.files] == ["a.jpg"]
    pi = make_camera(CameraConfig(source="picamera2"), "pi", clock)
    assert isinstance(pi.inner, PiCamera2Camera)
    assert not isinstance(pi, SceneCamera)
    for source, backend in (("picamera2", "sim"), ("picamera2-fake", "pi")):
        with pytest.raises(ConfigError) as err:
            make_camera(CameraConfig(source=source, images_dir=str(folder)), backend, clock)
        assert err.value.key == "camera.source"


def test_picamera2_unavailable_here_is_a_clear_error() -> None:
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed: this is a Pi, not the test host")
    cam = PiCamera2Camera(CameraConfig(source="picamera2"), FakeClock())
    with pytest.raises(HardwareUnavailable):
        cam.start()
    cam.close()
    cam.close()
