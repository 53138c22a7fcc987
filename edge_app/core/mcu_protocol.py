"""The Pi's side of the supervisor MCU's UART protocol (``firmware/PROTOCOL.md``, version 1).

A second, independent implementation of the one contract: the firmware has its own codec in
MicroPython (``firmware/supervisor/proto.py``) and both are checked against the shared vectors
in ``firmware/protocol/vectors.json``. Two implementations instead of one shared module because
the firmware's must run under MicroPython (no typing, no dataclasses, a table CRC) and the
Pi's is typed for mypy; the vectors are what keeps them honest with each other.

What the Pi adds over the wire format:

* Typed payloads, one frozen dataclass per message, with the ranges of PROTOCOL.md checked on
  both :meth:`pack` (a bad value we send is our bug: ``ValueError``) and :meth:`unpack` (a bad
  value we receive is hostile or corrupt input: :class:`BadPayload`, counted, never raised out
  of the receiver).
* :class:`Receiver`: the byte-at-a-time resynchronising state machine of PROTOCOL.md with its
  counters, and a log line per kind of damage at most once a minute, so a noisy cable neither
  fills the journal nor hides a second kind of fault. Unlike the firmware the Pi's counters do
  not saturate at 65535 (a Python int is free, and months of noise should still add up).

The CRC is CRC-16/CCITT-FALSE, which is exactly ``binascii.crc_hqx(data, 0xFFFF)``.
"""

from __future__ import annotations

import binascii
import dataclasses
import logging
import struct
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

logger = logging.getLogger(__name__)

VERSION = 1
SOF = b"\xa5\x5a"
MAX_PAYLOAD = 64
HEADER_LEN = 6
CRC_LEN = 2
MAX_FRAME = HEADER_LEN + MAX_PAYLOAD + CRC_LEN
FRAME_TIMEOUT_S = 0.2
"""A frame not complete this long after its start-of-frame is dropped (``partial``)."""
TIME_FLOOR = 1_704_067_200
"""2024-01-01T00:00:00Z: the MCU refuses a SET_TIME before it (a Pi clock that never synced)."""
LOG_EVERY_S = 60.0
"""At most one log line per kind of damage per this many seconds (the rest are counted)."""
TEMP_UNKNOWN = -32768
MAX_WINDOWS = 6
MINUTES_PER_DAY = 1440


class MsgType(IntEnum):
    HELLO = 0x01
    STATUS = 0x02
    TRIGGER = 0x03
    ACK = 0x04
    HEARTBEAT = 0x10
    SET_TIME = 0x11
    POWER_OFF = 0x12
    SCHEDULE = 0x13
    GET_STATUS = 0x14
    POWER_CYCLE = 0x15
    TRIGGER_ACK = 0x16


MCU_TO_PI: frozenset[int] = frozenset({MsgType.HELLO, MsgType.STATUS, MsgType.TRIGGER,
                                       MsgType.ACK})
PI_TO_MCU: frozenset[int] = frozenset(set(MsgType) - MCU_TO_PI)


class WakeReason(IntEnum):
    POWER_ON = 0
    PIR = 1
    SCHEDULE = 2
    WATCHDOG = 3
    VOLTAGE_RESTORED = 4
    REQUESTED = 5
    BACKOFF_RETRY = 6
    BATTERY = 7


class ResetCause(IntEnum):
    UNKNOWN = 0
    POWER_ON = 1
    WATCHDOG = 2
    HARD_RESET = 3
    SOFT_RESET = 4
    DEEPSLEEP = 5


class PiState(IntEnum):
    """The Pi's power as the MCU sees it."""

    OFF = 0
    BOOTING = 1
    UP = 2
    SHUTTING_DOWN = 3
    LOW_VOLTAGE_OFF = 4
    BACKOFF = 5


class Mode(IntEnum):
    ALWAYS_ON = 0
    GATED = 1
    HYBRID = 2


class AckResult(IntEnum):
    OK = 0
    BAD_PAYLOAD = 1
    UNKNOWN_TYPE = 2
    REFUSED = 3


class TimeSource(IntEnum):
    """SET_TIME ``source``."""

    NTP = 1
    GPS = 2
    MANUAL = 3


