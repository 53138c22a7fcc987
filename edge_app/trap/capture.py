"""Burst capture: the frames of one trigger, pre-trigger frames from the ring buffer first.

With IR control (:class:`~edge_app.trap.hardware.ir.Lighting`) a burst also decides day or
night from the camera's latest metadata, moves the IR-cut filter when that changed, and lights
the burst frames at night; the burst is tagged with the mode (:class:`CapturedBurst`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass

from edge_app.core.clock import Clock
from edge_app.core.config import CameraConfig
from edge_app.core.events import Burst, Frame, TriggerEvent
from edge_app.trap.hardware.camera import Camera
from edge_app.trap.hardware.ir import Lighting

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CapturedBurst(Burst):
    """A :class:`Burst` with the day/night mode it was taken in.

    Attributes:
        night: True when the burst frames were taken in night mode (IR-cut filter out; the
            illuminator on unless shed), False by day, None without IR control. Pre-trigger
            frames come from before the decision and may have been taken in the other mode.
    """

    night: bool | None = None


def capture_burst(
    camera: Camera,
    trigger: TriggerEvent,
    cfg: CameraConfig,
    clock: Clock,
    stop: threading.Event,
    lighting: Lighting | None = None,
) -> CapturedBurst:
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
        lighting: IR control, or None. At the start of the burst (after the pre-trigger
            frames, which are history) it decides day or night and moves the filter if
            needed; at night the illuminator comes on ``settle_s`` before the first frame
            and goes off right after the last (between frames too when the gap is longer
            than ``2 × settle_s``), also when a capture raises or ``stop`` ends the burst.

    Returns:
        The burst, pre-trigger frames first, tagged day or night.
    """
    frames: list[Frame] = []
    if cfg.pre_trigger_frames > 0:
        for frame in camera.recent(cfg.pre_trigger_frames):
            frames.append(dataclasses.replace(frame, index=len(frames), pre_trigger=True))
    night: bool | None = None
    lit: Lighting | None = None
    if lighting is not None:
        try:
            decision = lighting.begin(camera)
        except Exception:
            logger.exception("IR control failed: burst of trigger #%d taken without it",
                             trigger.number)
        else:
            night = decision.night
            lit = lighting if decision.illuminate else None
    try:
        _take(camera, trigger, cfg, clock, stop, frames, lit)
    finally:
        if lit is not None:
            lit.off()  # never left on: also when a capture raised or stop ended the burst
    first = next((f for f in frames if not f.pre_trigger), None)
    if first is not None:
        logger.debug(
            "trigger #%d: first frame %.0f ms after the edge, %d frames%s",
            trigger.number,
            (first.mono - trigger.mono) * 1000.0,
            len(frames),
            "" if night is None else " (night)" if night else " (day)",
        )
    return CapturedBurst(trigger=trigger, frames=tuple(frames), night=night)


def _take(
    camera: Camera,
    trigger: TriggerEvent,
    cfg: CameraConfig,
    clock: Clock,
    stop: threading.Event,
    frames: list[Frame],
    lit: Lighting | None,
) -> None:
    """The burst frames, appended to ``frames``; ``lit`` is set for an illuminated burst."""
    pulsed = lit is not None and lit.pulsed(cfg.burst_interval_s)
    settle = 0.0 if lit is None else lit.settle_s
    t0 = clock.monotonic()
    for k in range(cfg.burst_frames):
        if k == 0:
            if lit is not None:
                lit.on()
                clock.wait(stop, settle)  # stop cuts the settle short; the frame is still taken
                t0 = clock.monotonic()
        else:
            due = t0 + k * cfg.burst_interval_s
            if pulsed and lit is not None:
                if _wait_until(clock, stop, due - settle):
                    _stopped(trigger, k, cfg.burst_frames)
                    return
                lit.on()
                due = max(due, clock.monotonic() + settle)  # a late frame still gets its settle
            if _wait_until(clock, stop, due):
                _stopped(trigger, k, cfg.burst_frames)
                return
        if lit is not None:
            lit.expire()  # ir.max_on_s on the clock (the guard thread covers a stuck capture)
        frame = camera.capture(len(frames))
        frames.append(dataclasses.replace(frame, index=len(frames), pre_trigger=False))
        if pulsed and lit is not None:
            lit.off()


def _wait_until(clock: Clock, stop: threading.Event, at: float) -> bool:
    """Wait until mono ``at`` (or not at all when it has passed); True when stopped."""
    return clock.wait(stop, max(at - clock.monotonic(), 0.0))


def _stopped(trigger: TriggerEvent, k: int, n: int) -> None:
    logger.info("burst of trigger #%d stopped after %d of %d frames", trigger.number, k, n)
