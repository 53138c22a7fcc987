"""Cameras behind one small interface: the Pi camera here, the simulated ones in sim/cameras.py.

The pipeline only ever calls the four methods of :class:`Camera`. Frames are JPEG bytes, so a
replayed file reaches the detector byte for byte as it is on disk, exactly as a real capture
would be stored. The one factory, real or simulated by ``camera.source``, is
:func:`edge_app.trap.hardware.factory.make_camera`.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import HardwareUnavailable
from edge_app.core.events import Frame

logger = logging.getLogger(__name__)

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})

#: Time between two simulated ring-buffer frames (what ``recent`` pretends to have kept).
SIM_RING_INTERVAL_S = 0.1


class Camera(Protocol):
    """What the capture stage needs from a camera.

    Implementations are safe to call from the capture thread while another thread (the
    simulator) changes the scene.
    """

    def start(self) -> None:
        """Open the camera and start streaming (the ring buffer fills from here on)."""
        ...

    def capture(self, index: int) -> Frame:
        """One frame now, JPEG-encoded, with ``index`` and ``pre_trigger=False``."""
        ...

    def recent(self, n: int) -> list[Frame]:
        """Up to ``n`` frames from before now (the ring buffer), oldest first.

        They have ``pre_trigger=True``; fewer than ``n`` come back right after start.
        """
        ...

    def close(self) -> None:
        """Stop streaming and release the device. Idempotent."""
        ...


@runtime_checkable
class SceneCamera(Camera, Protocol):
    """A simulated camera whose scene the simulated world can change."""

    def advance(self) -> str:
        """Move to the next scene and return its name."""
        ...


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """``image`` as JPEG bytes at ``quality``."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def ring_times(clock: Clock, n: int, interval_s: float) -> list[tuple[float, float]]:
    """(mono, wall) of ``n`` ring frames ending one interval before now, oldest first."""
    mono, wall = clock.monotonic(), clock.wall()
    return [(mono - (n - k) * interval_s, wall - (n - k) * interval_s) for k in range(n)]



class PiCamera2Camera:
    """The Pi camera through picamera2, streaming continuously, with a small ring buffer.

    **Untested here**: picamera2 needs libcamera's Python bindings, which exist only on
    Raspberry Pi OS (apt ``python3-picamera2``; a venv made with ``--system-site-packages``).
    This adapter is deliberately small and follows picamera2's documented API; check it on a
    Pi before relying on it.

    Design:

    * One ``main`` stream at ``camera.width``×``camera.height`` in ``BGR888``, which
      picamera2 hands over as an array whose last axis is R, G, B (its ``RGB888`` is B, G, R).
      No ``lores`` stream: nothing consumes one yet (the motion gate decodes JPEGs at reduced
      scale with Pillow's ``draft()``), and an unused stream still costs ISP bandwidth.
    * The camera runs from :meth:`start` to :meth:`close`, so a capture takes the next
      streamed frame (~10 ms) instead of a cold start (~190 ms), and white balance has
      settled (0.5–0.7 s after start; :meth:`start` waits for it).
    * A ``camera-ring`` thread copies one raw frame every ``max(burst_interval_s, 0.1)`` s
      into a deque of ``pre_trigger_frames`` arrays. Frames are JPEG-encoded only when
      :meth:`recent` asks for them, so idle cost is one array copy per interval, not an
      encode. With ``pre_trigger_frames = 0`` there is no thread at all.
    * picamera2 calls are serialised by one lock (ring thread vs capture thread).
    """

    #: white balance and exposure settle this long after the camera starts
    SETTLE_S = 0.7

    def __init__(self, cfg: CameraConfig, clock: Clock) -> None:
        self._cfg = cfg
        self._clock = clock
        self._cam: Any = None
        self._lock = threading.Lock()  # serialises picamera2 calls; guards _ring
        self._ring: deque[tuple[float, float, np.ndarray]] = deque(
            maxlen=max(cfg.pre_trigger_frames, 1)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Open and configure the camera, start streaming and the ring thread.

        Raises:
            HardwareUnavailable: picamera2/libcamera missing, or no camera attached.
        """
        if self._cam is not None:
            return
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise HardwareUnavailable(f"picamera2 is not available: {e}") from e
        size = (self._cfg.width, self._cfg.height)
        try:
            cam = Picamera2()
            config = cam.create_video_configuration(
                main={"size": size, "format": "BGR888"}, buffer_count=4
            )
            cam.configure(config)
            cam.start()
        except Exception as e:  # picamera2 raises RuntimeError/IndexError with no camera
            raise HardwareUnavailable(f"cannot start the Pi camera: {e}") from e
        self._cam = cam
        self._clock.wait(self._stop, self.SETTLE_S)
        if self._cfg.pre_trigger_frames > 0:
            self._thread = threading.Thread(target=self._fill, name="camera-ring", daemon=True)
            self._thread.start()
        logger.info("Pi camera streaming %dx%d", *size)

    def capture(self, index: int) -> Frame:
        """The next streamed frame, JPEG-encoded at ``camera.jpeg_quality``."""
        mono, wall, pixels = self._grab()
        return Frame(
            jpeg=encode_jpeg(Image.fromarray(pixels, "RGB"), self._cfg.jpeg_quality),
            mono=mono,
            wall=wall,
            index=index,
            pre_trigger=False,
            name=f"picamera2-{index}",
        )

    def recent(self, n: int) -> list[Frame]:
        """The last ``n`` ring-buffer frames, oldest first, encoded now."""
        if n <= 0:
            return []
        with self._lock:
            kept = list(self._ring)[-n:]
        return [
            Frame(
                jpeg=encode_jpeg(Image.fromarray(pixels, "RGB"), self._cfg.jpeg_quality),
                mono=mono,
                wall=wall,
                index=k,
                pre_trigger=True,
                name=f"picamera2-ring-{k}",
            )
            for k, (mono, wall, pixels) in enumerate(kept)
        ]

    def close(self) -> None:
        """Stop the ring thread and the camera. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            cam, self._cam = self._cam, None
            self._ring.clear()
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()

    def _grab(self) -> tuple[float, float, np.ndarray]:
        with self._lock:
            if self._cam is None:
                raise HardwareUnavailable("the Pi camera is not started")
            try:
                pixels = self._cam.capture_array("main")
            except Exception as e:  # frontend timeouts surface as RuntimeError/TimeoutError
                raise HardwareUnavailable(f"Pi camera capture failed: {e}") from e
            return self._clock.monotonic(), self._clock.wall(), pixels

    def _fill(self) -> None:
        interval = max(self._cfg.burst_interval_s, 0.1)
        while not self._clock.wait(self._stop, interval):
            try:
                item = self._grab()
            except HardwareUnavailable:
                logger.exception("ring buffer capture failed")
                continue
            with self._lock:
                self._ring.append(item)
