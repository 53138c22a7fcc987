"""The supervisor MCU emulator: the firmware itself, run on the host behind a pseudo-terminal.

The simulator *is* the firmware (ARCHITECTURE §7, §9): this module runs the firmware's own
``logic.Supervisor`` — the same state machine, PIR filter, trigger queue, receiver and codec
that run on the RP2040 — on the firmware's own ``fakes.FakeHal`` (a fake at the HAL API
boundary: pins are attributes, the ADC gives the counts a divider would give for a voltage,
the DS3231 is its real driver over a fake I²C register file). Only two things are added here:
a clock that ticks it, and a UART that is a pty, so the trap's driver opens the slave end with
real pyserial exactly as it opens ``/dev/serial0`` on a Pi. A driver-and-firmware test is
therefore a test of the two real implementations of ``firmware/PROTOCOL.md`` against each
other, not of either one against a model of the other.

Where the firmware is found: ``$CAMTRAP_FIRMWARE`` (the ``firmware/`` folder of a checkout, or
its ``supervisor/`` folder), else ``firmware/supervisor`` of the checkout this package was
imported from (``edge_app/../firmware``). The firmware is not part of the wheel, so an
installed camtrap needs the variable; without a firmware folder :class:`FirmwareNotFound`
says where it looked. The firmware imports its modules by bare name (``import proto``), as
MicroPython does from flash, so the folder goes on ``sys.path``.

What a test (or the simulated world) can touch: the PIR pin (:meth:`McuEmulator.pin`, shaped
like a gpiozero ``MockPin`` so :class:`~edge_app.sim.world.SimWorld` drives it unchanged), the
battery and solar voltages and the temperature, the Pi's halt pin (:attr:`McuEmulator.halt`),
the Pi's load switch (:attr:`McuEmulator.pi_powered`, :meth:`McuEmulator.wait_power`), line
noise towards the Pi (:meth:`McuEmulator.inject`), and the frames the firmware sent
(:attr:`McuEmulator.sent`, decoded by the Pi's codec).

The UART follows the power: bytes the firmware writes while the Pi's load switch is off are
lost (an unpowered Pi hears nothing), and so are bytes the "Pi" writes then.

Time: the firmware gets ``now_ms`` from the injected clock's monotonic time and sleeps what its
own ``sleep_ms()`` asks for (50 ms ticks while the Pi is powered, 200 ms idle: the board's own
duty cycle, a few wake-ups per second), or until a byte or a PIR edge arrives.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections import deque
from pathlib import Path
from types import ModuleType
from typing import Any

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.mcu_protocol import MCU_TO_PI, Message, Receiver
from edge_app.sim.pty_port import PtyPort

logger = logging.getLogger(__name__)

FIRMWARE_ENV = "CAMTRAP_FIRMWARE"
SIM_CONFIG: dict[str, Any] = {"solar_fitted": True}
"""Firmware config overrides of the simulator: a panel is fitted, so solar is not null."""


class FirmwareNotFound(RuntimeError):
    """The firmware folder is not where the emulator looks (see :func:`firmware_dir`)."""


def firmware_dir() -> Path:
    """The folder holding the firmware's ``proto.py`` and ``logic.py`` (see the module doc).

    Raises:
        FirmwareNotFound: no ``proto.py`` there, with the places looked at.
    """
    env = os.environ.get(FIRMWARE_ENV)
    if env:
        base = Path(env).expanduser()
        candidates = [base / "supervisor", base]
    else:
        candidates = [Path(__file__).resolve().parents[2] / "firmware" / "supervisor"]
    for c in candidates:
        if (c / "proto.py").is_file():
            return c.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise FirmwareNotFound(
        f"the supervisor firmware is not at {where}: the MCU emulator runs the firmware's own "
        f"code, so it needs a checkout with firmware/supervisor/ (or set {FIRMWARE_ENV} to the "
        f"firmware folder)")


def firmware_module(name: str) -> ModuleType:
    """Import the firmware's module ``name`` (``proto``, ``logic``, ``fakes``, ...).

    Raises:
        FirmwareNotFound: no firmware folder, or a different module of that name is loaded.
    """
    folder = firmware_dir()
    loaded = sys.modules.get(name)
    if loaded is not None:
        origin = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if origin != folder:
            raise FirmwareNotFound(
                f"a module named {name!r} is already imported from {origin}, not from the "
                f"firmware at {folder}")
        return loaded
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise FirmwareNotFound(f"cannot import the firmware's {name!r} from {folder}: {e}") \
            from e


class PirPin:
    """The PIR input of the emulated board, with the three members of gpiozero's ``MockPin``
    that :class:`~edge_app.sim.world.SimWorld` uses."""

    def __init__(self, emulator: McuEmulator) -> None:
        self._emu = emulator

    def drive_high(self) -> None:
        self._emu.set_pir(True)

    def drive_low(self) -> None:
        self._emu.set_pir(False)

    @property
    def state(self) -> bool:
        return self._emu.pir


class McuEmulator:
    """The supervisor firmware on a fake board, its UART on a pty (see the module docstring).

    Run it as a supervised stage (:meth:`run` / :meth:`interrupt`) or on its own thread
    (:meth:`start` / :meth:`stop`, or ``with``).

    Args:
        clock: the MCU's monotonic ticks and the RTC's initial time.
        config: firmware ``config.json`` overrides (over :data:`SIM_CONFIG`); a key the
            firmware refuses raises ValueError here rather than silently using the default.
        rtc_valid: the DS3231 was set (False: a fresh RTC at 2000-01-01, OSF set).
        battery_v, solar_v, temp_c: the readings the board's ADC and sensor give.
    """

    def __init__(self, *, clock: Clock | None = None, config: dict[str, Any] | None = None,
                 rtc_valid: bool = True, battery_v: float = 13.2, solar_v: float = 18.0,
                 temp_c: float = -4.5) -> None:
        self.clock: Clock = clock or SystemClock()
        fw_config = firmware_module("config")
        self.logic = firmware_module("logic")
        fakes = firmware_module("fakes")
        self.cfg, bad = fw_config.merge({**SIM_CONFIG, **(config or {})})
        if bad:
            raise ValueError(f"firmware config refused: {', '.join(map(str, bad))}")
        self._t0 = self.clock.monotonic()
        self.hal: Any = fakes.FakeHal(
            unix_s=int(self.clock.wall()) if rtc_valid else None, rtc_valid=rtc_valid,
            vref_mv=self.cfg["adc_vref_mv"], battery_ratio=self.cfg["battery_ratio"],
            solar_ratio=self.cfg["solar_ratio"])
        self.hal.uart_write = self._uart_write  # the UART is the pty (below)
        self.battery_v, self.solar_v, self.temp_c = battery_v, solar_v, temp_c
        self._line = PtyPort(nonblocking=True)  # a Pi not reading must not stall the MCU
        self.port = self._line.name
        self._lock = threading.RLock()  # the firmware object and the board
        self._power = threading.Condition(self._lock)
        self.sent: deque[Message] = deque(maxlen=1000)
        self._decoder = Receiver(MCU_TO_PI, name="emulator tx")
        self.lost_tx = self.lost_rx = self.resets = 0
        self.sup: Any = self.logic.Supervisor(self.hal, self.cfg, bad_config=0,
                                            now_ms=self._now_ms())
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- what tests and the simulated world touch -------------------------------------------

    @property
    def pir_pin(self) -> int:
        """The board's PIR pin number (firmware config ``pin_pir``)."""
        return int(self.cfg["pin_pir"])

    def pin(self, number: int) -> PirPin:
        """The PIR pin, gpiozero-``MockFactory``-style, for :class:`SimWorld`."""
        if number != self.pir_pin:
            raise ValueError(f"the emulated board has its PIR on pin {self.pir_pin}, "
                             f"not {number}")
        return PirPin(self)

    @property
    def pir(self) -> bool:
        return bool(self.hal.pir)

    def set_pir(self, high: bool) -> None:
        """Drive the PIR output; a rising edge reaches the firmware as its pin IRQ does."""
        with self._lock:
            if high and not self.hal.pir:
                self.sup.on_pir(self._now_ms())
            self.hal.pir = high
        self.interrupt()

    @property
    def battery_v(self) -> float:
        return float(self.hal.volts["battery"]) / 1000.0

    @battery_v.setter
    def battery_v(self, volts: float) -> None:
        self.hal.volts["battery"] = round(volts * 1000)

    @property
    def solar_v(self) -> float:
        return float(self.hal.volts["solar"]) / 1000.0

    @solar_v.setter
    def solar_v(self, volts: float) -> None:
        self.hal.volts["solar"] = round(volts * 1000)

    @property
    def temp_c(self) -> float | None:
        return None if self.hal.temp is None else float(self.hal.temp) / 10.0

    @temp_c.setter
    def temp_c(self, celsius: float | None) -> None:
        self.hal.temp = None if celsius is None else round(celsius * 10)

    @property
    def halt(self) -> bool:
        """The Pi's halt signal (gpio-poweroff): set it True to play a Pi that has halted."""
        return bool(self.hal.halted)

    @halt.setter
    def halt(self, high: bool) -> None:
        with self._lock:
            self.hal.halted = high
        self.interrupt()

    @property
    def pi_powered(self) -> bool:
        """The Pi's load switch."""
        return bool(self.hal.pi_power)

    def wait_power(self, on: bool, timeout_s: float) -> bool:
        """Block until the load switch is ``on`` (True) or off; False after ``timeout_s``."""
        with self._power:
            return self._power.wait_for(lambda: bool(self.hal.pi_power) == on, timeout_s)

    def inject(self, raw: bytes) -> None:
        """Line noise towards the Pi (written at once if the Pi is powered)."""
        with self._lock:
            self._uart_write(raw, record=False)

    def rx_counters(self) -> dict[str, int]:
        """The firmware receiver's counters (garbage and bad frames from the Pi)."""
        with self._lock:
            return dict(self.sup.rx.counters())

    # -- the UART ------------------------------------------------------------------------------

    def _uart_write(self, data: bytes, record: bool = True) -> None:
        if not self.hal.pi_power:
            self.lost_tx += len(data)
            return
        try:
            self._line.write(data)
        except BlockingIOError:
            self.lost_tx += len(data)  # nobody reads the Pi's end: a real UART drops it too
            return
        except OSError:
            return
        if record:
            self.sent.extend(f.message for f in self._decoder.feed(data, self.clock.monotonic())
                             if f.message is not None)

    def _read_pty(self) -> None:
        data = self._line.read()
        with self._lock:
            if self.hal.pi_power:
                self.hal.rx.extend(data)
            else:
                self.lost_rx += len(data)

    # -- the firmware's main loop --------------------------------------------------------------

    def _now_ms(self) -> int:
        return int((self.clock.monotonic() - self._t0) * 1000)

    def _tick(self) -> float:
        """One pass of the firmware's main loop; returns the seconds it may sleep."""
        with self._power:
            before = bool(self.hal.pi_power)
            now = self._now_ms()
            self.hal.advance_to(now)
            try:
                self.sup.tick(now)
            except Exception:
                # On the board machine.WDT would reset the MCU: do the same, visibly.
                logger.exception("MCU emulator: the firmware raised; resetting it as its "
                                 "watchdog would")
                self.resets += 1
                self.hal.cause = firmware_module("proto").RESET_WATCHDOG
                self.sup = self.logic.Supervisor(self.hal, self.cfg, bad_config=0,
                                            now_ms=self._now_ms())
            if bool(self.hal.pi_power) != before:
                logger.info("MCU emulator: Pi power %s (wake reason %d, state %d)",
                            "on" if self.hal.pi_power else "off", self.sup.wake_reason,
                            self.sup.state)
                self._power.notify_all()
            return float(self.sup.sleep_ms()) / 1000.0

    def run(self, stop: threading.Event) -> None:
        """The board's main loop until ``stop`` (a supervised stage; closes the pty at stop)."""
        try:
            while not stop.is_set() and not self._line.closed:
                readable = self._line.wait(self._tick())
                if readable is None:
                    return
                if readable:
                    self._read_pty()
        finally:
            if stop.is_set():
                self.close()

    def interrupt(self) -> None:
        """Wake the main loop now (a stop, a PIR edge, the halt pin)."""
        self._line.wake()

    def start(self) -> McuEmulator:
        """Run the board on its own thread (tests that use no supervisor)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, args=(self._stop,),
                                            name="mcu-emulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Close the pty and the wake pipe (idempotent)."""
        self._line.close()

    def __enter__(self) -> McuEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
