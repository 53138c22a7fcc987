"""Shared fixtures: the shared data pack and a private mosquitto on a free port.

Tests that need the model pack or the images fail in CI (``CI`` set) when they are missing
and are skipped, with the reason, only outside CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAMTRAP_SHARED", REPO.parent / "shared"))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = f"{what} not found at {path} (set CAMTRAP_SHARED or clone next to ../shared)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The real model pack (``../shared/data/models``)."""
    return _need(SHARED / "data" / "models", "model pack")


@pytest.fixture(scope="session")
def cameratrapai_dir() -> Path:
    """The 14 real camera-trap images, labels in the file names."""
    return _need(SHARED / "data" / "images" / "cameratrapai", "cameratrapai images")


@pytest.fixture(scope="session")
def field_dir() -> Path:
    """The 119 labelled field frames."""
    return _need(SHARED / "data" / "images" / "field", "field images")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A real mosquitto on a free loopback port that a test can kill and restart.

    Persistence is on with autosave on every change so that a restarted broker keeps the
    sessions of clients that connected with ``clean_start=False`` (as in the field).
    """

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        user = os.environ.get("USER") or "root"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "autosave_on_changes true\n"
            f"user {user}\n"
            "log_dest none\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail(f"mosquitto exited with {self.proc.returncode}")
                time.sleep(0.02)
        pytest.fail("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): the broker saves its state."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """Kill -9: what a power cut does to the broker."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running private mosquitto; stopped at the end of the test."""
    d = tmp_path / "broker"
    d.mkdir()
    b = Broker(d)
    b.start()
    try:
        yield b
    finally:
        b.kill()
