"""``camtrap power-budget``: days on a battery and trigger latency per power mode.

The model is :func:`budget`, a pure function of :class:`BudgetInputs` and :class:`Figures`
(every draw, time and efficiency from :mod:`edge_app.tools.power_figures`, each with its
source), so the tests can vary one figure and check the direction of the answer. The CLI part
(:func:`add_arguments`, :func:`main`) only parses options and renders the result.

What it counts, per mode, at the battery (through the 12 V → 5 V regulator's efficiency):

* **standby**: the MCU (in ``machine.lightsleep`` between PIR interrupts, awake while the Pi
  is up), the PIR, the RTC, the modem asleep, the regulator's no-load current;
* **always-on**: the Pi tuned idle + the camera streaming, all day; per trigger the extra CPU
  of inference and storing; models stay loaded;
* **gated**, per trigger (each trigger is counted as its own wake, the conservative case; a
  second trigger inside ``idle_shutdown_s`` is in fact free): boot, app start (imports,
  camera open), camera settle, the burst, model load, inference, store, then up until the
  outbox is delivered and ``idle_shutdown_s`` passed, then halt;
* **hybrid**: always-on inside the windows, gated outside, one boot per window start;
* **IR** per night trigger: illuminator W × (settle + a pulse per burst frame);
* **modem** per trigger (TX + RX windows / connected tail; cellular also attaches per wake);
* the battery's **self-discharge**, its usable depth of discharge and its capacity at −30 °C;
* with ``--solar-w``: per month the panel's yield (extraterrestrial radiation by latitude ×
  the site's clearness, tilted panel, system losses), no charge into a lithium pack in the
  cold months, and a day-by-day simulation from a full battery starting in each month.

Latency (PIR → first frame): always-on = debounce + one streamed frame, and the ring holds
frames from before the trigger; gated = boot + app start + camera settle.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edge_app.core.config import CameraConfig, PowerConfig, TriggerConfig
from edge_app.tools import power_figures as pf
from edge_app.tools.cli_args import finite
from edge_app.trap.hardware.ir import ir_on_s_per_trigger

MODES = ("always-on", "gated", "hybrid")
MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
               "Dec")
DAYS_PER_MONTH = 365.0 / 12
SIM_DAYS = 730  # two years: longer than any battery-only run here
#: Local hours counted as night for the IR share and the hybrid window's trigger share.
NIGHT_START_MIN, NIGHT_END_MIN = 18 * 60, 6 * 60

_CAM, _TRIG, _POWER = CameraConfig(), TriggerConfig(), PowerConfig()


@dataclass(frozen=True)
class BudgetInputs:
    """The question asked. Trap settings default to the config's defaults."""

    battery_wh: float = 250.0
    chemistry: str = "lifepo4"
    triggers_per_day: float = 20.0
    board: str = "pi-zero-2w"
    modem: str = "lorawan"
    ir_night_fraction: float = 0.5
    solar_w: float = 0.0
    lat: float = 43.1
    month: int | None = None  # None: all twelve
    hybrid_windows: tuple[tuple[int, int], ...] = ((18 * 60, 7 * 60),)  # local minutes
    cold_months: tuple[int, ...] = pf.DEFAULT_COLD_MONTHS
    mcu_idle: Literal["lightsleep", "awake"] = "lightsleep"
    burst_frames: int = _CAM.burst_frames
    burst_interval_s: float = _CAM.burst_interval_s
    pre_trigger_frames: int = _CAM.pre_trigger_frames
    debounce_s: float = _TRIG.debounce_s
    idle_shutdown_s: float = _POWER.idle_shutdown_s


@dataclass(frozen=True)
class Figures:
    """The figures the model reads; tests swap single ones with ``dataclasses.replace``."""

    boards: Mapping[str, pf.BoardFigures] = field(default_factory=lambda: pf.BOARDS)
    modems: Mapping[str, pf.ModemFigures] = field(default_factory=lambda: pf.MODEMS)
    chemistries: Mapping[str, pf.ChemistryFigures] = field(
        default_factory=lambda: pf.CHEMISTRIES)
    system: pf.SystemFigures = pf.SYSTEM
    clearness: tuple[float, ...] = pf.CLEARNESS_BY_MONTH
    solar_constant_w_m2: float = pf.SOLAR_CONSTANT_W_M2.value
    pv_derate: float = pf.PV_SYSTEM_DERATE.value
    tilt_extra_deg: float = pf.PANEL_TILT_EXTRA_DEG.value
    albedo: float = pf.GROUND_ALBEDO.value


@dataclass(frozen=True)
class MonthBalance:
    """One month with the panel, per day."""

    month: int
    yield_wh_per_w: float  # what 1 W of panel delivers to the controller
    wh_in: float  # into the battery (0 when charging is blocked by the cold)
    wh_out: float  # load + self-discharge
    charge_blocked: bool
    days_to_empty: float | None  # from full, if every day were like this one; None = no deficit
    always_on_hours_affordable: float | None  # the surplus as extra always-on hours (hybrid)

    @property
    def balance_wh(self) -> float:
        return self.wh_in - self.wh_out


