"""The MQTT link and the ranger receiver against a real mosquitto (MQTT 5, paho 2.x).

What is checked end to end: store → outbox → MqttLink → broker → Receiver, delivery exactly
once after dedupe, rows marked sent only on a successful PUBACK, nothing lost across broker
outages, receiver sessions, and the retained status (online / offline / the ``lost`` will).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from store_support import burst_and_verdict, cfg_data, make_cfg, wait_for

from edge_app.core.config import Config
from edge_app.core.errors import ConfigError
from edge_app.core.mqtt_common import new_properties
from edge_app.sim.broker import PrivateBroker, find_mosquitto
from edge_app.station.receiver import Receiver
from edge_app.trap.store.outbox import State
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.uplink.mqtt import LinkState, MqttLink

pytestmark = pytest.mark.broker


class RunningLink:
    """An MqttLink on its own thread, as the supervisor runs it."""

    def __init__(self, cfg: Config, db: Path, **kw: Any) -> None:
        self.link = MqttLink(cfg, db, rng=random.Random(7), **kw)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.link.run(self.stop_event)
        except BaseException as e:
            self.error = e
            raise

    def stop(self) -> None:
        self.stop_event.set()
        self.link.wake()
        self.thread.join(10)
        assert not self.thread.is_alive(), "uplink did not stop"
        assert self.error is None


class Collector:
    """A Receiver whose alerts and statuses are recorded."""

    def __init__(self, port: int, client_id: str) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.statuses: list[str] = []
        self.receiver = Receiver("127.0.0.1", port, client_id=client_id,
                                 on_alert=self.alerts.append,
                                 on_status=lambda unit, body: self.statuses.append(body["state"]))

    def __enter__(self) -> Collector:
        self.receiver.start()
        assert self.receiver.wait_connected(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.stop()

    def ids(self) -> list[str]:
        return [a["id"] for a in self.alerts]


class RawClient:
    """A plain paho client for publishing test messages and watching media chunks."""

    def __init__(self, port: int, subscribe: str | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if subscribe:
            done = threading.Event()
            self.c.on_subscribe = lambda *a: done.set()
            self.c.subscribe(subscribe, qos=1)
            assert done.wait(5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def store(tmp_path: Path, broker: Broker) -> Iterator[EventStore]:
    s = EventStore(make_cfg(tmp_path / "data", broker.port))
    s.open()
    yield s
    s.close()


def states(store: EventStore) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in store.outbox.stats().values():
        for state, n in kind.items():
            out[state] = out.get(state, 0) + n
    return out


def all_sent(store: EventStore) -> bool:
    """Everything left the trap (receipts may still be on their way)."""
    s = states(store)
    return s["ready"] == 0 and s["inflight"] == 0 and s["sent"] > 0


def delivered(store: EventStore) -> bool:
    """Everything reached the receiver: nothing waits for a PUBACK or a receipt."""
    return all_sent(store) and states(store)["acked-by-broker"] == 0


def test_alerts_arrive_once_with_media_and_rows_are_marked_sent(
    store: EventStore, broker: Broker
) -> None:
    chunks = RawClient(broker.port, subscribe="camtrap/T-1/media/#")
    with Collector(broker.port, "ranger-a") as ranger:
        run = RunningLink(store.cfg, store.db_path, chunk_bytes=1024)
        store.notify = run.link.wake
        try:
            for outcome in ("alert", "alert", "keep", "alert"):
                store.record(*burst_and_verdict(outcome))
            wait_for(lambda: all_sent(store), what="every row sent")
            wait_for(lambda: len(ranger.alerts) == 3, what="three alerts")
            assert ranger.ids() == ["T-1-1", "T-1-2", "T-1-4"]  # the keep is not an alert
            assert ranger.receiver.stats.ignored == 1
            # alert+thumb+image per alert; event+thumb per keep
            wait_for(lambda: run.link.stats().sent == 3 * 3 + 2, what="sent counter")
            assert run.link.sent_count == 3
            assert run.link.stats().failed == 0

            # The receiver dedupes a resend and survives garbage.
            raw = RawClient(broker.port)
            raw.publish("camtrap/T-1/event", json.dumps(ranger.alerts[0]).encode())
            raw.publish("camtrap/T-1/event", b"\xff not json")
            raw.publish("camtrap/T-1/event", b'{"no": "id"}')
            raw.close()
            wait_for(lambda: ranger.receiver.stats.malformed == 2, what="malformed counted")
            wait_for(lambda: ranger.receiver.stats.duplicates == 1, what="duplicate counted")
            assert len(ranger.alerts) == 3
        finally:
            run.stop()

    # The image of the first alert, reassembled from its chunks, matches the event's hash.
    first = ranger.alerts[0]
    image = next(m for m in first["media"] if m["kind"] == "image")
    parts = {}
    for m in chunks.messages:
        if m.topic.startswith(f"camtrap/T-1/media/{image['id']}/"):
            props = dict(m.properties.UserProperty)  # type: ignore[union-attr]
            assert props["event"] == "T-1-1"
            assert props["sha256"] == image["sha256"]
            parts[int(props["chunk"])] = (int(props["of"]), m.payload)
    chunks.close()
    total = next(iter(parts.values()))[0]
    assert total > 1
    assert sorted(parts) == list(range(total))
    data = b"".join(parts[i][1] for i in range(total))
    assert len(data) == image["bytes"]
    assert hashlib.sha256(data).hexdigest() == image["sha256"]


def test_broker_outage_keeps_rows_ready_then_delivers_everything(
    store: EventStore, broker: Broker
) -> None:
    with Collector(broker.port, "ranger-b") as ranger:
        run = RunningLink(store.cfg, store.db_path)
        store.notify = run.link.wake
        try:
            store.record(*burst_and_verdict("alert"))
            wait_for(lambda: ranger.ids() == ["T-1-1"], what="first alert")
            wait_for(lambda: delivered(store), what="the receipt for it")
            broker.kill()  # the base station loses power
            wait_for(lambda: run.link.state is LinkState.DISCONNECTED, what="link down")
            for _ in range(3):
                store.record(*burst_and_verdict("alert"))
            alerts = [r for r in store.outbox.ls(100) if r.kind == "alert"]
            assert [r.state for r in alerts] == ["ready"] * 3 + ["sent"]
            assert all(r.attempts == 0 for r in alerts if r.state == State.READY)
            broker.start()
            wait_for(lambda: all_sent(store), timeout_s=15, what="all rows sent")
            wait_for(lambda: len(ranger.alerts) == 4, timeout_s=10, what="four alerts")
            assert sorted(ranger.ids()) == ["T-1-1", "T-1-2", "T-1-3", "T-1-4"]
            assert run.link.stats().connects == 2
        finally:
            run.stop()


def test_rows_wait_while_the_broker_is_unreachable_from_the_start(
    store: EventStore, broker: Broker
) -> None:
    with Collector(broker.port, "ranger-c") as ranger:  # the receiver's session exists
        broker.stop()
        run = RunningLink(store.cfg, store.db_path)
        store.notify = run.link.wake
        try:
            store.record(*burst_and_verdict("alert"))
            store.record(*burst_and_verdict("alert"))
            wait_for(lambda: run.link.state is not LinkState.STOPPED, what="link started")
            assert run.link.state is LinkState.CONNECTING
            assert states(store)["ready"] == 6
            assert states(store)["inflight"] == 0
            broker.start()
            wait_for(lambda: all_sent(store), timeout_s=15, what="rows sent after start")
            wait_for(lambda: len(ranger.alerts) == 2, timeout_s=10, what="two alerts")
        finally:
            run.stop()


def test_a_receiver_that_was_away_gets_what_it_missed(store: EventStore, broker: Broker) -> None:
    with Collector(broker.port, "ranger-d"):
        pass  # first contact: the broker now keeps this receiver's session
    run = RunningLink(store.cfg, store.db_path)
    store.notify = run.link.wake
    try:
        store.record(*burst_and_verdict("alert"))
        store.record(*burst_and_verdict("alert"))
        wait_for(lambda: all_sent(store), what="sent while the receiver was away")
    finally:
        run.stop()
    with Collector(broker.port, "ranger-d") as ranger:
        wait_for(lambda: len(ranger.alerts) == 2, what="missed alerts")
        assert ranger.ids() == ["T-1-1", "T-1-2"]


def test_status_is_online_then_the_will_says_lost_when_the_process_dies(
    tmp_path: Path, broker: Broker
) -> None:
    data = cfg_data(tmp_path / "data", broker.port)
    script = (
        "import json, sys, threading\n"
        "from edge_app.core import config\n"
        "from edge_app.trap.uplink.mqtt import MqttLink\n"
        "MqttLink(config.parse(json.loads(sys.argv[1])), sys.argv[2]).run(threading.Event())\n"
    )
    with Collector(broker.port, "ranger-e") as ranger:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(data), str(tmp_path / "camtrap.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: "online" in ranger.statuses, what="online status")
        finally:
            proc.kill()  # no clean stop: what a power cut does to the trap
            proc.wait(5)
        wait_for(lambda: ranger.statuses[-1:] == ["lost"], what="the will")
    with Collector(broker.port, "ranger-e2") as late:  # retained for anyone who comes later
        wait_for(lambda: late.statuses == ["lost"], what="retained lost")


def test_a_clean_stop_says_offline_and_the_will_is_not_sent(
    store: EventStore, broker: Broker
) -> None:
    with Collector(broker.port, "ranger-f") as ranger:
        run = RunningLink(store.cfg, store.db_path)
        wait_for(lambda: ranger.statuses[-1:] == ["online"], what="online")
        assert json.loads(retained(broker.port))["version"]
        run.stop()
        wait_for(lambda: ranger.statuses[-1:] == ["offline"], what="offline")
        assert ranger.receiver.wait_quiet(0.3, 5)
        assert ranger.statuses == ["online", "offline"]
    assert json.loads(retained(broker.port))["state"] == "offline"


def retained(port: int) -> bytes:
    raw = RawClient(port, subscribe="camtrap/T-1/status")
    try:
        wait_for(lambda: bool(raw.messages), what="retained status")
        return bytes(raw.messages[0].payload)
    finally:
        raw.close()


def test_a_refused_publish_is_retried_later_never_marked_sent(tmp_path: Path) -> None:
    exe = find_mosquitto()
    assert exe is not None
    work = tmp_path / "acl-broker"
    work.mkdir()
    acl = work / "acl"
    acl.write_text("topic readwrite camtrap/+/event\ntopic readwrite camtrap/+/status\n"
                   "topic read camtrap/+/media/#\n")
    b = PrivateBroker(exe, work)
    with b.conf.open("a") as f:
        f.write(f"acl_file {acl}\n")
    b.start()
    try:
        cfg = make_cfg(tmp_path / "data", b.port, outbox={"backoff_min_s": 30.0,
                                                          "backoff_max_s": 60.0})
        with EventStore(cfg) as store:
            store.record(*burst_and_verdict("alert"))
            run = RunningLink(cfg, store.db_path)
            store.notify = run.link.wake
            try:
                wait_for(lambda: run.link.stats().failed >= 2, what="media refused")
                rows = {r.kind: r for r in store.outbox.ls(10)}
                # No receiver runs here: the alert waits for its end-to-end receipt.
                assert rows["alert"].state == State.ACKED
                for kind in ("thumb", "image"):
                    row = rows[kind]
                    assert row.state == State.READY  # not sent: the broker said no
                    assert row.attempts == 1
                    assert row.last_error == "broker refused: Not authorized"
                    assert row.next_attempt_at > row.created  # backing off
            finally:
                run.stop()
    finally:
        b.stop()


def test_a_media_row_whose_file_is_gone_is_dead_not_stuck(
    store: EventStore, broker: Broker
) -> None:
    store.record(*burst_and_verdict("alert"))
    row = store.catalog.get("T-1-1")
    assert row is not None
    assert row.image_path is not None
    (store.root / row.image_path).unlink()
    run = RunningLink(store.cfg, store.db_path)
    try:
        wait_for(lambda: states(store)["ready"] == 0 and states(store)["inflight"] == 0,
                 what="queue drained")
        rows = {r.kind: r for r in store.outbox.ls(10)}
        assert rows["image"].state == State.DEAD
        assert rows["image"].last_error is not None
        assert rows["image"].last_error.startswith("media unreadable")
        assert rows["alert"].state == State.ACKED  # no receiver here: waits for a receipt
        assert rows["thumb"].state == State.SENT
    finally:
        run.stop()


def _make_certs(d: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=camtrap-test-ca")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")


def test_alerts_go_over_tls_when_configured(tmp_path: Path) -> None:
    exe = find_mosquitto()
    assert exe is not None
    work = tmp_path / "tls-broker"
    work.mkdir()
    _make_certs(work)
    b = PrivateBroker(exe, work)
    with b.conf.open("a") as f:
        f.write(f"cafile {work / 'ca.crt'}\ncertfile {work / 'server.crt'}\n"
                f"keyfile {work / 'server.key'}\n")
    b.start()
    try:
        cfg = make_cfg(tmp_path / "data", b.port,
                       mqtt={"tls": True, "ca_file": str(work / "ca.crt")})
        got: list[dict[str, Any]] = []
        ranger = Receiver("127.0.0.1", b.port, client_id="ranger-tls", on_alert=got.append,
                          ca_file=str(work / "ca.crt"))
        ranger.start()
        try:
            assert ranger.wait_connected(10)
            with EventStore(cfg) as store:
                run = RunningLink(cfg, store.db_path)
                store.notify = run.link.wake
                try:
                    store.record(*burst_and_verdict("alert"))
                    wait_for(lambda: all_sent(store), what="sent over TLS")
                    wait_for(lambda: len(got) == 1, what="received over TLS")
                finally:
                    run.stop()
        finally:
            ranger.stop()
    finally:
        b.stop()


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "data", 1, mqtt={"tls": True,
                                               "ca_file": str(tmp_path / "nope.crt")})
    with pytest.raises(ConfigError, match="file not found") as e:
        MqttLink(cfg, tmp_path / "camtrap.db")
    assert e.value.key == "mqtt.ca_file"


def test_rows_in_flight_when_the_trap_died_are_sent_after_restart(
    store: EventStore, broker: Broker
) -> None:
    store.record(*burst_and_verdict("alert"))
    alert = store.outbox.due()[0]
    store.outbox.mark_inflight(alert.id)  # on the air when the power went: no PUBACK seen
    with Collector(broker.port, "ranger-g") as ranger:
        run = RunningLink(store.cfg, store.db_path)
        try:
            wait_for(lambda: all_sent(store), what="recovered rows sent")
            wait_for(lambda: ranger.ids() == ["T-1-1"], what="recovered alert")
            row = store.outbox.get(alert.id)
            assert row is not None
            assert row.attempts == 2  # the lost attempt and the one after restart
        finally:
            run.stop()


# -- credentials -------------------------------------------------------------------------


def test_a_password_file_other_users_can_read_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    cfg = make_cfg(tmp_path / "data", 1, mqtt={"password_file": str(pw)})
    with pytest.raises(ConfigError, match="chmod 600") as e:
        MqttLink(cfg, tmp_path / "camtrap.db")
    assert e.value.key == "mqtt.password_file"
    pw.chmod(0o600)
    link = MqttLink(cfg, tmp_path / "camtrap.db")
    assert link.username == "T-1"  # the unit id, which the broker's ACL pattern expects
    pw.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        MqttLink(cfg, tmp_path / "camtrap.db")
    missing = make_cfg(tmp_path / "data", 1, mqtt={"password_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="cannot read"):
        MqttLink(missing, tmp_path / "camtrap.db")


def test_camtrap_run_exits_2_naming_the_key_before_loading_anything(tmp_path: Path) -> None:
    pw = tmp_path / "mqtt-password"
    pw.write_text("s3cret\n")
    pw.chmod(0o640)
    cfg = tmp_path / "trap.toml"
    cfg.write_text(f"""
