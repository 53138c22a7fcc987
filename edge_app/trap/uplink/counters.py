"""Counters of a link: written by the link's own thread, read by others (stats, demo, tests).

One small class instead of a lock and three helper methods in every link: a dataclass of
numbers behind a lock, bumped by name, copied whole for a reader.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Counters(Generic[T]):
    """A dataclass instance of counters, thread-safe.

    Args:
        initial: the counters at zero (a dataclass instance; this object owns it).
    """

    def __init__(self, initial: T) -> None:
        self._values = initial
        self._lock = threading.Lock()

    def add(self, **deltas: Any) -> None:
        """Add to counters by name (``add(sent=1, failed=2)``)."""
        with self._lock:
            for name, n in deltas.items():
                setattr(self._values, name, getattr(self._values, name) + n)

    def set(self, **values: Any) -> None:
        """Set fields by name (a state, a flag)."""
        with self._lock:
            for name, v in values.items():
                setattr(self._values, name, v)

    def update(self, fn: Callable[[T], None]) -> None:
        """Change several fields under the lock at once."""
        with self._lock:
            fn(self._values)

    def read(self, fn: Callable[[T], R]) -> R:
        """One value, read under the lock."""
        with self._lock:
            return fn(self._values)

    def snapshot(self) -> T:
        """A deep copy, safe to keep and to change."""
        with self._lock:
            return copy.deepcopy(self._values)
