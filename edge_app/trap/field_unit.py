"""The field unit's own parts: the supervisor MCU, the power stage it drives, the IR lighting.

Separate from :class:`~edge_app.trap.daemon.App` because the App wires the data path
(trigger → capture → detect → store → uplink) that every trap has, a bench one included,
while keeping a battery-powered unit alive in the field is a concern of its own with its own
failure modes: a wedged camera is power-cycled by the MCU, a gated Pi halts once its work is
delivered, the illuminator is shed on a low battery. These parts share the MCU and its
readings; of the data path they only read the few facts in :class:`Trap`, at the moment they
ask (a remote settings change swaps the trap's ``cfg``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.core.errors import StorageError
from edge_app.core.events import TriggerEvent
from edge_app.trap.hardware.factory import make_mcu
from edge_app.trap.hardware.ir import Lighting, make_lighting
from edge_app.trap.hardware.mcu import McuDriver, McuError
from edge_app.trap.power import PowerObservation, PowerPolicy
from edge_app.trap.power_stage import PowerStage
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.supervisor import Supervisor
from edge_app.trap.uplink.mqtt import MqttLink

if TYPE_CHECKING:
    from edge_app.sim.mcu import McuEmulator
    from edge_app.trap.uplink.router import LoraRouter

logger = logging.getLogger(__name__)

CAMERA_CYCLE_OFF_S = 10
"""A given-up camera: the MCU keeps the Pi off this long (the camera's rail discharged)."""

PACK_BUSY_S = 120.0
"""A model pack that moved this recently keeps a gated Pi up (the sender's next round)."""


class Trap(Protocol):
    """What the field unit reads of the trap (the daemon's App), each time it asks."""

    @property
    def cfg(self) -> Config: ...
    @property
    def link(self) -> MqttLink | None: ...
    @property
    def lora(self) -> LoraRouter | None: ...
    @property
    def store(self) -> EventStore: ...
    @property
    def supervisor(self) -> Supervisor: ...
    def is_idle(self) -> bool: ...


class FieldUnit:
    """The MCU, power stage and lighting of one trap; all None where not configured.

    Made empty before the parts that call back into it (the camera's give-up, the store's
    readings), then :meth:`build` and :meth:`add_stages` at the points of the App's wiring
    where the originals were made.
    """

    def __init__(self, trap: Trap, clock: Clock) -> None:
        self._trap = trap
        self._clock = clock
        self.mcu: McuDriver | None = None
        self.mcu_sim: McuEmulator | None = None
        self.lighting: Lighting | None = None
        self.power: PowerStage | None = None
        self.last_trigger_mono: float | None = None  # written by the trigger callback
        self._born_mono = clock.monotonic()

    def build(self, cfg: Config, on_trigger: Callable[[TriggerEvent], None],
              pin_factory: object, time_source: Callable[[], str],
              emulator: McuEmulator | None = None) -> None:
        """The MCU driver (and with the sim backend its emulated firmware) and the lighting."""
        # The supervisor MCU (trigger.source = "mcu" or mcu.enabled): its driver is a stage;
        # with the sim backend the firmware itself runs behind a pty (edge_app/sim/mcu.py).
        self.mcu, self.mcu_sim = make_mcu(
            cfg, self._clock, on_trigger, emulator=emulator, time_source=time_source,
            health=lambda: self._trap.supervisor.health.healthy())
        # Day/night (edge_app/trap/daynight.py): IR-cut filter and an illuminator pulsed only
        # around night bursts; shed first when the MCU reports a low battery.
        self.lighting = make_lighting(
            cfg.ir, cfg.unit.location, self._clock, pin_factory,
            battery_v=lambda: self.readings()[0])

    def add_stages(self, supervisor: Supervisor, cfg: Config, deadline_s: float,
                   run_sim: bool) -> None:
        """The MCU's stages (with ``run_sim`` also its emulator's) and the power stage.

        Power modes (edge_app/trap/power.py): with the supervisor MCU, a stage hands it the
        schedule and, in gated/hybrid mode, shuts the Pi down once its work is delivered.
        """
        if self.mcu_sim is not None and run_sim:
            supervisor.add("mcu-sim", self.mcu_sim.run, self.mcu_sim.interrupt)
        if self.mcu is not None:
            supervisor.add("mcu", self.mcu.run, self.mcu.interrupt,
                           max(deadline_s, 3 * cfg.mcu.heartbeat_s))
            self.mcu.beat = supervisor.heart("mcu")
        self._born_mono = self._clock.monotonic()
        if self.mcu is not None:
            self.power = PowerStage(PowerPolicy(cfg.power, cfg.mcu.power_off_timeout_s),
                                    self.mcu, self._clock, self.power_observation, self.halt)
            supervisor.add("power", self.power.run, self.power.wake, deadline_s)
            self.power.beat = supervisor.heart("power")

    def readings(self) -> tuple[float | None, float | None]:
        """(battery V, temperature °C) for events and the LoRa status: the supervisor MCU's
        latest STATUS, (None, None) without one."""
        return (None, None) if self.mcu is None else self.mcu.readings()

    def camera_given_up(self, reason: str) -> None:
        """The camera guard gave up (on the capture thread): ask the MCU for a power cycle.

        The MCU cuts power after ``mcu.power_off_timeout_s`` (the time a halt may take) or at
        the halt pin; meanwhile stages finish and systemd may restart us (a fresh open), but a
        camera wedged in the kernel needs the power cut."""
        if self.mcu is None:
            logger.error("camera given up (%s) and no supervisor MCU to power-cycle the Pi; "
                         "the watchdog will restart the service", reason)
            return
        try:
            self.mcu.power_cycle(self._trap.cfg.mcu.power_off_timeout_s, CAMERA_CYCLE_OFF_S)
        except McuError as e:
            logger.error("camera given up and the MCU refused the power cycle: %s", e)

    def power_observation(self) -> PowerObservation:
        """The trap as the power policy needs it (the power stage's thread)."""
        trap = self._trap
        mono = self._clock.monotonic()
        if trap.cfg.hardware.backend == "pi":
            uptime = time.clock_gettime(time.CLOCK_BOOTTIME)  # since the Pi was powered
        else:
            uptime = mono - self._born_mono  # a simulated Pi boots with the App
        try:
            links = (("mqtt",) if trap.link is not None else ()) + (
                ("lorawan",) if trap.lora is not None else ())
            depth = trap.store.outbox_depth_by_link(links)
        except StorageError as e:  # unknown counts as "not delivered": stay up, the cap wins
            logger.warning("power: cannot read the outbox: %s", e)
            depth = {"outbox": 1}
        busy = set() if trap.is_idle() else {"capture/detect/store"}
        packs_at = None if trap.link is None else trap.link.pack_activity_mono
        if packs_at is not None and mono - packs_at < PACK_BUSY_S:
            busy.add("model pack download")  # the uptime cap still bounds it
        return PowerObservation(
            mono=mono, wall=self._clock.wall(), uptime_s=uptime, battery_v=self.readings()[0],
            outbox_depth=depth, last_trigger_mono=self.last_trigger_mono,
            busy=frozenset(busy))

    def halt(self) -> None:
        """The OS halt after POWER_OFF was acknowledged. On a Pi: ``systemctl poweroff``
        (allowed to the service user by deploy/systemd/camtrap-poweroff.rules); systemd then
        stops this service cleanly and the kernel raises the halt pin (gpio-poweroff). In
        simulation: the emulated board sees the halt pin and the App stops."""
        self._trap.supervisor.request_stop()
        if self._trap.cfg.hardware.backend == "pi":
            import subprocess

            try:
                subprocess.run(["systemctl", "poweroff"], check=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as e:
                logger.error("power: cannot halt (%s); the MCU cuts power after its timeout",
                             e)
        elif self.mcu_sim is not None:
            self.mcu_sim.halt = True
