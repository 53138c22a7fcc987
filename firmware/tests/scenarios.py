"""Every firmware test as a plain function, run by pytest (CPython) *and* by MicroPython.

``all_scenarios()`` returns ``[(name, function)]``: tests/firmware/test_scenarios.py
parametrizes over it, firmware/tests/mp_tests.py calls each under the real MicroPython
interpreter. Nothing here may use what MicroPython lacks (pytest, dataclasses, typing, …).
"""

import struct

import config
import ds3231
import led
import logic
import proto
import rtcclock
import schedule
from fakes import FakeI2C
from harness import Rig, hexs, unhex, vectors
from pir import PirFilter
from power import VoltageGuard, adc_to_mv

T0 = 1790000000  # 2026-09-21T14:13:20Z


def eq(a, b, what=""):
    if a != b:
        raise AssertionError(what + ": " + repr(a) + " != " + repr(b))


def raises(fn, exc=ValueError):
    try:
        fn()
    except exc:
        return
    raise AssertionError("did not raise")


# --- protocol: shared vectors --------------------------------------------------------------------

def crc_check_value():
    v = vectors()["crc"]
    eq(proto.crc16(unhex(v["check"]["input_hex"])), 0x29B1, "check")
    eq(v["check"]["crc"], 0x29B1, "check in file")
    for c in v["cases"]:
        eq(proto.crc16(unhex(c["input_hex"])), c["crc"], c["input_hex"])


def _fields_equal(got, want):
    eq(sorted(got.keys()), sorted(want.keys()), "field names")
    for k in want:
        eq(got[k], want[k], k)


def frame_encode(v):
    def run():
        fields = dict(v["fields"])
        fields.pop("n", None)
        eq(hexs(proto.encode(v["type"], v["seq"], fields)), v["hex"], v["description"])
        eq(hexs(proto.pack_payload(v["type"], fields)), v["payload_hex"], "payload")
        raw = unhex(v["hex"])
        eq(proto.crc16(raw[2:-2]), v["crc"], "crc")
    return run


def frame_decode(v):
    def run():
        side = proto.MCU_TO_PI if v["direction"] == "mcu_to_pi" else proto.PI_TO_MCU
        rx = proto.Receiver(side)
        frames = rx.feed(unhex(v["hex"]), 0)
        eq(len(frames), 1, "frames")
        f = frames[0]
        eq((f.type, f.seq, f.error), (v["type"], v["seq"], 0), "header")
        _fields_equal(f.fields, v["fields"])
        eq(rx.counters(), dict.fromkeys(proto.COUNTER_NAMES, 0), "counters")
    return run


def invalid_payload(v):
    def run():
        raises(lambda: proto.unpack_payload(v["type"], unhex(v["payload_hex"])))
    return run


def receiver_case(c):
    def run():
        accept = proto.PI_TO_MCU if c["side"] == "mcu" else proto.MCU_TO_PI
        rx = proto.Receiver(accept)
        got = []
        for ch in c["chunks"]:
            got.extend(rx.feed(unhex(ch["hex"]), ch["at_ms"]))
        if "poll_at_ms" in c:
            rx.poll(c["poll_at_ms"])
        eq(len(got), len(c["frames"]), "frame count")
        for i in range(len(got)):
            w = c["frames"][i]
            g = got[i]
            eq((g.type, g.seq, hexs(g.payload), g.error),
               (w["type"], w["seq"], w["payload_hex"], w["error"]), "frame " + str(i))
            if w["fields"] is None:
                eq(g.fields, None, "fields")
            else:
                _fields_equal(g.fields, w["fields"])
        eq(rx.counters(), c["counters"], c["description"])
    return run


def receiver_survives_noise():
    # deterministic pseudo-random noise between good frames; every good frame must come out
    good = [proto.encode(proto.HEARTBEAT, i, {"health": i & 1}) for i in range(40)]
    x = 12345
    stream = bytearray()
    for g in good:
        for _ in range(x % 23):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            b = (x >> 16) & 0xFF
            stream.append(0xA5 if b < 20 else b)  # plenty of false SOF starts
        stream.extend(g)
    rx = proto.Receiver(proto.PI_TO_MCU)
    out = []
    for i in range(0, len(stream), 7):
        out.extend(rx.feed(stream[i:i + 7], i))
    eq([f.seq for f in out if f.error == 0], list(range(40)), "frames found")
    assert rx.counts["garbage_bytes"] > 0
    for v in rx.counters().values():
        assert 0 <= v <= proto.COUNTER_MAX


def counters_saturate():
    rx = proto.Receiver()
    for _ in range(70):
        rx.feed(bytes(1000), 0)
    eq(rx.counts["garbage_bytes"], 65535, "saturated")


def encoder_rejects_bad_values():
    good = {"fw_major": 1, "fw_minor": 0, "wake_reason": 9, "reset_cause": 0,
            "boot_count": 1, "mode": 1, "flags": 0}
    raises(lambda: proto.pack_payload(proto.HELLO, good))
    raises(lambda: proto.pack_payload(proto.HEARTBEAT, {"health": 256}))
    raises(lambda: proto.pack_payload(proto.HEARTBEAT, {}))
    raises(lambda: proto.pack_payload(proto.SCHEDULE, {
        "mode": 1, "hybrid_above_mv": 0, "windows": [[0, 1]] * 7}))
    raises(lambda: proto.pack_payload(proto.SCHEDULE, {
        "mode": 1, "hybrid_above_mv": 0, "windows": [[0, 1440]]}))
    raises(lambda: proto.encode_frame(0x10, 0, bytes(65)))
    raises(lambda: proto.encode_frame(0x10, 256, b""))


# --- PIR, triggers, wake-up ----------------------------------------------------------------------

