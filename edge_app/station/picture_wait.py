"""Hold an alert's phone notification until its picture is on the station, for a few seconds.

An MQTT event announces its thumbnail, which follows as chunks a moment later (a second on a
good link, tens of seconds on a poor one). Notifying at once would send a text-only message
and then a second one with the picture — two buzzes per leopard. So an alert that announces a
thumbnail waits here until the thumbnail is stored or ``wait_s`` has passed, whichever comes
first; an alert with nothing to wait for (a LoRa uplink, an event without media) goes at once.
A picture that arrives after the wait is still sent, as the notifier's follow-up.

Pure and clock-driven (the caller passes ``now``), like the project's other policies; the
station runs it on the receiver's thread plus one small timer thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WAIT_S = 20.0
MAX_PENDING = 1000
"""A burst of alerts from many units at once is still bounded: the oldest goes without picture."""

Key = tuple[str, str]
"""(unit, event id)."""


@dataclass(frozen=True, slots=True)
class Release:
    """An alert to notify now, with its picture if it came."""

    event: dict[str, Any]
    picture: Path | None


def announces_thumb(event: dict[str, Any]) -> bool:
    """True if the event says a thumbnail follows (and it is not a LoRa alert, which has none)."""
    if event.get("source") == "lorawan":
        return False
    media = event.get("media")
    return isinstance(media, list) and any(
        isinstance(m, dict) and m.get("kind") == "thumb" for m in media)


class PictureWait:
    """See the module docstring.

    Args:
        wait_s: the longest an alert waits for its thumbnail.
        max_pending: alerts waiting at most (the oldest is released first).
    """

    def __init__(self, wait_s: float = WAIT_S, max_pending: int = MAX_PENDING) -> None:
        self.wait_s = wait_s
        self.max_pending = max_pending
        self._pending: OrderedDict[Key, tuple[dict[str, Any], float]] = OrderedDict()

    def alert(self, event: dict[str, Any], now: float) -> list[Release]:
        """A new alert: what to notify now (it, or nothing while it waits; plus an overflow)."""
        if not announces_thumb(event):
            return [Release(event, None)]
        key = (str(event.get("unit")), str(event.get("id")))
        self._pending[key] = (event, now + self.wait_s)
        out: list[Release] = []
        while len(self._pending) > self.max_pending:
            _k, (old, _due) = self._pending.popitem(last=False)
            out.append(Release(old, None))
        return out

    def picture(self, unit: str, event_id: str, path: Path) -> Release | None:
        """A thumbnail was stored: the waiting alert with it, or None if none waits."""
        held = self._pending.pop((unit, event_id), None)
        return None if held is None else Release(held[0], path)

    def due(self, now: float) -> list[Release]:
        """Alerts whose wait is over: they go without their picture."""
        out = [Release(ev, None) for k, (ev, due) in list(self._pending.items()) if due <= now]
        for r in out:
            self._pending.pop((str(r.event.get("unit")), str(r.event.get("id"))), None)
        return out

    def next_due(self) -> float | None:
        return min((due for _ev, due in self._pending.values()), default=None)

    def __len__(self) -> int:
        return len(self._pending)
