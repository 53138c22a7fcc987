"""Ranger side of LoRaWAN: network-server messages → alert events of the fleet's devices only;
bad input refused, counted and survived."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.core import lora_codec as codec
from edge_app.core.errors import ConfigError
from edge_app.station.lorawan import MAX_UNKNOWN, OTHERS, LorawanDecoder, load_devices
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


def test_an_unknown_deveui_is_counted_never_shown_as_a_unit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The device name is whatever someone typed on the network server: a device outside the
    fleet's list named like a unit must not speak as that unit."""
    dec = LorawanDecoder({DEV: "LL-042"})
    stranger = "0011223344556677"
    for _ in range(3):
        assert dec.chirpstack(CS_TOPIC.replace(DEV.lower(), stranger),
                              chirpstack(ALERT, name="ll-042", dev=stranger)) is None
    ttn_stranger = ttn(ALERT).replace(DEV.encode(), stranger.encode())
    assert dec.ttn(TTN_TOPIC, ttn_stranger) is None
    assert (dec.stats.unknown, dec.stats.unknown_devices) == (4, {stranger: 4})
    assert dec.stats.alerts == 0
    assert caplog.text.count(f"unknown device {stranger}") == 1  # reported once, then counted
    assert LorawanDecoder().ttn(TTN_TOPIC, ttn(ALERT)) is None  # no list: nobody is a unit


def test_unknown_devices_are_counted_within_a_bound() -> None:
    dec = LorawanDecoder()
    for n in range(MAX_UNKNOWN + 5):
        eui = f"{n:016X}"
        dec.chirpstack(f"application/a/device/{eui}/event/up", chirpstack(ALERT, dev=eui))
    assert len(dec.stats.unknown_devices) == MAX_UNKNOWN + 1
    assert dec.stats.unknown_devices[OTHERS] == 5


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


@pytest.mark.parametrize(("payload", "counter", "kind"), [
    (b"not json", "malformed", "not_json"),
    (b"[1, 2]", "malformed", "bad_type"),
    (b"[" * 100_000, "malformed", "too_large"),
    (b'{"fPort": 10, "data": "AA==", "fCnt": NaN}', "malformed", "non_finite"),
    (json.dumps({"fPort": 10}).encode(), "malformed", "missing"),
    (json.dumps({"deviceInfo": {"devEui": DEV}, "fPort": 10, "data": "%%%"}).encode(),
     "malformed", "not_base64"),
    (json.dumps({"deviceInfo": {"devEui": "0011223344556677"}, "fPort": 10,
                 "data": base64.b64encode(ALERT).decode()}).encode(), "malformed",
     "deveui_mismatch"),
    (json.dumps({"fPort": 10, "data": "A" * 2000}).encode(), "malformed", "too_large"),
    (chirpstack(ALERT[:5]), "codec_errors", "codec"),
    (chirpstack(b"\x00" * 11), "codec_errors", "codec"),
    (chirpstack(ALERT, port=99), "other_ports", None),
])
def test_bad_uplinks_are_counted_never_raised(payload: bytes, counter: str,
                                              kind: str | None) -> None:
    dec = LorawanDecoder({DEV: "LL-042"})
    assert dec.chirpstack(CS_TOPIC, payload) is None
    assert getattr(dec.stats, counter) == 1
    assert dec.refusals.snapshot() == ({kind: 1} if kind else {})
    assert dec.ttn(TTN_TOPIC, b"\xff\xfe") is None
    assert dec.ttn(TTN_TOPIC, json.dumps({"end_device_ids": {}}).encode()) is None
    assert dec.ttn(TTN_TOPIC, json.dumps({"uplink_message": {}}).encode()) is None
    assert dec.chirpstack("application/a/device/x/event/up", chirpstack(ALERT)) is None
    assert dec.stats.alerts == 0


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_any_bytes_on_the_uplink_topics_are_refused_or_an_alert_of_the_fleet(data: bytes) -> None:
    dec = LorawanDecoder({DEV: "LL-042"})
    for ev in (dec.chirpstack(CS_TOPIC, data), dec.ttn(TTN_TOPIC, data)):
        assert ev is None or ev["unit"] == "LL-042"
    assert dec.stats.uplinks == 2


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=12)


@given(dev=st.sampled_from([DEV, DEV.lower(), "0011223344556677", "zz", ""]),
       fport=st.one_of(st.sampled_from([10, 11, 99]), scalars),
       frame=st.one_of(st.just(ALERT), st.binary(max_size=20)),
       noise=st.dictionaries(st.sampled_from(["deviceInfo", "rxInfo", "txInfo", "fCnt",
                                              "end_device_ids", "uplink_message"]),
                             values, max_size=3))
@settings(max_examples=300)
def test_any_uplink_document_counts_only_for_the_fleet(dev: str, fport: Any, frame: bytes,
                                                       noise: dict[str, Any]) -> None:
    dec = LorawanDecoder({DEV: "LL-042"})
    data = base64.b64encode(frame).decode()
    cs = {**noise, "deviceInfo": {"devEui": dev, "deviceName": "LL-042"}, "fPort": fport,
          "data": data}
    tt = {**noise, "end_device_ids": {"dev_eui": dev, "device_id": "ll-042"},
          "uplink_message": {"f_port": fport, "frm_payload": data}}
    got = [dec.chirpstack(f"application/a/device/{dev}/event/up",
                          json.dumps(cs, allow_nan=True).encode()),
           dec.ttn(TTN_TOPIC, json.dumps(tt, allow_nan=True).encode())]
    for ev in got:
        if ev is not None:
            assert (ev["unit"], dev.upper()) == ("LL-042", DEV)
            assert ev["id"] == f"LL-042-{ev['seq']}"


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
