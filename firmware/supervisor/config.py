"""Supervisor configuration: defaults, and a validated override from ``config.json`` on flash.

A technician edits ``config.json`` in the field with ``mpremote``; a typo there must never
brick the trap. So every key is checked against a rule here; an unknown key, a wrong type or a
value out of range falls back to the default and is *counted* (``load`` returns the count and
the names, the LED shows a fault code, STATUS/HELLO are unaffected). A file that is not JSON
at all counts as one error and gives the defaults.
"""

import json

# Chemistry thresholds per cell, in mV: (cut_off, recover). Sources in firmware/README.md
# ("Low-voltage thresholds"): the cut sits well above each chemistry's damage limit (LiFePO4
# 2.5 V, Li-ion 2.75 V, lead-acid 1.75 V per cell) to leave room for cold-weather sag and for
# a BMS cut-off below it; the recovery point needs a charge, not a rested rebound.
CHEMISTRY = {
    "lifepo4": (3000, 3300),
    "li_ion": (3300, 3600),
    "lead_acid": (1950, 2100),
}

MODES = ("always_on", "gated", "hybrid")

DEFAULTS = {
    # power plan
    "mode": "gated",
    "windows": [],  # [[start_min, end_min], ...] UTC minutes; end < start wraps midnight
    "hybrid_above_mv": 0,  # hybrid: always on while battery >= this (0 = rule off)
    "power_on_at_start": True,  # boot the Pi once when the MCU starts (first install, resets)
    # battery
    "chemistry": "lifepo4",
    "cells": 4,
    "lv_cut_mv": 0,  # pack cut-off override in mV (0 = chemistry x cells)
    "lv_recover_mv": 0,  # pack recovery override in mV (0 = chemistry x cells)
    "lv_confirm_s": 10,  # below/above the threshold this long before acting (load sag)
    "lv_grace_s": 60,  # time the Pi gets to halt after the low_voltage flag is raised
    # ADC dividers: mv = raw/65535 * adc_vref_mv * ratio * gain + offset_mv
    "adc_vref_mv": 3300,
    "battery_fitted": True,
    "battery_ratio": 5.7,  # (470k + 100k) / 100k
    "battery_gain": 1.0,
    "battery_offset_mv": 0,
    "solar_fitted": False,
    "solar_ratio": 9.333,  # (1M + 120k) / 120k
    "solar_gain": 1.0,
    "solar_offset_mv": 0,
    "solar_charging_margin_mv": 300,
    "adc_period_ms": 1000,
    # Pi watchdog and boot-loop guard
    "heartbeat_timeout_s": 120,
    "boot_grace_s": 180,
    "boot_loop_limit": 3,
    "backoff_s": 3600,
    "cycle_off_s": 10,
    "halt_cut_delay_ms": 1000,
    # PIR
    "pir_debounce_ms": 50,
    "pir_holdoff_ms": 2000,
    "pir_stuck_s": 300,
    "trigger_resend_ms": 2000,
    # main loop and hardware
    "tick_ms": 50,
    "idle_tick_ms": 200,
    # "light": machine.lightsleep between ticks while the Pi is off (about 1.5 mA instead of
    # ~26 mA awake: the difference between ~200 and ~50 days gated, `camtrap power-budget
    # --mcu-idle`); "idle": time.sleep_ms always (the fallback if a MicroPython release's
    # lightsleep misbehaves on this board, formats-and-field §5.3).
    "idle_sleep": "light",
    "wdt_timeout_ms": 8000,
    "led": True,
    "rtc": "ds3231",
    "pin_pir": 2,
    "pin_pi_power": 3,
    "pin_pi_halt": 6,
    "pin_ir": 7,
    "pin_led": 25,
    "pin_battery_adc": 26,
    "pin_solar_adc": 27,
    "uart_id": 0,
    "pin_uart_tx": 0,
    "pin_uart_rx": 1,
    "i2c_id": 0,
    "pin_i2c_sda": 4,
    "pin_i2c_scl": 5,
    "pi_power_active_high": True,
}

