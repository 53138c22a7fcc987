"""Supervisor lifecycle: order, restart budget, stop within the deadline; StageQueue policy."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from edge_app.core.clock import FakeClock, SystemClock
from edge_app.trap.supervisor import StageQueue, Supervisor, sd_notify


def test_starts_in_order_and_stops_in_reverse() -> None:
    log: list[str] = []
    lock = threading.Lock()
    sup = Supervisor(SystemClock())
    for name in ("outbox", "detect", "capture"):
        q: StageQueue[int] = StageQueue(name, 2)

        def loop(stop: threading.Event, name: str = name, q: StageQueue[int] = q) -> None:
            with lock:
                log.append(f"start {name}")
            q.get(stop)
            with lock:
                log.append(f"stop {name}")

        sup.add(name, loop, q.wake)
    sup.start()
    deadline = time.monotonic() + 5
    while len(log) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(log) == ["start capture", "start detect", "start outbox"]
    assert sup.stop(timeout_s=5) == []
    assert log[3:] == ["stop capture", "stop detect", "stop outbox"]


def test_crashing_stage_is_restarted_then_given_up() -> None:
    clock = FakeClock()
    runs = []

    def bad(stop: threading.Event) -> None:
        runs.append(1)
        raise RuntimeError("boom")

    sup = Supervisor(clock, max_restarts=3, window_s=60, restart_delay_s=1)
    sup.add("bad", bad)
    sup.start()
    assert sup.done.wait(5)
    assert sup.failed == "bad"
    assert len(runs) == 4  # first run + 3 restarts
    sup.stop(1)


def test_stage_that_recovers_keeps_running() -> None:
    clock = FakeClock()
    runs: list[int] = []
    finished = threading.Event()

    def flaky(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise OSError("transient")
        finished.set()
        stop.wait()

    sup = Supervisor(clock, max_restarts=5)
    sup.add("flaky", flaky)
    sup.start()
    assert finished.wait(5)
    assert sup.failed is None
    sup.stop(2)
    assert len(runs) == 3


def test_drop_oldest_never_blocks_and_counts() -> None:
    q: StageQueue[int] = StageQueue("t", 2)
    assert q.put_drop_oldest(1)
    assert q.put_drop_oldest(2)
    assert not q.put_drop_oldest(3)
    assert q.dropped == 1
    stop = threading.Event()
    assert [q.get(stop), q.get(stop)] == [2, 3]


def test_put_wait_gives_up_on_stop() -> None:
    q: StageQueue[int] = StageQueue("t", 1)
    stop = threading.Event()
    assert q.put_wait(1, stop)
    stop.set()
    assert not q.put_wait(2, stop)
    assert q.get(threading.Event()) == 1


def test_sd_notify_sends_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1")
        assert srv.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")
