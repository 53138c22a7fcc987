"""A camera that cannot hang the trap: every call bounded, a hung camera reopened in-process.

Camera pipelines die in long runs ("Dequeue timer ... expired / Camera frontend has timed out",
raspberrypi/picamera2#883 after ~30 h under load; #952, #873): the call that waits for a frame
never returns. Without a bound, the capture stage waits for ever and the leopard walks past.

:class:`CameraGuard` wraps any :class:`~edge_app.trap.hardware.camera.Camera`:

* Every call runs on a dedicated camera thread; the caller hands it over through a one-slot
  handoff and waits at most ``camera.capture_timeout_s`` (``camera.open_timeout_s`` to open or
  close). A call that does not come back is *abandoned*: its thread is left stuck in the
  driver (Python cannot kill a thread; it is a daemon thread, counted), and a fresh camera
  thread takes over.
* After a timeout or a failure the camera is closed and opened again on the new thread
  (bounded likewise), after a back-off (``camera.reopen_backoff_s``, doubling, 30 s at most),
  and the call is tried again: a burst gets its frame if the camera comes back.
* After ``camera.max_reopens`` reopenings in a row that brought no frame, the guard gives up:
  it calls ``on_give_up`` once (the daemon wires it to the supervisor MCU's power-cycle
  request) and raises :class:`~edge_app.core.errors.CameraFailed`, so the capture stage fails
  visibly instead of waiting on a dead camera. Giving up is final for this guard: every later
  call raises at once, and only a new process (systemd's restart, the MCU's power cycle)
  tries the device again. Abandoned threads are thereby bounded to ``max_reopens + 1``.

The retry decisions are :class:`ReopenPolicy` (pure; no clock, no threads). The handoff waits
on the real clock: they bound a real thread doing real I/O, which a fake clock cannot make
finish sooner; the back-off waits use the injected clock.

:meth:`CameraGuard.metadata` bypasses the camera thread: a Camera's ``metadata`` never touches
the device (the Camera contract), so the day/night switch can read the light level even while a
capture hangs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NoReturn, TypeVar

from edge_app.core.backoff import Backoff
from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import CameraFailed, CameraTimeout, HardwareUnavailable
from edge_app.core.events import Frame
from edge_app.trap.hardware.camera import Camera

logger = logging.getLogger(__name__)

T = TypeVar("T")

REOPEN_BACKOFF_CAP_S = 30.0
CALL_MARGIN_S = 1.0
"""The guard waits this much longer than ``camera.capture_timeout_s``, which the Pi adapter
passes to picamera2 as its own ``wait=``: a frontend timeout then comes back as picamera2's
``TimeoutError`` (no thread abandoned), and the guard abandons only calls stuck below it."""


class ReopenPolicy:
    """When to reopen and when to give up, from the outcomes of calls alone.

    A *reopening* counts as failed when the camera does not start, or starts but the next
    call fails again. ``max_reopens`` failed reopenings in a row → give up. A call that
    succeeds resets the count.
    """

    def __init__(self, max_reopens: int, backoff: Backoff) -> None:
        if max_reopens < 1:
            raise ValueError("max_reopens must be ≥ 1")
        self.max_reopens = max_reopens
        self.backoff = backoff
        self.in_row = 0
        """Reopenings tried since the last call that succeeded."""
        self.gave_up = False

    def succeeded(self) -> None:
        """A call returned normally: the camera works."""
        self.in_row = 0

    def next_reopen(self) -> float | None:
        """A call (or a reopening) failed: seconds to wait before reopening, or None to give
        up. Giving up is final."""
        if self.gave_up or self.in_row >= self.max_reopens:
            self.gave_up = True
            return None
        self.in_row += 1
        return self.backoff.delay(self.in_row)


@dataclass(slots=True)
class GuardCounters:
    """What the guard has seen, for the stats message (``camera`` in the stats).

    Attributes:
        captures: frames delivered by :meth:`CameraGuard.capture`.
        timeouts: calls abandoned because they did not return in time.
        failures: calls that raised (the camera reported an error).
        reopens: reopenings that started the camera again.
        reopen_failures: reopenings whose start failed or timed out.
        abandoned_threads: camera threads left stuck in the driver.
        gave_up: 1 once the guard has given the camera up.
    """

    captures: int = 0
    timeouts: int = 0
    failures: int = 0
    reopens: int = 0
    reopen_failures: int = 0
    abandoned_threads: int = 0
    gave_up: int = 0


class _Job:
    """One call handed to the camera thread; the result or the exception comes back."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller, raised there
            self.error = e
        finally:
            self.done.set()


