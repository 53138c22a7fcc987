"""Media reassembly bookkeeping: which chunks a file still lacks, and when to ask for them.

A trap sends a media file as chunks on ``<prefix>/<unit>/media/<media_id>/<chunk>``; they can
be lost (QoS 1 survives a reconnect but not a trap that pruned its outbox) or the whole file may
never start (an event announced a thumbnail the trap could not send yet). This class decides,
from the chunks seen and the time, what the receiver should do: store a finished file, ask the
unit again (``cmd/media/request`` for the missing chunks only, with a doubling delay and a few
tries), or give up. Pure and clock-driven: ``now`` is the caller's monotonic time, so the tests
run it without a broker and without sleeping.

Memory is bounded because chunks come from units, and a unit may be buggy or stolen: a file
may not exceed :data:`MAX_FILE_BYTES`, a unit may have at most :data:`MAX_PARTIALS` files in
progress and :data:`MAX_UNIT_BYTES` buffered (its least recently active transfer is dropped
first — it is asked for again later by the event's announcement or by the operator), and at most
:data:`MAX_EXPECTED` announced thumbnails are awaited per unit. One unit's budget never touches
another's.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_app.core.backoff import backoff_delay
from edge_app.core.guard import Refused
from edge_app.station.doors import Chunk

logger = logging.getLogger(__name__)

MEDIA_TIMEOUT_S = 30.0
THUMB_WAIT_S = 600.0
MEDIA_TRIES = 5
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_PARTIALS = 16
MAX_UNIT_BYTES = 64 * 1024 * 1024
MAX_EXPECTED = 256

MediaKey = tuple[str, str]
"""(unit, media id)."""


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """Ask ``unit`` for ``media_id`` again: the listed chunks (of ``of``), or all of it."""

    unit: str
    media_id: str
    chunks: list[int] | None = None
    of: int | None = None

    def body(self) -> dict[str, Any]:
        """The ``cmd/media/request`` body."""
        out: dict[str, Any] = {"media": self.media_id}
        if self.chunks is not None and self.of is not None:
            out.update(chunks=self.chunks, of=self.of)
        return out


@dataclass(frozen=True, slots=True)
class Assembled:
    """A whole media file whose bytes match the announced sha256."""

    unit: str
    media_id: str
    event_id: str | None
    sha256: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What one chunk led to.

    Attributes:
        status: ``partial`` (more to come), ``known`` (a repeat of a stored file),
            ``complete`` (``file`` is ready to store) or ``bad_sha256`` (the whole file did
            not match; ``request`` asks for it again).
    """

    status: Literal["partial", "known", "complete", "bad_sha256"]
    file: Assembled | None = None
    request: MediaRequest | None = None


@dataclass
class _Partial:
    event_id: str | None
    of: int
    sha256: str
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    last_chunk: float = 0.0
    tries: int = 0
    next_request: float = 0.0


