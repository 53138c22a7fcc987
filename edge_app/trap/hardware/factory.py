"""Where real hardware and simulators are plugged in: one factory per device, chosen by config.

The simulators live in :mod:`edge_app.sim` and are imported here, inside the function, only
when a config asks for one (``camera.source`` replay/synthetic/picamera2-fake,
``hardware.backend`` sim): the trap's runtime never loads them (the import contract in
pyproject.toml names these two lines).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig, Config
from edge_app.core.errors import ConfigError
from edge_app.core.events import TriggerEvent
from edge_app.trap.hardware.camera import Camera, PiCamera2Camera
from edge_app.trap.hardware.camera_guard import CameraGuard
from edge_app.trap.hardware.mcu import McuDriver
from edge_app.trap.hardware.timesource import TimeSourceProbe, fixed

if TYPE_CHECKING:
    from edge_app.sim.mcu import McuEmulator
    from edge_app.sim.world import SimWorld


def make_camera(cfg: CameraConfig, backend: str, clock: Clock,
                on_give_up: Callable[[str], None] | None = None) -> CameraGuard:
    """The camera that ``[camera] source`` names, inside the capture guard.

    Every camera, real or simulated, comes back wrapped in
    :class:`~edge_app.trap.hardware.camera_guard.CameraGuard` (timeouts, in-process reopening,
    giving up after ``camera.max_reopens``); the guard passes the inner camera's own
    attributes through (a replay camera's ``files``, a simulated camera's ``advance``).

    Args:
        cfg: the ``[camera]`` section.
        backend: ``hardware.backend``; the Pi camera needs ``pi``.
        clock: frame timestamps and waits.
        on_give_up: called once, with the reason, when the guard gives the camera up (the
            daemon asks the supervisor MCU for a power cycle there).

    Raises:
        ConfigError: an impossible combination, or a bad replay folder.
    """
    inner: Camera
    if cfg.source in ("replay", "synthetic", "picamera2-fake"):
        from edge_app.sim.cameras import FakePiCamera, ReplayCamera, SyntheticCamera

        if cfg.source == "replay":
            inner = ReplayCamera(cfg.images_dir, cfg.order, cfg.seed, clock)
        elif cfg.source == "synthetic":
            inner = SyntheticCamera(cfg.width, cfg.height, cfg.seed, cfg.jpeg_quality, clock)
        else:
            if backend != "sim":
                raise ConfigError("camera.source", "picamera2-fake needs hardware.backend = "
                                  "'sim'")
            inner = FakePiCamera(cfg, clock)
    elif cfg.source == "picamera2":
        if backend != "pi":
            raise ConfigError("camera.source", "picamera2 needs hardware.backend = 'pi'")
        inner = PiCamera2Camera(cfg, clock)
    else:
        raise ConfigError("camera.source", f"unknown camera source {cfg.source!r}")
    return CameraGuard.from_config(inner, cfg, clock, on_give_up)


def make_sim_world(pin_factory: object, pin: int, camera: Camera, clock: Clock) -> SimWorld:
    """The simulated world (animals walking past the mock PIR) for ``hardware.backend = sim``."""
    from edge_app.sim.world import SimWorld

    return SimWorld(pin_factory, pin, camera, clock)


def make_time_source(backend: str, clock: Clock) -> Callable[[], str]:
    """Where the Pi's wall clock comes from now (``gps``, ``ntp``, ``none``): the kernel and
    chrony probe on the Pi; ``ntp`` in simulation (the host's clock, taken as synchronised)."""
    if backend == "sim":
        return fixed("ntp")
    return TimeSourceProbe(clock)


def make_mcu(cfg: Config, clock: Clock, on_trigger: Callable[[TriggerEvent], None], *,
             emulator: McuEmulator | None = None,
             time_source: Callable[[], str] | None = None,
             health: Callable[[], bool] | None = None,
             ) -> tuple[McuDriver | None, McuEmulator | None]:
    """The supervisor MCU driver, and with the sim backend the firmware behind a pty.

    Returns (None, None) when the MCU is not in use. Triggers are delivered to
    ``on_trigger`` only with ``trigger.source = "mcu"``.

    Raises:
        ConfigError: the sim backend cannot find the firmware to emulate.
    """
    if not cfg.mcu_in_use:
        return None, None
    port = None
    if cfg.hardware.backend == "sim":
        if emulator is None:
            from edge_app.sim.mcu import FirmwareNotFound, McuEmulator

            try:
                emulator = McuEmulator(clock=clock)
            except FirmwareNotFound as e:
                key = "trigger.source" if cfg.trigger.source == "mcu" else "mcu.enabled"
                raise ConfigError(key, str(e)) from e
        port = emulator.port
    deliver = on_trigger if cfg.trigger.source == "mcu" else None
    driver = McuDriver(cfg.mcu, clock, deliver, port=port, health=health,
                       time_source=time_source)
    return driver, emulator
