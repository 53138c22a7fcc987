"""The guarded door: how every byte from outside becomes a value a stage can trust.

Everything that arrives from outside the process (MQTT payloads, LoRaWAN uplinks and
downlinks, modem and UART lines, config values, uploaded files) passes one door per link, in
this order: **size first** (before any parsing allocates), **parse with limits** (nesting depth
and node count, so a 100,000-deep JSON cannot raise ``RecursionError`` in a stage loop),
**refuse non-finite numbers** (``NaN`` / ``Infinity`` are valid Python floats but meaningless
thresholds: a NaN threshold silently turns every comparison false). A refusal is a
:class:`Refused` carrying a *kind* (what door, what went wrong), never another exception.

:class:`Refusals` counts them per kind for the stats and logs them with a throttle per kind, so
a flood of one kind neither fills the journal nor hides another kind.

Why a pre-scan for depth instead of trusting ``json.loads``: CPython's decoder recurses once per
nesting level and raises ``RecursionError`` (not ``ValueError``) somewhere past ~1000 levels,
and catching ``RecursionError`` after the fact is fragile (it can fire in a logging call, a
``__del__`` or another thread's frame). A single linear pass over the bytes, skipping strings,
finds the depth with no recursion at all.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.errors import EdgeAppError

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024
"""Default size limit of a JSON message (commands, acks, events are a few hundred bytes)."""
MAX_DEPTH = 16
"""Default nesting limit: camtrap's deepest message (an event's detections) nests 4 levels."""
MAX_NODES = 20_000
"""Default limit on values in one document (objects, arrays, strings, numbers together)."""
LOG_EVERY_S = 60.0
"""At most one log line per refusal kind per this many seconds (the rest are counted)."""


class Refused(EdgeAppError, ValueError):
    """Input refused at a door.

    Attributes:
        kind: a short stable name for the stats, e.g. ``too_large``, ``too_deep``,
            ``not_json``, ``non_finite``, ``bad_type``.
        reason: for a person to read; never contains the payload itself.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """What one door accepts."""

    max_bytes: int = MAX_JSON_BYTES
    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES


DEFAULT_LIMITS = Limits()

