"""LoRaWAN modems emulated on a pseudo-terminal: RAK3172 (RUI3) and Seeed Wio-E5.

The driver opens the pty's slave with ``serial.serial_for_url`` exactly as it opens
``/dev/ttyS0``; this thread sits on the master side and speaks the module's AT dialect with the
strings of ``../shared/reference/protocols.md``: reply framing, both RUI3 firmware spellings
and get-reply styles, ``+EVT`` lines seconds after ``OK``, the Wio-E5's multi-line progress
ending in ``Done``, busy and duty-cycle refusals, join failures, lost ACKs, a reset mid-send,
and noise on the line.

Time: response delays are *emulated* seconds (JoinAccept 5/6 s after the JoinRequest, RX1/RX2
1/2 s after an uplink, each uplink's real time on air for its SF) multiplied by
``time_factor`` to get real seconds, so a test runs the radio 1000× faster. The module's own
duty-cycle rule and the transmission log use the injected ``clock`` — the same clock as the
router's, so both agree about "now" whether the clock is real, scaled or fake.

Radio side: an uplink that a gateway "hears" goes to a :class:`Network` (the emulated network
server, ``edge_app/sim/netserver.py``), which decides the ACK and any downlink.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edge_app.core.clock import Clock, SystemClock
from edge_app.sim.pty_port import PtyPort
from edge_app.trap.uplink.airtime import dr_to_sf, join_airtime_s, uplink_airtime_s

logger = logging.getLogger(__name__)

MAX_PAYLOAD = {0: 51, 1: 51, 2: 51, 3: 115, 4: 222, 5: 222}
RUI3_BANNER = ("RAKwireless RAK3172-E Example", "-" * 54, "Version: RUI_4.0.6_RAK3172-E",
               "Current Work Mode: LoRaWAN.")


class ScaledClock:
    """A clock that runs ``speed`` times faster than the real one (a :class:`Clock`).

    Threaded tests give it to the router, the ledger and the emulator (with ``time_factor =
    1/speed``), so a 148 s duty-cycle time-off or a 5 s JoinAccept delay take milliseconds
    while every part still agrees on what time it is.
    """

    def __init__(self, speed: float, start_wall: float = 1_790_000_000.0) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._wall0 = start_wall

    def _elapsed(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def monotonic(self) -> float:
        return 1000.0 + self._elapsed()

    def wall(self) -> float:
        return self._wall0 + self._elapsed()

    def wait(self, event: threading.Event, timeout_s: float | None) -> bool:
        return event.wait(None if timeout_s is None else timeout_s / self.speed)


@dataclass(frozen=True, slots=True)
class UplinkFrame:
    """What a gateway heard."""

    dev_eui: str
    dev_addr: str
    fcnt: int
    fport: int
    payload: bytes
    confirmed: bool
    dr: int
    freq_mhz: float
    airtime_s: float
    rssi: float
    snr: float


@dataclass(frozen=True, slots=True)
class NetworkAnswer:
    """The network's reply in RX1: an ACK (for confirmed uplinks) and/or a downlink."""

    ack: bool
    downlink: tuple[int, bytes] | None = None


class Network(Protocol):
    """The network server as the radio sees it."""

    def join(self, dev_eui: str, join_eui: str, app_key: str, dr: int,
             freq_mhz: float) -> str | None:
        """A JoinRequest; the new DevAddr, or None when the join is rejected."""
        ...

    def uplink(self, frame: UplinkFrame) -> NetworkAnswer:
        ...


