"""A private mosquitto for ``camtrap demo``: free loopback port, temp dir, stopped by PID.

The demo must show the real wire path (MQTT 5 to a real broker), but must not touch the
machine's own broker on 1883 nor leave anything behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None (Debian puts it in /usr/sbin, often off PATH).

    ``CAMTRAP_MOSQUITTO`` names the binary explicitly (None if it is not executable there).
    """
    forced = os.environ.get("CAMTRAP_MOSQUITTO")
    if forced is not None:
        return forced if os.access(forced, os.X_OK) else None
    exe = shutil.which("mosquitto")
    if exe:
        return exe
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """Runs ``mosquitto -c <workdir>/mosquitto.conf`` on 127.0.0.1:<free port>.

    Args:
        exe: the mosquitto binary.
        workdir: where its config (and persistence file) go.
        persistent: keep sessions and queued messages on disk, saved on every change, so a
            broker killed with -9 and restarted behaves like a base station's (tests use it).
        extra: more config lines (e.g. the base station's queue limits).
    """

    def __init__(self, exe: str, workdir: Path, persistent: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        self.exe = exe
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        user = os.environ.get("USER") or "root"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", f"user {user}",
                 "log_dest none"]
        if persistent:
            lines += ["persistence true", f"persistence_location {workdir}/",
                      "autosave_interval 1", "autosave_on_changes true"]
        else:
            lines.append("persistence false")
        lines += extra
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait until the port accepts connections.

        Raises:
            OSError: if mosquitto exits or does not listen in time.
        """
        self._proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._proc.poll() is not None:
                    raise OSError(f"mosquitto exited with code {self._proc.returncode}") from None
                time.sleep(0.02)
        self.stop()
        raise OSError(f"mosquitto did not listen on port {self.port} within {timeout_s} s")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """Kill -9: what a power cut does to the broker."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM; a persistent broker saves its state)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
