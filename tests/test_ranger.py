"""The ranger side: the alert line, ``--broker`` parsing and ``camtrap alerts`` end to end."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from conftest import Broker
from store_support import burst_and_verdict, make_cfg, wait_for

from edge_app.station.alerts import AlertsOptions, run_alerts
from edge_app.station.receiver import Receiver, format_alert, parse_broker
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.mqtt import MqttLink

EVENT = {
    "id": "LL-042-17", "unit": "LL-042", "seq": 17, "ts": "2026-09-21T10:15:00.123+00:00",
    "time_synced": True, "outcome": "alert", "label": "animal", "species": "leopard",
    "score": 0.8, "detections": [{"category": "animal", "conf": 0.78, "species": "leopard",
                                  "species_conf": 0.91, "bbox": [0.1, 0.1, 0.2, 0.2]}],
    "frames": 3, "media": [], "battery_v": 3.9, "temp_c": 20.0,
}


def test_format_alert_is_one_human_line() -> None:
    line = format_alert(EVENT)
    assert line == ("2026-09-21T10:15:00.123+00:00  LL-042  animal leopard 0.91  score 0.80  "
                    "LL-042-17")
    assert "\n" not in line


def test_format_alert_tolerates_odd_events() -> None:
    person = dict(EVENT, label="person", species=None, time_synced=False, score="high")
    line = format_alert(person)
    assert "(clock not synced)" in line
    assert "person  score ?" in line
    assert format_alert({}) == "?  ?  ?  score ?  ?"


def test_parse_broker() -> None:
    assert parse_broker("127.0.0.1:1883") == ("127.0.0.1", 1883)
    assert parse_broker("[::1]:8883") == ("::1", 8883)
    for bad in ("localhost", ":1883", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError, match=r"HOST:PORT|out of range"):
            parse_broker(bad)


def test_run_alerts_rejects_a_bad_broker_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_alerts("nonsense", False, io.StringIO()) == 2
    assert "HOST:PORT" in capsys.readouterr().err


@pytest.mark.broker
@pytest.mark.parametrize("as_json", [False, True])
def test_camtrap_alerts_prints_one_line_per_alert(
    tmp_path: Path, broker: Broker, as_json: bool
) -> None:
    # First contact creates the receiver's session, so nothing is missed whichever of
    # `camtrap alerts` and the trap connects first below.
    first = Receiver("127.0.0.1", broker.port, client_id="ranger-cli")
    first.start()
    assert first.wait_connected(10)
    first.stop()
    out = io.StringIO()
    stop = threading.Event()
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(
        run_alerts(broker.address, as_json, out, stop, client_id="ranger-cli")))
    t.start()
    cfg = make_cfg(tmp_path / "data", broker.port)
    with EventStore(cfg) as store:
        link = MqttLink(cfg, store.db_path)
        store.notify = link.wake
        link_stop = threading.Event()
        lt = threading.Thread(target=link.run, args=(link_stop,))
        lt.start()
        try:
            store.record(*burst_and_verdict("alert", "person", None, 0.7))
            store.record(*burst_and_verdict("alert", "animal", "tiger", 0.9))
            wait_for(lambda: out.getvalue().count("\n") == 2, what="two lines")
        finally:
            link_stop.set()
            link.wake()
            lt.join(10)
            stop.set()
            t.join(10)
    assert rc == [0]
    lines = out.getvalue().splitlines()
    if as_json:
        events = [json.loads(line) for line in lines]
        assert [e["id"] for e in events] == ["T-1-1", "T-1-2"]
        assert events[1]["species"] == "tiger"
    else:
        assert lines[0].endswith("T-1-1")
        assert " person  score 0.70 " in lines[0]
        assert " animal tiger 0.90 " in lines[1]


def test_alerts_password_file_must_be_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o644)
    opts = AlertsOptions(password_file=str(pw))
    assert run_alerts("127.0.0.1:1883", False, io.StringIO(), options=opts) == 2
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.broker
def test_a_receiver_with_a_store_remembers_across_restarts_and_confirms_again(
    tmp_path: Path, broker: Broker
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acks: list[bytes] = []
    unit = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-unit",
                       protocol=mqtt.MQTTv5)
    unit.on_message = lambda c, u, m: acks.append(bytes(m.payload))
    unit.connect("127.0.0.1", broker.port)
    unit.loop_start()
    unit.subscribe("camtrap/LL-042/ack", qos=1)
    shown: list[str] = []
    try:
        for run in range(2):
            with Receiver("127.0.0.1", broker.port, client_id="ranger-store",
                          store_dir=tmp_path / "ranger",
                          on_alert=lambda e: shown.append(e["id"])) as r:
                assert r.wait_connected(10)
                unit.publish("camtrap/LL-042/event", json.dumps(EVENT).encode(),
                             qos=1).wait_for_publish(5)
                wait_for(lambda n=run: len(acks) == n + 1, what="a receipt")  # type: ignore[misc]
                assert r.store is not None
                assert r.store.event_count() == 1
        assert shown == ["LL-042-17"]  # shown once, although received twice
        assert [json.loads(a) for a in acks] == [{"ids": ["LL-042-17"]}] * 2
    finally:
        unit.disconnect()
        unit.loop_stop()
    from edge_app.station.store import RangerStore

    store = RangerStore(tmp_path / "ranger")
    try:
        assert store.duplicates() == 1
    finally:
        store.close()


def test_alerts_in_local_time_with_the_site_and_the_stored_picture(
        tmp_path: Path, broker: Broker) -> None:
    """Issue 12 item 5: the park is UTC+10 and its rangers read local time and place names;
    with --store the alert's picture path follows once the thumbnail has arrived."""
    first = Receiver("127.0.0.1", broker.port, client_id="ranger-tz")
    first.start()
    assert first.wait_connected(10)
    first.stop()
    fleet = tmp_path / "fleet.csv"
    fleet.write_text("unit_id,site_name,lat,lon,deployment_id,broker_host\n"
                     "T-1,Kedrovaya 3,43.1,131.9,T-1-2026,base.example\n")
    out = io.StringIO()
    stop = threading.Event()
    rc: list[int] = []
    opts = AlertsOptions(tz="Asia/Vladivostok", fleet_file=str(fleet),
                         store_dir=str(tmp_path / "station"))
    t = threading.Thread(target=lambda: rc.append(
        run_alerts(broker.address, False, out, stop, client_id="ranger-tz", options=opts)))
    t.start()
    cfg = make_cfg(tmp_path / "data", broker.port)
    with EventStore(cfg) as store:
        link = MqttLink(cfg, store.db_path)
        store.notify = link.wake
        link_stop = threading.Event()
        lt = threading.Thread(target=link.run, args=(link_stop,))
        lt.start()
        try:
            store.record(*burst_and_verdict("alert", "animal", "leopard", 0.9))
            wait_for(lambda: "picture:" in out.getvalue(), what="the picture line")
        finally:
            link_stop.set()
            link.wake()
            lt.join(10)
            stop.set()
            t.join(10)
    assert rc == [0]
    alert, picture = out.getvalue().splitlines()[:2]
    assert " +10  T-1 Kedrovaya 3  animal leopard " in alert
    assert picture.startswith("  T-1-1 picture: ")
    assert Path(picture.split("picture: ")[1]).is_file()
