"""The Fleet page's per-unit health (station/web/fleet_view.py) and the Map page's SVG
(station/web/map_svg.py): pure functions, fed by a real RangerStore row and a stats body built
by the trap's own functions, so a renamed field on the trap side fails here."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.core.guard import Refused
from edge_app.core.mcu_protocol import FLAG_LOW_VOLTAGE, FLAG_RTC_VALID, Status
from edge_app.station.store import RangerStore
from edge_app.station.web.fleet_view import (
    STATES,
    Severity,
    UnitHealth,
    age_text,
    fleet_order,
    unit_health,
)
from edge_app.station.web.map_svg import (
    MAX_BOUNDARY_POINTS,
    MapUnit,
    load_boundary,
    placed,
    render_map,
    unplaced,
)
from edge_app.trap.hardware.mcu import status_stats
from edge_app.trap.uplink.mqtt_stats import LinkStats, stats_body

NOW = 1_800_000_000.0
INTERVAL = 300.0
SVG = "{http://www.w3.org/2000/svg}"


def mcu_part(battery_mv: int = 13_200, solar_mv: int = 18_000, temp_dc: int = -50,
             flags: int = FLAG_RTC_VALID) -> dict[str, Any]:
    """The MCU's part of the stats, as ``McuDriver.stats`` builds it from a real STATUS."""
    s = Status(rtc_time=0, battery_mv=battery_mv, solar_mv=solar_mv, temp_dc=temp_dc,
               triggers_total=3, triggers_pending=0, boot_count=2, reset_cause=0,
               wake_reason=0, state=2, mode=1, flags=flags, bad_frames=0)
    return {"battery_v": s.battery_v, "solar_v": s.solar_v, "temp_c": s.temp_c,
            "mcu": {"connected": True, "firmware": "1.4", "status_age_s": 12.0,
                    **status_stats(s)}}


def stats(**over: Any) -> dict[str, Any]:
    """A healthy unit's stats message: ``stats_body`` plus what ``App.stats_extra`` adds."""
    link = LinkStats(state="connected", connects=1)
    body = stats_body(unit="LL-001", wall=NOW - 10, uptime_s=3600.0, free_bytes=20 * 10**9,
                      min_free=10**9, depth={"event": 2, "media": 1, "status": 0}, link=link,
                      refusals={})
    body.update({"models": {"detector": "md_v5a", "classifier": None, "head": None,
                            "pack": {"active": "2026.11", "previous": "2026.08",
                                     "on_trial": False}},
                 "camera": {"captures": 10, "timeouts": 0, "failures": 0, "reopens": 0,
                            "reopen_failures": 0, "abandoned_threads": 0, "gave_up": 0},
                 "time_source": "gps"})
    body.update(mcu_part())
    body.update(over)
    return body


def row(state: str | None = "online", seen_ago: float = 30.0, body: Any = None,
        **extra: Any) -> dict[str, Any]:
    return {"unit": "LL-001", "state": state, "state_at": NOW - 7200, "last_seen": NOW - seen_ago,
            "stats": stats() if body is None else body, "stats_at": NOW - seen_ago, **extra}


def health(r: dict[str, Any] | None) -> UnitHealth:
    return unit_health(r, "LL-001", NOW, INTERVAL)


# -- fleet: states ---------------------------------------------------------------------------


def test_a_row_from_the_real_store_is_read(tmp_path: Path) -> None:
    """The row as RangerStore gives it (JSON round trip through SQLite) is understood."""
    store = RangerStore(tmp_path)
    try:
        store.update_unit("LL-001", NOW - 60, state="online")
        store.update_unit("LL-001", NOW - 30, stats=json.loads(json.dumps(stats())))
        h = health(store.unit("LL-001"))
        assert health(store.unit("LL-404")).state == "never"
    finally:
        store.close()
    assert h.state == "online"
    assert h.severity == Severity.OK
    assert h.flags == ()
    assert h.last_seen == NOW - 30
    assert h.battery_v == pytest.approx(13.2)
    assert h.solar_v == pytest.approx(18.0)
    assert h.temp_c == pytest.approx(-5.0)
    assert h.disk_free_gb == pytest.approx(20.0)
    assert h.disk_low is False
    assert h.outbox_depth == 3
    assert h.link == "mqtt connected"
    assert h.model == "md_v5a · pack 2026.11"
    assert h.firmware is not None
    assert h.firmware.startswith("camtrap ")
    assert h.firmware.endswith(" · MCU 1.4")


