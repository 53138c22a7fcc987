"""Supervisor UART protocol v1 (firmware/PROTOCOL.md): CRC, frame encoder, receiver, payloads.

One module for both ends: the MCU runs it under MicroPython, the Pi's simulator and the shared
vector generator import it under CPython. So it uses only what both interpreters have
(``struct``, ``bytearray``, plain classes; no annotations, dataclasses, enum or typing).

Receiving is a byte-at-a-time state machine so that garbage, a bad header, a bad CRC or a frame
cut off by a power glitch costs at most that frame: the receiver counts what it dropped and
finds the next start-of-frame, including one that begins inside the frame it just rejected.
Nothing in here raises out of :meth:`Receiver.feed`; encoders raise ``ValueError`` because a
bad value there is our own bug, not hostile input.
"""

import struct

VERSION = 1
SOF = b"\xa5\x5a"
SOF0 = 0xA5
SOF1 = 0x5A
MAX_PAYLOAD = 64
HEADER_LEN = 6
FRAME_TIMEOUT_MS = 200
COUNTER_MAX = 65535

# Message types. MCU -> Pi:
HELLO = 0x01
STATUS = 0x02
TRIGGER = 0x03
ACK = 0x04
# Pi -> MCU:
HEARTBEAT = 0x10
SET_TIME = 0x11
POWER_OFF = 0x12
SCHEDULE = 0x13
GET_STATUS = 0x14
POWER_CYCLE = 0x15
TRIGGER_ACK = 0x16

NAMES = {
    HELLO: "HELLO",
    STATUS: "STATUS",
    TRIGGER: "TRIGGER",
    ACK: "ACK",
    HEARTBEAT: "HEARTBEAT",
    SET_TIME: "SET_TIME",
    POWER_OFF: "POWER_OFF",
    SCHEDULE: "SCHEDULE",
    GET_STATUS: "GET_STATUS",
    POWER_CYCLE: "POWER_CYCLE",
    TRIGGER_ACK: "TRIGGER_ACK",
}
MCU_TO_PI = (HELLO, STATUS, TRIGGER, ACK)
PI_TO_MCU = (HEARTBEAT, SET_TIME, POWER_OFF, SCHEDULE, GET_STATUS, POWER_CYCLE, TRIGGER_ACK)

# Fixed-layout payloads: struct format and field names, in wire order. SCHEDULE is variable
# (a fixed head + n windows) and handled apart.
FORMATS = {
    HELLO: "<BBBBHBB",
    STATUS: "<IHHhIHHBBBBBH",
    TRIGGER: "<IIHB",
    ACK: "<BB",
    HEARTBEAT: "<B",
    SET_TIME: "<IB",
    POWER_OFF: "<H",
    SCHEDULE: "<BBH",
    GET_STATUS: "<",
    POWER_CYCLE: "<HH",
    TRIGGER_ACK: "<I",
}
FIELDS = {
    HELLO: ("fw_major", "fw_minor", "wake_reason", "reset_cause", "boot_count", "mode", "flags"),
    STATUS: (
        "rtc_time", "battery_mv", "solar_mv", "temp_dc", "triggers_total", "triggers_pending",
        "boot_count", "reset_cause", "wake_reason", "state", "mode", "flags", "bad_frames",
    ),
    TRIGGER: ("number", "rtc_time", "rtc_ms", "flags"),
    ACK: ("acked_type", "result"),
    HEARTBEAT: ("health",),
    SET_TIME: ("unix_s", "source"),
    POWER_OFF: ("timeout_s",),
    SCHEDULE: ("mode", "n", "hybrid_above_mv"),
    GET_STATUS: (),
    POWER_CYCLE: ("grace_s", "off_s"),
    TRIGGER_ACK: ("up_to_number",),
}
SCHEDULE_WINDOW_FMT = "<HH"
MAX_WINDOWS = 6
MINUTES_PER_DAY = 1440
TIME_FLOOR = 1704067200  # 2024-01-01T00:00:00Z: SET_TIME before this is refused

# Codes (PROTOCOL.md "Codes").
WAKE_POWER_ON = 0
WAKE_PIR = 1
WAKE_SCHEDULE = 2
WAKE_WATCHDOG = 3
WAKE_VOLTAGE_RESTORED = 4
WAKE_REQUESTED = 5
WAKE_BACKOFF_RETRY = 6
WAKE_BATTERY = 7

