"""LoRaWAN payload codec v1: an alert in 11 bytes, a status in 11 bytes, downlink commands.

Why binary and why 11 bytes: at SF12 every byte costs airtime under a 1 % duty cycle (and
TTN's 30 s/day), and 11 bytes fit DR0 in every region with room for piggy-backed MAC commands.
The JavaScript twin ``deploy/lorawan/codec.js`` decodes the same bytes on ChirpStack v4 and
TTN v3 (``decodeUplink(input)`` → ``{data, warnings, errors}``); both are checked against the
shared vectors in ``tests/lorawan_vectors.json`` and against each other on random bytes.

Rules shared with the JS twin (keep them identical, or the vectors test fails):

* decoding never raises: malformed input (wrong length, unknown version, out-of-range value)
  gives ``errors``; an unknown but harmless value (a species code or flag bit from a newer
  firmware) gives ``warnings`` and still decodes;
* numbers are scaled with ``floor(x * k + 0.5)`` (Python's ``round`` rounds half to even, JS's
  ``Math.round`` half up; this is the same in both), and decoded as ``n / k``;
* all multi-byte integers are big-endian.

The cellular bits of the status (flags 4..7) came after the first v1 decoders, the way the
rules above allow without a version bump: they were reserved flag bits, which an older
decoder still decodes with a "reserved flag bits set" warning; a status without cellular
(bits 0) decodes exactly as before, with no ``cellular`` key. They tell the station why MQTT
went silent (the bearer idle by policy, no signal, no modem, connects failing).

Layouts (v1; byte 0 of an uplink carries the version in its top 3 bits)::

    alert, fPort 10 (11 bytes)
      0     version:3 | label:2 | species:3     label 0 empty 1 animal 2 person 3 vehicle;
                                                 species 0 none 1 leopard 2 tiger 3 other_big_cat
      1     confidence, % (0..100)
      2..5  event time, Unix seconds (u32)
      6..7  low 16 bits of the event seq (u16)  → the ranger matches the later MQTT event
      8     count of detections (u8, saturating)
      9     battery, 0.1 V (0..25.4 V; 0xFF unknown)
      10    flags: 0 time_synced, 1 backlog (more LoRa alerts waiting), 2 mqtt_down

    status, fPort 11 (11 bytes)
      0     version:3 | 0:5
      1     battery, 0.1 V (0xFF unknown)
      2     temperature, °C (i8; -128 unknown)
      3..4  disk free, 0.1 GB (u16, saturating)
      5..6  outbox depth (u16, saturating)
      7..9  uptime, minutes (u24, saturating)
      10    flags: 0 time_synced, 1 mqtt_connected, 2 disk_low, 3 lora_backlog,
            4..6 cellular (0 not reported: no key; 1 up 2 idle 3 connecting 4 no_signal
            5 no_modem 6 modem_error 7 failing), 7 cell_signal_low (only with 4..6)

    command, fPort 20 (downlink)
      0x01 target pct   set_threshold: target 0 detector, 1 species; pct 1..99
      0x02              request_status
      0x03 hours        set_status_interval (0 = off)
      0x04 mode         set_mode: 0 fallback, 1 always
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

VERSION = 1
PORT_ALERT = 10
PORT_STATUS = 11
PORT_COMMAND = 20
ALERT_BYTES = 11
STATUS_BYTES = 11

LABELS = ("empty", "animal", "person", "vehicle")
SPECIES: tuple[str | None, ...] = (None, "leopard", "tiger", "other_big_cat")
TARGETS = ("detector", "species")
MODES = ("fallback", "always")
COMMANDS = {1: "set_threshold", 2: "request_status", 3: "set_status_interval", 4: "set_mode"}

ALERT_FLAGS = ("time_synced", "backlog", "mqtt_down")
STATUS_FLAGS = ("time_synced", "mqtt_connected", "disk_low", "lora_backlog")
CELL_STATES: tuple[str | None, ...] = (None, "up", "idle", "connecting", "no_signal",
                                        "no_modem", "modem_error", "failing")
CELL_LOW = 0x80

U16 = 0xFFFF
U24 = 0xFFFFFF
U32 = 0xFFFFFFFF
BATTERY_UNKNOWN = 0xFF
TEMP_UNKNOWN = -128


@dataclass
class DecodeResult:
    """What ``decodeUplink`` returns: ``data`` is empty when ``errors`` is not."""

    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "warnings": self.warnings, "errors": self.errors}


@dataclass
class EncodeResult:
    """What ``encodeDownlink`` returns: ``bytes`` is empty when ``errors`` is not."""

    payload: bytes = b""
    fport: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def scale(x: float, k: int) -> int:
    """``floor(x * k + 0.5)``: the rounding both codecs use (see the module docstring)."""
    return math.floor(x * k + 0.5)


def iso_utc(t: int) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ`` (the JS twin prints exactly this)."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flags(byte: int, names: tuple[str, ...], data: dict[str, Any], warnings: list[str]) -> None:
    for i, name in enumerate(names):
        data[name] = bool(byte >> i & 1)
    reserved = byte & ~((1 << len(names)) - 1) & 0xFF
    if reserved:
        warnings.append(f"reserved flag bits set: 0x{reserved:02x}")


def _battery(b: int) -> float | None:
    return None if b == BATTERY_UNKNOWN else b / 10


# -- decoding ---------------------------------------------------------------------------------


def decode_uplink(fport: int, payload: bytes | bytearray | list[int]) -> DecodeResult:
    """Decode an uplink frame payload (the ``decodeUplink`` of the JS twin). Never raises."""
    b = _to_bytes(payload)
    res = DecodeResult()
    if b is None:
        res.errors.append("bytes must be integers 0..255")
        return res
    if not b:
        res.errors.append("empty payload")
        return res
    if fport not in (PORT_ALERT, PORT_STATUS):
        res.errors.append(f"unknown fPort {fport}")
        return res
    version = b[0] >> 5
    if version != VERSION:
        res.errors.append(f"unknown payload version {version}")
        return res
    if fport == PORT_ALERT:
        _decode_alert(b, res)
    else:
        _decode_status(b, res)
    if res.errors:
        res.data = {}
    return res


def _to_bytes(payload: object) -> bytes | None:
    """bytes, or a list of ints 0..255 (the JS ``input.bytes``); None for anything else."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if not isinstance(payload, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in payload):
        return None
    return bytes(payload)