@dataclass(frozen=True)
class ModeResult:
    mode: str
    avg_w: float  # at the battery, load only
    wh_per_day: float  # load only
    wh_per_day_with_self_discharge: float
    days: float  # on the battery at 20 °C, no solar
    days_cold: float  # the whole time at −30 °C
    trigger_latency_s: float  # PIR → first frame (hybrid: the trigger-weighted mean)
    latency_note: str
    breakdown_wh_per_day: Mapping[str, float]
    wh_per_trigger: float
    battery_wh_for_target: float | None  # nominal Wh for TARGET_DAYS at 20 °C (None: never)
    battery_wh_for_target_cold: float | None
    solar: tuple[MonthBalance, ...] = ()
    worst_month: int | None = None
    days_with_solar: float | None = None  # worst start month, day by day; None = lasts
    panel_w_for_worst_month: float | None = None  # break even in the worst chargeable month
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetResult:
    inputs: BudgetInputs
    usable_wh: float
    usable_wh_cold: float
    self_discharge_wh_per_day: float
    modes: tuple[ModeResult, ...]
    notes: tuple[str, ...]
    sources: Mapping[str, pf.Figure]

    def mode(self, name: str) -> ModeResult:
        return next(m for m in self.modes if m.mode == name)


# -- the model ----------------------------------------------------------------------------------


def budget(inp: BudgetInputs, figs: Figures | None = None) -> BudgetResult:
    """Energy per day, days on the battery, latency and (with a panel) the monthly balance.

    Raises:
        ValueError: an unknown board, modem or chemistry, or an input out of range.
    """
    figs = figs or Figures()
    _check_inputs(inp, figs)
    board = figs.boards[inp.board]
    modem = figs.modems[inp.modem]
    chem = figs.chemistries[inp.chemistry]
    s = figs.system
    eff = s.regulator_efficiency.value

    usable = inp.battery_wh * chem.usable_dod.value
    usable_cold = usable * chem.cold_factor.value
    sd_per_day = inp.battery_wh * chem.self_discharge_per_month.value / DAYS_PER_MONTH
    night = inp.ir_night_fraction
    # The illuminator's on-time is the trap's own rule (trap/hardware/ir.py), so the budget
    # and the adapter cannot drift apart.
    ir_j = night * s.ir_w.value * ir_on_s_per_trigger(
        inp.burst_frames, inp.burst_interval_s, s.ir_settle_s.value, s.streamed_frame_s.value)
    mcu_off_w = (s.mcu_lightsleep_w if inp.mcu_idle == "lightsleep" else s.mcu_awake_w).value
    # Standby: at the battery, all day (the MCU's extra while the Pi is up is per mode).
    rail_modem_w = modem.standby_w.value if modem.on_standby_rail else 0.0
    standby_w = ((mcu_off_w + s.pir_w.value + s.rtc_w.value + rail_modem_w) / eff
                 + s.regulator_quiescent_w.value)
    mcu_up_extra_w = (s.mcu_awake_w.value - mcu_off_w) / eff

    # Always-on: continuous draw (5 V side) and the extra per trigger. A modem powered with
    # the Pi idles (registered) whenever the Pi is up.
    pi_modem_w = 0.0 if modem.on_standby_rail else modem.standby_w.value
    ao_w = board.idle_w.value + s.camera_w.value + s.mcu_awake_w.value - mcu_off_w + pi_modem_w
    frames_ao = inp.burst_frames + inp.pre_trigger_frames
    busy_w = board.active_w.value - board.idle_w.value
    ao_trigger_j = (busy_w * (frames_ao * board.infer_s_per_frame.value + s.store_s.value)
                    + _modem_event_j(modem) + ir_j)

    # Gated: one wake per trigger.
    wake = _gated_wake(inp, board, modem, s)
    gated_trigger_j = wake["energy_j"] + ir_j
    latency_ao = inp.debounce_s + s.streamed_frame_s.value
    latency_gated = (board.boot_to_service_s.value + board.app_start_s.value
                     + s.camera_settle_s.value)

    t = inp.triggers_per_day
    modes: list[ModeResult] = []
    ao_break = {
        "standby": standby_w * 24,
        "pi+camera": ao_w / eff * 24,
        "processing": t * busy_w * (frames_ao * board.infer_s_per_frame.value
                                    + s.store_s.value) / eff / 3600,
        "modem": t * _modem_event_j(modem) / eff / 3600,
        "ir": t * ir_j / eff / 3600,
    }
    ao_per_trigger = ao_trigger_j / eff / 3600  # Wh at the battery
    gated_per_trigger = (gated_trigger_j / eff + mcu_up_extra_w * wake["uptime_s"]) / 3600
    gated_break = {
        "standby": standby_w * 24,
        "pi wakes": t * (wake["pi_j"] / eff + mcu_up_extra_w * wake["uptime_s"]) / 3600,
        "modem": t * wake["modem_j"] / eff / 3600,
        "ir": t * ir_j / eff / 3600,
    }
    share_in, window_h = _window_share(inp.hybrid_windows, night)
    n_windows = len(inp.hybrid_windows)
    window_start_j = (board.boot_w.value * board.boot_to_service_s.value
                      + board.active_w.value * (board.app_start_s.value
                                                + board.model_load_s.value))
    hybrid_break = {
        "standby": standby_w * 24,
        "pi+camera (windows)": ao_w / eff * window_h,
        "window starts": n_windows * window_start_j / eff / 3600,
        "triggers in windows": t * share_in * ao_per_trigger,
        "gated wakes": t * (1 - share_in) * gated_per_trigger,
    }
    latency_hybrid = share_in * latency_ao + (1 - share_in) * latency_gated
    crossing_s = _crossing_s(s)
    per_mode: tuple[tuple[str, dict[str, float], float, float, str, dict[str, Any]], ...] = (
        ("always-on", ao_break, latency_ao, ao_per_trigger,
         f"{latency_ao:.2f} s (streamed frame after the {inp.debounce_s * 1000:.0f} ms "
         f"debounce); the ring holds {inp.pre_trigger_frames} frame(s) from before the "
         "trigger", {}),
        ("gated", gated_break, latency_gated, gated_per_trigger,
         f"{latency_gated:.1f} s (boot {board.boot_to_service_s.value:.1f} + app start "
         f"{board.app_start_s.value:.1f} + camera settle {s.camera_settle_s.value:.1f}); a "
         f"walking leopard crosses the frame in ~{crossing_s:.0f} s", {
             "uptime_per_trigger_s": round(wake["uptime_s"], 1)}),
        ("hybrid", hybrid_break, latency_hybrid,
         share_in * ao_per_trigger + (1 - share_in) * gated_per_trigger,
         f"{latency_ao:.2f} s for the {share_in:.0%} of triggers inside the windows "
         f"({window_h:.0f} h/day), {latency_gated:.1f} s for the rest",
         {"window_hours_per_day": round(window_h, 2), "share_in_windows": round(share_in, 3),
          "latency_in_windows_s": round(latency_ao, 3),
          "latency_outside_s": round(latency_gated, 2)}),
    )
    always_on_extra_w = ao_w / eff  # what one more always-on hour costs per hour
    for name, breakdown, latency, per_trigger, note, extra in per_mode:
        wh_day = sum(breakdown.values())
        load_out = wh_day + sd_per_day
        solar, worst, days_solar, panel = _solar(inp, figs, chem, load_out, usable,
                                                 always_on_extra_w if name != "always-on"
                                                 else None)
        modes.append(ModeResult(
            mode=name,
            avg_w=wh_day / 24,
            wh_per_day=wh_day,
            wh_per_day_with_self_discharge=load_out,
            days=usable / load_out,
            days_cold=usable_cold / load_out,
            trigger_latency_s=latency,
            latency_note=note,
            breakdown_wh_per_day=breakdown,
            wh_per_trigger=per_trigger,
            battery_wh_for_target=_battery_for(wh_day, chem.usable_dod.value, chem),
            battery_wh_for_target_cold=_battery_for(
                wh_day, chem.usable_dod.value * chem.cold_factor.value, chem),
            solar=solar, worst_month=worst, days_with_solar=days_solar,
            panel_w_for_worst_month=panel, extra=extra,
        ))
    gated_days_mcu_awake = (budget(replace(inp, mcu_idle="awake"), figs).mode("gated").days
                            if inp.mcu_idle == "lightsleep" else None)
    return BudgetResult(
        inputs=inp, usable_wh=usable, usable_wh_cold=usable_cold,
        self_discharge_wh_per_day=sd_per_day, modes=tuple(modes),
        notes=tuple(_notes(inp, figs, modes, latency_gated, crossing_s, gated_days_mcu_awake)),
        sources=dict(_used_sources(inp)),
    )