_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def check_size(data: bytes | bytearray | memoryview | str, max_bytes: int) -> None:
    """Refuse ``data`` longer than ``max_bytes`` (a str is measured in UTF-8 bytes, bounded)."""
    n = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if n > max_bytes:
        raise Refused("too_large", f"{n} bytes, the limit is {max_bytes}")


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` / ``{`` in a JSON text, strings skipped; no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for b in data:
        if in_string:
            if escaped:
                escaped = False
            elif b == _BACKSLASH:
                escaped = True
            elif b == _QUOTE:
                in_string = False
        elif b == _QUOTE:
            in_string = True
        elif b in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif b in _CLOSE:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise Refused("non_finite", f"{name} is not a number camtrap accepts")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise Refused("non_finite", f"{text[:20]} overflows to {value}")
    return value


def _count_nodes(value: Any, max_nodes: int) -> None:
    """Walk the parsed document iteratively; refuse more than ``max_nodes`` values."""
    seen = 0
    todo: list[Any] = [value]
    while todo:
        v = todo.pop()
        seen += 1
        if seen > max_nodes:
            raise Refused("too_many_values", f"more than {max_nodes} values")
        if isinstance(v, dict):
            todo.extend(v.values())
            seen += len(v)  # the keys
        elif isinstance(v, list):
            todo.extend(v)


def parse_json(data: bytes | bytearray | memoryview | str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse untrusted JSON within ``limits``.

    Args:
        data: the raw payload (bytes as received; a str is encoded to UTF-8 first).
        limits: size, depth and node limits of this door.

    Returns:
        The parsed value (dict, list, str, int, float, bool or None); every float is finite.

    Raises:
        Refused: ``too_large``, ``too_deep``, ``not_json`` (includes bad UTF-8),
            ``non_finite`` (NaN, Infinity, or a number that overflows) or ``too_many_values``.
    """
    check_size(data, limits.max_bytes)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    # A text cannot nest deeper than it has openers: most messages skip the scan entirely.
    openers = raw.count(b"[") + raw.count(b"{")
    depth = json_depth(raw) if openers > limits.max_depth else openers
    if depth > limits.max_depth:
        raise Refused("too_deep", f"nested {depth} levels, the limit is {limits.max_depth}")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_parse_float)
    except Refused:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise Refused("not_json", str(e)[:120]) from None
    _count_nodes(value, limits.max_nodes)
    return value


def parse_object(data: bytes | bytearray | memoryview | str,
                 limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """:func:`parse_json` that also requires a JSON object at the top."""
    value = parse_json(data, limits)
    if not isinstance(value, dict):
        raise Refused("bad_type", f"expected a JSON object, got {type(value).__name__}")
    return value


def finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float; bools are not numbers here.

    Raises:
        Refused: ``bad_type`` for a non-number, ``non_finite`` for NaN or ±inf.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused("bad_type", f"{what} must be a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise Refused("non_finite", f"{what} must be finite, got {value}")
    return f


def field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
          *, max_len: int = 256, required: bool = True) -> Any:
    """``obj[key]`` checked for type (and length for strings); None when absent and optional.

    Raises:
        Refused: ``missing`` or ``bad_type``.
    """
    if key not in obj:
        if required:
            raise Refused("missing", f"no {key!r}")
        return None
    value = obj[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise Refused("bad_type", f"{key!r} must be {kind}, got bool")
    if not isinstance(value, kind):
        raise Refused("bad_type", f"{key!r} has type {type(value).__name__}")
    if isinstance(value, str) and len(value) > max_len:
        raise Refused("bad_type", f"{key!r} is longer than {max_len} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused("non_finite", f"{key!r} must be finite")
    return value


class Refusals:
    """Refusals counted per kind, logged with a throttle per kind. Thread-safe.

    One instance per door (or per link), exposed in the stats as :meth:`snapshot`.
    """

    def __init__(self, door: str, clock: Clock | None = None,
                 log_every_s: float = LOG_EVERY_S) -> None:
        self.door = door
        self._clock: Clock = clock or SystemClock()
        self._every = log_every_s
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last_log: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def count(self, refusal: Refused, source: str = "") -> None:
        """Count one refusal and log it unless this kind was logged less than a period ago."""
        now = self._clock.monotonic()
        with self._lock:
            kind = refusal.kind
            self._counts[kind] = self._counts.get(kind, 0) + 1
            last = self._last_log.get(kind)
            if last is not None and now - last < self._every:
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
                return
            self._last_log[kind] = now
            quiet = self._quiet.pop(kind, 0)
        more = f" (+{quiet} more since the last report)" if quiet else ""
        logger.warning("%s: refused %s%s: %s%s", self.door, kind,
                       f" from {source}" if source else "", refusal.reason, more)

    def snapshot(self) -> dict[str, int]:
        """Counts per kind so far (a copy)."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        """All refusals so far."""
        with self._lock:
            return sum(self._counts.values())


def guarded(refusals: Refusals, handler: Callable[[], Any], source: str = "") -> tuple[bool, Any]:
    """Run ``handler``; a :class:`Refused` is counted and becomes ``(False, refusal)``.

    Only :class:`Refused` is caught: a bug in our own code still reaches the supervisor.
    """
    try:
        return True, handler()
    except Refused as r:
        refusals.count(r, source)
        return False, r


def refusal_reply(refusal: Refused, **extra: Any) -> dict[str, Any]:
    """The answer where a reply is expected: ``{"ok": false, "error": kind, "reason": ...}``."""
    return {"ok": False, "error": refusal.kind, "reason": refusal.reason, **extra}