def test_every_state() -> None:
    assert health(None).state == "never"
    assert health(None).severity == Severity.WARN
    assert health(row("online")).state == "online"
    off = health(row("offline", seen_ago=86400 * 3))
    assert (off.state, off.severity) == ("offline", Severity.INFO)
    lost = health(row("lost"))
    assert (lost.state, lost.severity) == ("lost", Severity.ALARM)
    assert lost.flags[0] == "connection lost 2 h ago"
    silent = health(row("online", seen_ago=3 * 3600))
    assert (silent.state, silent.severity) == ("silent", Severity.ALARM)
    assert silent.flags[0] == "silent 3 h"
    assert {health(r).state for r in (None, row("online"), row("offline"), row("lost"),
                                      row("online", seen_ago=9999))} == set(STATES)


def test_silent_only_after_the_interval_and_its_grace() -> None:
    """300 s interval: grace max(60, 150) = 150 s, so 450 s of quiet is still online."""
    assert health(row(seen_ago=450)).state == "online"
    assert health(row(seen_ago=451)).state == "silent"
    # A short interval still gets the minimum grace of 60 s.
    assert unit_health(row(seen_ago=69), "LL-001", NOW, 10).state == "online"
    assert unit_health(row(seen_ago=71), "LL-001", NOW, 10).state == "silent"


def test_a_row_without_a_status_is_judged_by_what_was_heard() -> None:
    """Events make a row before any status message: heard lately is online."""
    assert health(row(None, seen_ago=10)).state == "online"
    assert health(row(None, seen_ago=10_000)).state == "silent"
    assert health(row("online", last_seen=None)).state == "silent"


# -- fleet: flags ----------------------------------------------------------------------------


@pytest.mark.parametrize(("over", "flag", "severity"), [
    ({"disk_low": True, "disk_free_bytes": 400_000_000}, "disk low (0.4 GB free)",
     Severity.WARN),
    ({"outbox": {"event": 100, "media": 20}}, "outbox 120 waiting", Severity.WARN),
    ({"temp_c": -31.0}, "temperature \u221231 °C", Severity.WARN),
    ({"temp_c": 65.0}, "temperature 65 °C", Severity.WARN),
    ({"camera": {"gave_up": 1}}, "camera given up", Severity.ALARM),
    ({"models": {"detector": "md_v5a", "pack": {"active": "2026.12", "on_trial": True}}},
     "model pack on trial", Severity.INFO),
    ({"time_source": "none"}, "clock not set", Severity.WARN),
    ({"battery_v": 12.3}, "battery low 12.30 V", Severity.WARN),  # 4-cell LiFePO4
    ({"battery_v": 11.8}, "battery at cut-off 11.80 V", Severity.ALARM),
    ({"battery_v": 3.05}, "battery low 3.05 V", Severity.WARN),  # one LiFePO4 cell
    ({"battery_v": 10.0}, "battery at cut-off 10.00 V", Severity.ALARM),  # not a 3-cell pack
    ({"battery_v": 9.2, "battery_cells": 3}, "battery low 9.20 V", Severity.WARN),
    ({"battery_v": 11.8, "battery_chemistry": "lead_acid"}, "battery low 11.80 V",
     Severity.WARN),  # 6 × 1.95 V < 11.8 V < 6 × 2.00 V
    ({"battery_v": 13.5, "battery_chemistry": "li_ion"}, "battery low 13.50 V",
     Severity.WARN),  # 4 × 3.45 V
])
def test_flags(over: dict[str, Any], flag: str, severity: Severity) -> None:
    h = health(row(body=stats(**over)))
    assert flag in h.flags
    assert h.severity == severity
    assert h.state == "online"


def test_the_supervisors_low_voltage_flag_is_an_alarm_whatever_the_volts() -> None:
    body = stats(**mcu_part(battery_mv=13_000, flags=FLAG_LOW_VOLTAGE))
    h = health(row(body=body))
    assert h.flags == ("battery at cut-off 13.00 V",)
    assert h.severity == Severity.ALARM


