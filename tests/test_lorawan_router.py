"""The LoRa router on a fake clock, stepped: real SQLite, real pyserial on a pty emulator, the
emulated network server on a real mosquitto. A simulated day takes a second or two."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker
from lorawan_support import (
    KEYS,
    T0,
    UNIT,
    add_alert,
    drive,
    lora_cfg,
    lora_rows,
    make_router,
    mark_mqtt_sent,
)

from edge_app.core import lora_codec as codec
from edge_app.core.clock import FakeClock
from edge_app.sim.modems import Faults, PtyModem, Rui3Modem, WioE5Modem
from edge_app.sim.netserver import NetworkServer
from edge_app.trap.settings import Settings
from edge_app.trap.store.db import db_path, open_db
from edge_app.trap.uplink.airtime import join_airtime_s, uplink_airtime_s
from edge_app.trap.uplink.router import LoraRouter

pytestmark = pytest.mark.broker

SF12_ALERT = uplink_airtime_s(11, 12)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_wall=T0)


@pytest.fixture
def ns(broker: Broker, clock: FakeClock) -> Iterator[NetworkServer]:
    server = NetworkServer("127.0.0.1", broker.port, "chirpstack", clock=clock).start()
    server.register(KEYS.dev_eui, KEYS.join_eui, KEYS.app_key, UNIT)
    try:
        yield server
    finally:
        server.stop()


def rui3(ns: NetworkServer, clock: FakeClock, **kw: Any) -> PtyModem:
    return Rui3Modem(ns, clock=clock, time_factor=0.0, **kw).start()


def uplinks(ns: NetworkServer) -> list[dict[str, Any]]:
    return [body for topic, body in ns.published if topic.endswith("/event/up")]


def assert_duty_cycle_kept(emu: PtyModem, dc: float = 0.01) -> None:
    """The regulator's view: every transmission waited its time-off, every rolling hour ≤ 1 %."""
    log = emu.stats.tx_log
    assert emu.stats.dc_refusals == 0, "the router hit the module's own duty-cycle block"
    for a, b in itertools.pairwise(log):
        assert b.t >= a.t + a.airtime_s / dc - 1e-3, (a, b)
    for i, first in enumerate(log):
        window = [t.airtime_s for t in log[i:] if t.t < first.t + 3600.0]
        assert sum(window) <= 3600.0 * dc + 1e-6


def test_join_fails_three_times_then_succeeds_with_backoff(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path, data_rate=5)  # SF7: the backoff, not the time-off, sets the pace
    with rui3(ns, clock, faults=Faults(join_failures=3), dr=5) as emu:
        router = make_router(cfg, emu, clock)
        with router:
            drive(router, clock, T0 + 3600, stop_when=lambda: bool(router.stats()["joined"]))
            s = router.stats()
        assert s["joined"]
        assert s["join_attempts"] == 4
        assert s["join_failures"] == 3
        joins = [t.t for t in emu.stats.tx_log if t.kind == "join"]
        assert len(joins) == 4
        gaps = [b - a for a, b in itertools.pairwise(joins)]
        # Exponential backoff from 30 s with equal jitter (half fixed, half random), never
        # sooner than the JoinRequest's duty-cycle time-off.
        time_off = join_airtime_s(7) / 0.01 + 1.0  # + the ledger's guard
        for n, gap in enumerate(gaps):
            base = 30.0 * 2**n
            assert max(base / 2, time_off) - 1e-6 <= gap <= max(base, time_off) + 1e-6
        assert gaps[2] > gaps[0]
        assert len({round(g / (30.0 * 2**n), 3) for n, g in enumerate(gaps)}) > 1  # jitter
        assert_duty_cycle_kept(emu)
        assert ns.joins == 1


