"""A serial line for an emulated device: a raw pseudo-terminal plus a wake pipe.

The modem and MCU emulators each sit on the master end of a pty while the code under test
opens the slave end by name with real pyserial, exactly as it opens ``/dev/ttyAMA0`` on a Pi.
The wake pipe lets another thread (a test injecting noise, a PIR edge, a stop) interrupt the
emulator's ``select`` without polling, so an idle emulator uses no CPU.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty


class PtyPort:
    """The emulator's end of one serial line.

    Args:
        nonblocking: writes that would block fail with BlockingIOError instead (a Pi that
            does not read must not stall an MCU; a real UART drops the bytes too).
    """

    def __init__(self, *, nonblocking: bool = False) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        if nonblocking:
            os.set_blocking(self.master, False)
        self.name = os.ttyname(self.slave)
        """The device path the code under test opens (``/dev/pts/N``)."""
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self.closed = False

    def wake(self) -> None:
        """Interrupt :meth:`wait` now (any thread; harmless once closed)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def wait(self, timeout: float | None) -> bool | None:
        """Sleep until the line has bytes, a :meth:`wake` or ``timeout`` seconds.

        Returns:
            True when there are bytes to :meth:`read`, False on a wake or a timeout, None
            once the port is closed.
        """
        try:
            ready, _, _ = select.select([self.master, self._wake_r], [], [], timeout)
        except (OSError, ValueError):
            return None
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 512)
        return self.master in ready

    def read(self) -> bytes:
        """What the other end wrote (b'' when nothing or closed)."""
        try:
            return os.read(self.master, 4096)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        """Put bytes on the line.

        Raises:
            BlockingIOError: a non-blocking port whose other end does not read.
            OSError: the port is closed.
        """
        os.write(self.master, data)

    def close(self) -> None:
        """Close the pty and the wake pipe (idempotent, any thread)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