[unit]
id = "LL-042"
[hardware]
backend = "sim"
[camera]
source = "synthetic"
[storage]
root = "{tmp_path / 'data'}"
[mqtt]
host = "127.0.0.1"
tls = false
password_file = "{pw}"
""")
    r = subprocess.run([sys.executable, "-m", "edge_app", "run", "--config", str(cfg),
                        "--models", str(tmp_path / "no-models")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "mqtt.password_file" in r.stderr
    assert "0640" in r.stderr


# -- receipts ----------------------------------------------------------------------------


def test_an_alert_without_a_receipt_is_sent_again_until_one_comes(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = make_cfg(tmp_path / "data", broker.port,
                   outbox={"receipt_timeout_s": 0.5, "receipt_timeout_max_s": 1.0},
                   mqtt={"send_images": False})
    deaf = Collector(broker.port, "ranger-no-receipts")
    deaf.receiver.receipts = False  # a receiver that stores nothing and confirms nothing
    with deaf, EventStore(cfg) as store:
        run = RunningLink(cfg, store.db_path)
        store.notify = run.link.wake
        try:
            store.record(*burst_and_verdict("alert"))
            wait_for(lambda: deaf.ids() == ["T-1-1"], what="the alert")
            alert = next(r for r in store.outbox.ls(10) if r.kind == "alert")
            wait_for(lambda: (store.outbox.get(alert.id).attempts  # type: ignore[union-attr]
                              >= 3), what="resends")
            assert deaf.receiver.stats.duplicates >= 1  # same id: shown once
            assert deaf.ids() == ["T-1-1"]
            raw = RawClient(broker.port)
            raw.publish("camtrap/T-1/ack", b"not json")  # ignored, logged
            raw.publish("camtrap/T-1/ack", json.dumps({"ids": ["T-1-1"]}).encode())
            raw.close()
            wait_for(lambda: delivered(store), what="the receipt to close it")
            assert run.link.stats().receipts == 1
        finally:
            run.stop()


# -- commands and stats over MQTT ----------------------------------------------------------


def test_commands_and_stats_over_mqtt(tmp_path: Path, broker: Broker) -> None:
    cfg = make_cfg(tmp_path / "data", broker.port, mqtt={"stats_interval_s": 0.5})
    results: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    applied: list[Config] = []
    with EventStore(cfg) as store, Receiver(
        "127.0.0.1", broker.port, client_id="ranger-cmd",
        on_result=lambda unit, body: results.append(body),
        on_stats=lambda unit, body: stats.append(body),
    ) as ranger:
        assert ranger.wait_connected(10)
        run = RunningLink(cfg, store.db_path)
        run.link._on_config = applied.append
        store.notify = run.link.wake
        try:
            wait_for(lambda: len(stats) >= 2, what="periodic stats")
            s = stats[-1]
            assert s["unit"] == "T-1"
            assert s["disk_low"] is False
            assert s["disk_free_bytes"] > 0
            assert set(s["outbox"]) == {"alert", "status", "event", "thumb", "image"}
            assert s["links"]["mqtt"]["state"] == "connected"
            ok = ranger.send_command("T-1", "config/set",
                                     {"values": {"mqtt.stats_interval_s": 3600}})
            bad = ranger.send_command("T-1", "config/set",
                                      {"values": {"mqtt.host": "evil.example"}})
            unknown = ranger.send_command("T-1", "self-destruct", {})
            raw = RawClient(broker.port)
            raw.publish("camtrap/T-1/cmd/resend", b"{{{")
            raw.close()
            wait_for(lambda: len(results) == 4, what="four results")
            by_id = {r["id"]: r for r in results}
            assert by_id[ok]["ok"] is True
            assert "cannot be set remotely" in by_id[bad]["error"]
            assert "unknown command" in by_id[unknown]["error"]
            assert by_id[None]["error"] == "payload is not JSON"
            assert run.link.cfg.mqtt.stats_interval_s == 3600
            assert [c.mqtt.stats_interval_s for c in applied] == [3600]
            assert run.link.cfg.mqtt.host == "127.0.0.1"
        finally:
            run.stop()


# -- media --------------------------------------------------------------------------------


def test_a_receiver_asks_for_missing_chunks_and_gets_only_those(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = make_cfg(tmp_path / "data", broker.port, mqtt={"chunk_bytes": 1024})
    stored: list[tuple[str, Path]] = []
    with EventStore(cfg) as store:
        store.record(*burst_and_verdict("alert"))
        record = store.catalog.get("T-1-1")
        assert record is not None
        assert record.image_path is not None
        data = (store.root / record.image_path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        of = -(-len(data) // 1024)
        assert of >= 3
        # Deliver the event and its media first (to a receiver that stores).
        with Receiver("127.0.0.1", broker.port, client_id="ranger-media",
                      store_dir=tmp_path / "ranger-a") as first:
            assert first.wait_connected(10)
            run = RunningLink(cfg, store.db_path)
            store.notify = run.link.wake
            wait_for(lambda: delivered(store) and first.stats.media_stored == 2,
                     what="event and media delivered")
            saved = tmp_path / "ranger-a" / "media" / "T-1" / "T-1-1-image.jpg"
            assert saved.read_bytes() == data
            # A second receiver got only chunks 0 and 2 of the image (say, it was away).
            chunks = RawClient(broker.port, subscribe="camtrap/T-1/media/#")
            late = Receiver("127.0.0.1", broker.port, client_id="ranger-late",
                            store_dir=tmp_path / "ranger-b", media_timeout_s=0.3,
                            on_media=lambda unit, mid, path: stored.append((mid, path)))
            late.start()
            try:
                assert late.wait_connected(10)
                raw = RawClient(broker.port)
                for i in (0, 2):
                    props = new_properties(PacketTypes.PUBLISH)
                    props.UserProperty = [("event", "T-1-1"), ("chunk", str(i)),
                                          ("of", str(of)), ("sha256", digest)]
                    raw.c.publish(f"camtrap/T-1/media/T-1-1-image/{i}",
                                  data[i * 1024:(i + 1) * 1024], qos=1,
                                  properties=props).wait_for_publish(5)
                raw.close()
                wait_for(lambda: len(stored) == 1, what="the late receiver to complete it")
                assert stored[0][0] == "T-1-1-image"
                assert stored[0][1].read_bytes() == data  # reassembled, sha256 checked
                assert late.stats.media_requests == 1
            finally:
                late.stop()
                run.stop()
            resent = sorted(int(m.topic.rsplit("/", 1)[1]) for m in chunks.messages
                            if m.topic.startswith("camtrap/T-1/media/T-1-1-image/"))
            chunks.close()
            # 0 and 2 came from the test; the trap sent the missing ones, each once, no more.
            assert sorted(resent) == list(range(of))


def test_an_alert_queued_during_an_image_transfer_overtakes_it(
    tmp_path: Path, broker: Broker
) -> None:
    from chaos_support import TcpProxy

    proxy = TcpProxy(broker.port)
    proxy.slow(rate_bytes_s=40_000, latency_s=0.02)
    cfg = make_cfg(tmp_path / "data", proxy.port,
                   mqtt={"chunk_bytes": 512, "media_window": 2})
    watch = RawClient(broker.port, subscribe="camtrap/T-1/#")
    try:
        with EventStore(cfg) as store:
            run = RunningLink(cfg, store.db_path)
            store.notify = run.link.wake
            try:
                store.record(*burst_and_verdict("alert"))
                first_image = "camtrap/T-1/media/T-1-1-image/"
                wait_for(lambda: any(m.topic.startswith(first_image)
                                     for m in watch.messages), what="the image transfer")
                store.record(*burst_and_verdict("alert"))
                wait_for(lambda: all_sent(store), timeout_s=30, what="everything sent")
            finally:
                run.stop()
        topics = [m.topic for m in watch.messages]
        last_chunk = max(i for i, t in enumerate(topics) if t.startswith(first_image))
        second_alert = next(i for i, m in enumerate(watch.messages)
                            if m.topic == "camtrap/T-1/event"
                            and json.loads(m.payload)["id"] == "T-1-2")
        assert second_alert < last_chunk  # it did not wait for the whole image
    finally:
        watch.close()
        proxy.close()


def test_a_message_larger_than_the_broker_accepts_is_dead_not_retried_forever(
    store: EventStore, broker: Broker
) -> None:
    big = store.outbox.enqueue("alert", payload=b"x" * 300_000)
    run = RunningLink(store.cfg, store.db_path)
    try:
        wait_for(lambda: store.outbox.get(big).state == State.DEAD,  # type: ignore[union-attr]
                 what="the oversized row given up")
        row = store.outbox.get(big)
        assert row is not None
        assert row.last_error is not None
        assert "larger than the broker accepts" in row.last_error
        assert run.link.stats().dropped == 1
    finally:
        run.stop()


def test_bench_outbox_json_contract(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge_app", "bench", "outbox", "--json",
                        "--backlog", "300", "--burst", "200", "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert {"enqueue_per_s", "drain_per_s", "backlog_10k_drain_s", "lost",
            "duplicates"} <= set(out)
    assert out["lost"] == 0
    assert out["enqueue_per_s"] > 0
    assert out["drain_per_s"] > 0
