"""Which events to show and which to confirm: per-unit dedupe, pure and broker-free.

Delivery from a trap is at-least-once, so the station sees most events more than once and must
show each once. What identifies an event is **(unit, id)**, the unit being the one the broker
authenticated (the topic). With the id alone, unit A publishing ``B-2-1`` … ``B-2-30`` on its
own topic would occupy B's ids: B's real alerts, arriving later, would be taken for duplicates —
never shown, yet confirmed to B, which then forgets them. (The door in
:mod:`edge_app.station.doors` already refuses such ids; keying per unit means a unit can only
ever collide with itself, whatever a door lets through.)

Memory is bounded per unit, so one unit flooding new ids cannot push another unit's ids out
(which would show that unit's next resend twice), and bounded in units.

A LoRa alert carries only the low 16 bits of ``seq``; an alert first shown from LoRa is not
shown again when the trap's MQTT event (same unit, same low bits) arrives — it is still stored
and confirmed — and the other way round (:meth:`EventBook.lora_alert`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edge_app.station.store import EventKey, StoredEvent

DEDUPE_SIZE = 10_000
"""Recent ids remembered per unit (without a store; with one, the store remembers all)."""
MAX_UNITS = 4096
"""Units remembered; the least recently heard one is forgotten first."""

K = TypeVar("K")
V = TypeVar("V")


class UnitMemory(Generic[K, V]):
    """Recent keys per unit, oldest first out, bounded per unit and in the number of units.

    Args:
        per_unit: keys kept per unit.
        max_units: units kept; adding to a new unit beyond it forgets the unit heard longest ago.
    """

    def __init__(self, per_unit: int, max_units: int = MAX_UNITS) -> None:
        self._per_unit = max(1, per_unit)
        self._max_units = max(1, max_units)
        self._units: OrderedDict[str, OrderedDict[K, V]] = OrderedDict()

    def get(self, unit: str, key: K) -> V | None:
        keys = self._units.get(unit)
        return None if keys is None else keys.get(key)

    def has(self, unit: str, key: K) -> bool:
        keys = self._units.get(unit)
        return keys is not None and key in keys

    def put(self, unit: str, key: K, value: V) -> None:
        keys = self._units.get(unit)
        if keys is None:
            keys = self._units[unit] = OrderedDict()
            while len(self._units) > self._max_units:
                self._units.popitem(last=False)
        else:
            self._units.move_to_end(unit)
        keys[key] = value
        while len(keys) > self._per_unit:
            keys.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(k) for k in self._units.values())


def short_key(event: dict[str, Any]) -> tuple[str, int] | None:
    """(unit, low 16 bits of seq): what a LoRa alert and the trap's MQTT event share."""
    unit, seq = event.get("unit"), event.get("seq")
    if not isinstance(unit, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return unit, seq & 0xFFFF


@dataclass
class Decision:
    """What to do with one batch of stored events.

    Attributes:
        deliver: events to hand to the alert hook, in arrival order (each (unit, id) once).
        receipts: unit → event ids to confirm to that unit (every stored event, duplicates
            included: the trap may have missed the previous receipt).
        duplicates: events already seen (or already shown from LoRa).
        ignored: new events that are not alerts, when those are not wanted.
    """

    deliver: list[StoredEvent] = field(default_factory=list)
    receipts: dict[str, list[str]] = field(default_factory=dict)
    duplicates: int = 0
    ignored: int = 0


class EventBook:
    """The station's memory of events and its decisions (see the module docstring).

    Args:
        include_keep: deliver events whose outcome is not ``alert`` too.
        dedupe_size: ids remembered per unit.
        linked: LoRa sources are configured: dedupe MQTT events against LoRa alerts.
        max_units: units remembered.
    """

    def __init__(self, *, include_keep: bool = False, dedupe_size: int = DEDUPE_SIZE,
                 linked: bool = False, max_units: int = MAX_UNITS) -> None:
        self.include_keep = include_keep
        self.linked = linked
        self._seen: UnitMemory[str, None] = UnitMemory(dedupe_size, max_units)
        self._short: UnitMemory[int, bool] = UnitMemory(dedupe_size, max_units)  # → from LoRa

    def fresh(self, events: Iterable[StoredEvent]) -> set[EventKey]:
        """The keys of ``events`` not seen before (the memory's answer when there is no store)."""
        return {ev.key for ev in events if not self._seen.has(ev.unit, ev.id)}

    def decide(self, events: Sequence[StoredEvent], new: set[EventKey]) -> Decision:
        """Decide a stored batch.

        Args:
            events: the batch, in arrival order, every one stored under its unit.
            new: the keys that were new (the store's answer, or :meth:`fresh`'s).
        """
        out = Decision()
        todo = set(new)
        for ev in events:
            ids = out.receipts.setdefault(ev.unit, [])
            if ev.id not in ids:
                ids.append(ev.id)
            if ev.key not in todo:
                out.duplicates += 1
                continue
            todo.discard(ev.key)  # a batch may hold the same event twice
            self._seen.put(ev.unit, ev.id, None)
            if not self.include_keep and ev.outcome != "alert":
                out.ignored += 1
                continue
            if self._shown_by_lora(ev.event):
                out.duplicates += 1  # already shown from LoRa; stored all the same
                continue
            out.deliver.append(ev)
        return out

    def lora_alert(self, event: dict[str, Any]) -> bool:
        """A LoRa alert arrived: True to show it, False if its alert was already shown."""
        key = short_key(event)
        if key is None:
            return True
        if self._short.has(*key):
            return False
        self._short.put(*key, True)
        return True

    def _shown_by_lora(self, event: dict[str, Any]) -> bool:
        """True if LoRa already showed this event; else remember it as shown from MQTT."""
        key = short_key(event) if self.linked else None
        if key is None:
            return False
        if self._short.get(*key):
            return True
        self._short.put(*key, False)  # shown from MQTT: a later LoRa copy is a duplicate
        return False
