"""The SIM's monthly data budget: pure, wall-clock driven, saved as JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge_app.trap.cellular.budget import MB, BudgetState, DataBudget, cycle_bounds

UTC_Z = ZoneInfo("UTC")
VLAD = ZoneInfo("Asia/Vladivostok")
DAY = 86400.0


def ts(*args: int, tz: ZoneInfo = UTC_Z) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def test_cycle_day_31_is_the_last_day_of_short_months() -> None:
    assert cycle_bounds(ts(2027, 2, 10), 31, UTC_Z) == (ts(2027, 1, 31), ts(2027, 2, 28))
    assert cycle_bounds(ts(2027, 2, 28), 31, UTC_Z) == (ts(2027, 2, 28), ts(2027, 3, 31))
    assert cycle_bounds(ts(2028, 2, 29, 12), 30, UTC_Z) == (ts(2028, 2, 29), ts(2028, 3, 30))
    assert cycle_bounds(ts(2027, 1, 5), 15, UTC_Z) == (ts(2026, 12, 15), ts(2027, 1, 15))


def test_the_month_starts_at_local_midnight() -> None:
    # 1 Jan 00:00 in Vladivostok is 31 Dec 14:00 UTC
    start, end = cycle_bounds(ts(2026, 12, 31, 15), 1, VLAD)
    assert start == ts(2026, 12, 31, 14)
    assert end == ts(2027, 1, 31, 14)


def test_bearer_deltas_survive_counter_resets() -> None:
    b = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 12, 3))
    w = ts(2026, 12, 3, 1)
    assert b.observe_bearer("/b/0", 1000, 500, w) == 1500
    assert b.observe_bearer("/b/0", 3000, 1000, w) == 2500
    assert b.observe_bearer("/b/0", 100, 50, w) == 150  # reconnected: counting from zero
    assert b.observe_bearer("/b/1", 10, 10, w) == 20  # a second bearer counts on its own
    assert b.used_bytes() == 4170
    assert b.usage(w).source == "bearer"


def test_app_count_is_the_fallback() -> None:
    b = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 12, 3))
    b.count_app(40_000, ts(2026, 12, 3, 2))
    u = b.usage(ts(2026, 12, 3, 2))
    assert (u.used_bytes, u.source) == (40_000, "app")
    b.observe_bearer("/b/0", 30_000, 20_000, ts(2026, 12, 3, 3))
    assert b.usage(ts(2026, 12, 3, 3)).used_bytes == 50_000


def test_projection_to_the_end_of_the_month() -> None:
    b = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 11, 1))
    b.observe_bearer("/b/0", 100 * MB, 0, ts(2026, 11, 11))
    u = b.usage(ts(2026, 11, 11))
    assert u.projected_bytes == pytest.approx(300 * MB, rel=1e-6)  # 10 of 30 days
    assert u.to_json()["projected_mb"] == pytest.approx(300.0)
    # an upload in the first hour does not project a month of it
    early = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 11, 1))
    early.observe_bearer("/b/0", 5 * MB, 0, ts(2026, 11, 1, 1))
    assert early.usage(ts(2026, 11, 1, 1)).projected_bytes < 200 * MB


def test_plan_runs_out_mid_month_then_rolls_over() -> None:
    """20 MB a day of alerts and images on a 500 MB plan: images stop, alerts go on."""
    b = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 11, 1))
    day_one = ts(2026, 11, 1)
    sent = held = 0
    rx = 0
    for day in range(30):
        noon = day_one + day * DAY + DAY / 2
        assert b.allows("alert", 600, noon)
        assert b.allows("thumbnail", 12_000, noon)
        if b.allows("full_image", 350_000, noon):
            sent += 1
            rx += 20 * MB
        else:
            held += 1
            rx += 1 * MB
        b.observe_bearer("/b/0", 0, rx, noon)
    assert sent > 0
    assert held > 0
    assert b.used_bytes() <= 500 * MB
    assert b.usage(day_one + 29 * DAY).held_images == held
    # asking whether images would fit is a question: it counts no held image
    assert not b.fits("full_image", 0, day_one + 29 * DAY)
    assert b.usage(day_one + 29 * DAY).held_images == held
    # a new month: counters start again, images go again, the bearer's deltas continue
    december = ts(2026, 12, 1, 6)
    assert b.fits("full_image", 0, december)
    assert b.allows("full_image", 350_000, december)
    assert b.usage(december).used_bytes == 0
    assert b.observe_bearer("/b/0", 0, rx + 1000, december) == 1000


def test_no_plan_lets_everything_go() -> None:
    b = DataBudget(0, 1, 0.1, UTC_Z, wall=ts(2026, 11, 1))
    b.observe_bearer("/b/0", 10**12, 0, ts(2026, 11, 2))
    assert b.allows("full_image", 10**9, ts(2026, 11, 2))


def test_usage_survives_a_reboot(tmp_path: Path) -> None:
    path = tmp_path / "state" / "data_budget.json"
    b = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 11, 1))
    b.observe_bearer("/b/0", 70 * MB, 10 * MB, ts(2026, 11, 5))
    b.count_app(1000, ts(2026, 11, 5))
    b.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["data_budget.json"]  # no temp left
    state = DataBudget.load(path)
    assert state is not None
    again = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 11, 6), state=state)
    assert again.used_bytes() == 80 * MB
    # after the reboot the modem's counters start from zero: all new bytes
    assert again.observe_bearer("/b/0", 5000, 0, ts(2026, 11, 6)) == 5000
    # a state saved last month is rolled over on load
    later = DataBudget(500, 1, 0.1, UTC_Z, wall=ts(2026, 12, 2), state=DataBudget.load(path))
    assert later.used_bytes() == 0


@pytest.mark.parametrize("content", [
    b"", b"{", b"[]", b'{"version": 2}', b"\xff\xfe",
    json.dumps({"version": 1, "cycle_start": 0, "bearer_bytes": -1, "app_bytes": 0,
                "tracked_since": 0, "held_images": 0, "bearers": {}}).encode(),
    json.dumps({"version": 1, "cycle_start": 0, "bearer_bytes": 1, "app_bytes": 0,
                "tracked_since": 0, "held_images": 0, "bearers": {"b": [1]}}).encode(),
    b" " * (70 * 1024),
])
def test_a_bad_state_file_is_ignored_not_fatal(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data_budget.json"
    path.write_bytes(content)
    assert DataBudget.load(path) is None
    assert DataBudget.load(tmp_path / "missing.json") is None


def test_state_round_trip() -> None:
    s = BudgetState(1.0, 2, 3, 4.0, {"/b/0": (5, 6)}, 7)
    assert BudgetState.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_bad_plan_is_refused() -> None:
    with pytest.raises(ValueError, match="bad plan"):
        DataBudget(-1, 1, 0.1, UTC_Z, wall=0.0)
    with pytest.raises(ValueError, match="bad plan"):
        DataBudget(100, 0, 0.1, UTC_Z, wall=0.0)