def _check_inputs(inp: BudgetInputs, figs: Figures) -> None:
    for label, key, known in (("board", inp.board, figs.boards),
                              ("modem", inp.modem, figs.modems),
                              ("chemistry", inp.chemistry, figs.chemistries)):
        if key not in known:
            raise ValueError(f"unknown {label} {key!r} (known: {', '.join(known)})")
    numbers = {"battery_wh": inp.battery_wh, "triggers_per_day": inp.triggers_per_day,
               "ir_night_fraction": inp.ir_night_fraction, "solar_w": inp.solar_w,
               "lat": inp.lat}
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if inp.battery_wh <= 0 or inp.triggers_per_day < 0 or inp.solar_w < 0:
        raise ValueError("battery_wh must be > 0, triggers_per_day and solar_w ≥ 0")
    if not 0 <= inp.ir_night_fraction <= 1:
        raise ValueError("ir_night_fraction must be between 0 and 1")
    if not -66 <= inp.lat <= 66:
        raise ValueError("lat must be between -66 and 66 (no polar night in this model)")
    if inp.month is not None and not 1 <= inp.month <= 12:
        raise ValueError("month must be 1-12")
    if any(not 1 <= m <= 12 for m in inp.cold_months):
        raise ValueError("cold months must be 1-12")


def _modem_event_j(modem: pf.ModemFigures) -> float:
    """Modem energy per trigger above its idle (modem side): sending and receiving/tail."""
    idle = modem.standby_w.value
    return (max(0.0, modem.tx_w.value - idle) * modem.per_event_tx_s.value
            + max(0.0, modem.rx_w.value - idle) * modem.per_event_rx_s.value)