def test_link_with_lora_and_a_silent_supervisor() -> None:
    mcu = mcu_part()["mcu"] | {"connected": False}
    body = stats(lorawan={"joined": True, "alerts_sent": 3}, mcu=mcu)
    body["links"]["mqtt"]["state"] = "disconnected"
    h = health(row(body=body))
    assert h.link == "mqtt disconnected · LoRa joined"
    assert "supervisor not answering" in h.flags
    assert health(row(body=stats(lorawan={"joined": False}))).link == (
        "mqtt connected · LoRa not joined")


def test_flags_are_worst_first() -> None:
    body = stats(temp_c=-40.0, camera={"gave_up": 1}, outbox={"event": 500},
                 models={"pack": {"on_trial": True}})
    h = health(row("online", seen_ago=7200, body=body))
    assert h.flags[:2] == ("silent 2 h", "camera given up")
    assert h.flags[-1] == "model pack on trial"
    assert h.severity == Severity.ALARM


HOSTILE: list[Any] = [
    None, "yes", -1, 10**400, 10**5000, 1e308, -1e308, [], {}, [1, 2], {"a": "b"}, True, False,
    "NaN", "<script>", "x" * 10_000,
]


KEYS = ["battery_v", "solar_v", "temp_c", "disk_free_bytes", "disk_low", "outbox", "links",
        "models", "mcu", "camera", "version", "lorawan", "time_source", "battery_chemistry",
        "battery_cells"]


def test_every_hostile_value_in_every_field() -> None:
    """Each key set to each hostile value, and every nested object's fields too."""
    for key in KEYS:
        for value in HOSTILE:
            assert health(row(body=stats(**{key: value}))).state == "online", (key, value)
    for key, inner in (("models", "detector"), ("models", "pack"), ("mcu", "firmware"),
                       ("mcu", "low_voltage"), ("camera", "gave_up"), ("lorawan", "joined")):
        for value in HOSTILE:
            body = stats()
            body[key] = dict(body.get(key) or {}) | {inner: value}
            h = health(row(body=body))
            assert h.state == "online", (key, inner, value)
    body = stats()
    body["models"]["pack"] = {"active": 10**5000, "on_trial": "yes"}
    body["links"]["mqtt"] = {"state": ["connected"]}
    h = health(row(body=body))
    assert (h.model, h.link) == ("md_v5a", None)
    assert "model pack on trial" not in h.flags


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["battery_v", "solar_v", "temp_c", "disk_free_bytes", "disk_low",
                            "outbox", "links", "models", "mcu", "camera", "version",
                            "lorawan", "time_source"]),
       value=st.one_of(st.sampled_from(HOSTILE), st.integers(), st.floats(allow_nan=False,
                                                                          allow_infinity=False),
                       st.text(max_size=50),
                       st.dictionaries(st.text(max_size=5), st.sampled_from(HOSTILE),
                                       max_size=4)))
def test_hostile_stats_never_raise(key: str, value: Any) -> None:
    h = health(row(body=stats(**{key: value})))
    assert h.state == "online"
    for v in (h.battery_v, h.solar_v, h.temp_c, h.disk_free_gb):
        assert v is None or (isinstance(v, float) and math.isfinite(v))
    assert h.outbox_depth is None or h.outbox_depth >= 0
    for text in (h.link, h.model, h.firmware):
        assert text is None or len(text) < 400


@pytest.mark.parametrize("body", [None, "a string", [1, 2], 42, {}])
def test_stats_that_are_not_an_object(body: Any) -> None:
    r = row()
    r["stats"] = body
    h = health(r)
    assert (h.state, h.battery_v, h.outbox_depth, h.model) == ("online", None, None, None)


def test_absurd_readings_are_none_and_flagged() -> None:
    h = health(row(body=stats(battery_v=-3.0, solar_v="12", temp_c=900.0,
                              disk_free_bytes=-5, outbox={"event": -4, "media": "9"})))
    assert (h.battery_v, h.solar_v, h.temp_c, h.disk_free_gb, h.outbox_depth) == (
        None, None, None, None, None)
    assert {"bad reading: battery_v", "bad reading: solar_v", "bad reading: temp_c",
            "bad reading: disk_free_bytes"} <= set(h.flags)
    assert h.severity == Severity.INFO


def test_hostile_row_fields() -> None:
    h = health({"state": ["lost"], "state_at": "x", "last_seen": "yesterday", "stats": None,
                "stats_at": -1})
    assert h.state == "silent"
    assert (h.last_seen, h.state_at, h.stats_at) == (None, None, None)