# HELLO / STATUS flags
FLAG_RTC_VALID = 0x01
FLAG_LOW_VOLTAGE = 0x02
FLAG_BOOT_BACKOFF = 0x04
FLAG_SOLAR_CHARGING = 0x08
# TRIGGER flags
TRIG_WHILE_OFF = 0x01
TRIG_RTC_VALID = 0x02


def code_name(enum: type[IntEnum], value: int) -> str:
    """``WakeReason.PIR`` → ``pir``; an unknown number → ``unknown_<n>`` (for stats)."""
    try:
        return enum(value).name.lower()
    except ValueError:
        return f"unknown_{value}"


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); ``crc16(b"123456789") == 0x29B1``."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_frame(mtype: int, seq: int, payload: bytes = b"") -> bytes:
    """A complete frame around an already packed payload.

    Raises:
        ValueError: type or seq outside 0–255, payload over :data:`MAX_PAYLOAD` (our bug).
    """
    if not 0 <= mtype <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"type {mtype} / seq {seq} outside 0-255")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes, at most {MAX_PAYLOAD}")
    body = bytes((VERSION, mtype, seq, len(payload))) + payload
    return SOF + body + crc16(body).to_bytes(2, "big")


class BadPayload(ValueError):
    """A payload of the wrong length or with a value out of range (``bad_payload``)."""


M = TypeVar("M", bound="Message")

_STRUCT_LIMITS = {"B": (0, 0xFF), "H": (0, 0xFFFF), "h": (-0x8000, 0x7FFF),
                  "I": (0, 0xFFFF_FFFF)}


@dataclass(frozen=True, slots=True)
class Message:
    """A fixed-layout payload: ``FMT`` is its ``struct`` format, the dataclass fields are in
    wire order, ``RANGES`` the limits beyond the field's own width."""

    TYPE: ClassVar[MsgType]
    FMT: ClassVar[str] = "<"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {}

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def pack(self) -> bytes:
        """The payload bytes.

        Raises:
            ValueError: a value out of its range (a bug on our side, never sent).
        """
        values = self._values()
        for f, code, v in zip(dataclasses.fields(self), self.FMT[1:], values, strict=True):
            _check(f.name, v, _STRUCT_LIMITS[code], self.RANGES.get(f.name), ValueError)
        return struct.pack(self.FMT, *values)

    @classmethod
    def unpack(cls: type[M], payload: bytes) -> M:
        """Decode a received payload.

        Raises:
            BadPayload: wrong length or a value out of range.
        """
        if len(payload) != struct.calcsize(cls.FMT):
            raise BadPayload(f"{cls.TYPE.name}: {len(payload)} bytes, want "
                             f"{struct.calcsize(cls.FMT)}")
        values = struct.unpack(cls.FMT, payload)
        for f, v in zip(dataclasses.fields(cls), values, strict=True):
            lim = cls.RANGES.get(f.name)
            if lim is not None and not lim[0] <= v <= lim[1]:
                raise BadPayload(f"{cls.TYPE.name}.{f.name} = {v} outside {lim[0]}-{lim[1]}")
        return cls(*values)

    def frame(self, seq: int) -> bytes:
        """This message as a complete frame with sequence number ``seq``."""
        return encode_frame(self.TYPE, seq, self.pack())


def _check(name: str, v: object, width: tuple[int, int], lim: tuple[int, int] | None,
           exc: type[ValueError]) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise exc(f"{name} must be an int, got {v!r}")
    for lo, hi in (width, lim or width):
        if not lo <= v <= hi:
            raise exc(f"{name} = {v} outside {lo}-{hi}")


class _Flags:
    """HELLO / STATUS flag bits, for both."""

    __slots__ = ()
    flags: int

    @property
    def rtc_valid(self) -> bool:
        return bool(self.flags & FLAG_RTC_VALID)

    @property
    def low_voltage(self) -> bool:
        return bool(self.flags & FLAG_LOW_VOLTAGE)

    @property
    def boot_backoff(self) -> bool:
        return bool(self.flags & FLAG_BOOT_BACKOFF)

    @property
    def solar_charging(self) -> bool:
        return bool(self.flags & FLAG_SOLAR_CHARGING)


