"""Cameras behind one small interface: the Pi camera here, the simulated ones in sim/cameras.py.

The pipeline only ever calls the five methods of :class:`Camera`. A frame is JPEG bytes (a
replayed file, byte for byte as on disk), raw pixels (the Pi camera: the *live path*, no encode
and decode on the way to the detector), or both; see :class:`~edge_app.core.events.Frame`.
The one factory, real or simulated by ``camera.source``, is
:func:`edge_app.trap.hardware.factory.make_camera`; it wraps every camera in the capture guard
(:mod:`edge_app.trap.hardware.camera_guard`), which bounds each call with a timeout and reopens
a hung camera.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import HardwareUnavailable
from edge_app.core.events import Frame
from edge_app.trap.hardware.picam import PicamSession

logger = logging.getLogger(__name__)

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})

#: Time between two simulated ring-buffer frames (what ``recent`` pretends to have kept).
SIM_RING_INTERVAL_S = 0.1


class Camera(Protocol):
    """What the capture stage needs from a camera.

    Implementations are safe to call from the capture thread while another thread (the
    simulator, the day/night switch) changes the scene or reads :meth:`metadata`.
    """

    def start(self) -> None:
        """Open the camera and start streaming (the ring buffer fills from here on)."""
        ...

    def capture(self, index: int) -> Frame:
        """One frame now, with ``index`` and ``pre_trigger=False``."""
        ...

    def recent(self, n: int) -> list[Frame]:
        """Up to ``n`` frames from before now (the ring buffer), oldest first.

        They have ``pre_trigger=True``; fewer than ``n`` come back right after start.
        """
        ...

    def metadata(self) -> Mapping[str, float]:
        """The latest frame's metadata: at least ``Lux``, ``ExposureTime`` (µs) and
        ``AnalogueGain`` once a frame has been seen (empty before).

        Never blocks on the device (it returns what the last frame said), so it is safe to
        call from any thread, as often as wanted, even while a capture hangs.
        """
        ...

    def close(self) -> None:
        """Stop streaming and release the device. Idempotent; a later :meth:`start` opens
        the camera again (that is how a hung camera is reopened)."""
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


def _import_picamera2() -> Any:
    try:
        from picamera2 import Picamera2
    except ImportError as e:
        raise HardwareUnavailable(f"picamera2 is not available: {e}") from e
    return Picamera2()


class PiCamera2Camera:
    """The Pi camera through picamera2: streaming, settled, a lores ring, full-size bursts.

    Design (the session in :mod:`edge_app.trap.hardware.picam` does the work):

    * Two streams. ``main`` at ``camera.width``×``camera.height``, ``BGR888`` (R, G, B
      arrays): the burst frames, handed to the detector as arrays and JPEG-encoded by the
      store only for the frame it keeps. ``lores`` at ``camera.lores_width`` wide, YUV420:
      the pre-trigger ring (0.35 MB a frame at 640×360 instead of 2.8 MB) and, through its Y
      plane, the motion gate's greyscale image at no cost.
    * The camera runs from :meth:`start` to :meth:`close`, so a capture takes the next
      streamed frame (~10 ms) instead of a cold start (~190 ms), and :meth:`start` returns only
      once exposure and white balance have settled (read from the frame metadata, bounded by
      ``camera.settle_timeout_s``), so the first shot after a power-up is not grey or green.
    * A ``camera-ring`` thread copies one lores frame every ``max(burst_interval_s, 0.1)`` s
      into the ring; it also keeps :meth:`metadata` current. Ring frames reach the detector
      as RGB converted from YUV when :meth:`recent` asks for them.
    * Every picamera2 wait is bounded (``camera.capture_timeout_s``, picamera2's own
      ``wait=``); what hangs below that is the capture guard's business.

    Args:
        cfg: the ``[camera]`` section.
        clock: frame timestamps and the settling deadline.
        picamera2: makes the ``Picamera2`` object (default: ``picamera2.Picamera2()``,
            imported when the camera starts); the tests pass the API fake.
    """

    def __init__(self, cfg: CameraConfig, clock: Clock,
                 picamera2: Callable[[], Any] | None = None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._factory = picamera2 or _import_picamera2
        self._lock = threading.Lock()  # guards _session and _metadata; never held across I/O
        self._session: PicamSession | None = None
        self._metadata: dict[str, float] = {}
        self._opened = 0

    @property
    def session(self) -> PicamSession | None:
        """The open session (tests and diagnostics), None while closed."""
        return self._session

    @property
    def openings(self) -> int:
        """How many times the camera was opened (1 + reopenings)."""
        return self._opened

    def start(self) -> None:
        """Open, configure, start and settle the camera; start the ring thread.

        Raises:
            HardwareUnavailable: picamera2/libcamera missing, no camera, or it will not start.
            CameraTimeout: it started but delivered no frame in time.
        """
        with self._lock:
            if self._session is not None:
                return
        session = PicamSession.open(self._factory, self._cfg, self._clock)
        with self._lock:
            self._session = session
            self._opened += 1

    def capture(self, index: int) -> Frame:
        """The next streamed frame: full-size RGB pixels, the lores grey image, metadata."""
        s = self._require()
        g = s.grab(main=True)
        self._remember(g.metadata)
        return Frame(jpeg=b"", mono=g.mono, wall=g.wall, index=index, pre_trigger=False,
                     name=f"picamera2-{index}", pixels=g.main, lores=s.grey(g),
                     metadata=g.metadata)

    def recent(self, n: int) -> list[Frame]:
        """The last ``n`` ring frames, oldest first, converted to RGB now (lores size)."""
        s = self._require()
        return [Frame(jpeg=b"", mono=g.mono, wall=g.wall, index=k, pre_trigger=True,
                      name=f"picamera2-ring-{k}", pixels=s.rgb(g), lores=s.grey(g),
                      metadata=g.metadata)
                for k, g in enumerate(s.recent(n))]

    def metadata(self) -> dict[str, float]:
        """The latest frame's cleaned metadata (kept across a reopening)."""
        with self._lock:
            s = self._session
            if s is None:
                return dict(self._metadata)
        md = s.latest_metadata()
        return md or self.metadata_cached()

    def metadata_cached(self) -> dict[str, float]:
        """What the last capture reported (the session's is fresher while it runs)."""
        with self._lock:
            return dict(self._metadata)

    def close(self) -> None:
        """Stop the ring thread and the camera. Idempotent; :meth:`start` opens it again."""
        with self._lock:
            s, self._session = self._session, None
        if s is not None:
            md = s.latest_metadata()
            if md:
                self._remember(md)
            s.close()

    def _require(self) -> PicamSession:
        with self._lock:
            s = self._session
        if s is None:
            raise HardwareUnavailable("the Pi camera is not started")
        return s

    def _remember(self, md: dict[str, float]) -> None:
        with self._lock:
            self._metadata = dict(md)
