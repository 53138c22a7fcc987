"""Simulated cameras: a replayed image folder and a synthetic scene (fakes at the Camera API).

They model a sensor that runs continuously into a ring buffer (option (a) of the field notes:
keep the camera warm, so the first frame is ~10 ms after the trigger instead of ~190 ms from a
cold start), but they spend no CPU while idle: a frame is produced only when ``capture`` or
``recent`` asks for it. The *scene* in front of them changes only when ``advance`` is called (by
:class:`edge_app.sim.world.SimWorld` when a simulated animal walks past). A replayed file
reaches the detector byte for byte as it is on disk (truncated, CMYK, greyscale and
EXIF-rotated files included), exactly as a real capture would be stored.
"""

from __future__ import annotations

import io
import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import ConfigError, HardwareUnavailable
from edge_app.core.events import Frame
from edge_app.sim import light as scene_light
from edge_app.sim.picamera2_fake import CameraFaults, Picamera2, image_files
from edge_app.trap.hardware.camera import (
    JPEG_SUFFIXES,
    SIM_RING_INTERVAL_S,
    PiCamera2Camera,
    encode_jpeg,
    ring_times,
)

logger = logging.getLogger(__name__)


class ReplayCamera:
    """A folder of JPEGs played back one scene at a time.

    Every frame of the current scene (``capture`` and ``recent``) is that file's bytes,
    unchanged. Before the first :meth:`advance` the camera looks at the first image, and the
    first ``advance`` "arrives" at that same image, so a replay of N files shows each file
    once per N visits.

    Files are the folder's ``*.jpg``/``*.jpeg`` (any case), sorted by name; dot files are
    skipped (``._x.jpg`` resource forks that macOS leaves on USB sticks are not images).

    Args:
        images_dir: the folder.
        order: ``sorted`` (by file name) or ``shuffle`` (a permutation fixed by ``seed``).
        seed: shuffle seed; the same seed gives the same order on every run and machine.
        clock: frame timestamps (default: the system clock).
        loop: start again after the last image; when False, :meth:`advance` past the last
            image raises :class:`EOFError`.

    Raises:
        ConfigError: ``camera.images_dir`` is missing, not a folder, or holds no JPEGs;
            ``camera.order`` is unknown. A missing folder is fixed in the config (or with
            ``--images``), so the error names the key a technician has to change.
    """

    def __init__(
        self,
        images_dir: str | Path,
        order: Literal["sorted", "shuffle"] = "sorted",
        seed: int = 1,
        clock: Clock | None = None,
        loop: bool = True,
    ) -> None:
        folder = Path(images_dir)
        if order not in ("sorted", "shuffle"):
            raise ConfigError("camera.order", f"must be 'sorted' or 'shuffle', got {order!r}")
        if not folder.is_dir():
            raise ConfigError("camera.images_dir", f"{folder} is not a folder")
        files = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in JPEG_SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise ConfigError("camera.images_dir", f"no .jpg/.jpeg files in {folder}")
        if order == "shuffle":
            random.Random(seed).shuffle(files)
        self._files: tuple[Path, ...] = tuple(files)
        self._clock: Clock = clock or SystemClock()
        self._loop = loop
        self._lock = threading.Lock()  # guards _pos, _cache
        self._pos = -1  # index of the current scene; -1 = before the first advance
        self._cache: tuple[int, bytes] | None = None
        self._light: tuple[int, dict[str, float]] | None = None
        logger.info("replaying %d images from %s (%s)", len(files), folder, order)

    @property
    def files(self) -> tuple[Path, ...]:
        """The images in playback order."""
        return self._files

    @property
    def scene(self) -> str:
        """File name of the current scene."""
        with self._lock:
            return self._files[max(self._pos, 0)].name

    def advance(self) -> str:
        """Move to the next image (looping) and return its file name.

        Raises:
            EOFError: the last image was already shown and ``loop`` is False.
        """
        with self._lock:
            nxt = self._pos + 1
            if nxt >= len(self._files):
                if not self._loop:
                    raise EOFError(f"replay of {len(self._files)} images is finished")
                nxt = 0
            self._pos = nxt
            return self._files[nxt].name

    def start(self) -> None:
        """Nothing to open: the files are read when a frame is asked for."""

    def capture(self, index: int) -> Frame:
        """The current scene's file, as it is on disk."""
        name, data = self._current()
        return Frame(
            jpeg=data,
            mono=self._clock.monotonic(),
            wall=self._clock.wall(),
            index=index,
            pre_trigger=False,
            name=name,
        )

    def recent(self, n: int) -> list[Frame]:
        """``n`` copies of the current scene, timestamped as a ring buffer would have them."""
        if n <= 0:
            return []
        name, data = self._current()
        return [
            Frame(jpeg=data, mono=m, wall=w, index=k, pre_trigger=True, name=name)
            for k, (m, w) in enumerate(ring_times(self._clock, n, SIM_RING_INTERVAL_S))
        ]

    def metadata(self) -> dict[str, float]:
        """Light metadata estimated from the current image (:mod:`edge_app.sim.light`):
        a grey infrared frame reads as night, a colour one as day, darker as darker."""
        pos, data = self._current_pos()
        with self._lock:
            if self._light is not None and self._light[0] == pos:
                return dict(self._light[1])
        md = _jpeg_metadata(data)
        with self._lock:
            self._light = (pos, md)
        return dict(md)

    def close(self) -> None:
        """Nothing to release."""

    def _current_pos(self) -> tuple[int, bytes]:
        self._current()
        with self._lock:
            assert self._cache is not None
            return self._cache

    def _current(self) -> tuple[str, bytes]:
        with self._lock:
            pos = max(self._pos, 0)
            if self._cache is not None and self._cache[0] == pos:
                return self._files[pos].name, self._cache[1]
            path = self._files[pos]
            try:
                data = path.read_bytes()
            except OSError as e:
                raise HardwareUnavailable(f"cannot read replay image {path}: {e}") from e
            self._cache = (pos, data)
            return path.name, data