# -- MCU → Pi ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(_Flags, Message):
    TYPE: ClassVar[MsgType] = MsgType.HELLO
    FMT: ClassVar[str] = "<BBBBHBB"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "wake_reason": (0, 7), "reset_cause": (0, 5), "mode": (0, 2)}
    fw_major: int
    fw_minor: int
    wake_reason: int
    reset_cause: int
    boot_count: int
    mode: int
    flags: int


@dataclass(frozen=True, slots=True)
class Status(_Flags, Message):
    TYPE: ClassVar[MsgType] = MsgType.STATUS
    FMT: ClassVar[str] = "<IHHhIHHBBBBBH"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "reset_cause": (0, 5), "wake_reason": (0, 7), "state": (0, 5), "mode": (0, 2)}
    rtc_time: int
    battery_mv: int
    solar_mv: int
    temp_dc: int
    triggers_total: int
    triggers_pending: int
    boot_count: int
    reset_cause: int
    wake_reason: int
    state: int
    mode: int
    flags: int
    bad_frames: int

    @property
    def battery_v(self) -> float | None:
        """Volts, None when no divider is fitted (``0``)."""
        return self.battery_mv / 1000.0 if self.battery_mv else None

    @property
    def solar_v(self) -> float | None:
        return self.solar_mv / 1000.0 if self.solar_mv else None

    @property
    def temp_c(self) -> float | None:
        """°C, None when the MCU does not know (``-32768``)."""
        return None if self.temp_dc == TEMP_UNKNOWN else self.temp_dc / 10.0


@dataclass(frozen=True, slots=True)
class Trigger(Message):
    TYPE: ClassVar[MsgType] = MsgType.TRIGGER
    FMT: ClassVar[str] = "<IIHB"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {"rtc_ms": (0, 999)}
    number: int
    rtc_time: int
    rtc_ms: int
    flags: int

    @property
    def while_off(self) -> bool:
        return bool(self.flags & TRIG_WHILE_OFF)

    @property
    def rtc_valid(self) -> bool:
        return bool(self.flags & TRIG_RTC_VALID)

    @property
    def time(self) -> float:
        """The trigger's time on the MCU's RTC, in Unix seconds with milliseconds."""
        return self.rtc_time + self.rtc_ms / 1000.0


@dataclass(frozen=True, slots=True)
class Ack(Message):
    TYPE: ClassVar[MsgType] = MsgType.ACK
    FMT: ClassVar[str] = "<BB"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {"result": (0, 3)}
    acked_type: int
    result: int


# -- Pi → MCU ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    FMT: ClassVar[str] = "<B"
    health: int  # bit0: every stage healthy


@dataclass(frozen=True, slots=True)
class SetTime(Message):
    TYPE: ClassVar[MsgType] = MsgType.SET_TIME
    FMT: ClassVar[str] = "<IB"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "unix_s": (TIME_FLOOR, 0xFFFF_FFFF), "source": (1, 3)}
    unix_s: int
    source: int


@dataclass(frozen=True, slots=True)
class PowerOff(Message):
    TYPE: ClassVar[MsgType] = MsgType.POWER_OFF
    FMT: ClassVar[str] = "<H"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {"timeout_s": (1, 600)}
    timeout_s: int


@dataclass(frozen=True, slots=True)
class GetStatus(Message):
    TYPE: ClassVar[MsgType] = MsgType.GET_STATUS
    FMT: ClassVar[str] = "<"


@dataclass(frozen=True, slots=True)
class PowerCycle(Message):
    TYPE: ClassVar[MsgType] = MsgType.POWER_CYCLE
    FMT: ClassVar[str] = "<HH"
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {"grace_s": (0, 600), "off_s": (1, 3600)}
    grace_s: int
    off_s: int


@dataclass(frozen=True, slots=True)
class TriggerAck(Message):
    TYPE: ClassVar[MsgType] = MsgType.TRIGGER_ACK
    FMT: ClassVar[str] = "<I"
    up_to_number: int


