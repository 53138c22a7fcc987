"""PIR trigger: the pure debounce/hold-off filter (exact times) and PirTrigger on gpiozero mocks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edge_app.core.clock import SystemClock
from edge_app.core.config import TriggerConfig
from edge_app.core.errors import ConfigError
from edge_app.core.events import TriggerEvent
from edge_app.trap.hardware.trigger import PirTrigger, TriggerFilter, make_pin_factory

WALL = 1_790_000_000.0  # wall = mono + WALL in these tests


def filt(debounce_s: float = 0.05, holdoff_s: float = 5.0, **kw: Any) -> TriggerFilter:
    return TriggerFilter(debounce_s, holdoff_s, "pir:17", **kw)


def up(f: TriggerFilter, t: float) -> TriggerEvent | None:
    return f.rising(t, t + WALL)


def down(f: TriggerFilter, t: float) -> TriggerEvent | None:
    return f.falling(t, t + WALL)


def poll(f: TriggerFilter, t: float) -> TriggerEvent | None:
    return f.poll(t, t + WALL)


def run_until(f: TriggerFilter, end: float) -> list[TriggerEvent]:
    """Poll at every deadline up to ``end``, as PirTrigger's worker does."""
    events = []
    while (deadline := f.next_deadline()) is not None and deadline <= end:
        ev = poll(f, deadline)
        if ev is not None:
            events.append(ev)
    return events


# -- debounce ---------------------------------------------------------------------------------


def test_short_pulse_is_noise() -> None:
    f = filt(debounce_s=0.05)
    assert up(f, 10.0) is None
    assert poll(f, 10.04) is None
    assert down(f, 10.03) is None
    assert f.next_deadline() is None
    assert f.stats.too_short == 1
    assert f.stats.accepted == 0


def test_accepted_once_high_for_debounce_and_stamped_at_the_edge() -> None:
    f = filt(debounce_s=0.05)
    assert up(f, 10.0) is None
    assert f.next_deadline() == pytest.approx(10.05)
    assert poll(f, 10.049) is None
    ev = poll(f, 10.05)
    assert ev == TriggerEvent(number=1, mono=10.0, wall=10.0 + WALL, source="pir:17")
    assert poll(f, 10.06) is None  # one trigger per edge
    assert down(f, 11.0) is None


def test_zero_debounce_accepts_on_the_edge() -> None:
    f = filt(debounce_s=0.0)
    ev = up(f, 3.0)
    assert ev is not None
    assert ev.mono == 3.0


def test_late_poll_does_not_lose_a_long_enough_pulse() -> None:
    # The falling edge arrives before anyone polled: the pulse was long enough, so it counts.
    f = filt(debounce_s=0.05)
    up(f, 1.0)
    ev = down(f, 1.5)
    assert ev is not None
    assert ev.mono == 1.0


def test_repeated_levels_are_not_edges() -> None:
    f = filt(debounce_s=0.0, holdoff_s=0.0)
    assert up(f, 1.0) is not None
    assert up(f, 1.1) is None
    assert down(f, 2.0) is None
    assert down(f, 2.1) is None
    assert f.stats.accepted == 1


# -- hold-off -----------------------------------------------------------------------------------


def test_pulse_inside_holdoff_is_ignored_and_next_edge_after_it_fires() -> None:
    f = filt(debounce_s=0.05, holdoff_s=5.0)
    up(f, 0.0)
    assert [e.mono for e in run_until(f, 0.1)] == [0.0]
    down(f, 1.0)
    up(f, 3.0)
    assert run_until(f, 3.9) == []
    assert down(f, 4.0) is None  # whole pulse inside the hold-off
    assert f.stats.suppressed == 1
    up(f, 6.0)
    events = run_until(f, 7.0)
    assert [(e.number, e.mono) for e in events] == [(2, 6.0)]


def test_pin_that_rose_during_holdoff_and_stays_high_fires_when_holdoff_ends() -> None:
    f = filt(debounce_s=0.05, holdoff_s=5.0)
    up(f, 0.0)
    run_until(f, 0.1)
    down(f, 1.0)
    up(f, 3.0)  # the animal is still there; the PIR re-triggered
    assert f.next_deadline() == pytest.approx(5.0)
    events = run_until(f, 5.0)
    assert [(e.mono, e.wall) for e in events] == [(5.0, 5.0 + WALL)]
    assert f.stats.refired == 1


def test_long_high_pir_refires_every_holdoff_then_edge_fires_again() -> None:
    # HC-SR501 in retrigger mode: output held high while the animal keeps moving.
    f = filt(debounce_s=0.05, holdoff_s=5.0)
    up(f, 0.0)
    events = run_until(f, 12.0)
    assert [e.mono for e in events] == [0.0, 5.0, 10.0]
    assert [e.number for e in events] == [1, 2, 3]
    down(f, 12.0)
    assert f.next_deadline() is None
    up(f, 20.0)  # a new animal after hold-off: a fresh edge, stamped at the edge
    events = run_until(f, 21.0)
    assert [e.mono for e in events] == [20.0]


def test_zero_holdoff_fires_once_per_edge() -> None:
    f = filt(debounce_s=0.05, holdoff_s=0.0)
    up(f, 0.0)
    assert [e.mono for e in run_until(f, 100.0)] == [0.0]
    assert f.next_deadline() is None
    down(f, 100.0)
    up(f, 100.5)
    assert [e.mono for e in run_until(f, 101.0)] == [100.5]


