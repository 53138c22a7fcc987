"""LoRaWAN modem drivers over pyserial: RAK3172 (RUI3 AT firmware) and Seeed Wio-E5.

One interface, :class:`LoRaModem`, two dialects. The router (``edge_app/trap/uplink/router.py``)
only ever sees ``provision`` / ``join`` / ``send`` / ``data_rate`` / ``poll`` and their result
values, so a third module (RN2483) would be one more class.

How the serial port is read: a reader thread blocks in ``serial.read`` (pyserial waits in
``select`` — no polling, ~0 % CPU while idle) and hands complete lines to a queue; the
router's thread writes commands and waits on that queue with a deadline, so **every command
times out**. ``serial_for_url`` opens ``/dev/ttyS0``, a pty of the emulator, or ``spy://`` to
log the traffic. The reader is the one place that sees raw bytes, so it also defends against
the line: bytes outside printable ASCII (noise at power-up, a baud mismatch) are stripped and
counted, and a line longer than :data:`MAX_LINE` is dropped and counted, never buffered without
bound.

Result values, not exceptions, for everything a radio does on a normal day (no ACK, busy,
duty-cycle wait, not joined, a reset, a timeout): the router decides what each means for the
message. :class:`ModemError` is only for "this modem cannot be used right now" (port gone, no
answer to ``AT``, a provisioning command refused), which the router handles by reopening with
backoff.

Keys: :func:`load_secrets` reads them from a file that must be mode 0600; the drivers redact
them from every log line (in both directions: the Wio-E5 echoes the key back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import stat
import threading
import time
import tomllib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import serial

from edge_app.core.errors import ConfigError
from edge_app.core.guard import Refused, finite_number

try:
    import termios

    _TERMIOS_ERRORS: tuple[type[BaseException], ...] = (termios.error,)
except ImportError:  # pragma: no cover - not POSIX
    _TERMIOS_ERRORS = ()

#: What pyserial raises when a port goes away (termios.error is not an OSError).
SERIAL_ERRORS: tuple[type[BaseException], ...] = (
    serial.SerialException, OSError, TypeError, AttributeError, ValueError, *_TERMIOS_ERRORS)

logger = logging.getLogger(__name__)

MAX_LINE = 1024  # the longest legitimate line: a 242-byte downlink in hex plus its header
RUI3_BANDS = {"RU864": 2, "EU868": 4}
DEFAULT_BAUD = {"rak3172": 115200, "wio-e5": 9600}

_KEY_RE = re.compile(r"((?:APP|NWK|APPS|NWKS)KEY[\s=,:\"]*)([0-9A-Fa-f]{32})", re.I)


def redact(text: str) -> str:
    """``text`` with any 128-bit key after APPKEY/NWKSKEY/APPSKEY replaced by ``****``."""
    return _KEY_RE.sub(r"\1****", text)


# -- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LorawanKeys:
    """OTAA identity and root key. ``repr`` never shows the key."""

    dev_eui: str
    join_eui: str
    app_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"LorawanKeys(dev_eui={self.dev_eui!r}, join_eui={self.join_eui!r}, app_key=****)"


def load_secrets(path: str | os.PathLike[str]) -> LorawanKeys:
    """Read ``dev_eui``, ``join_eui`` and ``app_key`` (hex) from a TOML file of mode 0600.

    Refusing a group- or world-readable file is deliberate: the AppKey is the device's root
    key, and a key readable by every account on the Pi is a leaked key. Errors name the key
    and the file, never a value.

    Raises:
        ConfigError: missing or unreadable file, loose permissions, bad or missing values.
    """
    p = Path(path)
    where = "lorawan.secrets_file"
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(where, f"cannot read {p}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(where, f"{p} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(where, f"{p} is accessible by group/others (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}")
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        # The TOML error quotes the offending line, which may hold the key: not shown.
        raise ConfigError(where, f"{p} is not valid TOML ({type(e).__name__})") from None
    values: dict[str, str] = {}
    for name, nbytes in (("dev_eui", 8), ("join_eui", 8), ("app_key", 16)):
        v = data.get(name)
        if not isinstance(v, str):
            raise ConfigError(f"{where}:{name}", f"is required in {p} ({nbytes * 2} hex digits)")
        v = v.replace(":", "").replace("-", "").strip().upper()
        if len(v) != nbytes * 2 or not all(c in "0123456789ABCDEF" for c in v):
            raise ConfigError(f"{where}:{name}", f"must be {nbytes * 2} hex digits in {p}")
        values[name] = v
    unknown = sorted(set(data) - {"dev_eui", "join_eui", "app_key"})
    if unknown:
        raise ConfigError(f"{where}:{unknown[0]}", f"unknown key in {p}")
    return LorawanKeys(values["dev_eui"], values["join_eui"], values["app_key"])


# -- results ----------------------------------------------------------------------------------


class SendStatus(Enum):
    """How an uplink ended."""

    ACKED = "acked"  # confirmed uplink, ACK received
    SENT = "sent"  # unconfirmed uplink transmitted
    NO_ACK = "no_ack"  # confirmed uplink transmitted, no ACK in RX1/RX2
    BUSY = "busy"  # module busy (previous TX/RX windows, its own duty cycle); not transmitted
    DUTY_CYCLE = "duty_cycle"  # module refused for duty cycle, with a wait hint
    NOT_JOINED = "not_joined"  # module has no session (e.g. it was reset)
    RESET = "reset"  # the module reset while sending
    TIMEOUT = "timeout"  # no final answer in time; outcome unknown
    REJECTED = "rejected"  # the module refused the command (parameters, length)


@dataclass(frozen=True, slots=True)
class Downlink:
    """Application data received in an RX window."""

    port: int
    payload: bytes
    rssi: float | None = None
    snr: float | None = None


MAX_DOWNLINK_BYTES = 242
"""The largest LoRaWAN application payload in any region (DR with the longest frames)."""


def parse_downlink(port: str, hex_payload: str, rssi: str | None = None,
                   snr: str | None = None) -> Downlink:
    """A downlink from the fields of a modem line, checked like any input from outside.

    The modem is ours, but its line is the radio's: a corrupted or spoofed frame must not
    become an odd-length hex string, port 0 or a NaN signal figure deeper in the router.

    Raises:
        Refused: ``bad_port``, ``bad_payload`` or ``non_finite`` (the caller counts it).
    """
    if not port.isdigit() or not 1 <= int(port) <= 223:
        raise Refused("bad_port", f"fPort {port[:8]!r} is not an application port (1-223)")
    text = hex_payload.replace(" ", "")
    if len(text) > 2 * MAX_DOWNLINK_BYTES or len(text) % 2:
        raise Refused("bad_payload", f"{len(text)} hex digits")
    try:
        payload = bytes.fromhex(text)
    except ValueError:
        raise Refused("bad_payload", "not hex") from None
    figures: list[float | None] = []
    for name, value in (("rssi", rssi), ("snr", snr)):
        if value is None:
            figures.append(None)
            continue
        try:
            number = float(value)
        except ValueError:
            raise Refused("bad_type", f"{name} {value[:8]!r} is not a number") from None
        figures.append(finite_number(number, name))
    return Downlink(int(port), payload, figures[0], figures[1])


@dataclass
class SendResult:
    """Outcome of :meth:`LoRaModem.send`.

    Attributes:
        transmitted: True if the radio (may have) spent airtime — the ledger is charged
            whenever this is True, including unknown outcomes (a timeout, a reset mid-send).
        retry_after_s: the module's own hint (Wio-E5 "No band in N ms").
    """

    status: SendStatus
    transmitted: bool
    downlinks: list[Downlink] = field(default_factory=list)
    retry_after_s: float | None = None
    detail: str = ""


@dataclass
class JoinResult:
    """Outcome of one join attempt (``transmitted``: a JoinRequest went on the air)."""

    joined: bool
    transmitted: bool
    detail: str = ""
    retry_after_s: float | None = None


@dataclass
class DriverStats:
    """Counters of a driver (all survive the lines that caused them)."""

    lines: int = 0
    commands: int = 0
    garbage: int = 0  # lines that held bytes outside printable ASCII
    overlong: int = 0  # lines longer than MAX_LINE, dropped
    unexpected: int = 0  # well-formed lines that made no sense where they came
    timeouts: int = 0
    resets: int = 0
    busy: int = 0


class ModemError(Exception):
    """The modem cannot be used now (port gone, silent, a set-up command refused)."""


# -- the line channel -------------------------------------------------------------------------

_BROKEN = object()


class LineChannel:
    """A serial port as a queue of text lines, read by one blocking thread.

    Args:
        ser: an open pyserial port with ``timeout=None`` (reads block in select).
        stats: where garbage and overlong lines are counted.
        on_idle_line: called (on the reader thread) when a line arrives while no command is
            waiting — lets the router notice a reset banner or a late event right away.
    """

    def __init__(self, ser: serial.Serial, stats: DriverStats,
                 on_idle_line: Callable[[], None] | None = None) -> None:
        self._ser = ser
        self.stats = stats
        self._q: queue.Queue[object] = queue.Queue()
        self._closing = False
        self.busy = False  # set by the command side while it waits for replies
        self._on_idle_line = on_idle_line
        self.broken: str | None = None
        self._warned = 0
        self._thread = threading.Thread(target=self._read, name="lorawan-serial", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the reader (``cancel_read`` wakes its select) and close the port; a command
        waiting for a reply on another thread gets :class:`ModemError` at once."""
        self._closing = True
        self.broken = self.broken or "port closed"
        self._q.put(_BROKEN)
        with contextlib.suppress(Exception):
            self._ser.cancel_read()
        self._thread.join(2.0)
        with contextlib.suppress(Exception):
            self._ser.close()

    def write(self, text: str) -> None:
        try:
            self._ser.write(text.encode("ascii"))
            self._ser.flush()
        except SERIAL_ERRORS as e:
            raise ModemError(f"serial write failed: {e}") from e

    def get(self, deadline: float) -> str | None:
        """The next line, or None at ``deadline`` (time.monotonic()).

        Raises:
            ModemError: the port broke (unplugged, closed under us).
        """
        timeout = max(0.0, deadline - time.monotonic())
        try:
            item = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return None
        if item is _BROKEN:
            self._q.put(_BROKEN)  # stay broken for every later reader
            raise ModemError(f"serial port failed: {self.broken}")
        assert isinstance(item, str)
        return item

    def _read(self) -> None:
        buf = bytearray()
        dropping = False
        while not self._closing:
            try:
                chunk = self._ser.read(max(1, self._ser.in_waiting))
            except SERIAL_ERRORS as e:
                if not self._closing:
                    self.broken = str(e) or type(e).__name__
                    logger.error("LoRa modem: serial read failed: %s", self.broken)
                    self._q.put(_BROKEN)
                return
            if not chunk:
                continue  # cancel_read, or a read timeout
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                if dropping:
                    dropping = False  # the tail of an overlong line
                    continue
                self._line(line)
            if len(buf) > MAX_LINE:
                self.stats.overlong += 1
                self._warn("dropped a line longer than %d bytes", MAX_LINE)
                buf.clear()
                dropping = True

    def _line(self, raw: bytes) -> None:
        raw = raw.rstrip(b"\r")
        if len(raw) > MAX_LINE:
            self.stats.overlong += 1
            self._warn("dropped a line longer than %d bytes", MAX_LINE)
            return
        clean = bytes(c for c in raw if 0x20 <= c < 0x7F)
        if len(clean) != len(raw):
            self.stats.garbage += 1
            self._warn("%d byte(s) of noise on the line", len(raw) - len(clean))
            clean = clean.strip()
            if len(clean) < 2:
                return
        text = clean.decode("ascii").strip()
        if not text:
            return
        self.stats.lines += 1
        logger.debug("LoRa modem ← %s", redact(text))
        self._q.put(text)
        if not self.busy and self._on_idle_line is not None:
            self._on_idle_line()

    def _warn(self, msg: str, *args: object) -> None:
        """Log noise, but not a line per byte for hours: the first few, then every 100th."""
        self._warned += 1
        if self._warned <= 5 or self._warned % 100 == 0:
            logger.warning("LoRa modem: %s (%d so far)", msg % args, self._warned)


