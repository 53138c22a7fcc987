"""The receiver's guarded doors: what a trap's MQTT message must be before the station acts on it.

Every message a unit sends is untrusted, even from an authenticated unit: a buggy or stolen
unit can send anything its credentials let it publish. The broker's ACL binds the topic's
``<unit>`` level to the credentials (``pattern write camtrap/%u/#``), so **the topic is the one
thing the station trusts**; the body must agree with it or is refused:

* an event's ``unit`` (when present) must be the topic's unit, and its ``id`` must be exactly
  ``<topic unit>-<seq>`` (with ``seq`` equal to the body's ``seq`` when present). Otherwise one
  unit could occupy another unit's ids (and suppress its real alerts) or be shown as it;
* a media id must be ``<topic unit>-<seq>-thumb|image`` (it names a file: no ``/``, no ``..``);
* every JSON body goes through :func:`edge_app.core.guard.parse_object` (size first, depth and
  node limits without recursion, no NaN / Infinity), and a media chunk is size-checked before
  anything else.

Each function returns a value the station can use or raises
:class:`~edge_app.core.guard.Refused` with a stable *kind* (``unit_mismatch``, ``id_mismatch``,
``bad_unit``, ``bad_chunk``, ``bad_state`` and the guard's own kinds), which the receiver
counts per kind. Pure functions: no I/O, no clock, tested without a broker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_app.core.guard import (
    DEFAULT_LIMITS,
    Limits,
    Refused,
    check_size,
    field,
    parse_object,
)
from edge_app.station.store import StoredEvent

EVENT_LIMITS = DEFAULT_LIMITS
"""An event is a few hundred bytes (a few KiB with many detections); 64 KiB, 16 levels."""
NEWS_LIMITS = DEFAULT_LIMITS
"""Status, stats and command results: small objects (a status is ~80 bytes, stats ~1 KiB)."""
MAX_CHUNK_BYTES = 1024 * 1024
"""The largest media chunk a trap may send (``mqtt.chunk_bytes`` is at most 1 MiB)."""
MAX_CHUNKS = 100_000
"""The most chunks one media file may have (the trap's own ``media/request`` limit)."""
MAX_UNIT_LEN = 32
MAX_SEQ_DIGITS = 18
STATES = frozenset({"online", "offline", "lost"})
MEDIA_KINDS = ("thumb", "image")

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One media chunk that passed the door."""

    unit: str
    media_id: str
    index: int
    of: int
    sha256: str
    event_id: str | None
    data: bytes


def check_unit(unit: str) -> str:
    """``unit`` if it is a unit id camtrap accepts (the trap's ``unit.id`` rule), else refuse.

    Why: the unit becomes a folder name and a key; the rule is the one ``camtrap
    check-config`` applies, so every real unit passes.
    """
    if not unit or len(unit) > MAX_UNIT_LEN or not all(c.isalnum() or c in "-_" for c in unit):
        raise Refused("bad_unit", f"topic unit {unit[:40]!r} is not a unit id")
    return unit


def _seq_of(unit: str, event_id: str) -> int:
    """The seq in ``<unit>-<seq>``; refuse an id of another form (or of another unit)."""
    head, sep, digits = event_id.rpartition("-")
    if (not sep or head != unit or not digits.isascii() or not digits.isdigit()
            or len(digits) > MAX_SEQ_DIGITS or str(int(digits)) != digits):
        raise Refused("id_mismatch", f"id {event_id[:80]!r} is not {unit}-<seq>")
    return int(digits)


def parse_event(unit: str, payload: bytes, limits: Limits = EVENT_LIMITS) -> StoredEvent:
    """An event published on ``<prefix>/<unit>/event`` → the event to store under ``unit``.

    A missing ``unit`` or ``seq`` is filled in from the topic and the id (the stored JSON then
    always has both); present ones must agree.

    Raises:
        Refused: the guard's kinds, ``missing`` / ``bad_type`` (no string ``id``),
            ``unit_mismatch``, ``id_mismatch`` or ``bad_unit``.
    """
    check_unit(unit)
    body = parse_object(payload, limits)
    event_id: str = field(body, "id", str, max_len=MAX_UNIT_LEN + MAX_SEQ_DIGITS + 1)
    body_unit = field(body, "unit", str, max_len=256, required=False)
    if body_unit is not None and body_unit != unit:
        raise Refused("unit_mismatch", f"event {event_id!r} says unit {body_unit[:40]!r} "
                      f"on unit {unit}'s topic")
    seq = _seq_of(unit, event_id)
    body_seq = field(body, "seq", int, required=False)
    if body_seq is not None and body_seq != seq:
        raise Refused("id_mismatch", f"id {event_id!r} does not carry seq {body_seq}")
    outcome = field(body, "outcome", str, max_len=32, required=False)
    body.setdefault("unit", unit)
    body.setdefault("seq", seq)
    return StoredEvent(event_id, unit, outcome or "alert", body)


def check_media_id(unit: str, media_id: str) -> str:
    """``media_id`` if it is ``<unit>-<seq>-thumb|image`` (a unit's own media), else refuse."""
    event_id, sep, kind = media_id.rpartition("-")
    if not sep or kind not in MEDIA_KINDS:
        raise Refused("id_mismatch", f"media id {media_id[:80]!r} is not <event id>-thumb|image")
    _seq_of(unit, event_id)
    return media_id


def expected_thumbs(event: StoredEvent) -> list[str]:
    """The thumbnails ``event`` announces (its ``media`` items of kind ``thumb``).

    Items naming another unit's media, or malformed ones, are skipped: they would only make
    the station ask the unit for files it cannot have.
    """
    out: list[str] = []
    media = event.event.get("media")
    for item in media if isinstance(media, list) else []:
        if not isinstance(item, dict) or item.get("kind") != "thumb":
            continue
        media_id = item.get("id")
        if not isinstance(media_id, str):
            continue
        try:
            out.append(check_media_id(event.unit, media_id))
        except Refused:
            continue
    return out


def _count(text: str, what: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 7 or not low <= int(text) <= high:
        raise Refused("bad_chunk", f"{what} {text[:12]!r} is not a number in {low}..{high}")
    return int(text)


def parse_chunk(unit: str, media_id: str, index: str, props: Mapping[str, str],
                payload: bytes, max_bytes: int = MAX_CHUNK_BYTES) -> Chunk:
    """A chunk on ``<prefix>/<unit>/media/<media_id>/<index>`` with its user properties.

    Raises:
        Refused: ``too_large`` (checked first), ``bad_unit``, ``id_mismatch`` (the media id
            or the ``event`` property is not the unit's), ``bad_chunk`` (``index`` / ``of``
            not numbers with 0 ≤ index < of ≤ :data:`MAX_CHUNKS`) or ``bad_sha256``.
    """
    check_size(payload, max_bytes)
    check_unit(unit)
    check_media_id(unit, media_id)
    of = _count(props.get("of", ""), "'of'", 1, MAX_CHUNKS)
    i = _count(index, "chunk index", 0, of - 1)
    sha = props.get("sha256", "")
    if not _SHA256.fullmatch(sha):
        raise Refused("bad_sha256", "the sha256 property is not 64 lower-case hex digits")
    event_id = props.get("event") or None
    if event_id is not None:
        _seq_of(unit, event_id)
        if not media_id.startswith(event_id + "-"):
            raise Refused("id_mismatch", f"media {media_id} is not of event {event_id[:80]}")
    return Chunk(unit, media_id, i, of, sha, event_id, bytes(payload))


def parse_status(payload: bytes) -> dict[str, Any]:
    """A ``status`` body: an object whose ``state`` is online, offline or lost.

    Raises:
        Refused: the guard's kinds, ``missing`` / ``bad_type`` or ``bad_state``.
    """
    body = parse_object(payload, NEWS_LIMITS)
    state = field(body, "state", str, max_len=16)
    if state not in STATES:
        raise Refused("bad_state", f"state {state!r} is not one of {sorted(STATES)}")
    return body


def parse_news(payload: bytes) -> dict[str, Any]:
    """A ``stats`` or command-result body: any object within :data:`NEWS_LIMITS`.

    Raises:
        Refused: the guard's kinds.
    """
    return parse_object(payload, NEWS_LIMITS)
