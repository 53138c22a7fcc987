"""`camtrap run` as a real process: SIGTERM stops it cleanly within 5 s, kill -9 loses
nothing decided, and a restarted daemon delivers everything that was queued.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from chaos_support import alerts_decided, daemon_config, query, start_daemon, wait_until

from edge_app.sim.broker import PrivateBroker as Broker
from edge_app.station.receiver import Receiver

pytestmark = [pytest.mark.models, pytest.mark.broker]


def alerts_in_catalogue(db: Path) -> list[str]:
    return sorted(alerts_decided(db))


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_daemon_stop_then_restart_delivers_everything(
    how: str, tmp_path: Path, broker: Broker, models_dir: Path, cameratrapai_dir: Path
) -> None:
    broker.stop()  # link down: alerts pile up in the outbox
    root = tmp_path / "trap"
    db = root / "camtrap.db"
    log = tmp_path / "daemon.log"
    busy = daemon_config(tmp_path / "busy.toml", root, cameratrapai_dir, broker.port, every_s=0.4)
    proc = start_daemon(busy, models_dir, log)
    try:
        wait_until(lambda: len(alerts_in_catalogue(db)) >= 4, 60, "4 alerts decided", log)
        if how == "sigterm":
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(10)
            stop_s = time.monotonic() - t0
            assert rc == 0, log.read_text()[-3000:]
            assert stop_s < 5.0
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    decided = alerts_in_catalogue(db)
    unsent = query(db, "SELECT event_id FROM outbox WHERE kind = 'alert' AND state != 'sent'")
    assert sorted(r[0] for r in unsent) == sorted(decided)  # every alert is still queued
    if how == "sigterm":
        assert not list(root.rglob(".tmp-*"))  # a clean stop leaves no partial file

    broker.start()
    got: list[str] = []
    lock = threading.Lock()

    def on_alert(event: dict[str, Any]) -> None:
        with lock:
            got.append(str(event["id"]))

    receiver = Receiver("127.0.0.1", broker.port, on_alert=on_alert, client_id=f"r-{how}")
    receiver.start()
    assert receiver.wait_connected(10)
    quiet = daemon_config(tmp_path / "quiet.toml", root, cameratrapai_dir, broker.port, every_s=0.0)
    proc = start_daemon(quiet, models_dir, log)
    try:
        wait_until(lambda: set(got) >= set(decided), 30, "the queued alerts after restart", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        receiver.stop()
    assert len(got) == len(set(got))  # deduplicated by event id
    assert not list(root.rglob(".tmp-*"))  # leftovers of a kill -9 are cleaned at start-up
    assert query(db, "SELECT count(*) FROM outbox WHERE kind = 'alert' AND state != 'sent'") \
        == [(0,)]


def test_sigterm_idle_daemon_stops_fast(
    tmp_path: Path, broker: Broker, models_dir: Path, cameratrapai_dir: Path
) -> None:
    log = tmp_path / "daemon.log"
    cfg = daemon_config(tmp_path / "idle.toml", tmp_path / "trap", cameratrapai_dir,
                       broker.port, every_s=0.0)
    proc = start_daemon(cfg, models_dir, log)
    try:
        wait_until(lambda: "running as LL-007" in log.read_text(), 30, "start-up", log)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
