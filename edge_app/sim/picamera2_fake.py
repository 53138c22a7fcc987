"""A fake of the picamera2 API (the ``Picamera2`` class), for tests and benchmarks off the Pi.

**This is a fake at the picamera2 API boundary**, not a simulation of libcamera: it has the
class, method and argument names of picamera2 0.3.x that camtrap's adapter uses
(``create_video_configuration``, ``create_still_configuration``, ``configure``,
``camera_configuration``, ``start``, ``stop``, ``close``, ``capture_array``,
``capture_request`` → a request with ``make_array``/``make_buffer``/``get_metadata``/
``release``, ``capture_metadata``, ``set_controls``, ``cancel_all_and_flush``,
``camera_controls``, ``camera_properties``, ``sensor_resolution``), and it returns what
picamera2 returns:

* ``BGR888`` main arrays ``(h, w, 3)`` in R, G, B order, ``RGB888`` in B, G, R, ``XBGR8888``
  ``(h, w, 4)`` as R, G, B, 255; ``YUV420`` arrays ``(h * 3 // 2, stride)`` with the rows
  padded to 64 bytes as on the VC4 ISP, in the configuration's colour space (``Smpte170m``
  below 1280×720, ``Rec709`` above, ``Sycc`` for stills, as picamera2 picks them);
* metadata dicts with ``SensorTimestamp`` (ns), ``ExposureTime`` (µs), ``AnalogueGain``,
  ``DigitalGain``, ``Lux``, ``ColourGains``, ``ColourTemperature``, ``FrameDuration`` and
  ``AeLocked`` (or libcamera ≥ 0.5's ``AeState``), with exposure and white balance settling
  over the first frames after ``start`` (darker, greener frames, ``AeLocked`` false);
* ``wait=`` as in picamera2: a number bounds the wait and raises ``TimeoutError``.

Frames come from images (the replay folders): each is scaled to cover the configured size and
cropped, so every frame has the configured shape whatever the photo's. The scene stays until
:meth:`Picamera2.next_scene` (a test hook, not picamera2 API) or every ``frames_per_scene``
frames. Light metadata is estimated from the image (:mod:`edge_app.sim.light`).

Failures are injected through a shared :class:`CameraFaults` (shared because a reopened camera
is a new ``Picamera2`` object on the same ribbon cable):

* ``frontend_timeout``: the frontend stops delivering frames; libcamera logs "Camera frontend
  has timed out!" and every frame wait blocks until its ``wait=`` bound (``TimeoutError``), or
  for ever without one; ``cancel_all_and_flush``/``stop``/``close`` still work.
* ``hang``: a call never returns, whatever ``wait=`` says, and ``stop``/``close`` on that
  camera hang too (a deadlock below picamera2's futures) — only the capture guard helps.
* failing starts and failing opens (picamera2's "Camera __init__ sequence did not complete.").
* corrupt metadata (NaN, negative, absurd values) for the untrusted-input checks.

:meth:`CameraFaults.release` unblocks every hung call (test teardown).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from edge_app.core.clock import Clock, SystemClock
from edge_app.sim import light as scene_light
from edge_app.trap.hardware import yuv

logger = logging.getLogger(__name__)

Fault = Literal["frontend_timeout", "hang"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RGB_FORMATS = {"BGR888": 3, "RGB888": 3, "XBGR8888": 4, "XRGB8888": 4}
YUV_FORMATS = {"YUV420"}
SENSOR_SIZE = (4608, 2592)
"""Camera Module 3 (IMX708) pixel array; what ``sensor_resolution`` reports."""
CACHE_SCENES = 16
"""Rendered scenes kept (main + lores arrays); bounds the fake's memory."""


