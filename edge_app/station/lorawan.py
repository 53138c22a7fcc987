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

Unit of a device: the ``--lorawan-devices`` file (``DEVEUI = "LL-042"``), else the device name
the operator gave it on the network server (ChirpStack ``deviceName``, TTN ``device_id``).

Sequence numbers: an alert carries the low 16 bits of the trap's ``seq``. The full number is
rebuilt from the last one seen for the unit (the nearest value with those low bits), which is
exact until a unit's counter passes 65 536 with nobody listening; deduplication against MQTT
uses the low 16 bits only, so it is exact regardless.

Bad input (not JSON, missing fields, bad base64, a payload the codec refuses) is logged,
counted and skipped; nothing here raises into the receiver.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_app.core import lora_codec as codec
from edge_app.core.clock import rfc3339
from edge_app.core.errors import ConfigError

logger = logging.getLogger(__name__)

CHIRPSTACK_UP = "application/+/device/+/event/up"
TTN_UP = "v3/+/devices/+/up"

Decoder = Callable[[str, bytes], dict[str, Any] | None]


@dataclass
class LorawanStats:
    """Counters of the LoRaWAN decoder."""

    uplinks: int = 0
    alerts: int = 0
    status: int = 0
    malformed: int = 0  # not an uplink message we can read
    codec_errors: int = 0  # the payload did not decode
    other_ports: int = 0
    by_name: int = 0  # unit taken from the device name (no DevEUI mapping)
    last_status: dict[str, dict[str, Any]] = field(default_factory=dict)


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
        key = str(eui).replace(":", "").replace("-", "").upper()
        if len(key) != 16 or not all(c in "0123456789ABCDEF" for c in key):
            raise ConfigError(f"--lorawan-devices:{eui}", f"{p}: not a 16-hex-digit DevEUI")
        if not isinstance(unit, str) or not unit:
            raise ConfigError(f"--lorawan-devices:{eui}", f"{p}: the unit must be a string")
        out[key] = unit
    return out


class LorawanDecoder:
    """Turns network-server uplink messages into alert events (see the module docstring).

    Args:
        devices: DevEUI (upper-case hex) → unit id.
        chirpstack: subscribe to ChirpStack v4 uplinks.
        ttn: subscribe to TTN v3 uplinks.
    """

    def __init__(self, devices: dict[str, str] | None = None, *, chirpstack: bool = True,
                 ttn: bool = True) -> None:
        self.devices = {k.upper(): v for k, v in (devices or {}).items()}
        self._chirpstack = chirpstack
        self._ttn = ttn
        self._last_seq: dict[str, int] = {}
        self.stats = LorawanStats()

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
        body = self._json(topic, payload)
        if body is None:
            return None
        info = body.get("deviceInfo")
        info = info if isinstance(info, dict) else {}
        dev_eui = info.get("devEui") or topic.split("/")[3]
        rx = body.get("rxInfo")
        rx0 = rx[0] if isinstance(rx, list) and rx and isinstance(rx[0], dict) else {}
        lora = _dig(body, "txInfo", "modulation", "lora")
        meta = {"network": "chirpstack", "fcnt": body.get("fCnt"), "rssi": rx0.get("rssi"),
                "snr": rx0.get("snr"), "sf": lora.get("spreadingFactor")}
        return self._uplink(topic, str(dev_eui), info.get("deviceName"), body.get("fPort"),
                            body.get("data"), meta)

    def ttn(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """A The Things Stack v3 ``up`` message → alert event (None if not an alert)."""
        body = self._json(topic, payload)
        if body is None:
            return None
        ids = body.get("end_device_ids")
        ids = ids if isinstance(ids, dict) else {}
        up = body.get("uplink_message")
        if not isinstance(up, dict):
            self._malformed(topic, "no uplink_message")
            return None
        rx = up.get("rx_metadata")
        rx0 = rx[0] if isinstance(rx, list) and rx and isinstance(rx[0], dict) else {}
        lora = _dig(up, "settings", "data_rate", "lora")
        meta = {"network": "ttn", "fcnt": up.get("f_cnt"), "rssi": rx0.get("rssi"),
                "snr": rx0.get("snr"), "sf": lora.get("spreading_factor")}
        name = ids.get("device_id") or topic.split("/")[3]
        return self._uplink(topic, str(ids.get("dev_eui") or ""), name, up.get("f_port"),
                            up.get("frm_payload"), meta)

    # -- common -------------------------------------------------------------------------

    def _json(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            self._malformed(topic, "not a JSON object")
            return None
        return body

    def _malformed(self, topic: str, why: str) -> None:
        self.stats.malformed += 1
        logger.warning("lorawan: malformed uplink on %s: %s", topic, why)

    def unit_of(self, dev_eui: str, name: Any) -> str | None:
        """The unit of a device: the DevEUI mapping, else the network server's device name."""
        unit = self.devices.get(dev_eui.replace(":", "").upper())
        if unit is None and isinstance(name, str) and name:
            self.stats.by_name += 1
            unit = name.upper() if name.islower() else name
        return unit

    def _uplink(self, topic: str, dev_eui: str, name: Any, fport: Any, data: Any,
                meta: dict[str, Any]) -> dict[str, Any] | None:
        self.stats.uplinks += 1
        if not isinstance(fport, int) or isinstance(fport, bool) or not isinstance(data, str):
            self._malformed(topic, "fPort or payload missing")
            return None
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self._malformed(topic, "payload is not base64")
            return None
        if fport not in (codec.PORT_ALERT, codec.PORT_STATUS):
            self.stats.other_ports += 1
            logger.info("lorawan: %s sent %d byte(s) on fPort %d (not ours)", dev_eui, len(raw),
                        fport)
            return None
        unit = self.unit_of(dev_eui, name)
        if unit is None:
            self._malformed(topic, f"unknown device {dev_eui} and no device name")
            return None
        res = codec.decode_uplink(fport, raw)
        for w in res.warnings:
            logger.warning("lorawan: %s: %s", unit, w)
        if not res.ok:
            self.stats.codec_errors += 1
            logger.warning("lorawan: %s: payload %s refused: %s", unit, raw.hex(),
                           "; ".join(res.errors))
            return None
        meta = {**meta, "dev_eui": dev_eui.upper(), "fport": fport}
        if fport == codec.PORT_STATUS:
            self.stats.status += 1
            self.stats.last_status[unit] = res.data
            logger.info("lorawan: unit %s status: %s", unit, res.data)
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


def dedupe_key(event: dict[str, Any]) -> tuple[str, int] | None:
    """(unit, low 16 bits of seq): what a LoRa alert and its MQTT event have in common."""
    unit, seq = event.get("unit"), event.get("seq")
    if not isinstance(unit, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return unit, seq & 0xFFFF