def open_serial(url: str, baudrate: int) -> serial.Serial:
    """Open a port or pyserial URL for a line channel (blocking reads, bounded writes)."""
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=None, write_timeout=2.0)
    except (serial.SerialException, OSError, ValueError) as e:
        raise ModemError(f"cannot open {url}: {e}") from e


# -- the interface ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """How long to wait for what (real seconds; the emulator answers well inside these).

    Attributes:
        command_s: an ordinary AT command's final reply.
        join_extra_s: after the JoinRequest's airtime: JoinAccept windows at 5 and 6 s + margin.
        send_extra_s: after an uplink's airtime: RX1 at 1 s, RX2 at 2 s + margin.
        boot_s: a module rebooting (mode change, reset) until its banner.
    """

    command_s: float = 3.0
    join_extra_s: float = 9.0
    send_extra_s: float = 6.0
    boot_s: float = 6.0


class LoRaModem(ABC):
    """One LoRaWAN module on a serial line.

    Args:
        url: serial device or pyserial URL.
        baudrate: line speed.
        timings: command timeouts.
        on_idle_line: called from the reader thread when the modem speaks unprompted.
    """

    name = "modem"

    def __init__(self, url: str, baudrate: int, timings: Timings | None = None,
                 on_idle_line: Callable[[], None] | None = None) -> None:
        self.url = url
        self.baudrate = baudrate
        self.timings = timings or Timings()
        self.stats = DriverStats()
        self._on_idle_line = on_idle_line
        self._ch: LineChannel | None = None
        self._reset_seen = False
        self._downlinks: list[Downlink] = []
        self.joined = False

    # lifecycle

    def open(self) -> None:
        """Open the port and check that the module answers.

        Raises:
            ModemError: cannot open, or no answer to ``AT``.
        """
        self.close()
        ser = open_serial(self.url, self.baudrate)
        self._ch = LineChannel(ser, self.stats, self._on_idle_line)
        self._ch.start()
        try:
            self._probe()
        except ModemError:
            self.close()
            raise

    def close(self) -> None:
        if self._ch is not None:
            self._ch.close()
            self._ch = None

    def __enter__(self) -> LoRaModem:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # state the router reads

    def take_reset(self) -> bool:
        """True once after the module was seen to reset (re-provision, then re-join)."""
        seen, self._reset_seen = self._reset_seen, False
        return seen

    def take_downlinks(self) -> list[Downlink]:
        """Downlinks that arrived outside a send (late RX events)."""
        out, self._downlinks = self._downlinks, []
        return out

    def _mark_reset(self) -> None:
        self._reset_seen = True
        self.joined = False
        self.stats.resets += 1
        logger.warning("LoRa modem: %s reset (session lost)", self.name)

    # the channel

    @property
    def ch(self) -> LineChannel:
        if self._ch is None:
            raise ModemError("modem not open")
        return self._ch

    def _write(self, cmd: str) -> None:
        self.stats.commands += 1
        logger.debug("LoRa modem → %s", redact(cmd))
        self.ch.write(cmd + "\r\n")

    # dialect

    @abstractmethod
    def _probe(self) -> None: ...

    @abstractmethod
    def poll(self) -> None:
        """Read what the module said unprompted (reset banners, late events); never blocks."""

    @abstractmethod
    def provision(self, keys: LorawanKeys, region: str, *, adr: bool, data_rate: int) -> None:
        """Set mode, region, keys, class A, ADR/DR; idempotent, run after every reset.

        Raises:
            ModemError: a set-up command was refused or timed out.
        """

    @abstractmethod
    def join(self, airtime_s: float, force: bool = False) -> JoinResult:
        """One OTAA join attempt (the router owns backoff); ``force`` joins again even if
        the module believes it has a session."""

    @abstractmethod
    def data_rate(self) -> int:
        """The current uplink data rate (ADR may change it).

        Raises:
            ModemError: no valid answer.
        """

    @abstractmethod
    def send(self, port: int, payload: bytes, confirmed: bool, airtime_s: float) -> SendResult:
        """One uplink; waits through the RX windows for the ACK and any downlink."""


# -- RAK3172, RUI3 ----------------------------------------------------------------------------

RUI3_STATUS = frozenset({
    "OK", "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_TEST_PARAM_OVERFLOW",
    "AT_NO_CLASSB_ENABLE", "AT_NO_NETWORK_JOINED", "AT_RX_ERROR", "AT_DUTYCYLE_RESTRICTED",
    "AT_COMMAND_NOT_FOUND",
})
RUI3_BOOT_MARK = "current work mode"


def rui3_event(line: str) -> str | None:
    """``+EVT:`` line → normalised name (spaces and underscores dropped, upper case), keeping
    any ``:args``; both firmware spellings map to one name (``SEND CONFIRMED OK`` and
    ``SEND_CONFIRMED_OK`` → ``SENDCONFIRMEDOK``)."""
    if not line.upper().startswith("+EVT:"):
        return None
    body = line[5:].strip()
    name, sep, args = body.partition(":")
    return name.replace(" ", "").replace("_", "").upper() + sep + args


class Rak3172(LoRaModem):
    """RAK3172 with RUI3 AT firmware (115200 8N1, ``+EVT:`` asynchronous events)."""

    name = "RAK3172"

    def __init__(self, url: str, baudrate: int = 115200, timings: Timings | None = None,
                 on_idle_line: Callable[[], None] | None = None) -> None:
        super().__init__(url, baudrate, timings, on_idle_line)
        self._events: deque[str] = deque()  # normalised +EVT names seen, not yet consumed
        self._cfm: bool | None = None
        self._join_pending = False  # we started a join whose result has not come yet

    def _probe(self) -> None:
        for _ in range(3):  # the first AT after power-up can be eaten by noise
            st, _v = self._at("AT")
            if st == "OK":
                return
        raise ModemError(f"{self.name} on {self.url}: no answer to AT")

    # line handling

    def _classify(self, line: str) -> str:
        if line in RUI3_STATUS:
            return "status"
        if line.upper().startswith("+EVT:"):
            return "event"
        if RUI3_BOOT_MARK in line.lower():
            return "reset"
        return "value"

    def _handle_event(self, line: str) -> None:
        ev = rui3_event(line)
        if ev is None:
            return
        if ev.startswith("RX"):
            dl = self._parse_rx(line)
            if dl is not None and dl.payload:
                self._downlinks.append(dl)
            return
        if ev == "JOINED":
            self.joined = True
        if ev == "JOINED" or ev.startswith("JOINFAILED"):
            self._join_pending = False
        self._events.append(ev)

    def _parse_rx(self, line: str) -> Downlink | None:
        # +EVT:RX_1:-46:10:UNICAST:111:48454c4c4f0a
        parts = line[5:].strip().split(":")
        try:
            return parse_downlink(parts[4], parts[5] if len(parts) > 5 else "", parts[1],
                                  parts[2])
        except (IndexError, Refused):
            self.stats.unexpected += 1
            logger.warning("LoRa modem: unreadable downlink event %r", redact(line))
            return None

    def _consume(self, line: str) -> str:
        """Handle one line outside a command's own replies; returns its class."""
        kind = self._classify(line)
        if kind == "event":
            self._handle_event(line)
        elif kind == "reset":
            self._mark_reset()
        elif kind == "status":
            self.stats.unexpected += 1  # a late status of a command that timed out
        return kind

    def poll(self) -> None:
        while (line := self.ch.get(0)) is not None:
            if self._consume(line) == "value":
                self.stats.unexpected += 1

    def _at(self, cmd: str, timeout_s: float | None = None) -> tuple[str, list[str]]:
        """Send one command; (final status or ``TIMEOUT``/``RESET``, value lines)."""
        self.poll()
        ch = self.ch
        ch.busy = True
        try:
            self._write(cmd)
            deadline = time.monotonic() + (timeout_s or self.timings.command_s)
            values: list[str] = []
            while True:
                line = ch.get(deadline)
                if line is None:
                    self.stats.timeouts += 1
                    logger.warning("LoRa modem: %s timed out", redact(cmd))
                    return "TIMEOUT", values
                if line == cmd:
                    continue  # echo (ATE on)
                kind = self._classify(line)
                if kind == "status":
                    if line == "AT_BUSY_ERROR":
                        self.stats.busy += 1
                    return line, values
                if kind == "event":
                    self._handle_event(line)
                elif kind == "reset":
                    self._mark_reset()
                    return "RESET", values
                else:
                    values.append(line)
        finally:
            ch.busy = False

    def _get(self, key: str) -> str:
        """``AT+KEY=?`` → the value; accepts ``AT+KEY=v`` (RUI3 v4) and a bare ``v``."""
        st, values = self._at(f"AT+{key}=?")
        if st != "OK" or not values:
            raise ModemError(f"AT+{key}=? failed: {st}")
        prefix = f"AT+{key}="
        keyed = [v for v in values if v.upper().startswith(prefix)]
        return keyed[-1][len(prefix):] if keyed else values[-1]

    def _set(self, cmd: str) -> None:
        st, _ = self._at(cmd)
        if st != "OK":
            raise ModemError(f"{redact(cmd)} refused: {st}")

    def _wait_boot(self) -> None:
        """Wait for the banner of a reboot we asked for (not counted as a reset)."""
        deadline = time.monotonic() + self.timings.boot_s
        while (line := self.ch.get(deadline)) is not None:
            if self._classify(line) == "reset":
                self.joined = False
                return
            self._consume(line)
        raise ModemError(f"{self.name}: no boot banner after a mode change")

    # the interface

    def provision(self, keys: LorawanKeys, region: str, *, adr: bool, data_rate: int) -> None:
        if self._get("NWM").strip() != "1":
            st, _ = self._at("AT+NWM=1")  # changing the work mode reboots the module
            if st not in ("OK", "RESET"):
                raise ModemError(f"AT+NWM=1 refused: {st}")
            if st == "OK":
                self._wait_boot()
            self._reset_seen = False
        self._set(f"AT+BAND={RUI3_BANDS[region]}")
        self._set("AT+NJM=1")
        self._set("AT+CLASS=A")
        self._set(f"AT+DEVEUI={keys.dev_eui}")
        self._set(f"AT+APPEUI={keys.join_eui}")
        self._set(f"AT+APPKEY={keys.app_key}")
        self._set(f"AT+ADR={1 if adr else 0}")
        if not adr:
            self._set(f"AT+DR={data_rate}")
        # Retries are the router's, not the module's: every transmission then passes through
        # the duty-cycle ledger, and an alert of higher priority can go between two tries.
        self._set("AT+RETY=0")
        self._set("AT+CFM=1")
        self._cfm = True
        self._join_pending = False
        self.joined = self._get("NJS").strip() == "1"
        self._events.clear()

    def data_rate(self) -> int:
        v = self._get("DR").strip()
        if not v.isdigit():
            raise ModemError(f"AT+DR=? gave {v!r}")
        return int(v)

    def join(self, airtime_s: float, force: bool = False) -> JoinResult:
        self._drop_events(("JOIN",))  # RUI3's AT+JOIN always starts a new join
        st, _ = self._at("AT+JOIN")
        if st == "RESET":
            return JoinResult(False, False, "module reset")
        # Busy while our own earlier join is still running: await its result. Busy otherwise
        # is a send's RX windows or the module's duty cycle: nothing went on the air.
        if st == "AT_BUSY_ERROR" and not self._join_pending:
            return JoinResult(False, False, "busy")
        if st not in ("OK", "AT_BUSY_ERROR"):
            return JoinResult(False, False, st)
        self._join_pending = True
        deadline = time.monotonic() + airtime_s + self.timings.join_extra_s
        while True:
            ev = self._next_event(deadline)
            if ev is None:
                self.stats.timeouts += 1
                return JoinResult(False, True, "no join result in time")
            if ev == "RESET":
                return JoinResult(False, True, "module reset while joining")
            if ev == "JOINED":
                self.joined = True
                return JoinResult(True, True, "joined")
            if ev.startswith("JOINFAILED"):
                return JoinResult(False, True, ev)

    def _drop_events(self, prefixes: tuple[str, ...]) -> None:
        """Forget stale results (of a command that timed out) before starting a new one."""
        self.poll()
        kept = deque(e for e in self._events if not e.startswith(prefixes))
        for e in self._events:
            if e.startswith(prefixes):
                logger.info("LoRa modem: late event %s ignored", e)
        self._events = kept

    def _next_event(self, deadline: float) -> str | None:
        """The next ``+EVT`` name (or ``RESET``), or None at the deadline."""
        ch = self.ch
        ch.busy = True
        try:
            while True:
                if self._events:
                    return self._events.popleft()
                line = ch.get(deadline)
                if line is None:
                    return None
                kind = self._consume(line)
                if kind == "reset":
                    return "RESET"
                if kind == "value":
                    self.stats.unexpected += 1
        finally:
            ch.busy = False

    def send(self, port: int, payload: bytes, confirmed: bool, airtime_s: float) -> SendResult:
        self._drop_events(("SEND", "TXDONE"))
        if self._cfm != confirmed:
            st, _ = self._at(f"AT+CFM={1 if confirmed else 0}")
            if st != "OK":
                return self._refused(st)
            self._cfm = confirmed
        st, _ = self._at(f"AT+SEND={port}:{payload.hex().upper()}")
        if st != "OK":
            return self._refused(st)
        deadline = time.monotonic() + airtime_s + self.timings.send_extra_s
        downlinks: list[Downlink] = []
        while True:
            ev = self._next_event(deadline)
            downlinks += self.take_downlinks()
            if ev is None:
                self.stats.timeouts += 1
                return SendResult(SendStatus.TIMEOUT, True, downlinks, detail="no send result")
            if ev == "RESET":
                return SendResult(SendStatus.RESET, True, downlinks, detail="reset mid-send")
            if ev.startswith("SENDCONFIRMEDOK"):
                return SendResult(SendStatus.ACKED, True, downlinks)
            if ev.startswith("SENDCONFIRMEDFAILED"):
                return SendResult(SendStatus.NO_ACK, True, downlinks, detail=ev)
            if ev == "TXDONE" and not confirmed:
                return SendResult(SendStatus.SENT, True, downlinks)

    def _refused(self, st: str) -> SendResult:
        status = {
            "AT_BUSY_ERROR": SendStatus.BUSY,
            "AT_NO_NETWORK_JOINED": SendStatus.NOT_JOINED,
            "AT_DUTYCYLE_RESTRICTED": SendStatus.DUTY_CYCLE,
            "RESET": SendStatus.RESET,
            # The module may have transmitted before we lost its answer: charge the airtime.
            "TIMEOUT": SendStatus.TIMEOUT,
        }.get(st, SendStatus.REJECTED)
        if status is SendStatus.NOT_JOINED:
            self.joined = False
        return SendResult(status, status is SendStatus.TIMEOUT, detail=st)


