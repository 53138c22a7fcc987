"""IR lighting: the IR-cut filter and the IR illuminator on gpiozero outputs, used per burst.

Wiring assumed (``[ir]``; every pin is BCM, 3.3 V logic, none driven by the Pi directly):

* **Illuminator** on ``ir.led_pin`` through a logic-level MOSFET or its board's enable input
  (a 3 W 850 nm board draws ~10× what a GPIO can source). Active high unless
  ``ir.led_active_high = false``.
* **IR-cut filter**, ``ir.filter``:

  - ``level``: a filter whose driver board holds it by a logic level: ``filter_night_pin``
    is active at night (filter out) and inactive by day;
  - ``pulse``: a latching filter on an H-bridge (e.g. a DRV8833's two inputs): a pulse of
    ``filter_ms`` on ``filter_night_pin`` takes the filter out, on ``filter_day_pin`` puts it
    back in; both pins idle inactive, and never both active (that would short the bridge);
  - ``none``: a fixed NoIR module or no filter.

Why the illuminator is pulsed only during capture: it draws more than the Pi (§8.9, §5.5), and
frames between triggers are never kept. It comes on ``ir.settle_s`` before a night frame (the
exposure must settle to the new light, so this adds to the night trigger latency) and goes off
right after the burst. Between burst frames it stays on unless the gap is longer than
``2 × settle_s``; then it is pulsed per frame. :func:`ir_on_s_per_trigger` is the resulting
on-time, the figure the power budget uses.

It is never left on:

* :class:`~edge_app.trap.capture.capture_burst` switches it off in a ``finally``;
* the on-time is checked against ``ir.max_on_s`` on the injected clock before each frame;
* and a guard thread switches it off after ``max_on_s`` of **real** time: the one timer here
  that does not follow the injected clock, because it exists for the case where the capture
  thread is stuck (a hung camera), and a stuck thread advances no clock;
* :meth:`IrOutputs.close` switches everything off.

Shedding (§7.4: IR first, then the modem, then capture): with a battery reading below
``ir.shed_below_v`` the policy keeps the illuminator off; the filter still follows the light.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from edge_app.core.clock import Clock
from edge_app.core.config import IrConfig, LocationConfig
from edge_app.core.errors import HardwareUnavailable
from edge_app.trap.daynight import DayNight, Decision

logger = logging.getLogger(__name__)

#: One streamed frame (formats-and-field §8.7: ~11 ms per frame while streaming).
CAPTURE_S = 0.011

#: Metadata read this soon after the illuminator went off may describe a lit frame; skipped.
AFTERGLOW_S = 1.0


def pulsed_per_frame(interval_s: float, settle_s: float) -> bool:
    """True when the illuminator goes off between burst frames (the gap exceeds 2 × settle)."""
    return interval_s > 2 * settle_s


def longest_on_s(frames: int, interval_s: float, settle_s: float) -> float:
    """The longest planned on-period of a night burst, captures excluded (config check)."""
    if pulsed_per_frame(interval_s, settle_s):
        return settle_s
    return settle_s + (frames - 1) * interval_s


def ir_on_s_per_trigger(frames: int, interval_s: float, settle_s: float,
                        capture_s: float = CAPTURE_S) -> float:
    """Seconds the illuminator is on for one night trigger (the power budget's figure).

    Continuous: ``settle + (frames − 1) × interval + capture``; pulsed per frame:
    ``frames × (settle + capture)``.
    """
    if pulsed_per_frame(interval_s, settle_s):
        return frames * (settle_s + capture_s)
    return settle_s + (frames - 1) * interval_s + capture_s


class IrOutputs:
    """The filter and illuminator pins through gpiozero ``DigitalOutputDevice`` s.

    Thread-safe: the capture thread drives it, the guard thread may switch the illuminator
    off, :meth:`close` may come from the main thread.

    Args:
        cfg: the ``[ir]`` section.
        clock: filter pulse lengths and on-times (a fake clock makes pulses instant).
        pin_factory: from :func:`~edge_app.trap.hardware.trigger.make_pin_factory`.
    """

    def __init__(self, cfg: IrConfig, clock: Clock, pin_factory: object | None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._pin_factory = pin_factory
        self._lock = threading.Lock()  # guards everything below; never held across a pulse
        self._led: Any = None
        self._night_dev: Any = None
        self._day_dev: Any = None
        self._filter_night: bool | None = None  # unknown until first driven
        self._on_at: float | None = None  # clock mono when the illuminator came on
        self._off_at: float | None = None  # clock mono when it last went off
        self._cancel: threading.Event | None = None
        self._guard: threading.Thread | None = None
        self._pulse_wait = threading.Event()  # never set: clock.wait on it is a sleep
        self._closed = False
        self.filter_moves = 0
        self.flashes = 0
        self.on_s = 0.0
        self.guard_trips = 0
        self.guard_tripped = threading.Event()  # set at the first trip (tests, diagnostics)

    def open(self) -> None:
        """Claim the pins, all inactive (illuminator off, no filter pulse).

        Raises:
            HardwareUnavailable: gpiozero missing or a pin in use.
        """
        try:
            from gpiozero import DigitalOutputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError as e:
            raise HardwareUnavailable(f"gpiozero is not installed: {e}") from e
        cfg = self._cfg

        def out(pin: int, active_high: bool) -> Any:
            return DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                       pin_factory=self._pin_factory)

        with self._lock:
            if self._closed:
                raise RuntimeError("IrOutputs is closed")
            if self._led is not None:
                return
            made: list[Any] = []
            try:
                made.append(out(cfg.led_pin, cfg.led_active_high))
                if cfg.filter != "none":
                    made.append(out(cfg.filter_night_pin, cfg.filter_active_high))
                if cfg.filter == "pulse":
                    made.append(out(cfg.filter_day_pin, cfg.filter_active_high))
            except GPIOZeroError as e:
                for dev in made:
                    dev.close()
                raise HardwareUnavailable(f"IR outputs: {e}") from e
            self._led = made[0]
            self._night_dev = made[1] if len(made) > 1 else None
            self._day_dev = made[2] if len(made) > 2 else None

    @property
    def illuminating(self) -> bool:
        """The illuminator is on."""
        with self._lock:
            return self._on_at is not None

    @property
    def filter_night(self) -> bool | None:
        """The filter's last driven position (True = out, night); None before the first."""
        with self._lock:
            return self._filter_night

    def lit_within(self, seconds: float) -> bool:
        """The illuminator is on, or went off less than ``seconds`` ago (on the clock)."""
        now = self._clock.monotonic()
        with self._lock:
            return self._on_at is not None or (
                self._off_at is not None and now - self._off_at < seconds)

    def set_filter(self, night: bool) -> None:
        """Move the filter to night (out) or day (in); a no-op when it is already there.

        Blocks for ``filter_ms`` when it moves (the pulse, or the level driver's settle).
        """
        with self._lock:
            if self._closed or self._night_dev is None or self._filter_night == night:
                return
            cfg = self._cfg
            if cfg.filter == "level":
                self._night_dev.value = night
                pin = None
            else:
                pin = self._night_dev if night else self._day_dev
                (self._day_dev if night else self._night_dev).off()  # never both active
                pin.on()
            self._filter_night = night
            self.filter_moves += 1
        try:
            self._clock.wait(self._pulse_wait, cfg.filter_ms / 1000.0)
        finally:
            if pin is not None:
                with self._lock:
                    if not self._closed:  # close() has switched it off already
                        pin.off()
        logger.debug("IR-cut filter %s", "out (night)" if night else "in (day)")

    def illuminator_on(self) -> None:
        """Switch the illuminator on and arm the real-time guard; a no-op when already on."""
        with self._lock:
            if self._closed or self._led is None or self._on_at is not None:
                return
            self._led.on()
            self._on_at = self._clock.monotonic()
            self.flashes += 1
            cancel = threading.Event()
            self._cancel = cancel
            guard = threading.Thread(target=self._guard_run, args=(cancel,), name="ir-guard",
                                     daemon=True)
            self._guard = guard
            guard.start()  # under the lock: an off() from another thread joins a live thread

    def illuminator_off(self) -> None:
        """Switch the illuminator off and stop its guard. Idempotent."""
        with self._lock:
            guard = self._off_locked()
        if guard is not None and guard is not threading.current_thread():
            guard.join()

    def expire(self) -> bool:
        """Switch the illuminator off when it has been on ``max_on_s`` on the clock.

        Returns:
            True when it was switched off now.
        """
        with self._lock:
            if self._on_at is None or self._clock.monotonic() - self._on_at < self._cfg.max_on_s:
                return False
            guard = self._trip_locked("on the clock")
        if guard is not None:
            guard.join()
        return True

    def close(self) -> None:
        """Everything off, pins released. Idempotent."""
        self.illuminator_off()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            devs = [d for d in (self._led, self._night_dev, self._day_dev) if d is not None]
            self._led = self._night_dev = self._day_dev = None
        for dev in devs:
            dev.off()
            dev.close()

    # -- internals (call with _lock held) ---------------------------------------------------

    def _off_locked(self) -> threading.Thread | None:
        if self._on_at is None:
            return None
        self._led.off()
        now = self._clock.monotonic()
        self.on_s += now - self._on_at
        self._on_at, self._off_at = None, now
        guard, self._guard = self._guard, None
        if self._cancel is not None:
            self._cancel.set()
            self._cancel = None
        return guard

    def _trip_locked(self, how: str) -> threading.Thread | None:
        self.guard_trips += 1
        logger.error("IR illuminator on for %.1f s (ir.max_on_s %.1f): switched off (%s)",
                     self._clock.monotonic() - (self._on_at or 0.0), self._cfg.max_on_s, how)
        guard = self._off_locked()
        self.guard_tripped.set()  # after the LED is off: whoever waits on it may look at it
        return guard

    def _guard_run(self, cancel: threading.Event) -> None:
        if cancel.wait(self._cfg.max_on_s):  # real time on purpose: see the module docstring
            return
        with self._lock:
            if cancel.is_set() or self._cancel is not cancel:
                return
            self._trip_locked("guard thread: capture stuck?")


class Lighting:
    """Per burst: the camera's metadata → :class:`DayNight` → :class:`IrOutputs`.

    :func:`~edge_app.trap.capture.capture_burst` calls :meth:`begin` at the start of a burst
    (this may move the filter) and then :meth:`on` / :meth:`off` / :meth:`expire` around the
    burst frames. All calls come from the capture thread, except :meth:`close`.

    Args:
        cfg: the ``[ir]`` section.
        policy: the day/night rule.
        outputs: the pins.
        clock: times for the policy (dwell, sun) and the outputs.
        battery_v: the latest battery voltage (the MCU's STATUS), or None when unknown;
            compared with ``ir.shed_below_v``.
    """

    def __init__(
        self,
        cfg: IrConfig,
        policy: DayNight,
        outputs: IrOutputs,
        clock: Clock,
        *,
        battery_v: Callable[[], float | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.outputs = outputs
        self._clock = clock
        self._battery_v = battery_v
        self.last: Decision | None = None
        self.metadata_errors = 0
        self.skipped_lit = 0
        self.refused_battery = 0

    @property
    def settle_s(self) -> float:
        """Illuminator lead time before a night frame."""
        return self.cfg.settle_s

    def pulsed(self, interval_s: float) -> bool:
        """Whether a burst with this frame interval pulses the illuminator per frame."""
        return pulsed_per_frame(interval_s, self.cfg.settle_s)

    def start(self) -> None:
        """Claim the pins and put the filter where the sun says (its position is unknown
        after power-up: a latching filter keeps wherever it was).

        Raises:
            HardwareUnavailable: gpiozero missing or a pin in use.
        """
        self.outputs.open()
        d = self.policy.decide(None, self._clock.monotonic(), self._clock.wall())
        self.outputs.set_filter(d.night)
        logger.info("IR control on: %s (%s)", "night" if d.night else "day", d.basis)

    def begin(self, camera: object) -> Decision:
        """Decide for the burst about to be taken and move the filter if needed."""
        md: Mapping[str, object] | None = None
        if self.outputs.lit_within(AFTERGLOW_S):
            self.skipped_lit += 1  # the latest frame may be one the illuminator lit
        else:
            md = self._metadata(camera)
        d = self.policy.decide(md, self._clock.monotonic(), self._clock.wall(),
                               battery_low=self._battery_low())
        self.outputs.set_filter(d.night)
        self.last = d
        return d

    def on(self) -> None:
        self.outputs.illuminator_on()

    def off(self) -> None:
        self.outputs.illuminator_off()

    def expire(self) -> bool:
        """Enforce ``ir.max_on_s`` on the clock; True when it switched the illuminator off."""
        return self.outputs.expire()

    def stats(self) -> dict[str, Any]:
        """The stats message's ``ir`` part."""
        o = self.outputs
        return {"night": self.policy.night, **asdict(self.policy.stats),
                "filter_moves": o.filter_moves, "flashes": o.flashes,
                "on_s": round(o.on_s, 3), "guard_trips": o.guard_trips,
                "metadata_errors": self.metadata_errors, "skipped_lit": self.skipped_lit,
                "refused_battery": self.refused_battery}

    def close(self) -> None:
        """Illuminator off, pins released (the filter stays where it is). Idempotent."""
        self.outputs.close()

    def _metadata(self, camera: object) -> Mapping[str, object] | None:
        read = getattr(camera, "metadata", None)  # Camera.metadata() where the camera has it
        if not callable(read):
            return None
        try:
            md = read()
        except Exception as e:  # noqa: BLE001 - a camera fault must not stop the burst
            self.metadata_errors += 1
            logger.warning("camera metadata unavailable: %s", e)
            return None
        if not isinstance(md, Mapping):
            self.metadata_errors += 1
            logger.warning("camera metadata refused: a %s, not a mapping", type(md).__name__)
            return None
        return md

    def _battery_low(self) -> bool | None:
        if self._battery_v is None or self.cfg.shed_below_v <= 0:
            return None
        try:
            v = self._battery_v()
        except Exception as e:  # noqa: BLE001 - a reading is an aid, never a reason to stop
            logger.warning("battery reading unavailable: %s", e)
            return None
        if v is None:
            return None
        if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                or not math.isfinite(float(v)) or v < 0):
            self.refused_battery += 1
            logger.warning("refused battery reading %r (not a voltage)", v)
            return None
        return float(v) < self.cfg.shed_below_v


def make_lighting(
    cfg: IrConfig,
    location: LocationConfig,
    clock: Clock,
    pin_factory: object | None,
    *,
    battery_v: Callable[[], float | None] | None = None,
) -> Lighting | None:
    """The IR control for ``[ir]``, not started; None when ``ir.enabled`` is false.

    ``unit.location`` at exactly 0, 0 (the default) counts as unknown: no sun fallback, the
    filter starts in day mode until the first reading.
    """
    if not cfg.enabled:
        return None
    known = (location.lat, location.lon) != (0.0, 0.0)
    policy = DayNight(
        night_below_lux=cfg.night_below_lux, day_above_lux=cfg.day_above_lux,
        night_above_exposure=cfg.night_above_exposure,
        day_below_exposure=cfg.day_below_exposure, dwell_s=cfg.dwell_s,
        lat=location.lat if known else None, lon=location.lon if known else None)
    return Lighting(cfg, policy, IrOutputs(cfg, clock, pin_factory), clock, battery_v=battery_v)