class MediaAssembler:
    """Chunks in, files and re-requests out (see the module docstring).

    Args:
        have: True if (unit, media id) is already stored (the store's ``has_media``).
        timeout_s: a transfer with no new chunk for this long gets its missing chunks
            requested; the delay doubles per try.
        thumb_wait_s: an announced thumbnail not started after this long, while the unit's
            media stream is quiet, is requested.
        tries: requests per file before giving up.
        max_file_bytes: largest file accepted.
        max_partials: files in progress per unit.
        max_unit_bytes: bytes buffered per unit.
    """

    def __init__(self, have: Callable[[str, str], bool], *, timeout_s: float = MEDIA_TIMEOUT_S,
                 thumb_wait_s: float = THUMB_WAIT_S, tries: int = MEDIA_TRIES,
                 max_file_bytes: int = MAX_FILE_BYTES, max_partials: int = MAX_PARTIALS,
                 max_unit_bytes: int = MAX_UNIT_BYTES) -> None:
        self._have = have
        self.timeout_s = timeout_s
        self.thumb_wait_s = thumb_wait_s
        self.tries = tries
        self.max_file_bytes = max_file_bytes
        self.max_partials = max(1, max_partials)
        self.max_unit_bytes = max_unit_bytes
        self._partials: dict[str, OrderedDict[str, _Partial]] = {}  # unit → media id → partial
        self._expected: dict[str, OrderedDict[str, tuple[str, float]]] = {}  # → (event, since)
        self._active: dict[str, float] = {}  # unit → last chunk time
        self.evicted = 0

    def expect(self, unit: str, event_id: str, media_ids: Iterable[str], now: float) -> None:
        """An event announced these thumbnails: ask for any that has not started in time."""
        waiting = self._expected.setdefault(unit, OrderedDict())
        for media_id in media_ids:
            if (media_id in waiting or media_id in self._partials.get(unit, {})
                    or self._have(unit, media_id)):
                continue
            waiting[media_id] = (event_id, now)
            while len(waiting) > MAX_EXPECTED:
                waiting.popitem(last=False)

    def add(self, chunk: Chunk, now: float) -> ChunkOutcome:
        """Take one chunk (already through :func:`~edge_app.station.doors.parse_chunk`).

        Raises:
            Refused: ``too_large``: the file grew beyond ``max_file_bytes`` (it is dropped).
        """
        unit, media_id = chunk.unit, chunk.media_id
        self._active[unit] = now
        self._expected.get(unit, OrderedDict()).pop(media_id, None)
        if self._have(unit, media_id):
            return ChunkOutcome("known")
        parts = self._partials.setdefault(unit, OrderedDict())
        part = parts.get(media_id)
        if part is None or part.of != chunk.of or part.sha256 != chunk.sha256:
            part = _Partial(chunk.event_id, chunk.of, chunk.sha256)
            parts[media_id] = part
        parts.move_to_end(media_id)
        part.size += len(chunk.data) - len(part.chunks.get(chunk.index, b""))
        part.chunks[chunk.index] = chunk.data
        part.last_chunk = now
        part.next_request = now + self.timeout_s
        if part.size > self.max_file_bytes:
            del parts[media_id]
            raise Refused("too_large", f"{media_id} grew beyond {self.max_file_bytes} bytes")
        self._fit(unit, parts)
        if len(part.chunks) < part.of:
            return ChunkOutcome("partial")
        del parts[media_id]
        data = b"".join(part.chunks[k] for k in range(part.of))
        if hashlib.sha256(data).hexdigest() != part.sha256:
            logger.warning("receiver: %s from %s failed its sha256 check; asking again",
                           media_id, unit)
            return ChunkOutcome("bad_sha256", request=MediaRequest(unit, media_id))
        return ChunkOutcome("complete", Assembled(unit, media_id, part.event_id, part.sha256,
                                                  data))

    def _fit(self, unit: str, parts: OrderedDict[str, _Partial]) -> None:
        """Drop the unit's least recently active transfers beyond its budget (not the newest)."""
        while len(parts) > 1 and (len(parts) > self.max_partials
                                  or sum(p.size for p in parts.values()) > self.max_unit_bytes):
            media_id, part = parts.popitem(last=False)
            self.evicted += 1
            logger.warning("receiver: dropped %s from %s (%d of %d chunks): too many transfers "
                           "in progress for one unit", media_id, unit, len(part.chunks), part.of)

    def due(self, now: float) -> list[MediaRequest]:
        """The requests due at ``now`` (each counts as a try); gives up after ``tries``."""
        out: list[MediaRequest] = []
        for unit, parts in self._partials.items():
            for media_id, part in list(parts.items()):
                if now < part.next_request:
                    continue
                if part.tries >= self.tries:
                    logger.warning("receiver: giving up on %s (%d of %d chunks)", media_id,
                                   len(part.chunks), part.of)
                    del parts[media_id]
                    continue
                missing = [k for k in range(part.of) if k not in part.chunks]
                part.tries += 1
                # The project's one backoff rule: 2, 4, 8 … × timeout_s, no jitter (one
                # station, and the unit is waiting for exactly this request).
                part.next_request = now + backoff_delay(
                    part.tries, 2 * self.timeout_s, self.timeout_s * 2 ** self.tries,
                    jitter="none")
                out.append(MediaRequest(unit, media_id, missing, part.of))
        for unit, waiting in self._expected.items():
            quiet = now - self._active.get(unit, float("-inf")) >= self.timeout_s
            for media_id, (_event, since) in list(waiting.items()):
                if now - since >= self.thumb_wait_s and quiet:
                    del waiting[media_id]
                    out.append(MediaRequest(unit, media_id))
        return out

    def next_due_s(self, now: float) -> float | None:
        """Seconds until :meth:`due` may have something (None: nothing pending)."""
        times = [p.next_request for parts in self._partials.values() for p in parts.values()]
        for unit, waiting in self._expected.items():
            quiet_at = self._active.get(unit, float("-inf")) + self.timeout_s
            times += [max(since + self.thumb_wait_s, quiet_at) for _e, since in waiting.values()]
        return max(0.0, min(times) - now) if times else None

    def in_progress(self) -> int:
        """Files being reassembled."""
        return sum(len(p) for p in self._partials.values())
