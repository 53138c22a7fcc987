"""From the ingest thread to every open Alerts page: a fan-out that never blocks ingest.

The receiver's worker thread calls :meth:`EventBus.publish` after it has stored an event. That
thread must never wait for a browser: a phone on a poor link reading slowly would otherwise
hold up receipts to the traps. So ``publish`` only hands the notice to the web server's event
loop (``call_soon_threadsafe``), and the loop puts it into each client's bounded queue; a client
whose queue is full is dropped (its stream ends, the browser reconnects and reloads the list)
rather than buffered without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)

QUEUE_SIZE = 64
"""Notices a client may fall behind by before it is dropped."""


@dataclass(frozen=True, slots=True)
class Notice:
    """An event was stored or changed (new, another link, its photo arrived)."""

    unit: str
    event_id: str
    link: str
    new: bool


class Subscription:
    """One client's queue; ``dropped`` is set when it fell too far behind."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=size)
        self.dropped = asyncio.Event()


class EventBus:
    """Thread-safe publish, per-client bounded queues on one asyncio loop.

    Args:
        queue_size: notices a client may fall behind by.
    """

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: set[Subscription] = set()
        self.published = 0
        self.dropped_clients = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` from now on (the web server's, at start-up)."""
        with self._lock:
            self._loop = loop

    def unbind(self) -> None:
        with self._lock:
            self._loop = None

    def publish(self, unit: str, event_id: str, link: str, new: bool) -> None:
        """Announce a stored event; callable from any thread, returns at once.

        Before the web server runs (or after it stopped) the notice is dropped: a page opened
        later reads the store anyway.
        """
        notice = Notice(unit, event_id, link, new)
        with self._lock:
            loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, notice)
        except RuntimeError:  # the loop closed between the check and the call
            return

    def publish_media(self, unit: str, media_id: str) -> None:
        """A media file of an event arrived (``<event id>-thumb|image``): its card changes."""
        event_id, sep, _kind = media_id.rpartition("-")
        if sep and event_id:
            self.publish(unit, event_id, "media", False)

    def close(self) -> None:
        """End every open stream (the server is stopping: an open stream would hold it up).

        Callable from any thread, like :meth:`publish`.
        """
        with self._lock:
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._close_all)
            except RuntimeError:
                return

    def _close_all(self) -> None:
        for sub in list(self._subs):
            self._subs.discard(sub)
            sub.dropped.set()
            # wake a stream waiting for its next notice; a full queue is not waiting, and
            # sees ``dropped`` after its next notice
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(Notice("", "", "close", False))

    def subscribe(self) -> Subscription:
        """A new client (call on the bound loop)."""
        sub = Subscription(self._queue_size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def clients(self) -> int:
        return len(self._subs)

    def _deliver(self, notice: Notice) -> None:
        """On the loop: into every client's queue; a full queue drops its client."""
        self.published += 1
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(notice)
            except asyncio.QueueFull:
                self._subs.discard(sub)
                sub.dropped.set()
                self.dropped_clients += 1
                logger.warning("web: a live page fell %d notices behind; dropped",
                               self._queue_size)
