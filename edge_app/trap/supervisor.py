"""Named worker threads under one supervisor: ordered start, reverse stop, restart budget.

Why threads and not processes: a Pi Zero 2 W has 512 MB; one interpreter holding the models
once is the budget. Why a restart budget: a stage that fails once (a bad frame, a flaky card)
should come back; one that fails over and over is a bug or broken hardware, and the right move
is to exit non-zero so systemd restarts the whole process (``Restart=on-failure``) and the
failure is visible in the journal and the stats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edge_app.core.clock import Clock
from edge_app.trap.health import Heart, StageHealth

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Wake:
    """Sentinel pushed into a stage queue to unblock a ``get`` at stop."""


WAKE = _Wake()


class StageQueue(Generic[T]):
    """A bounded queue between two stages, with the full-queue policy written in code.

    ``put_drop_oldest`` never blocks (for producers that must not stall, e.g. the PIR
    callback): when full, the oldest unprocessed item is dropped and counted. ``put_wait``
    blocks (for items that must not be lost, e.g. decided events) until there is room or the
    producer is told to stop.
    """

    def __init__(self, name: str, maxsize: int, drain_on_stop: bool = False) -> None:
        self.name = name
        self._q: queue.Queue[T | _Wake] = queue.Queue(maxsize)
        self.dropped = 0
        # For items that must not be lost at a clean stop (decided events): the consumer
        # still gets what is queued after its stop event is set, then None.
        self._drain_on_stop = drain_on_stop

    def put_drop_oldest(self, item: T) -> bool:
        """Enqueue without blocking; returns False if an older item had to be dropped."""
        dropped = False
        while True:
            try:
                self._q.put_nowait(item)
                return not dropped
            except queue.Full:
                try:
                    old = self._q.get_nowait()
                except queue.Empty:
                    continue
                if not isinstance(old, _Wake):
                    self.dropped += 1
                    dropped = True
                    logger.warning("queue %s full: dropped the oldest item", self.name)

    def put_wait(self, item: T, stop: threading.Event) -> bool:
        """Block until there is room; False if ``stop`` was set first (item not queued).

        If there is room the item is queued even when ``stop`` is already set: a producer
        stopping with one finished item must not drop it while the consumer still runs.
        """
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(item)
            return True
        while not stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def get(self, stop: threading.Event, beat: Heart | None = None) -> T | None:
        """Block until an item arrives; None once ``stop`` is set.

        With ``beat`` the consumer's heart beats every ``beat.every_s`` while it waits (a
        waiting stage is a healthy one); without it the wait has no timeout at all.
        """
        while True:
            if beat is not None:
                beat()
            if stop.is_set():
                return self._drain() if self._drain_on_stop else None
            try:
                item = self._q.get(timeout=beat.every_s if beat is not None else None)
            except queue.Empty:
                continue
            if isinstance(item, _Wake):
                continue
            return item

    def _drain(self) -> T | None:
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(item, _Wake):
                return item

    def wake(self) -> None:
        """Unblock a consumer waiting in :meth:`get` so it can see its stop event."""
        with contextlib.suppress(queue.Full):  # full: the consumer is not blocked in get()
            self._q.put_nowait(WAKE)

    def qsize(self) -> int:
        return self._q.qsize()


@dataclass
class Worker:
    """One supervised stage.

    Attributes:
        name: thread name (shows in logs and ``py-spy dump``).
        target: the stage loop; must return when its stop event is set.
        unblock: called at stop to wake the loop if it is blocked (e.g. queue wake).
    """

    name: str
    target: Callable[[threading.Event], None]
    unblock: Callable[[], None] | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    restarts: deque[float] = field(default_factory=deque)
    crashes: int = 0


class Supervisor:
    """Starts workers in order, restarts crashed ones within a budget, stops them in reverse.

    Args:
        clock: time source for the restart window and backoff.
        max_restarts: restarts allowed per worker within ``window_s`` before giving up.
        window_s: the restart budget's window.
        restart_delay_s: pause before a restart, so a tight crash loop cannot spin a core.
    """

    def __init__(
        self,
        clock: Clock,
        max_restarts: int = 5,
        window_s: float = 60.0,
        restart_delay_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._max = max_restarts
        self._window = window_s
        self._delay = restart_delay_s
        self._workers: list[Worker] = []
        self.health = StageHealth(clock)
        self.done = threading.Event()
        self.failed: str | None = None

    def add(
        self,
        name: str,
        target: Callable[[threading.Event], None],
        unblock: Callable[[], None] | None = None,
        deadline_s: float | None = None,
    ) -> None:
        """Register a stage; stages start in the order added and stop in reverse.

        With ``deadline_s`` the stage is watched: it must beat through :meth:`heart` at least
        that often, or the watchdog stops pinging (:mod:`edge_app.trap.watchdog`).
        """
        self._workers.append(Worker(name, target, unblock))
        if deadline_s is not None:
            self.health.watch(name, deadline_s)

    def heart(self, name: str) -> Heart:
        """The beat of stage ``name`` (a no-op for an unwatched stage)."""
        return self.health.heart(name)

    def crash_counts(self) -> dict[str, int]:
        """Crashes per stage since start (the stats message)."""
        return {w.name: w.crashes for w in self._workers}

    @property
    def workers(self) -> list[Worker]:
        return list(self._workers)

    def start(self) -> None:
        for w in self._workers:
            w.thread = threading.Thread(target=self._run, args=(w,), name=w.name, daemon=True)
            w.thread.start()
            logger.info("started %s", w.name)

    def _run(self, w: Worker) -> None:
        while not w.stop_event.is_set():
            try:
                w.target(w.stop_event)
                return
            except Exception:  # the one broad catch: a stage must not take the trap down
                w.crashes += 1
                logger.exception("stage %s crashed", w.name)
            now = self._clock.monotonic()
            w.restarts.append(now)
            while w.restarts and now - w.restarts[0] > self._window:
                w.restarts.popleft()
            if len(w.restarts) > self._max:
                logger.critical(
                    "stage %s crashed %d times in %.0f s: giving up", w.name, len(w.restarts),
                    self._window)
                self.failed = w.name
                self.done.set()
                return
            if self._clock.wait(w.stop_event, self._delay):
                return
            logger.warning("restarting %s", w.name)

    def request_stop(self) -> None:
        """Ask for a stop (signal handlers call this; it only sets an event)."""
        self.done.set()

    def stop(self, timeout_s: float = 5.0) -> list[str]:
        """Stop workers in reverse order within ``timeout_s`` in total.

        Returns:
            Names of workers that did not finish in time (they are daemon threads and die
            with the process; their state is durable by design, so nothing is lost).
        """
        deadline = self._clock.monotonic() + timeout_s
        late: list[str] = []
        for w in reversed(self._workers):
            w.stop_event.set()
            if w.unblock is not None:
                w.unblock()
            if w.thread is not None:
                w.thread.join(max(0.0, deadline - self._clock.monotonic()))
                if w.thread.is_alive():
                    late.append(w.name)
                    logger.error("stage %s did not stop in time", w.name)
        self.done.set()
        return late


def sd_notify(state: str) -> bool:
    """Tell systemd our state (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``).

    The protocol is one datagram on ``$NOTIFY_SOCKET``; implementing it here avoids a
    dependency for ten lines. Returns False when not run under systemd.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(state.encode(), addr)
        except OSError:
            logger.warning("sd_notify to %s failed", addr)
            return False
    return True
