"""Burst capture: the frames of one trigger, pre-trigger frames from the ring buffer first."""

from __future__ import annotations

import dataclasses
import logging
import threading

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.events import Burst, Frame, TriggerEvent
from edge_app.trap.hardware.camera import Camera

logger = logging.getLogger(__name__)


def capture_burst(
    camera: Camera,
    trigger: TriggerEvent,
    cfg: CameraConfig,
    clock: Clock,
    stop: threading.Event,
) -> Burst:
    """Take the frames of one trigger.

    Order: up to ``cfg.pre_trigger_frames`` frames from ``camera.recent`` (the moments just
    before the PIR fired, which often show the animal entering), then ``cfg.burst_frames``
    frames ``cfg.burst_interval_s`` apart. Indices are renumbered 0..n-1 in that order.

    Frames are scheduled from the first capture (frame *k* at ``t0 + k * interval``), so the
    time a capture itself takes does not stretch the burst.

    The first burst frame is taken at once even when ``stop`` is set: a trigger that reached
    the capture stage gets at least one frame. ``stop`` interrupts the waits between frames;
    the burst then ends early with the frames taken so far (a shutdown must not lose the
    frame that shows the leopard).

    Args:
        camera: a started camera.
        trigger: the accepted trigger; copied into the burst.
        cfg: ``[camera]`` burst settings.
        clock: scheduling and waits (a fake clock makes the burst instant in tests).
        stop: the shared stop event.

    Returns:
        The burst, pre-trigger frames first.
    """
    frames: list[Frame] = []
    if cfg.pre_trigger_frames > 0:
        for frame in camera.recent(cfg.pre_trigger_frames):
            frames.append(dataclasses.replace(frame, index=len(frames), pre_trigger=True))
    t0 = clock.monotonic()
    for k in range(cfg.burst_frames):
        if k > 0:
            delay = t0 + k * cfg.burst_interval_s - clock.monotonic()
            if clock.wait(stop, max(delay, 0.0)):
                logger.info(
                    "burst of trigger #%d stopped after %d of %d frames",
                    trigger.number,
                    k,
                    cfg.burst_frames,
                )
                break
        frame = camera.capture(len(frames))
        frames.append(dataclasses.replace(frame, index=len(frames), pre_trigger=False))
    first = next((f for f in frames if not f.pre_trigger), None)
    if first is not None:
        logger.debug(
            "trigger #%d: first frame %.0f ms after the edge, %d frames",
            trigger.number,
            (first.mono - trigger.mono) * 1000.0,
            len(frames),
        )
    return Burst(trigger=trigger, frames=tuple(frames))
