"""Chaos: the whole daemon as a subprocess against a real mosquitto, while things break.

Each test prints its counts (sent = alerts decided and stored by the trap, received = unique
alerts the receiver stored, duplicates = extra copies it got, lost = sent − received); run with
``-s`` to see them. Every test is bounded in time and the invariant is always the same: every
alert is either delivered or still in the outbox, and in the end delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from chaos_support import (
    REPO,
    TcpProxy,
    alerts_decided,
    current_user,
    daemon_config,
    log_has,
    query,
    start_daemon,
    stop_daemon,
    undelivered,
    wait_until,
)
from conftest import Broker
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image
from store_support import burst_and_verdict, make_cfg
from test_mqtt_link import RunningLink

from edge_app.sim.broker import PrivateBroker, find_mosquitto
from edge_app.station.receiver import Receiver
from edge_app.trap.store.pipeline import EventStore

pytestmark = [pytest.mark.models, pytest.mark.broker]

UNIT = "LL-007"


class Ranger:
    """A base-station receiver with a store, recording what it got."""

    def __init__(self, port: int, store: Path, client_id: str, **kw: Any) -> None:
        self.ids: list[str] = []
        self.stats_seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.receiver = Receiver("127.0.0.1", port, client_id=client_id, store_dir=store,
                                 on_alert=self._alert, on_stats=self._stats, **kw)

    def _alert(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.ids.append(str(event["id"]))

    def _stats(self, unit: str, body: dict[str, Any]) -> None:
        with self.lock:
            self.stats_seen.append(body)

    def got(self) -> set[str]:
        with self.lock:
            return set(self.ids)

    def __enter__(self) -> Ranger:
        self.receiver.start()
        assert self.receiver.wait_connected(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.stop()


def report(name: str, sent: set[str], ranger: Ranger) -> dict[str, int]:
    received = ranger.got() & sent
    counts = {"sent": len(sent), "received": len(received),
              "duplicates": ranger.receiver.stats.duplicates, "lost": len(sent - received)}
    print(f"\nCHAOS {name}: {json.dumps(counts)}")
    return counts


def delivered(db: Path, ids: set[str]) -> bool:
    """Every row of these events is confirmed end to end (nothing ready/in flight/acked)."""
    if not ids:
        return True
    marks = ", ".join("?" for _ in ids)
    rows = query(db, f"SELECT COUNT(*) FROM outbox WHERE event_id IN ({marks}) "  # noqa: S608
                 "AND kind IN ('alert', 'thumb') "
                 "AND state IN ('ready', 'inflight', 'acked-by-broker')", tuple(ids))
    return bool(rows) and rows[0][0] == 0


def same_payloads(db: Path, store: Path) -> None:
    """What the receiver stored under an id is what the trap catalogued under that id."""
    import sqlite3

    con = sqlite3.connect(store / "ranger.db")
    try:
        got = dict(con.execute("SELECT id, json FROM events").fetchall())
    finally:
        con.close()
    for event_id, event_json in query(db, "SELECT id, event_json FROM events"):
        if event_id in got:
            assert json.loads(got[event_id]) == json.loads(event_json), event_id


# -- 1. broker killed with -9, ten times ----------------------------------------------------


def test_broker_kill9_ten_times_during_a_stream_of_alerts(
    tmp_path: Path, models_dir: Path, cameratrapai_dir: Path
) -> None:
    exe = find_mosquitto()
    assert exe is not None
    bdir = tmp_path / "broker"
    bdir.mkdir()
    # The harsh case: no persistence at all, so every kill loses the broker's sessions and
    # whatever it had acknowledged but not yet delivered. Receipts must make up for it.
    broker = PrivateBroker(exe, bdir, persistent=False)
    broker.start()
    root, log = tmp_path / "trap", tmp_path / "daemon.log"
    db = root / "camtrap.db"
    cfg = daemon_config(tmp_path / "trap.toml", root, cameratrapai_dir, broker.port,
                        mqtt_extra="send_images = false")
    rng = random.Random(4)
    proc = None
    try:
        with Ranger(broker.port, tmp_path / "ranger", "ranger-kill9") as ranger:
            proc = start_daemon(cfg, models_dir, log)
            wait_until(lambda: len(ranger.got()) >= 2, 60, "the first alerts", log)
            for _ in range(10):
                time.sleep(rng.uniform(0.4, 1.0))
                broker.kill()
                time.sleep(rng.uniform(0.2, 0.8))
                broker.start()
            assert proc.poll() is None, log.read_text()[-3000:]
            # The stream goes on; everything decided up to now must arrive.
            sent = alerts_decided(db)
            wait_until(lambda: sent <= ranger.got() and delivered(db, sent), 60,
                       "every alert decided during the kills to be received", log)
            stop_daemon(proc)
            assert proc.returncode == 0, log.read_text()[-3000:]
            ranger.receiver.wait_quiet(0.3, 5)
            counts = report("broker-kill9", sent, ranger)
    finally:
        if proc is not None:
            stop_daemon(proc)
        broker.kill()
    assert counts["lost"] == 0
    assert counts["sent"] >= 10
    assert len(ranger.ids) == len(set(ranger.ids))  # the ranger saw each alert once
    same_payloads(db, tmp_path / "ranger")  # a duplicate is the same event, same id


# -- 2. daemon killed with -9, ten times ----------------------------------------------------


def test_daemon_kill9_ten_times_during_bursts(
    tmp_path: Path, broker: Broker, models_dir: Path, cameratrapai_dir: Path
) -> None:
    root, log = tmp_path / "trap", tmp_path / "daemon.log"
    db = root / "camtrap.db"
    busy = daemon_config(tmp_path / "busy.toml", root, cameratrapai_dir, broker.port,
                         every_s=0.25, mqtt_extra="send_images = false")
    quiet = daemon_config(tmp_path / "quiet.toml", root, cameratrapai_dir, broker.port,
                          every_s=0.0, mqtt_extra="send_images = false")
    rng = random.Random(7)
    with Ranger(broker.port, tmp_path / "ranger", "ranger-daemon-kill9") as ranger:
        for i in range(10):
            proc = start_daemon(busy, models_dir, log)
            try:
                wait_until(lambda n=i: log.read_text().count("running as") > n, 60,  # type: ignore[misc]
                           "start-up", log)
                # Each run decides at least one alert before it dies (so ten runs prove ten
                # alerts, however slow the machine starts), then dies somewhere in the next
                # burst, store or send.
                before = len(alerts_decided(db))
                wait_until(lambda b=before: len(alerts_decided(db)) > b, 60,  # type: ignore[misc]
                           "an alert decided in this run", log)
                time.sleep(rng.uniform(0.0, 1.0))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            assert query(db, "PRAGMA integrity_check") == [("ok",)]
        sent = alerts_decided(db)
        queued = {r[0] for r in query(
            db, "SELECT event_id FROM outbox WHERE kind = 'alert' AND state != 'sent'")}
        assert sent <= ranger.got() | queued  # delivered or still in the outbox
        proc = start_daemon(quiet, models_dir, log)
        try:
            wait_until(lambda: log.read_text().count("running as") > 10, 60, "start-up", log)
            wait_until(lambda: sent <= ranger.got() and delivered(db, sent), 60,
                       "every decided alert after the last restart", log)
        finally:
            stop_daemon(proc)
        assert proc.returncode == 0
        ranger.receiver.wait_quiet(0.3, 5)
        counts = report("daemon-kill9", sent, ranger)
    assert counts["lost"] == 0
    assert counts["sent"] >= 10
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert not list(root.rglob(".tmp-*"))  # interrupted writes were cleaned at start-up
    # No half-written media: every file the catalogue names is whole (its hash is the one
    # the event announced) and decodes.
    checked = 0
    for (event_json,) in query(db, "SELECT event_json FROM events"):
        event = json.loads(event_json)
        for m in event["media"]:
            path = next(root.rglob(f"{event['id']}{'_thumb' if m['kind'] == 'thumb' else ''}"
                                   ".jpg"))
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == m["sha256"], path
            with Image.open(path) as im:
                im.verify()
            checked += 1
    assert checked >= 2 * counts["sent"]
    same_payloads(db, tmp_path / "ranger")


# -- 3. network partition: black hole, then a slow link, then healed -------------------------


def test_partition_black_hole_then_slow_link_then_drain(
    tmp_path: Path, broker: Broker, models_dir: Path, cameratrapai_dir: Path
) -> None:
    proxy = TcpProxy(broker.port)
    keepalive = 5
    root, log = tmp_path / "trap", tmp_path / "daemon.log"
    db = root / "camtrap.db"
    # Small chunks: each thumbnail is several chunks, so the slow link interleaves them.
    cfg = daemon_config(tmp_path / "trap.toml", root, cameratrapai_dir, proxy.port,
                        keepalive_s=keepalive, every_s=0.4,
                        mqtt_extra="send_images = false\nchunk_bytes = 4096")
    proc = start_daemon(cfg, models_dir, log)
    try:
        with Ranger(broker.port, tmp_path / "ranger", "ranger-partition") as ranger:
            wait_until(lambda: len(ranger.got()) >= 2, 60, "alerts over the healthy link", log)

            proxy.blackhole()
            t0 = time.monotonic()
            got_before = len(ranger.got())
            backlog_before = undelivered(db)
            # Our watchdog says so at 1.5 keepalives of silence; on a loaded machine paho's
            # own keepalive timeout (2 keepalives) can come first: either is the link noticing.
            wait_until(lambda: log_has(log, "connection dead")
                       or log_has(log, "disconnected (Keep alive timeout)"), 3 * keepalive,
                       "the link to notice the black hole", log)
            noticed_s = time.monotonic() - t0
            wait_until(lambda: undelivered(db) >= backlog_before + 4, 30,
                       "the outbox to grow", log)
            grown = undelivered(db)
            assert len(ranger.got()) <= got_before + 3  # only what was already past the proxy

            proxy.slow(rate_bytes_s=30_000, latency_s=0.1)
            slow_from = len(ranger.got())
            wait_until(lambda: len(ranger.got()) > slow_from + 2, 40,
                       "alerts to trickle through the slow link", log)

            proxy.heal()
            sent = alerts_decided(db)
            wait_until(lambda: sent <= ranger.got() and delivered(db, sent), 60,
                       "the outbox to drain after healing", log)
            assert proc.poll() is None
            stop_daemon(proc)
            assert proc.returncode == 0, log.read_text()[-3000:]
            ranger.receiver.wait_quiet(0.3, 5)
            counts = report("partition", sent, ranger)
    finally:
        stop_daemon(proc)
        proxy.close()
    print(f"CHAOS partition: noticed after {noticed_s:.1f} s (keepalive {keepalive} s), "
          f"outbox grew {backlog_before} -> {grown}")
    # paho alone takes up to 2 × keepalive; the link's watchdog must beat 1.5 ×, plus the
    # loop's 1 s granularity and the time the last packet took before the black hole.
    assert noticed_s <= 1.5 * keepalive + 2.0
    assert counts["lost"] == 0
    # Alerts decided after the snapshot above: delivered, or still queued for the next start.
    later = alerts_decided(db) - sent
    queued = {r[0] for r in query(db, "SELECT event_id FROM outbox WHERE kind = 'alert' "
                                  "AND state != 'sent'")}
    assert later <= ranger.got() | queued


# -- 4. ACL: one unit cannot act as another ------------------------------------------------


def _deploy_broker(tmp: Path) -> tuple[PrivateBroker, Path]:
    """The shipped base-station config and credentials script, on a free loopback port."""
    exe = find_mosquitto()
    assert exe is not None
    pki = tmp / "pki"
    subprocess.run([str(REPO / "deploy/mosquitto/make-credentials"), str(pki),
                    "--server-name", "localhost", "--server-ip", "127.0.0.1",
                    "--unit", "A-1", "--unit", "B-2", "--ranger", "ranger"],
                   check=True, capture_output=True)
    work = tmp / "base"
    (work / "data").mkdir(parents=True)
    broker = PrivateBroker(exe, work)
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    conf = (conf.replace("/etc/mosquitto/camtrap/acl", str(REPO / "deploy/mosquitto/acl"))
            .replace("/etc/mosquitto/camtrap/", f"{pki}/")
            .replace("/var/lib/mosquitto/", f"{work / 'data'}/")
            .replace("\nlistener 8883\n", f"\nlistener {broker.port} 127.0.0.1\n")
            .replace("log_dest syslog", f"log_dest file {work / 'mosquitto.log'}"))
    assert f"listener {broker.port} 127.0.0.1" in conf
    broker.conf.write_text(conf + f"\nuser {current_user()}\n")
    broker.start()
    return broker, pki


class Raw:
    """A paho client logged in over TLS, recording messages and reason codes."""

    def __init__(self, port: int, pki: Path, user: str | None, password: str | None,
                 client_id: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.connect_rc: list[str] = []
        self.puback: dict[int, str] = {}
        self.suback: list[list[str]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.tls_set(ca_certs=str(pki / "ca.crt"))
        self.c.on_connect = lambda c, u, f, rc, p: self.connect_rc.append(str(rc))
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_publish = lambda c, u, mid, rc, p: self.puback.__setitem__(mid, str(rc))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.suback.append([str(r) for r in rcs])
        self.c.connect_async("127.0.0.1", port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _password(pki: Path, kind: str, name: str) -> str:
    return (pki / kind / name / "mqtt-password").read_text().strip()


def test_acl_unit_a_cannot_publish_as_b_or_read_bs_commands(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA")
    broker, pki = _deploy_broker(tmp_path)
    raws: list[Raw] = []
    try:
        # Legitimate traffic works: unit A's daemon link, over TLS with its password file.
        cfg = make_cfg(tmp_path / "trap-a", broker.port, unit={"id": "A-1"}, mqtt={
            "tls": True, "ca_file": str(pki / "ca.crt"), "host": "localhost",
            "password_file": str(pki / "units/A-1/mqtt-password")})
        got: list[str] = []
        ranger = Receiver("127.0.0.1", broker.port, client_id="ranger-acl",
                          on_alert=lambda e: got.append(e["id"]), ca_file=str(pki / "ca.crt"),
                          username="ranger", password=_password(pki, "rangers", "ranger"))
        ranger.start()
        assert ranger.wait_connected(10)
        with EventStore(cfg) as store:
            run = RunningLink(cfg, store.db_path)
            store.notify = run.link.wake
            try:
                store.record(*burst_and_verdict("alert"))
                wait_until(lambda: got == ["A-1-1"], 15, "A's own alert")
                wait_until(lambda: store.outbox.depth()["alert"] == 0, 15, "A's receipt")
            finally:
                run.stop()

        # Nobody gets in without credentials, or with another unit's password.
        anon = Raw(broker.port, pki, None, None, "anon")
        wrong = Raw(broker.port, pki, "B-2", _password(pki, "units", "A-1"), "wrong")
        raws += [anon, wrong]
        wait_until(lambda: bool(anon.connect_rc) and bool(wrong.connect_rc), 10, "refusals")
        assert anon.connect_rc[0] != "Success"
        assert wrong.connect_rc[0] != "Success"

        a = Raw(broker.port, pki, "A-1", _password(pki, "units", "A-1"), "A-1-attacker")
        b = Raw(broker.port, pki, "B-2", _password(pki, "units", "B-2"), "camtrap-B-2")
        raws += [a, b]
        wait_until(lambda: a.connect_rc == ["Success"] and b.connect_rc == ["Success"], 10,
                   "A and B logged in")
        a.c.subscribe([("camtrap/B-2/cmd/#", 1), ("camtrap/B-2/ack", 1)])
        b.c.subscribe("camtrap/B-2/cmd/#", 1)
        wait_until(lambda: len(a.suback) == 1 and len(b.suback) == 1, 10, "subscriptions")

        # A publishes as B: the broker refuses (MQTT 5 reason code) and nobody gets it.
        fake = json.dumps({"id": "B-2-999", "unit": "B-2", "outcome": "alert"}).encode()
        info = a.c.publish("camtrap/B-2/event", fake, qos=1)
        wait_until(lambda: info.mid in a.puback, 10, "the broker's answer")
        assert a.puback[info.mid] == "Not authorized"
        # B's commands and receipts reach B, never A.
        ranger.send_command("B-2", "resend", {"events": ["B-2-1"]})
        ranger._client.publish("camtrap/B-2/ack", b'{"ids": ["B-2-1"]}', qos=1)
        wait_until(lambda: len(b.messages) >= 1, 10, "B's command")
        time.sleep(0.5)
        assert "B-2-999" not in got
        assert [m.topic for m in a.messages] == []
        ranger.stop()
    finally:
        for r in raws:
            r.close()
        broker.stop()


# -- 5. disk full ------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` at ``path`` (root, or passwordless sudo); skips otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    opts = f"size={size_mb}m,uid={os.getuid()},gid={os.getgid()},mode=0755"
    r = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):  # no skipped tests in CI: it runs as root on the dev machine
            pytest.fail(f"cannot mount a small tmpfs in CI: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}); the pruning logic "
                    "is covered by test_retention.py with an injected quota")
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], capture_output=True)


def test_disk_full_keeps_alerts_prunes_images_reports_disk_low(
    tmp_path: Path, broker: Broker, models_dir: Path, cameratrapai_dir: Path
) -> None:
    log = tmp_path / "daemon.log"
    with small_filesystem(tmp_path / "card", 16) as card:
        root = card / "trap"
        db = root / "camtrap.db"
        cfg = daemon_config(
            tmp_path / "trap.toml", root, cameratrapai_dir, broker.port, every_s=0.3,
            mqtt_extra="send_images = false\nstats_interval_s = 1.0",
            # A threshold below the size of one frame: writes do run into ENOSPC for real.
            # (every replayed photo is ≥ 0.39 MB, the prune target 0.3 MB).
            storage_extra="min_free_mb = 0.2\nreserve_mb = 2.0\ncheck_every_s = 0.5",
        )
        proc = start_daemon(cfg, models_dir, log)
        try:
            with Ranger(broker.port, tmp_path / "ranger", "ranger-disk") as ranger:
                wait_until(lambda: len(alerts_decided(db)) >= 2, 60, "the first alerts", log)
                # Something else fills the card to the last byte (a log gone wild), once:
                # the trap is paused meanwhile, or on a loaded machine the filler also eats
                # the reserve the trap gives up at its first failed write, and that race is
                # not the scenario (nothing on the card can defend against it).
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    with (card / "filler").open("wb") as f, contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                before = len(alerts_decided(db))
                # The card really runs out: a write fails with ENOSPC, and the trap copes.
                wait_until(lambda: log_has(log, "card full while writing"), 30,
                           "a write to fail with ENOSPC", log)
                wait_until(lambda: len(alerts_decided(db)) >= before + 4, 60,
                           "alerts stored on the full card", log)
                # 60 s like the other waits: on a loaded 2-core CI machine the first stats
                # after the card fills can take longer than 20 s behind the alert backlog.
                wait_until(lambda: any(s.get("disk_low") for s in ranger.stats_seen), 60,
                           "disk_low in the stats", log)
                assert proc.poll() is None, log.read_text()[-3000:]  # it stayed up
                sent = alerts_decided(db)
                wait_until(lambda: sent <= ranger.got(), 60, "the alerts to arrive", log)
                stop_daemon(proc)
                assert proc.returncode == 0, log.read_text()[-3000:]
                ranger.receiver.wait_quiet(0.3, 5)
                counts = report("disk-full", sent, ranger)
            stored_images = list(root.rglob("*.jpg"))
            events = query(db, "SELECT COUNT(*), COUNT(image_path) FROM events")[0]
            dead_alerts = query(db, "SELECT COUNT(*) FROM outbox WHERE kind = 'alert' "
                                "AND state = 'dead'")[0][0]
        finally:
            stop_daemon(proc)
    print(f"CHAOS disk-full: {events[0]} events, {events[1]} still with an image, "
          f"{len(stored_images)} media files on the card")
    assert counts["lost"] == 0
    assert dead_alerts == 0  # alerts are never pruned
    assert events[1] < events[0]  # images were pruned
    text = log.read_text()
    assert "pruned" in text
    assert "Traceback" not in text
