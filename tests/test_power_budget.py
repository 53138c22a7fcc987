"""camtrap power-budget: the model's directions, its units, its sources and its CLI contract."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edge_app import cli
from edge_app.core import lora_codec
from edge_app.tools import power_budget as pb
from edge_app.tools import power_figures as pf
from edge_app.trap.uplink.airtime import uplink_airtime_s

REPO = Path(__file__).resolve().parents[1]
BASE = pb.BudgetInputs()


def run(**kw: object) -> pb.BudgetResult:
    return pb.budget(replace(BASE, **kw))  # type: ignore[arg-type]


# -- figures ------------------------------------------------------------------------------


def test_every_figure_has_a_source_a_unit_and_a_finite_value() -> None:
    figures = list(pf.all_figures())
    assert len(figures) > 60
    for name, f in figures:
        assert f.source.strip(), name
        assert f.unit.strip(), name
        assert math.isfinite(f.value), name
        assert f.value >= 0, name


def test_every_board_modem_and_chemistry_option_has_all_its_figures() -> None:
    names = {n for n, _f in pf.all_figures()}
    for board in pf.BOARDS:
        assert f"board.{board}.boot_to_service_s" in names
    for modem in pf.MODEMS:
        assert f"modem.{modem}.tx_w" in names
    for chem in pf.CHEMISTRIES:
        assert f"battery.{chem}.cold_factor" in names


def test_lorawan_airtime_figure_is_the_codecs_alert_at_sf12() -> None:
    airtime = uplink_airtime_s(lora_codec.ALERT_BYTES, 12)
    assert pf.MODEMS["lorawan"].per_event_tx_s.value == pytest.approx(airtime, abs=1e-3)


def test_clearness_profile_matches_fegis_annual_total_for_primorye() -> None:
    """The one site-specific solar figure is checked against its source's annual total."""
    kwh = sum(pb.horizontal_kwh_m2(43.1, m) * pb.MONTH_DAYS[m - 1] for m in range(1, 13))
    lo, hi = pf.FEGI_ANNUAL_KCAL_CM2
    assert lo <= kwh / 11.63 <= hi  # 1 kcal/cm² = 11.63 kWh/m²


def test_model_agrees_with_the_reference_judgements() -> None:
    """formats-and-field.md §5.5: always-on Zero 2 W + camera ≈ 40–50 Wh/day, a gated event
    0.02–0.05 Wh; §8.6: an optimised boot to photo is 3.5–4 s, so ours cannot be faster."""
    r = run()
    assert 40 <= r.mode("always-on").wh_per_day <= 50
    assert 0.02 <= r.mode("gated").wh_per_trigger <= 0.05
    assert r.mode("gated").trigger_latency_s >= 3.5


# -- units and shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("board", list(pf.BOARDS))
@pytest.mark.parametrize("modem", list(pf.MODEMS))
def test_units_are_consistent(board: str, modem: str) -> None:
    r = run(board=board, modem=modem, chemistry="lead-acid")
    chem = pf.CHEMISTRIES["lead-acid"]
    assert r.usable_wh == pytest.approx(BASE.battery_wh * chem.usable_dod.value)
    assert r.self_discharge_wh_per_day == pytest.approx(
        BASE.battery_wh * chem.self_discharge_per_month.value * 12 / 365)
    for m in r.modes:
        assert m.avg_w * 24 == pytest.approx(m.wh_per_day)
        assert sum(m.breakdown_wh_per_day.values()) == pytest.approx(m.wh_per_day)
        assert m.days == pytest.approx(r.usable_wh / (m.wh_per_day + r.self_discharge_wh_per_day))
        assert m.days_cold == pytest.approx(m.days * chem.cold_factor.value)
        assert m.wh_per_trigger > 0
        if m.battery_wh_for_target is not None:  # it really lasts the target on that pack
            bigger = run(board=board, modem=modem, chemistry="lead-acid",
                         battery_wh=m.battery_wh_for_target)
            assert bigger.mode(m.mode).days == pytest.approx(pf.TARGET_DAYS, rel=1e-6)


def test_without_triggers_the_modes_draw_their_parts() -> None:
    r = run(triggers_per_day=0, modem="none")
    s, b = pf.SYSTEM, pf.BOARDS["pi-zero-2w"]
    eff = s.regulator_efficiency.value
    standby_w = ((s.mcu_lightsleep_w.value + s.pir_w.value + s.rtc_w.value) / eff
                 + s.regulator_quiescent_w.value)
    up_w = (b.idle_w.value + s.camera_w.value + s.mcu_awake_w.value
            - s.mcu_lightsleep_w.value) / eff
    assert r.mode("gated").avg_w == pytest.approx(standby_w)
    assert r.mode("always-on").avg_w == pytest.approx(standby_w + up_w)


