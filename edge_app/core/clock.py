"""Time as a dependency: every stage that waits or measures takes a :class:`Clock`.

Tests use :class:`FakeClock` so that debounce, hold-off, bursts and backoff are exact and no
test sleeps.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for intervals, wall time for timestamps, and waiting."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (may jump when the clock is synced)."""
        ...

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        """Block until ``event`` is set or ``timeout_s`` elapses; True if it was set."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        return event.wait(timeout_s)


class FakeClock:
    """A clock that only moves when told to; ``wait`` returns at once.

    ``wait`` advances the clock by the timeout when the event is not set, which is what a real
    wait would have done, so loops driven by a fake clock make progress without sleeping.
    """

    def __init__(self, start_mono: float = 1000.0, start_wall: float = 1_790_000_000.0) -> None:
        self._mono = start_mono
        self._wall = start_wall
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def wall(self) -> float:
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        with self._lock:
            self._mono += seconds
            self._wall += seconds

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        if event.is_set():
            return True
        if timeout_s is not None:
            self.advance(timeout_s)
        return event.is_set()


def rfc3339(wall: float) -> str:
    """Format a Unix time as RFC 3339 with an explicit UTC offset and milliseconds."""
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")