@dataclass(frozen=True, slots=True)
class Schedule(Message):
    """Variable length: ``<BBH`` (mode, n, hybrid_above_mv) then n windows ``<HH``
    (start_min, end_min after UTC midnight; ``end < start`` wraps midnight)."""

    TYPE: ClassVar[MsgType] = MsgType.SCHEDULE
    FMT: ClassVar[str] = "<BBH"
    mode: int
    hybrid_above_mv: int
    windows: tuple[tuple[int, int], ...] = ()

    def pack(self) -> bytes:
        _check("mode", self.mode, (0, 2), None, ValueError)
        _check("hybrid_above_mv", self.hybrid_above_mv, _STRUCT_LIMITS["H"], None, ValueError)
        if len(self.windows) > MAX_WINDOWS:
            raise ValueError(f"{len(self.windows)} windows, at most {MAX_WINDOWS}")
        out = struct.pack("<BBH", self.mode, len(self.windows), self.hybrid_above_mv)
        for start, end in self.windows:
            _check("window start", start, (0, MINUTES_PER_DAY - 1), None, ValueError)
            _check("window end", end, (0, MINUTES_PER_DAY - 1), None, ValueError)
            out += struct.pack("<HH", start, end)
        return out

    @classmethod
    def unpack(cls: type[M], payload: bytes) -> M:
        if len(payload) < 4:
            raise BadPayload(f"SCHEDULE: {len(payload)} bytes, want at least 4")
        mode, n, above = struct.unpack_from("<BBH", payload)
        if mode > 2 or n > MAX_WINDOWS or len(payload) != 4 + 4 * n:
            raise BadPayload(f"SCHEDULE: mode {mode}, {n} windows in {len(payload)} bytes")
        windows = tuple(struct.unpack_from("<HH", payload, 4 + 4 * i) for i in range(n))
        if any(v >= MINUTES_PER_DAY for w in windows for v in w):
            raise BadPayload("SCHEDULE: a window minute beyond 1439")
        return cls(mode, above, windows)  # type: ignore[call-arg]


MESSAGES: dict[int, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Status, Trigger, Ack, Heartbeat, SetTime, PowerOff,
                              Schedule, GetStatus, PowerCycle, TriggerAck)}


