"""Where real hardware and simulators are plugged in: one factory per device, chosen by config.

The simulators live in :mod:`edge_app.sim` and are imported here, inside the function, only
when a config asks for one (``camera.source`` replay/synthetic, ``hardware.backend`` sim): the
trap's runtime never loads them (the import contract in pyproject.toml names these two lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.errors import ConfigError
from edge_app.trap.hardware.camera import Camera, PiCamera2Camera

if TYPE_CHECKING:
    from edge_app.sim.world import SimWorld


def make_camera(cfg: CameraConfig, backend: str, clock: Clock) -> Camera:
    """The camera that ``[camera] source`` names.

    Args:
        cfg: the ``[camera]`` section.
        backend: ``hardware.backend``; the Pi camera needs ``pi``.
        clock: frame timestamps and waits.

    Raises:
        ConfigError: an impossible combination, or a bad replay folder.
    """
    if cfg.source in ("replay", "synthetic"):
        from edge_app.sim.cameras import ReplayCamera, SyntheticCamera

        if cfg.source == "replay":
            return ReplayCamera(cfg.images_dir, cfg.order, cfg.seed, clock)
        return SyntheticCamera(cfg.width, cfg.height, cfg.seed, cfg.jpeg_quality, clock)
    if cfg.source == "picamera2":
        if backend != "pi":
            raise ConfigError("camera.source", "picamera2 needs hardware.backend = 'pi'")
        return PiCamera2Camera(cfg, clock)
    raise ConfigError("camera.source", f"unknown camera source {cfg.source!r}")


def make_sim_world(pin_factory: object, pin: int, camera: Camera, clock: Clock) -> SimWorld:
    """The simulated world (animals walking past the mock PIR) for ``hardware.backend = sim``."""
    from edge_app.sim.world import SimWorld

    return SimWorld(pin_factory, pin, camera, clock)
