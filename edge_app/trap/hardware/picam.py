"""One open Picamera2: configured, started, settled, its ring thread, torn down once.

:class:`~edge_app.trap.hardware.camera.PiCamera2Camera` (the Camera the trap uses) holds at most
one :class:`PicamSession`; reopening the camera means dropping the session and opening a new
one. Keeping everything of one opening in one object is what makes a reopen safe after a hang:
a thread stuck inside the old session's picamera2 call holds only that session's lock, and
whatever it returns later lands in an object nobody reads any more.

Only the picamera2 API is used here (the names of picamera2 0.3.x); the object comes from a
factory, so the tests hand in :mod:`edge_app.sim.picamera2_fake` and the Pi hands in the real
``picamera2.Picamera2``. Every call that waits for a frame passes picamera2's own ``wait=``
timeout (a number makes picamera2 raise ``TimeoutError`` instead of blocking for ever); the
capture guard (:mod:`edge_app.trap.hardware.camera_guard`) is the backstop for calls that hang
below that.

Camera metadata is untrusted input: :func:`clean_metadata` keeps known keys with finite,
in-range numbers and counts the rest.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import CameraTimeout, HardwareUnavailable
from edge_app.trap.hardware import yuv

logger = logging.getLogger(__name__)

MAIN_FORMAT = "BGR888"
"""picamera2's ``BGR888`` arrives as ``(h, w, 3)`` in R, G, B order (libcamera names the
format by its little-endian word): the order the detector and Pillow take without a swap."""
LORES_FORMAT = "YUV420"
"""The only lores format the VC4 ISP (Pi Zero 2 W, 3, 4) accepts; see :mod:`yuv`."""
BUFFER_COUNT = 4
"""Enough for the ring thread and a burst to hold a request each while the camera keeps
streaming; each main buffer is w×h×3 bytes of CMA memory (2.8 MB at 1280×720)."""
METADATA_EVERY_S = 1.0
"""Without a pre-trigger ring, the thread still reads one frame's metadata this often, so
``metadata()`` (light level for day/night) stays current while the trap is idle."""
MIN_RING_INTERVAL_S = 0.1
SETTLE_STABLE_FRAMES = 2
"""Consecutive frames that must agree before exposure and white balance count as settled."""
AWB_TOLERANCE = 0.02
"""Colour gains that move less than this (relative) between frames have settled."""
AE_TOLERANCE = 0.05
"""Without an AE state key, exposure × gain moving less than this (relative) has settled."""
AE_CONVERGED = 2
"""libcamera ``AeState`` Converged (newer libcamera; older ones report ``AeLocked``)."""

METADATA_LIMITS: dict[str, tuple[float, float]] = {
    "Lux": (0.0, 1e6),
    "ExposureTime": (0.0, 1e9),  # µs
    "AnalogueGain": (0.0, 1e3),
    "DigitalGain": (0.0, 1e3),
    "ColourTemperature": (0.0, 1e5),
    "FrameDuration": (0.0, 1e9),  # µs
    "SensorTimestamp": (0.0, 2.0**63),  # ns
    "SensorTemperature": (-100.0, 200.0),
    "AeState": (0.0, 16.0),
}
"""Metadata keys kept (numbers) and their plausible range; ``AeLocked`` (a bool) is kept as
0/1. Anything else a camera reports is dropped silently (not an error, just not used)."""


_LIMITED_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * (255.0 / 219.0)), 0, 255).astype(
    np.uint8)


def clean_metadata(raw: object) -> tuple[dict[str, float], list[str]]:
    """The usable part of one frame's metadata, and the keys refused.

    A key of :data:`METADATA_LIMITS` whose value is not a finite number inside its range is
    refused (a driver bug or a corrupted buffer must not make a night frame look like noon).
    A non-mapping is refused whole (``["<not a mapping>"]``).
    """
    if not isinstance(raw, Mapping):
        return {}, ["<not a mapping>"]
    out: dict[str, float] = {}
    refused: list[str] = []
    for key, (lo, hi) in METADATA_LIMITS.items():
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            refused.append(key)
            continue
        v = float(value)
        if not math.isfinite(v) or not lo <= v <= hi:
            refused.append(key)
            continue
        out[key] = v
    if "AeLocked" in raw:
        locked = raw["AeLocked"]
        if isinstance(locked, bool | int) and locked in (0, 1):
            out["AeLocked"] = float(locked)
        else:
            refused.append("AeLocked")
    return out, refused


def colour_gains(raw: Mapping[str, Any]) -> tuple[float, float] | None:
    """picamera2's ``ColourGains`` (red, blue) if present and sane, else None."""
    g = raw.get("ColourGains")
    if not isinstance(g, tuple | list) or len(g) != 2:
        return None
    try:
        r, b = float(g[0]), float(g[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(r) and math.isfinite(b) and 0 < r < 64 and 0 < b < 64):
        return None
    return r, b


def ae_converged(md: Mapping[str, float]) -> bool | None:
    """Whether auto-exposure says it has converged; None when the camera does not say."""
    if "AeState" in md:
        return int(md["AeState"]) == AE_CONVERGED
    if "AeLocked" in md:
        return md["AeLocked"] >= 1.0
    return None


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-9)