class _Worker:
    """A camera thread: runs handed-over jobs one at a time until stopped or abandoned."""

    def __init__(self, number: int) -> None:
        self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self.abandoned = False
        self.thread = threading.Thread(target=self._run, name=f"camera-io-{number}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            job.run()
            if self.abandoned:  # the call came back after all, too late: nobody waits
                logger.warning("an abandoned camera call returned after all")
                return

    def stop(self, timeout_s: float) -> None:
        try:
            self.jobs.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self.thread.join(timeout_s)


class CameraGuard:
    """A :class:`Camera` whose calls are bounded and whose hangs end in a reopening.

    See the module docstring. Attributes it does not define are the inner camera's (a replay
    camera's ``files``, a simulated camera's ``advance``), so the guard stands in wherever the
    bare camera did, :class:`~edge_app.trap.hardware.camera.SceneCamera` checks included.

    Args:
        inner: the camera to guard.
        clock: the back-off waits.
        capture_timeout_s: bound on ``capture`` and ``recent``.
        open_timeout_s: bound on ``start`` and ``close``.
        max_reopens: failed reopenings in a row before giving up.
        reopen_backoff_s: wait before the first reopening (doubles, capped at 30 s).
        on_give_up: called once, with the reason, when the guard gives up (exceptions in it
            are logged, not raised).
    """

    def __init__(self, inner: Camera, clock: Clock, *, capture_timeout_s: float = 5.0,
                 open_timeout_s: float = 15.0, max_reopens: int = 3,
                 reopen_backoff_s: float = 1.0,
                 on_give_up: Callable[[str], None] | None = None) -> None:
        self._inner = inner
        self._clock = clock
        self.capture_timeout_s = capture_timeout_s
        self.open_timeout_s = open_timeout_s
        self.on_give_up = on_give_up
        self.policy = ReopenPolicy(max_reopens, Backoff(reopen_backoff_s,
                                                        max(REOPEN_BACKOFF_CAP_S,
                                                            reopen_backoff_s), "none"))
        self._counters = GuardCounters()
        self._call_lock = threading.Lock()  # one call at a time; held across a recovery
        self._count_lock = threading.Lock()
        self._closing = threading.Event()  # interrupts back-off waits
        self._worker: _Worker | None = None
        self._workers = 0
        self._open = False  # start was asked for and close not yet

    @classmethod
    def from_config(cls, inner: Camera, cfg: CameraConfig, clock: Clock,
                    on_give_up: Callable[[str], None] | None = None) -> CameraGuard:
        """A guard with the ``[camera]`` section's bounds."""
        return cls(inner, clock, capture_timeout_s=cfg.capture_timeout_s + CALL_MARGIN_S,
                   open_timeout_s=cfg.open_timeout_s, max_reopens=cfg.max_reopens,
                   reopen_backoff_s=cfg.reopen_backoff_s, on_give_up=on_give_up)

    @property
    def inner(self) -> Camera:
        """The guarded camera."""
        return self._inner

    def counters(self) -> dict[str, int]:
        """A snapshot of :class:`GuardCounters` (for the stats message)."""
        with self._count_lock:
            return asdict(self._counters)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    # -- the Camera interface ------------------------------------------------------------

    def start(self) -> None:
        """Open the camera (bounded by ``open_timeout_s``). A camera that will not start is
        an error at once, as before: this is start-up, not a camera that died in service.

        Raises:
            CameraFailed: the guard has given up.
            CameraTimeout: opening did not return in time.
            HardwareUnavailable: the camera could not be opened.
        """
        self._closing.clear()
        with self._call_lock:
            self._refuse_if_given_up()
            self._open = True
            self._call(self._inner.start, self.open_timeout_s, "start")

    def capture(self, index: int) -> Frame:
        """One frame, reopening the camera if it hangs or fails (see the module docstring).

        Raises:
            CameraFailed: the camera could not be brought back (or the guard is closing).
        """
        frame = self._guarded(lambda: self._inner.capture(index), "capture")
        with self._count_lock:
            self._counters.captures += 1
        return frame

    def recent(self, n: int) -> list[Frame]:
        """The ring frames, with the same bound and recovery as :meth:`capture` (after a
        reopening the ring starts empty, so fewer frames may come back)."""
        return self._guarded(lambda: self._inner.recent(n), "recent")

    def metadata(self) -> Mapping[str, float]:
        """The inner camera's latest metadata, straight (never touches the device)."""
        try:
            return self._inner.metadata()
        except Exception as e:  # noqa: BLE001 - a metadata bug must not stop a capture
            logger.warning("camera metadata unavailable: %s", e)
            return {}

    def close(self) -> None:
        """Close the camera (bounded) and stop the camera thread. Idempotent."""
        self._closing.set()  # a recovery in progress stops at its next wait
        with self._call_lock:
            if self._open:
                self._open = False
                try:
                    self._call(self._inner.close, self.open_timeout_s, "close")
                except (CameraTimeout, HardwareUnavailable, OSError, RuntimeError) as e:
                    logger.error("camera close failed: %s", e)
            worker = self._worker
            self._worker = None
            if worker is not None:
                worker.stop(self.open_timeout_s)

    # -- machinery -------------------------------------------------------------------------

    def _guarded(self, fn: Callable[[], T], what: str) -> T:
        with self._call_lock:
            while True:
                self._refuse_if_given_up()
                try:
                    result = self._call(fn, self.capture_timeout_s, what)
                except CameraTimeout as e:
                    self._count("timeouts")
                    logger.error("camera %s timed out (%s): reopening the camera", what, e)
                except Exception as e:  # noqa: BLE001 - any camera failure: device in doubt
                    self._count("failures")
                    logger.error("camera %s failed (%s): reopening the camera", what, e)
                else:
                    self.policy.succeeded()
                    return result
                self._recover(what)

    def _recover(self, what: str) -> None:
        """Reopen until the camera starts again, or give up (raises CameraFailed)."""
        while True:
            delay = self.policy.next_reopen()
            if delay is None:
                self._give_up(what)
            if delay and self._clock.wait(self._closing, delay):
                raise CameraFailed("camera closing during a reopening", self.policy.in_row)
            if self._closing.is_set():
                raise CameraFailed("camera closing during a reopening", self.policy.in_row)
            attempt = self.policy.in_row
            try:
                self._call(self._inner.close, self.open_timeout_s, "close")
            except Exception as e:  # noqa: BLE001 - a dead camera often fails to close
                logger.warning("closing the failed camera: %s", e)
            try:
                self._call(self._inner.start, self.open_timeout_s, "start")
            except Exception as e:  # noqa: BLE001 - counted as a failed reopening
                self._count("reopen_failures")
                logger.error("camera reopening %d of %d failed: %s", attempt,
                             self.policy.max_reopens, e)
                continue
            self._count("reopens")
            logger.warning("camera reopened (reopening %d of %d in a row)", attempt,
                           self.policy.max_reopens)
            return

    def _give_up(self, what: str) -> NoReturn:
        reason = (f"camera gave no frame after {self.policy.max_reopens} reopenings in a row "
                  f"(last call: {what})")
        with self._count_lock:
            first = not self._counters.gave_up
            self._counters.gave_up = 1
        if first:
            logger.critical("%s: giving the camera up", reason)
            if self.on_give_up is not None:
                try:
                    self.on_give_up(reason)
                except Exception:
                    logger.exception("the give-up callback failed")
        raise CameraFailed(reason, self.policy.max_reopens)

    def _refuse_if_given_up(self) -> None:
        if self.policy.gave_up:
            raise CameraFailed("the camera was given up earlier; waiting for a restart or a "
                               "power cycle", self.policy.max_reopens)

    def _call(self, fn: Callable[[], T], timeout_s: float, what: str) -> T:
        """Run ``fn`` on the camera thread; wait at most ``timeout_s`` for it."""
        worker = self._worker
        if worker is None:
            self._workers += 1
            worker = self._worker = _Worker(self._workers)
        job = _Job(fn)
        worker.jobs.put(job)  # the worker is idle: calls are serialised by _call_lock
        if not job.done.wait(timeout_s):  # real time: see the module docstring
            worker.abandoned = True
            self._worker = None
            self._count("abandoned_threads")
            raise CameraTimeout(f"camera {what} did not return within {timeout_s:g} s")
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def _count(self, name: str) -> None:
        with self._count_lock:
            setattr(self._counters, name, getattr(self._counters, name) + 1)