@dataclass
class Faults:
    """Things going wrong, consumed one by one (tests set them, even while running).

    Attributes:
        join_failures: the next N join attempts get no JoinAccept.
        lose_acks: the next N confirmed uplinks reach the network, but the ACK is lost.
        lose_uplinks: the next N uplinks are heard by no gateway.
        busy: the next N sends are refused as busy.
        reset_during_send: the next N sends reset the module half-way through the TX.
        garbage_rate: probability of a noise line after each reply line.
    """

    join_failures: int = 0
    lose_acks: int = 0
    lose_uplinks: int = 0
    busy: int = 0
    reset_during_send: int = 0
    garbage_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One transmission by the emulated radio (the regulator's view)."""

    t: float
    airtime_s: float
    kind: str  # join / uplink
    fport: int = 0
    payload: bytes = b""
    confirmed: bool = False
    heard: bool = True


@dataclass
class EmulatorStats:
    commands: int = 0
    joins: int = 0
    uplinks: int = 0
    resets: int = 0
    dc_refusals: int = 0  # sends the module refused for its own duty cycle
    busy_refusals: int = 0
    garbage_lines: int = 0
    tx_log: list[TxRecord] = field(default_factory=list)


class PtyModem:
    """Base: a pty, a thread, a timer heap; subclasses implement :meth:`_command`.

    Args:
        network: where heard uplinks and join requests go (None: nobody answers).
        clock: time for the duty cycle and the TX log (share the router's clock).
        time_factor: real seconds per emulated second of radio delay.
        faults: injected failures.
        seed: for the noise and the radio figures.
        dr: initial data rate.
        duty_cycle: the module's own per-band duty cycle (LoRaMac-style time-off).
        enforce_duty_cycle: refuse sends that break it (as RUI3 ``AT+DCS=1`` does).
        freqs_mhz: channels the "radio" picks from (RU864 defaults).
    """

    terminator = b"\n"

    def __init__(
        self,
        network: Network | None = None,
        *,
        clock: Clock | None = None,
        time_factor: float = 1.0,
        faults: Faults | None = None,
        seed: int = 0,
        dr: int = 0,
        duty_cycle: float = 0.01,
        enforce_duty_cycle: bool = True,
        freqs_mhz: tuple[float, ...] = (868.9, 869.1),
    ) -> None:
        self.network = network
        self.clock: Clock = clock or SystemClock()
        self.time_factor = time_factor
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.dr = dr
        self.duty_cycle = duty_cycle
        self.enforce_duty_cycle = enforce_duty_cycle
        self.freqs = freqs_mhz
        self.stats = EmulatorStats()
        self.received: list[str] = []  # command lines, as received (tests look at them)
        self._pty = PtyPort()
        self.port = self._pty.name
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._injected: list[bytes] = []
        self._buf = bytearray()
        self._band_free_at = -1e18
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"emu-{type(self).__name__}",
                                        daemon=True)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> PtyModem:
        """Start the emulator thread (once; ``with`` on a started modem is fine)."""
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._pty.wake()
        self._thread.join(2.0)
        self._pty.close()

    def __enter__(self) -> PtyModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests ----------------------------------------------------------------------

    def inject(self, raw: bytes) -> None:
        """Put raw bytes on the line now (noise, an overlong line, a fake banner)."""
        with self._lock:
            self._injected.append(raw)
        self._pty.wake()

    def after(self, delay_s: float, fn: Callable[[], None], *, real: bool = False) -> None:
        """Run ``fn`` on the emulator thread ``delay_s`` emulated (or ``real``) seconds from
        now."""
        due = time.monotonic() + max(0.0, delay_s) * (1.0 if real else self.time_factor)
        with self._lock:
            heapq.heappush(self._timers, (due, next(self._seq), fn))
        if threading.current_thread() is not self._thread:
            self._pty.wake()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                due = self._timers[0][0] if self._timers else None
            timeout = None if due is None else max(0.0, due - time.monotonic())
            readable = self._pty.wait(timeout)
            if readable is None:
                return
            if readable and (data := self._pty.read()):
                self._feed(data)
            self._run_due()
            with self._lock:
                injected, self._injected = self._injected, []
            for raw in injected:
                self._raw(raw)

    def _run_due(self) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > time.monotonic():
                    return
                _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:  # an emulator bug must show, but not kill the thread
                logger.exception("emulator timer failed")

    def _feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            nl = self._buf.find(self.terminator)
            if nl < 0:
                break
            line = bytes(self._buf[:nl]).rstrip(b"\r").decode("ascii", "replace").strip()
            del self._buf[:nl + 1]
            if line:
                self.stats.commands += 1
                self.received.append(line)
                self._command(line)
        if self._buf:
            self._partial()

    def _partial(self) -> None:
        """Bytes without a terminator yet (the E5 times them out)."""

    def _command(self, line: str) -> None:
        raise NotImplementedError

    # -- output -------------------------------------------------------------------------

    def _raw(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._pty.write(data)

    def _line(self, text: str, lead: bytes = b"") -> None:
        self._raw(lead + text.encode("ascii") + b"\r\n")
        if self.faults.garbage_rate and self.rng.random() < self.faults.garbage_rate:
            self.stats.garbage_lines += 1
            noise = bytes(self.rng.choice((0x00, 0xFF, 0x93, 0x1B, 0x7F, 0xC3))
                          for _ in range(self.rng.randint(1, 12)))
            self._raw(noise + b"\r\n")

    # -- radio --------------------------------------------------------------------------

    @property
    def sf(self) -> int:
        return dr_to_sf(self.dr)[0]

    def _dc_wait_s(self) -> float:
        """How long the module's own duty-cycle rule still blocks the band (clock seconds);
        below 1 ms counts as free (a module's timer resolution)."""
        if not self.enforce_duty_cycle:
            return 0.0
        wait = self._band_free_at - self.clock.wall()
        return wait if wait > 1e-3 else 0.0

    def _transmit(self, airtime_s: float, kind: str, **info: object) -> TxRecord:
        now = self.clock.wall()
        rec = TxRecord(now, airtime_s, kind, **info)  # type: ignore[arg-type]
        self.stats.tx_log.append(rec)
        self._band_free_at = now + airtime_s / self.duty_cycle
        return rec

    def _freq(self) -> float:
        return self.rng.choice(self.freqs)


class Rui3Modem(PtyModem):
    """RAK3172 with RUI3 firmware.

    Args:
        firmware: ``v4`` (``+EVT:SEND_CONFIRMED_FAILED(4)``, ``AT+NJS=1`` get replies, ``TX_DONE``)
            or ``v3`` (``+EVT:JOIN FAILED``, ``+EVT: SEND CONFIRMED OK``, bare ``1`` replies).
        nwm: initial work mode (0 = P2P: the driver must switch it, which reboots the module).
        Other arguments: :class:`PtyModem`.
    """

    terminator = b"\n"

    def __init__(self, network: Network | None = None, *, firmware: str = "v4", nwm: int = 1,
                 **kw: object) -> None:
        super().__init__(network, **kw)  # type: ignore[arg-type]
        self.firmware = firmware
        # kept in flash across resets
        self.flash: dict[str, str] = {"NWM": str(nwm), "BAND": "4", "NJM": "1",
                                      "DEVEUI": "AC1F09FFFE000001", "APPEUI": "0000000000000000",
                                      "APPKEY": "0" * 32, "CLASS": "A", "ADR": "1",
                                      "CFM": "0", "RETY": "0", "DCS": "1"}
        self.echo = False
        self.joined = False
        self.joining = False
        self.tx_active = False
        self.dev_addr = ""
        self.fcnt = 0
        self.cfs = 0
        self.recv: tuple[int, bytes] | None = None

    # replies

    def _status(self, st: str) -> None:
        self._line(st, lead=b"\r\n")

    def _value(self, key: str, value: str) -> None:
        self._line(f"AT+{key}={value}" if self.firmware == "v4" else value)
        self._status("OK")

    def _event(self, v4: str, v3: str | None = None) -> None:
        self._line("+EVT:" + (v4 if self.firmware == "v4" or v3 is None else v3))

    def reset(self) -> None:
        """What a brown-out does: volatile state gone, banner printed, flash kept."""
        self.stats.resets += 1
        self.joined = self.joining = self.tx_active = False
        self.echo = False
        self.recv = None
        for text in RUI3_BANNER:
            self._line(text)

    # commands

    def _command(self, line: str) -> None:
        if self.echo:
            self._line(line)
        up = line.upper()
        if up == "AT":
            self._status("OK")
        elif up == "ATE":
            self.echo = not self.echo
            self._status("OK")
        elif up == "ATZ":
            self.after(0.1, self.reset)
        elif not up.startswith("AT+"):
            self._status("AT_ERROR")
        else:
            key, sep, arg = line[3:].partition("=")
            self._at(key.upper(), sep == "=", arg)

    def _at(self, key: str, has_arg: bool, arg: str) -> None:
        if key == "JOIN":
            self._join()
        elif key == "SEND" and has_arg:
            self._send(arg)
        elif has_arg and arg == "?":
            self._get(key)
        elif has_arg:
            self._set(key, arg)
        else:
            self._status("AT_ERROR")

    def _get(self, key: str) -> None:
        if key in self.flash:
            self._value(key, self.flash[key])
        elif key == "DR":
            self._value(key, str(self.dr))
        elif key == "NJS":
            self._value(key, "1" if self.joined else "0")
        elif key == "CFS":
            self._value(key, str(self.cfs))
        elif key == "RECV":
            port, data = self.recv or (0, b"")
            self.recv = None
            self._value(key, f"{port}:{data.hex()}")
        elif key == "VER":
            self._value(key, "RUI_4.0.6_RAK3172-E")
        else:
            self._status("AT_ERROR")

    def _set(self, key: str, arg: str) -> None:
        eui = {"DEVEUI": 16, "APPEUI": 16, "APPKEY": 32}
        if key in eui:
            if len(arg) != eui[key] or not _is_hex(arg):
                self._status("AT_PARAM_ERROR")
                return
            self.flash[key] = arg.upper()
        elif key == "NWM":
            if arg not in ("0", "1", "2"):
                self._status("AT_PARAM_ERROR")
                return
            changed = arg != self.flash["NWM"]
            self.flash["NWM"] = arg
            self._status("OK")
            if changed:
                self.after(0.5, self.reset)
            return
        elif key in _RUI3_FLASH_PARAMS:
            if not _RUI3_FLASH_PARAMS[key](arg):
                self._status("AT_PARAM_ERROR")
                return
            self.flash[key] = arg
        elif key == "DR":
            if not arg.isdigit() or int(arg) > 5:
                self._status("AT_PARAM_ERROR")
                return
            self.dr = int(arg)
        else:
            self._status("AT_ERROR")
            return
        self._status("OK")

    def _join(self) -> None:
        if self.flash["NWM"] != "1":
            self._status("AT_ERROR")
            return
        if self.joining or self.tx_active:
            self.stats.busy_refusals += 1
            self._status("AT_BUSY_ERROR")
            return
        if self._dc_wait_s() > 0:
            self.stats.dc_refusals += 1
            self._status("AT_BUSY_ERROR")
            return
        self._status("OK")
        self.joining = True
        self.stats.joins += 1
        toa = join_airtime_s(self.sf)
        self._transmit(toa, "join")
        fail = self.faults.join_failures > 0
        if fail:
            self.faults.join_failures -= 1
        dev_addr = None
        if not fail and self.network is not None:
            dev_addr = self.network.join(self.flash["DEVEUI"], self.flash["APPEUI"],
                                         self.flash["APPKEY"], self.dr, self._freq())
        if dev_addr is None:
            self.after(toa + 6.0, self._join_failed)
        else:
            self.after(toa + 5.0, lambda: self._joined(dev_addr))

    def _joined(self, dev_addr: str) -> None:
        if not self.joining:
            return  # reset meanwhile
        self.joining, self.joined, self.dev_addr, self.fcnt = False, True, dev_addr, 0
        self._event("JOINED")

    def _join_failed(self) -> None:
        if not self.joining:
            return
        self.joining = False
        self._event("JOIN_FAILED_RX_TIMEOUT", "JOIN FAILED")

    def _send(self, arg: str) -> None:
        port_s, sep, data_hex = arg.partition(":")
        if (not sep or not port_s.isdigit() or not 1 <= int(port_s) <= 233
                or len(data_hex) % 2 or not data_hex or not _is_hex(data_hex)
                or len(data_hex) // 2 > MAX_PAYLOAD.get(self.dr, 51)):
            self._status("AT_PARAM_ERROR")
            return
        if not self.joined:
            self._status("AT_NO_NETWORK_JOINED")
            return
        if self.tx_active or self.joining or self.faults.busy > 0:
            if self.faults.busy > 0 and not (self.tx_active or self.joining):
                self.faults.busy -= 1
            self.stats.busy_refusals += 1
            self._status("AT_BUSY_ERROR")
            return
        if self._dc_wait_s() > 0:
            self.stats.dc_refusals += 1
            self._status("AT_BUSY_ERROR")
            return
        port, payload = int(port_s), bytes.fromhex(data_hex)
        confirmed = self.flash["CFM"] == "1"
        self._status("OK")
        self.tx_active = True
        self.stats.uplinks += 1
        toa = uplink_airtime_s(len(payload), self.sf)
        self.fcnt += 1
        if self.faults.reset_during_send > 0:
            self.faults.reset_during_send -= 1
            self._transmit(toa, "uplink", fport=port, payload=payload, confirmed=confirmed,
                           heard=False)
            self.after(toa / 2, self.reset)
            return
        heard = self.faults.lose_uplinks <= 0
        if not heard:
            self.faults.lose_uplinks -= 1
        self._transmit(toa, "uplink", fport=port, payload=payload, confirmed=confirmed,
                       heard=heard)
        frame = UplinkFrame(self.flash["DEVEUI"], self.dev_addr, self.fcnt, port, payload,
                            confirmed, self.dr, self._freq(), toa,
                            rssi=float(self.rng.randint(-120, -90)),
                            snr=round(self.rng.uniform(-12.0, 8.0), 1))
        self.after(toa, lambda: self._on_air_done(frame, heard))

    def _on_air_done(self, frame: UplinkFrame, heard: bool) -> None:
        if not self.tx_active:
            return  # reset meanwhile
        answer = NetworkAnswer(False)
        if heard and self.network is not None:
            answer = self.network.uplink(frame)
        ack = answer.ack and frame.confirmed
        lost = ack and self.faults.lose_acks > 0
        if lost:
            self.faults.lose_acks -= 1
        if (ack and not lost) or (not frame.confirmed and answer.downlink is not None):
            self.after(1.0, lambda: self._rx1(frame, answer))
        else:
            self.after(2.2, lambda: self._rx_nothing(frame))

    def _rx1(self, frame: UplinkFrame, answer: NetworkAnswer) -> None:
        if not self.tx_active:
            return
        if answer.downlink is not None:
            port, data = answer.downlink
            self.recv = (port, data)
            self._line(f"+EVT:RX_1:-60:7:UNICAST:{port}:{data.hex()}")
        self.tx_active = False
        if frame.confirmed:
            self.cfs = 1
            self._event("SEND_CONFIRMED_OK", " SEND CONFIRMED OK")
        else:
            self._event("TX_DONE")

    def _rx_nothing(self, frame: UplinkFrame) -> None:
        if not self.tx_active:
            return
        self.tx_active = False
        if frame.confirmed:
            self.cfs = 0
            self._event("SEND_CONFIRMED_FAILED(4)", " SEND CONFIRMED FAILED")
        else:
            self._event("TX_DONE")


class WioE5Modem(PtyModem):
    """Seeed Wio-E5 (every line ``+CMD: text``; progress ending in ``Done``).

    Args:
        old_rx_format: print downlinks as spaced hex (firmware 2.0.10) instead of compact.
        Other arguments: :class:`PtyModem`.
    """

    terminator = b"\n"

    def __init__(self, network: Network | None = None, *, old_rx_format: bool = False,
                 **kw: object) -> None:
        super().__init__(network, **kw)  # type: ignore[arg-type]
        self.old_rx_format = old_rx_format
        self.mode = "LWOTAA"
        self.region = "EU868"
        self.ids = {"DEVEUI": "2CF7F12024900138", "APPEUI": "8000000000000006"}
        self.app_key = "0" * 32
        self.adr = True
        self.port_n = 8
        self.joined = False
        self.busy = False
        self.dev_addr = ""
        self.fcnt = 0
        self._partial_pending = False

    def _out(self, name: str, text: str) -> None:
        self._line(f"+{name}: {text}")

    def _partial(self) -> None:
        # A command without its LF: the E5 gives up on it (ERROR(-22)) after a while.
        if self._partial_pending:
            return
        self._partial_pending = True
        snapshot = bytes(self._buf)

        def check() -> None:
            self._partial_pending = False
            if self._buf and bytes(self._buf) == snapshot:
                self._buf.clear()
                self._out("AT", "ERROR(-22)")

        self.after(max(0.3, 2.0 * self.time_factor), check, real=True)

    def reset(self) -> None:
        """A brown-out: the session is lost; the E5 prints nothing."""
        self.stats.resets += 1
        self.joined = self.busy = False

    def _command(self, line: str) -> None:
        up = line.upper()
        if not up.startswith("AT"):
            self._out("AT", "ERROR(-10)")
            return
        if up == "AT":
            self._out("AT", "OK")
            return
        if len(line) > 528:
            self._out("AT", "ERROR(-21)")
            return
        name, sep, arg = line[3:].partition("=")
        name = name.upper()
        arg = arg.strip()
        handler = getattr(self, f"_cmd_{name.lower()}", None)
        if handler is None:
            self._out(name, "ERROR(-10)")
        else:
            handler(name, arg if sep else None)

    def _cmd_id(self, name: str, arg: str | None) -> None:
        if arg is None:
            self._out(name, f"DevAddr, {_colons(self.dev_addr or '00000000')}")
            self._out(name, f"DevEui, {_colons(self.ids['DEVEUI'])}")
            self._out(name, f"AppEui, {_colons(self.ids['APPEUI'])}")
            return
        what, _, value = arg.partition(",")
        value = value.strip().strip('"').replace(":", "").replace(" ", "")
        key = what.strip().upper()
        if key not in self.ids or len(value) != 16 or not _is_hex(value):
            self._out(name, "ERROR(-1)")
            return
        self.ids[key] = value.upper()
        self._out(name, f"{what.strip()}, {_colons(value.upper())}")

    def _cmd_mode(self, name: str, arg: str | None) -> None:
        if arg is not None:
            if arg.upper() not in ("LWOTAA", "LWABP", "TEST"):
                self._out(name, "ERROR(-1)")
                return
            self.mode = arg.upper()
        self._out(name, self.mode)

    def _cmd_dr(self, name: str, arg: str | None) -> None:
        if arg is None:
            self._out(name, f"DR{self.dr}")
            return
        a = arg.upper()
        if a in ("EU868", "RU864"):
            self.region = a
            self._out(name, a)
        elif a.removeprefix("DR").isdigit() and int(a.removeprefix("DR")) <= 5:
            self.dr = int(a.removeprefix("DR"))
            self._out(name, f"DR{self.dr}")
        else:
            self._out(name, "ERROR(-1)")

    def _cmd_key(self, name: str, arg: str | None) -> None:
        what, _, value = (arg or "").partition(",")
        value = value.strip().strip('"')
        if what.strip().upper() != "APPKEY" or len(value) != 32 or not _is_hex(value):
            self._out(name, "ERROR(-1)")
            return
        self.app_key = value.upper()
        self._out(name, f"APPKEY {self.app_key}")

    def _cmd_class(self, name: str, arg: str | None) -> None:
        if arg is not None and arg.upper() not in ("A", "B", "C"):
            self._out(name, "ERROR(-1)")
            return
        self._out(name, (arg or "A").upper())

    def _cmd_adr(self, name: str, arg: str | None) -> None:
        if arg is not None:
            if arg.upper() not in ("ON", "OFF"):
                self._out(name, "ERROR(-1)")
                return
            self.adr = arg.upper() == "ON"
        self._out(name, "ON" if self.adr else "OFF")

    def _cmd_retry(self, name: str, arg: str | None) -> None:
        if arg is not None and not arg.isdigit():
            self._out(name, "ERROR(-1)")
            return
        self._out(name, arg or "0")

    def _cmd_port(self, name: str, arg: str | None) -> None:
        if arg is not None:
            if not arg.isdigit() or not 1 <= int(arg) <= 223:
                self._out(name, "ERROR(-1)")
                return
            self.port_n = int(arg)
        self._out(name, str(self.port_n))

    def _cmd_reset(self, name: str, arg: str | None) -> None:
        self._out(name, "OK")
        self.reset()

    def _cmd_join(self, name: str, arg: str | None) -> None:
        if self.mode != "LWOTAA":
            self._out(name, "ERROR(-12)")
            return
        if self.joined and (arg or "").upper() != "FORCE":
            self._out(name, "Joined already")
            return
        if self.busy:
            self.stats.busy_refusals += 1
            self._out(name, "LoRaWAN modem is busy")
            return
        if self._dc_wait_s() > 0:
            self.stats.dc_refusals += 1
            self._out(name, f"No band in {int(self._dc_wait_s() * 1000)}ms")
            return
        self.busy = True
        self.stats.joins += 1
        self._out(name, "Start")
        self._out(name, "NORMAL")
        toa = join_airtime_s(self.sf)
        self._transmit(toa, "join")
        fail = self.faults.join_failures > 0
        if fail:
            self.faults.join_failures -= 1
        dev_addr = None
        if not fail and self.network is not None:
            dev_addr = self.network.join(self.ids["DEVEUI"], self.ids["APPEUI"], self.app_key,
                                         self.dr, self._freq())

        def done() -> None:
            if not self.busy:
                return
            self.busy = False
            if dev_addr is None:
                self._out(name, "Join failed")
            else:
                self.joined, self.dev_addr, self.fcnt = True, dev_addr, 0
                self._out(name, "Network joined")
                self._out(name, f"NetID 000013 DevAddr {_colons(dev_addr)}")
            self._out(name, "Done")

        self.after(toa + (6.0 if dev_addr is None else 5.0), done)

    def _cmd_msghex(self, name: str, arg: str | None) -> None:
        self._msg(name, arg, confirmed=False)

    def _cmd_cmsghex(self, name: str, arg: str | None) -> None:
        self._msg(name, arg, confirmed=True)

    def _msg(self, name: str, arg: str | None, confirmed: bool) -> None:
        if self.mode == "TEST":
            self._out(name, "ERROR(-12)")
            return
        data_hex = (arg or "").strip().strip('"').replace(" ", "")
        if len(data_hex) % 2 or not _is_hex(data_hex or "00"):
            self._out(name, "ERROR(-1)")
            return
        if not self.joined:
            self._out(name, "Please join network first")
            return
        if self.busy or self.faults.busy > 0:
            if self.faults.busy > 0 and not self.busy:
                self.faults.busy -= 1
            self.stats.busy_refusals += 1
            self._out(name, "LoRaWAN modem is busy")
            return
        if self._dc_wait_s() > 0:
            self.stats.dc_refusals += 1
            self._out(name, f"No band in {int(self._dc_wait_s() * 1000)}ms")
            return
        payload = bytes.fromhex(data_hex)
        if len(payload) > MAX_PAYLOAD.get(self.dr, 51):
            self._out(name, f"Length error {len(payload)}")
            return
        self.busy = True
        self.stats.uplinks += 1
        self.fcnt += 1
        toa = uplink_airtime_s(len(payload), self.sf)
        self._out(name, "Start")
        if confirmed:
            self._out(name, "Wait ACK")
        if self.faults.reset_during_send > 0:
            self.faults.reset_during_send -= 1
            self._transmit(toa, "uplink", fport=self.port_n, payload=payload,
                           confirmed=confirmed, heard=False)
            self.after(toa / 2, self.reset)
            return
        heard = self.faults.lose_uplinks <= 0
        if not heard:
            self.faults.lose_uplinks -= 1
        self._transmit(toa, "uplink", fport=self.port_n, payload=payload, confirmed=confirmed,
                       heard=heard)
        frame = UplinkFrame(self.ids["DEVEUI"], self.dev_addr, self.fcnt, self.port_n, payload,
                            confirmed, self.dr, self._freq(), toa,
                            rssi=float(self.rng.randint(-120, -90)),
                            snr=round(self.rng.uniform(-12.0, 8.0), 1))

        def on_air_done() -> None:
            if not self.busy:
                return  # reset meanwhile
            answer = NetworkAnswer(False)
            if heard and self.network is not None:
                answer = self.network.uplink(frame)
            ack = answer.ack and confirmed
            if ack and self.faults.lose_acks > 0:
                self.faults.lose_acks -= 1
                ack = False
            got_rx = ack or (not confirmed and answer.downlink is not None)
            self.after(1.0 if got_rx else 2.2, lambda: finish(ack, answer if got_rx else None))

        def finish(ack: bool, answer: NetworkAnswer | None) -> None:
            if not self.busy:
                return
            self.busy = False
            if ack:
                self._out(name, "ACK Received")
            if answer is not None and answer.downlink is not None:
                port, data = answer.downlink
                shown = (" ".join(f"{b:02X}" for b in data) if self.old_rx_format
                         else data.hex().upper())
                self._out(name, f'PORT: {port}; RX: "{shown}"')
            if answer is not None:
                self._out(name, f"RXWIN1, RSSI {int(frame.rssi)}, SNR {frame.snr}")
            self._out(name, "Done")

        self.after(toa, on_air_done)


def _is_hex(s: str) -> bool:
    return bool(s) and all(c in "0123456789abcdefABCDEF" for c in s)


def _colons(hex_str: str) -> str:
    return ":".join(hex_str[i:i + 2] for i in range(0, len(hex_str), 2)).upper()


def _digit_at_most(limit: int) -> Callable[[str], bool]:
    return lambda arg: arg.isdigit() and int(arg) <= limit


# RUI3 settings that are only validated and stored (AT+<KEY>=<arg>): key → accepts(arg).
_RUI3_FLASH_PARAMS: dict[str, Callable[[str], bool]] = {
    "BAND": _digit_at_most(12),
    "RETY": _digit_at_most(7),
    "CLASS": lambda arg: arg in ("A", "B", "C"),
    **dict.fromkeys(("NJM", "ADR", "CFM", "DCS"), lambda arg: arg in ("0", "1")),
}