# -- receiving --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One CRC-valid frame.

    Attributes:
        type, seq, payload: as on the wire.
        message: the decoded payload, None when ``error`` is set.
        error: :attr:`AckResult.OK`, :attr:`~AckResult.BAD_PAYLOAD` or
            :attr:`~AckResult.UNKNOWN_TYPE` (the ACK result a receiver answers with).
    """

    type: int
    seq: int
    payload: bytes
    message: Message | None
    error: AckResult = AckResult.OK


COUNTER_NAMES = ("garbage_bytes", "bad_header", "bad_crc", "partial", "unknown_type",
                 "bad_payload")

_HUNT, _GOT_A5, _HEADER, _BODY = range(4)


class Receiver:
    """PROTOCOL.md's byte-at-a-time receiver: frames out, damage counted, never an exception.

    Same rules as the firmware's receiver, so both count a damaged stream alike (the shared
    vectors check it): bytes before a start-of-frame are ``garbage_bytes``; a bad header or a
    CRC mismatch is counted and scanning resumes at the byte after the ``0xA5`` that started
    it (a real frame may start inside a rejected one); a frame not completed within
    :data:`FRAME_TIMEOUT_S` of its start is ``partial`` and dropped (checked when the next
    bytes arrive or at :meth:`poll`, so an idle reader needs no timer).

    Not thread-safe: one reader thread owns it.

    Args:
        accept: message types this end takes (:data:`MCU_TO_PI` on the Pi); a valid frame of
            another type comes back with ``error = UNKNOWN_TYPE``.
        name: for log lines.
    """

    def __init__(self, accept: Collection[int] = MCU_TO_PI, name: str = "MCU UART") -> None:
        self.accept = frozenset(accept)
        self.name = name
        self.counts: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.frames_ok = 0
        self._state = _HUNT
        self._buf = bytearray()
        self._need = 0
        self._sof_at = 0.0
        self._last_log: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    @property
    def bad_frames(self) -> int:
        """Every damaged frame (all counters but ``garbage_bytes``), as STATUS counts it."""
        return sum(v for k, v in self.counts.items() if k != "garbage_bytes")

    def busy(self) -> bool:
        """True while a frame is half received."""
        return self._state != _HUNT

    def poll(self, now: float) -> None:
        """Drop a frame that has not completed within :data:`FRAME_TIMEOUT_S` of its start."""
        if self._state == _HUNT or now - self._sof_at <= FRAME_TIMEOUT_S + 1e-9:
            return
        if self._state == _GOT_A5:
            self._count("garbage_bytes", now)  # a lone 0xA5 that never became a SOF
        else:
            self._count("partial", now, f"{len(self._buf)} bytes")
        self._reset()

    def feed(self, data: bytes | bytearray, now: float) -> list[Frame]:
        """Take bytes received at ``now`` (monotonic seconds); the frames they completed."""
        out: list[Frame] = []
        self.poll(now)
        work = bytearray(data)
        i = 0
        while i < len(work):
            rescan = self._step(work[i], now, out)
            i += 1
            if rescan:  # bytes after a rejected frame's 0xA5 are scanned again
                work[:i] = rescan
                i = 0
        return out

    def _reset(self) -> None:
        self._state = _HUNT
        self._buf = bytearray()

    def _step(self, b: int, now: float, out: list[Frame]) -> bytes:
        state = self._state
        if state == _HUNT:
            if b == SOF[0]:
                self._buf = bytearray((b,))
                self._sof_at = now
                self._state = _GOT_A5
            else:
                self._count("garbage_bytes", now)
            return b""
        if state == _GOT_A5:
            if b == SOF[1]:
                self._buf.append(b)
                self._state = _HEADER
            elif b == SOF[0]:  # the earlier 0xA5 was noise; this one may start the frame
                self._count("garbage_bytes", now)
                self._sof_at = now
            else:
                self._count("garbage_bytes", now, n=2)
                self._reset()
            return b""
        buf = self._buf
        buf.append(b)
        if state == _HEADER:
            if len(buf) == HEADER_LEN:
                if buf[2] != VERSION or buf[5] > MAX_PAYLOAD:
                    self._count("bad_header", now, f"version {buf[2]}, length {buf[5]}")
                    return self._rescan()
                self._need = HEADER_LEN + buf[5] + CRC_LEN
                self._state = _BODY
            return b""
        n = self._need
        if len(buf) < n:
            return b""
        if crc16(buf[2:n - CRC_LEN]) != int.from_bytes(buf[n - CRC_LEN:n], "big"):
            self._count("bad_crc", now)
            return self._rescan()
        self._reset()
        out.append(self._decode(buf[3], buf[4], bytes(buf[HEADER_LEN:n - CRC_LEN]), now))
        return b""

    def _rescan(self) -> bytes:
        rest = bytes(self._buf[1:])
        self._reset()
        return rest

    def _decode(self, mtype: int, seq: int, payload: bytes, now: float) -> Frame:
        cls = MESSAGES.get(mtype)
        if cls is None or mtype not in self.accept:
            self._count("unknown_type", now, f"type 0x{mtype:02x}")
            return Frame(mtype, seq, payload, None, AckResult.UNKNOWN_TYPE)
        try:
            msg = cls.unpack(payload)
        except BadPayload as e:
            self._count("bad_payload", now, str(e))
            return Frame(mtype, seq, payload, None, AckResult.BAD_PAYLOAD)
        self.frames_ok += 1
        return Frame(mtype, seq, payload, msg)

    def _count(self, kind: str, now: float, detail: str = "", n: int = 1) -> None:
        self.counts[kind] += n
        last = self._last_log.get(kind)
        if last is not None and now - last < LOG_EVERY_S:
            self._quiet[kind] = self._quiet.get(kind, 0) + n
            return
        self._last_log[kind] = now
        quiet = self._quiet.pop(kind, 0)
        logger.warning("%s: %s%s (%d so far%s)", self.name, kind,
                       f": {detail}" if detail else "", self.counts[kind],
                       f", {quiet} since the last report" if quiet else "")