def gated_pir_wake_hello_triggers_ack():
    r = Rig({"mode": "gated"})
    r.run(1000)
    eq(r.hal.pi_power, False, "gated: off at rest")
    t_edge = r.now
    r.pir()
    eq(r.hal.pi_power, True, "PIR powers the Pi")
    eq(r.sup.wake_reason, proto.WAKE_PIR, "wake reason")
    r.run(3000)
    r.pir()  # a second trigger while booting
    r.run(2500)
    hellos = r.pi.of(proto.HELLO)
    assert len(hellos) >= 3, "HELLO repeats every 2 s until the Pi answers"
    h = hellos[0].fields
    eq((h["wake_reason"], h["mode"], h["boot_count"], h["reset_cause"]),
       (proto.WAKE_PIR, proto.MODE_GATED, 1, proto.RESET_POWER_ON), "HELLO")
    eq(h["flags"] & proto.FLAG_RTC_VALID, proto.FLAG_RTC_VALID, "rtc valid")
    eq(r.pi.of(proto.TRIGGER), [], "no TRIGGER before the Pi answers")
    r.pi.clear()
    r.boot_pi()
    eq(r.acks()[0][:2], (proto.HEARTBEAT, 0), "HEARTBEAT acked")
    r.run(200)
    trig = [f.fields for f in r.pi.of(proto.TRIGGER)]
    r.pi.clear()
    r.run(2500)
    eq(r.pi.of(proto.HELLO), [], "HELLO stops once the Pi answered")
    eq([t["number"] for t in trig], [1, 2], "pending sent oldest first")
    eq(trig[0]["rtc_time"], T0 + t_edge // 1000, "trigger time is the edge's")
    for t in trig:
        eq(t["flags"], proto.TRIG_WHILE_OFF | proto.TRIG_RTC_VALID, "flags")
    eq(len(r.pi.of(proto.TRIGGER)), 2, "unacknowledged triggers are resent")
    st = r.status()
    eq((st["triggers_total"], st["triggers_pending"], st["state"]), (2, 2, proto.STATE_UP), "st")
    r.pi.send(proto.TRIGGER_ACK, {"up_to_number": 2})
    r.pi.clear()
    r.run(5000)
    eq(r.pi.of(proto.TRIGGER), [], "acked triggers are not resent")
    eq(r.status()["triggers_pending"], 0, "pending after ack")
    r.pi.send(proto.HEARTBEAT, {"health": 1})
    r.pi.clear()
    r.pir()
    trig = r.pi.of(proto.TRIGGER)
    eq(len(trig), 1, "a trigger while up is sent at once")
    eq(trig[0].fields["flags"], proto.TRIG_RTC_VALID, "not while_off")
    eq(trig[0].fields["number"], 3, "number")


def trigger_timestamp_ms():
    r = Rig({"mode": "always_on"}, start=True)
    r.boot_pi()
    r.run(777)
    r.pi.send(proto.SET_TIME, {"unix_s": 1800000000, "source": 1})
    r.step()
    t_set = r.last_tick
    eq(r.acks()[-1][:2], (proto.SET_TIME, 0), "SET_TIME acked")
    r.run(1234)
    edge = r.now - 17  # the IRQ fired 17 ms before the tick that sees it
    r.pir(early_ms=17)
    d = edge - t_set
    assert d % 50 != 0, "test picks an edge off the tick grid"
    t = r.pi.of(proto.TRIGGER)[-1].fields
    eq((t["rtc_time"], t["rtc_ms"]), (1800000000 + d // 1000, d % 1000), "RTC s + MCU ms")
    eq(r.hal.rtc.read() >= 1800000001, True, "RTC was written")


def pending_ring_drops_oldest():
    r = Rig({"mode": "gated", "pir_holdoff_ms": 0, "pir_debounce_ms": 0, "boot_grace_s": 3600})
    r.sup.state = proto.STATE_BACKOFF  # keep the Pi off while we fire 70 triggers
    r.sup._backoff_until = 10 ** 9
    for _ in range(70):
        r.pir(hold_ms=60)
        r.run(60)
    eq(r.sup.triggers.pending(), 64, "bounded")
    eq(r.sup.triggers.dropped, 6, "dropped counted")
    eq(r.sup.triggers.items[0][0], 7, "the oldest went")
    eq(r.sup.triggers.total, 70, "total")


def pir_filter_rules():
    f = PirFilter(50, 2000, 10000)
    f.edge(0)
    eq(f.poll(20, True), None, "debouncing")
    eq(f.poll(60, True), 0, "accepted with the edge time")
    f.edge(500)
    eq(f.poll(600, True), None, "inside hold-off")
    eq(f.suppressed, 1, "suppressed")
    eq(f.poll(2000, True), 2000, "still high at hold-off end re-fires")
    eq(f.refired, 1, "refired")
    eq(f.poll(4000, True), 4000, "and again")
    eq(f.poll(5000, True), None, "hold-off")
    eq(f.poll(6000, True), 6000, "hold-off over")
    eq(f.poll(10100, True), None, "high for 10 s: stuck, stops re-firing")
    eq(f.stuck, 1, "stuck counted")
    eq(f.poll(12000, True), None, "still stuck")
    eq(f.poll(12100, False), None, "low re-arms")
    f.edge(13000)
    eq(f.poll(13060, False), None, "gone before debounce")
    eq(f.too_short, 1, "too short")
    f.edge(20000)
    eq(f.poll(20050, True), 20000, "fresh trigger")


# --- watchdog and boot-loop guard ----------------------------------------------------------------

def heartbeat_timeout_power_cycles():
    r = Rig({"mode": "always_on", "heartbeat_timeout_s": 30, "boot_grace_s": 60,
             "cycle_off_s": 5}, start=True)
    r.boot_pi()
    for _ in range(5):  # heartbeats every 20 s keep it up well past the grace
        r.run(20000)
        r.pi.send(proto.HEARTBEAT, {"health": 1})
    eq(r.hal.pi_power, True, "alive while beating")
    t_last = r.now
    t_cut = r.run_until(lambda: not r.hal.pi_power, 40000)
    assert 30000 <= t_cut - t_last <= 30050, t_cut - t_last
    eq(r.sup.counts["watchdog_cycles"], 1, "counted")
    h = r.wait_power_on(10000)
    assert 5000 <= r.powered_at - t_cut <= 5200, "off for cycle_off_s"
    eq(h["wake_reason"], proto.WAKE_WATCHDOG, "wake watchdog")


def boot_grace_then_watchdog():
    r = Rig({"mode": "always_on", "heartbeat_timeout_s": 10, "boot_grace_s": 90}, start=True)
    r.run(1000)
    r.pi.send(proto.GET_STATUS)  # the Pi answers but never beats
    r.run(80000)
    eq(r.hal.pi_power, True, "inside the boot grace")
    r.run(11000)
    eq(r.hal.pi_power, False, "grace over without a heartbeat")


def boot_loop_guard_backs_off():
    r = Rig({"mode": "always_on", "boot_grace_s": 30, "boot_loop_limit": 3, "backoff_s": 600,
             "cycle_off_s": 5}, start=True)
    t0 = r.run_until(lambda: r.sup.state == proto.STATE_BACKOFF, 3 * 40000)
    eq(r.sup.boot_count, 3, "three failed boots")
    eq(r.hal.pi_power, False, "off in back-off")
    r.pir()
    eq(r.hal.pi_power, False, "PIR does not override the back-off")
    st = r.sup.status_fields(r.now)
    eq(st["flags"] & proto.FLAG_BOOT_BACKOFF, proto.FLAG_BOOT_BACKOFF, "flag")
    eq(st["state"], proto.STATE_BACKOFF, "state")
    h = r.wait_power_on(700000)
    assert 600000 <= r.powered_at - t0 <= 600200, r.powered_at - t0
    eq(h["wake_reason"], proto.WAKE_BACKOFF_RETRY, "retry")
    eq(h["flags"] & proto.FLAG_BOOT_BACKOFF, proto.FLAG_BOOT_BACKOFF, "guard still armed")
    r.pi.send(proto.HEARTBEAT, {"health": 1})
    r.step()
    eq(r.sup.failed_boots, 0, "a heartbeat clears the guard")
    eq(r.sup.flags() & proto.FLAG_BOOT_BACKOFF, 0, "flag cleared")


def backoff_retry_that_fails_backs_off_again():
    r = Rig({"mode": "always_on", "boot_grace_s": 20, "boot_loop_limit": 2, "backoff_s": 60,
             "cycle_off_s": 1}, start=True)
    r.run_until(lambda: r.sup.state == proto.STATE_BACKOFF, 100000)
    r.run_until(lambda: r.hal.pi_power, 70000)
    r.run_until(lambda: r.sup.state == proto.STATE_BACKOFF, 30000)
    eq(r.sup.counts["backoffs"], 2, "one retry per back-off period")


# --- low voltage ---------------------------------------------------------------------------------

def low_voltage(chem, cells):
    def run():
        r = Rig({"mode": "always_on", "chemistry": chem, "cells": cells, "lv_confirm_s": 5,
                 "lv_grace_s": 30}, start=True)
        cut, rec = config.thresholds(r.cfg)
        per = config.CHEMISTRY[chem]
        eq((cut, rec), (per[0] * cells, per[1] * cells), "per cell x cells")
        r.hal.volts["battery"] = rec + 400
        r.boot_pi()
        r.run(3000)
        r.hal.volts["battery"] = cut + 40  # just above the cut: nothing happens
        r.run(20000)
        eq(r.sup.guard.low, False, "above cut")
        r.hal.volts["battery"] = cut - 60
        t_low = r.now
        r.run_until(lambda: r.sup.guard.low, 20000)
        assert r.now - t_low >= 5000, "confirmed, not on one sample"
        eq(r.status()["flags"] & proto.FLAG_LOW_VOLTAGE, proto.FLAG_LOW_VOLTAGE, "STATUS flag")
        eq(r.sup.state, proto.STATE_SHUTTING_DOWN, "the Pi is asked to halt first")
        eq(r.hal.pi_power, True, "grace before the cut")
        r.run(2000)
        r.hal.halted = True  # the Pi saw the flag and halted
        r.run_until(lambda: not r.hal.pi_power, 5000)
        eq(r.sup.state, proto.STATE_LOW_VOLTAGE_OFF, "low-voltage off")
        r.pir()
        r.run(20000)
        eq(r.hal.pi_power, False, "PIR does not wake a flat battery")
        r.hal.volts["battery"] = (cut + rec) // 2  # rebound between thresholds: stays off
        r.run(60000)
        eq(r.hal.pi_power, False, "hysteresis")
        r.hal.volts["battery"] = rec + 50
        h = r.wait_power_on(30000)
        eq(h["wake_reason"], proto.WAKE_VOLTAGE_RESTORED, "voltage restored")
        eq(h["flags"] & proto.FLAG_LOW_VOLTAGE, 0, "flag cleared")
        eq(r.sup.counts["lv_cuts"], 1, "counted")
    return run


def low_voltage_cuts_at_grace_without_halt():
    r = Rig({"mode": "always_on", "lv_confirm_s": 2, "lv_grace_s": 20}, start=True)
    r.boot_pi()
    r.hal.volts["battery"] = 11000
    r.run_until(lambda: r.sup.state == proto.STATE_SHUTTING_DOWN, 20000)
    t = r.now
    r.run_until(lambda: not r.hal.pi_power, 30000)
    assert 20000 <= r.now - t <= 20300, r.now - t


def voltage_guard_unit():
    g = VoltageGuard(12000, 13200, 1000)
    eq(g.update(11900, 0), None, "needs confirming")
    eq(g.update(12100, 500), None, "back above resets")
    eq(g.update(11900, 600), None, "again")
    eq(g.update(11900, 1600), "cut", "confirmed")
    eq(g.update(13100, 5000), None, "below recover")
    eq(g.update(13200, 6000), None, "confirming")
    eq(g.update(0, 6500), None, "not fitted/unread changes nothing")
    eq(g.update(13300, 7000), None, "restarted")
    eq(g.update(13300, 8000), "recover", "recovered")


def adc_divider_maths():
    # 470k over 100k, 3.3 V reference: 12.8 V -> 12.8/5.7 = 2.2456 V -> 44597 counts
    raw = int(12800 / 5.7 / 3300 * 65535 + 0.5)
    eq(raw, 44596, "counts")
    eq(adc_to_mv(raw, 3300, 5.7, 1.0, 0), 12800, "back to mV")
    eq(adc_to_mv(raw, 3300, 5.7, 1.02, -50), 13006, "calibration")
    eq(adc_to_mv(0, 3300, 5.7, 1.0, -100), 0, "clamped at 0")
    r = Rig(battery_mv=12800, solar_mv=18000, overrides={"solar_fitted": True})
    r.hal.temp = -235
    r.run(1500)
    st = r.sup.status_fields(r.now)
    assert abs(st["battery_mv"] - 12800) <= 2, st["battery_mv"]
    assert abs(st["solar_mv"] - 18000) <= 3, st["solar_mv"]
    eq(st["temp_dc"], -235, "temperature")
    eq(st["flags"] & proto.FLAG_SOLAR_CHARGING, proto.FLAG_SOLAR_CHARGING, "charging")


# --- shutdown handshake --------------------------------------------------------------------------

def power_off_with_halt_pin():
    r = Rig({"mode": "gated", "halt_cut_delay_ms": 1000}, start=True)
    r.boot_pi()
    seq = r.pi.send(proto.POWER_OFF, {"timeout_s": 60})
    r.step()
    eq(r.acks()[-1], (proto.POWER_OFF, 0, seq), "ACK echoes the seq")
    eq(r.sup.state, proto.STATE_SHUTTING_DOWN, "shutting down")
    r.run(8000)
    eq(r.hal.pi_power, True, "waits for the halt")
    r.hal.halted = True
    t = r.now
    t_cut = r.run_until(lambda: not r.hal.pi_power, 3000)
    assert 1000 <= t_cut - t <= 1050, t_cut - t
    eq(r.sup.state, proto.STATE_OFF, "off")
    r.run(60000)
    eq(r.hal.pi_power, False, "gated: stays off")
    r.pir()
    r.run(100)
    eq(r.hal.pi_power, True, "PIR wakes it again")


def power_off_timeout():
    r = Rig({"mode": "gated"}, start=True)
    r.boot_pi()
    r.pi.send(proto.POWER_OFF, {"timeout_s": 45})
    r.step()
    t = r.last_tick
    t_cut = r.run_until(lambda: not r.hal.pi_power, 60000)
    assert 45000 <= t_cut - t <= 45050, t_cut - t


def power_cycle_requested():
    r = Rig({"mode": "gated"}, start=True)
    r.boot_pi()
    r.pi.send(proto.POWER_CYCLE, {"grace_s": 10, "off_s": 30})
    r.step()
    eq(r.acks()[-1][:2], (proto.POWER_CYCLE, 0), "acked")
    t = r.last_tick
    t_cut = r.run_until(lambda: not r.hal.pi_power, 12000)
    assert 10000 <= t_cut - t <= 10050, t_cut - t
    h = r.wait_power_on(40000)
    assert 30000 <= r.powered_at - t_cut <= 30200, r.powered_at - t_cut
    eq(h["wake_reason"], proto.WAKE_REQUESTED, "requested")


def halted_on_its_own_is_cut():
    r = Rig({"mode": "always_on", "halt_cut_delay_ms": 500}, start=True)
    r.boot_pi()
    r.hal.halted = True
    r.run_until(lambda: not r.hal.pi_power, 2000)
    r.run(120000)
    eq(r.hal.pi_power, False, "always-on does not bounce a Pi that halted itself")


def pir_during_shutdown_wakes_after():
    r = Rig({"mode": "gated", "cycle_off_s": 5}, start=True)
    r.boot_pi()
    r.pi.send(proto.POWER_OFF, {"timeout_s": 20})
    r.run(1000)
    r.pir()
    r.hal.halted = True
    t = r.run_until(lambda: not r.hal.pi_power, 5000)
    t_on = r.run_until(lambda: r.hal.pi_power, 10000)
    assert 5000 <= t_on - t <= 5200, "a minimum off time before the next boot"
    eq(r.sup.wake_reason, proto.WAKE_PIR, "woken by the trigger taken while halting")


# --- schedule and modes --------------------------------------------------------------------------

def window_maths():
    w = [[1380, 60]]  # 23:00-01:00
    for m, inside in ((1379, False), (1380, True), (1439, True), (0, True), (59, True),
                      (60, False), (720, False)):
        eq(schedule.in_window(m, w), inside, str(m))
    eq(schedule.in_window(600, [[600, 660]]), True, "start inclusive")
    eq(schedule.in_window(660, [[600, 660]]), False, "end exclusive")
    eq(schedule.in_window(5, [[5, 5]]), False, "empty")
    eq(schedule.minute_of_day(T0), 14 * 60 + 13, "minute of day")


def gated_window_start_powers_on_across_midnight():
    start = rtcclock.to_unix(2026, 12, 31, 22, 58, 0)
    r = Rig({"mode": "gated", "windows": [[1380, 60]]}, unix_s=start)
    r.run(60000)
    eq(r.hal.pi_power, False, "before the window")
    r.run_until(lambda: r.hal.pi_power, 61000)
    eq(r.sup.wake_reason, proto.WAKE_SCHEDULE, "schedule")
    eq(rtcclock.from_unix(r.sup.clock.at(r.now)[0])[3:5], (23, 0), "at 23:00")


def hybrid_window_level_and_power_off():
    start = rtcclock.to_unix(2027, 1, 1, 23, 59, 0)
    r = Rig({"mode": "hybrid", "windows": [[1380, 1]], "cycle_off_s": 5}, unix_s=start)
    r.run(100)
    eq(r.hal.pi_power, True, "inside a window that wraps midnight: on")
    eq(r.sup.wake_reason, proto.WAKE_SCHEDULE, "schedule")
    r.boot_pi()
    r.pi.send(proto.POWER_OFF, {"timeout_s": 10})
    r.hal.halted = True
    r.run_until(lambda: not r.hal.pi_power, 3000)
    r.run(30000)
    eq(r.hal.pi_power, False, "a Pi that asked to be off stays off for the rest of the window")
    r.run(3 * 60000)
    eq(r.hal.pi_power, False, "window ended (00:01)")


def hybrid_battery_level():
    r = Rig({"mode": "hybrid", "hybrid_above_mv": 13000, "cycle_off_s": 5}, battery_mv=12500)
    r.run(5000)
    eq(r.hal.pi_power, False, "below the level: gated")
    r.hal.volts["battery"] = 13100
    r.run_until(lambda: r.hal.pi_power, 20000)
    eq(r.sup.wake_reason, proto.WAKE_BATTERY, "battery")
    r.boot_pi()
    r.pi.send(proto.POWER_OFF, {"timeout_s": 10})
    r.hal.halted = True
    r.run_until(lambda: not r.hal.pi_power, 3000)
    r.run(20000)
    eq(r.hal.pi_power, False, "stays off until the level is crossed again")
    r.hal.volts["battery"] = 12900  # inside the 200 mV hysteresis: not re-armed
    r.run(20000)
    r.hal.volts["battery"] = 13100
    r.run(20000)
    eq(r.hal.pi_power, False, "hysteresis")
    r.hal.volts["battery"] = 12700
    r.run(20000)
    r.hal.volts["battery"] = 13100
    r.run_until(lambda: r.hal.pi_power, 20000)


def always_on_mode():
    r = Rig({"mode": "always_on"})
    r.run(200)
    eq(r.hal.pi_power, True, "on without power_on_at_start")
    eq(r.sup.wake_reason, proto.WAKE_POWER_ON, "power_on")


def schedule_command_persisted():
    r = Rig({"mode": "gated"}, start=True)
    r.boot_pi()
    r.pi.send(proto.SCHEDULE, {"mode": proto.MODE_HYBRID, "hybrid_above_mv": 13100,
                                "windows": [[1080, 360]]})
    r.step()
    eq(r.acks()[-1][:2], (proto.SCHEDULE, 0), "acked")
    eq(r.status()["mode"], proto.MODE_HYBRID, "mode in STATUS")
    eq(r.hal.saves, 1, "saved")
    r.pi.send(proto.SCHEDULE, {"mode": proto.MODE_HYBRID, "hybrid_above_mv": 13100,
                                "windows": [[1080, 360]]})
    r.step()
    eq(r.hal.saves, 1, "unchanged: no flash write")
    r.pi.send_raw(proto.encode_frame(proto.SCHEDULE, 77, bytes((1, 1, 0, 0))))
    r.step()
    eq(r.acks()[-1], (proto.SCHEDULE, 1, 77), "bad payload: ACK 1")
    r2 = Rig({"mode": "gated"}, state=r.hal.state)
    eq((r2.sup.plan.mode, r2.sup.plan.windows, r2.sup.plan.hybrid_above_mv),
       (proto.MODE_HYBRID, [[1080, 360]], 13100), "restored after an MCU reset")
    r3 = Rig({"mode": "gated"}, state={"schedule": {"mode": 7}})
    eq(r3.sup.plan.mode, proto.MODE_GATED, "bad saved state ignored")
    eq(r3.sup.counts["bad_state"], 1, "and counted")


def rtc_invalid_ignores_windows_until_set():
    start = rtcclock.to_unix(2026, 6, 1, 12, 0, 0)
    r = Rig({"mode": "hybrid", "windows": [[0, 1439]]}, unix_s=start, rtc_valid=False)
    r.run(3000)
    eq(r.hal.pi_power, False, "no schedule on an unset clock")
    eq(r.sup.fault(), led.FAULT_RTC, "LED fault 1")
    r.sup.state = proto.STATE_UP  # let a frame in as if the Pi were up
    r.pi.send_raw(proto.encode_frame(proto.SET_TIME, 9, struct.pack("<IB", 1700000000, 1)))
    r.step()
    eq(r.acks()[-1][:2], (proto.SET_TIME, 1), "before 2024 refused")
    r.pi.send(proto.SET_TIME, {"unix_s": start, "source": 2})
    r.step()
    eq(r.acks()[-1][:2], (proto.SET_TIME, 0), "set")
    eq(r.sup.rtc_valid, True, "valid now")
    eq(r.hal.rtc.valid(), True, "OSF cleared on the chip")


# --- frames from the Pi, status, config, WDT, LED ------------------------------------------------

def bad_frames_answered_and_counted():
    r = Rig({"mode": "always_on"}, start=True)
    r.boot_pi()
    r.pi.send_raw(b"\x00\x13\x37garbage")
    r.pi.send_raw(proto.encode_frame(0x7E, 5, b""))
    r.pi.send_raw(proto.encode_frame(proto.POWER_OFF, 6, b"\x00\x00"))
    bad = bytearray(proto.encode(proto.HEARTBEAT, 7, {"health": 1}))
    bad[-1] ^= 1
    r.pi.send_raw(bad)
    r.step()
    acks = r.acks()
    assert (0x7E, 2, 5) in acks, acks
    assert (proto.POWER_OFF, 1, 6) in acks, acks
    eq(r.hal.pi_power, True, "a bad POWER_OFF does nothing")
    st = r.status()
    eq(st["bad_frames"], 3, "unknown + bad payload + bad crc")
    assert r.sup.rx.counts["garbage_bytes"] >= 10


def status_reports_everything():
    r = Rig({"mode": "gated"}, start=True, cause=proto.RESET_WATCHDOG, battery_mv=12900)
    r.hal.temp = 42
    r.boot_pi()
    st = r.status()
    eq(st["reset_cause"], proto.RESET_WATCHDOG, "reset cause")
    eq(st["wake_reason"], proto.WAKE_POWER_ON, "wake")
    eq((st["state"], st["mode"], st["boot_count"]), (proto.STATE_UP, proto.MODE_GATED, 1), "s")
    assert abs(st["rtc_time"] - (T0 + r.now // 1000)) <= 1, st["rtc_time"]
    eq(st["temp_dc"], 42, "temp")
    assert abs(st["battery_mv"] - 12900) <= 2, st["battery_mv"]
    eq(st["solar_mv"], 0, "solar not fitted")
    eq(r.sup.fault(), led.FAULT_MCU_WDT, "LED fault 3")


def config_validation():
    cfg, bad = config.merge({"mode": "sometimes", "cells": 0, "battery_ratio": float("nan"),
                             "tick_ms": "50", "no_such_key": 1, "led": 1,
                             "windows": [[0, 1440]], "lv_cut_mv": 15000, "chemistry": "li_ion",
                             "heartbeat_timeout_s": 300})
    for k in ("mode", "cells", "battery_ratio", "tick_ms", "no_such_key", "led", "windows",
              "lv_cut_mv", "lv_recover_mv"):
        assert k in bad, k
    eq(len(bad), 9, "nothing else refused")
    eq((cfg["mode"], cfg["cells"], cfg["tick_ms"], cfg["led"], cfg["windows"]),
       ("gated", 4, 50, True, []), "defaults kept")
    eq(cfg["battery_ratio"], config.DEFAULTS["battery_ratio"], "NaN refused")
    eq((cfg["chemistry"], cfg["heartbeat_timeout_s"]), ("li_ion", 300), "good values taken")
    eq(config.thresholds(cfg), (13200, 14400), "li-ion 4 cells")
    eq(config.merge({"battery_ratio": float("inf")})[1], ["battery_ratio"], "inf refused")
    eq(config.merge({"battery_gain": 1})[0]["battery_gain"], 1.0, "int for a float ok")
    eq(config.loads("{not json")[1], ["<not json>"], "not json")
    eq(config.loads("[1, 2]")[1], ["<not an object>"], "not an object")
    eq(config.loads(None), (config.copy_defaults(), []), "no file")
    eq(config.loads('{"mode": "hybrid"}')[0]["mode"], "hybrid", "file override")
    r = Rig({"cells": -3, "mode": 5})
    r.run(500)
    eq(r.sup.bad_config, 2, "counted")
    eq(r.sup.fault(), led.FAULT_CONFIG, "LED fault 2")


def wdt_fed_every_tick():
    r = Rig({"mode": "gated"})
    r.run(10000)
    eq(r.hal.wdt_feeds, r.ticks, "one feed per tick")
    assert r.ticks >= 10000 // r.cfg["idle_tick_ms"], r.ticks
    r2 = Rig({"mode": "always_on"})
    r2.run(1000)
    assert r2.ticks >= 1000 // r2.cfg["tick_ms"], "fast ticks while the Pi is powered"


def lightsleep_only_while_the_pi_is_off():
    r = Rig({"mode": "gated"})
    r.run(1000)
    eq(r.sup.may_lightsleep(), True, "Pi off, nothing pending: light sleep")
    r.hal.pir = True
    r.sup.on_pir(r.now)
    eq(r.sup.may_lightsleep(), False, "a PIR edge waits to be handled")
    r.run(300)
    r.hal.pir = False
    eq(r.hal.pi_power, True, "the PIR powered the Pi")
    eq(r.sup.may_lightsleep(), False, "the Pi is powered: the UART must listen")
    r2 = Rig({"mode": "gated", "idle_sleep": "idle"})
    r2.run(1000)
    eq(r2.sup.may_lightsleep(), False, "idle_sleep = idle never stops the clocks")
    eq(config.merge({"idle_sleep": "deep"})[1], ["idle_sleep"], "unknown choice refused")


def led_blink_codes():
    for state, n in ((proto.STATE_OFF, 1), (proto.STATE_UP, 3), (proto.STATE_BACKOFF, 6)):
        edges = 0
        prev = False
        for t in range(0, led.CYCLE_MS, 10):
            on = led.level(t, state, 0)
            if on and not prev:
                edges += 1
            prev = on
        eq(edges, n, "blinks for state " + str(state))
    segs = led.pattern(proto.STATE_UP, led.FAULT_CONFIG)
    eq([d for on, d in segs if on], [200, 200, 200, 1000, 200, 200], "3 + long + 2")
    total = 0
    for _, d in led.pattern(proto.STATE_BACKOFF, led.FAULT_MCU_WDT):
        total += d
    assert total < led.CYCLE_MS, "the longest code fits the cycle"
    eq(led.level(4999, proto.STATE_OFF, 0, 5100), True, "PIR flash")
    r = Rig({"mode": "gated"})
    r.run(25000)
    assert r.hal.led_changes >= 4, "the LED really blinks"
    r3 = Rig({"mode": "gated", "led": False})
    r3.run(25000)
    eq(r3.hal.led_changes, 0, "LED off by config")


def ir_rail_only_while_up():
    r = Rig({"mode": "gated"}, start=True)
    r.run(500)
    eq(r.hal.ir, False, "not while booting")
    r.boot_pi()
    r.step()
    eq(r.hal.ir, True, "on while up")
    r.pi.send(proto.POWER_OFF, {"timeout_s": 5})
    r.step()
    eq(r.hal.ir, False, "shed at shutdown")


def ds3231_driver():
    for t in (946684800, T0, rtcclock.to_unix(2099, 12, 31, 23, 59, 59),
              rtcclock.to_unix(2100, 3, 1, 0, 0, 0), rtcclock.to_unix(2024, 2, 29, 12, 30, 5)):
        i2c = FakeI2C(t, osf=False)
        eq(ds3231.DS3231(i2c).read(), t, "round trip " + str(t))
    eq(hexs(ds3231.encode_time(T0)), "20131401210926", "BCD registers")
    i2c = FakeI2C(T0, osf=True)
    rtc = ds3231.DS3231(i2c)
    eq(rtc.valid(), False, "OSF set: not valid")
    eq(rtc.set(T0 + 5), True, "set")
    eq((rtc.valid(), rtc.read()), (True, T0 + 5), "valid after set")
    i2c.set_temp_c4(-94)  # -23.5 C
    eq(rtc.temp_dc(), -235, "negative temperature")
    i2c.set_temp_c4(101)  # 25.25 C
    eq(rtc.temp_dc(), 252, "positive temperature")
    i2c.regs[2] = 0x40 | 0x20 | 0x12  # 12-hour mode, PM, 12 o'clock -> 12:xx
    eq(rtcclock.from_unix(rtc.read())[3], 12, "12 h mode noon")
    i2c.regs[5] = 0x13  # month 13
    eq(rtc.read(), None, "impossible date")
    i2c.fail = True
    eq((rtc.read(), rtc.valid(), rtc.temp_dc(), rtc.set(T0)), (None, False, None, False), "I2C")
    eq(rtc.errors, 4, "errors counted")


def rtc_failure_does_not_stop_the_supervisor():
    r = Rig({"mode": "gated"})
    r.run(2000)
    r.hal.i2c.fail = True
    r.hal.adc_fail = True
    r.pir()
    r.run(2000)
    eq(r.hal.pi_power, True, "still wakes the Pi")
    r.boot_pi()
    t = r.pi.of(proto.TRIGGER)[0].fields
    assert abs(t["rtc_time"] - (T0 + 2)) <= 1, "time carried on from the last good read"
    eq(t["flags"] & proto.TRIG_RTC_VALID, 0, "but not vouched for")
    eq(r.status()["battery_mv"], 0, "battery unknown, reported as 0")


def firmware_version_in_hello():
    r = Rig({"mode": "always_on"})
    r.run(100)
    h = r.pi.of(proto.HELLO)[0].fields
    eq((h["fw_major"], h["fw_minor"]), (logic.FW_MAJOR, logic.FW_MINOR), "version")


# --- board.py on a fake ``machine``, and the tick-wrap clock -------------------------------------

TMP_DIR = ["/tmp/"]  # pytest's conftest points this at a fresh temporary directory


def _board_module():
    import sys

    import fake_machine
    sys.modules["machine"] = fake_machine
    import board
    return board, fake_machine


def board_glue_on_fake_machine():
    board, m = _board_module()
    m.reset(T0)
    cfg, bad = config.merge({"solar_fitted": True})
    eq(bad, [], "config")
    b = board.Board(cfg, TMP_DIR[0])
    pin = m.Pin.levels
    eq(pin[cfg["pin_pi_power"]], 0, "load switch starts off")
    eq(m.Pin.pulls[cfg["pin_pi_halt"]], m.Pin.PULL_DOWN, "halt input pulled down")
    b.set_pi_power(True)
    eq(pin[cfg["pin_pi_power"]], 1, "on")
    pin[cfg["pin_pi_halt"]] = 1
    pin[cfg["pin_pir"]] = 1
    eq((b.pi_halted(), b.pir_level()), (True, True), "inputs")
    m.ADC.raw[cfg["pin_battery_adc"]] = 44596
    m.ADC.raw[cfg["pin_solar_adc"]] = 1000
    eq((b.read_adc("battery"), b.read_adc("solar")), (44596, 1000), "ADC by pin")
    m.I2C.device[0].set_temp_c4(-40)
    eq(b.read_temp_dc(), -100, "DS3231 temperature")
    eq(b.rtc_read(), T0, "DS3231 time")
    eq(b.rtc_set(T0 + 100), True, "set")
    eq((b.rtc_read(), b.rtc_valid()), (T0 + 100, True), "set and valid")
    u = m.UART.last[-1]
    eq(u.baudrate, 115200, "baud")
    eq(b.uart_read(), b"", "nothing yet (UART.read would say None)")
    u.inbox.extend(b"\xa5\x5a")
    eq(b.uart_read(), b"\xa5\x5a", "bytes")
    b.uart_write(b"hi")
    eq(bytes(u.sent), b"hi", "written")
    m.set_reset_cause(m.WDT_RESET)
    eq(b.reset_cause(), proto.RESET_WATCHDOG, "WDT reset mapped")
    m.set_reset_cause(99)
    eq(b.reset_cause(), proto.RESET_UNKNOWN, "unknown cause")
    b.wdt_feed()  # not started yet: a no-op
    b.start_wdt()
    b.wdt_feed()
    eq((m.WDT.started[0].timeout, m.WDT.started[0].feeds), (8000, 1), "WDT")
    eq(b.save_state({"schedule": {"mode": 2}}), True, "saved")
    eq(b.load_state(), {"schedule": {"mode": 2}}, "loaded")
    with open(b.state_path, "w") as fh:
        fh.write("{half a fi")
    eq(b.load_state(), None, "a corrupt state file is ignored")


def board_without_ds3231_and_active_low_switch():
    board, m = _board_module()
    m.reset(None)
    cfg, _bad = config.merge({"rtc": "none", "pi_power_active_high": False, "pin_ir": -1,
                             "battery_fitted": False})
    b = board.Board(cfg, TMP_DIR[0])
    eq(m.Pin.levels[cfg["pin_pi_power"]], 1, "active low: off is high")
    b.set_pi_power(True)
    eq(m.Pin.levels[cfg["pin_pi_power"]], 0, "on is low")
    eq(b.read_adc("battery"), None, "not fitted")
    b.set_ir(True)  # no IR pin: nothing happens, nothing raises
    m.ADC.raw[4] = int(0.706 / 3.3 * 65535 + 0.5)
    eq(b.read_temp_dc(), 270, "RP2040 sensor: 0.706 V is 27 C")
    eq(b.rtc_valid(), False, "the MCU RTC is not valid until set")
    eq(b.rtc_set(T0), True, "set")
    eq((b.rtc_read(), b.rtc_valid()), (T0, True), "internal RTC")


def supervisor_runs_on_the_board_glue():
    board, m = _board_module()
    m.reset(T0)
    cfg, _bad = config.merge({"mode": "gated", "power_on_at_start": False})
    b = board.Board(cfg, TMP_DIR[0])
    m.ADC.raw[cfg["pin_battery_adc"]] = 44596
    sup = logic.Supervisor(b, cfg, 0, 0)
    sup.tick(0)
    m.Pin.levels[cfg["pin_pir"]] = 1
    sup.on_pir(10)
    sup.tick(100)
    eq(m.Pin.levels[cfg["pin_pi_power"]], 1, "PIR powered the Pi through the real pin code")
    frames = proto.Receiver(proto.MCU_TO_PI).feed(bytes(m.UART.last[-1].sent), 100)
    eq([f.type for f in frames], [proto.HELLO], "HELLO on the UART")
    assert abs(sup.meter.battery_mv - 12800) <= 2, sup.meter.battery_mv


def mono_survives_tick_wrap():
    from mono import Mono

    period = 1 << 30
    half = period >> 1
    raw = [period - 300]

    def ticks_ms():
        return raw[0]

    def ticks_diff(a, b):  # MicroPython's semantics for a 2**30 period
        return ((a - b + half) & (period - 1)) - half

    clock = Mono(ticks_ms, ticks_diff)
    seen = []
    for _ in range(10):
        raw[0] = (raw[0] + 100) & (period - 1)
        seen.append(clock.advance()[0])
    eq(seen, [100 * (i + 1) for i in range(10)], "monotonic across the wrap")
    now, raw_now = clock.advance()
    edge = (raw_now - 30) & (period - 1)
    eq(clock.at(edge, now, raw_now), now - 30, "an IRQ tick before the wrap point")


BOARD_SCENARIOS = (board_glue_on_fake_machine, board_without_ds3231_and_active_low_switch,
                   supervisor_runs_on_the_board_glue, mono_survives_tick_wrap)


def all_scenarios():
    out = [
        ("crc_check_value", crc_check_value),
        ("receiver_survives_noise", receiver_survives_noise),
        ("counters_saturate", counters_saturate),
        ("encoder_rejects_bad_values", encoder_rejects_bad_values),
    ]
    v = vectors()
    for i, fv in enumerate(v["frames"]):
        out.append(("vector_encode_" + str(i) + "_" + fv["name"], frame_encode(fv)))
        out.append(("vector_decode_" + str(i) + "_" + fv["name"], frame_decode(fv)))
    for i, iv in enumerate(v["invalid_payloads"]):
        out.append(("vector_invalid_payload_" + str(i), invalid_payload(iv)))
    for i, c in enumerate(v["receiver"]):
        out.append(("vector_receiver_" + str(i), receiver_case(c)))
    for chem, cells in (("lifepo4", 4), ("li_ion", 3), ("lead_acid", 6)):
        out.append(("low_voltage_" + chem, low_voltage(chem, cells)))
    out.extend((fn.__name__, fn) for fn in (gated_pir_wake_hello_triggers_ack, trigger_timestamp_ms,
               pending_ring_drops_oldest, pir_filter_rules, heartbeat_timeout_power_cycles,
               boot_grace_then_watchdog, boot_loop_guard_backs_off,
               backoff_retry_that_fails_backs_off_again, low_voltage_cuts_at_grace_without_halt,
               voltage_guard_unit, adc_divider_maths, power_off_with_halt_pin, power_off_timeout,
               power_cycle_requested, halted_on_its_own_is_cut, pir_during_shutdown_wakes_after,
               window_maths, gated_window_start_powers_on_across_midnight,
               hybrid_window_level_and_power_off, hybrid_battery_level, always_on_mode,
               schedule_command_persisted, rtc_invalid_ignores_windows_until_set,
               bad_frames_answered_and_counted, status_reports_everything, config_validation,
               wdt_fed_every_tick, lightsleep_only_while_the_pi_is_off, led_blink_codes,
               ir_rail_only_while_up, ds3231_driver,
               rtc_failure_does_not_stop_the_supervisor, firmware_version_in_hello))
    out.extend((fn.__name__, fn) for fn in BOARD_SCENARIOS)
    return out
