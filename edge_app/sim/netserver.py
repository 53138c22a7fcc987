"""An emulated LoRaWAN network server that publishes what it hears to a real MQTT broker.

It plays the part of ChirpStack v4 (MQTT integration, JSON encoding) or The Things Stack v3
(TTN's MQTT server): the formats are those of ``../shared/reference/protocols.md`` §3 —
ChirpStack ``application/<app id>/device/<devEui>/event/up`` with base64 ``data``, camelCase
fields, default values emitted; TTN ``v3/<app>@<tenant>/devices/<device id>/up`` with
``uplink_message.frm_payload`` and a string ``frequency``. Both are published at QoS 0 and
never retained, as the real servers do. Downlinks are taken from the servers' own downlink
topics (ChirpStack ``…/command/down``, TTN ``…/down/push``) and delivered in RX1 after the
device's next uplink (class A).

The radio side (:meth:`join`, :meth:`uplink`) is called by the pty modem emulators. The OTAA
check is emulated, not computed: a JoinRequest is accepted when the device is registered with
the same JoinEUI and AppKey (which is what the MIC check decides on a real server). A
confirmed uplink repeated with the same frame counter is ACKed again but not published twice,
as ChirpStack drops ``UPLINK_F_CNT_RETRANSMISSION``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.core.clock import Clock, SystemClock
from edge_app.sim.modems import NetworkAnswer, UplinkFrame
from edge_app.trap.uplink.airtime import dr_to_sf

logger = logging.getLogger(__name__)

Flavour = Literal["chirpstack", "ttn"]


@dataclass
class Device:
    dev_eui: str
    join_eui: str
    app_key: str
    name: str
    dev_addr: str = ""
    last_fcnt: int | None = None
    downlinks: deque[tuple[int, bytes]] = field(default_factory=deque)


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="microseconds")


class NetworkServer:
    """ChirpStack- or TTN-flavoured network server on a broker.

    Args:
        host: broker host.
        port: broker port.
        flavour: ``chirpstack`` or ``ttn``.
        application_id: ChirpStack application UUID, or the TTN application id.
        tenant: TTN tenant (``ttn`` on The Things Network).
        region: region name shown in metadata.
        clock: wall time for the ``time`` fields.
    """

    def __init__(
        self,
        host: str,
        port: int,
        flavour: Flavour = "chirpstack",
        *,
        application_id: str | None = None,
        tenant: str = "ttn",
        region: str = "RU864",
        clock: Clock | None = None,
    ) -> None:
        self.host, self.port, self.flavour = host, port, flavour
        self.application_id = application_id or (
            "17c82e96-be03-4f38-aef3-f83d48582d97" if flavour == "chirpstack" else "camtrap-park")
        self.tenant = tenant
        self.region = region
        self.clock: Clock = clock or SystemClock()
        self.devices: dict[str, Device] = {}
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.joins = 0
        self.uplinks_heard = 0
        self.retransmissions = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"netserver-{flavour}-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5 if flavour == "chirpstack"
                                   else mqtt.MQTTv311)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> NetworkServer:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise OSError(f"network server: cannot connect to {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> NetworkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def register(self, dev_eui: str, join_eui: str, app_key: str, name: str) -> None:
        """Provision a device (what an operator does in the ChirpStack or TTN console)."""
        with self._lock:
            self.devices[dev_eui.upper()] = Device(dev_eui.upper(), join_eui.upper(),
                                                   app_key.upper(), name)

    # -- topics -------------------------------------------------------------------------

    def _device_topic(self, dev: Device) -> str:
        if self.flavour == "chirpstack":
            return f"application/{self.application_id}/device/{dev.dev_eui.lower()}"
        return f"v3/{self.application_id}@{self.tenant}/devices/{ttn_device_id(dev.name)}"

    def up_topic(self, dev: Device) -> str:
        return self._device_topic(dev) + ("/event/up" if self.flavour == "chirpstack" else "/up")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if self.flavour == "chirpstack":
            client.subscribe(f"application/{self.application_id}/device/+/command/down")
        else:
            client.subscribe(f"v3/{self.application_id}@{self.tenant}/devices/+/down/push")
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
            parts = msg.topic.split("/")
            if self.flavour == "chirpstack":
                dev_eui = parts[3].upper()
                items = [(int(body["fPort"]), base64.b64decode(body["data"]))]
            else:
                name = parts[3]
                dev_eui = next(d.dev_eui for d in self.devices.values()
                               if ttn_device_id(d.name) == name)
                items = [(int(d["f_port"]), base64.b64decode(d["frm_payload"]))
                         for d in body["downlinks"]]
        except (ValueError, KeyError, TypeError, IndexError, StopIteration) as e:
            logger.warning("network server: bad downlink on %s: %s", msg.topic, e)
            return
        for port, data in items:
            self.enqueue_downlink(dev_eui, port, data)

    def enqueue_downlink(self, dev_eui: str, port: int, data: bytes) -> None:
        """Queue a downlink for the device's next uplink."""
        with self._lock:
            dev = self.devices.get(dev_eui.upper())
            if dev is not None:
                dev.downlinks.append((port, data))

    # -- radio side ---------------------------------------------------------------------

    def join(self, dev_eui: str, join_eui: str, app_key: str, dr: int,
             freq_mhz: float) -> str | None:
        with self._lock:
            dev = self.devices.get(dev_eui.upper())
            if dev is None or dev.join_eui != join_eui.upper() or dev.app_key != app_key.upper():
                return None
            self.joins += 1
            dev.dev_addr = f"{(0x26000000 | int(dev.dev_eui[-5:], 16) << 4 | self.joins & 0xF):08x}"
            dev.last_fcnt = None
            dev_addr = dev.dev_addr
        self._publish_join(dev)
        return dev_addr

    def uplink(self, frame: UplinkFrame) -> NetworkAnswer:
        with self._lock:
            dev = self.devices.get(frame.dev_eui.upper())
            if dev is None or not dev.dev_addr or frame.dev_addr != dev.dev_addr:
                return NetworkAnswer(False)  # unknown session: a real server cannot decrypt it
            self.uplinks_heard += 1
            if dev.last_fcnt is not None and frame.fcnt <= dev.last_fcnt:
                self.retransmissions += 1
                return NetworkAnswer(frame.confirmed)
            dev.last_fcnt = frame.fcnt
            downlink = dev.downlinks.popleft() if dev.downlinks else None
        self._publish_up(dev, frame)
        return NetworkAnswer(frame.confirmed, downlink)

    # -- publishing ---------------------------------------------------------------------

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.published.append((topic, body))
        self._client.publish(topic, json.dumps(body), qos=0, retain=False)

    def _publish_join(self, dev: Device) -> None:
        now = self.clock.wall()
        if self.flavour == "chirpstack":
            self._publish(self._device_topic(dev) + "/event/join", {
                "deduplicationId": str(uuid.uuid4()), "time": _iso(now),
                "deviceInfo": self._device_info(dev), "devAddr": dev.dev_addr,
            })
        else:
            self._publish(self._device_topic(dev) + "/join", {
                "end_device_ids": self._ttn_ids(dev),
                "correlation_ids": [f"as:up:{uuid.uuid4().hex}"],
                "received_at": _iso(now).replace("+00:00", "Z"),
                "join_accept": {"session_key_id": base64.b64encode(uuid.uuid4().bytes).decode(),
                                "received_at": _iso(now).replace("+00:00", "Z")},
            })

    def _device_info(self, dev: Device) -> dict[str, Any]:
        return {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
            "applicationId": self.application_id, "applicationName": "camtrap",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
            "deviceProfileName": f"camtrap {self.region} class A",
            "deviceName": dev.name, "devEui": dev.dev_eui.lower(),
            "deviceClassEnabled": "CLASS_A", "tags": {},
        }

    def _ttn_ids(self, dev: Device) -> dict[str, Any]:
        return {"device_id": ttn_device_id(dev.name),
                "application_ids": {"application_id": self.application_id},
                "dev_eui": dev.dev_eui, "join_eui": dev.join_eui, "dev_addr": dev.dev_addr.upper()}

    def _publish_up(self, dev: Device, f: UplinkFrame) -> None:
        now = self.clock.wall()
        sf, bw = dr_to_sf(f.dr)
        data = base64.b64encode(f.payload).decode()
        if self.flavour == "chirpstack":
            body: dict[str, Any] = {
                "deduplicationId": str(uuid.uuid4()),
                "time": _iso(now),
                "deviceInfo": self._device_info(dev),
                "devAddr": dev.dev_addr,
                "adr": True,
                "dr": f.dr,
                "fCnt": f.fcnt,
                "fPort": f.fport,
                "confirmed": f.confirmed,
                "data": data,
                "rxInfo": [{
                    "gatewayId": "0016c001f153a14c", "uplinkId": 4217106255,
                    "rssi": int(f.rssi), "snr": f.snr, "context": "E3OWOQ==",
                    "metadata": {"region_name": self.region.lower(),
                                 "region_common_name": self.region},
                    "crcStatus": "CRC_OK",
                }],
                "txInfo": {"frequency": round(f.freq_mhz * 1e6),
                           "modulation": {"lora": {"bandwidth": bw, "spreadingFactor": sf,
                                                   "codeRate": "CR_4_5"}}},
                "regionConfigId": self.region.lower(),
            }
        else:
            ts = _iso(now).replace("+00:00", "Z")
            body = {
                "end_device_ids": self._ttn_ids(dev),
                "correlation_ids": [f"as:up:{uuid.uuid4().hex}", f"gs:uplink:{uuid.uuid4().hex}"],
                "received_at": ts,
                "uplink_message": {
                    "session_key_id": base64.b64encode(dev.dev_addr.encode()).decode(),
                    "f_port": f.fport,
                    "f_cnt": f.fcnt,
                    "frm_payload": data,
                    "rx_metadata": [{
                        "gateway_ids": {"gateway_id": "ridge-gw-1", "eui": "0016C001F153A14C"},
                        "time": ts, "timestamp": 2936000123, "rssi": int(f.rssi),
                        "channel_rssi": int(f.rssi), "snr": f.snr,
                        "uplink_token": base64.b64encode(uuid.uuid4().bytes).decode(),
                    }],
                    "settings": {
                        "data_rate": {"lora": {"bandwidth": bw, "spreading_factor": sf,
                                               "coding_rate": "4/5"}},
                        "frequency": str(round(f.freq_mhz * 1e6)),
                        "timestamp": 2936000123, "time": ts,
                    },
                    "received_at": ts,
                    "confirmed": f.confirmed,
                    "consumed_airtime": f"{f.airtime_s:.6f}s",
                    "network_ids": {"net_id": "000013", "tenant_id": self.tenant,
                                    "cluster_id": "eu1",
                                    "cluster_address": "eu1.cloud.thethings.network"},
                },
            }
        self._publish(self.up_topic(dev), body)


def ttn_device_id(name: str) -> str:
    """TTN device ids are lower-case letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())