def test_long_or_unprintable_names_are_cut() -> None:
    models = {"detector": "d\x00\x1b[31m" + "x" * 500, "pack": {"active": 7}}
    h = health(row(body=stats(models=models)))
    assert h.model is not None
    assert "\x00" not in h.model
    assert "\x1b" not in h.model
    assert h.model.endswith("… · pack 7")
    assert len(h.model) < 100


def test_fleet_order_is_worst_first_then_longest_unheard() -> None:
    rows = {"A-ok": row(), "B-lost": row("lost", seen_ago=100), "C-off": row("offline"),
            "D-silent": row(seen_ago=5000), "E-warn": row(body=stats(disk_low=True)),
            "F-lost": row("lost", seen_ago=900)}
    hs = [unit_health(r, u, NOW, INTERVAL) for u, r in rows.items()]
    hs.append(unit_health(None, "G-never", NOW, INTERVAL))
    order = [h.unit for h in fleet_order(hs)]
    assert order == ["D-silent", "F-lost", "B-lost", "G-never", "E-warn", "C-off", "A-ok"]


def test_age_text() -> None:
    assert [age_text(s) for s in (-5, 45, 600, 3 * 3600, 5 * 86400)] == [
        "0 s", "45 s", "10 min", "3 h", "5 d"]


# -- map -------------------------------------------------------------------------------------


def mu(unit: str, lat: float | None, lon: float | None, state: str = "online",
       site: str | None = None, href: str | None = None) -> MapUnit:
    return MapUnit(unit, site, lat, lon, state, href if href is not None else f"/fleet/{unit}")


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 - our own output, the thing under test
    assert root.tag == f"{SVG}svg"
    return root


def marker_xy(root: ET.Element, unit: str) -> tuple[float, float]:
    """The centre of a unit's marker, read back from the SVG."""
    g = next(g for g in root.iter(f"{SVG}g") if g.get("data-unit") == unit)
    text = g.find(f"{SVG}text")
    assert text is not None
    return float(text.get("x", "nan")) - 9, float(text.get("y", "nan")) - 4


def test_north_is_up_and_east_is_right() -> None:
    units = [mu("SW", 43.0, 131.0), mu("NE", 43.2, 131.4), mu("N", 43.2, 131.0)]
    root = parse(render_map(units, None, width=600, height=400))
    sw, ne, n = (marker_xy(root, u) for u in ("SW", "NE", "N"))
    assert ne[0] > sw[0]  # east is right
    assert ne[1] < sw[1]  # north is up (SVG y grows downwards)
    assert n[0] == pytest.approx(sw[0], abs=0.11)
    assert n[1] == pytest.approx(ne[1], abs=0.11)


def test_kilometres_are_square_at_the_parks_latitude() -> None:
    """0.1° east is cos(43°) as long as 0.1° north."""
    units = [mu("O", 43.0, 131.0), mu("E", 43.0, 131.1), mu("N", 43.1, 131.0)]
    root = parse(render_map(units, None, width=500, height=500))
    o, e, n = (marker_xy(root, u) for u in ("O", "E", "N"))
    ratio = (e[0] - o[0]) / (o[1] - n[1])
    assert ratio == pytest.approx(math.cos(math.radians(43.05)), rel=0.01)


def test_the_view_fits_the_units_and_the_boundary() -> None:
    units = [mu("A", 43.0, 131.0), mu("B", 43.1, 131.1)]
    boundary = {"type": "Polygon", "coordinates": [[[130.5, 42.5], [131.5, 42.5],
                                                     [131.5, 43.5], [130.5, 42.5]]]}
    root = parse(render_map(units, boundary, width=400, height=300))
    path = next(p for p in root.iter(f"{SVG}path") if p.get("class") == "boundary")
    nums = [float(v) for tok in path.get("d", "").replace("M", " ").replace("L", " ")
            .replace("Z", " ").split() for v in tok.split(",")]
    xs, ys = nums[0::2], nums[1::2]
    assert 0 < min(xs) < max(xs) < 400
    assert 22 < min(ys) < max(ys) < 300
    # The boundary spans the width or the height less the margins.
    assert (max(xs) - min(xs) > 0.8 * 400) or (max(ys) - min(ys) > 0.8 * (300 - 22))
    a = marker_xy(root, "A")
    assert min(xs) < a[0] < max(xs)


