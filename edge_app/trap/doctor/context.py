"""What every check is given: the config, the time bound, and the probes a test can swap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_app.core.clock import Clock, SystemClock
from edge_app.core.config import Config


@dataclass
class Probes:
    """The parts of the machine a check reads, replaceable in tests (each None: the real one,
    or the simulator ``hardware.backend = 'sim'`` asks for, through the hardware factory).

    Attributes:
        pin_factory: gpiozero pin factory for the PIR (a ``MockFactory`` whose pin a test
            drives high).
        time_source: where the Pi's clock comes from now (``gps``, ``ntp``, ``none``).
        mcu_emulator: a running :class:`~edge_app.sim.mcu.McuEmulator` (sim only).
        modem_bus: the D-Bus address where ModemManager is (a test's private bus; None: the
            system bus, or the session bus with the sim backend).
    """

    pin_factory: object | None = None
    time_source: Callable[[], str] | None = None
    mcu_emulator: Any = None
    modem_bus: str | None = None


@dataclass
class Ctx:
    """One doctor run.

    Attributes:
        cfg: the loaded config.
        models: ``--models``, when given.
        timeout_s: the bound of each check.
        pir_window_s: how long the PIR pin is watched.
        clock: waits.
        probes: see :class:`Probes`.
        found: what one check learned for a later one (the MCU's STATUS for the clock line).
    """

    cfg: Config
    models: str | None = None
    timeout_s: float = 20.0
    pir_window_s: float = 2.0
    clock: Clock = field(default_factory=SystemClock)
    probes: Probes = field(default_factory=Probes)
    found: dict[str, Any] = field(default_factory=dict)