class SyntheticCamera:
    """Deterministic generated scenes: a landscape with light and noise, sometimes an animal.

    The background (sky and ground gradients, blotchy ground texture, tree trunks) is made
    once from the seed. Each frame scales its brightness a little and adds sensor noise, so
    consecutive frames differ the way a real sensor's do. A scene may hold an "animal": a
    tawny spotted body with head, legs and tail, walking across the frame a few percent of
    the width per frame (earlier frames, including the ring buffer's, show it further back).

    Everything is drawn from ``(seed, scene number, frame number)``, never from the clock or
    call timing, so the same seed and the same sequence of calls give identical JPEG bytes.
    Cost: ~17 ms to render and encode a 1280×720 frame on these x86 machines; nothing while
    idle.

    Args:
        width: frame width in pixels.
        height: frame height in pixels.
        seed: the scene seed.
        quality: JPEG quality.
        clock: frame timestamps (default: the system clock).
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        seed: int = 1,
        quality: int = 85,
        clock: Clock | None = None,
    ) -> None:
        if width < 16 or height < 16:
            raise ConfigError("camera.width", f"frame too small: {width}x{height}")
        self.width = width
        self.height = height
        self.seed = seed
        self.quality = quality
        self._clock: Clock = clock or SystemClock()
        self._horizon, self._base = self._background()
        small = self._base[:: max(1, height // 48), :: max(1, width // 64)]
        self._base_light = scene_light.measure(small.astype(np.uint8))
        self._lock = threading.Lock()  # guards _scene, _occupied, _frame
        self._scene = 0
        self._occupied = False
        self._frame = 0  # frame number within the scene of the next capture

    @property
    def scene(self) -> str:
        """Name of the current scene, e.g. ``synthetic-0003-animal``."""
        with self._lock:
            return self._name(self._scene, self._occupied)

    @property
    def occupied(self) -> bool:
        """Whether the current scene holds an animal."""
        with self._lock:
            return self._occupied

    def advance(self, occupied: bool | None = None) -> str:
        """Move to the next scene and return its name.

        Args:
            occupied: put an animal in it (True), keep it empty (False), or let the seed
                decide with even odds (None).
        """
        with self._lock:
            self._scene += 1
            self._frame = 0
            if occupied is None:
                occupied = bool(self._rng(self._scene, "occupied").random() < 0.5)
            self._occupied = occupied
            return self._name(self._scene, occupied)

    def start(self) -> None:
        """Nothing to open: frames are rendered on demand."""

    def capture(self, index: int) -> Frame:
        """Render and encode the scene's next frame."""
        with self._lock:
            scene, occupied, number = self._scene, self._occupied, self._frame
            self._frame += 1
        mono, wall = self._clock.monotonic(), self._clock.wall()
        return Frame(
            jpeg=self._render(scene, occupied, number),
            mono=mono,
            wall=wall,
            index=index,
            pre_trigger=False,
            name=self._name(scene, occupied),
        )

    def recent(self, n: int) -> list[Frame]:
        """The ``n`` frames before the next capture (rendered now, timestamped in the past)."""
        if n <= 0:
            return []
        with self._lock:
            scene, occupied, number = self._scene, self._occupied, self._frame
        name = self._name(scene, occupied)
        return [
            Frame(
                jpeg=self._render(scene, occupied, number - n + k),
                mono=m,
                wall=w,
                index=k,
                pre_trigger=True,
                name=name,
            )
            for k, (m, w) in enumerate(ring_times(self._clock, n, SIM_RING_INTERVAL_S))
        ]

    def metadata(self) -> dict[str, float]:
        """Light metadata of the current scene: the background's brightness times the
        scene's light level (its time of day), through :mod:`edge_app.sim.light`."""
        with self._lock:
            scene = self._scene
        light = float(self._rng(scene, "scene").uniform(0.85, 1.15))
        base = self._base_light
        return scene_light.camera_metadata(
            scene_light.light_of(min(base.mean_luma * light, 255.0), base.chroma * light))

    def close(self) -> None:
        """Nothing to release."""

    # rendering ------------------------------------------------------------------------------

    @staticmethod
    def _name(scene: int, occupied: bool) -> str:
        return f"synthetic-{scene:04d}-{'animal' if occupied else 'empty'}"

    def _rng(self, *parts: int | str) -> np.random.Generator:
        # SeedSequence wants non-negative ints; strings become a stable hash of their bytes.
        ints = [
            p % 2**32 if isinstance(p, int) else int.from_bytes(p.encode()[:8], "little")
            for p in parts
        ]
        return np.random.default_rng([self.seed % 2**32, *ints])

    def _background(self) -> tuple[int, np.ndarray]:
        h, w = self.height, self.width
        rng = self._rng("background")
        horizon = int(h * rng.uniform(0.35, 0.5))
        img = np.empty((h, w, 3), np.float32)
        t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
        img[:horizon] = (1 - t) * np.array([110, 150, 205]) + t * np.array([185, 200, 215])
        t = np.linspace(0.0, 1.0, h - horizon, dtype=np.float32)[:, None, None]
        img[horizon:] = (1 - t) * np.array([105, 115, 70]) + t * np.array([62, 70, 40])
        # Blotchy texture: coarse noise upsampled smoothly, strong on the ground, faint in sky.
        coarse = rng.uniform(-1.0, 1.0, (max(h // 24, 2), max(w // 24, 2))).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BILINEAR))
        amp = np.where(np.arange(h)[:, None] < horizon, 6.0, 22.0).astype(np.float32)
        img += (smooth * amp)[:, :, None]
        img += rng.normal(0.0, 3.0, (h, w, 1)).astype(np.float32)
        base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(base)
        for _ in range(int(rng.integers(2, 6))):  # tree trunks standing on the ground
            x = float(rng.uniform(0, w))
            tw = float(rng.uniform(0.01, 0.035)) * w
            foot = horizon + float(rng.uniform(0.02, 0.2)) * h
            shade = tuple(int(v) for v in rng.integers(45, 75, 3))
            draw.rectangle((x, 0, x + tw, foot), fill=shade)
        return horizon, np.asarray(base).astype(np.int32)

    def _render(self, scene: int, occupied: bool, number: int) -> bytes:
        h, w = self.height, self.width
        scene_rng = self._rng(scene, "scene")
        light = float(scene_rng.uniform(0.85, 1.15))  # time of day / cloud, per scene
        frame_rng = self._rng(scene, number, "frame")
        gain = int(256 * light * (1.0 + 0.01 * float(frame_rng.standard_normal())))
        noise = frame_rng.integers(-3, 4, (h, w, 1), dtype=np.int32)
        pixels = np.clip(((self._base * gain) >> 8) + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        if occupied:
            self._draw_animal(ImageDraw.Draw(image), scene_rng, number, light)
        return encode_jpeg(image, self.quality)

    def _draw_animal(
        self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, number: int, light: float
    ) -> None:
        h, w = self.height, self.width
        length = float(rng.uniform(0.18, 0.32)) * h  # body length
        depth = 0.38 * length
        feet = self._horizon + float(rng.uniform(0.45, 0.85)) * (h - self._horizon)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        speed = float(rng.uniform(0.015, 0.04)) * w  # pixels per frame
        cx = float(rng.uniform(0.3, 0.7)) * w + direction * speed * number
        spots = rng.uniform(-0.4, 0.4, (14, 2))

        def tone(r: int, g: int, b: int) -> tuple[int, int, int]:
            return (min(int(r * light), 255), min(int(g * light), 255), min(int(b * light), 255))

        coat, dark = tone(190, 140, 72), tone(50, 38, 25)
        leg_h = 0.45 * depth
        top, bottom = feet - leg_h - depth, feet - leg_h
        for fx in (-0.38, -0.22, 0.22, 0.38):
            lx = cx + fx * length
            draw.rectangle(
                (lx - 0.03 * length, (top + bottom) / 2, lx + 0.03 * length, feet), fill=coat
            )
        draw.ellipse((cx - length / 2, top, cx + length / 2, bottom), fill=coat)
        head_x = cx + direction * 0.55 * length
        draw.ellipse(
            (head_x - 0.16 * length, top - 0.3 * depth, head_x + 0.16 * length, top + 0.45 * depth),
            fill=coat,
        )
        tail_x = cx - direction * 0.5 * length
        draw.line(
            (tail_x, top + 0.3 * depth, tail_x - direction * 0.45 * length, bottom),
            fill=coat,
            width=max(int(0.05 * length), 1),
        )
        r = 0.035 * length
        for sx, sy in spots:
            x, y = cx + sx * length, (top + bottom) / 2 + sy * depth
            draw.ellipse((x - r, y - r, x + r, y + r), fill=dark)


def _jpeg_metadata(data: bytes) -> dict[str, float]:
    """Light metadata of a JPEG, decoded at 1/8 scale; {} for an undecodable file (a
    truncated frame still decodes as far as it goes)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (64, 64))
            small = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return {}
    return scene_light.camera_metadata(scene_light.measure(small))


class FakePiCameraRig:
    """A Pi camera module on its cable, in simulation: makes the picamera2 API fakes the
    adapter opens (a new one per opening, as on the Pi) and keeps what outlives an opening:
    the scene in front of the lens and the fault plan.

    Args:
        images: the replay images (a folder, searched recursively, or files).
        clock: frame pacing and timestamps.
        frame_rate: frames per second (0: as fast as asked, for benchmarks).
        faults: the shared fault plan (default: a new, empty one).
    """

    def __init__(self, images: str | Path | Sequence[str | Path], clock: Clock,
                 frame_rate: float = 30.0, faults: CameraFaults | None = None) -> None:
        self.images = images
        self.clock = clock
        self.frame_rate = frame_rate
        self.faults = faults or CameraFaults()
        self.scene = 0
        self.current: Picamera2 | None = None
        self._lock = threading.Lock()

    def open(self) -> Picamera2:
        """A new ``Picamera2`` looking at the current scene (the adapter's factory)."""
        cam = Picamera2(images=self.images, clock=self.clock, faults=self.faults,
                        frame_rate=self.frame_rate)
        with self._lock:
            cam.show(self.scene)
            self.current = cam
        return cam

    def advance(self) -> str:
        """Put the next image in front of the camera; returns its name."""
        with self._lock:
            cam = self.current
            self.scene += 1
            if cam is None:
                return f"scene-{self.scene}"
            return cam.show(self.scene)


class FakePiCamera(PiCamera2Camera):
    """The real picamera2 adapter over the picamera2 API fake (``camera.source =
    "picamera2-fake"``): the live path (arrays, lores ring, settling, timeouts) in simulation,
    with a scene the simulated world can change."""

    def __init__(self, cfg: CameraConfig, clock: Clock, rig: FakePiCameraRig | None = None
                 ) -> None:
        if rig is None:
            if not image_files(cfg.images_dir):
                raise ConfigError("camera.images_dir", f"no images in {cfg.images_dir!r}")
            rig = FakePiCameraRig(cfg.images_dir, clock)
        self.rig = rig
        super().__init__(cfg, clock, self.rig.open)

    def advance(self) -> str:
        """Move to the next scene and return its name."""
        return self.rig.advance()