def _gated_wake(inp: BudgetInputs, board: pf.BoardFigures, modem: pf.ModemFigures,
                s: pf.SystemFigures) -> dict[str, float]:
    """One gated wake: energy at the 5 V side (Pi + camera, modem) and its length."""
    cam_on_w = board.idle_w.value + s.camera_w.value
    uplink_s = modem.attach_s.value + modem.per_event_tx_s.value + modem.per_event_rx_s.value
    phases = (  # (seconds, watts)
        (board.boot_to_service_s.value, board.boot_w.value),
        (board.app_start_s.value, board.active_w.value),
        (s.camera_settle_s.value + inp.burst_frames * inp.burst_interval_s, cam_on_w),
        (board.model_load_s.value, board.active_w.value + s.camera_w.value),
        (inp.burst_frames * board.infer_s_per_frame.value,
         board.active_w.value + s.camera_w.value),
        (s.store_s.value, board.active_w.value + s.camera_w.value),
        # The daemon keeps the camera streaming while up, so a second trigger is caught at
        # once; it waits for the uplink and idle_shutdown_s, whichever is longer.
        (max(inp.idle_shutdown_s, uplink_s), cam_on_w),
        (board.shutdown_s.value, board.idle_w.value),
    )
    pi_j = sum(sec * w for sec, w in phases)
    uptime = sum(sec for sec, _w in phases)
    modem_j = _modem_event_j(modem)
    if not modem.on_standby_rail:  # powered with the Pi: idle the whole wake, attach each time
        modem_j += (modem.standby_w.value * uptime
                    + max(0.0, modem.rx_w.value - modem.standby_w.value) * modem.attach_s.value)
    return {"pi_j": pi_j, "modem_j": modem_j, "energy_j": pi_j + modem_j, "uptime_s": uptime}


def _window_share(windows: tuple[tuple[int, int], ...], night: float) -> tuple[float, float]:
    """(share of triggers inside the windows, window hours per day).

    Triggers are spread evenly over the night (18:00–06:00 local, the year's mean) with
    ``night`` of them, and over the day with the rest.
    """
    minutes: set[int] = set()
    for start, end in windows:
        m = start
        while m != end:
            minutes.add(m)
            m = (m + 1) % 1440
    night_min = sum(1 for m in range(1440) if m >= NIGHT_START_MIN or m < NIGHT_END_MIN)
    share = 0.0
    for m in minutes:
        is_night = m >= NIGHT_START_MIN or m < NIGHT_END_MIN
        share += night / night_min if is_night else (1 - night) / (1440 - night_min)
    return min(1.0, share), len(minutes) / 60


def _frame_width_m(s: pf.SystemFigures) -> float:
    """Width of the camera's view at the trail distance."""
    return 2 * s.frame_distance_m.value * math.tan(math.radians(s.camera_hfov_deg.value / 2))


def _crossing_s(s: pf.SystemFigures) -> float:
    """Seconds a walking leopard takes to cross the frame at the trail distance."""
    return _frame_width_m(s) / s.leopard_walk_m_s.value


def _battery_for(wh_day: float, usable_fraction: float, chem: pf.ChemistryFigures) -> float | None:
    """Nominal Wh to last TARGET_DAYS: B·u / (L + B·k) = T → B = T·L / (u − T·k)."""
    k = chem.self_discharge_per_month.value / DAYS_PER_MONTH
    denom = usable_fraction - pf.TARGET_DAYS * k
    return None if denom <= 0 else pf.TARGET_DAYS * wh_day / denom


# -- solar --------------------------------------------------------------------------------------


def _sun(lat: float, month: int, figs: Figures) -> tuple[float, float, float, float, float]:
    """(φ, δ, ω_s, the horizontal geometry term, H0 in J/m²/day) on Klein's mean day of the
    month; the southern hemisphere mirrors the declination."""
    n = pf.MEAN_DAY[month - 1]
    phi = math.radians(abs(lat))
    decl = math.radians(23.45 * math.sin(math.radians(360 * (284 + n) / 365)))
    if lat < 0:
        decl = -decl
    ws = math.acos(_clamp(-math.tan(phi) * math.tan(decl)))
    e0 = 1 + 0.033 * math.cos(math.radians(360 * n / 365))
    horiz = math.cos(phi) * math.cos(decl) * math.sin(ws) + ws * math.sin(phi) * math.sin(decl)
    h0 = 24 * 3600 * figs.solar_constant_w_m2 / math.pi * e0 * horiz
    return phi, decl, ws, horiz, h0


def solar_yield_wh_per_w(lat: float, month: int, figs: Figures | None = None) -> float:
    """Wh per day that 1 W (STC) of panel gives the charge controller in ``month`` at ``lat``.

    Duffie & Beckman: H0 from the solar constant, declination and sunset hour angle on
    Klein's mean day; H = K_T·H0 with the site's clearness; the Erbs monthly diffuse fraction;
    Liu–Jordan isotropic sky on a panel facing the equator, tilted |lat| + 15°; times the PV
    system derate.
    """
    figs = figs or Figures()
    phi, decl, ws, horiz, h0 = _sun(lat, month, figs)
    kt = figs.clearness[month - 1]
    if math.degrees(ws) <= 81.4:
        hd = 1.391 - 3.560 * kt + 4.189 * kt**2 - 2.137 * kt**3
    else:
        hd = 1.311 - 3.022 * kt + 3.427 * kt**2 - 1.821 * kt**3
    beta = min(math.radians(abs(lat) + figs.tilt_extra_deg), math.radians(90))
    ws_t = min(ws, math.acos(_clamp(-math.tan(phi - beta) * math.tan(decl))))
    tilted = (math.cos(phi - beta) * math.cos(decl) * math.sin(ws_t)
              + ws_t * math.sin(phi - beta) * math.sin(decl))
    rb = tilted / horiz if horiz > 0 else 0.0
    r = (1 - hd) * rb + hd * (1 + math.cos(beta)) / 2 + figs.albedo * (1 - math.cos(beta)) / 2
    kwh_m2 = kt * h0 * r / 3.6e6
    # 1 W (STC) is rated at 1 kW/m², so it gives 1 Wh per kWh/m² before losses.
    return kwh_m2 * figs.pv_derate