def _decode_alert(b: bytes, res: DecodeResult) -> None:
    if len(b) != ALERT_BYTES:
        res.errors.append(f"alert: expected {ALERT_BYTES} bytes, got {len(b)}")
        return
    label = LABELS[b[0] >> 3 & 0x3]
    species_code = b[0] & 0x7
    species: str | None = None
    if species_code < len(SPECIES):
        species = SPECIES[species_code]
    else:
        res.warnings.append(f"unknown species code {species_code}")
    if b[1] > 100:
        res.errors.append(f"alert: confidence {b[1]}% out of range (0..100)")
        return
    t = int.from_bytes(b[2:6], "big")
    data: dict[str, Any] = {
        "type": "alert",
        "version": VERSION,
        "label": label,
        "species": species,
        "confidence": b[1] / 100,
        "time": t,
        "ts": iso_utc(t),
        "seq16": int.from_bytes(b[6:8], "big"),
        "count": b[8],
        "battery_v": _battery(b[9]),
    }
    _flags(b[10], ALERT_FLAGS, data, res.warnings)
    res.data = data


def _decode_status(b: bytes, res: DecodeResult) -> None:
    if len(b) != STATUS_BYTES:
        res.errors.append(f"status: expected {STATUS_BYTES} bytes, got {len(b)}")
        return
    if b[0] & 0x1F:
        res.warnings.append(f"reserved header bits set: 0x{b[0] & 0x1F:02x}")
    temp = b[2] - 256 if b[2] > 127 else b[2]
    data: dict[str, Any] = {
        "type": "status",
        "version": VERSION,
        "battery_v": _battery(b[1]),
        "temp_c": None if temp == TEMP_UNKNOWN else temp,
        "disk_free_gb": int.from_bytes(b[3:5], "big") / 10,
        "outbox_depth": int.from_bytes(b[5:7], "big"),
        "uptime_min": int.from_bytes(b[7:10], "big"),
    }
    _flags(b[10] & 0x0F, STATUS_FLAGS, data, res.warnings)
    cell = b[10] >> 4 & 0x7
    if cell:
        data["cellular"] = CELL_STATES[cell]
        data["cell_signal_low"] = bool(b[10] & CELL_LOW)
    elif b[10] & CELL_LOW:
        res.warnings.append(f"reserved flag bits set: 0x{CELL_LOW:02x}")
    res.data = data


