"""The shipped base-station broker (deploy/mosquitto): a client id is tied to its login.

Runs the shipped ``mosquitto.conf`` and ``make-credentials`` (with the ``acl`` it writes) on a
free loopback port, over TLS with real passwords, against real traps and receivers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from station_support import Raw, deploy_broker, event, password, wait_until
from store_support import burst_and_verdict, make_cfg
from test_mqtt_link import RunningLink

from edge_app.core.config import Config
from edge_app.station.receiver import LinkNote, Receiver
from edge_app.trap.store.pipeline import EventStore

pytestmark = pytest.mark.broker


def trap_cfg(tmp: Path, pki: Path, port: int, unit: str) -> Config:
    """A trap logging in as ``unit`` over TLS with its password file (client id: default)."""
    return make_cfg(tmp / f"trap-{unit}", port, unit={"id": unit}, mqtt={
        "tls": True, "ca_file": str(pki / "ca.crt"), "host": "localhost",
        "password_file": str(pki / "units" / unit / "mqtt-password")})


def ranger(port: int, pki: Path, name: str, **kw: Any) -> Receiver:
    return Receiver("127.0.0.1", port, ca_file=str(pki / "ca.crt"), username=name,
                    password=password(pki, "rangers", name), **kw)


def test_a_unit_using_another_units_client_id_does_not_disconnect_it(tmp_path: Path) -> None:
    broker, pki = deploy_broker(tmp_path, ["A-1", "B-2"], ["station"])
    got: list[str] = []
    rx = ranger(broker.port, pki, "station", on_alert=lambda e: got.append(e["id"]))
    rx.start()
    a: Raw | None = None
    try:
        assert rx.wait_connected(10)
        cfg = trap_cfg(tmp_path, pki, broker.port, "B-2")
        assert cfg.mqtt_client_id == "camtrap-B-2"
        with EventStore(cfg) as trap:
            run = RunningLink(cfg, trap.db_path)
            trap.notify = run.link.wake
            try:
                wait_until(lambda: run.link.stats().connects == 1, 15, "B's trap connected")
                # Unit A, with its own valid login, asks for B's client id.
                a = Raw(broker.port, "camtrap-B-2", "A-1", password(pki, "units", "A-1"),
                        pki / "ca.crt")
                wait_until(lambda: bool(a.connects), 10, "A's CONNACK")
                assert a.connects[0][0] == "Success"
                time.sleep(1.5)  # a takeover would have dropped B by now
                assert (run.link.stats().connects, run.link.stats().disconnects) == (1, 0)
                assert a.disconnects == []
                # B still delivers and is confirmed; A still cannot speak for B.
                trap.record(*burst_and_verdict("alert"))
                wait_until(lambda: got == ["B-2-1"], 15, "B's alert")
                wait_until(lambda: trap.outbox.depth()["alert"] == 0, 15, "B's receipt")
                mid = a.publish("camtrap/B-2/event", json.dumps(event("B-2", 99)))
                assert a.puback[mid] == "Not authorized"
                assert (run.link.stats().connects, run.link.stats().disconnects) == (1, 0)
            finally:
                run.stop()
    finally:
        if a is not None:
            a.close()
        rx.stop()
        broker.stop()


def test_a_traps_session_survives_its_restarts_under_its_user_name(tmp_path: Path) -> None:
    """With use_username_as_clientid the session is keyed by the login, so a trap's persistent
    session (clean_start=False) still keeps what arrives while it is offline — here the
    receipt for an alert the receiver only got after the trap had gone."""
    broker, pki = deploy_broker(tmp_path, ["B-2"], ["station"])
    got: list[str] = []
    try:
        first = ranger(broker.port, pki, "station")  # creates the receiver's session
        first.start()
        assert first.wait_connected(10)
        first.stop()
        cfg = trap_cfg(tmp_path, pki, broker.port, "B-2")
        with EventStore(cfg) as trap:
            run = RunningLink(cfg, trap.db_path)
            trap.notify = run.link.wake
            trap.record(*burst_and_verdict("alert"))
            wait_until(lambda: trap.outbox.stats()["alert"].get("acked-by-broker") == 1, 15,
                       "the broker's PUBACK")
            run.stop()
            rx = ranger(broker.port, pki, "station", on_alert=lambda e: got.append(e["id"]),
                        store_dir=tmp_path / "store")
            rx.start()
            try:
                wait_until(lambda: got == ["B-2-1"], 15, "the queued alert")
                assert rx.stats.receipts == 1  # published while the trap is away
                run = RunningLink(cfg, trap.db_path)
                trap.notify = run.link.wake
                wait_until(lambda: trap.outbox.depth()["alert"] == 0, 15,
                           "the receipt from the trap's session")
                run.stop()
            finally:
                rx.stop()

        # The same with raw clients: the session follows the login, not the id asked for.
        b = Raw(broker.port, "first-id", "B-2", password(pki, "units", "B-2"), pki / "ca.crt",
                persistent=True)
        wait_until(lambda: bool(b.connects), 10, "B")
        b.c.subscribe("camtrap/B-2/cmd/#", qos=1)
        wait_until(lambda: b.suback == 1, 10, "B's subscription")
        b.close()
        sender = ranger(broker.port, pki, "station")
        sender.start()
        assert sender.wait_connected(10)
        sender.send_command("B-2", "resend", {"events": ["B-2-1"]})
        time.sleep(0.5)
        sender.stop()
        b2 = Raw(broker.port, "another-id", "B-2", password(pki, "units", "B-2"),
                 pki / "ca.crt", persistent=True)
        try:
            wait_until(lambda: bool(b2.connects), 10, "B again")
            assert b2.connects[0] == ("Success", True)  # session present
            wait_until(lambda: b2.topics() == ["camtrap/B-2/cmd/resend"], 10, "the command")
        finally:
            b2.close()
    finally:
        broker.stop()


def test_two_receivers_with_their_own_accounts_both_get_every_alert(tmp_path: Path) -> None:
    """Both ask for the same (default) client id; the broker gives each its user name."""
    broker, pki = deploy_broker(tmp_path, ["A-1"], ["station", "laptop"])
    shown: dict[str, list[str]] = {"station": [], "laptop": []}
    notes: list[LinkNote] = []
    rxs = [ranger(broker.port, pki, name, on_note=notes.append,
                  on_alert=lambda e, n=name: shown[n].append(e["id"]))
           for name in ("station", "laptop")]
    a = Raw(broker.port, "camtrap-A-1", "A-1", password(pki, "units", "A-1"), pki / "ca.crt")
    try:
        for rx in rxs:
            rx.start()
            assert rx.wait_connected(10)
        assert rxs[0].client_id == rxs[1].client_id
        wait_until(lambda: bool(a.connects), 10, "A")
        for n in range(1, 6):
            a.publish("camtrap/A-1/event", json.dumps(event("A-1", n)))
        expected = [f"A-1-{n}" for n in range(1, 6)]
        wait_until(lambda: shown["station"] == expected and shown["laptop"] == expected, 15,
                   "every alert at both receivers")
        assert [n.kind for n in notes] == ["connected", "connected"]  # nobody was kicked
        # A wrong password is said as such, with the delay before the next try.
        wrong: list[LinkNote] = []
        bad = Receiver("127.0.0.1", broker.port, ca_file=str(pki / "ca.crt"),
                       username="laptop", password=password(pki, "rangers", "station"),
                       on_note=wrong.append)  # another account's password
        bad.start()
        try:
            wait_until(lambda: bool(wrong), 10, "the refusal")
            assert (wrong[0].kind, wrong[0].retry_s) == ("refused", 1.0)
            assert str(wrong[0]).startswith(f"127.0.0.1:{broker.port} refused the connection (")
            assert not bad.connected
        finally:
            bad.stop()
        assert [n.kind for n in notes] == ["connected", "connected"]
    finally:
        a.close()
        for rx in rxs:
            rx.stop()
        broker.stop()