def horizontal_kwh_m2(lat: float, month: int, figs: Figures | None = None) -> float:
    """Mean daily radiation on the horizontal (kWh/m²), for checking against climate data."""
    figs = figs or Figures()
    return figs.clearness[month - 1] * _sun(lat, month, figs)[4] / 3.6e6


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, x))


def _solar(inp: BudgetInputs, figs: Figures, chem: pf.ChemistryFigures, wh_out: float,
           usable: float, always_on_w: float | None
           ) -> tuple[tuple[MonthBalance, ...], int | None, float | None, float | None]:
    """Monthly balances, the worst month, days from full (worst start), panel to break even."""
    if inp.solar_w <= 0:
        return (), None, None, None
    months = range(1, 13) if inp.month is None else (inp.month,)
    wh_in_by_month = {}
    rows = []
    for m in range(1, 13):
        y = solar_yield_wh_per_w(inp.lat, m, figs)
        blocked = m in inp.cold_months and not chem.charge_below_0c
        wh_in_by_month[m] = 0.0 if blocked else inp.solar_w * y * chem.charge_efficiency.value
        if m in months:
            bal = wh_in_by_month[m] - wh_out
            rows.append(MonthBalance(
                month=m, yield_wh_per_w=y, wh_in=wh_in_by_month[m], wh_out=wh_out,
                charge_blocked=blocked, days_to_empty=usable / -bal if bal < 0 else None,
                always_on_hours_affordable=(None if always_on_w is None
                                            else max(0.0, bal) / always_on_w),
            ))
    worst = min(rows, key=lambda r: r.balance_wh).month
    chargeable = [r for r in rows if not r.charge_blocked and r.yield_wh_per_w > 0]
    panel = None
    if chargeable:
        low = min(chargeable, key=lambda r: r.yield_wh_per_w)
        panel = wh_out / (low.yield_wh_per_w * chem.charge_efficiency.value)
    days_solar = None
    if inp.month is None:
        days_solar = _simulate(wh_in_by_month, wh_out, usable)
    elif rows[0].days_to_empty is not None:
        days_solar = rows[0].days_to_empty
    return tuple(rows), worst, days_solar, panel


def _simulate(wh_in: Mapping[int, float], wh_out: float, usable: float) -> float | None:
    """Days until empty from full, the worst over the twelve start months; None = never (in
    two years, the battery refills every year)."""
    worst: float | None = None
    for start in range(1, 13):
        stored = usable
        month, day_in_month = start, 0
        for day in range(1, SIM_DAYS + 1):
            stored = min(usable, stored + wh_in[month] - wh_out)
            if stored <= 0:
                worst = day if worst is None else min(worst, day)
                break
            day_in_month += 1
            if day_in_month == MONTH_DAYS[month - 1]:
                month, day_in_month = month % 12 + 1, 0
    return worst


# -- notes and sources -------------------------------------------------------------------------


