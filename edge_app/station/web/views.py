"""Stored rows → what a ranger reads: local times, "5 min ago", links, boxes (pure).

Every field of an event JSON is the unit's word: a wrong type or an absurd number becomes
"?" or is left out, never an exception, so one odd event cannot take the Alerts page down.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from edge_app.station.web.context import UnitInfo
from edge_app.station.web.queries import AlertRow

LINK_NAMES = {"lorawan": "LoRa", "mqtt": "MQTT"}
MAX_BOXES = 50
MAX_TEXT = 64


@dataclass(frozen=True, slots=True)
class Box:
    """A detection box in percent of the image (what an SVG ``viewBox="0 0 100 100"`` takes)."""

    x: float
    y: float
    w: float
    h: float
    label: str


@dataclass(frozen=True, slots=True)
class AckView:
    user: str
    note: str
    when: str


@dataclass(frozen=True, slots=True)
class AlertView:
    unit: str
    event_id: str
    dom_id: str
    href: str
    site: str
    what: str
    confidence: str
    ts: float
    when: str
    when_iso: str
    ago: str
    links: list[tuple[str, str]]
    lora_only: bool
    thumb_url: str | None
    image_url: str | None
    frames: list[tuple[str, str]]
    boxes: list[Box]
    acks: list[AckView]
    outcome: str

    @property
    def links_text(self) -> str:
        return ", ".join(f"{name} {at}" for name, at in self.links)


def text(value: Any, default: str = "?") -> str:
    """A short display string of an untrusted value."""
    if isinstance(value, str) and value:
        return value[:MAX_TEXT]
    return default


def number(value: Any) -> float | None:
    """A finite float of an untrusted value, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:  # a JSON integer with 400 digits
        return None
    return f if math.isfinite(f) else None


def event_time(event: Mapping[str, Any], fallback: float) -> float:
    """The event's ``ts`` (RFC 3339) as epoch seconds; ``fallback`` when absent or odd."""
    ts = event.get("ts")
    if not isinstance(ts, str) or len(ts) > 64:
        return fallback
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return fallback
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def local(ts: float, tz: ZoneInfo, now: float | None = None) -> str:
    """``03:12`` today, ``21 Sep 03:12`` another day (in ``tz``)."""
    try:
        dt = datetime.fromtimestamp(ts, tz)
    except (OverflowError, OSError, ValueError):
        return "?"
    if now is not None and dt.date() == datetime.fromtimestamp(now, tz).date():
        return dt.strftime("%H:%M")
    return dt.strftime("%d %b %H:%M")


def local_full(ts: float, tz: ZoneInfo) -> str:
    try:
        return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return "?"


def ago(ts: float, now: float) -> str:
    """``just now``, ``5 min ago``, ``3 h ago``, ``2 d ago`` (``in the future`` on a clock
    that was not synced)."""
    d = now - ts
    if d < -120:
        return "in the future"
    if d < 60:
        return "just now"
    if d < 3600:
        return f"{int(d // 60)} min ago"
    if d < 48 * 3600:
        return f"{int(d // 3600)} h ago"
    return f"{int(d // 86400)} d ago"


def dom_id(unit: str, event_id: str) -> str:
    """A stable HTML id of an alert card (unit ids from a LoRa devices file may be any text)."""
    return "a-" + hashlib.blake2s(f"{unit}\0{event_id}".encode(), digest_size=8).hexdigest()


def alert_href(unit: str, event_id: str) -> str:
    return f"/alerts/{quote(unit, safe='')}/{quote(event_id, safe='')}"


def media_url(unit: str, media_id: str) -> str:
    return f"/media/{quote(unit, safe='')}/{quote(media_id, safe='')}"


def boxes(event: Mapping[str, Any]) -> list[Box]:
    """The event's detection boxes (normalised ``[x, y, w, h]``), clipped to the image."""
    out: list[Box] = []
    dets = event.get("detections")
    for d in dets[:MAX_BOXES] if isinstance(dets, list) else []:
        if not isinstance(d, dict):
            continue
        bbox = d.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            continue
        nums = [number(v) for v in bbox]
        if any(v is None for v in nums):
            continue
        x, y, w, h = (min(1.0, max(0.0, float(v or 0))) for v in nums)
        w, h = min(w, 1.0 - x), min(h, 1.0 - y)
        if w <= 0 or h <= 0:
            continue
        name = text(d.get("species"), "") or text(d.get("category"))
        conf = number(d.get("species_conf")) if d.get("species") else None
        conf = number(d.get("conf")) if conf is None else conf
        label = name if conf is None else f"{name} {conf * 100:.0f}%"
        out.append(Box(round(x * 100, 3), round(y * 100, 3), round(w * 100, 3),
                       round(h * 100, 3), label))
    return out


def what(event: Mapping[str, Any]) -> tuple[str, str]:
    """(``leopard`` / ``animal`` …, its confidence as ``91%``): the species' best box
    confidence when a species is named, else the event's score."""
    species = event.get("species")
    conf = number(event.get("score"))
    if not isinstance(species, str) or not species:
        return text(event.get("label")), _percent(conf)
    dets = event.get("detections")
    confs = []
    for d in dets if isinstance(dets, list) else []:
        if isinstance(d, dict) and d.get("species") == species:
            c = number(d.get("species_conf"))
            if c is not None:
                confs.append(c)
    return text(species), _percent(max(confs) if confs else conf)


def _percent(conf: float | None) -> str:
    return "?" if conf is None or not 0 <= conf <= 1 else f"{conf * 100:.0f}%"


def alert_view(row: AlertRow, units: Mapping[str, UnitInfo], tz: ZoneInfo,
               now: float) -> AlertView:
    ev = row.event
    ts = event_time(ev, row.received)
    name, conf = what(ev)
    info = units.get(row.unit)
    media = set(row.media)
    thumb = f"{row.event_id}-thumb"
    image = f"{row.event_id}-image"
    links = [(LINK_NAMES.get(link, link), local(at, tz, now))
             for link, at in sorted(row.links.items(), key=lambda kv: kv[1])]
    frames = [(m, media_url(row.unit, m)) for m in row.media]
    return AlertView(
        unit=row.unit, event_id=row.event_id, dom_id=dom_id(row.unit, row.event_id),
        href=alert_href(row.unit, row.event_id), site=info.site if info else "",
        what=name, confidence=conf, ts=ts, when=local(ts, tz, now),
        when_iso=local_full(ts, tz), ago=ago(ts, now), links=links,
        lora_only=ev.get("source") == "lorawan",
        thumb_url=media_url(row.unit, thumb) if thumb in media else None,
        image_url=media_url(row.unit, image) if image in media else None,
        frames=frames, boxes=boxes(ev),
        acks=[AckView(a.user, a.note, local(a.at, tz, now)) for a in row.acks],
        outcome=text(ev.get("outcome"), "alert"))