@pytest.mark.parametrize("units", [
    [mu("ONLY", 43.1, 131.3)],
    [mu("X", 43.1, 131.3), mu("Y", 43.1, 131.3)],
    [],
    [mu("NOWHERE", None, None)],
])
def test_one_point_or_none_still_renders(units: list[MapUnit]) -> None:
    root = parse(render_map(units, None, width=300, height=200))
    for u in units:
        if placed(u):
            x, y = marker_xy(root, u.unit)
            assert x == pytest.approx(150, abs=0.2)
            assert y == pytest.approx(22 + (200 - 22) / 2, abs=0.2)
    bar = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "scale-bar")
    label = bar.find(f"{SVG}text")
    assert label is not None
    assert label.text is not None
    assert label.text.endswith(" km") or label.text.endswith(" m")
    if not any(placed(u) for u in units):
        assert "No unit has a position" in "".join(root.itertext())


def test_scale_bar_length_matches_its_label() -> None:
    """Two units 0.1° of latitude apart are 11.13 km apart: the bar says so."""
    units = [mu("S", 43.0, 131.0), mu("N", 43.1, 131.0)]
    root = parse(render_map(units, None, width=600, height=400))
    px_per_km = (marker_xy(root, "S")[1] - marker_xy(root, "N")[1]) / 11.132
    bar = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "scale-bar")
    path, label = bar.find(f"{SVG}path"), bar.find(f"{SVG}text")
    assert path is not None
    assert label is not None
    assert label.text is not None
    km = float(label.text.removesuffix(" km"))
    d = path.get("d", "").split()
    x0 = float(d[0][1:].split(",")[0])
    x1 = float(d[2][1:])
    assert (x1 - x0) / px_per_km == pytest.approx(km, rel=0.01)
    assert x1 - x0 <= 0.25 * 600 + 0.1


def test_states_have_shapes_links_and_tooltips() -> None:
    units = [mu("U-" + s, 43.0 + i / 100, 131.0, state=s, site=f"Ridge {i}")
             for i, s in enumerate(["online", "silent", "lost", "offline", "never", "weird"])]
    root = parse(render_map(units, None, width=600, height=400))
    links = list(root.iter(f"{SVG}a"))
    assert len(links) == 6
    shapes = set()
    for a, u in zip(links, units, strict=True):
        assert a.get("href") == f"/fleet/{u.unit}"
        g = a.find(f"{SVG}g")
        assert g is not None
        title = g.find(f"{SVG}title")
        assert title is not None
        assert title.text == f"{u.unit} · {u.site} · {u.state}"
        shape = g[1]
        shapes.add((shape.tag, shape.get("stroke-dasharray"),
                    len(shape.get("points", "").split())))
        label = g.find(f"{SVG}text")
        assert label is not None
        assert label.text == (u.unit if u.state == "online" else f"{u.unit} · {u.state}")
    assert len(shapes) == 6  # each state its own shape, not only its colour
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.text for t in legend.iter(f"{SVG}text")] == [
        "online", "silent", "lost", "offline", "never", "other"]
    # A map shows in its legend only the states on it (a small map has no room for all).
    small = parse(render_map(units[2:3] + units[:1], None, width=200, height=100))
    legend = next(g for g in small.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.text for t in legend.iter(f"{SVG}text")] == ["online", "lost"]


def test_control_characters_are_dropped_so_the_svg_stays_xml() -> None:
    units = [mu("A\x00\x1b[31m", 43.0, 131.0, site="Ridge\x07 3\ud800", state="on\x0bline")]
    root = parse(render_map(units, None, width=300, height=200))
    g = next(g for g in root.iter(f"{SVG}g") if g.get("data-unit"))
    assert g.get("data-unit") == "A[31m"
    assert g.get("data-state") == "online"
    title = g.find(f"{SVG}title")
    assert title is not None
    assert title.text == "A[31m · Ridge 3 · online"


def test_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>&'
    units = [mu('<img src=x onerror="y">', 43.0, 131.0, site=evil, state="<b>",
                href='/fleet/a"onmouseover="x')]
    svg = render_map(units, None, width=300, height=200)
    assert "<script" not in svg
    assert "<img" not in svg
    assert "<b>" not in svg
    root = parse(svg)
    a = next(root.iter(f"{SVG}a"))
    assert a.get("href") == '/fleet/a"onmouseover="x'  # one attribute value, not two
    assert a.get("onmouseover") is None
    title = next(t for t in root.iter(f"{SVG}title") if evil in (t.text or ""))
    assert title.text == f'<img src=x onerror="y"> · {evil} · <b>'


