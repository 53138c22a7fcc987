"""Who hears about an alert, and when: pure, single-threaded, time only from arguments.

Like the trap's ``TriggerFilter``, the policy does no I/O and reads no clock, so quiet hours
across midnight, rate windows and digests are exact in tests and replayable from a log. The
sender (:mod:`edge_app.station.notify.sender`) owns the threads and the lock.

Decisions, per event and per target (a target hears about an event at most once, however many
rules match):

* The rules that match the event (label *or* species, unit glob or group, ``min_score``) and
  name the target are taken together. If any is *active* now (not in its quiet hours, or
  ``urgent``), the event may go now; if all are quiet, it is held until the earliest of their
  quiet periods ends.
* An active event goes now if one of those rules allows it: a rule without ``rate_limit``
  always does; one with a limit does when the target received fewer than ``count`` messages in
  the last ``per_s`` seconds and nothing is already held for the target by a rate limit (new
  alerts never overtake held ones). Otherwise it is held until the window frees up.
* :meth:`NotifyPolicy.due` hands out, per target, everything whose release time has come as
  ONE message: a digest, or the ordinary alert when only one is held. Each message sent
  (alert, follow-up, digest) counts in the target's window, but a due digest always goes:
  holding it again would hold it forever.

Duplicates. Delivery is at-least-once and an alert often arrives twice: over LoRa (11 bytes,
no picture) within seconds, then over MQTT with its picture. An event is known by
``(unit, id)`` and, when it has a ``seq``, by ``(unit, seq & 0xFFFF)`` too — the LoRa copy
carries only the low 16 bits, and its full id is reconstructed by the station, so after a
station restart the ids can differ while the low bits still agree. The second copy:

* sends nothing if the first had a picture or the second has none (a plain duplicate);
* otherwise sends the picture as ONE **follow-up** to each target that already got the text
  alert (at most one follow-up per event and target, not delayed by quiet hours or the rate
  limit: it completes a message the ranger already has; it counts in the window all the same),
  and swaps the picture into any copy still held, so the digest or late alert carries it;
* is evaluated afresh if the first copy notified nobody (e.g. its LoRa score, quantised, was
  just under a rule's ``min_score``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal

from edge_app.station.dedupe import UnitMemory
from edge_app.station.notify.config import NotifyConfig, Rule

Kind = Literal["alert", "followup", "digest"]
REMEMBERED_PER_UNIT = 2000
"""Events remembered per unit for dedupe: far more than a unit sends in a LoRa-to-MQTT delay."""
MAX_HELD_PER_TARGET = 1000
"""Held alerts kept per target; beyond it the oldest is dropped (and counted)."""


@dataclass(frozen=True)
class Alert:
    """The facts of one event that a message needs (parsed by :meth:`from_event`).

    Attributes:
        unit: unit id. id: event id. label: empty/animal/person/vehicle. species: or None.
        score: 0..1. ts: capture time, Unix seconds. source: ``lorawan`` or ``mqtt``.
        seq: the event's sequence number when known (for the LoRa/MQTT match).
        site, lat, lon: where the unit is, when the station knows.
        picture: a stored image or thumbnail to attach, or None.
    """

    unit: str
    id: str
    label: str
    species: str | None
    score: float
    ts: float
    source: str
    seq: int | None = None
    site: str | None = None
    lat: float | None = None
    lon: float | None = None
    picture: str | None = None

    @property
    def what(self) -> str:
        """The most specific name: the species when known, else the label."""
        return self.species or self.label

    @classmethod
    def from_event(cls, event: dict[str, Any], now: float, *, site: str | None = None,
                   lat: float | None = None, lon: float | None = None,
                   picture: str | None = None) -> Alert:
        """Read an event dict (MQTT or LoRa shape) as delivered by the station's ingest.

        Args:
            now: stands in for an unreadable ``ts``, or one from a unit whose clock was not
                synced (``time_synced: false``: its ``ts`` may be in 1970), as the arrival
                time is the next best.

        Raises:
            ValueError: no unit or id, or a non-finite or non-numeric score.
        """
        unit, eid = event.get("unit"), event.get("id")
        if not isinstance(unit, str) or not unit or not isinstance(eid, str) or not eid:
            raise ValueError("event without unit or id")
        score = event.get("score", 0.0)
        if score is None:
            score = 0.0
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(
                score):
            raise ValueError(f"event {eid}: score must be a finite number")
        label = event.get("label")
        species = event.get("species")
        seq = event.get("seq")
        return cls(
            unit=unit, id=eid,
            label=label if isinstance(label, str) and label else "animal",
            species=species if isinstance(species, str) and species else None,
            score=float(score),
            ts=now if event.get("time_synced") is False else _timestamp(event.get("ts"), now),
            source="lorawan" if event.get("source") == "lorawan" else "mqtt",
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            site=site, lat=_finite(lat), lon=_finite(lon), picture=picture)


@dataclass(frozen=True)
class Outgoing:
    """One message for one target.

    Attributes:
        kind: ``alert`` (one event), ``followup`` (the picture of an alert already sent), or
            ``digest`` (several held events in one message).
        reason: why it was held (``quiet hours``, ``rate limit``, or both joined by ``and``),
            or "" when it was not.
    """

    target: str
    kind: Kind
    alerts: tuple[Alert, ...]
    reason: str = ""


@dataclass
class Decision:
    """What :meth:`NotifyPolicy.offer` decided for one event.

    Attributes:
        send: messages to send now.
        held: targets for which the event is held.
        duplicate: the event was seen before (a follow-up may still be in ``send``).
        matched: at least one rule matched.
    """

    send: list[Outgoing]
    held: list[str]
    duplicate: bool = False
    matched: bool = False


@dataclass
class _Held:
    alert: Alert
    release: float
    reason: str


@dataclass
class _Seen:
    """What became of an event, for its second copy."""

    sent: set[str]
    held: set[str]
    picture: bool
    followed: set[str]


class NotifyPolicy:
    """The decisions of the module docstring; call it from one thread (or under a lock).

    Args:
        config: the validated ``[notify]`` section.
    """

    def __init__(self, config: NotifyConfig) -> None:
        self.config = config
        self._tz = config.tz
        longest = max((r.rate_limit.count for r in config.rules if r.rate_limit), default=1)
        self._sends: dict[str, deque[float]] = {
            t.name: deque(maxlen=longest) for t in config.targets}
        self._held: dict[str, list[_Held]] = {t.name: [] for t in config.targets}
        self._by_id: UnitMemory[str, _Seen] = UnitMemory(REMEMBERED_PER_UNIT)
        self._by_seq: UnitMemory[int, _Seen] = UnitMemory(REMEMBERED_PER_UNIT)
        self.overflow = 0
        """Held alerts dropped because a target already held :data:`MAX_HELD_PER_TARGET`."""

    # --- matching --------------------------------------------------------------------------

    def rules_for(self, alert: Alert) -> list[Rule]:
        """The rules that match ``alert`` (in config order)."""
        return [r for r in self.config.rules if _matches(r, alert)]

    # --- decisions -------------------------------------------------------------------------

    def offer(self, alert: Alert, now: float) -> Decision:
        """Decide what to do with an arriving event at wall time ``now``."""
        seen = self._seen(alert)
        if seen is not None and (seen.sent or seen.held):
            return self._again(alert, seen, now)
        rules = self.rules_for(alert)
        out = Decision(send=[], held=[], duplicate=seen is not None, matched=bool(rules))
        record = seen or _Seen(sent=set(), held=set(), picture=False, followed=set())
        record.picture = record.picture or alert.picture is not None
        self._remember(alert, record)
        for target in dict.fromkeys(t for r in rules for t in r.targets):
            mine = [r for r in rules if target in r.targets]
            held = self._hold_reason(target, mine, now)
            if held is None:
                out.send.append(Outgoing(target, "alert", (alert,)))
                self._record_send(target, now)
                record.sent.add(target)
            else:
                release, reason = held
                self._hold(target, _Held(alert, release, reason))
                out.held.append(target)
                record.held.add(target)
        return out

    def due(self, now: float) -> list[Outgoing]:
        """The messages whose time has come: per target, one for all its due held alerts."""
        out: list[Outgoing] = []
        for target, held in self._held.items():
            ready = [h for h in held if h.release <= now]
            if not ready:
                continue
            self._held[target] = [h for h in held if h.release > now]
            reason = " and ".join(dict.fromkeys(h.reason for h in ready))
            alerts = tuple(h.alert for h in ready)
            kind: Kind = "alert" if len(alerts) == 1 else "digest"
            out.append(Outgoing(target, kind, alerts, reason))
            self._record_send(target, now)
            for a in alerts:
                seen = self._seen(a)
                if seen is not None:
                    seen.held.discard(target)
                    seen.sent.add(target)
                    if kind == "alert" and a.picture is not None:
                        seen.followed.add(target)  # the picture went with it
        return out

    def next_due(self) -> float | None:
        """Wall time of the earliest held release, or None when nothing is held."""
        return min((h.release for held in self._held.values() for h in held), default=None)

    @property
    def held_count(self) -> int:
        """Alerts held now, counted once per target."""
        return sum(len(h) for h in self._held.values())

    # --- internals -------------------------------------------------------------------------

    def _again(self, alert: Alert, seen: _Seen, now: float) -> Decision:
        """A second copy of an event that notified someone: follow-up or nothing."""
        out = Decision(send=[], held=[], duplicate=True, matched=True)
        if seen.picture or alert.picture is None:
            return out
        seen.picture = True
        for target in sorted(seen.held):
            for h in self._held[target]:
                if _same(h.alert, alert):
                    h.alert = replace(h.alert, picture=alert.picture)
        for target in sorted(seen.sent - seen.followed):
            seen.followed.add(target)
            out.send.append(Outgoing(target, "followup", (alert,)))
            self._record_send(target, now)
        return out

    def _hold_reason(self, target: str, rules: list[Rule], now: float
                     ) -> tuple[float, str] | None:
        """None to send now, else (release time, reason)."""
        local = datetime.fromtimestamp(now, self._tz)
        minute = local.hour * 60 + local.minute
        active = [r for r in rules
                  if r.urgent or r.quiet_hours is None or not r.quiet_hours.contains(minute)]
        if not active:
            ends = [self._quiet_end(local, r.quiet_hours.end) for r in rules
                    if r.quiet_hours is not None]
            return min(ends), "quiet hours"
        pending = [h.release for h in self._held[target] if h.reason == "rate limit"]
        releases: list[float] = []
        sends = self._sends[target]
        for r in active:
            if r.rate_limit is None:
                return None
            if pending:
                releases.append(min(pending))
                continue
            recent = sum(1 for t in sends if now - r.rate_limit.per_s < t <= now)
            if recent < r.rate_limit.count:
                return None
            releases.append(sends[-r.rate_limit.count] + r.rate_limit.per_s)
        return max(now, min(releases)), "rate limit"

    def _quiet_end(self, local: datetime, end_minute: int) -> float:
        """The next local time ``end_minute`` after ``local``, as Unix seconds (DST-safe)."""
        end = time(end_minute // 60, end_minute % 60)
        day = local.date()
        for _ in range(3):
            candidate = datetime.combine(day, end, self._tz)
            if candidate > local:
                return candidate.timestamp()
            day += timedelta(days=1)
        raise AssertionError("unreachable: a local time recurs within two days")

    def _record_send(self, target: str, now: float) -> None:
        sends = self._sends[target]
        while sends and sends[-1] > now:  # the wall clock stepped back: forget the future
            sends.pop()
        sends.append(now)

    def _hold(self, target: str, held: _Held) -> None:
        queue = self._held[target]
        queue.append(held)
        if len(queue) > MAX_HELD_PER_TARGET:
            del queue[0]
            self.overflow += 1

    def _seen(self, alert: Alert) -> _Seen | None:
        seen = self._by_id.get(alert.unit, alert.id)
        if seen is None and alert.seq is not None:
            seen = self._by_seq.get(alert.unit, alert.seq & 0xFFFF)
        return seen

    def _remember(self, alert: Alert, record: _Seen) -> None:
        self._by_id.put(alert.unit, alert.id, record)
        if alert.seq is not None:
            self._by_seq.put(alert.unit, alert.seq & 0xFFFF, record)


def _matches(rule: Rule, alert: Alert) -> bool:
    if rule.labels and alert.label not in rule.labels and alert.species not in rule.labels:
        return False
    if rule.units and not any(fnmatchcase(alert.unit, p) for p in rule.units):
        return False
    return alert.score >= rule.min_score


def _same(a: Alert, b: Alert) -> bool:
    if a.unit != b.unit:
        return False
    return a.id == b.id or (a.seq is not None and b.seq is not None
                            and a.seq & 0xFFFF == b.seq & 0xFFFF)


def _timestamp(value: Any, now: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return now
        if parsed.tzinfo is not None:
            return parsed.timestamp()
    return now


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
