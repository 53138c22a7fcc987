"""Stage health: which stages have shown progress within their deadline.

Why beats and not "is the thread alive": a thread stuck forever inside ``capture_array`` (a
camera frontend that never returns) or on a lock is alive and useless. A stage proves it works
by beating — when it finishes an item, and every few seconds while it waits for work — so a
stage that has not beaten within its deadline is stuck, whatever its thread looks like. The
systemd watchdog is then fed only while every watched stage is within its deadline
(:mod:`edge_app.trap.watchdog`), and a stuck trap gets restarted instead of pretending.

Pure and clock-driven like ``TriggerFilter``: tests move a fake clock and read :meth:`late`.
Beats come from many threads; one lock keeps the table consistent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_app.core.clock import Clock

#: How often a stage waiting for work beats anyway (or a third of its deadline if shorter):
#: rare enough to cost nothing on a Pi Zero (one wake-up per stage per 5 s).
IDLE_BEAT_S = 5.0


@dataclass(slots=True)
class _Entry:
    deadline_s: float
    last: float
    beats: int = 0


class StageHealth:
    """The last beat of each watched stage, and which ones are late."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stages: dict[str, _Entry] = {}

    def watch(self, name: str, deadline_s: float) -> Heart:
        """Start watching ``name``: it must beat at least every ``deadline_s`` from now on.

        The clock starts at registration, so a stage that never starts is late too.
        """
        if not deadline_s > 0:
            raise ValueError(f"deadline of {name} must be > 0, not {deadline_s!r}")
        with self._lock:
            self._stages[name] = _Entry(deadline_s, self._clock.monotonic())
        return self.heart(name)

    def heart(self, name: str, gate: Callable[[], bool] | None = None) -> Heart:
        """The beat of ``name``, with how often it should beat while idle.

        With ``gate`` a beat counts only while ``gate()`` is true: a capture stage waiting for
        triggers with a camera it has given up on is idle, not healthy.
        """
        with self._lock:
            entry = self._stages.get(name)
        every = IDLE_BEAT_S if entry is None else min(IDLE_BEAT_S, entry.deadline_s / 3)
        return Heart(self, name, every, gate)

    def beat(self, name: str) -> None:
        """``name`` made progress now; unknown names are ignored (an unwatched stage)."""
        now = self._clock.monotonic()
        with self._lock:
            entry = self._stages.get(name)
            if entry is not None:
                entry.last = now
                entry.beats += 1

    def late(self) -> list[tuple[str, float]]:
        """The stages past their deadline with the seconds since their last beat, worst first."""
        now = self._clock.monotonic()
        with self._lock:
            out = [(name, now - e.last) for name, e in self._stages.items()
                   if now - e.last > e.deadline_s]
        return sorted(out, key=lambda item: -item[1])

    def healthy(self) -> bool:
        return not self.late()

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """Per stage: deadline, seconds since the last beat, beats — for the stats message."""
        now = self._clock.monotonic()
        with self._lock:
            return {name: {"deadline_s": e.deadline_s, "beat_age_s": round(now - e.last, 1),
                           "beats": e.beats}
                    for name, e in self._stages.items()}


class Heart:
    """One stage's beat, handed to the stage so it cannot beat for another one."""

    __slots__ = ("_gate", "_health", "every_s", "name")

    def __init__(self, health: StageHealth, name: str, every_s: float = IDLE_BEAT_S,
                 gate: Callable[[], bool] | None = None) -> None:
        self._health = health
        self.name = name
        self.every_s = every_s  # how often to beat while waiting for work
        self._gate = gate

    def __call__(self) -> None:
        if self._gate is None or self._gate():
            self._health.beat(self.name)