def test_gated_latency_is_the_boot_and_always_on_is_a_streamed_frame() -> None:
    r = run()
    b, s = pf.BOARDS["pi-zero-2w"], pf.SYSTEM
    assert r.mode("gated").trigger_latency_s == pytest.approx(
        b.boot_to_service_s.value + b.app_start_s.value + s.camera_settle_s.value)
    assert r.mode("always-on").trigger_latency_s < 0.2
    crossing = next(n for n in r.notes if n.startswith("Latency"))
    assert "late or not at all" in crossing
    assert "upstream" in crossing


# -- directions -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", pb.MODES)
def test_more_triggers_mean_fewer_days(mode: str) -> None:
    days = [run(triggers_per_day=t).mode(mode).days for t in (0, 5, 20, 100)]
    assert days == sorted(days, reverse=True)
    assert len(set(days)) == 4


@pytest.mark.parametrize("mode", pb.MODES)
def test_more_battery_means_more_days(mode: str) -> None:
    days = [run(battery_wh=wh).mode(mode).days for wh in (50, 250, 1000)]
    assert days[0] < days[1] < days[2]


@pytest.mark.parametrize("mode", pb.MODES)
def test_ir_at_night_costs_energy(mode: str) -> None:
    # Windows half in the night and half in the day: the share of triggers inside them
    # stays 50 % whatever the night fraction, so only the IR changes.
    even = ((0, 6 * 60), (12 * 60, 18 * 60))
    results = [run(ir_night_fraction=f, hybrid_windows=even) for f in (0.0, 0.5, 1.0)]
    assert {r.mode("hybrid").extra["share_in_windows"] for r in results} == {0.5}
    wh = [r.mode(mode).wh_per_day for r in results]
    assert wh[0] < wh[1] < wh[2]


@pytest.mark.parametrize("mode", pb.MODES)
def test_solar_helps_and_a_bigger_panel_helps_more(mode: str) -> None:
    small, big = run(solar_w=5), run(solar_w=40)
    for month in range(1, 13):
        s = next(b for b in small.mode(mode).solar if b.month == month)
        g = next(b for b in big.mode(mode).solar if b.month == month)
        assert g.balance_wh >= s.balance_wh
        assert s.wh_in == 0 if s.charge_blocked else s.wh_in > 0
    no_sun = run().mode(mode).days
    for r in (small, big):
        sim = r.mode(mode).days_with_solar
        assert sim is None or sim >= math.floor(no_sun)
    assert big.mode("gated").days_with_solar is None  # the panel refills it every year


def test_cold_months_block_lithium_charging_but_not_lead_acid() -> None:
    li = run(solar_w=10)
    lead = run(solar_w=10, chemistry="lead-acid")
    free = run(solar_w=10, cold_months=())
    for m in pf.DEFAULT_COLD_MONTHS:
        assert next(b for b in li.mode("gated").solar if b.month == m).wh_in == 0
        assert next(b for b in lead.mode("gated").solar if b.month == m).wh_in > 0
        assert next(b for b in free.mode("gated").solar if b.month == m).wh_in > 0
    assert any("self-heating" in n for n in li.notes)


def test_solar_yield_follows_the_sun() -> None:
    dec = [pb.solar_yield_wh_per_w(lat, 12) for lat in (10, 30, 43.1, 60)]
    assert dec == sorted(dec, reverse=True)
    assert dec[-1] > 0
    # Mirror: 43° S in July sees the sun as 43° N does in January (same clearness figures).
    flat = pb.Figures(clearness=(0.5,) * 12)
    assert pb.solar_yield_wh_per_w(-43.1, 7, flat) == pytest.approx(
        pb.solar_yield_wh_per_w(43.1, 1, flat), rel=0.1)


def test_hybrid_lies_between_gated_and_always_on() -> None:
    r = run()
    g, h, a = (r.mode(m) for m in ("gated", "hybrid", "always-on"))
    assert g.wh_per_day < h.wh_per_day < a.wh_per_day
    assert a.trigger_latency_s < h.trigger_latency_s < g.trigger_latency_s
    assert 0 < h.extra["share_in_windows"] < 1
    # No window: hybrid is gated; a window all day but a minute: nearly always-on.
    none = run(hybrid_windows=()).mode("hybrid")
    assert none.wh_per_day == pytest.approx(g.wh_per_day)
    assert none.trigger_latency_s == pytest.approx(g.trigger_latency_s)
    whole = run(hybrid_windows=((0, 1439),)).mode("hybrid")
    assert whole.wh_per_day == pytest.approx(a.wh_per_day, rel=0.02)


def test_a_longer_night_window_catches_more_of_the_night_triggers() -> None:
    dusk = run(hybrid_windows=((18 * 60, 7 * 60),)).mode("hybrid").extra["share_in_windows"]
    day = run(hybrid_windows=((7 * 60, 18 * 60),)).mode("hybrid").extra["share_in_windows"]
    assert dusk + day == pytest.approx(1.0)
    nightly = run(ir_night_fraction=0.9).mode("hybrid").extra["share_in_windows"]
    assert nightly > dusk


