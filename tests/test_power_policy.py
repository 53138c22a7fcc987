"""Power-mode policy (exact times, no I/O) and the [power] config keys."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

from edge_app.core import config
from edge_app.core.config import PowerConfig, parse_window
from edge_app.core.errors import ConfigError
from edge_app.trap.power import (
    BUSY_GRACE_S,
    MODE_CODES,
    PowerDecision,
    PowerObservation,
    PowerPolicy,
    in_windows,
    next_window_edge,
)

MIDNIGHT = 1_790_035_200.0  # a UTC midnight (divisible by 86400)
BOOT = 1000.0  # mono at the Pi's boot in these tests
TIMEOUT = 45


def policy(**kw: object) -> PowerPolicy:
    return PowerPolicy(PowerConfig(**kw), power_off_timeout_s=TIMEOUT)  # type: ignore[arg-type]


def obs(t: float, **kw: object) -> PowerObservation:
    """An observation ``t`` s after boot; wall = 03:00 UTC + t unless given."""
    kw.setdefault("wall", MIDNIGHT + 3 * 3600 + t)
    return PowerObservation(mono=BOOT + t, uptime_s=t, **kw)  # type: ignore[arg-type]


def run_until_shutdown(p: PowerPolicy, make: object, limit: int = 100) -> tuple[float, str]:
    """Drive the policy as the adapter does: decide, sleep to next_deadline, decide again."""
    assert callable(make)
    t = 0.0
    for _ in range(limit):
        d: PowerDecision = p.decide(make(t))
        if d.shutdown:
            return t, d.reason
        deadline = p.next_deadline()
        assert deadline is not None, f"stays up with no deadline at t={t}: {d.reason}"
        assert deadline > BOOT + t, "a deadline in the past would spin"
        t = deadline - BOOT
    raise AssertionError("never shut down")


# -- always-on -----------------------------------------------------------------------------


def test_always_on_stays_up_and_sleeps_until_an_event() -> None:
    p = policy()
    d = p.decide(obs(99999.0, outbox_depth={"mqtt": 0}))
    assert not d.shutdown
    assert d.power_off_timeout_s == TIMEOUT
    assert p.next_deadline() is None


# -- gated -----------------------------------------------------------------------------------


def test_gated_shuts_down_idle_shutdown_s_after_the_last_trigger() -> None:
    p = policy(mode="gated", idle_shutdown_s=20.0)
    d = p.decide(obs(12.0, last_trigger_mono=BOOT + 10.0))
    assert not d.shutdown
    assert p.next_deadline() == BOOT + 30.0
    assert not p.decide(obs(29.999, last_trigger_mono=BOOT + 10.0)).shutdown
    d = p.decide(obs(30.0, last_trigger_mono=BOOT + 10.0))
    assert d.shutdown
    assert "no trigger for 20 s" in d.reason
    assert p.next_deadline() is None


def test_gated_without_a_trigger_counts_from_boot() -> None:
    p = policy(mode="gated", idle_shutdown_s=20.0)
    t, reason = run_until_shutdown(p, lambda t: obs(t))
    assert t == 20.0
    assert "outbox delivered" in reason


def test_gated_waits_for_every_link_to_deliver() -> None:
    p = policy(mode="gated", idle_shutdown_s=20.0, max_uptime_s=300.0)
    d = p.decide(obs(50.0, outbox_depth={"mqtt": 0, "lorawan": 2}))
    assert not d.shutdown
    assert "lorawan 2" in d.reason
    assert p.next_deadline() == BOOT + 300.0  # only the cap can end it without an event
    assert p.decide(obs(51.0, outbox_depth={"mqtt": 0, "lorawan": 0})).shutdown


def test_gated_waits_for_busy_stages() -> None:
    p = policy(mode="gated")
    d = p.decide(obs(100.0, busy=frozenset({"detect", "store"})))
    assert not d.shutdown
    assert "detect, store" in d.reason
    assert p.decide(obs(100.0)).shutdown


def test_max_uptime_wins_over_an_undelivered_outbox() -> None:
    p = policy(mode="gated", idle_shutdown_s=20.0, max_uptime_s=120.0)
    t, reason = run_until_shutdown(p, lambda t: obs(t, outbox_depth={"mqtt": 7}))
    assert t == 120.0
    assert "max uptime" in reason
    assert "mqtt 7 left for the next wake" in reason


def test_a_busy_stage_gets_a_grace_then_the_cap_wins() -> None:
    """A hung stage is busy forever: the grace must end."""
    p = policy(mode="gated", idle_shutdown_s=20.0, max_uptime_s=120.0)
    t, reason = run_until_shutdown(p, lambda t: obs(t, busy=frozenset({"capture"})))
    assert t == 120.0 + BUSY_GRACE_S
    assert "max uptime" in reason
    d = policy(mode="gated", idle_shutdown_s=20.0, max_uptime_s=120.0).decide(
        obs(130.0, busy=frozenset({"capture"})))
    assert not d.shutdown
    assert "letting capture finish" in d.reason


def test_a_new_trigger_extends_the_wake() -> None:
    p = policy(mode="gated", idle_shutdown_s=20.0, max_uptime_s=300.0)
    assert not p.decide(obs(19.0)).shutdown
    assert not p.decide(obs(25.0, last_trigger_mono=BOOT + 24.0)).shutdown
    assert p.next_deadline() == BOOT + 44.0


def test_a_mode_change_in_the_observation_wins() -> None:
    p = policy(mode="gated")
    assert not p.decide(obs(1000.0, mode="always-on")).shutdown
    assert p.decide(obs(1000.0)).shutdown


# -- hybrid ----------------------------------------------------------------------------------


def test_hybrid_stays_up_inside_a_window_until_its_end() -> None:
    p = policy(mode="hybrid", windows=["21:00-02:30"])  # wraps midnight
    wall = MIDNIGHT + 3600  # 01:00 UTC
    d = p.decide(obs(5000.0, wall=wall))
    assert not d.shutdown
    assert "window" in d.reason
    assert p.next_deadline() == pytest.approx(BOOT + 5000.0 + 5400.0)  # 02:30
    # 02:30: outside, idle and delivered → gated rules shut it down.
    assert p.decide(obs(10400.0, wall=MIDNIGHT + 9000)).shutdown


def test_hybrid_outside_a_window_is_gated_but_wakes_for_the_window_start() -> None:
    p = policy(mode="hybrid", windows=["08:00-21:00"], max_uptime_s=3600.0,
               idle_shutdown_s=60.0)
    # 07:59:30 UTC, a trigger 10 s ago: gated would wait 50 s, the window starts in 30 s.
    d = p.decide(obs(100.0, wall=MIDNIGHT + 8 * 3600 - 30, last_trigger_mono=BOOT + 90.0))
    assert not d.shutdown
    assert p.next_deadline() == pytest.approx(BOOT + 130.0)
    d = p.decide(obs(130.0, wall=MIDNIGHT + 8 * 3600, last_trigger_mono=BOOT + 90.0))
    assert not d.shutdown
    assert "window" in d.reason


def test_hybrid_window_membership_can_be_given() -> None:
    p = policy(mode="hybrid", windows=["08:00-21:00"])
    assert not p.decide(obs(1000.0, in_window=True)).shutdown
    assert p.next_deadline() is None
    assert p.decide(obs(1000.0, in_window=False)).shutdown


def test_hybrid_battery_rule_has_hysteresis() -> None:
    p = policy(mode="hybrid", hybrid_above_v=13.2, hybrid_hysteresis_v=0.2)
    at = 1000.0
    assert p.decide(obs(at, battery_v=13.1)).shutdown  # below: gated, idle → off
    assert not p.decide(obs(at, battery_v=13.2)).shutdown  # at the level: always-on
    assert not p.decide(obs(at, battery_v=13.05)).shutdown  # sagging under load: still on
    assert p.decide(obs(at, battery_v=12.99)).shutdown  # below level - hysteresis: off
    assert p.decide(obs(at, battery_v=13.1)).shutdown  # must climb back to 13.2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_hybrid_refuses_a_reading_that_is_not_a_voltage(bad: float) -> None:
    p = policy(mode="hybrid", hybrid_above_v=13.2)
    assert not p.decide(obs(1000.0, battery_v=13.5)).shutdown
    assert p.decide(obs(1000.0, battery_v=bad)).shutdown  # unknown → the safe side, gated
    assert p.refused_battery == 1
    assert p.decide(obs(1000.0, battery_v=None)).shutdown
    assert p.refused_battery == 1


# -- schedule and windows --------------------------------------------------------------------


def test_schedule_holds_what_the_mcu_needs() -> None:
    s = policy(mode="hybrid", windows=["08:00-21:00", "23:30-00:15"],
               hybrid_above_v=13.25).schedule()
    assert s.mode == MODE_CODES["hybrid"] == 2
    assert s.windows == ((480, 1260), (1410, 15))
    assert s.hybrid_above_mv == 13250
    g = policy(mode="gated", windows=["08:00-21:00"]).schedule()
    assert (g.mode, g.windows, g.hybrid_above_mv) == (1, (), 0)
    assert policy().schedule().mode == 0


@pytest.mark.parametrize(
    ("window", "minute", "inside"),
    [("21:00-01:00", 0, True), ("21:00-01:00", 59, True), ("21:00-01:00", 60, False),
     ("21:00-01:00", 21 * 60 - 1, False), ("21:00-01:00", 21 * 60, True),
     ("08:00-21:00", 8 * 60 - 1, False), ("08:00-21:00", 8 * 60, True),
     ("08:00-21:00", 21 * 60 - 1, True), ("08:00-21:00", 21 * 60, False)],
)
def test_windows_include_their_start_not_their_end(window: str, minute: int,
                                                   inside: bool) -> None:
    windows = (parse_window(window),)
    assert in_windows(MIDNIGHT + 86400 * 3 + minute * 60 + 30, windows) is inside


def test_next_window_edge() -> None:
    windows = (parse_window("08:00-21:00"),)
    assert next_window_edge(MIDNIGHT + 3600, windows) == MIDNIGHT + 8 * 3600
    assert next_window_edge(MIDNIGHT + 8 * 3600, windows) == MIDNIGHT + 21 * 3600
    assert next_window_edge(MIDNIGHT + 22 * 3600, windows) == MIDNIGHT + 86400 + 8 * 3600
    assert next_window_edge(MIDNIGHT, ()) is None


# -- config ----------------------------------------------------------------------------------

BASE = {"unit": {"id": "LL-042"}, "mqtt": {"host": "127.0.0.1", "tls": False},
        "mcu": {"enabled": True}}


def parse(**power: object) -> config.Config:
    return config.parse({**BASE, "power": power})


def test_power_defaults_keep_todays_always_on_trap() -> None:
    cfg = config.parse({"unit": {"id": "LL-042"}, "mqtt": {"host": "127.0.0.1", "tls": False}})
    assert cfg.power.mode == "always-on"
    assert any(line.startswith("power.windows = []") for line in config.explain())


def test_good_power_configs_pass() -> None:
    cfg = parse(mode="hybrid", windows=["08:00-21:00"], hybrid_above_v=13.3)
    assert cfg.power.windows == ["08:00-21:00"]
    assert parse(mode="gated", idle_shutdown_s=5, max_uptime_s=60).power.mode == "gated"


@pytest.mark.parametrize(
    ("power", "key"),
    [
        ({"mode": "sleepy"}, "power.mode"),
        ({"windows": ["8:00-21:00"]}, "power.windows[0]"),
        ({"windows": ["08:00-21:00", "24:00-01:00"]}, "power.windows[1]"),
        ({"windows": ["08:00-08:00"]}, "power.windows[0]"),
        ({"windows": "08:00-21:00"}, "power.windows"),
        ({"windows": [f"0{i}:00-0{i}:30" for i in range(7)]}, "power.windows"),
        ({"idle_shutdown_s": 0}, "power.idle_shutdown_s"),
        ({"idle_shutdown_s": 60, "max_uptime_s": 60}, "power.max_uptime_s"),
        ({"hybrid_above_v": 70.0}, "power.hybrid_above_v"),
        ({"hybrid_above_v": 0.1, "hybrid_hysteresis_v": 0.2}, "power.hybrid_hysteresis_v"),
        ({"mode": "hybrid"}, "power.windows"),
        ({"max_uptime_s": "300"}, "power.max_uptime_s"),
        ({"extra": 1}, "power.extra"),
    ],
)
def test_bad_power_values_name_the_key(power: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(**power)
    assert e.value.key == key


def test_gated_without_the_mcu_is_refused() -> None:
    data = {"unit": {"id": "LL-042"}, "mqtt": {"host": "127.0.0.1", "tls": False},
            "power": {"mode": "gated"}}
    with pytest.raises(ConfigError) as e:
        config.parse(data)
    assert e.value.key == "power.mode"
    assert "supervisor MCU" in e.value.reason


def test_check_config_exits_2_naming_the_power_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[unit]\nid = "LL-042"\n[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
                 '[mcu]\nenabled = true\n[power]\nmode = "hybrid"\nwindows = ["18:00-7:00"]\n')
    r = subprocess.run([sys.executable, "-m", "edge_app", "check-config", "--schema-only",
                        str(f)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "power.windows[0]" in r.stderr


def test_policy_takes_the_configs_windows() -> None:
    cfg = parse(mode="hybrid", windows=["08:00-21:00"])
    p = PowerPolicy(cfg.power, cfg.mcu.power_off_timeout_s)
    assert p.windows == ((480, 1260),)
    assert p.decide(obs(10.0, wall=MIDNIGHT + 9 * 3600)).power_off_timeout_s == \
        cfg.mcu.power_off_timeout_s
    assert dataclasses.asdict(p.schedule())["windows"] == ((480, 1260),)