# -- Seeed Wio-E5 -----------------------------------------------------------------------------

_E5_NO_BAND = re.compile(r"No band in (\d+)\s*ms", re.I)
_E5_RX = re.compile(r'PORT:\s*(\d+);\s*RX:\s*"([0-9A-Fa-f ]*)"')
_E5_RSSI = re.compile(r"RSSI\s*(-?\d+(?:\.\d+)?),\s*SNR\s*(-?\d+(?:\.\d+)?)")
_E5_DR = re.compile(r"\bDR(\d+)\b")


class WioE5(LoRaModem):
    """Seeed Wio-E5 / LoRa-E5 (RisingHF-style AT firmware; every line ``+CMD: text``).

    Differences the interface absorbs: no asynchronous events (a join or send is one command
    whose progress lines end in ``Done``), no explicit failure for a lost ACK (``Done``
    without ``ACK Received``), no join-state query and no boot banner — a reset shows up as
    ``Please join network first`` on the next send, which means the same to the router.
    """

    name = "Wio-E5"

    def __init__(self, url: str, baudrate: int = 9600, timings: Timings | None = None,
                 on_idle_line: Callable[[], None] | None = None) -> None:
        super().__init__(url, baudrate, timings, on_idle_line)
        self._port: int | None = None

    def _probe(self) -> None:
        for _ in range(3):
            if any("OK" in t for t in self._cmd("AT", "AT")):
                return
        raise ModemError(f"{self.name} on {self.url}: no answer to AT")

    def poll(self) -> None:
        while self.ch.get(0) is not None:
            self.stats.unexpected += 1  # the E5 never speaks unprompted

    def _cmd(self, cmd: str, name: str, *, until_done: bool = False,
             timeout_s: float | None = None) -> list[str]:
        """Send ``cmd``; the texts of its ``+NAME:`` lines (one, or up to ``Done``).

        Returns an empty list on timeout. Lines for other commands are counted and skipped.
        """
        self.poll()
        ch = self.ch
        ch.busy = True
        prefix = f"+{name.upper()}:"
        try:
            self._write(cmd)
            deadline = time.monotonic() + (timeout_s or self.timings.command_s)
            texts: list[str] = []
            while True:
                line = ch.get(deadline)
                if line is None:
                    self.stats.timeouts += 1
                    logger.warning("LoRa modem: %s timed out", redact(cmd))
                    return texts if until_done else []
                if not line.upper().startswith(prefix):
                    self.stats.unexpected += 1
                    continue
                text = line[len(prefix):].strip()
                texts.append(text)
                if not until_done or text == "Done" or _e5_final(text):
                    return texts
        finally:
            ch.busy = False

    def _set(self, cmd: str, name: str, expect: str) -> None:
        texts = self._cmd(cmd, name)
        if not texts or "ERROR" in texts[-1] or expect.upper() not in texts[-1].upper():
            raise ModemError(f"{redact(cmd)} refused: {redact(texts[-1]) if texts else 'timeout'}")

    def provision(self, keys: LorawanKeys, region: str, *, adr: bool, data_rate: int) -> None:
        self._set("AT+MODE=LWOTAA", "MODE", "LWOTAA")
        self._set(f"AT+DR={region}", "DR", region)
        self._set(f'AT+ID=DevEui,"{keys.dev_eui}"', "ID", "DevEui")
        self._set(f'AT+ID=AppEui,"{keys.join_eui}"', "ID", "AppEui")
        self._set(f'AT+KEY=APPKEY,"{keys.app_key}"', "KEY", "APPKEY")
        self._set("AT+CLASS=A", "CLASS", "A")
        self._set(f"AT+ADR={'ON' if adr else 'OFF'}", "ADR", "ON" if adr else "OFF")
        if not adr:
            self._set(f"AT+DR={data_rate}", "DR", f"DR{data_rate}")
        self._set("AT+RETRY=0", "RETRY", "0")  # retries are the router's (see Rak3172)
        self._port = None
        self.joined = False  # no query for it: the next join says "Joined already" if so

    def data_rate(self) -> int:
        texts = self._cmd("AT+DR", "DR")
        for t in texts:
            m = _E5_DR.search(t)
            if m:
                return int(m.group(1))
        raise ModemError(f"AT+DR gave {texts!r}")

    def join(self, airtime_s: float, force: bool = False) -> JoinResult:
        texts = self._cmd("AT+JOIN=FORCE" if force else "AT+JOIN", "JOIN", until_done=True,
                          timeout_s=airtime_s + self.timings.join_extra_s)
        joined_text = " | ".join(texts)
        if any("Joined already" in t for t in texts):
            self.joined = True
            return JoinResult(True, False, "joined already")
        if any("busy" in t.lower() for t in texts):
            self.stats.busy += 1
            return JoinResult(False, False, "busy")
        if texts and (m := _E5_NO_BAND.search(texts[-1])) is not None:
            return JoinResult(False, False, texts[-1], int(m.group(1)) / 1000)
        if any("Network joined" in t for t in texts):
            self.joined = True
            return JoinResult(True, True, "joined")
        if not texts or texts[-1] != "Done":
            return JoinResult(False, bool(texts), f"no join result ({joined_text})")
        return JoinResult(False, True, joined_text)

    def send(self, port: int, payload: bytes, confirmed: bool, airtime_s: float) -> SendResult:
        if self._port != port:
            texts = self._cmd(f"AT+PORT={port}", "PORT")
            if not texts or "ERROR" in texts[-1]:
                return SendResult(SendStatus.REJECTED if texts else SendStatus.TIMEOUT, False,
                                  detail=f"AT+PORT: {texts}")
            self._port = port
        name = "CMSGHEX" if confirmed else "MSGHEX"
        texts = self._cmd(f'AT+{name}="{payload.hex().upper()}"', name, until_done=True,
                          timeout_s=airtime_s + self.timings.send_extra_s)
        downlinks: list[Downlink] = []
        acked = started = done = False
        rssi = snr = None
        for t in texts:
            if t == "Start":
                started = True
            elif t == "ACK Received":
                acked = True
            elif t == "Done":
                done = True
            elif (m := _E5_RX.search(t)) is not None:
                try:
                    downlinks.append(parse_downlink(m.group(1), m.group(2)))
                except Refused:
                    self.stats.unexpected += 1
                    logger.warning("LoRa modem: unreadable downlink %r", redact(t))
            elif (m := _E5_RSSI.search(t)) is not None:
                rssi, snr = float(m.group(1)), float(m.group(2))
        downlinks = [Downlink(d.port, d.payload, rssi, snr) for d in downlinks if d.payload]
        if not texts:
            return SendResult(SendStatus.TIMEOUT, True, detail="no answer")
        last = texts[-1]
        if "join" in last.lower() and "please" in last.lower():
            self.joined = False
            return SendResult(SendStatus.NOT_JOINED, False, detail=last)
        if (m := _E5_NO_BAND.search(last)) is not None:
            return SendResult(SendStatus.DUTY_CYCLE, False, retry_after_s=int(m.group(1)) / 1000,
                              detail=last)
        if "busy" in last.lower() or "No free channel" in last:
            self.stats.busy += 1
            return SendResult(SendStatus.BUSY, False, detail=last)
        if _e5_final_error(last):
            return SendResult(SendStatus.REJECTED, False, detail=last)
        if not done:
            # Started but never finished: a reset mid-send (the E5 goes silent) or a lost line.
            return SendResult(SendStatus.TIMEOUT, started, downlinks, detail="no Done")
        if not confirmed:
            return SendResult(SendStatus.SENT, True, downlinks)
        # The E5 has no failure line: Done without ACK Received is the failure.
        return SendResult(SendStatus.ACKED if acked else SendStatus.NO_ACK, True, downlinks)


def _e5_final(text: str) -> bool:
    """A progress line after which the E5 says nothing more (no ``Done`` follows)."""
    return _e5_final_error(text) or "joined already" in text.lower()


def _e5_final_error(text: str) -> bool:
    t = text.lower()
    return (text.startswith("ERROR(") or "please join" in t or "no band" in t or "busy" in t
            or "no free channel" in t or "length error" in t or "dr error" in t)


def make_modem(module: str, url: str, baudrate: int = 0, timings: Timings | None = None,
               on_idle_line: Callable[[], None] | None = None) -> LoRaModem:
    """The driver for ``lorawan.module`` (``rak3172`` or ``wio-e5``)."""
    if module not in DEFAULT_BAUD:
        raise ValueError(f"unknown LoRaWAN module {module!r}")
    baud = baudrate or DEFAULT_BAUD[module]
    if module == "rak3172":
        return Rak3172(url, baud, timings, on_idle_line)
    if module == "wio-e5":
        return WioE5(url, baud, timings, on_idle_line)
    raise ValueError(f"unknown LoRaWAN module {module!r}")
