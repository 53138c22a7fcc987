"""The Fleet page's reading of a unit's ``cellular`` stats: signal and data use in the link
column, "no signal" / "no modem" / "data plan N % used" flags, and garbage read as nothing."""

from __future__ import annotations

from typing import Any

from edge_app.station.web.fleet_view import Severity, unit_health

NOW = 1_790_000_000.0


def health(cell: Any) -> Any:
    return unit_health({"state": "online", "last_seen": NOW, "stats": {"cellular": cell}},
                       "LL-042", NOW, 300)


def test_signal_and_data_in_the_link_column() -> None:
    h = health({"signal": {"state": "connected", "technology": "lte", "quality": 64,
                           "rsrp": -98.0},
                "data": {"used_mb": 120.4, "plan_mb": 500, "projected_mb": 300},
                "link": {"state": "up"}})
    assert h.link == "LTE lte 64 % · RSRP \u221298 dBm · up · 120.4/500 MB"
    assert h.flags == ()
    assert h.severity == Severity.OK


def test_plan_nearly_spent_and_no_signal_are_flagged() -> None:
    h = health({"signal": {"state": "searching", "quality": 0},
                "data": {"used_mb": 460, "plan_mb": 500, "projected_mb": 700}})
    assert "data plan 92 % used" in h.flags
    assert "no signal" in h.flags
    assert h.severity == Severity.WARN
    h = health({"signal": {"state": "registered", "quality": 50},
                "data": {"used_mb": 100, "plan_mb": 500, "projected_mb": 480}})
    assert h.flags == ("data plan 96 % by month end",)
    assert health({"signal": {"state": "absent"}, "data": {}}).flags == ("no modem",)


def test_garbage_is_read_as_nothing() -> None:
    for cell in ("lte", 5, [], {"signal": "x", "data": 3},
                 {"signal": {"quality": float("nan"), "rsrp": 1e300, "technology": ["a"]},
                  "data": {"used_mb": -1, "plan_mb": True, "projected_mb": "9"}}):
        h = health(cell)
        assert not any("data plan" in f or "signal" in f for f in h.flags), cell