@pytest.mark.parametrize("href", ["javascript:alert(1)", " JavaScript:x", "data:text/html,x",
                                  "vbscript:x", "java\nscript:x", ""])
def test_unsafe_links_are_dropped(href: str) -> None:
    root = parse(render_map([mu("A", 43.0, 131.0, href=href)], None, width=300, height=200))
    assert list(root.iter(f"{SVG}a")) == []
    assert any(g.get("data-unit") == "A" for g in root.iter(f"{SVG}g"))


def test_units_without_a_position_are_returned_for_the_list() -> None:
    units = [mu("A", 43.0, 131.0), mu("B", None, 131.0), mu("C", 0.0, 0.0),
             mu("D", 91.0, 131.0), mu("E", math.nan, 131.0), mu("F", 43.0, math.inf),
             mu("G", 43.0, -181.0)]
    assert [u.unit for u in unplaced(units)] == ["B", "C", "D", "E", "F", "G"]
    root = parse(render_map(units, None, width=300, height=200))
    assert [g.get("data-unit") for g in root.iter(f"{SVG}g") if g.get("data-unit")] == ["A"]


RING = [[131.0, 43.0], [131.2, 43.0], [131.2, 43.2], [131.0, 43.0]]
HOLE = [[131.05, 43.05], [131.1, 43.05], [131.1, 43.1], [131.05, 43.05]]
SHAPES: dict[str, Any] = {
    "Polygon": {"type": "Polygon", "coordinates": [RING, HOLE]},
    "MultiPolygon": {"type": "MultiPolygon", "coordinates": [[RING], [HOLE]]},
    "LineString": {"type": "LineString", "coordinates": RING},
    "MultiLineString": {"type": "MultiLineString", "coordinates": [RING, HOLE]},
    "Feature": {"type": "Feature", "properties": {"name": "<park>"},
                "geometry": {"type": "Polygon", "coordinates": [RING, HOLE]}},
    "FeatureCollection": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [RING]}},
        {"type": "Feature", "geometry": None},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": HOLE}}]},
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_boundary_shapes(name: str) -> None:
    svg = render_map([mu("A", 43.1, 131.1)], SHAPES[name], width=400, height=300)
    root = parse(svg)
    paths = [p for p in root.iter(f"{SVG}path") if p.get("class") == "boundary"]
    assert paths
    areas = [p for p in paths if p.get("fill") != "none"]
    assert bool(areas) == (name not in ("LineString", "MultiLineString"))
    for p in areas:
        assert p.get("fill-rule") == "evenodd"
        assert p.get("d", "").rstrip().endswith("Z")
    # Drawn underneath: every boundary comes before the first unit.
    order = [el.get("class") or el.tag for el in root]
    assert max(i for i, c in enumerate(order) if c == "boundary") < order.index(f"{SVG}a")
    assert load_boundary(json.dumps(SHAPES[name])) == SHAPES[name]


def test_coordinates_have_limited_precision() -> None:
    boundary = {"type": "LineString",
                "coordinates": [[131.123456789, 43.987654321], [131.2, 43.1]]}
    svg = render_map([mu("A", 43.123456789, 131.123456789)], boundary, width=400, height=300)
    seen = 0
    for el in parse(svg).iter():
        for name in ("x", "y", "cx", "cy", "d", "points"):
            value = el.get(name)
            if value is None:
                continue
            for token in re.split(r"[ ,MLHVZ]+", value):
                if token:
                    seen += 1
                    assert re.fullmatch(r"-?\d+(\.\d)?", token), (name, value)
    assert seen > 20


