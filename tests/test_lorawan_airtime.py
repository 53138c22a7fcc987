"""Time on air (the reference table) and the per-sub-band duty-cycle ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_app.trap.uplink.airtime import (
    DutyCycleLedger,
    Tx,
    band_plan,
    dr_to_sf,
    join_airtime_s,
    uplink_airtime_s,
)

# protocols.md §2.4 (Semtech formula, CR 4/5, 8-symbol preamble, explicit header, CRC, LDRO for
# SF11/12, 13 bytes of LoRaWAN overhead).
TABLE_MS = {
    0: (46.3, 82.4, 164.9, 288.8, 577.5, 1155.1),
    10: (61.7, 113.2, 205.8, 370.7, 823.3, 1482.8),
    12: (61.7, 113.2, 205.8, 411.6, 823.3, 1482.8),
    16: (66.8, 123.4, 226.3, 411.6, 905.2, 1646.6),
    20: (71.9, 133.6, 246.8, 452.6, 987.1, 1810.4),
    24: (82.2, 143.9, 267.3, 493.6, 1069.1, 1974.3),
    32: (92.4, 164.4, 308.2, 575.5, 1151.0, 2138.1),
    51: (118.0, 215.6, 390.1, 698.4, 1560.6, 2793.5),
}


@pytest.mark.parametrize("app_bytes", sorted(TABLE_MS))
def test_time_on_air_matches_the_reference_table(app_bytes: int) -> None:
    got = tuple(round(uplink_airtime_s(app_bytes, sf) * 1000, 1) for sf in range(7, 13))
    assert got == TABLE_MS[app_bytes]


def test_data_rates_and_join() -> None:
    assert [dr_to_sf(dr) for dr in range(7)] == [
        (12, 125_000), (11, 125_000), (10, 125_000), (9, 125_000), (8, 125_000),
        (7, 125_000), (7, 250_000)]
    with pytest.raises(ValueError, match="DR7"):
        dr_to_sf(7)
    assert join_airtime_s(12) == pytest.approx(1.4828, abs=1e-3)  # 23-byte JoinRequest
    assert uplink_airtime_s(11, 7, 250_000) < uplink_airtime_s(11, 7)


def test_band_plans() -> None:
    ru = band_plan("RU864")
    assert ru.default_band.name == "RU864 868.7-869.2"
    assert ru.default_band.duty_cycle == 0.01
    assert all(ru.band_of(f).name == ru.default_band.name for f in ru.default_channels_mhz)
    eu = band_plan("EU868", 0.005)
    assert eu.default_band.name == "M 868-868.6"
    assert eu.default_band.duty_cycle == 0.005
    assert eu.band_of(869.525).duty_cycle == 0.1  # RX2 / sub-band P
    assert eu.band_of(867.1).name == "L 865-868"
    with pytest.raises(ValueError, match="unknown region"):
        band_plan("US915")


def test_time_off_after_each_transmission() -> None:
    led = DutyCycleLedger(band_plan("RU864"))
    toa = uplink_airtime_s(11, 12)
    assert led.next_allowed(toa, 0.0) == 0.0
    led.record(Tx(0.0, led.plan.default_band.name, toa, "alert"))
    assert led.next_allowed(toa, 1.0) == pytest.approx(toa / 0.01 + 1.0)  # ≈ 148 s (+ guard)
    assert led.next_allowed(toa, 200.0) == 200.0
    # Another sub-band is not blocked by this one.
    other = led.plan.band_of(866.5).name
    assert led.next_allowed(toa, 1.0, band=other) == 1.0


def test_rolling_hour_and_fair_use_day() -> None:
    plan = band_plan("RU864")
    band = plan.default_band.name
    led = DutyCycleLedger(plan, fair_use=True, guard_s=0.0)
    # 25 transmissions of 1.2 s, each after its time-off: 30 s of airtime in 50 minutes.
    t = 0.0
    for _ in range(25):
        assert led.next_allowed(1.2, t) == t
        led.record(Tx(t, band, 1.2, "alert"))
        t += 120.0
    assert led.used_s(t, 3600.0) == pytest.approx(30.0)
    # The hour still has 6 s of room, but the fair-use day is spent until the first one ages
    # out (24 h after it).
    assert led.next_allowed(1.2, t) == pytest.approx(86400.0)
    assert led.headroom_s(t) == pytest.approx(0.0)
    assert DutyCycleLedger(plan).headroom_s(t) == float("inf")
    led.record(Tx(t, band, 0.0, "ack", downlink=True))
    assert led.downlinks_left(t) == 9
    no_fup = DutyCycleLedger(plan)
    assert no_fup.downlinks_left(t) > 1000


def test_ledger_survives_a_restart_and_a_clock_stepping_back(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    plan = band_plan("EU868")
    conn = sqlite3.connect(db, isolation_level=None)
    led = DutyCycleLedger(plan, conn)
    led.record(Tx(10_000.0, plan.default_band.name, 1.5, "alert"))
    conn.close()

    conn = sqlite3.connect(db, isolation_level=None)
    again = DutyCycleLedger(plan, conn)
    again.load(10_010.0)
    assert again.next_allowed(1.5, 10_010.0) == pytest.approx(10_151.0)
    # The wall clock stepped back a day (no RTC, before NTP): the row from "the future" counts
    # as just sent instead of blocking the band for a day.
    back = DutyCycleLedger(plan, conn)
    back.load(10_000.0 - 86_400.0)
    now = 10_000.0 - 86_400.0 + 1.0
    assert back.next_allowed(1.5, now) == pytest.approx(now - 1.0 + 151.0)
    conn.close()