def test_an_awake_mcu_costs_the_days_the_note_says() -> None:
    r = run()
    awake = run(mcu_idle="awake").mode("gated").days
    assert awake < r.mode("gated").days
    note = next(n for n in r.notes if "lightsleep" in n)
    assert f"cuts gated to {awake:.0f} days" in note


@pytest.mark.parametrize("battery_wh", [50.0, 250.0, 2000.0])
def test_target_note_follows_the_days(battery_wh: float) -> None:
    r = run(battery_wh=battery_wh)
    met = [m.mode for m in r.modes if m.days >= pf.TARGET_DAYS]
    note = r.notes[0]
    if met:
        assert note.startswith(f"Target ≥ {pf.TARGET_DAYS:.0f} days")
        assert "met by" in note
        assert all(m in note for m in met)
    else:
        assert "NOT met" in note
        assert "would need" in note


@pytest.mark.parametrize(
    ("bad", "word"),
    [({"battery_wh": 0}, "battery_wh"), ({"battery_wh": math.nan}, "battery_wh"),
     ({"ir_night_fraction": 1.5}, "ir_night_fraction"), ({"lat": 80.0}, "lat"),
     ({"board": "pi-3"}, "board"), ({"month": 13}, "month"), ({"solar_w": -1}, "solar_w"),
     ({"triggers_per_day": math.inf}, "triggers_per_day"), ({"cold_months": (0,)}, "cold")],
)
def test_bad_inputs_are_refused(bad: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        run(**bad)


# -- JSON and CLI contract -------------------------------------------------------------------


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert cli.main(["power-budget", "--json", *argv]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_json_shape_is_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    d = cli_json(capsys, "--solar-w", "10")
    assert set(d) == {"inputs", "battery", "modes", "notes", "sources"}
    modes = d["modes"]
    assert isinstance(modes, list)
    assert [m["mode"] for m in modes] == list(pb.MODES)
    for m in modes:
        for key in ("avg_w", "days", "trigger_latency_s", "wh_per_day"):
            assert isinstance(m[key], float)
            assert m[key] > 0
        assert len(m["solar"]) == 12
        assert {"month", "wh_in", "wh_out", "balance_wh", "charge_blocked"} <= set(m["solar"][0])
    sources = d["sources"]
    assert isinstance(sources, dict)
    assert sources
    assert all(v["source"] for v in sources.values())
    json.dumps(d, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere


def test_json_follows_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    d = cli_json(capsys, "--battery-wh", "500", "--board", "pi-4", "--modem", "cellular",
                 "--month", "7", "--solar-w", "20", "--chemistry", "lead-acid", "--lat", "-33")
    inputs = d["inputs"]
    assert isinstance(inputs, dict)
    assert (inputs["battery_wh"], inputs["board"], inputs["month"]) == (500.0, "pi-4", 7)
    modes = d["modes"]
    assert isinstance(modes, list)
    assert all([b["month"] for b in m["solar"]] == [7] for m in modes)
    assert any(k.startswith("modem.cellular.") for k in d["sources"])  # type: ignore[attr-defined]
    assert not any(k.startswith("board.pi-5.") for k in d["sources"])  # type: ignore[attr-defined]


def test_text_report_has_the_table_and_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["power-budget", "--solar-w", "10"]) == 0
    out = capsys.readouterr().out
    for mode in pb.MODES:
        assert re.search(rf"^{mode}\s+\d", out, re.M)
    assert "Sources" in out
    assert "cnx-software" in out
    assert "[estimate]" in out
    assert "Jan" in out
    assert "Dec" in out


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["--battery-wh", "-5"], "--battery-wh"),
        (["--battery-wh", "nan"], "--battery-wh"),
        (["--triggers-per-day", "inf"], "--triggers-per-day"),
        (["--ir-night-fraction", "2"], "--ir-night-fraction"),
        (["--month", "13"], "--month"),
        (["--board", "pi-3"], "--board"),
        (["--chemistry", "nimh"], "--chemistry"),
        (["--hybrid-window", "25:00-01:00"], "--hybrid-window"),
        (["--hybrid-window", "06:00-06:00"], "--hybrid-window"),
        (["--cold-months", "0"], "--cold-months"),
        (["--json", "--markdown"], "--markdown"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], word: str
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["power-budget", *argv])
    assert e.value.code == 2
    assert word in capsys.readouterr().err


def test_the_installed_command_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "edge_app", "power-budget", "--json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert {m["mode"] for m in json.loads(r.stdout)["modes"]} == set(pb.MODES)


def test_readme_power_table_is_the_commands_output(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text()
    m = re.search(r"<!-- power-table:start camtrap (power-budget[^>]*?) -->\n(.*?)"
                  r"<!-- power-table:end -->", readme, re.S)
    assert m, "README.md lost its power-table block"
    assert cli.main(m.group(1).split()) == 0
    assert m.group(2) == capsys.readouterr().out, (
        "README power table is stale: run deploy/dev/update-readme")