def _notes(inp: BudgetInputs, figs: Figures, modes: list[ModeResult], latency_gated: float,
           crossing_s: float, gated_days_mcu_awake: float | None) -> list[str]:
    s = figs.system
    notes = []
    met = [m for m in modes if m.days >= pf.TARGET_DAYS]
    if met:
        best = max(met, key=lambda m: m.days)
        notes.append(f"Target ≥ {pf.TARGET_DAYS:.0f} days on {inp.battery_wh:.0f} Wh: met by "
                     f"{', '.join(m.mode for m in met)} ({best.mode}: {best.days:.0f} days at "
                     f"20 °C, latency {best.trigger_latency_s:.1f} s). At −30 °C the whole "
                     f"time: {best.days_cold:.0f} days; "
                     + (f"{best.battery_wh_for_target_cold:.0f} Wh would last "
                        f"{pf.TARGET_DAYS:.0f} days at −30 °C."
                        if best.battery_wh_for_target_cold else "no pack size reaches the "
                        "target at −30 °C (self-discharge)."))
    else:
        best = max(modes, key=lambda m: m.days)
        need = best.battery_wh_for_target
        notes.append(f"Target ≥ {pf.TARGET_DAYS:.0f} days on {inp.battery_wh:.0f} Wh: NOT met "
                     f"(best: {best.mode}, {best.days:.0f} days). "
                     + (f"{best.mode} would need {need:.0f} Wh." if need else ""))
    notes.append(
        f"Latency: a walking leopard (~{s.leopard_walk_m_s.value:.0f} m/s, estimate) crosses "
        f"the frame ({_frame_width_m(s):.1f} m "
        f"wide at {s.frame_distance_m.value:.0f} m with a {s.camera_hfov_deg.value:.0f}° lens) "
        f"in ~{crossing_s:.0f} s. Gated mode's first frame comes {latency_gated:.1f} s after "
        f"the PIR fires, so it sees a walking leopard late or not at all: place the PIR's "
        f"zone upstream on the trail, ≥ {latency_gated * s.leopard_walk_m_s.value:.0f} m "
        "before the camera's frame. Always-on keeps frames from before the trigger (at night "
        "they are dark: the IR is pulsed only for the burst).")
    if gated_days_mcu_awake is not None:
        notes.append(f"Standby assumes the MCU firmware sleeps (MicroPython machine."
                     f"lightsleep, {s.mcu_lightsleep_w.value * 1000:.1f} mW) between PIR "
                     f"interrupts; a Pico left awake in a loop ({s.mcu_awake_w.value * 1000:.0f}"
                     f" mW) cuts gated to {gated_days_mcu_awake:.0f} days (--mcu-idle awake).")
    notes.append("Each trigger is counted as its own gated wake (a second trigger inside "
                 f"idle_shutdown_s = {inp.idle_shutdown_s:.0f} s is in fact free), and every "
                 "trigger as one uplink: conservative.")
    if inp.solar_w > 0:
        chem = figs.chemistries[inp.chemistry]
        if not chem.charge_below_0c and inp.cold_months:
            notes.append(f"No charge into {chem.name} in months "
                         f"{', '.join(MONTH_NAMES[m - 1] for m in sorted(inp.cold_months))} "
                         "(below 0 °C; --cold-months): the battery alone carries those "
                         "months, a panel cannot. A self-heating pack or lead-acid changes "
                         "that.")
        notes.append("Panel yield assumes open sky facing the equator; under forest canopy "
                     "it is a fraction of this. Days from full use the 20 °C capacity.")
    return notes


def _used_sources(inp: BudgetInputs) -> list[tuple[str, pf.Figure]]:
    keep = (f"board.{inp.board}.", f"modem.{inp.modem}.", f"battery.{inp.chemistry}.",
            "system.", "solar.")
    return [(k, f) for k, f in pf.all_figures() if k.startswith(keep)]


# -- output -------------------------------------------------------------------------------------


def to_json(r: BudgetResult) -> dict[str, Any]:
    """The ``--json`` object: ``inputs``, ``battery``, ``modes`` (ARCHITECTURE §3), ``notes``,
    ``sources``. Days that never run out (the panel keeps up) are ``null``."""
    inp = r.inputs
    return {
        "inputs": {
            "battery_wh": inp.battery_wh, "chemistry": inp.chemistry,
            "triggers_per_day": inp.triggers_per_day, "board": inp.board, "modem": inp.modem,
            "ir_night_fraction": inp.ir_night_fraction, "solar_w": inp.solar_w, "lat": inp.lat,
            "month": "all" if inp.month is None else inp.month,
            "hybrid_windows_local": [_fmt_window(w) for w in inp.hybrid_windows],
            "cold_months": list(inp.cold_months), "mcu_idle": inp.mcu_idle,
            "burst_frames": inp.burst_frames, "burst_interval_s": inp.burst_interval_s,
            "pre_trigger_frames": inp.pre_trigger_frames, "debounce_s": inp.debounce_s,
            "idle_shutdown_s": inp.idle_shutdown_s,
        },
        "battery": {"usable_wh": round(r.usable_wh, 1),
                    "usable_wh_cold": round(r.usable_wh_cold, 1),
                    "self_discharge_wh_per_day": round(r.self_discharge_wh_per_day, 3),
                    "target_days": pf.TARGET_DAYS},
        "modes": [_mode_json(m) for m in r.modes],
        "notes": list(r.notes),
        "sources": {k: {"value": f.value, "unit": f.unit, "source": f.source,
                        "estimate": f.estimate} for k, f in r.sources.items()},
    }


def _mode_json(m: ModeResult) -> dict[str, Any]:
    return {
        "mode": m.mode,
        "avg_w": round(m.avg_w, 4),
        "days": round(m.days, 1),
        "trigger_latency_s": round(m.trigger_latency_s, 3),
        "wh_per_day": round(m.wh_per_day, 3),
        "wh_per_day_with_self_discharge": round(m.wh_per_day_with_self_discharge, 3),
        "days_cold": round(m.days_cold, 1),
        "meets_target": m.days >= pf.TARGET_DAYS,
        "latency_note": m.latency_note,
        "wh_per_trigger": round(m.wh_per_trigger, 5),
        "breakdown_wh_per_day": {k: round(v, 4) for k, v in m.breakdown_wh_per_day.items()},
        "battery_wh_for_target": _r(m.battery_wh_for_target, 0),
        "battery_wh_for_target_cold": _r(m.battery_wh_for_target_cold, 0),
        "solar": [{
            "month": b.month,
            "yield_wh_per_w": round(b.yield_wh_per_w, 3),
            "wh_in": round(b.wh_in, 2),
            "wh_out": round(b.wh_out, 2),
            "balance_wh": round(b.balance_wh, 2),
            "charge_blocked": b.charge_blocked,
            "days_to_empty": _r(b.days_to_empty, 1),
            "always_on_hours_affordable": _r(b.always_on_hours_affordable, 2),
        } for b in m.solar],
        "worst_month": m.worst_month,
        "days_with_solar": _r(m.days_with_solar, 1),
        "panel_w_for_worst_month": _r(m.panel_w_for_worst_month, 1),
        **m.extra,
    }


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def _fmt_window(w: tuple[int, int]) -> str:
    return f"{w[0] // 60:02d}:{w[0] % 60:02d}-{w[1] // 60:02d}:{w[1] % 60:02d}"


