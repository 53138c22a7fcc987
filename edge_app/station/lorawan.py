"""Ranger side of the LoRaWAN link: network-server uplinks → camtrap alert events.

``camtrap alerts`` subscribes (through the hook in :class:`edge_app.station.receiver.Receiver`) to

* ChirpStack v4: ``application/+/device/+/event/up`` (JSON integration; base64 ``data``),
* The Things Stack v3: ``v3/+/devices/+/up`` (``uplink_message.frm_payload``),

decodes the frame payload with our own codec (:mod:`edge_app.core.lora_codec` — not the server's
``object``/``decoded_payload``, which may come from an older ``codec.js``), maps the DevEUI to
the trap's unit id, and hands the receiver an event shaped like the MQTT event JSON (``id``,
``unit``, ``seq``, ``ts``, ``label``, ``species``, ``score`` …, plus ``source: "lorawan"``), so
``format_alert`` and ``--json`` treat both paths alike. The receiver then shows each alert once:
a LoRa alert and the later MQTT event of the same unit and seq are the same alert.

**Only the fleet's devices count.** The unit of an uplink is the one the ``--lorawan-devices``
file gives its DevEUI, nothing else. An uplink from any other DevEUI is counted per DevEUI
(:attr:`LorawanStats.unknown_devices`), reported once as unknown, and never turned into an
alert: the device *name* is whatever someone typed on the network server, and trusting it would
let any device registered there speak as a unit. The ChirpStack DevEUI is the topic's (the
network server's own), and a body that names another is refused.

Sequence numbers: an alert carries the low 16 bits of the trap's ``seq``. The full number is
rebuilt from the last one seen for the unit (the nearest value with those low bits), which is
exact until a unit's counter passes 65 536 with nobody listening; deduplication against MQTT
uses the low 16 bits only, so it is exact regardless.

Every uplink passes the guarded door (:mod:`edge_app.core.guard`: size, depth, no NaN) and
field checks; a refusal is counted per kind (:attr:`LorawanDecoder.refusals`, and the counters
of :class:`LorawanStats`) and logged with a throttle; nothing here raises into the receiver.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.core import lora_codec as codec
from edge_app.core.clock import Clock, rfc3339
from edge_app.core.errors import ConfigError
from edge_app.core.guard import Limits, Refusals, Refused, parse_object
from edge_app.core.guard import field as get_field

logger = logging.getLogger(__name__)

CHIRPSTACK_UP = "application/+/device/+/event/up"
TTN_UP = "v3/+/devices/+/up"
UPLINK_LIMITS = Limits(max_bytes=64 * 1024)
"""A network server's uplink message: a few KiB (more with many gateways)."""
MAX_UNKNOWN = 1000
"""Distinct unknown DevEUIs counted one by one; beyond that they are counted together."""
OTHERS = "others"

Decoder = Callable[[str, bytes], dict[str, Any] | None]


@dataclass
class LorawanStats:
    """Counters of the LoRaWAN decoder.

    Attributes:
        uplinks: uplink messages received.
        alerts: alerts decoded (from the fleet's devices).
        status: status frames decoded.
        malformed: messages refused at the door (kinds in ``LorawanDecoder.refusals``).
        codec_errors: frames on our ports that our codec refused.
        other_ports: frames on other fPorts (not ours; ignored).
        unknown: uplinks from devices not in the fleet's device list.
        unknown_devices: DevEUI → uplinks, for those (at most :data:`MAX_UNKNOWN` DevEUIs,
            the rest under ``"others"``).
        last_status: unit → its last decoded status.
    """

    uplinks: int = 0
    alerts: int = 0
    status: int = 0
    malformed: int = 0
    codec_errors: int = 0
    other_ports: int = 0
    unknown: int = 0
    unknown_devices: dict[str, int] = field(default_factory=dict)
    last_status: dict[str, dict[str, Any]] = field(default_factory=dict)


def _eui(text: str) -> str | None:
    """A DevEUI in canonical form (16 upper-case hex digits; ``:`` / ``-`` removed), or None."""
    key = text.replace(":", "").replace("-", "").upper()
    return key if len(key) == 16 and all(c in "0123456789ABCDEF" for c in key) else None


