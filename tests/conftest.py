"""Shared fixtures: the shared data pack and a private mosquitto on a free port.

Tests that need the model pack or the images fail in CI (``CI`` set) when they are missing
and are skipped, with the reason, only outside CI.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_app.sim.broker import PrivateBroker, find_mosquitto

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


class Broker(PrivateBroker):
    """The demo's private broker, persistent (like a base station's), failing the test on error."""

    def start(self, timeout_s: float = 10.0) -> None:
        try:
            super().start(timeout_s)
        except OSError as e:
            pytest.fail(f"mosquitto: {e}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running private mosquitto; stopped at the end of the test."""
    d = tmp_path / "broker"
    d.mkdir()
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(exe, d, persistent=True)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's side of sd_notify: a unix datagram socket named by ``NOTIFY_SOCKET``; read it
    with a short timeout to see what the trap told systemd."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