# key -> ("int", lo, hi) | ("float", lo, hi) | ("bool",) | ("choice", options) | ("windows",)
RULES = {
    "mode": ("choice", MODES),
    "windows": ("windows",),
    "hybrid_above_mv": ("int", 0, 65535),
    "power_on_at_start": ("bool",),
    "chemistry": ("choice", tuple(CHEMISTRY)),
    "cells": ("int", 1, 16),
    "lv_cut_mv": ("int", 0, 65535),
    "lv_recover_mv": ("int", 0, 65535),
    "lv_confirm_s": ("int", 1, 600),
    "lv_grace_s": ("int", 5, 600),
    "adc_vref_mv": ("int", 1000, 5000),
    "battery_fitted": ("bool",),
    "battery_ratio": ("float", 1.0, 100.0),
    "battery_gain": ("float", 0.5, 2.0),
    "battery_offset_mv": ("int", -2000, 2000),
    "solar_fitted": ("bool",),
    "solar_ratio": ("float", 1.0, 100.0),
    "solar_gain": ("float", 0.5, 2.0),
    "solar_offset_mv": ("int", -2000, 2000),
    "solar_charging_margin_mv": ("int", 0, 5000),
    "adc_period_ms": ("int", 50, 60000),
    "heartbeat_timeout_s": ("int", 10, 3600),
    "boot_grace_s": ("int", 10, 3600),
    "boot_loop_limit": ("int", 1, 20),
    "backoff_s": ("int", 60, 86400),
    "cycle_off_s": ("int", 1, 3600),
    "halt_cut_delay_ms": ("int", 0, 30000),
    "pir_debounce_ms": ("int", 0, 2000),
    "pir_holdoff_ms": ("int", 0, 600000),
    "pir_stuck_s": ("int", 10, 86400),
    "trigger_resend_ms": ("int", 200, 60000),
    "tick_ms": ("int", 10, 1000),
    "idle_tick_ms": ("int", 10, 2000),
    "idle_sleep": ("choice", ("light", "idle")),
    "wdt_timeout_ms": ("int", 1000, 8388),  # RP2040 WDT maximum is 8388 ms
    "led": ("bool",),
    "rtc": ("choice", ("ds3231", "none")),
    "pin_pir": ("int", 0, 29),
    "pin_pi_power": ("int", 0, 29),
    "pin_pi_halt": ("int", 0, 29),
    "pin_ir": ("int", -1, 29),  # -1 = no IR rail switch fitted
    "pin_led": ("int", 0, 29),
    "pin_battery_adc": ("int", 26, 29),
    "pin_solar_adc": ("int", 26, 29),
    "uart_id": ("int", 0, 1),
    "pin_uart_tx": ("int", 0, 29),
    "pin_uart_rx": ("int", 0, 29),
    "i2c_id": ("int", 0, 1),
    "pin_i2c_sda": ("int", 0, 29),
    "pin_i2c_scl": ("int", 0, 29),
    "pi_power_active_high": ("bool",),
}

MAX_FILE_BYTES = 8192


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _ok_windows(v):
    if not isinstance(v, list) or len(v) > 6:
        return False
    for w in v:
        if not isinstance(w, list) or len(w) != 2:
            return False
        for m in w:
            if not _is_int(m) or not 0 <= m <= 1439:
                return False
    return True


def valid(key, value):
    """True if ``value`` is acceptable for ``key``."""
    rule = RULES.get(key)
    if rule is None:
        return False
    kind = rule[0]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "choice":
        return isinstance(value, str) and value in rule[1]
    if kind == "windows":
        return _ok_windows(value)
    if kind == "int":
        return _is_int(value) and rule[1] <= value <= rule[2]
    # float: ints are fine too; NaN fails both comparisons, inf fails the range
    if not (_is_int(value) or isinstance(value, float)):
        return False
    return rule[1] <= value <= rule[2]


def copy_defaults():
    out = {}
    for k in DEFAULTS:
        v = DEFAULTS[k]
        out[k] = [list(w) for w in v] if k == "windows" else v
    return out


def merge(overrides):
    """Defaults overlaid with the valid entries of ``overrides``: returns (cfg, bad_keys)."""
    cfg = copy_defaults()
    bad = []
    if not isinstance(overrides, dict):
        return cfg, ["<not an object>"]
    for key in overrides:
        value = overrides[key]
        if valid(key, value):
            cfg[key] = float(value) if RULES[key][0] == "float" else value
        else:
            bad.append(key)
    for key in _cross_check(cfg):
        cfg[key] = DEFAULTS[key]
        bad.append(key)
    return cfg, bad


def _cross_check(cfg):
    """Keys whose value is valid alone but not with the others."""
    bad = []
    cut, rec = thresholds(cfg)
    if rec <= cut:
        bad.extend(("lv_cut_mv", "lv_recover_mv"))
    return bad


def loads(text):
    """Parse config.json text (or None when there is no file): returns (cfg, bad_keys)."""
    if text is None:
        return copy_defaults(), []
    if len(text) > MAX_FILE_BYTES:
        return copy_defaults(), ["<file too big>"]
    try:
        data = json.loads(text)
    except ValueError:
        return copy_defaults(), ["<not json>"]
    return merge(data)


def thresholds(cfg):
    """(cut_mv, recover_mv) for the pack: chemistry per cell x cells, unless overridden."""
    per_cut, per_rec = CHEMISTRY[cfg["chemistry"]]
    cut = cfg["lv_cut_mv"] or per_cut * cfg["cells"]
    rec = cfg["lv_recover_mv"] or per_rec * cfg["cells"]
    return cut, rec


def mode_code(cfg):
    return MODES.index(cfg["mode"])
