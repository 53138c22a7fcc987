"""The cellular link policy and the ``[cellular]`` section: pure, exact times, no bus."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from edge_app.core.clock import FakeClock
from edge_app.core.errors import ConfigError
from edge_app.trap.cellular.config import CellularConfig, parse_cellular
from edge_app.trap.cellular.policy import (
    INFLIGHT_GRACE_S,
    RESCAN_S,
    LinkObservation,
    LinkPolicy,
    ModemState,
)

NOON_UTC = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()


class Link:
    """The policy driven by a FakeClock, with a modem that does what it is told at once."""

    def __init__(self, cfg: CellularConfig, modem: ModemState = "disabled",
                 wall: float = NOON_UTC) -> None:
        self.clock = FakeClock(start_mono=0.0, start_wall=wall)
        self.policy = LinkPolicy(cfg, start_mono=0.0, rng=random.Random(1))
        self.modem: ModemState = modem
        self.depth = 0
        self.in_flight = 0
        self.activity: float | None = None
        self.actions: list[str] = []

    def step(self, *, follow: bool = True) -> Any:
        d = self.policy.decide(LinkObservation(
            mono=self.clock.monotonic(), wall=self.clock.wall(), outbox_depth=self.depth,
            in_flight=self.in_flight, last_activity_mono=self.activity, modem=self.modem))
        assert d.next_check_mono >= self.clock.monotonic()
        if d.action != "none":
            self.actions.append(d.action)
        if follow:
            self.modem = {"enable-modem": "registered", "connect": "connected",
                          "disconnect": "registered", "disable-modem": "disabled"}.get(
                              d.action, self.modem)  # type: ignore[assignment]
        return d

    def run_until(self, t: float) -> None:
        """Follow the policy's own deadlines up to mono ``t`` (how many looks it takes)."""
        while self.clock.monotonic() < t:
            d = self.step()
            self.clock.advance(max(0.0, min(d.next_check_mono, t) - self.clock.monotonic())
                               or 0.001)


def cfg(**over: Any) -> CellularConfig:
    return parse_cellular({"enabled": True, **over})


def test_always_enables_then_connects_then_holds() -> None:
    link = Link(cfg(mode="always"))
    assert link.step().action == "enable-modem"
    assert link.step().action == "connect"
    d = link.step()
    assert (d.action, d.want_up) == ("none", True)
    assert d.next_check_mono == pytest.approx(RESCAN_S)  # a backstop, not a busy loop
    link.modem = "searching"  # registration lost
    d = link.step()
    assert d.action == "none"
    assert "waiting for a network" in d.reason
    link.modem = "registered"
    assert link.step().action == "connect"


def test_on_demand_connects_for_the_outbox_and_drops_after_idle() -> None:
    link = Link(cfg(mode="on-demand", status_every_s=0, idle_disconnect_s=120))
    d = link.step()
    assert (d.action, d.want_up) == ("none", False)  # disabled and nothing to send
    link.depth = 2
    assert link.step().action == "enable-modem"
    assert link.step().action == "connect"
    link.clock.advance(10)
    link.depth, link.activity = 0, 10.0
    d = link.step()
    assert d.action == "none"
    assert d.next_check_mono == pytest.approx(130.0)  # idle deadline from the last activity
    link.clock.advance(119.0)
    assert link.step().action == "none"
    link.clock.advance(1.0)
    assert link.step().action == "disconnect"
    assert link.step().action == "disable-modem"
    assert link.actions == ["enable-modem", "connect", "disconnect", "disable-modem"]


def test_on_demand_holds_while_messages_are_in_flight() -> None:
    link = Link(cfg(mode="on-demand", status_every_s=0, idle_disconnect_s=60), "connected")
    link.in_flight = 1
    link.clock.advance(600)  # long past the idle period, but a PUBACK is outstanding
    d = link.step()
    assert (d.action, d.want_up) == ("none", True)
    link.in_flight = 0
    link.activity = link.clock.monotonic()
    assert link.step().action == "none"  # the idle period starts from that activity
    link.clock.advance(60)
    assert link.step().action == "disconnect"


def test_inflight_grace_when_the_window_closes() -> None:
    # window 11:00-12:00 UTC, now 11:59:50 with one message in flight
    link = Link(cfg(mode="windows", windows=["11:00-12:00"]), "connected",
                wall=NOON_UTC - 10)
    assert link.step().action == "none"
    link.in_flight = 1
    link.clock.advance(10)
    d = link.step()
    assert (d.action, d.want_up) == ("none", False)
    assert d.next_check_mono == pytest.approx(10 + INFLIGHT_GRACE_S)
    link.clock.advance(INFLIGHT_GRACE_S)
    assert link.step().action == "disconnect"  # its QoS 1 retry survives the drop