@pytest.mark.parametrize(("geo", "kind"), [
    ({"type": "Point", "coordinates": [131.0, 43.0]}, "bad_geojson"),
    ({"type": "GeometryCollection", "geometries": []}, "bad_geojson"),
    ({"type": "Polygon", "coordinates": "x"}, "bad_geojson"),
    ({"type": "Polygon", "coordinates": [[[131.0]]]}, "bad_geojson"),
    ({"type": "Polygon", "coordinates": [[["131", 43.0], [1, 2]]]}, "bad_geojson"),
    ({"type": "LineString", "coordinates": [[True, 43.0], [1, 2]]}, "bad_geojson"),
    ({"type": "LineString", "coordinates": [[math.nan, 43.0], [1, 2]]}, "non_finite"),
    ({"type": "LineString", "coordinates": [[131.0, math.inf], [1, 2]]}, "non_finite"),
    ({"type": "LineString", "coordinates": [[10**400, 43.0], [1, 2]]}, "non_finite"),
    ({"type": "LineString", "coordinates": [[181.0, 43.0], [1, 2]]}, "out_of_range"),
    ({"type": "LineString", "coordinates": [[131.0, -90.5], [1, 2]]}, "out_of_range"),
    ({"type": "LineString", "coordinates": [[131.0, 43.0]] * (MAX_BOUNDARY_POINTS + 1)},
     "too_many_points"),
    ({"type": "MultiPolygon", "coordinates": [[[[131.0, 43.0]] * 30_000]] * 2},
     "too_many_points"),
    ({"type": "MultiLineString", "coordinates": [[]] * (MAX_BOUNDARY_POINTS + 1)},
     "too_many_points"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None}]
      * (MAX_BOUNDARY_POINTS + 1)}, "too_many_points"),
    ({"type": "FeatureCollection", "features": [
        {"type": "FeatureCollection", "features": []}]}, "bad_geojson"),
    ({"type": "Feature", "geometry": {"type": "Feature", "geometry": None}}, "bad_geojson"),
    ({"type": "FeatureCollection", "features": {"a": 1}}, "bad_geojson"),
    ({"type": ["Polygon"]}, "bad_geojson"),
])
def test_hostile_boundaries_are_refused(geo: dict[str, Any], kind: str) -> None:
    with pytest.raises(Refused) as caught:
        render_map([mu("A", 43.0, 131.0)], geo, width=300, height=200)
    assert caught.value.kind == kind
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("data", "kind"), [
    (b"[" * 100_000, "too_deep"),
    (b'{"type": "LineString", "coordinates": [[NaN, 1], [1, 2]]}', "non_finite"),
    (b"x" * (4 * 1024 * 1024 + 1), "too_large"),
    (b"not json", "not_json"),
    (b"[1, 2]", "bad_type"),
    (b'{"type": "Point", "coordinates": [1, 2]}', "bad_geojson"),
])
def test_load_boundary_refuses_hostile_files(data: bytes, kind: str) -> None:
    with pytest.raises(Refused) as caught:
        load_boundary(data)
    assert caught.value.kind == kind


@pytest.mark.parametrize(("w", "h"), [(0, 200), (300, 10), (20_000, 200), (300, -5)])
def test_sizes_out_of_range_are_refused(w: int, h: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        render_map([], None, width=w, height=h)


LATS = st.floats(min_value=-90, max_value=90, allow_nan=False)
LONS = st.floats(min_value=-180, max_value=180, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.tuples(LATS, LONS), min_size=1, max_size=6),
       size=st.tuples(st.integers(80, 1200), st.integers(80, 1200)))
def test_any_position_lands_inside_the_view(points: list[tuple[float, float]],
                                            size: tuple[int, int]) -> None:
    units = [mu(f"U{i}", lat, lon) for i, (lat, lon) in enumerate(points)]
    w, h = size
    root = parse(render_map(units, None, width=w, height=h))
    assert root.get("viewBox") == f"0 0 {w} {h}"
    for u in units:
        if not placed(u):  # (0, 0) only
            continue
        x, y = marker_xy(root, u.unit)
        assert 0 <= x <= w
        assert 22 <= y <= h


@settings(max_examples=100, deadline=None)
@given(ring=st.lists(st.tuples(LONS, LATS), min_size=2, max_size=20),
       unit=st.tuples(LATS, LONS))
def test_any_boundary_lands_inside_the_view(ring: list[tuple[float, float]],
                                            unit: tuple[float, float]) -> None:
    geo = {"type": "LineString", "coordinates": [list(p) for p in ring]}
    root = parse(render_map([mu("A", *unit)], geo, width=400, height=300))
    # (A ring whose points all round to one pixel is not drawn.)
    for path in (p for p in root.iter(f"{SVG}path") if p.get("class") == "boundary"):
        for tok in path.get("d", "").replace("M", " ").replace("L", " ").split():
            x, y = (float(v) for v in tok.split(","))
            assert 0 <= x <= 400
            assert 22 <= y <= 300
