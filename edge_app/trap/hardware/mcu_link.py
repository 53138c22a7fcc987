"""The serial link to the supervisor MCU: one open port, a reader thread, request/reply by seq.

Kept apart from the driver's behaviour (``mcu.py``) because it is the only part that touches
pyserial and threads directly. How the port is read: a reader thread blocks in
``serial.read`` (pyserial waits in ``select``: no polling, ~0 % CPU while idle) and feeds the
resynchronising :class:`~edge_app.core.mcu_protocol.Receiver`. A command's reply (an ACK, or
the STATUS for GET_STATUS) wakes the thread that waits for it, matched by ``seq`` and type;
every command times out and is retried with the same ``seq`` (a late ACK of the first try
still counts), then fails with :class:`McuError`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import serial

from edge_app.core.clock import Clock
from edge_app.core.errors import EdgeAppError
from edge_app.core.mcu_protocol import (
    MCU_TO_PI,
    Ack,
    AckResult,
    Frame,
    GetStatus,
    Message,
    Receiver,
    Status,
    code_name,
)

try:
    import termios

    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # pragma: no cover - not POSIX
    _TERMIOS_ERRORS = ()


logger = logging.getLogger(__name__)

SERIAL_ERRORS: tuple[type[BaseException], ...] = (
    serial.SerialException, OSError, TypeError, AttributeError, ValueError, *_TERMIOS_ERRORS)


class McuError(EdgeAppError):
    """The MCU did not answer (after every retry), the port failed, or it refused."""


class McuRefused(McuError):
    """The MCU answered a command with an ACK result other than ``ok``."""

    def __init__(self, what: str, result: int) -> None:
        super().__init__(f"MCU refused {what}: {code_name(AckResult, result)}")
        self.result = result



@dataclass
class LinkCounters:
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    refused: int = 0
    stray_replies: int = 0
    frames_in: int = 0


class _Waiter:
    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.reply: Message | None = None
        self.done = threading.Event()

    def matches(self, m: Message) -> bool:
        if isinstance(self.msg, GetStatus):
            return isinstance(m, Status)
        return isinstance(m, Ack) and m.acked_type == self.msg.TYPE


class McuLink:
    """One open serial port to the MCU: a reader thread and request/reply by ``seq``.

    Args:
        port: device path or pyserial URL.
        baudrate: UART speed.
        clock: arrival times for the receiver's frame timeout.
        on_message: called on the reader thread for every message that is not the awaited
            reply of a command (HELLO, TRIGGER, and every STATUS); must not block.
        on_broken: called on the reader thread when the port fails (to wake the stage).
    """

    def __init__(self, port: str, baudrate: int, clock: Clock,
                 on_message: Callable[[Message], None],
                 on_broken: Callable[[], None] | None = None) -> None:
        self.port, self.baudrate, self.clock = port, baudrate, clock
        self.on_message = on_message
        self.on_broken = on_broken or (lambda: None)
        self.rx = Receiver(MCU_TO_PI, name=f"MCU UART {port}")
        self.counters = LinkCounters()
        self.broken: str | None = None
        self.last_rx: float | None = None
        self._ser: serial.Serial | None = None
        self._lock = threading.Lock()  # guards _seq, _waiters; the write lock is separate
        self._write_lock = threading.Lock()
        self._seq = 0
        self._waiters: dict[int, _Waiter] = {}
        self._reader: threading.Thread | None = None
        self._closing = False

    def open(self) -> None:
        """Open the port and start the reader.

        Raises:
            McuError: the port cannot be opened.
        """
        try:
            self._ser = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=None,
                                              write_timeout=1.0)
        except SERIAL_ERRORS as e:
            raise McuError(f"cannot open {self.port}: {e}") from e
        self.broken, self._closing = None, False
        self._reader = threading.Thread(target=self._read, name="mcu-serial", daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Stop the reader (``cancel_read`` wakes its select) and close the port; idempotent."""
        self._closing = True
        ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(*SERIAL_ERRORS):
                ser.cancel_read()
        if self._reader is not None:
            self._reader.join(2.0)
            self._reader = None
        if ser is not None:
            with contextlib.suppress(*SERIAL_ERRORS):
                ser.close()
        with self._lock:
            for w in self._waiters.values():
                w.done.set()

    @property
    def is_open(self) -> bool:
        return self._ser is not None and self.broken is None

    def request(self, msg: Message, timeout_s: float, attempts: int) -> Message:
        """Send ``msg`` and wait for its reply (STATUS for GET_STATUS, else its ACK).

        Raises:
            McuRefused: an ACK with a result other than ok.
            McuError: no reply after ``attempts`` sends, or the port failed.
        """
        name = msg.TYPE.name
        with self._lock:
            seq = self._seq
            while seq in self._waiters:
                seq = (seq + 1) & 0xFF
            self._seq = (seq + 1) & 0xFF
            waiter = self._waiters[seq] = _Waiter(msg)
        self.counters.requests += 1
        try:
            frame = msg.frame(seq)
            for attempt in range(attempts):
                if attempt:
                    self.counters.retries += 1
                self._write(frame)
                if waiter.done.wait(timeout_s):
                    break
        finally:
            with self._lock:
                self._waiters.pop(seq, None)
        reply = waiter.reply
        if reply is None:
            if self.broken or self._closing:
                raise McuError(f"{name}: port closed ({self.broken or 'closing'})")
            self.counters.timeouts += 1
            raise McuError(f"no reply to {name} after {attempts} tries")
        if isinstance(reply, Ack) and reply.result != AckResult.OK:
            self.counters.refused += 1
            raise McuRefused(name, reply.result)
        return reply

    def send_raw(self, data: bytes) -> None:
        """Put raw bytes on the line (line-noise tests and diagnostics). Raises McuError."""
        self._write(data)

    def _write(self, data: bytes) -> None:
        ser = self._ser
        if ser is None or self.broken:
            raise McuError(f"port {self.port} is not open ({self.broken or 'closed'})")
        try:
            with self._write_lock:
                ser.write(data)
                ser.flush()
        except SERIAL_ERRORS as e:
            self.broken = self.broken or f"write failed: {e}"
            raise McuError(f"serial write failed: {e}") from e

    def _read(self) -> None:
        ser = self._ser
        while not self._closing and ser is not None:
            try:
                chunk = ser.read(max(1, ser.in_waiting))
            except SERIAL_ERRORS as e:
                if not self._closing:
                    self.broken = str(e) or type(e).__name__
                    logger.error("MCU: serial read failed: %s", self.broken)
                    self.on_broken()
                return
            if not chunk:
                continue  # cancel_read
            now = self.clock.monotonic()
            for frame in self.rx.feed(chunk, now):
                self._frame(frame, now)

    def _frame(self, frame: Frame, now: float) -> None:
        msg = frame.message
        if msg is None:
            return  # counted by the receiver
        self.counters.frames_in += 1
        self.last_rx = now
        if isinstance(msg, Ack | Status):
            with self._lock:
                w = self._waiters.get(frame.seq)
                matched = w is not None and w.reply is None and w.matches(msg)
                if matched and w is not None:
                    w.reply = msg
                    w.done.set()
            if not matched:
                self.counters.stray_replies += 1
            if isinstance(msg, Ack):
                return
        self.on_message(msg)