def _days(x: float | None) -> str:
    if x is None:
        return "lasts"
    return f"{x:.1f}" if x < 10 and x != int(x) else f"{x:.0f}"


def _headline(r: BudgetResult, figs: Figures) -> list[str]:
    inp = r.inputs
    board = figs.boards[inp.board]
    chem = figs.chemistries[inp.chemistry]
    panel = (f"{inp.solar_w:g} W panel at {inp.lat:g}°" if inp.solar_w else
             "no panel (--solar-w)")
    return [
        f"{board.name}, {figs.modems[inp.modem].name}, {inp.battery_wh:g} Wh {chem.name} "
        f"({r.usable_wh:.0f} Wh usable at 20 °C, {r.usable_wh_cold:.0f} Wh at −30 °C, "
        f"self-discharge {r.self_discharge_wh_per_day:.2f} Wh/day)",
        f"{inp.triggers_per_day:g} triggers/day, {inp.ir_night_fraction:.0%} at night with IR; "
        f"hybrid windows {', '.join(_fmt_window(w) for w in inp.hybrid_windows)} local; "
        f"{panel}",
    ]


def render_text(r: BudgetResult, figs: Figures | None = None) -> str:
    """The readable report: the table, where the energy goes, the months, notes, sources."""
    figs = figs or Figures()
    out = [f"camtrap power-budget: {line}" if i == 0 else f"  {line}"
           for i, line in enumerate(_headline(r, figs))]
    out += ["", f"{'mode':<10} {'avg W':>7} {'Wh/day':>7} {'days':>6} {'−30 °C':>7}  "
            "PIR → first frame"]
    for m in r.modes:
        out.append(f"{m.mode:<10} {m.avg_w:>7.3f} {m.wh_per_day:>7.2f} {_days(m.days):>6} "
                   f"{_days(m.days_cold):>7}  {m.latency_note}")
    out += ["", "Where the energy goes (Wh/day at the battery; self-discharge "
            f"{r.self_discharge_wh_per_day:.2f} more):"]
    for m in r.modes:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in m.breakdown_wh_per_day.items())
        out.append(f"  {m.mode}: {parts}; {m.wh_per_trigger * 1000:.1f} mWh per trigger")
    if r.inputs.solar_w > 0:
        out += _solar_text(r, figs)
    out += ["", "Notes:"] + [f"  - {n}" for n in r.notes]
    out += ["", "Sources (estimate = an engineering estimate; all in "
            "edge_app/tools/power_figures.py):"]
    width = max(len(k) for k in r.sources)
    for k, f in r.sources.items():
        value = f"{f.value:g} {f.unit}"
        est = " [estimate]" if f.estimate else ""
        out.append(f"  {k:<{width}}  {value:<16} {f.source}{est}")
    return "\n".join(out) + "\n"


def _solar_text(r: BudgetResult, figs: Figures) -> list[str]:
    inp = r.inputs
    tilt = min(90.0, abs(inp.lat) + figs.tilt_extra_deg)
    out = ["", f"With a {inp.solar_w:g} W panel at {inp.lat:g}° (tilt {tilt:.0f}°, open sky), "
           "Wh/day into the battery and the balance per mode (days = from full, if every day "
           "were like this month):",
           f"{'month':<6} {'Wh/W':>5} {'in':>6}  " + "  ".join(f"{m.mode:>16}" for m in r.modes)]
    for i, row in enumerate(r.modes[0].solar):
        cells = []
        for m in r.modes:
            b = m.solar[i]
            days = "" if b.days_to_empty is None else f" ({b.days_to_empty:.0f} d)"
            cells.append(f"{b.balance_wh:>+8.1f}{days:>8}")
        cold = " cold" if row.charge_blocked else ""
        out.append(f"{MONTH_NAMES[row.month - 1]:<6} {row.yield_wh_per_w:>5.2f} "
                   f"{row.wh_in:>6.1f}  " + "  ".join(cells) + cold)
    out.append("Days from full, the worst start month: "
               + ", ".join(f"{m.mode} {_days(m.days_with_solar)}" for m in r.modes)
               + " ('lasts': the panel refills it every year)")
    out.append("Panel to break even in the worst month that can charge: "
               + ", ".join(f"{m.mode} {m.panel_w_for_worst_month:.2g} W"
                           for m in r.modes if m.panel_w_for_worst_month is not None))
    hyb = [b for b in r.mode("gated").solar if b.always_on_hours_affordable]
    if hyb:
        out.append("Surplus as extra always-on hours/day (what hybrid_above_v would spend): "
                   + ", ".join(f"{MONTH_NAMES[b.month - 1]} {b.always_on_hours_affordable:.1f}"
                               for b in hyb))
    return out