def decode_downlink(fport: int, payload: bytes | bytearray | list[int]) -> DecodeResult:
    """Decode a command downlink (the ``decodeDownlink`` of the JS twin). Never raises."""
    b = _to_bytes(payload)
    res = DecodeResult()
    if b is None:
        res.errors.append("bytes must be integers 0..255")
        return res
    if fport != PORT_COMMAND:
        res.errors.append(f"unknown fPort {fport}")
        return res
    if not b:
        res.errors.append("command: empty")
        return res
    name = COMMANDS.get(b[0])
    if name is None:
        res.errors.append(f"unknown command 0x{b[0]:02x}")
        return res
    want = {"set_threshold": 3, "request_status": 1, "set_status_interval": 2, "set_mode": 2}
    if len(b) != want[name]:
        res.errors.append(f"{name}: expected {want[name]} bytes, got {len(b)}")
        return res
    data: dict[str, Any] = {"command": name}
    if name == "set_threshold":
        if b[1] >= len(TARGETS):
            res.errors.append(f"set_threshold: unknown target {b[1]}")
        elif not 1 <= b[2] <= 99:
            res.errors.append(f"set_threshold: threshold {b[2]}% out of range (1..99)")
        else:
            data["target"] = TARGETS[b[1]]
            data["threshold"] = b[2] / 100
    elif name == "set_status_interval":
        data["hours"] = b[1]
    elif name == "set_mode":
        if b[1] >= len(MODES):
            res.errors.append(f"set_mode: unknown mode {b[1]}")
        else:
            data["mode"] = MODES[b[1]]
    if not res.errors:
        res.data = data
    return res


