"""Ranger side of LoRaWAN: network-server messages → alert events; bad input survived."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from edge_app.core import lora_codec as codec
from edge_app.core.errors import ConfigError
from edge_app.station.lorawan import LorawanDecoder, load_devices
from edge_app.station.receiver import format_alert

DEV = "70B3D57ED0061234"
ALERT = codec.encode_alert(codec.Alert("animal", "leopard", 0.91, 1_790_000_000, 17,
                                       battery_v=3.9))


def chirpstack(payload: bytes, port: int = 10, name: str = "ll-042", dev: str = DEV) -> bytes:
    return json.dumps({
        "deviceInfo": {"deviceName": name, "devEui": dev.lower()}, "fCnt": 3, "fPort": port,
        "data": base64.b64encode(payload).decode(),
        "rxInfo": [{"rssi": -101, "snr": -3.5}],
        "txInfo": {"modulation": {"lora": {"spreadingFactor": 12}}}}).encode()


def ttn(payload: bytes, port: int = 10) -> bytes:
    return json.dumps({
        "end_device_ids": {"device_id": "ll-042", "dev_eui": DEV},
        "uplink_message": {"f_port": port, "f_cnt": 9, "frm_payload":
                           base64.b64encode(payload).decode(),
                           "rx_metadata": [{"rssi": -99, "snr": 1.0}],
                           "settings": {"data_rate": {"lora": {"spreading_factor": 10}}}}}
    ).encode()


CS_TOPIC = f"application/app/device/{DEV.lower()}/event/up"
TTN_TOPIC = "v3/camtrap@ttn/devices/ll-042/up"


def test_chirpstack_and_ttn_uplinks_become_the_same_alert_event() -> None:
    dec = LorawanDecoder({DEV: "LL-042"})
    a = dec.chirpstack(CS_TOPIC, chirpstack(ALERT))
    b = dec.ttn(TTN_TOPIC, ttn(ALERT))
    assert a is not None
    assert b is not None
    for ev in (a, b):
        assert (ev["id"], ev["unit"], ev["seq"], ev["label"], ev["species"], ev["score"]) == (
            "LL-042-17", "LL-042", 17, "animal", "leopard", 0.91)
        assert ev["ts"] == "2026-09-21T14:13:20.000+00:00"
        assert ev["source"] == "lorawan"
        assert ev["battery_v"] == 3.9
    assert (a["lorawan"]["network"], a["lorawan"]["sf"], a["lorawan"]["rssi"]) == (
        "chirpstack", 12, -101)
    assert (b["lorawan"]["network"], b["lorawan"]["sf"], b["lorawan"]["fcnt"]) == ("ttn", 10, 9)
    assert format_alert(a) == ("2026-09-21T14:13:20.000+00:00  LL-042  animal leopard 0.91  "
                               "score 0.91  LL-042-17  (LoRa: photo follows)")


def test_unit_from_the_device_name_when_unmapped() -> None:
    dec = LorawanDecoder()
    ev = dec.ttn(TTN_TOPIC, ttn(ALERT))
    assert ev is not None
    assert ev["unit"] == "LL-042"
    assert dec.stats.by_name == 1


def test_full_seq_is_rebuilt_across_the_16_bit_wrap() -> None:
    dec = LorawanDecoder()
    assert dec.full_seq("U", 65530) == 65530
    assert dec.full_seq("U", 3) == 65539  # wrapped
    assert dec.full_seq("U", 65534) == 65534  # a late one from before the wrap
    assert dec.full_seq("V", 3) == 3


def test_status_is_logged_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    dec = LorawanDecoder({DEV: "LL-042"})
    status = codec.encode_status(codec.Status(battery_v=3.6, temp_c=-30.0, outbox_depth=7))
    assert dec.chirpstack(CS_TOPIC, chirpstack(status, port=11)) is None
    assert dec.stats.status == 1
    assert dec.stats.last_status["LL-042"]["temp_c"] == -30
    assert "unit LL-042 status" in caplog.text


@pytest.mark.parametrize(("payload", "counter"), [
    (b"not json", "malformed"),
    (b"[1, 2]", "malformed"),
    (json.dumps({"fPort": 10}).encode(), "malformed"),
    (json.dumps({"deviceInfo": {"devEui": DEV}, "fPort": 10, "data": "%%%"}).encode(),
     "malformed"),
    (json.dumps({"deviceInfo": {"devEui": "00"}, "fPort": 10,
                 "data": base64.b64encode(ALERT).decode()}).encode(), "malformed"),
    (chirpstack(ALERT[:5]), "codec_errors"),
    (chirpstack(b"\x00" * 11), "codec_errors"),
    (chirpstack(ALERT, port=99), "other_ports"),
])
def test_bad_uplinks_are_counted_never_raised(payload: bytes, counter: str) -> None:
    dec = LorawanDecoder()
    assert dec.chirpstack(CS_TOPIC.replace(DEV.lower(), "x"), payload) is None
    assert getattr(dec.stats, counter) == 1
    assert dec.ttn(TTN_TOPIC, b"\xff\xfe") is None
    assert dec.ttn(TTN_TOPIC, json.dumps({"end_device_ids": {}}).encode()) is None


def test_devices_file(tmp_path: Path) -> None:
    p = tmp_path / "devices.toml"
    p.write_text('[devices]\n"70:B3:D5:7E:D0:06:12:34" = "LL-042"\n"0011223344556677" = "LL-7"\n')
    assert load_devices(p) == {DEV: "LL-042", "0011223344556677": "LL-7"}
    p.write_text('"1234" = "LL-1"\n')
    with pytest.raises(ConfigError, match="DevEUI"):
        load_devices(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_devices(tmp_path / "missing.toml")


def test_sources_are_the_two_network_servers() -> None:
    filters = [f for f, _d in LorawanDecoder().sources()]
    assert filters == ["application/+/device/+/event/up", "v3/+/devices/+/up"]
    only_ttn: list[Any] = LorawanDecoder(chirpstack=False).sources()
    assert [f for f, _d in only_ttn] == ["v3/+/devices/+/up"]