def render_markdown(r: BudgetResult, figs: Figures | None = None) -> str:
    """The compact table for the README (``--markdown``)."""
    figs = figs or Figures()
    inp = r.inputs
    head = _headline(r, figs)
    solar = inp.solar_w > 0
    cols = ["mode", "avg W", "Wh/day", "days (20 °C / −30 °C)", "PIR → first frame"]
    if solar:
        cols += [f"{inp.solar_w:g} W panel: worst month", "days from full"]
    out = [f"{head[0]}; {head[1]}.", "", "| " + " | ".join(cols) + " |",
           "|" + "---|" * len(cols)]
    for m in r.modes:
        if m.mode == "always-on":
            lat = f"{m.trigger_latency_s:.2f} s + {inp.pre_trigger_frames} frame before"
        elif m.mode == "gated":
            lat = f"{m.trigger_latency_s:.1f} s (boot)"
        else:
            lat = (f"{m.extra['latency_in_windows_s']:.2f} s for "
                   f"{m.extra['share_in_windows']:.0%}, {m.extra['latency_outside_s']:.1f} s "
                   "for the rest")
        row = [m.mode, f"{m.avg_w:.3f}", f"{m.wh_per_day:.2f}",
               f"{_days(m.days)} / {_days(m.days_cold)}", lat]
        if solar and m.worst_month is not None:
            b = next(x for x in m.solar if x.month == m.worst_month)
            row += [f"{MONTH_NAMES[b.month - 1]} {b.balance_wh:+.1f} Wh/day",
                    _days(m.days_with_solar)]
        out.append("| " + " | ".join(row) + " |")
    out += [""] + [f"* {n}" for n in r.notes]
    return "\n".join(out) + "\n"


# -- CLI ----------------------------------------------------------------------------------------


def _month(text: str) -> int | None:
    if text == "all":
        return None
    if text.isdigit() and 1 <= int(text) <= 12:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 1-12 or 'all', got {text!r}")


def _windows(text: str) -> tuple[tuple[int, int], ...]:
    from edge_app.core.config import parse_window

    try:
        return tuple(parse_window(w) for w in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cold(text: str) -> tuple[int, ...]:
    if text == "none":
        return ()
    try:
        months = tuple(int(m) for m in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"months 1-12 separated by ',' or 'none', "
                                         f"got {text!r}") from None
    if any(not 1 <= m <= 12 for m in months):
        raise argparse.ArgumentTypeError(f"months must be 1-12, got {text!r}")
    return months


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BudgetInputs()
    parser.add_argument("--battery-wh", type=finite(0.1, 1e6), default=d.battery_wh,
                        help="battery energy, nominal Wh (default %(default)g: 12 V 20 Ah)")
    parser.add_argument("--chemistry", choices=sorted(pf.CHEMISTRIES), default=d.chemistry,
                        help="usable depth of discharge, −30 °C capacity, self-discharge")
    parser.add_argument("--triggers-per-day", type=finite(0, 1e5), default=d.triggers_per_day)
    parser.add_argument("--board", choices=list(pf.BOARDS), default=d.board)
    parser.add_argument("--modem", choices=list(pf.MODEMS), default=d.modem)
    parser.add_argument("--ir-night-fraction", type=finite(0, 1), default=d.ir_night_fraction,
                        help="share of triggers at night, needing the IR illuminator")
    parser.add_argument("--solar-w", type=finite(0, 1e4), default=d.solar_w,
                        help="panel watts (STC); 0 = no panel")
    parser.add_argument("--lat", type=finite(-66, 66), default=d.lat,
                        help="latitude for the panel's yield (default %(default)g: Land of "
                        "the Leopard)")
    parser.add_argument("--month", type=_month, default=None, metavar="{1..12,all}",
                        help="the month(s) of the solar balance (default all)")
    parser.add_argument("--hybrid-window", type=_windows, default=d.hybrid_windows,
                        metavar="HH:MM-HH:MM[,...]",
                        help="hybrid's always-on windows, local time (default 18:00-07:00)")
    parser.add_argument("--cold-months", type=_cold, default=d.cold_months,
                        metavar="M[,M...]|none",
                        help="months a lithium pack cannot charge (below 0 °C); default 12,1,2 "
                        "for the Land of the Leopard")
    parser.add_argument("--mcu-idle", choices=["lightsleep", "awake"], default=d.mcu_idle,
                        help="the supervisor MCU's state while the Pi is off")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument("--markdown", action="store_true", help="the compact README table")


def main(args: argparse.Namespace) -> int:
    inp = BudgetInputs(
        battery_wh=args.battery_wh, chemistry=args.chemistry,
        triggers_per_day=args.triggers_per_day, board=args.board, modem=args.modem,
        ir_night_fraction=args.ir_night_fraction, solar_w=args.solar_w, lat=args.lat,
        month=args.month, hybrid_windows=args.hybrid_window, cold_months=args.cold_months,
        mcu_idle=args.mcu_idle,
    )
    try:
        result = budget(inp)
    except ValueError as e:
        print(f"camtrap power-budget: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(to_json(result), ensure_ascii=False))
    elif args.markdown:
        sys.stdout.write(render_markdown(result))
    else:
        sys.stdout.write(render_text(result))
    return 0