# -- encoding ---------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    """``v`` as a float if it is a finite number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _int(v: Any) -> int | None:
    """``v`` as an int if it is a whole number (JSON cannot tell 3 from 3.0), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def _enc_battery(v: Any, errors: list[str]) -> int:
    if v is None:
        return BATTERY_UNKNOWN
    x = _num(v)
    if x is None or not 0 <= x <= 25.4:
        errors.append("battery_v must be null or a number in [0, 25.4]")
        return 0
    return scale(x, 10)


def _enc_flags(data: dict[str, Any], names: tuple[str, ...], errors: list[str]) -> int:
    byte = 0
    for i, name in enumerate(names):
        v = data.get(name, False)
        if not isinstance(v, bool):
            errors.append(f"{name} must be true or false")
        elif v:
            byte |= 1 << i
    return byte


def _unknown_keys(data: dict[str, Any], known: set[str], warnings: list[str]) -> None:
    warnings.extend(f"unknown field {k} ignored" for k in sorted(data) if k not in known)


_ALERT_KEYS = {"type", "version", "label", "species", "confidence", "time", "ts", "seq16", "seq",
               "count", "battery_v", *ALERT_FLAGS}
_STATUS_KEYS = {"type", "version", "battery_v", "temp_c", "disk_free_gb", "outbox_depth",
                "uptime_min", *STATUS_FLAGS, "cellular", "cell_signal_low"}


def encode_uplink(fport: int, data: Any) -> EncodeResult:
    """Encode an alert (fPort 10) or status (fPort 11) from the fields ``decode_uplink`` gives.

    Used by the trap (through :func:`encode_alert`/:func:`encode_status`) and by technicians
    (``camtrap lorawan encode``). Never raises: bad fields are reported in ``errors``.
    """
    res = EncodeResult(fport=fport)
    if not isinstance(data, dict):
        res.errors.append("data must be an object")
        return res
    if fport == PORT_ALERT:
        _encode_alert(data, res)
    elif fport == PORT_STATUS:
        _encode_status(data, res)
    else:
        res.errors.append(f"unknown fPort {fport}")
    if res.errors:
        res.payload = b""
    return res


def _encode_alert(d: dict[str, Any], res: EncodeResult) -> None:
    errors = res.errors
    _unknown_keys(d, _ALERT_KEYS, res.warnings)
    label = d.get("label")
    if label not in LABELS:
        errors.append("label must be one of empty, animal, person, vehicle")
        label = "empty"
    species = d.get("species")
    if species not in SPECIES:
        errors.append("species must be null or one of leopard, tiger, other_big_cat")
        species = None
    conf = _num(d.get("confidence"))
    if conf is None or not 0 <= conf <= 1:
        errors.append("confidence must be a number in [0, 1]")
        conf = 0.0
    t = _int(d.get("time"))
    if t is None or not 0 <= t <= U32:
        errors.append("time must be an integer in [0, 4294967295]")
        t = 0
    seq = _int(d["seq16"] if "seq16" in d else d.get("seq"))
    if seq is None or seq < 0 or ("seq16" in d and seq > U16):
        errors.append("seq16 must be an integer in [0, 65535] (or seq, any integer ≥ 0)")
        seq = 0
    count = _int(d.get("count", 1))
    if count is None or count < 0:
        errors.append("count must be an integer ≥ 0")
        count = 0
    battery = _enc_battery(d.get("battery_v"), errors)
    flags = _enc_flags(d, ALERT_FLAGS, errors)
    head = VERSION << 5 | LABELS.index(label) << 3 | SPECIES.index(species)
    res.payload = bytes([head, scale(conf, 100)]) + t.to_bytes(4, "big") + bytes(
        [seq >> 8 & 0xFF, seq & 0xFF, min(count, 255), battery, flags])


def _encode_status(d: dict[str, Any], res: EncodeResult) -> None:
    errors = res.errors
    _unknown_keys(d, _STATUS_KEYS, res.warnings)
    battery = _enc_battery(d.get("battery_v"), errors)
    temp = _num(d.get("temp_c"))
    if d.get("temp_c") is None:
        temp_b = TEMP_UNKNOWN
    elif temp is None or not -127 <= temp <= 127:
        errors.append("temp_c must be null or a number in [-127, 127]")
        temp_b = 0
    else:
        temp_b = scale(temp, 1)
    disk = _num(d.get("disk_free_gb", 0))
    if disk is None or disk < 0:
        errors.append("disk_free_gb must be a number ≥ 0")
        disk = 0.0
    depth = _int(d.get("outbox_depth", 0))
    if depth is None or depth < 0:
        errors.append("outbox_depth must be an integer ≥ 0")
        depth = 0
    uptime = _int(d.get("uptime_min", 0))
    if uptime is None or uptime < 0:
        errors.append("uptime_min must be an integer ≥ 0")
        uptime = 0
    flags = _enc_flags(d, STATUS_FLAGS, errors) | _enc_cellular(d, errors)
    res.payload = (bytes([VERSION << 5, battery, temp_b & 0xFF])
                   + min(scale(disk, 10), U16).to_bytes(2, "big")
                   + min(depth, U16).to_bytes(2, "big")
                   + min(uptime, U24).to_bytes(3, "big") + bytes([flags]))


def _enc_cellular(d: dict[str, Any], errors: list[str]) -> int:
    """Flag bits 4..7 of a status: the cellular state and its low-signal bit."""
    cell, low = d.get("cellular"), d.get("cell_signal_low", False)
    if not isinstance(low, bool):
        errors.append("cell_signal_low must be true or false")
        low = False
    if cell is None:
        if low:
            errors.append("cell_signal_low needs a cellular state")
        return 0
    if cell not in CELL_STATES[1:]:
        errors.append("cellular must be null or one of " + ", ".join(
            str(c) for c in CELL_STATES[1:]))
        return 0
    return CELL_STATES.index(cell) << 4 | (CELL_LOW if low else 0)


def encode_downlink(data: Any) -> EncodeResult:
    """Encode a command (the ``encodeDownlink`` of the JS twin); fPort is always 20."""
    res = EncodeResult(fport=PORT_COMMAND)
    if not isinstance(data, dict):
        res.errors.append("data must be an object")
        return res
    name = data.get("command")
    if name == "set_threshold":
        target, thr = data.get("target", "detector"), _num(data.get("threshold"))
        if target not in TARGETS:
            res.errors.append("target must be one of detector, species")
        if thr is None or not 0.01 <= thr <= 0.99:
            res.errors.append("threshold must be a number in [0.01, 0.99]")
        if not res.errors and thr is not None:
            res.payload = bytes([1, TARGETS.index(target), scale(thr, 100)])
    elif name == "request_status":
        res.payload = bytes([2])
    elif name == "set_status_interval":
        hours = _int(data.get("hours"))
        if hours is None or not 0 <= hours <= 255:
            res.errors.append("hours must be an integer in [0, 255]")
        else:
            res.payload = bytes([3, hours])
    elif name == "set_mode":
        mode = data.get("mode")
        if mode not in MODES:
            res.errors.append("mode must be one of fallback, always")
        else:
            res.payload = bytes([4, MODES.index(mode)])
    else:
        res.errors.append("command must be one of " + ", ".join(COMMANDS.values()))
    if res.errors:
        res.payload = b""
    return res


# -- typed helpers for the trap ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert as the trap knows it (built from a catalogue row)."""

    label: str
    species: str | None
    confidence: float
    time: int
    seq: int
    count: int = 1
    battery_v: float | None = None
    time_synced: bool = True
    backlog: bool = False
    mqtt_down: bool = False

    def to_data(self) -> dict[str, Any]:
        """The ``decode_uplink`` fields, clamped into their ranges (the trap must not fail to
        send an alert because a sensor read 26 V)."""
        battery = self.battery_v
        if battery is not None and not (math.isfinite(battery) and 0 <= battery <= 25.4):
            battery = None
        return {
            "label": self.label if self.label in LABELS else "animal",
            "species": self.species if self.species in SPECIES else None,
            "confidence": min(1.0, max(0.0, self.confidence))
            if math.isfinite(self.confidence) else 0.0,
            "time": min(U32, max(0, int(self.time))),
            "seq": max(0, self.seq),
            "count": max(0, self.count),
            "battery_v": battery,
            "time_synced": self.time_synced,
            "backlog": self.backlog,
            "mqtt_down": self.mqtt_down,
        }