RESET_UNKNOWN = 0
RESET_POWER_ON = 1
RESET_WATCHDOG = 2
RESET_HARD = 3
RESET_SOFT = 4
RESET_DEEPSLEEP = 5

STATE_OFF = 0
STATE_BOOTING = 1
STATE_UP = 2
STATE_SHUTTING_DOWN = 3
STATE_LOW_VOLTAGE_OFF = 4
STATE_BACKOFF = 5

MODE_ALWAYS_ON = 0
MODE_GATED = 1
MODE_HYBRID = 2

RESULT_OK = 0
RESULT_BAD_PAYLOAD = 1
RESULT_UNKNOWN_TYPE = 2
RESULT_REFUSED = 3

# HELLO/STATUS flags; TRIGGER flags.
FLAG_RTC_VALID = 0x01
FLAG_LOW_VOLTAGE = 0x02
FLAG_BOOT_BACKOFF = 0x04
FLAG_SOLAR_CHARGING = 0x08
TRIG_WHILE_OFF = 0x01
TRIG_RTC_VALID = 0x02

SET_TIME_SOURCES = (1, 2, 3)  # ntp, gps, manual

# Value limits beyond the struct's own: (type, field) -> (lo, hi) inclusive.
RANGES = {
    (HELLO, "wake_reason"): (0, 7),
    (HELLO, "reset_cause"): (0, 5),
    (HELLO, "mode"): (0, 2),
    (STATUS, "wake_reason"): (0, 7),
    (STATUS, "reset_cause"): (0, 5),
    (STATUS, "state"): (0, 5),
    (STATUS, "mode"): (0, 2),
    (TRIGGER, "rtc_ms"): (0, 999),
    (ACK, "result"): (0, 3),
    (SET_TIME, "unix_s"): (TIME_FLOOR, 0xFFFFFFFF),
    (SET_TIME, "source"): (1, 3),
    (POWER_OFF, "timeout_s"): (1, 600),
    (SCHEDULE, "mode"): (0, 2),
    (SCHEDULE, "n"): (0, MAX_WINDOWS),
    (POWER_CYCLE, "grace_s"): (0, 600),
    (POWER_CYCLE, "off_s"): (1, 3600),
}
_STRUCT_RANGES = {
    "B": (0, 0xFF),
    "H": (0, 0xFFFF),
    "h": (-0x8000, 0x7FFF),
    "I": (0, 0xFFFFFFFF),
}

# Error codes on a received Frame; the same numbers as ACK results.
ERR_NONE = RESULT_OK
ERR_BAD_PAYLOAD = RESULT_BAD_PAYLOAD
ERR_UNKNOWN_TYPE = RESULT_UNKNOWN_TYPE

COUNTER_NAMES = (
    "garbage_bytes", "bad_header", "bad_crc", "partial", "unknown_type", "bad_payload",
)


def _make_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _make_table()


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE over ``data`` (same result as CPython's ``binascii.crc_hqx``)."""
    table = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ b) & 0xFF]
    return crc


def encode_frame(mtype, seq, payload=b""):
    """A complete frame (SOF … CRC) around an already packed payload."""
    if not 0 <= mtype <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError("type/seq out of range")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload too long")
    body = bytearray((VERSION, mtype, seq, len(payload)))
    body.extend(payload)
    crc = crc16(body)
    out = bytearray(SOF)
    out.extend(body)
    out.append(crc >> 8)
    out.append(crc & 0xFF)
    return bytes(out)


def _check(mtype, name, value, code):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(name + " must be an int")
    lo, hi = _STRUCT_RANGES[code]
    if not lo <= value <= hi:
        raise ValueError(name + " out of range")
    limits = RANGES.get((mtype, name))
    if limits is not None and not limits[0] <= value <= limits[1]:
        raise ValueError(name + " out of range")


def _codes(fmt):
    return fmt[1:]


