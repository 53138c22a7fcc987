"""PIR trigger: gpiozero ``MotionSensor`` edges → debounce and hold-off → :class:`TriggerEvent`.

Wiring assumed (both the HC-SR501 and Panasonic EKMB digital parts): the PIR's output is
**active high** (3.3 V logic) on **BCM 17** (``trigger.pin``), no pull-up; gpiozero's default
pull-down keeps an unplugged sensor reading "no motion" rather than floating into triggers.

Two layers, so that the timing rules are testable without hardware or sleeping:

* :class:`TriggerFilter` is pure: it is fed rising/falling edges with their times and answers
  "does this become a trigger, and when should I be asked again". No threads, no I/O.
* :class:`PirTrigger` wires it to gpiozero's ``MotionSensor`` (the same code path as on the Pi;
  in simulation the pin comes from gpiozero's ``MockFactory``) and to one small worker thread
  that wakes only on an edge or at the filter's next deadline, never periodically.

Debounce semantics (chosen for latency): a rising edge becomes a trigger once the pin has
**stayed high for** ``debounce_s``; the trigger carries the time of the *rising edge*, so a
latency measured from ``TriggerEvent.mono`` honestly includes the debounce wait. Accepting on
the falling edge instead would add the whole PIR pulse (0.5 s to minutes on an HC-SR501 in
retrigger mode) to the trigger latency; a 0.2–0.5 s trigger speed is what makes a trap useful.
Worst-case latency from the physical edge is ``1 / sample_rate_hz + debounce_s`` (gpiozero
samples the pin; 50 + 50 ms with the defaults, ~100 ms measured through ``MockFactory``). A
pulse shorter than one sample period may not be seen at all, which is fine: real PIR pulses
are ≥ 0.3 s. The sampling thread is the only periodic cost: ~0.5 % of one x86 core at 20 Hz
(20 wake-ups/s; ~0.3 % at 10 Hz); the worker adds no wake-ups while idle.

Hold-off and re-triggering:

* Hold-off is measured from the previous accepted trigger, not from the falling edge (the
  HC-SR501's own lock time counts from the falling edge; ours must not, or a PIR that stays
  high for long would never re-arm).
* Edges during hold-off are not triggers, but the pin *level* is tracked. When hold-off ends
  and the pin is high (it rose during hold-off, or it never went low), that is a new trigger,
  stamped when it becomes due (the hold-off end, or ``debounce_s`` after a rise just before
  it). An HC-SR501 in retrigger mode (the default jumper) holds its output high for as long
  as motion continues, so "still high after hold-off" *is* the re-trigger: a leopard
  lingering at a scent-marking tree gives a burst every ``holdoff_s`` instead of one burst
  and then silence. ``holdoff_s = 0`` disables re-firing while high.
* A pin high without a break for ``stuck_s`` (default 5 min) is treated as a stuck sensor
  (fault, sun-heated vegetation): re-firing stops, a warning is logged once, and the next
  falling edge re-arms. This bounds the battery cost of a faulty PIR.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_app.core.clock import Clock
from edge_app.core.config import TriggerConfig
from edge_app.core.errors import ConfigError, HardwareUnavailable
from edge_app.core.events import TriggerEvent

logger = logging.getLogger(__name__)

#: Continuous high time after which the PIR is considered stuck (see module docstring).
DEFAULT_STUCK_S = 300.0


@dataclass(frozen=True, slots=True)
class TriggerStats:
    """Counters of what the filter did, for the unit's ``stats`` message.

    Attributes:
        accepted: triggers emitted (including re-fires).
        refired: of those, triggers from a pin that was high when hold-off ended.
        too_short: pulses shorter than ``debounce_s`` (noise).
        suppressed: pulses long enough but entirely inside a hold-off.
        stuck: times the pin was declared stuck high.
    """

    accepted: int = 0
    refired: int = 0
    too_short: int = 0
    suppressed: int = 0
    stuck: int = 0


class TriggerFilter:
    """Debounce and hold-off for one active-high motion input; pure and single-threaded.

    Feed it every edge with its time (:meth:`rising`, :meth:`falling`) and call :meth:`poll`
    at (or after) :meth:`next_deadline`. Each of the three returns the accepted
    :class:`TriggerEvent`, or None. The caller owns the locking when edges and polls come
    from different threads.

    Times are explicit arguments rather than read from a clock, so edges timestamped
    elsewhere (a pin factory's ticks, an MCU's wake report) can be replayed through it.

    Args:
        debounce_s: a pulse must stay high this long to count (0 = accept on the edge).
        holdoff_s: minimum time between triggers, and the re-fire period while the pin
            stays high (0 = no hold-off and no re-fire).
        source: copied into every event, e.g. ``pir:17``.
        stuck_s: continuous high time after which re-firing stops until the pin goes low.
    """

    def __init__(
        self,
        debounce_s: float,
        holdoff_s: float,
        source: str,
        *,
        stuck_s: float = DEFAULT_STUCK_S,
    ) -> None:
        if debounce_s < 0 or holdoff_s < 0:
            raise ValueError("debounce_s and holdoff_s must be ≥ 0")
        if stuck_s <= debounce_s:
            raise ValueError("stuck_s must be longer than debounce_s")
        self.debounce_s = debounce_s
        self.holdoff_s = holdoff_s
        self.source = source
        self.stuck_s = stuck_s
        self._level = False
        self._rise: float = 0.0  # time of the current high period's rising edge
        self._fired = False  # the current high period has produced a trigger
        self._stuck = False
        self._last: float | None = None  # mono of the last accepted trigger
        self._wall_offset = 0.0  # wall - mono at the latest call
        self._number = 0
        self._accepted = 0
        self._refired = 0
        self._too_short = 0
        self._suppressed = 0
        self._stuck_count = 0

    @property
    def level(self) -> bool:
        """The input level as last reported (True = motion)."""
        return self._level

    @property
    def stats(self) -> TriggerStats:
        """A snapshot of the counters."""
        return TriggerStats(
            accepted=self._accepted,
            refired=self._refired,
            too_short=self._too_short,
            suppressed=self._suppressed,
            stuck=self._stuck_count,
        )

    def rising(self, mono: float, wall: float) -> TriggerEvent | None:
        """The input went high at ``mono``.

        Returns:
            The trigger when it is due at once (``debounce_s == 0`` outside hold-off).
        """
        self._wall_offset = wall - mono
        if self._level:
            return None  # a repeated report of the same level is not an edge
        self._level = True
        self._rise = mono
        self._fired = False
        self._stuck = False
        return self.poll(mono, wall)

    def falling(self, mono: float, wall: float) -> TriggerEvent | None:
        """The input went low at ``mono``.

        Returns:
            A trigger that had become due before this edge but was not polled yet (so a
            late poll never loses a pulse that was long enough), else None.
        """
        if not self._level:
            self._wall_offset = wall - mono
            return None
        event = self.poll(mono, wall)
        if not self._fired:
            if mono - self._rise < self.debounce_s:
                self._too_short += 1
                logger.debug("PIR pulse of %.3f s ignored as noise", mono - self._rise)
            else:
                self._suppressed += 1
                logger.debug("PIR pulse of %.3f s inside hold-off ignored", mono - self._rise)
        self._level = False
        self._stuck = False
        return event

    def next_deadline(self) -> float | None:
        """When :meth:`poll` could next return a trigger (mono), or None until an edge."""
        if not self._level or self._stuck:
            return None
        if self._fired:
            if self.holdoff_s <= 0 or self._last is None:
                return None
            return self._last + self.holdoff_s
        due = self._rise + self.debounce_s
        if self._last is not None:
            due = max(due, self._last + self.holdoff_s)
        return due

    def poll(self, mono: float, wall: float) -> TriggerEvent | None:
        """Emit the trigger that is due at ``mono``, if any (at most one per call)."""
        self._wall_offset = wall - mono
        due = self.next_deadline()
        if due is None or mono < due:
            return None
        if mono - self._rise >= self.stuck_s:
            self._stuck = True
            self._stuck_count += 1
            logger.warning(
                "%s high for %.0f s without a break: treating the PIR as stuck, no more "
                "triggers until it goes low",
                self.source,
                mono - self._rise,
            )
            return None
        armed_at_edge = self._last is None or self._rise >= self._last + self.holdoff_s
        if not self._fired and armed_at_edge:
            at = self._rise  # a fresh edge: stamp the edge itself
        else:
            at = mono  # deferred by hold-off or a re-fire: stamp when it became due
            self._refired += 1
        self._fired = True
        self._last = at
        self._number += 1
        self._accepted += 1
        return TriggerEvent(
            number=self._number, mono=at, wall=at + self._wall_offset, source=self.source
        )


def make_pin_factory(backend: str) -> object | None:
    """The gpiozero pin factory for ``hardware.backend``.

    Args:
        backend: ``sim`` → a fresh ``MockFactory`` (drive its pins with
            ``factory.pin(17).drive_high()``); ``pi`` → None, so gpiozero picks the Pi's own
            factory (lgpio on a Pi 5, where RPi.GPIO does not work).

    Raises:
        ConfigError: an unknown backend.
        HardwareUnavailable: gpiozero is not installed.
    """
    if backend == "pi":
        return None
    if backend != "sim":
        raise ConfigError("hardware.backend", f"must be 'pi' or 'sim', got {backend!r}")
    try:
        from gpiozero.pins.mock import MockFactory
    except ImportError as e:
        raise HardwareUnavailable(f"gpiozero is not installed: {e}") from e
    factory: object = MockFactory()
    return factory


class PirTrigger:
    """A PIR on a GPIO pin, read through gpiozero's ``MotionSensor``, emitting triggers.

    Threads: gpiozero's sampling thread (``sample_rate_hz`` wakes per second, the only
    periodic activity) calls :meth:`_edge`, which only records the edge under a lock and
    wakes the ``pir-trigger`` worker. The worker owns the calls to ``on_trigger``, so they
    arrive in order from one thread; ``on_trigger`` must still not block (push into a
    bounded queue and return), or a second trigger would wait behind the first.

    Use a real clock: a :class:`~edge_app.core.clock.FakeClock`'s ``wait`` returns at once.

    Args:
        cfg: the ``[trigger]`` section (pin, sample rate, debounce, hold-off).
        clock: timestamps for edges and the worker's deadline waits.
        on_trigger: called once per accepted trigger, from the worker thread.
        pin_factory: from :func:`make_pin_factory`; None lets gpiozero choose the Pi's.
    """

    def __init__(
        self,
        cfg: TriggerConfig,
        clock: Clock,
        on_trigger: Callable[[TriggerEvent], None],
        pin_factory: object | None,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._on_trigger = on_trigger
        self._pin_factory = pin_factory
        self.source = f"pir:{cfg.pin}"
        # _lock guards _filter, _ready and _closing; held only for bookkeeping, never
        # across on_trigger or gpiozero calls.
        self._lock = threading.Lock()
        self._filter = TriggerFilter(cfg.debounce_s, cfg.holdoff_s, self.source)
        self._ready: list[TriggerEvent] = []
        self._wake = threading.Event()
        self._closing = False
        self._sensor: Any = None
        self._worker: threading.Thread | None = None

    @property
    def motion(self) -> bool:
        """The PIR level as gpiozero last sampled it (True = motion)."""
        with self._lock:
            return self._filter.level

    @property
    def stats(self) -> TriggerStats:
        """The filter's counters."""
        with self._lock:
            return self._filter.stats

    def start(self) -> None:
        """Open the pin, wait for gpiozero's first sample, then start reporting triggers.

        gpiozero's ``MotionSensor`` sets its initial state from its first sample without
        firing ``when_motion``, so an edge before that sample would be lost. ``start`` waits
        for that sample (a few sample periods at most); a pin that is already high then
        counts as a rising edge now rather than being ignored until it next goes low.

        Raises:
            HardwareUnavailable: gpiozero or a pin factory is missing, or the pin is in use.
            RuntimeError: after :meth:`close`.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("PirTrigger is closed")
            if self._sensor is not None:
                return
        try:
            from gpiozero import DigitalInputDevice, MotionSensor
            from gpiozero.exc import GPIOZeroError
        except ImportError as e:
            raise HardwareUnavailable(f"gpiozero is not installed: {e}") from e
        edge = self._cfg.device == "edge"
        try:
            if edge:
                # Interrupt-driven: gpiozero calls back on each pin edge, nothing wakes while
                # the pin is quiet. The PIR drives the line (push-pull), so no pull resistor.
                sensor = DigitalInputDevice(
                    self._cfg.pin, pull_up=None, active_state=True,
                    pin_factory=self._pin_factory)
            else:
                sensor = MotionSensor(
                    self._cfg.pin,
                    queue_len=1,
                    sample_rate=self._cfg.sample_rate_hz,
                    pin_factory=self._pin_factory,
                )
        except GPIOZeroError as e:
            raise HardwareUnavailable(f"PIR on BCM {self._cfg.pin}: {e}") from e
        if edge:
            sensor.when_activated = self._rose
            sensor.when_deactivated = self._fell
        else:
            sensor.when_motion = self._rose
            sensor.when_no_motion = self._fell
        self._sensor = sensor
        self._worker = threading.Thread(target=self._run, name="pir-trigger", daemon=True)
        self._worker.start()
        if edge:
            high = bool(sensor.is_active)
        else:
            first_sample_s = max(0.2, 3.0 / self._cfg.sample_rate_hz)
            high = not sensor.wait_for_no_motion(first_sample_s) and sensor.motion_detected
        if high:
            logger.info("%s is already high at start: counting it as motion now", self.source)
            self._edge(rising=True)
        logger.info(
            "%s armed (%s, debounce %.3f s, hold-off %.1f s)",
            self.source,
            "pin interrupts" if edge else f"sampled at {self._cfg.sample_rate_hz:.0f} Hz",
            self._cfg.debounce_s,
            self._cfg.holdoff_s,
        )

    def close(self) -> None:
        """Release the pin and stop the worker. Idempotent; pending triggers are dropped."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        sensor, self._sensor = self._sensor, None
        if sensor is not None:
            sensor.close()  # stops and joins gpiozero's sampling thread: no more edges
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            if self._worker.is_alive():  # pragma: no cover - only if on_trigger blocks
                logger.error("pir-trigger worker did not stop (on_trigger blocking?)")
            self._worker = None

    def __enter__(self) -> PirTrigger:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # gpiozero's sampling thread ---------------------------------------------------------

    def _rose(self) -> None:
        self._edge(rising=True)

    def _fell(self) -> None:
        self._edge(rising=False)

    def _edge(self, *, rising: bool) -> None:
        mono, wall = self._clock.monotonic(), self._clock.wall()
        with self._lock:
            if self._closing:
                return
            edge = self._filter.rising if rising else self._filter.falling
            event = edge(mono, wall)
            if event is not None:
                self._ready.append(event)
        self._wake.set()

    # the pir-trigger worker --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                ready, self._ready = self._ready, []
                deadline = None if ready else self._filter.next_deadline()
            for event in ready:
                self._emit(event)
            if ready:
                continue
            if deadline is None:
                self._wake.wait()  # idle: no timeout, no wake-ups until an edge
            else:
                self._clock.wait(self._wake, max(0.0, deadline - self._clock.monotonic()))
            self._wake.clear()
            with self._lock:
                if self._closing:
                    return
                due = self._filter.poll(self._clock.monotonic(), self._clock.wall())
                if due is not None:
                    self._ready.append(due)

    def _emit(self, event: TriggerEvent) -> None:
        logger.info("trigger #%d from %s", event.number, event.source)
        try:
            self._on_trigger(event)
        except Exception:
            # The PIR must outlive a faulty consumer; the next trigger gets another chance.
            logger.exception("on_trigger failed for trigger #%d", event.number)