def test_stuck_high_pin_stops_refiring_until_it_goes_low(caplog: pytest.LogCaptureFixture) -> None:
    f = filt(debounce_s=0.05, holdoff_s=5.0, stuck_s=30.0)
    up(f, 0.0)
    with caplog.at_level(logging.WARNING):
        events = run_until(f, 1000.0)
    assert [e.mono for e in events] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    assert f.next_deadline() is None
    assert f.stats.stuck == 1
    assert sum("stuck" in r.getMessage() for r in caplog.records) == 1
    down(f, 1000.0)
    up(f, 1001.0)
    assert [e.mono for e in run_until(f, 1002.0)] == [1001.0]


def test_filter_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="≥ 0"):
        filt(debounce_s=-1.0)
    with pytest.raises(ValueError, match="stuck_s"):
        filt(debounce_s=1.0, stuck_s=0.5)


# -- PirTrigger through gpiozero's MockFactory (real time, short deadlines) ------------------


@pytest.fixture
def factory() -> Iterator[Any]:
    f = make_pin_factory("sim")
    yield f
    f.close()  # type: ignore[attr-defined]


def fast_cfg(**kw: Any) -> TriggerConfig:
    values: dict[str, Any] = {"pin": 17, "sample_rate_hz": 100.0, "debounce_s": 0.02,
                              "holdoff_s": 0.3}
    values.update(kw)
    return TriggerConfig(**values)


def test_make_pin_factory() -> None:
    assert make_pin_factory("pi") is None
    assert type(make_pin_factory("sim")).__name__ == "MockFactory"
    with pytest.raises(ConfigError) as err:
        make_pin_factory("mock")
    assert err.value.key == "hardware.backend"


@pytest.mark.parametrize("device", ["motion_sensor", "edge"])
def test_pir_drive_high_gives_one_trigger(factory: Any, device: str) -> None:
    got: queue.Queue[TriggerEvent] = queue.Queue()
    pir = PirTrigger(fast_cfg(device=device), SystemClock(), got.put_nowait, factory)
    pin = factory.pin(17)
    try:
        pir.start()
        t0 = time.monotonic()
        pin.drive_high()
        ev = got.get(timeout=2.0)
        assert ev.source == "pir:17"
        assert ev.number == 1
        assert t0 <= ev.mono <= time.monotonic()
        pin.drive_low()
        with pytest.raises(queue.Empty):
            got.get(timeout=0.1)
        assert pir.stats.accepted == 1
    finally:
        pir.close()


@pytest.mark.parametrize("device", ["motion_sensor", "edge"])
def test_pir_short_glitch_inside_one_sample_is_not_a_trigger(factory: Any, device: str) -> None:
    got: queue.Queue[TriggerEvent] = queue.Queue()
    pir = PirTrigger(fast_cfg(debounce_s=0.2, device=device), SystemClock(), got.put_nowait,
                     factory)
    pin = factory.pin(17)
    try:
        pir.start()
        pin.drive_high()
        time.sleep(0.06)  # a few samples high, shorter than debounce
        pin.drive_low()
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)
    finally:
        pir.close()


def test_pir_already_high_at_start_counts_as_motion(factory: Any) -> None:
    # gpiozero sets MotionSensor's initial state from its first sample without firing
    # when_motion, so a PIR already high then would be ignored until it next went low.
    # start() waits for that sample and counts a high pin as an edge.
    got: queue.Queue[TriggerEvent] = queue.Queue()
    pin = factory.pin(17)
    pir = PirTrigger(fast_cfg(sample_rate_hz=10.0), SystemClock(), got.put_nowait, factory)

    def drive_once_configured() -> None:
        # The MotionSensor's pull-down resets the mock pin, so drive it after that and well
        # before the first sample (100 ms after construction).
        deadline = time.monotonic() + 2.0
        while pin.pull != "down" and time.monotonic() < deadline:
            time.sleep(0.001)
        pin.drive_high()

    driver = threading.Thread(target=drive_once_configured)
    driver.start()
    try:
        pir.start()
        driver.join()
        ev = got.get(timeout=2.0)
        assert ev.number == 1
        with pytest.raises(queue.Empty):
            got.get(timeout=0.1)
    finally:
        pir.close()


def test_edge_pir_already_high_at_start_counts_as_motion(factory: Any) -> None:
    got: queue.Queue[TriggerEvent] = queue.Queue()
    factory.pin(17).drive_high()
    pir = PirTrigger(fast_cfg(device="edge"), SystemClock(), got.put_nowait, factory)
    try:
        pir.start()
        assert got.get(timeout=2.0).number == 1
        assert pir.motion
    finally:
        pir.close()


def test_pir_close_is_idempotent_and_releases_the_pin(factory: Any) -> None:
    pir = PirTrigger(fast_cfg(), SystemClock(), lambda ev: None, factory)
    pir.start()
    pir.close()
    pir.close()
    with pytest.raises(RuntimeError):
        pir.start()
    again = PirTrigger(fast_cfg(), SystemClock(), lambda ev: None, factory)
    again.start()  # the pin was released: no GPIOPinInUse
    again.close()
    assert not any(t.name == "pir-trigger" for t in threading.enumerate())


def test_pir_survives_a_failing_consumer(factory: Any) -> None:
    got: list[TriggerEvent] = []
    done = threading.Event()

    def consumer(ev: TriggerEvent) -> None:
        got.append(ev)
        if ev.number == 1:
            raise RuntimeError("consumer bug")
        done.set()

    pir = PirTrigger(fast_cfg(holdoff_s=0.0), SystemClock(), consumer, factory)
    pin = factory.pin(17)
    try:
        pir.start()
        for _ in range(2):
            pin.drive_high()
            deadline = time.monotonic() + 2.0
            n = len(got)
            while len(got) == n and time.monotonic() < deadline:
                time.sleep(0.01)
            pin.drive_low()
            time.sleep(0.05)
        assert done.wait(2.0)
        assert [e.number for e in got] == [1, 2]
    finally:
        pir.close()