def load_devices(path: str | os.PathLike[str]) -> dict[str, str]:
    """DevEUI → unit from a TOML file: ``"70B3D57ED0061234" = "LL-042"`` lines, at top level
    or under ``[devices]``.

    Raises:
        ConfigError: unreadable file or a malformed entry.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError("--lorawan-devices", f"cannot read {p}: {e}") from e
    table = data.get("devices", data)
    if not isinstance(table, dict):
        raise ConfigError("--lorawan-devices", f"{p}: [devices] must be a table")
    out: dict[str, str] = {}
    for eui, unit in table.items():
        key = _eui(str(eui))
        if key is None:
            raise ConfigError(f"--lorawan-devices:{eui}", f"{p}: not a 16-hex-digit DevEUI")
        if not isinstance(unit, str) or not unit:
            raise ConfigError(f"--lorawan-devices:{eui}", f"{p}: the unit must be a string")
        out[key] = unit
    return out


class LorawanDecoder:
    """Turns network-server uplink messages into alert events (see the module docstring).

    Args:
        devices: the fleet: DevEUI (hex, any case, ``:`` / ``-`` allowed) → unit id.
        chirpstack: subscribe to ChirpStack v4 uplinks.
        ttn: subscribe to TTN v3 uplinks.
        clock: for the refusal log throttle.
    """

    def __init__(self, devices: dict[str, str] | None = None, *, chirpstack: bool = True,
                 ttn: bool = True, clock: Clock | None = None) -> None:
        self.devices = {_eui(k) or k.upper(): v for k, v in (devices or {}).items()}
        self._chirpstack = chirpstack
        self._ttn = ttn
        self._last_seq: dict[str, int] = {}
        self.stats = LorawanStats()
        self.refusals = Refusals("lorawan", clock)

    def sources(self) -> list[tuple[str, Decoder]]:
        """(topic filter, decoder) pairs for the receiver (``Receiver(extra=...)``)."""
        out: list[tuple[str, Decoder]] = []
        if self._chirpstack:
            out.append((CHIRPSTACK_UP, self.chirpstack))
        if self._ttn:
            out.append((TTN_UP, self.ttn))
        return out

    # -- network-server formats -----------------------------------------------------------

    def chirpstack(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """A ChirpStack v4 ``event/up`` message → alert event (None if not an alert)."""
        return self._guarded(topic, lambda: self._chirpstack_up(topic, payload))

    def ttn(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """A The Things Stack v3 ``up`` message → alert event (None if not an alert)."""
        return self._guarded(topic, lambda: self._ttn_up(topic, payload))

    def _guarded(self, topic: str, decode: Callable[[], dict[str, Any] | None],
                 ) -> dict[str, Any] | None:
        self.stats.uplinks += 1
        try:
            return decode()
        except Refused as r:
            if r.kind == "codec":
                self.stats.codec_errors += 1
            else:
                self.stats.malformed += 1
            self.refusals.count(r, topic)
            return None

    def _chirpstack_up(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        body = parse_object(payload, UPLINK_LIMITS)
        parts = topic.split("/")
        dev_eui = _eui(parts[3]) if len(parts) > 3 else None
        if dev_eui is None:
            raise Refused("bad_deveui", "the topic names no DevEUI")
        info = body.get("deviceInfo")
        info = info if isinstance(info, dict) else {}
        named = get_field(info, "devEui", str, max_len=64, required=False)
        if named is not None and _eui(named) != dev_eui:
            raise Refused("deveui_mismatch", f"the body names {named[:24]!r}, the topic "
                          f"{dev_eui}")
        rx = body.get("rxInfo")
        rx0 = rx[0] if isinstance(rx, list) and rx and isinstance(rx[0], dict) else {}
        lora = _dig(body, "txInfo", "modulation", "lora")
        meta = {"network": "chirpstack", "fcnt": _int(body.get("fCnt")),
                "rssi": _num(rx0.get("rssi")), "snr": _num(rx0.get("snr")),
                "sf": _int(lora.get("spreadingFactor"))}
        return self._uplink(dev_eui, body.get("fPort"), body.get("data"), meta)

    def _ttn_up(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        body = parse_object(payload, UPLINK_LIMITS)
        ids = body.get("end_device_ids")
        ids = ids if isinstance(ids, dict) else {}
        up = body.get("uplink_message")
        if not isinstance(up, dict):
            raise Refused("missing", "no uplink_message")
        dev_eui = _eui(get_field(ids, "dev_eui", str, max_len=64))
        if dev_eui is None:
            raise Refused("bad_deveui", "end_device_ids.dev_eui is not a DevEUI")
        rx = up.get("rx_metadata")
        rx0 = rx[0] if isinstance(rx, list) and rx and isinstance(rx[0], dict) else {}
        lora = _dig(up, "settings", "data_rate", "lora")
        meta = {"network": "ttn", "fcnt": _int(up.get("f_cnt")), "rssi": _num(rx0.get("rssi")),
                "snr": _num(rx0.get("snr")), "sf": _int(lora.get("spreading_factor"))}
        return self._uplink(dev_eui, up.get("f_port"), up.get("frm_payload"), meta)

    # -- common -------------------------------------------------------------------------

    def unit_of(self, dev_eui: str) -> str | None:
        """The unit of a device in the fleet's list; None for any other device."""
        key = _eui(dev_eui)
        return None if key is None else self.devices.get(key)

    def _unknown(self, dev_eui: str) -> None:
        """Count an uplink of a device outside the fleet; report each DevEUI once."""
        self.stats.unknown += 1
        known = self.stats.unknown_devices
        key = dev_eui if dev_eui in known or len(known) < MAX_UNKNOWN else OTHERS
        if key not in known and key != OTHERS:
            logger.warning("lorawan: uplink from unknown device %s (not in --lorawan-devices): "
                           "counted, not shown as a unit", dev_eui)
        known[key] = known.get(key, 0) + 1

    def _uplink(self, dev_eui: str, fport: Any, data: Any,
                meta: dict[str, Any]) -> dict[str, Any] | None:
        if not isinstance(fport, int) or isinstance(fport, bool) or not isinstance(data, str):
            raise Refused("missing", "fPort or payload missing")
        if len(data) > 1024:
            raise Refused("too_large", f"{len(data)} characters of payload")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("not_base64", "the payload is not base64") from None
        if fport not in (codec.PORT_ALERT, codec.PORT_STATUS):
            self.stats.other_ports += 1
            logger.info("lorawan: %s sent %d byte(s) on fPort %d (not ours)", dev_eui, len(raw),
                        fport)
            return None
        unit = self.unit_of(dev_eui)
        if unit is None:
            self._unknown(dev_eui)
            return None
        res = codec.decode_uplink(fport, raw)
        for w in res.warnings:
            logger.warning("lorawan: %s: %s", unit, w)
        if not res.ok:
            raise Refused("codec", f"{unit}: payload {raw.hex()} refused: "
                          f"{'; '.join(res.errors)}")
        meta = {**meta, "dev_eui": dev_eui, "fport": fport}
        if fport == codec.PORT_STATUS:
            self.stats.status += 1
            self.stats.last_status[unit] = res.data
            logger.info("lorawan: unit %s status: %s", unit, res.data)
            cell = res.data.get("cellular")
            if cell not in (None, "up", "idle"):  # why MQTT went silent
                logger.warning("lorawan: unit %s: cellular link %s%s", unit, cell,
                               ", signal low" if res.data.get("cell_signal_low") else "")
            return None
        self.stats.alerts += 1
        return self.alert_event(unit, res.data, meta)

    def full_seq(self, unit: str, seq16: int) -> int:
        """The full seq nearest to the unit's last one with these low 16 bits."""
        last = self._last_seq.get(unit)
        if last is None:
            full = seq16
        else:
            full = (last & ~0xFFFF) | seq16
            if full < last - 0x8000:
                full += 0x10000
            elif full > last + 0x8000 and full >= 0x10000:
                full -= 0x10000
        self._last_seq[unit] = max(full, last or 0)
        return full

    def alert_event(self, unit: str, data: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """The event JSON of a decoded alert (the MQTT event's shape, ``source: lorawan``)."""
        seq = self.full_seq(unit, int(data["seq16"]))
        return {
            "id": f"{unit}-{seq}",
            "unit": unit,
            "seq": seq,
            "seq16": data["seq16"],
            "ts": rfc3339(float(data["time"])),
            "time_synced": data["time_synced"],
            "outcome": "alert",
            "label": data["label"],
            "species": data["species"],
            "score": data["confidence"],
            "count": data["count"],
            "detections": [],
            "frames": None,
            "media": [],
            "battery_v": data["battery_v"],
            "temp_c": None,
            "source": "lorawan",
            "lorawan": {**meta, "backlog": data["backlog"], "mqtt_down": data["mqtt_down"]},
        }


def _dig(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    cur: Any = d
    for k in keys:
        cur = cur.get(k) if isinstance(cur, dict) else None
    return cur if isinstance(cur, dict) else {}


def lorawan_sources(
    devices_file: str | None = None,
) -> tuple[LorawanDecoder, list[tuple[str, Decoder]]]:
    """The decoder for ``camtrap alerts`` and its (topic filter, decoder) pairs.

    Raises:
        ConfigError: the devices file is unreadable or malformed.
    """
    decoder = LorawanDecoder(load_devices(devices_file) if devices_file else None)
    return decoder, decoder.sources()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | int | None:
    """A finite number or None (the door already refused NaN and Infinity)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