def test_wrong_app_key_never_joins_and_backs_off_to_the_cap(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    ns.register(KEYS.dev_eui, KEYS.join_eui, "00" * 16, UNIT)  # the console has another key
    cfg = lora_cfg(tmp_path, join_backoff_max_s=600.0)
    with rui3(ns, clock) as emu, make_router(cfg, emu, clock) as router:
        drive(router, clock, T0 + 6 * 3600)
        s = router.stats()
    assert not s["joined"]
    assert s["join_failures"] >= 10
    joins = [t.t for t in emu.stats.tx_log if t.kind == "join"]
    assert max(b - a for a, b in itertools.pairwise(joins)) <= 600.0
    assert len(joins) < 6 * 3600 / 300 + 8  # capped backoff, not a join every time-off


def test_ack_lost_is_retried_within_the_duty_cycle(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path)
    with rui3(ns, clock, faults=Faults(lose_acks=1)) as emu, \
            make_router(cfg, emu, clock) as router:
        event_id = add_alert(cfg, T0)
        drive(router, clock, T0 + 3600, stop_when=lambda: router.stats()["alerts_sent"] > 0)
        s = router.stats()
    assert s["no_ack"] == 1
    assert s["alerts_sent"] == 1
    row = lora_rows(cfg)[event_id]
    assert (row["state"], row["attempts"], row["confirmed"]) == ("sent", 2, 1)
    sends = [t for t in emu.stats.tx_log if t.kind == "uplink"]
    assert len(sends) == 2
    assert sends[1].t - sends[0].t >= SF12_ALERT / 0.01 - 1e-3  # waited its time-off
    assert sends[1].t - sends[0].t <= SF12_ALERT / 0.01 + 10.0  # …and not much longer
    # Both copies reached the network (the ACK was lost on the way down): the ranger sees
    # the same seq twice and shows it once.
    seqs = {codec.decode_uplink(10, __import__("base64").b64decode(u["data"])).data["seq16"]
            for u in uplinks(ns)}
    assert len(uplinks(ns)) == 2
    assert seqs == {1}
    assert_duty_cycle_kept(emu)


def test_reset_mid_send_is_detected_rejoined_and_delivered(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path)
    with rui3(ns, clock) as emu, make_router(cfg, emu, clock) as router:
        drive(router, clock, T0 + 600, stop_when=lambda: bool(router.stats()["joined"]))
        emu.faults.reset_during_send = 1
        event_id = add_alert(cfg, clock.wall())
        drive(router, clock, clock.wall() + 3600,
              stop_when=lambda: router.stats()["alerts_sent"] > 0)
        s = router.stats()
    assert emu.stats.resets == 1
    assert s["modem_resets"] == 1
    assert s["join_attempts"] == 2
    assert lora_rows(cfg)[event_id]["state"] == "sent"
    assert len(uplinks(ns)) == 1  # the frame cut by the reset was never heard
    # Provisioned again after the reset (keys and band re-sent), then joined again.
    assert sum(1 for c in emu.received if c.startswith("AT+APPKEY=")) == 2
    assert_duty_cycle_kept(emu)


def test_garbage_and_overlong_lines_are_counted_and_survived(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path)
    with rui3(ns, clock, faults=Faults(garbage_rate=0.3), seed=3) as emu, \
            make_router(cfg, emu, clock) as router:
        drive(router, clock, T0 + 600, stop_when=lambda: bool(router.stats()["joined"]))
        emu.inject(b"\x00\xff\xfe\x93garbage at power-up\r\n")
        emu.inject(b"A" * 5000 + b"\r\n")  # a line far past any legitimate length
        emu.inject(b"\xff" * 3000)  # noise with no line end at all…
        emu.inject(b"\r\n")  # …ended at last
        ids = [add_alert(cfg, T0 + i) for i in range(3)]
        drive(router, clock, T0 + 4 * 3600, stop_when=lambda: router.stats()["alerts_sent"] == 3)
        assert router.modem is not None
        ds = router.modem.stats
    assert all(r["state"] == "sent" for r in lora_rows(cfg).values())
    assert len(ids) == 3
    assert ds.garbage >= 2
    assert ds.overlong >= 2
    assert emu.stats.garbage_lines > 0


@pytest.fixture
def ram_root(tmp_path: Path) -> Iterator[Path]:
    """A storage root in RAM when there is one: a day of SQLite commits with synchronous=FULL
    is thousands of fsyncs, which is the disk's speed, not ours (durability is tested
    elsewhere)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="camtrap-lora-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("also_mqtt", [True, False], ids=["lora-and-mqtt", "lora-only"])
def test_priority_jumps_the_line_and_duty_cycle_holds_for_a_simulated_day(
    ram_root: Path, ns: NetworkServer, clock: FakeClock, also_mqtt: bool
) -> None:
    """A trigger every 90 s for 24 h at SF12 (≈ 1.6 × what 1 % allows): a person alert never
    waits behind the leopard backlog, and no transmission ever breaks the duty cycle. Stale
    alerts leave the LoRa queue when MQTT carries them too; a LoRa-only alert is never
    dropped (it waits behind the fresh ones)."""
    cfg = lora_cfg(ram_root, status_every_h=6, max_age_s=6 * 3600)
    people: list[str] = []

    def trigger(i: int) -> None:
        t = clock.wall()
        if i % 10 == 5:
            people.append(add_alert(cfg, t, label="person", species=None, score=0.8,
                                    mqtt_row=also_mqtt))
        else:
            add_alert(cfg, t, mqtt_row=also_mqtt)

    events = [(T0 + 90.0 * i, lambda i=i: trigger(i)) for i in range(960)]
    with rui3(ns, clock) as emu, make_router(cfg, emu, clock) as router:
        drive(router, clock, T0 + 86_400, events)
        s = router.stats()
    assert_duty_cycle_kept(emu)
    assert emu.stats.busy_refusals == 0
    rows = lora_rows(cfg)
    assert len(rows) == 960
    sent = [r for r in rows.values() if r["state"] == "sent"]
    # Capacity at SF12 and 1 %: one 11-byte alert per 148 s; joins and status take a few slots.
    assert 540 <= len(sent) <= 583
    # Alerts kept the airtime busy all day: the status went only when a whole interval
    # late (at +12 h and +24 h of the 6-hourly schedule), not four times.
    assert s["status_sent"] == 2
    # Every person alert went, within one time-off of its trigger (it jumped the queue).
    for pid in people:
        r = rows[pid]
        assert r["state"] == "sent", pid
        assert r["done_at"] - r["event_ts"] <= SF12_ALERT / 0.01 + 2.0
    # The leopard backlog was served oldest first and the stale ones not sent late: dropped
    # from the LoRa queue when MQTT carries them, kept (still queued) when LoRa is all there is.
    stale = [r for r in rows.values() if r["state"] == "dead"]
    if also_mqtt:
        assert len(stale) > 100
        assert {r["last_error"] for r in stale} == {"too old for LoRa"}
    else:
        assert stale == []
        assert sum(1 for r in rows.values() if r["state"] == "ready") > 100
    assert max(r["done_at"] - r["event_ts"] for r in sent) <= 6 * 3600 + 1


def test_fallback_waits_for_mqtt_and_skips_what_it_delivered(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path, mqtt=True, fallback_after_s=60.0)
    mqtt_up = {"up": True}
    with rui3(ns, clock) as emu, make_router(cfg, emu, clock,
                                             mqtt_connected=lambda: mqtt_up["up"]) as router:
        drive(router, clock, T0 + 600, stop_when=lambda: bool(router.stats()["joined"]))
        t = clock.wall()
        delivered = add_alert(cfg, t, mqtt_row=True)
        late = add_alert(cfg, t, mqtt_row=True)
        drive(router, clock, t + 30)
        mark_mqtt_sent(cfg, delivered)  # MQTT got this one through in time
        drive(router, clock, t + 3600)
        states = {k: r["state"] for k, r in lora_rows(cfg).items()}
        assert states == {delivered: "skipped", late: "sent"}
        assert lora_rows(cfg)[late]["done_at"] >= t + 60.0
        # MQTT down: a new alert goes over LoRa at once.
        mqtt_up["up"] = False
        t = clock.wall()
        now_id = add_alert(cfg, t, mqtt_row=True)
        drive(router, clock, t + 3600, stop_when=lambda: router.stats()["alerts_sent"] == 2)
        row = lora_rows(cfg)[now_id]
        assert row["state"] == "sent"
        assert row["done_at"] - t < 1.0
        payload = __import__("base64").b64decode(uplinks(ns)[-1]["data"])
        assert codec.decode_uplink(10, payload).data["mqtt_down"] is True


def test_status_goes_every_n_hours_only_within_budget(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path, status_every_h=2, fair_use=True, status_reserve=3)
    with rui3(ns, clock) as emu, make_router(
            cfg, emu, clock, status_source=lambda: codec.Status(battery_v=3.7, temp_c=-18,
                                                                 outbox_depth=4)) as router:
        drive(router, clock, T0 + 5 * 3600)
        assert router.stats()["status_sent"] == 3  # at start, +2 h, +4 h
        statuses = [u for u in uplinks(ns) if u["fPort"] == 11]
        d = codec.decode_uplink(11, __import__("base64").b64decode(statuses[0]["data"])).data
        assert (d["battery_v"], d["temp_c"], d["outbox_depth"]) == (3.7, -18, 4)
        # Spend the fair-use day on alerts: the status then stays home, the alerts do not.
        for i in range(14):
            add_alert(cfg, clock.wall() + i)
        drive(router, clock, clock.wall() + 10 * 3600)
        s = router.stats()
    assert s["status_sent"] == 3
    assert s["budget"]["day_used_s"] <= 30.0
    assert_duty_cycle_kept(emu)


def test_downlink_commands_are_applied_and_the_threshold_persists(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = lora_cfg(tmp_path, status_every_h=0)
    applied: list[dict[str, Any]] = []
    settings = Settings(cfg, clock)

    def on_settings(values: dict[str, Any]) -> None:
        applied.append(values)
        settings.apply(values, "lorawan")

    with rui3(ns, clock) as emu, make_router(cfg, emu, clock, on_settings=on_settings,
                                             status_source=codec.Status) as router:
        for cmd in ({"command": "set_threshold", "target": "species", "threshold": 0.42},
                    {"command": "request_status"}):
            ns.enqueue_downlink(KEYS.dev_eui, 20, codec.encode_downlink(cmd).payload)
        ns.enqueue_downlink(KEYS.dev_eui, 20, b"\x09\x09")  # garbage command
        for i in range(3):
            add_alert(cfg, T0 + i)
        drive(router, clock, T0 + 3 * 3600)
        s = router.stats()
    assert applied == [{"detector.species_threshold": 0.42}]
    assert s["commands"] == 2
    assert s["bad_downlinks"] == 1
    assert s["status_sent"] == 1
    conn = open_db(db_path(cfg.storage.root))
    try:
        row = conn.execute("SELECT value, source FROM settings WHERE key = ?",
                           ("detector.species_threshold",)).fetchone()
    finally:
        conn.close()
    assert (json.loads(row["value"]), row["source"]) == (0.42, "lorawan")
    assert "unknown command 0x09" in caplog.text


def test_nothing_decided_is_lost_or_sent_twice_across_restarts(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    cfg = lora_cfg(tmp_path)
    with rui3(ns, clock) as emu:
        with make_router(cfg, emu, clock) as router:
            first = add_alert(cfg, T0)
            drive(router, clock, T0 + 3600, stop_when=lambda: router.stats()["alerts_sent"] == 1)
        # Decided while the LoRa stage was down (or just before a power cut).
        second = add_alert(cfg, clock.wall())
        with make_router(cfg, emu, clock) as again:
            # The ledger came back from the database: the time-off of the first send holds.
            assert again.ledger is not None
            assert again.ledger.used_s(clock.wall(), 3600.0) > SF12_ALERT
            drive(again, clock, clock.wall() + 3600,
                  stop_when=lambda: again.stats()["alerts_sent"] == 1)
        assert_duty_cycle_kept(emu)
    states = {k: r["state"] for k, r in lora_rows(cfg).items()}
    assert states == {first: "sent", second: "sent"}
    assert len(uplinks(ns)) == 2


def test_wio_e5_dialect_behind_the_same_interface(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    """Join failures, a lost ACK (Done without ACK Received), a reset (silent on the E5)."""
    cfg = lora_cfg(tmp_path, data_rate=5)
    faults = Faults(join_failures=2, lose_acks=1)
    with WioE5Modem(ns, clock=clock, time_factor=0.0, faults=faults, dr=5).start() as emu, \
            make_router(cfg, emu, clock) as router:
        first = add_alert(cfg, T0)
        drive(router, clock, T0 + 3600, stop_when=lambda: router.stats()["alerts_sent"] == 1)
        emu.faults.reset_during_send = 1
        second = add_alert(cfg, clock.wall())
        drive(router, clock, clock.wall() + 3600,
              stop_when=lambda: router.stats()["alerts_sent"] == 2)
        s = router.stats()
    rows = lora_rows(cfg)
    assert rows[first]["state"] == rows[second]["state"] == "sent"
    assert rows[first]["attempts"] == 2  # the lost ACK
    assert s["join_failures"] == 2
    assert s["no_ack"] == 1
    assert s["join_attempts"] == 4  # 2 failures, a success, and the re-join after the reset
    assert emu.stats.resets == 1
    assert_duty_cycle_kept(emu)


def test_a_silent_modem_times_out_and_is_retried_with_backoff(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A pty with nothing behind it: every command times out; the stage backs off, no crash."""
    cfg = lora_cfg(tmp_path)
    caplog.set_level(logging.WARNING)
    with Rui3Modem(None, clock=clock, time_factor=0.0) as emu:
        emu._command = lambda line: None  # type: ignore[method-assign]  # deaf module
        router = make_router(cfg, emu, clock, timings=__import__(
            "edge_app.trap.uplink.lorawan", fromlist=["Timings"]).Timings(command_s=0.05))
        with router:
            add_alert(cfg, T0)
            drive(router, clock, T0 + 300)
            s = router.stats()
    assert s["modem_errors"] >= 3
    assert s["alerts_sent"] == 0
    assert "no answer to AT" in caplog.text
    assert lora_rows(cfg)  # the alert is still there, pending, for when the modem comes back


def test_router_reads_keys_from_a_0600_secrets_file_only(tmp_path: Path) -> None:
    from lorawan_support import write_secrets

    from edge_app.core.errors import ConfigError

    secrets = write_secrets(tmp_path / "lorawan.toml", mode=0o644)
    cfg = lora_cfg(tmp_path, secrets_file=str(secrets))
    with pytest.raises(ConfigError, match="chmod 600") as e:
        LoraRouter(cfg, tmp_path / "db")
    assert KEYS.app_key not in str(e.value)
    secrets.chmod(0o600)
    router = LoraRouter(cfg, tmp_path / "db")
    assert router.keys == KEYS
    assert KEYS.app_key not in repr(router.keys)


def test_fair_use_spends_ten_acks_a_day_then_sends_unconfirmed(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock
) -> None:
    """TTN allows 10 downlinks a day and every ACK is one: alert 11 and 12 go unconfirmed."""
    cfg = lora_cfg(tmp_path, fair_use=True, data_rate=5)
    with rui3(ns, clock, dr=5) as emu, make_router(cfg, emu, clock) as router:
        ids = [add_alert(cfg, T0 + i) for i in range(12)]
        drive(router, clock, T0 + 3600, stop_when=lambda: router.stats()["alerts_sent"] == 12)
        assert router.stats()["budget"]["downlinks_left"] == 0
    rows = lora_rows(cfg)
    assert [rows[i]["confirmed"] for i in ids] == [1] * 10 + [0] * 2
    sent = [t.confirmed for t in emu.stats.tx_log if t.kind == "uplink"]
    assert sent == [True] * 10 + [False] * 2
    assert_duty_cycle_kept(emu)


@pytest.mark.parametrize("emu_cls", [Rui3Modem, WioE5Modem])
def test_a_session_the_network_forgot_is_noticed_and_joined_again(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock, emu_cls: type[PtyModem]
) -> None:
    """The network server lost the device's session (a database restore): uplinks go
    unanswered; after a run of lost ACKs the trap joins again and the alert gets through."""
    cfg = lora_cfg(tmp_path, data_rate=5)
    with emu_cls(ns, clock=clock, time_factor=0.0, dr=5).start() as emu, \
            make_router(cfg, emu, clock) as router:
        drive(router, clock, T0 + 600, stop_when=lambda: bool(router.stats()["joined"]))
        ns.devices[KEYS.dev_eui].dev_addr = "dead0000"  # the server forgot the session
        event_id = add_alert(cfg, clock.wall())
        drive(router, clock, clock.wall() + 3600,
              stop_when=lambda: router.stats()["alerts_sent"] == 1)
        s = router.stats()
    assert s["no_ack"] == 4
    assert s["rejoins"] == 1
    assert s["join_attempts"] == 2
    row = lora_rows(cfg)[event_id]
    assert (row["state"], row["attempts"]) == ("sent", 5)
    assert ns.joins == 2
    assert_duty_cycle_kept(emu)


def test_mode_and_status_interval_downlinks_go_through_the_settings_service(
    tmp_path: Path, ns: NetworkServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = lora_cfg(tmp_path, status_every_h=0)
    settings = Settings(cfg, clock)
    with rui3(ns, clock) as emu, make_router(cfg, emu, clock, settings=settings,
                                             status_source=codec.Status) as router:
        for cmd in ({"command": "set_status_interval", "hours": 2},
                    {"command": "set_mode", "mode": "fallback"}):  # refused: no MQTT here
            ns.enqueue_downlink(KEYS.dev_eui, 20, codec.encode_downlink(cmd).payload)
        for i in range(2):
            add_alert(cfg, T0 + i)
        drive(router, clock, T0 + 5 * 3600)
        s = router.stats()
    assert settings.config.lorawan.status_every_h == 2.0
    assert settings.config.lorawan.mode == "always"
    assert "needs mqtt.enabled" in caplog.text
    assert s["status_sent"] >= 2  # the new interval is in force at once
    again = Settings(lora_cfg(tmp_path, status_every_h=0), FakeClock()).load()
    assert again.lorawan.status_every_h == 2.0
