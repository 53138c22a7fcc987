"""The simulated outdoors: an animal walks past, the scene changes and the PIR pin goes high.

It couples the two simulated sensors the way the real world couples the real ones: the
camera's scene changes *before* the PIR output rises, so the burst that the trigger causes
sees the new scene. The PIR is driven through a gpiozero ``MockFactory`` pin, so the trigger
stage runs exactly the code it runs on a Pi (``MotionSensor`` sampling the pin).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edge_app.core.clock import Clock
from edge_app.trap.hardware.camera import Camera, SceneCamera

logger = logging.getLogger(__name__)

#: How long a simulated PIR pulse lasts by default (a short HC-SR501 Tx setting).
DEFAULT_PULSE_S = 1.0


class SimWorld:
    """Simulated animals in front of a simulated camera and PIR.

    For deterministic tests, call :meth:`visit` (scene changes, pin high) and :meth:`leave`
    (pin low) yourself; :meth:`visit` with ``pulse_s`` schedules the :meth:`leave`, and
    :meth:`run` makes visits on a schedule.

    A visit while the pin is still high keeps it high (and only moves the scene on), as an
    HC-SR501 in retrigger mode does while motion continues; the pending :meth:`leave` is
    rescheduled.

    Args:
        pin_factory: the gpiozero ``MockFactory`` the PIR's ``MotionSensor`` also uses.
        pin: the PIR's BCM pin number (``trigger.pin``).
        camera: a simulated camera whose scene a visit advances (a :class:`SceneCamera`;
            typed as any :class:`Camera` so a composition root can pass what
            :func:`~edge_app.trap.hardware.factory.make_camera` returned).
        clock: times the scheduled leaves and the visit loop.

    Raises:
        TypeError: the camera has no scene to advance (the Pi camera).
    """

    def __init__(self, pin_factory: Any, pin: int, camera: Camera, clock: Clock) -> None:
        if not isinstance(camera, SceneCamera):
            raise TypeError(f"{type(camera).__name__} has no scene to advance")
        self._pin = pin_factory.pin(pin)
        self._pin_number = pin
        self._camera = camera
        self._clock = clock
        self._lock = threading.Lock()  # guards _cancel_leave, _visits
        self._cancel_leave: threading.Event | None = None
        self._visits = 0

    @property
    def visits(self) -> int:
        """Visits made so far."""
        with self._lock:
            return self._visits

    @property
    def pir_high(self) -> bool:
        """Whether the simulated PIR output is high."""
        return bool(self._pin.state)

    def visit(self, pulse_s: float | None = None) -> str:
        """An animal arrives: advance the camera's scene, then drive the PIR pin high.

        Args:
            pulse_s: drive the pin low again after this long (on a helper thread timed by
                the clock); None leaves it high until :meth:`leave`.

        Returns:
            The new scene's name.

        Raises:
            EOFError: a non-looping replay camera has no images left.
        """
        scene = self._camera.advance()
        with self._lock:
            if self._cancel_leave is not None:
                self._cancel_leave.set()
                self._cancel_leave = None
            self._visits += 1
            number = self._visits
            cancel = threading.Event() if pulse_s is not None else None
            self._cancel_leave = cancel
        logger.info("sim visit %d: %s in front of the camera, PIR high", number, scene)
        self._pin.drive_high()
        if cancel is not None and pulse_s is not None:
            threading.Thread(
                target=self._leave_after,
                args=(cancel, pulse_s),
                name=f"sim-leave-{number}",
                daemon=True,
            ).start()
        return scene

    def leave(self) -> None:
        """The animal has gone: drive the PIR pin low (cancels a scheduled leave)."""
        with self._lock:
            if self._cancel_leave is not None:
                self._cancel_leave.set()
                self._cancel_leave = None
        self._pin.drive_low()

    def run(
        self,
        stop: threading.Event,
        every_s: float,
        *,
        pulse_s: float = DEFAULT_PULSE_S,
        max_visits: int | None = None,
    ) -> None:
        """Make a visit every ``every_s`` seconds until ``stop`` is set.

        The first visit comes after ``every_s`` (so the trigger stage has started). Each
        pulse lasts ``min(pulse_s, every_s / 2)`` so the pin is low again before the next
        visit and every visit is a fresh edge. Blocks; run it on its own thread. The pin is
        low when it returns.

        Args:
            stop: the shared stop event.
            every_s: time between visits (> 0).
            pulse_s: PIR pulse length.
            max_visits: return after this many visits (tests, scripted demos); :attr:`visits`
                counts them.
        """
        if every_s <= 0:
            raise ValueError("every_s must be > 0")
        pulse = min(pulse_s, every_s / 2)
        made = 0
        wait_s = every_s
        try:
            while max_visits is None or made < max_visits:
                if self._clock.wait(stop, wait_s):
                    break
                try:
                    self.visit()
                except EOFError:
                    logger.info("sim: replay finished after %d visits", made)
                    break
                made += 1
                if self._clock.wait(stop, pulse):
                    break
                self.leave()
                wait_s = every_s - pulse
        finally:
            self.leave()

    def close(self) -> None:
        """Cancel a scheduled leave and drive the pin low."""
        self.leave()

    def _leave_after(self, cancel: threading.Event, pulse_s: float) -> None:
        if self._clock.wait(cancel, pulse_s):
            return
        with self._lock:
            if self._cancel_leave is not cancel:
                return  # a newer visit owns the pin now
            self._cancel_leave = None
        self._pin.drive_low()