@dataclass(frozen=True)
class ColourSpace:
    """Stands in for ``libcamera.ColorSpace``: the same four attribute names, enum-like names."""

    primaries: str
    transferFunction: str  # libcamera's own attribute names
    ycbcrEncoding: str
    range: str

    @classmethod
    def Sycc(cls) -> ColourSpace:
        return cls("Primaries.Rec709", "TransferFunction.Srgb", "YcbcrEncoding.Rec601",
                   "Range.Full")

    @classmethod
    def Smpte170m(cls) -> ColourSpace:
        return cls("Primaries.Smpte170m", "TransferFunction.Rec709", "YcbcrEncoding.Rec601",
                   "Range.Limited")

    @classmethod
    def Rec709(cls) -> ColourSpace:
        return cls("Primaries.Rec709", "TransferFunction.Rec709", "YcbcrEncoding.Rec709",
                   "Range.Limited")

    def __str__(self) -> str:
        return {"YcbcrEncoding.Rec601Range.Full": "sYCC",
                "YcbcrEncoding.Rec601Range.Limited": "SMPTE170M",
                "YcbcrEncoding.Rec709Range.Limited": "Rec709"}.get(
                    self.ycbcrEncoding + self.range, "custom")


class CameraFaults:
    """Failures to inject, shared by every ``Picamera2`` built with it (see the module
    docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._cameras: weakref.WeakSet[Picamera2] = weakref.WeakSet()
        self._frames_left: int | None = None
        self._dying: int | None = 0
        self._mode: Fault = "frontend_timeout"
        self._fail_starts = 0
        self._fail_opens = 0
        self._corrupt = 0
        self.blocked = threading.Event()
        """Set when a call starts blocking on a dead camera (tests wait on it)."""
        self.opens = 0
        self.starts = 0
        self.frames = 0
        self.deaths = 0

    def stall(self, after_frames: int = 0, openings: int | None = 1,
              mode: Fault = "frontend_timeout") -> None:
        """After ``after_frames`` more frames the open camera stops; the next ``openings - 1``
        cameras opened stop at their first frame too (None: every one, i.e. the camera stays
        dead)."""
        with self._lock:
            self._frames_left = after_frames
            self._dying = openings
            self._mode = mode

    def fail_starts(self, n: int) -> None:
        """The next ``n`` ``start()`` calls raise ``RuntimeError``."""
        with self._lock:
            self._fail_starts = n

    def fail_opens(self, n: int) -> None:
        """The next ``n`` ``Picamera2()`` constructions raise ``RuntimeError``."""
        with self._lock:
            self._fail_opens = n

    def corrupt_metadata(self, n: int) -> None:
        """The next ``n`` frames report non-finite and out-of-range metadata values."""
        with self._lock:
            self._corrupt = n

    def release(self) -> None:
        """Unblock every hung call (they raise ``RuntimeError``); later faults stay off."""
        with self._lock:
            self._frames_left = None
            self._released.set()
            cams = list(self._cameras)
        for cam in cams:
            cam._wake.set()
            cam._unhang.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    # -- used by the fake ------------------------------------------------------------------

    def _open(self, cam: Picamera2) -> None:
        with self._lock:
            if self._fail_opens > 0:
                self._fail_opens -= 1
                raise RuntimeError("Camera __init__ sequence did not complete.")
            self.opens += 1
            self._cameras.add(cam)
            if self._released.is_set():
                cam._unhang.set()

    def _start(self) -> None:
        with self._lock:
            if self._fail_starts > 0:
                self._fail_starts -= 1
                raise RuntimeError("Failed to start camera: Device or resource busy")
            self.starts += 1

    def _next_frame(self) -> tuple[Fault | None, bool]:
        """(the fault this camera dies of now, or None; whether this frame's metadata is
        corrupt)."""
        with self._lock:
            corrupt = self._corrupt > 0
            if corrupt:
                self._corrupt -= 1
            if self._frames_left is None:
                self.frames += 1
                return None, corrupt
            if self._frames_left > 0:
                self._frames_left -= 1
                self.frames += 1
                return None, corrupt
            self.deaths += 1
            if self._dying is not None:
                self._dying -= 1
                if self._dying <= 0:
                    self._frames_left = None
            return self._mode, corrupt


class _Scenes:
    """The images, rendered at the configured sizes on demand (a small LRU cache)."""

    def __init__(self, images: str | Path | Sequence[str | Path]) -> None:
        self.files = image_files(images)
        if not self.files:
            raise ValueError(f"no images in {images}")
        self._cache: OrderedDict[tuple[int, tuple[int, int], tuple[int, int] | None, str],
                                 tuple[NDArray[np.uint8], NDArray[np.uint8] | None,
                                       scene_light.SceneLight]] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, index: int, main: tuple[int, int], lores: tuple[int, int] | None,
               matrix: yuv.YuvMatrix
               ) -> tuple[NDArray[np.uint8], NDArray[np.uint8] | None, scene_light.SceneLight]:
        key = (index, main, lores, matrix.name)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        rgb = _cover(_load(self.files[index], main), main)
        small = rgb.resize((max(1, main[0] // 16), max(1, main[1] // 16)),
                           Image.Resampling.BOX)
        lit = scene_light.measure(np.asarray(small))
        yuv_arr = None
        if lores is not None:
            yuv_arr = yuv.from_rgb(np.asarray(rgb.resize(lores, Image.Resampling.BILINEAR)),
                                   matrix)
        out = (np.asarray(rgb), yuv_arr, lit)
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > CACHE_SCENES:
                self._cache.popitem(last=False)
        return out


def image_files(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of a file, a folder (recursively) or a list of either, sorted."""
    roots: Iterable[str | Path] = [images] if isinstance(images, str | Path) else images
    files: list[Path] = []
    for root in roots:
        p = Path(root)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                            and not f.name.startswith(".") and f.is_file())
        elif p.is_file():
            files.append(p)
    return files


