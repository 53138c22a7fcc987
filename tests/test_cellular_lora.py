"""The cellular link's health in the LoRaWAN status (fPort 11, flag bits 4..7): the stage's
state read from ModemManager (python-dbusmock on a private ``dbus-daemon``), carried by the
trap's status report, decoded by the station — so the station knows why MQTT went silent."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import dbus
import pytest
from store_support import make_cfg
from test_cellular_dbus import BEARER_PATH, Mock, bus_address, mock  # noqa: F401
from test_cellular_stage import session_bus  # noqa: F401

from edge_app.core import lora_codec as codec
from edge_app.core.clock import SystemClock
from edge_app.station.lorawan import LorawanDecoder
from edge_app.trap.cellular.modem import BEARER, GPP
from edge_app.trap.cellular.stage import LinkWork, lora_state, make_cellular
from edge_app.trap.uplink.router import status_figures

DEV = "70B3D57ED0061234"


def station_reads(payload: bytes) -> dict[str, object]:
    dec = LorawanDecoder({DEV: "LL-042"})
    msg = json.dumps({"deviceInfo": {"deviceName": "ll-042", "devEui": DEV.lower()},
                      "fCnt": 1, "fPort": codec.PORT_STATUS,
                      "data": base64.b64encode(payload).decode()}).encode()
    assert dec.chirpstack(f"application/app/device/{DEV.lower()}/event/up", msg) is None
    return dec.stats.last_status["LL-042"]


def test_the_stage_state_maps_to_the_codec_states() -> None:
    def st(link: str, quality: int | None = 70) -> dict[str, object]:
        return {"link": {"state": link}, "signal": {"quality": quality}}

    assert lora_state(st("up"), 0, "connected") == ("up", False)
    assert lora_state(st("down"), 0, "disabled") == ("idle", False)
    assert lora_state(st("no signal", 0), 0, "searching") == ("no_signal", True)
    assert lora_state(st("no modem", None), 0, "absent") == ("no_modem", False)
    assert lora_state(st("connecting", 12), 0, "registered") == ("connecting", True)
    assert lora_state(st("connecting"), 3, "registered") == ("failing", False)
    assert lora_state(st("connecting"), 0, "locked") == ("modem_error", False)
    for state, _low in [lora_state(st(s), f, "registered") for s in
                        ("up", "down", "no signal", "no modem", "connecting")
                        for f in (0, 1)]:
        assert state in codec.CELL_STATES[1:]


def test_registration_lost_reaches_the_station_in_the_lora_status(
        tmp_path: Path, mock: Mock, session_bus: str,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    mock.add_lte_modem(state=8)
    cfg = make_cfg(tmp_path / "data", cellular={"enabled": True, "mode": "always",
                                                "signal_rate_s": 0})
    stage = make_cellular(cfg, SystemClock(), lambda: LinkWork())
    assert stage is not None
    try:
        stage.step()  # connect
        stage.step()
        assert stage.lora_state() == ("up", False)
        up = codec.encode_status(status_figures(
            lambda: codec.Status(cellular="up"), mqtt_up=True, backlog=False))
        assert station_reads(up)["cellular"] == "up"
        # registration lost: the bearer drops, the modem searches with no signal
        mock.obj(BEARER_PATH).UpdateProperties(BEARER, {"Connected": False})
        mock.set_modem(State=dbus.Int32(7), SignalQuality=dbus.Struct((dbus.UInt32(3), True)))
        mock.obj("/org/freedesktop/ModemManager1/Modems/8").UpdateProperties(
            GPP, {"RegistrationState": dbus.UInt32(2)})
        stage.step()
        cell, low = stage.lora_state()
        assert (cell, low) == ("no_signal", True)
        payload = codec.encode_status(status_figures(
            lambda: codec.Status(battery_v=3.7, outbox_depth=2, cellular=cell,
                                 cell_signal_low=low), mqtt_up=False, backlog=True))
        assert len(payload) == codec.STATUS_BYTES  # still 11 bytes: DR0 everywhere
        caplog.set_level(logging.INFO)
        seen = station_reads(payload)
        assert (seen["cellular"], seen["cell_signal_low"], seen["mqtt_connected"],
                seen["outbox_depth"]) == ("no_signal", True, False, 2)
        assert "LL-042: cellular link no_signal, signal low" in caplog.text
    finally:
        stage.link.client.close(final=True)


def test_a_status_without_cellular_is_the_same_eleven_bytes_as_before() -> None:
    plain = codec.Status(battery_v=3.9, temp_c=-21.0, disk_free_gb=12.3, outbox_depth=4,
                         uptime_min=4912)
    payload = codec.encode_status(plain)
    assert payload[10] & 0xF0 == 0
    data = codec.decode_uplink(codec.PORT_STATUS, payload).data
    assert "cellular" not in data
    assert "cell_signal_low" not in data
