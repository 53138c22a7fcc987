"""Support for the chaos tests: a TCP proxy the test controls, and daemon/receiver helpers.

The proxy sits between a trap and its broker and can be switched, at any moment, between:

* ``pass``: bytes flow as they come;
* ``blackhole``: nothing flows in either direction; bytes are held as TCP would hold them
  while it retransmits (so a link that heals in time delivers them late, in order). A side
  that closes during the black hole aborts that connection (its held bytes are dropped, as a
  TCP reset would), and new connections are accepted but reach nothing until healed;
* ``slow``: bytes flow at ``rate`` bytes per second with ``latency_s`` added per read, like a
  poor cellular link.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


class _Conn:
    def __init__(self, down: socket.socket) -> None:
        self.down = down
        self.up: socket.socket | None = None
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.down, self.up):
            if s is None:
                continue
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class TcpProxy:
    """A loopback TCP proxy to ``127.0.0.1:target_port`` with switchable link conditions."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mode = "pass"
        self._rate = 0.0
        self._latency_s = 0.0
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    # -- control --------------------------------------------------------------------------

    def blackhole(self) -> None:
        self._mode = "blackhole"

    def slow(self, rate_bytes_s: float, latency_s: float) -> None:
        self._rate, self._latency_s = rate_bytes_s, latency_s
        self._mode = "slow"

    def heal(self) -> None:
        self._mode = "pass"

    @property
    def mode(self) -> str:
        return self._mode

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()

    # -- plumbing -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn = _Conn(down)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._pump_down_up, args=(conn,), daemon=True).start()

    def _connect_up(self, conn: _Conn) -> bool:
        if conn.up is not None:
            return True
        try:
            conn.up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            conn.close()
            return False
        conn.up.settimeout(None)
        threading.Thread(target=self._pump_up_down, args=(conn,), daemon=True).start()
        return True

    def _send(self, conn: _Conn, dst: socket.socket | None, data: bytes) -> bool:
        if dst is None:
            return False
        if self._mode == "slow":
            time.sleep(self._latency_s)
            step = 1024
            for i in range(0, len(data), step):
                piece = data[i:i + step]
                time.sleep(len(piece) / max(1.0, self._rate))
                try:
                    dst.sendall(piece)
                except OSError:
                    return False
            return True
        try:
            dst.sendall(data)
        except OSError:
            return False
        return True

    def _pump_down_up(self, conn: _Conn) -> None:
        self._pump(conn, lambda: conn.down, lambda: conn.up, connect=True)

    def _pump_up_down(self, conn: _Conn) -> None:
        self._pump(conn, lambda: conn.up, lambda: conn.down, connect=False)

    def _pump(
        self, conn: _Conn, src_of: Callable[[], socket.socket | None],
        dst_of: Callable[[], socket.socket | None], connect: bool,
    ) -> None:
        held = bytearray()
        src = src_of()
        assert src is not None
        while not conn.closed and not self._closed:
            if self._mode != "blackhole":
                if connect and not self._connect_up(conn):
                    return
                if held:
                    if not self._send(conn, dst_of(), bytes(held)):
                        break
                    held.clear()
            try:
                ready, _, _ = select.select([src], [], [], 0.1)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                if self._mode != "blackhole" and held:
                    self._send(conn, dst_of(), bytes(held))
                break
            held.extend(data)
        conn.close()


# -- daemon and database helpers ------------------------------------------------------------


def daemon_config(
    path: Path, root: Path, images: Path, port: int, *, unit: str = "LL-007",
    every_s: float = 0.3, keepalive_s: int = 5, extra: str = "", mqtt_extra: str = "",
    outbox_extra: str = "", storage_extra: str = "",
) -> Path:
    """A sim-backend daemon config: replay camera, a simulated animal every ``every_s``."""
    path.write_text(f"""
[unit]
id = "{unit}"
[hardware]
backend = "sim"
[trigger]
sim_every_s = {every_s}
holdoff_s = 0.1
debounce_s = 0.02
sample_rate_hz = 50.0
[camera]
source = "replay"
images_dir = "{images}"
burst_frames = 2
burst_interval_s = 0.05
[policy]
alert_on = ["animal", "person", "vehicle"]
audit_every = 0
[storage]
root = "{root}"
{storage_extra}
[outbox]
backoff_min_s = 0.2
backoff_max_s = 1.0
inflight_timeout_s = 10.0
receipt_timeout_s = 3.0
receipt_timeout_max_s = 6.0
{outbox_extra}
[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
keepalive_s = {keepalive_s}
reconnect_min_s = 1.0
reconnect_max_s = 2.0
image_min_link_s = 0.0
{mqtt_extra}
{extra}
""")
    return path


def start_daemon(cfg: Path, models: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_app", "run", "--config", str(cfg), "--models",
             str(models)], stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
        )


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the trap database from outside the daemon (read-only, WAL lets both run)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        con.close()


def alerts_decided(db: Path) -> set[str]:
    return {r[0] for r in query(db, "SELECT id FROM events WHERE outcome = 'alert'")}


def undelivered(db: Path, kinds: tuple[str, ...] = ("alert", "event", "thumb")) -> int:
    marks = ", ".join("?" for _ in kinds)
    rows = query(db, f"SELECT COUNT(*) FROM outbox WHERE kind IN ({marks}) "  # noqa: S608
                 "AND state IN ('ready', 'inflight', 'acked-by-broker')", kinds)
    return int(rows[0][0]) if rows else 0


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tail}")
        time.sleep(0.05)


def log_has(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text()


def current_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "root")
