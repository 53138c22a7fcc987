"""Day/night policy: the sun, metadata refusals, hysteresis, dwell, schedule fallback, shedding."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.trap.daynight import (
    DayNight,
    Reading,
    read_metadata,
    solar_elevation_deg,
    sun_says_night,
)

OBLIQUITY = 23.44  # the Earth's axial tilt: the sun's declination at the solstices
KEDROVAYA_PAD = (43.1, 131.5)  # the Land of the Leopard


def unix(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def day_samples(y: int, m: int, d: int, lat: float, lon: float) -> list[tuple[float, float]]:
    start = unix(y, m, d)
    return [(start + 60 * k, solar_elevation_deg(start + 60 * k, lat, lon)) for k in range(1440)]


def policy(**kw: float | None) -> DayNight:
    args: dict[str, float | None] = {"night_below_lux": 10.0, "day_above_lux": 40.0,
                                         "night_above_exposure": 400.0, "day_below_exposure": 100.0,
                                         "dwell_s": 300.0}
    args.update(kw)
    return DayNight(**args)  # type: ignore[arg-type]


# -- the sun ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("month", "lat", "declination"), [
    (6, 43.1, OBLIQUITY), (12, 43.1, -OBLIQUITY), (6, -33.9, OBLIQUITY), (12, 60.0, -OBLIQUITY),
])
def test_noon_elevation_at_the_solstices(month: int, lat: float, declination: float) -> None:
    """At solar noon the sun stands at 90° − |latitude − declination|."""
    best = max(e for _t, e in day_samples(2024, month, 21, lat, 20.0))
    assert best == pytest.approx(90.0 - abs(lat - declination), abs=0.3)


def test_solar_noon_falls_at_the_longitudes_hour() -> None:
    """Solar noon at 131.5° E is near 12:00 − 131.5/15 h UTC (the equation of time is
    under 17 minutes all year)."""
    t, _e = max(day_samples(2024, 6, 21, *KEDROVAYA_PAD), key=lambda s: s[1])
    expected = unix(2024, 6, 21, 12) - 131.5 / 15 * 3600
    assert abs(t - expected) < 17 * 60


def test_polar_night_and_midnight_sun() -> None:
    assert all(sun_says_night(t, 80.0, 15.0) for t, _e in day_samples(2024, 12, 21, 80.0, 15.0))
    assert not any(sun_says_night(t, 80.0, 15.0)
                   for t, _e in day_samples(2024, 6, 21, 80.0, 15.0))


def test_a_primorye_day_has_one_night_of_the_expected_length() -> None:
    """In late June at 43° N the night (sun below −5°) lasts about 7.5–9 h, in one stretch."""
    samples = day_samples(2024, 6, 21, *KEDROVAYA_PAD)
    nights = [sun_says_night(t, *KEDROVAYA_PAD) for t, _e in samples]
    assert 7.5 * 60 < sum(nights) < 9 * 60
    changes = sum(a != b for a, b in zip(nights, nights[1:] + nights[:1], strict=True))
    assert changes == 2


# -- metadata ---------------------------------------------------------------------------------


def test_lux_wins_and_exposure_times_gain_is_the_fallback() -> None:
    md = {"Lux": 217.6, "ExposureTime": 33965, "AnalogueGain": 4.0}
    assert read_metadata(md) == (Reading("lux", 217.6), ())
    del md["Lux"]
    reading, refusals = read_metadata(md)
    assert reading is not None
    assert reading.kind == "exposure"
    assert reading.value == pytest.approx(33.965 * 4.0)
    assert refusals == ()


@pytest.mark.parametrize(("md", "kinds", "fallback"), [
    ({"Lux": math.nan, "ExposureTime": 10000, "AnalogueGain": 2.0}, ("Lux:non_finite",), True),
    ({"Lux": math.inf}, ("Lux:non_finite",), False),
    ({"Lux": 10**400}, ("Lux:non_finite",), False),
    ({"Lux": "12"}, ("Lux:bad_type",), False),
    ({"Lux": True, "ExposureTime": 10000, "AnalogueGain": 2.0}, ("Lux:bad_type",), True),
    ({"Lux": None}, ("Lux:bad_type",), False),
    ({"Lux": -1.0}, ("Lux:out_of_range",), False),
    ({"Lux": 1e7}, ("Lux:out_of_range",), False),
    ({"ExposureTime": 0, "AnalogueGain": 2.0}, ("ExposureTime:out_of_range",), False),
    ({"ExposureTime": 1000, "AnalogueGain": -math.inf}, ("AnalogueGain:non_finite",), False),
    ({"ExposureTime": [1], "AnalogueGain": {}},
     ("ExposureTime:bad_type", "AnalogueGain:bad_type"), False),
])
def test_bad_values_are_refused_by_kind(md: dict[str, object], kinds: tuple[str, ...],
                                        fallback: bool) -> None:
    reading, refusals = read_metadata(md)
    assert refusals == kinds
    if fallback:  # Lux refused, ExposureTime × AnalogueGain used
        assert reading == Reading("exposure", 20.0)
    else:
        assert reading is None


def test_numpy_numbers_are_numbers_and_nothing_is_no_reading() -> None:
    assert read_metadata({"Lux": np.float32(3.5)}) == (Reading("lux", 3.5), ())
    assert read_metadata({}) == (None, ())
    assert read_metadata(None) == (None, ())
    assert read_metadata({"ExposureTime": 1000}) == (None, ())  # half a fallback is none


# -- the policy -------------------------------------------------------------------------------


def test_hysteresis_keeps_the_mode_inside_the_band() -> None:
    p = policy(dwell_s=0.0)
    t = 1000.0
    seq = [(100, False), (20, False), (9, True), (20, True), (39, True), (41, False), (11, False)]
    got = []
    for lux, _want in seq:
        t += 60
        got.append(p.decide({"Lux": lux}, t, t).night)
    assert got == [want for _lux, want in seq]
    assert p.stats.switches == 3  # the first mode taken, then night, then day
    assert p.stats.by_lux == len(seq)


def test_the_dwell_holds_a_measured_mode() -> None:
    p = policy(dwell_s=300.0)
    assert p.decide({"Lux": 2.0}, 1000.0, 0.0).night is True
    held = p.decide({"Lux": 500.0}, 1299.0, 0.0)  # a torch, 299 s after the switch
    assert (held.night, held.basis, held.changed) == (True, "held", False)
    assert p.stats.held == 1
    later = p.decide({"Lux": 500.0}, 1300.0, 0.0)
    assert (later.night, later.basis, later.changed) == (False, "lux", True)


def test_first_reading_inside_the_band_takes_the_nearer_side() -> None:
    # geometric middle of 10 and 40 lux is 20
    assert policy().decide({"Lux": 19.0}, 0.0, 0.0).night is True
    assert policy().decide({"Lux": 21.0}, 0.0, 0.0).night is False
    # ... of 100 and 400 ms × gain is 200
    assert policy().decide({"ExposureTime": 33_000, "AnalogueGain": 6.5}, 0, 0).night is True
    assert policy().decide({"ExposureTime": 33_000, "AnalogueGain": 5.5}, 0, 0).night is False


def test_exposure_fallback_thresholds_and_hysteresis() -> None:
    p = policy(dwell_s=0.0)
    dark = {"ExposureTime": 33_000, "AnalogueGain": 16.0}  # 528 ms × gain: out of exposure
    mid = {"ExposureTime": 33_000, "AnalogueGain": 6.0}  # 198: inside the band
    bright = {"ExposureTime": 10_000, "AnalogueGain": 1.0}  # 10
    assert [p.decide(md, t, t).night for t, md in enumerate([bright, mid, dark, mid, bright])] \
        == [False, False, True, True, False]
    assert p.stats.by_exposure == 5


def test_the_sun_decides_until_the_first_reading_which_wins_at_once() -> None:
    p = policy(lat=KEDROVAYA_PAD[0], lon=KEDROVAYA_PAD[1], dwell_s=3600.0)
    midnight_local = unix(2024, 6, 21, 14)  # 00:00 at UTC+10
    d = p.decide({}, 10.0, midnight_local)
    assert (d.night, d.basis) == (True, "schedule")
    d = p.decide({"Lux": 800.0}, 11.0, midnight_local)  # the guess was wrong: no dwell
    assert (d.night, d.basis, d.changed) == (False, "lux", True)
    assert p.stats.by_schedule == 1
    assert p.stats.held == 0


def test_without_readings_the_sun_moves_a_measured_mode_only_after_the_dwell() -> None:
    p = policy(lat=KEDROVAYA_PAD[0], lon=KEDROVAYA_PAD[1], dwell_s=3600.0)
    noon_local = unix(2024, 6, 21, 2)
    assert p.decide({"Lux": 5000.0}, 0.0, noon_local).night is False
    night_wall = unix(2024, 6, 21, 14)
    held = p.decide({"Lux": math.nan}, 100.0, night_wall)  # metadata broke
    assert (held.night, held.basis) == (False, "held")
    moved = p.decide({"Lux": math.nan}, 3600.0, night_wall)
    assert (moved.night, moved.basis) == (True, "schedule")
    assert p.stats.refused == 2


def test_nothing_known_is_day_and_stays_what_it_was() -> None:
    p = policy()
    d = p.decide(None, 0.0, 0.0)
    assert (d.night, d.basis, d.changed) == (False, "default", True)
    p.decide({"Lux": 1.0}, 1.0, 0.0)
    d = p.decide({"Lux": "dark"}, 2.0, 0.0)
    assert (d.night, d.basis, d.changed) == (True, "kept", False)


def test_low_battery_sheds_the_illuminator_not_the_night() -> None:
    p = policy()
    d = p.decide({"Lux": 1.0}, 0.0, 0.0, battery_low=True)
    assert (d.night, d.illuminate) == (True, False)
    assert p.decide({"Lux": 1.0}, 1.0, 0.0, battery_low=None).illuminate is True
    assert p.decide({"Lux": 1.0}, 2.0, 0.0, battery_low=False).illuminate is True
    assert p.stats.shed == 1
    day = policy().decide({"Lux": 900.0}, 0.0, 0.0, battery_low=True)
    assert (day.night, day.illuminate) == (False, False)


@pytest.mark.parametrize(("kw", "why"), [
    ({"night_below_lux": 40.0, "day_above_lux": 40.0}, "night_below_lux < day_above_lux"),
    ({"night_below_lux": math.nan}, "finite"),
    ({"day_below_exposure": 500.0}, "day_below_exposure < night_above_exposure"),
    ({"dwell_s": -1.0}, "dwell_s"),
    ({"lat": 43.0}, "both lat and lon"),
])
def test_bad_arguments_are_refused(kw: dict[str, float], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        policy(**kw)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.0, 400.0), st.floats(0.0, 200.0)),
                      min_size=1, max_size=40))
def test_invariants_over_any_sequence(steps: list[tuple[float, float]]) -> None:
    """Measured switches are at least dwell_s apart; a reading beyond a threshold is obeyed
    whenever the dwell allows; inside the band nothing changes."""
    dwell = 300.0
    p = policy(dwell_s=dwell)
    t = 0.0
    last_switch: float | None = None
    for dt, lux in steps:
        t += dt
        before = p.night
        d = p.decide({"Lux": lux}, t, t)
        if d.changed and before is not None:
            assert last_switch is not None
            assert t - last_switch >= dwell
        if d.changed:
            last_switch = t
        free = last_switch is None or t - last_switch >= dwell or d.changed
        if lux < 10.0 and free:
            assert d.night is True
        if lux > 40.0 and free:
            assert d.night is False
        if 10.0 <= lux <= 40.0 and before is not None:
            assert d.night == before