def test_on_demand_schedule_for_commands_and_status() -> None:
    link = Link(cfg(mode="on-demand", status_every_s=1800, idle_disconnect_s=120))
    assert link.step().action == "enable-modem"  # due at start: the station hears a boot
    assert link.step().action == "connect"
    link.run_until(1900.0)
    assert link.actions == ["enable-modem", "connect", "disconnect", "disable-modem"]
    assert link.modem == "disabled"
    # the next one is due status_every_s after the link was last up (~125 s), not before
    link.run_until(1920.0)
    assert len(link.actions) == 4
    link.run_until(1940.0)
    assert link.actions[4:] == ["enable-modem", "connect"]
    link.run_until(2 * 1940.0)
    assert link.actions.count("connect") == 3


def test_windows_in_local_time() -> None:
    # 18:00-07:00 in Vladivostok (UTC+10) = 08:00-21:00 UTC; noon UTC is inside
    c = cfg(mode="windows", windows=["18:00-07:00"], timezone="Asia/Vladivostok")
    link = Link(c, wall=datetime(2026, 12, 3, 7, 0, tzinfo=UTC).timestamp())
    d = link.step()
    assert (d.action, d.want_up) == ("none", False)
    assert d.next_check_mono == pytest.approx(3600.0)  # 08:00 UTC, the window's start
    link.clock.advance(3600.0)
    assert link.step().action == "enable-modem"
    assert link.step().action == "connect"
    d = link.step()
    assert d.next_check_mono == pytest.approx(3600.0 + 13 * 3600.0)  # 21:00 UTC
    link.clock.advance(13 * 3600.0)
    assert link.step().action == "disconnect"


def test_failed_connects_back_off_and_a_success_resets() -> None:
    link = Link(cfg(mode="always", retry_base_s=30, retry_cap_s=600), "registered")
    assert link.step(follow=False).action == "connect"
    retry = link.policy.connect_failed(link.clock.monotonic())
    assert 15.0 <= retry <= 30.0  # equal jitter: half the step at least
    d = link.step(follow=False)
    assert d.action == "none"
    assert d.next_check_mono == pytest.approx(retry)
    delays = []
    for _ in range(6):
        link.clock.advance(link.policy.retry_at - link.clock.monotonic())
        assert link.step(follow=False).action == "connect"
        delays.append(link.policy.connect_failed(link.clock.monotonic())
                      - link.clock.monotonic())
    assert delays[-1] <= 600.0
    assert delays[-1] >= 300.0
    assert link.policy.failures == 7
    link.clock.advance(link.policy.retry_at - link.clock.monotonic())
    assert link.step().action == "connect"
    link.step()
    assert link.policy.failures == 0


def test_a_connect_without_a_bearer_times_out_into_backoff() -> None:
    link = Link(cfg(mode="always", connect_timeout_s=90), "registered")
    assert link.step(follow=False).action == "connect"
    link.modem = "connecting"
    d = link.step(follow=False)
    assert d.next_check_mono <= 90.0
    link.clock.advance(90.0)
    link.modem = "registered"
    d = link.step(follow=False)
    assert link.policy.failures == 1
    assert d.action == "none"
    assert "backing off" in d.reason


def test_absent_or_locked_modem_waits_without_spinning() -> None:
    for state in ("absent", "locked", "failed"):
        link = Link(cfg(mode="always"), state)  # type: ignore[arg-type]
        d = link.step()
        assert d.action == "none"
        assert d.want_up
        assert d.next_check_mono == pytest.approx(RESCAN_S)


def test_modem_left_on_when_configured() -> None:
    link = Link(cfg(mode="on-demand", status_every_s=0, modem_off_when_idle=False),
                "registered")
    assert link.step().action == "none"


@pytest.mark.parametrize(("data", "key"), [
    ({"mode": "sometimes"}, "cellular.mode"),
    ({"mode": "windows"}, "cellular.windows"),
    ({"windows": ["25:00-01:00"]}, "cellular.windows[0]"),
    ({"timezone": "Mars/Olympus"}, "cellular.timezone"),
    ({"plan_mb": float("nan")}, "cellular.plan_mb"),
    ({"plan_mb": -1}, "cellular.plan_mb"),
    ({"cycle_day": 32}, "cellular.cycle_day"),
    ({"cycle_day": 1.5}, "cellular.cycle_day"),
    ({"enabled": 1}, "cellular.enabled"),
    ({"apn": 5}, "cellular.apn"),
    ({"retry_base_s": 600, "retry_cap_s": 60}, "cellular.retry_cap_s"),
    ({"speed": 1}, "cellular.speed"),
])
def test_config_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_cellular(data)
    assert e.value.key == key


def test_config_defaults_and_values() -> None:
    assert parse_cellular({}) == CellularConfig()
    c = parse_cellular({"mode": "windows", "windows": ["08:00-21:00"], "plan_mb": 300,
                        "cycle_day": 31, "apn": "internet"})
    assert c.window_minutes() == ((480, 1260),)
    assert isinstance(c.plan_mb, float)
    assert c.cycle_day == 31