def encode_alert(alert: Alert) -> bytes:
    """The 11-byte fPort-10 payload of ``alert`` (fields clamped, so this cannot fail)."""
    res = encode_uplink(PORT_ALERT, alert.to_data())
    assert res.ok, res.errors  # to_data() only produces valid fields
    return res.payload


@dataclass(frozen=True, slots=True)
class Status:
    """A status report (fPort 11)."""

    battery_v: float | None = None
    temp_c: float | None = None
    disk_free_gb: float = 0.0
    outbox_depth: int = 0
    uptime_min: int = 0
    time_synced: bool = True
    mqtt_connected: bool = False
    disk_low: bool = False
    lora_backlog: bool = False
    cellular: str | None = None
    cell_signal_low: bool = False


def encode_status(status: Status) -> bytes:
    """The 11-byte fPort-11 payload (values clamped into their ranges)."""
    battery = status.battery_v
    if battery is not None and not (math.isfinite(battery) and 0 <= battery <= 25.4):
        battery = None
    temp = status.temp_c
    if temp is not None:
        temp = min(127.0, max(-127.0, temp)) if math.isfinite(temp) else None
    disk = status.disk_free_gb if math.isfinite(status.disk_free_gb) else 0.0
    res = encode_uplink(PORT_STATUS, {
        "battery_v": battery, "temp_c": temp, "disk_free_gb": max(0.0, disk),
        "outbox_depth": max(0, status.outbox_depth), "uptime_min": max(0, status.uptime_min),
        "time_synced": status.time_synced, "mqtt_connected": status.mqtt_connected,
        "disk_low": status.disk_low, "lora_backlog": status.lora_backlog,
        **({"cellular": status.cellular, "cell_signal_low": status.cell_signal_low}
           if status.cellular in CELL_STATES[1:] else {}),
    })
    assert res.ok, res.errors
    return res.payload