def lores_size(cfg: CameraConfig, main: tuple[int, int]) -> tuple[int, int]:
    """The lores stream size: ``camera.lores_width`` wide (at most the main width), the main
    stream's aspect ratio (the ISP scales both from the same crop, so any other ratio would
    squash the image), both sides even (YUV420)."""
    w, h = main
    lw = min(cfg.lores_width, w) // 2 * 2
    lh = max(2, round(lw * h / w / 2) * 2)
    return lw, lh


@dataclass(frozen=True, slots=True)
class Grab:
    """One request's arrays and metadata, copied out of the camera's buffers.

    Attributes:
        mono: monotonic time the request was taken.
        wall: wall time the request was taken.
        main: ``(h, w, 3)`` RGB, or None when only the lores stream was read.
        lores: the lores stream's YUV420 array (picamera2 shape ``(h*3/2, stride)``).
        metadata: the cleaned metadata.
    """

    mono: float
    wall: float
    main: NDArray[np.uint8] | None
    lores: NDArray[np.uint8]
    metadata: dict[str, float]


class PicamSession:
    """One opening of the camera (see the module docstring).

    Use :meth:`open`; the session is streaming and settled when it returns. Thread-safe:
    :meth:`grab` from the capture thread and the ring thread are serialised by one lock
    (picamera2 hands out one request at a time per caller anyway).
    """

    def __init__(self, cam: Any, cfg: CameraConfig, clock: Clock) -> None:
        self.cam = cam
        self.cfg = cfg
        self.clock = clock
        self.main_size = (cfg.width, cfg.height)
        self.lores_size = lores_size(cfg, self.main_size)
        self.matrix = yuv.BT709_LIMITED
        self.settled_after: int | None = None
        """Frames it took exposure and white balance to settle, None if they did not."""
        self.refused = 0
        """Metadata values refused since the session opened."""
        self.ring_errors = 0
        self.ring_frames = 0
        """Frames the ring thread has kept since the session opened."""
        self._io = threading.Lock()  # serialises picamera2 calls between the two threads
        self._state = threading.Lock()  # guards _ring and _latest; never held across I/O
        self._grew = threading.Condition(self._state)  # a ring frame was added
        self._ring: deque[Grab] = deque(maxlen=max(cfg.pre_trigger_frames, 1))
        self._latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, factory: Callable[[], Any], cfg: CameraConfig, clock: Clock) -> PicamSession:
        """Create, configure, start and settle a camera, then start the ring thread.

        Raises:
            HardwareUnavailable: no camera, a busy one, or one that refuses the configuration.
            CameraTimeout: the camera started but delivered no frame in time.
        """
        try:
            cam = factory()
        except HardwareUnavailable:
            raise
        except Exception as e:  # picamera2 raises RuntimeError/IndexError without a camera
            raise HardwareUnavailable(f"cannot open the Pi camera: {e}") from e
        session = cls(cam, cfg, clock)
        try:
            session._configure()
            session._settle()
        except BaseException:
            session._teardown()
            raise
        session._start_thread()
        return session

    def _configure(self) -> None:
        cam = self.cam
        try:
            config = cam.create_video_configuration(
                main={"size": self.main_size, "format": MAIN_FORMAT},
                lores={"size": self.lores_size, "format": LORES_FORMAT},
                buffer_count=BUFFER_COUNT)
            cam.configure(config)
            actual = cam.camera_configuration()
            mw, mh = actual["main"]["size"]
            lw, lh = actual["lores"]["size"]
            self.main_size, self.lores_size = (int(mw), int(mh)), (int(lw), int(lh))
            cam.start()
        except Exception as e:
            raise HardwareUnavailable(f"cannot start the Pi camera: {e}") from e
        matrix = yuv.matrix_of(actual.get("colour_space"))
        if matrix is None:
            logger.warning("unknown colour space %r: converting lores frames as %s",
                           actual.get("colour_space"), self.matrix.name)
        else:
            self.matrix = matrix
        logger.info("Pi camera streaming main %dx%d %s, lores %dx%d %s (%s)",
                    *self.main_size, MAIN_FORMAT, *self.lores_size, LORES_FORMAT,
                    self.matrix.name)

    def _settle(self) -> None:
        """Wait (bounded) until auto-exposure and white balance have settled.

        A fixed sleep is either too short (a cold sensor at dusk takes longer) or wasted time
        on every start; the metadata says when the loops have converged. Bounded twice: by
        ``camera.settle_timeout_s`` on the clock and by a frame count (a camera that stops
        reporting time cannot keep us here). Not settled in time is a warning, not an error:
        a frame with a slight colour cast beats no frame.
        """
        limit = self.cfg.settle_timeout_s
        if limit <= 0:
            return
        deadline = self.clock.monotonic() + limit
        max_frames = math.ceil(limit * 120) + SETTLE_STABLE_FRAMES
        stable = 0
        prev_gains: tuple[float, float] | None = None
        prev_ev: float | None = None
        for k in range(1, max_frames + 1):
            raw = self._call(self.cam.capture_metadata, "metadata")
            md = self._note(raw)
            gains = colour_gains(raw)
            ev = md.get("ExposureTime", 0.0) * md.get("AnalogueGain", 1.0)
            ae = ae_converged(md)
            if ae is None:
                ae = prev_ev is not None and _rel(ev, prev_ev) < AE_TOLERANCE
            awb = gains is None or (prev_gains is not None and max(
                _rel(gains[0], prev_gains[0]), _rel(gains[1], prev_gains[1])) < AWB_TOLERANCE)
            stable = stable + 1 if ae and awb else 0
            prev_gains, prev_ev = gains, ev
            if stable >= SETTLE_STABLE_FRAMES:
                self.settled_after = k
                logger.info("exposure and white balance settled after %d frames", k)
                return
            if self.clock.monotonic() >= deadline:
                break
        logger.warning("exposure/white balance not settled after %.1f s: shooting anyway",
                       limit)

    # -- frames ----------------------------------------------------------------------------

    def grab(self, main: bool = True) -> Grab:
        """The next frame's arrays (``main`` only when asked) and metadata.

        Raises:
            CameraTimeout: no frame within ``camera.capture_timeout_s`` (picamera2's wait).
            HardwareUnavailable: the camera failed, or handed over arrays of the wrong shape.
        """
        with self._io:
            req = self._call(self.cam.capture_request, "capture")
            try:
                pixels = req.make_array("main") if main else None
                lores = req.make_array("lores")
                raw = req.get_metadata()
            except Exception as e:
                raise HardwareUnavailable(f"Pi camera request unreadable: {e}") from e
            finally:
                try:
                    req.release()
                except Exception as e:  # noqa: BLE001 - must not hide the frame's own fate
                    logger.warning("request release failed: %s", e)
        mono, wall = self.clock.monotonic(), self.clock.wall()
        w, h = self.main_size
        if pixels is not None and (pixels.dtype != np.uint8 or pixels.shape != (h, w, 3)):
            raise HardwareUnavailable(f"main stream: expected ({h}, {w}, 3) uint8, got "
                                      f"{pixels.shape} {pixels.dtype}")
        lw, lh = self.lores_size
        if lores.dtype != np.uint8 or lores.ndim != 2 or lores.shape[0] != lh * 3 // 2 \
                or lores.shape[1] < lw:
            raise HardwareUnavailable(f"lores stream: not a {lw}x{lh} YUV420 array: "
                                      f"{lores.shape} {lores.dtype}")
        return Grab(mono, wall, pixels, lores, self._note(raw))

    def recent(self, n: int) -> list[Grab]:
        """Up to ``n`` ring frames, oldest first."""
        with self._state:
            return list(self._ring)[-n:] if n > 0 else []

    def wait_ring(self, frames: int, timeout_s: float) -> bool:
        """Block until the ring thread has kept ``frames`` frames since the session opened
        (True), or ``timeout_s`` passed (False); for tests and diagnostics."""
        with self._grew:
            return self._grew.wait_for(lambda: self.ring_frames >= frames, timeout_s)

    def latest_metadata(self) -> dict[str, float]:
        """The most recent frame's cleaned metadata (a copy)."""
        with self._state:
            return dict(self._latest)

    def grey(self, g: Grab) -> NDArray[np.uint8]:
        """The lores Y plane of a grab as a full-range greyscale image (the motion gate's;
        limited-range luma is stretched so that a grey-level threshold means the same as on
        a decoded JPEG)."""
        y = yuv.planes(g.lores, *self.lores_size)[0]
        if self.matrix.full:
            return np.ascontiguousarray(y)
        return np.take(_LIMITED_TO_FULL, y)

    def rgb(self, g: Grab) -> NDArray[np.uint8]:
        """A grab's lores frame as RGB (for ring frames, which carry no main array)."""
        return yuv.to_rgb(g.lores, *self.lores_size, self.matrix)

    # -- the ring thread -------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._fill, name="camera-ring", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        """Keep the ring (and the latest metadata) fresh while the trap waits.

        Waits on the real clock, not the injected one: it samples a device that streams in
        real time, and a fake clock (which returns from waits at once) would turn this loop
        into a busy one. The frames' own timestamps still come from the injected clock.
        """
        keep = self.cfg.pre_trigger_frames > 0
        interval = (max(self.cfg.burst_interval_s, MIN_RING_INTERVAL_S) if keep
                    else METADATA_EVERY_S)
        failing = False
        while not self._stop.wait(interval):
            try:
                g = self.grab(main=False)
            except HardwareUnavailable as e:
                self.ring_errors += 1
                if not failing:
                    logger.error("ring buffer capture failed: %s", e)
                failing = True
                continue
            if failing:
                logger.info("ring buffer capture works again")
                failing = False
            if keep:
                with self._state:
                    self._ring.append(g)
                    self.ring_frames += 1
                    self._grew.notify_all()

    # -- helpers ---------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], what: str) -> Any:
        """A picamera2 call with its own ``wait=`` bound, errors translated."""
        try:
            return fn(wait=self.cfg.capture_timeout_s)
        except TimeoutError as e:
            raise CameraTimeout(f"Pi camera {what}: no frame within "
                                f"{self.cfg.capture_timeout_s:g} s") from e
        except Exception as e:  # picamera2 surfaces driver failures as RuntimeError
            raise HardwareUnavailable(f"Pi camera {what} failed: {e}") from e

    def _note(self, raw: object) -> dict[str, float]:
        md, refused = clean_metadata(raw)
        if refused:
            self.refused += len(refused)
            logger.warning("camera metadata refused (not finite or out of range): %s",
                           ", ".join(refused))
        with self._state:
            self._latest = md
        return md

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the ring thread and the camera; every step bounded or logged, never raised.

        Called from the guard's camera thread after a hang too: the ring thread may be the
        one stuck in picamera2, so it is joined with a bound and then left behind.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(2.0, self.cfg.capture_timeout_s))
            if self._thread.is_alive():
                logger.error("camera ring thread did not stop (stuck in the driver?)")
        with self._state:
            self._ring.clear()
        self._teardown()

    def _teardown(self) -> None:
        cam = self.cam
        for step in ("cancel_all_and_flush", "stop", "close"):
            fn = getattr(cam, step, None)
            if fn is None:
                continue
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - closing goes on whatever a step says
                logger.warning("Pi camera %s failed: %s", step, e)