def pack_payload(mtype, fields):
    """Pack a dict of fields for ``mtype``; raises ValueError on a missing or bad value.

    SCHEDULE takes ``mode``, ``hybrid_above_mv`` and ``windows`` (a list of
    ``[start_min, end_min]``); its ``n`` is derived from the windows.
    """
    if mtype not in FORMATS:
        raise ValueError("unknown type")
    if mtype == SCHEDULE:
        return _pack_schedule(fields)
    names = FIELDS[mtype]
    codes = _codes(FORMATS[mtype])
    values = []
    for i in range(len(names)):
        name = names[i]
        if name not in fields:
            raise ValueError("missing " + name)
        _check(mtype, name, fields[name], codes[i])
        values.append(fields[name])
    return struct.pack(FORMATS[mtype], *values)


def _pack_schedule(fields):
    windows = fields.get("windows", [])
    n = len(windows)
    for name in ("mode", "hybrid_above_mv"):
        if name not in fields:
            raise ValueError("missing " + name)
    _check(SCHEDULE, "mode", fields["mode"], "B")
    _check(SCHEDULE, "n", n, "B")
    _check(SCHEDULE, "hybrid_above_mv", fields["hybrid_above_mv"], "H")
    out = bytearray(struct.pack("<BBH", fields["mode"], n, fields["hybrid_above_mv"]))
    for w in windows:
        if len(w) != 2:
            raise ValueError("window needs start and end")
        for v in w:
            _check(SCHEDULE, "window", v, "H")
            if v >= MINUTES_PER_DAY:
                raise ValueError("window minute out of range")
        out.extend(struct.pack(SCHEDULE_WINDOW_FMT, w[0], w[1]))
    return bytes(out)


def unpack_payload(mtype, payload):
    """Decode a payload into a dict; raises ValueError on a wrong length or value out of range."""
    if mtype not in FORMATS:
        raise ValueError("unknown type")
    if mtype == SCHEDULE:
        return _unpack_schedule(payload)
    fmt = FORMATS[mtype]
    if len(payload) != struct.calcsize(fmt):
        raise ValueError("bad length")
    names = FIELDS[mtype]
    values = struct.unpack(fmt, payload) if names else ()
    out = {}
    for i in range(len(names)):
        limits = RANGES.get((mtype, names[i]))
        if limits is not None and not limits[0] <= values[i] <= limits[1]:
            raise ValueError(names[i] + " out of range")
        out[names[i]] = values[i]
    return out


def _unpack_schedule(payload):
    if len(payload) < 4:
        raise ValueError("bad length")
    mode, n, above = struct.unpack("<BBH", payload[:4])
    if mode > 2 or n > MAX_WINDOWS or len(payload) != 4 + 4 * n:
        raise ValueError("bad schedule head")
    windows = []
    for i in range(n):
        start, end = struct.unpack(SCHEDULE_WINDOW_FMT, payload[4 + 4 * i:8 + 4 * i])
        if start >= MINUTES_PER_DAY or end >= MINUTES_PER_DAY:
            raise ValueError("window minute out of range")
        windows.append([start, end])
    return {"mode": mode, "n": n, "hybrid_above_mv": above, "windows": windows}


def encode(mtype, seq, fields=None):
    """Pack ``fields`` and frame them: the one call a sender needs."""
    return encode_frame(mtype, seq, pack_payload(mtype, fields or {}))


class Frame:
    """One CRC-valid frame as received.

    ``fields`` is the decoded payload (a dict) or None when ``error`` is not ERR_NONE:
    ERR_BAD_PAYLOAD (wrong length / value out of range) or ERR_UNKNOWN_TYPE (a type this
    receiver does not take). The numbers double as the ACK result to answer with.
    """

    def __init__(self, mtype, seq, payload, fields, error):
        self.type = mtype
        self.seq = seq
        self.payload = payload
        self.fields = fields
        self.error = error

    def __repr__(self):
        name = NAMES.get(self.type, hex(self.type))
        return "Frame(" + name + " seq=" + str(self.seq) + " err=" + str(self.error) + " " + \
            repr(self.fields) + ")"


_HUNT = 0  # looking for 0xA5
_GOT_A5 = 1  # saw 0xA5, want 0x5A
_HEADER = 2  # collecting version, type, seq, len
_BODY = 3  # collecting payload + CRC