def _load(path: Path, size: tuple[int, int]) -> Image.Image:
    """An image file as the upright RGB scene a camera would see. A truncated JPEG is read as
    far as it goes (End-Of-Image appended, as the pipeline does), not refused: the fake shows
    whatever the replay folder holds."""
    data = path.read_bytes()
    for attempt in (data, data + b"\xff\xd9"):
        try:
            with Image.open(io.BytesIO(attempt)) as im:
                im.draft("RGB", size)
                return ImageOps.exif_transpose(im).convert("RGB")
        except OSError:
            continue
    raise ValueError(f"{path}: not an image the fake can show")


def _cover(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size``, then crop the middle: a sensor has one shape."""
    w, h = im.size
    s = max(size[0] / w, size[1] / h)
    nw, nh = max(size[0], round(w * s)), max(size[1], round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    x, y = (nw - size[0]) // 2, (nh - size[1]) // 2
    return im.crop((x, y, x + size[0], y + size[1]))


class CompletedRequest:
    """A captured request: its arrays are copied out on ``make_array``, as picamera2 does."""

    def __init__(self, cam: Picamera2, arrays: dict[str, NDArray[np.uint8]],
                 metadata: dict[str, Any]) -> None:
        self._cam = cam
        self._arrays = arrays
        self._metadata = metadata
        self.ref_count = 1

    def acquire(self) -> None:
        if self.ref_count == 0:
            raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
        self.ref_count += 1

    def release(self) -> None:
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        if self.ref_count == 0:
            self._cam._returned()

    def make_array(self, name: str) -> NDArray[np.uint8]:
        if self.ref_count <= 0:
            raise RuntimeError("request already released")
        if name not in self._arrays:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self._arrays[name].copy()

    def make_buffer(self, name: str) -> NDArray[np.uint8]:
        return self.make_array(name).reshape(-1)

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)


class Picamera2:
    """The fake ``Picamera2`` (see the module docstring).

    Args:
        camera_num: as picamera2's (only 0 exists here).
        tuning: as picamera2's (ignored).
        images: an image file, a folder (searched recursively) or a list of either.
        clock: paces the frames and stamps ``SensorTimestamp`` (default: the system clock).
        faults: the shared fault plan (default: none).
        frame_rate: frames per second delivered; 0 delivers each frame as soon as it is
            asked for (benchmarks).
        settle_frames: frames auto-exposure and white balance take to settle after start.
        ae_key: ``AeLocked`` (libcamera < 0.5), ``AeState`` (newer) or None (reports neither).
        frames_per_scene: move to the next image every N frames (0: only on ``next_scene``).
    """

    def __init__(self, camera_num: int = 0, tuning: Any = None, *,
                 images: str | Path | Sequence[str | Path],
                 clock: Clock | None = None, faults: CameraFaults | None = None,
                 frame_rate: float = 30.0, settle_frames: int = 6,
                 ae_key: Literal["AeLocked", "AeState"] | None = "AeLocked",
                 frames_per_scene: int = 0) -> None:
        if camera_num != 0:
            raise IndexError("list index out of range")  # what picamera2 says: no camera N
        self._wake = threading.Event()  # cancel/stop/close/release wake waits
        self._unhang = threading.Event()  # only release() ends a hang
        self.faults = faults or CameraFaults()
        self.faults._open(self)
        self._scenes = _Scenes(images)
        self._clock: Clock = clock or SystemClock()
        self.frame_rate = frame_rate
        self.settle_frames = settle_frames
        self.ae_key = ae_key
        self.frames_per_scene = frames_per_scene
        self.scene = 0
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.closed = False
        self.controls: dict[str, Any] = {}
        self.held = 0
        """Requests captured and not yet released (a leak stalls a real camera)."""
        self.frames = 0  # since the last start
        self._dead: Fault | None = None
        self._next_at: float | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    # -- properties ------------------------------------------------------------------------

    @property
    def camera_properties(self) -> dict[str, Any]:
        return {"Model": "imx708", "PixelArraySize": SENSOR_SIZE, "Location": 2,
                "Rotation": 0, "UnitCellSize": (1400, 1400)}

    @property
    def sensor_resolution(self) -> tuple[int, int]:
        return SENSOR_SIZE

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return {"AeEnable": (False, True, True), "AwbEnable": (False, True, True),
                "ExposureTime": (26, 112015443, 20000),
                "AnalogueGain": (1.0, 16.0, 1.0),
                "FrameDurationLimits": (33333, 120000000, 33333),
                "NoiseReductionMode": (0, 4, 0), "Brightness": (-1.0, 1.0, 0.0),
                "Contrast": (0.0, 32.0, 1.0), "ExposureValue": (-8.0, 8.0, 0.0)}

    @property
    def scene_name(self) -> str:
        """The image in front of the camera (a test hook)."""
        return self._scenes.files[self.scene].name

    def next_scene(self) -> str:
        """Show the next image (a test hook, not picamera2 API); returns its name."""
        return self.show(self.scene + 1)

    def show(self, index: int) -> str:
        """Show image ``index`` (modulo the number of images; a test hook); returns its
        name."""
        with self._lock:
            self.scene = index % len(self._scenes.files)
            return self._scenes.files[self.scene].name

    # -- configuration ---------------------------------------------------------------------

    def create_video_configuration(
            self, main: dict[str, Any] | None = None, lores: dict[str, Any] | None = None,
            raw: dict[str, Any] | None = None, transform: Any = None,
            colour_space: Any = None, buffer_count: int = 6,
            controls: dict[str, Any] | None = None, display: str | None = "main",
            encode: str | None = "main", queue: bool = True,
            sensor: dict[str, Any] | None = None, use_case: str = "video") -> dict[str, Any]:
        main_cfg = {"format": "XBGR8888", "size": (1280, 720)} | dict(main or {})
        lores_cfg = None if lores is None else {"format": "YUV420",
                                                "size": main_cfg["size"]} | dict(lores)
        if colour_space is None:
            w, h = main_cfg["size"]
            colour_space = (ColourSpace.Smpte170m() if w < 1280 or h < 720
                            else ColourSpace.Rec709())
        return {"use_case": use_case, "transform": transform, "colour_space": colour_space,
                "buffer_count": buffer_count, "queue": queue, "main": main_cfg,
                "lores": lores_cfg, "raw": raw,
                "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)}
                | dict(controls or {}), "sensor": sensor or {}, "display": display,
                "encode": encode}

    def create_still_configuration(
            self, main: dict[str, Any] | None = None, lores: dict[str, Any] | None = None,
            raw: dict[str, Any] | None = None, transform: Any = None,
            colour_space: Any = None, buffer_count: int = 1,
            controls: dict[str, Any] | None = None, display: str | None = None,
            encode: str | None = None, queue: bool = True,
            sensor: dict[str, Any] | None = None, use_case: str = "still") -> dict[str, Any]:
        cfg = self.create_video_configuration(
            {"format": "BGR888", "size": SENSOR_SIZE} | dict(main or {}), lores, raw,
            transform, colour_space or ColourSpace.Sycc(), buffer_count, controls, display,
            encode, queue, sensor, use_case)
        cfg["controls"] = {"NoiseReductionMode": 2} | dict(controls or {})
        return cfg

    def configure(self, camera_config: dict[str, Any] | str | None = None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            camera_config = self.create_video_configuration()
        cfg = dict(camera_config)
        for name in ("main", "lores"):
            stream = cfg.get(name)
            if stream is None:
                if name == "main":
                    raise RuntimeError("'main' key expected in camera configuration")
                continue
            _check_stream(stream, name)
            stream = dict(stream)
            w, h = stream["size"]
            fmt = stream["format"]
            if fmt in YUV_FORMATS:
                stream["stride"] = -(-w // 64) * 64
                stream["framesize"] = stream["stride"] * h * 3 // 2
            else:
                stream["stride"] = w * RGB_FORMATS[fmt]
                stream["framesize"] = stream["stride"] * h
            cfg[name] = stream
        lo = cfg.get("lores")
        if lo is not None:
            mw, mh = cfg["main"]["size"]
            lw, lh = lo["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if lo["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")  # the VC4 rule (Pi Zero..4)
        if int(cfg.get("buffer_count", 1)) < 1:
            raise RuntimeError("buffer_count must be at least 1")
        self.camera_config = cfg
        self.controls = dict(cfg.get("controls") or {})

    def camera_configuration(self) -> dict[str, Any]:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        return self.camera_config

    def set_controls(self, controls: dict[str, Any]) -> None:
        known = self.camera_controls
        for k in controls:
            if k not in known:
                raise RuntimeError(f"Control {k} is not advertised by libcamera")
        self.controls.update(controls)

    # -- running ---------------------------------------------------------------------------

    def start(self, config: dict[str, Any] | None = None, show_preview: bool | None = False
              ) -> None:
        self._check_open()
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self.faults._start()
        self.started = True
        self.frames = 0
        self._cancelled = False
        self._wake.clear()
        self._next_at = None

    def stop(self) -> None:
        self._maybe_hang()
        self.started = False
        self._wake.set()

    def close(self) -> None:
        self._maybe_hang()
        self.started = False
        self.closed = True
        self._wake.set()

    def cancel_all_and_flush(self) -> None:
        self._maybe_hang()
        self._cancelled = True
        self._wake.set()

    def capture_request(self, wait: bool | float | None = None, signal_function: Any = None,
                        flush: Any = None) -> CompletedRequest:
        arrays, md = self._frame(wait, signal_function)
        with self._lock:
            self.held += 1
        return CompletedRequest(self, arrays, md)

    def capture_array(self, name: str = "main", wait: bool | float | None = None,
                      signal_function: Any = None) -> NDArray[np.uint8]:
        arrays, _ = self._frame(wait, signal_function)
        if name not in arrays:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return arrays[name].copy()

    def capture_metadata(self, wait: bool | float | None = None,
                         signal_function: Any = None) -> dict[str, Any]:
        return self._frame(wait, signal_function)[1]

    # -- internals -------------------------------------------------------------------------

    def _returned(self) -> None:
        with self._lock:
            self.held -= 1

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("Camera is closed")

    def _maybe_hang(self) -> None:
        if self._dead == "hang":
            self.faults.blocked.set()
            self._unhang.wait()

    def _timeout_of(self, wait: bool | float | None, signal_function: Any) -> float | None:
        if signal_function is not None or wait is False:
            raise NotImplementedError("the fake runs jobs synchronously (pass wait=)")
        if wait is None or wait is True:
            return None
        return float(wait)

    def _frame(self, wait: bool | float | None, signal_function: Any
               ) -> tuple[dict[str, NDArray[np.uint8]], dict[str, Any]]:
        timeout = self._timeout_of(wait, signal_function)
        self._check_open()
        if not self.started:
            raise RuntimeError("Camera not started")
        cfg = self.camera_config
        assert cfg is not None
        if self._dead is None and self.held >= int(cfg.get("buffer_count", 1)):
            self._block("frontend_timeout", timeout)  # every buffer held: no frame completes
        if self._dead is not None:
            self._block(self._dead, timeout)
        fault, corrupt = self.faults._next_frame()
        if fault is not None:
            self._dead = fault
            logger.error("ERROR RPI pipeline_base.cpp: Camera frontend has timed out! (fake)")
            self._block(fault, timeout)
        self._pace()
        if self.frames_per_scene and self.frames and self.frames % self.frames_per_scene == 0:
            self.next_scene()
        k = self.frames
        self.frames += 1
        return self._render(cfg, k, corrupt)

    def _block(self, fault: Fault, timeout: float | None) -> None:
        """Wait as a dead camera makes a caller wait; always ends in an exception."""
        self.faults.blocked.set()
        if fault == "hang":
            self._unhang.wait()
            raise RuntimeError("camera released (test teardown)")
        if not self._wake.wait(timeout):
            raise TimeoutError()
        if self._cancelled:
            raise CancelledError()
        raise RuntimeError("camera stopped" if not self.faults.released
                           else "camera released (test teardown)")

    def _pace(self) -> None:
        if self.frame_rate <= 0:
            return
        now = self._clock.monotonic()
        period = 1.0 / self.frame_rate
        due = now + period if self._next_at is None else max(self._next_at, now)
        if due > now and self._clock.wait(self._wake, due - now) and not self.started:
            raise RuntimeError("camera stopped")
        self._next_at = due + period

    def _render(self, cfg: dict[str, Any], k: int, corrupt: bool
                ) -> tuple[dict[str, NDArray[np.uint8]], dict[str, Any]]:
        main, lores = cfg["main"], cfg.get("lores")
        matrix = yuv.matrix_of(cfg.get("colour_space")) or yuv.BT709_LIMITED
        main_size = (int(main["size"][0]), int(main["size"][1]))
        lores_size = None if lores is None else (int(lores["size"][0]), int(lores["size"][1]))
        rgb, lores_yuv, lit = self._scenes.render(self.scene, main_size, lores_size, matrix)
        settling = k < self.settle_frames
        level = 0.35 + 0.65 * k / self.settle_frames if settling else 1.0
        arrays: dict[str, NDArray[np.uint8]] = {"main": _format(rgb, main["format"], level)}
        if lores_yuv is not None and lores_size is not None:
            arrays["lores"] = (lores_yuv if not settling else
                               _dim_yuv(lores_yuv, lores_size, level, matrix))
        md = sensor_metadata(lit, k, settling=settling, level=level, corrupt=corrupt,
                             controls=self.controls, ae_key=self.ae_key,
                             frame_rate=self.frame_rate, now_s=self._clock.monotonic())
        return arrays, md


def sensor_metadata(lit: scene_light.SceneLight, k: int, *, settling: bool, level: float,
                    corrupt: bool, controls: dict[str, Any], ae_key: str | None, frame_rate: float,
                    now_s: float) -> dict[str, Any]:
    """Frame ``k``'s metadata as libcamera reports it: auto exposure for the scene's light
    (or the manual controls), gains converging while the AE settles, the AE-done key of this
    libcamera release, and, for a corrupt frame, the out-of-range values the guard refuses."""
    exposure, gain = scene_light.auto_exposure(lit.lux)
    if "ExposureTime" in controls and not controls.get("AeEnable", True):
        exposure = int(controls["ExposureTime"])
        gain = float(controls.get("AnalogueGain", gain))
    target = scene_light.NIGHT_GAINS if lit.night else scene_light.DAY_GAINS
    gains = tuple(1.0 + (t - 1.0) * level for t in target)
    md: dict[str, Any] = {
        "SensorTimestamp": int(now_s * 1e9),
        "ExposureTime": max(1, int(exposure * level)),
        "AnalogueGain": round(gain, 3),
        "DigitalGain": 1.0,
        "Lux": round(lit.lux, 3),
        "ColourGains": gains,
        "ColourTemperature": 3000 if lit.night else 5200,
        "FrameDuration": 33333 if frame_rate <= 0 else int(1e6 / frame_rate),
        "ScalerCrop": (0, 0, *SENSOR_SIZE),
        "FrameNumber": k,
    }
    if ae_key == "AeLocked":
        md["AeLocked"] = not settling
    elif ae_key == "AeState":
        md["AeState"] = 1 if settling else 2
    if corrupt:
        md.update({"Lux": math.nan, "ExposureTime": -5, "AnalogueGain": math.inf,
                   "AeLocked": "yes"})
    return md


def _check_stream(stream: Any, name: str) -> None:
    """picamera2's ``check_stream_config`` rules, with its messages."""
    if not isinstance(stream, dict):
        raise RuntimeError(name + " stream should be a dictionary")
    if "format" not in stream:
        raise RuntimeError("format not found in " + name + " stream")
    if "size" not in stream:
        raise RuntimeError("size not found in " + name + " stream")
    fmt = stream["format"]
    if fmt not in RGB_FORMATS and fmt not in YUV_FORMATS:
        raise RuntimeError("Bad format " + str(fmt) + " in stream " + name)
    size = stream["size"]
    if not isinstance(size, tuple) or len(size) != 2:
        raise RuntimeError("size in " + name + " stream should be (width, height)")
    if size[0] % 2 or size[1] % 2:
        raise RuntimeError("width and height should be even")


def _format(rgb: NDArray[np.uint8], fmt: str, level: float) -> NDArray[np.uint8]:
    """The main array as picamera2 lays out ``fmt``, dimmed to ``level`` while settling."""
    src = rgb if level >= 1.0 else (rgb.astype(np.float32) * level).astype(np.uint8)
    if fmt == "BGR888":  # libcamera's names are little-endian words: R, G, B in memory
        return src
    if fmt == "RGB888":
        return np.ascontiguousarray(src[..., ::-1])
    out = np.empty((*src.shape[:2], 4), np.uint8)
    out[..., 3] = 255
    out[..., :3] = src if fmt == "XBGR8888" else src[..., ::-1]
    return out


def _dim_yuv(arr: NDArray[np.uint8], size: tuple[int, int], level: float,
             matrix: yuv.YuvMatrix) -> NDArray[np.uint8]:
    """A darker copy of a YUV420 frame (luma scaled above black, chroma kept)."""
    out = arr.copy()
    y = yuv.planes(out, *size)[0]
    black = 0.0 if matrix.full else 16.0
    y[...] = ((y.astype(np.float32) - black) * level + black).astype(np.uint8)
    return out