class Receiver:
    """Byte-at-a-time frame receiver with the PROTOCOL.md counters.

    ``accept`` is the collection of types this end takes (``PI_TO_MCU`` on the MCU,
    ``MCU_TO_PI`` on the Pi); a CRC-valid frame of any other type is returned with
    ERR_UNKNOWN_TYPE and counted, so the MCU can answer it with ACK result 2.

    Time is passed in (``now_ms``, any monotonic millisecond count) so that the 200 ms
    frame timeout is testable without sleeping; :meth:`poll` expires a stalled frame when no
    byte arrives.
    """

    def __init__(self, accept=None):
        self.accept = tuple(accept) if accept is not None else tuple(FORMATS)
        self.counts = {}
        for name in COUNTER_NAMES:
            self.counts[name] = 0
        self.frames_ok = 0
        self._state = _HUNT
        self._buf = bytearray()
        self._need = 0
        self._sof_ms = 0

    def _inc(self, name, n=1):
        v = self.counts[name] + n
        self.counts[name] = v if v < COUNTER_MAX else COUNTER_MAX

    def counters(self):
        """A copy of the counters (dict name -> int)."""
        return dict(self.counts)

    def bad_frames(self):
        """Sum of the frame-level error counters, saturating (STATUS ``bad_frames``)."""
        c = self.counts
        total = c["bad_header"] + c["bad_crc"] + c["partial"] + c["bad_payload"]
        total += c["unknown_type"]
        return total if total < COUNTER_MAX else COUNTER_MAX

    def busy(self):
        """True while a frame is half received (the caller may want to poll for its timeout)."""
        return self._state != _HUNT

    def poll(self, now_ms):
        """Expire a frame not completed within FRAME_TIMEOUT_MS of its first byte."""
        if self._state == _HUNT or now_ms - self._sof_ms <= FRAME_TIMEOUT_MS:
            return
        if self._state == _GOT_A5:
            self._inc("garbage_bytes")  # a lone 0xA5 never became a SOF
        else:
            self._inc("partial")
        self._reset()

    def feed(self, data, now_ms):
        """Take a chunk of bytes received at ``now_ms``; returns the completed Frames in order."""
        out = []
        self.poll(now_ms)
        for b in data:
            self._push(b, now_ms, out)
        return out

    def _reset(self):
        self._state = _HUNT
        self._buf = bytearray()

    def _push(self, byte, now_ms, out):
        pending = bytearray((byte,))
        i = 0
        while i < len(pending):
            r = self._step(pending[i], now_ms)
            i += 1
            if r is None:
                continue
            if isinstance(r, Frame):
                out.append(r)
            else:  # bytes after a rejected frame's 0xA5: scan them again
                pending = r + pending[i:]
                i = 0

    def _step(self, b, now_ms):
        state = self._state
        if state == _HUNT:
            if b == SOF0:
                self._buf = bytearray((b,))
                self._sof_ms = now_ms
                self._state = _GOT_A5
            else:
                self._inc("garbage_bytes")
            return None
        if state == _GOT_A5:
            if b == SOF1:
                self._buf.append(b)
                self._state = _HEADER
            elif b == SOF0:
                self._inc("garbage_bytes")  # the earlier 0xA5; this one may start the SOF
                self._sof_ms = now_ms
            else:
                self._inc("garbage_bytes", 2)
                self._reset()
            return None
        self._buf.append(b)
        if state == _HEADER:
            if len(self._buf) == HEADER_LEN:
                if self._buf[2] != VERSION or self._buf[5] > MAX_PAYLOAD:
                    self._inc("bad_header")
                    return self._rescan()
                self._need = HEADER_LEN + self._buf[5] + 2
                self._state = _BODY
            return None
        if len(self._buf) < self._need:
            return None
        buf = self._buf
        n = self._need
        if crc16(buf[2:n - 2]) != (buf[n - 2] << 8) | buf[n - 1]:
            self._inc("bad_crc")
            return self._rescan()
        self._reset()
        return self._decode(buf[3], buf[4], bytes(buf[HEADER_LEN:n - 2]))

    def _rescan(self):
        rest = self._buf[1:]
        self._reset()
        return rest

    def _decode(self, mtype, seq, payload):
        if mtype not in self.accept or mtype not in FORMATS:
            self._inc("unknown_type")
            return Frame(mtype, seq, payload, None, ERR_UNKNOWN_TYPE)
        try:
            fields = unpack_payload(mtype, payload)
        except ValueError:
            self._inc("bad_payload")
            return Frame(mtype, seq, payload, None, ERR_BAD_PAYLOAD)
        self.frames_ok += 1
        return Frame(mtype, seq, payload, fields, ERR_NONE)
