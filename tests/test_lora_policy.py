"""The LoRa send policy and its downlink door on their own: no modem, no database, any time."""

from __future__ import annotations

import math
import random

import pytest

from edge_app.core.backoff import Backoff
from edge_app.core.guard import Refusals, Refused
from edge_app.trap.store.lora_rows import Waiting
from edge_app.trap.uplink.airtime import DutyCycleLedger, Tx, band_plan, uplink_airtime_s
from edge_app.trap.uplink.lora_door import Command, DownlinkDoor, check_command, read_command
from edge_app.trap.uplink.lora_policy import (
    LORA_ONLY_RETRY,
    NO_ACK_JITTER_S,
    REJOIN_AFTER_NO_ACKS,
    STATUS_RECHECK_S,
    AlertOrder,
    LinkHealth,
    StatusSchedule,
    after_attempts,
    plan_step,
)
from edge_app.trap.uplink.lorawan import Downlink, SendStatus

T = 1_790_000_000.0
HOUR = 3600.0
ORDER = AlertOrder(["person", "vehicle", "tiger", "leopard", "animal"], 6 * HOUR, 60.0)
SF12 = uplink_airtime_s(11, 12)


def waiting(rid: int, ts: float, label: str = "animal", species: str | None = "leopard",
            *, elsewhere: bool = False, next_at: float | None = None,
            created: float | None = None, attempts: int = 0) -> Waiting:
    return Waiting(rid, f"U-{rid}", rid, label, species, 0.9, ts, "{}",
                   ts if created is None else created, attempts,
                   ts if next_at is None else next_at, elsewhere)


def test_people_go_before_leopards_and_the_oldest_first_within_a_class() -> None:
    queue = ORDER.triage([waiting(1, T), waiting(2, T + 5, "person", None), waiting(3, T - 5),
                          waiting(4, T + 9, "animal", "other")], T + 10).queue
    assert [w.row_id for w in queue] == [2, 3, 1, 4]
    assert ORDER.rank("animal", "tiger") == 2
    assert ORDER.rank("bird", None) == 5  # unlisted: last


def test_stale_alerts_leave_the_lora_queue_only_when_another_link_carries_them() -> None:
    now = T + 10 * HOUR
    fresh = waiting(1, now - HOUR)
    carried = waiting(2, now - 7 * HOUR, elsewhere=True)
    lora_only_old = waiting(3, now - 9 * HOUR)
    lora_only_newer = waiting(4, now - 7 * HOUR)
    person_old = waiting(5, now - 8 * HOUR, "person", None)
    t = ORDER.triage([fresh, carried, lora_only_old, lora_only_newer, person_old], now)
    assert [w.row_id for w in t.drop] == [2]
    # Fresh first; then the stale LoRa-only ones, most important, then newest, first.
    assert [w.row_id for w in t.queue] == [1, 5, 4, 3]


def test_fallback_holds_an_alert_for_mqtt_and_reports_when_the_next_one_may_go() -> None:
    a = waiting(1, T, created=T)
    b = waiting(2, T, created=T + 30)
    assert ORDER.first_eligible([a, b], T + 10, hold_for_mqtt=False) == (a, math.inf)
    assert ORDER.first_eligible([a, b], T + 10, hold_for_mqtt=True) == (None, T + 60)
    assert ORDER.first_eligible([a, b], T + 60, hold_for_mqtt=True) == (a, math.inf)
    retry = waiting(3, T, next_at=T + 500)
    assert ORDER.first_eligible([retry, b], T + 100, hold_for_mqtt=False) == (b, T + 500)


def test_status_goes_when_due_first_when_overdue_and_never_blocks_alerts_when_it_fails() -> None:
    ledger = DutyCycleLedger(band_plan("RU864"))
    status = StatusSchedule(every_s=6 * HOUR, last_at=T - 6 * HOUR)
    alert = waiting(1, T)
    # Due (not overdue): the alert goes first, the status after it.
    assert plan_step(T, alert, math.inf, status, ledger, SF12, SF12, 3).action == "alert"
    assert plan_step(T, None, math.inf, status, ledger, SF12, SF12, 3).action == "status"
    # A whole interval late (alerts kept the airtime busy): it jumps the queue.
    status.last_at = T - 12 * HOUR
    assert status.overdue(T)
    assert plan_step(T, alert, math.inf, status, ledger, SF12, SF12, 3).action == "status"
    status.failed(T)  # the modem refused it: alerts are not held up
    assert not status.overdue(T + 1)
    assert plan_step(T + 1, alert, math.inf, status, ledger, SF12, SF12, 3).action == "alert"
    status.sent(T + 10)
    assert status.due_at(T + 10) == T + 10 + 6 * HOUR
    status.requested = True  # a downlink asked for one
    assert status.overdue(T + 11)


def test_the_ledger_decides_when_and_a_status_keeps_airtime_for_alerts() -> None:
    ledger = DutyCycleLedger(band_plan("RU864"), fair_use=True)
    ledger.record(Tx(T, ledger.plan.default_band.name, SF12, "alert"))
    plan = plan_step(T + 1, waiting(1, T), math.inf, StatusSchedule(0.0, T), ledger, SF12,
                     SF12, 3)
    assert plan.action == "wait"
    assert plan.wake_at == pytest.approx(T + SF12 / 0.01 + 1.0)  # the time-off, then again
    for i in range(18):  # spend the fair-use day but a little
        ledger.record(Tx(T - 50_000 + i, ledger.plan.default_band.name, SF12, "alert"))
    status = StatusSchedule(HOUR, T - 2 * HOUR)
    plan = plan_step(T + 10_000, None, math.inf, status, ledger, SF12, SF12, 3)
    assert plan.action == "wait"  # the last of the day's airtime is kept for three alerts
    assert plan.wake_at <= T + 10_000 + STATUS_RECHECK_S
    assert plan_step(T + 10_000, None, math.inf, status, ledger, SF12, SF12, 0).action == \
        "status"
    assert plan_step(T + 10_000, waiting(2, T + 9_000), math.inf, status, ledger, SF12, SF12,
                     3).action == "alert"


def test_failures_map_to_reactions_and_lost_acks_in_a_row_mean_a_lost_session() -> None:
    health = LinkHealth(Backoff(30.0, 3600.0, "equal"), random.Random(1))
    busy = health.after_failure(SendStatus.BUSY, None, T)
    assert (busy.retry_at, busy.counter) == (T + 3.0, "busy")
    assert health.after_failure(SendStatus.DUTY_CYCLE, 12.5, T).retry_at == T + 12.5
    timeout = health.after_failure(SendStatus.TIMEOUT, None, T)
    assert (timeout.reprovision, timeout.rejoin, timeout.counter) == (True, False, "timeouts")
    reset = health.after_failure(SendStatus.RESET, None, T)
    assert (reset.reprovision, reset.rejoin, reset.counter) == (True, True, "modem_resets")
    for n in range(1, REJOIN_AFTER_NO_ACKS + 1):
        r = health.after_failure(SendStatus.NO_ACK, None, T)
        assert T <= r.retry_at <= T + NO_ACK_JITTER_S
        assert r.rejoin is (n == REJOIN_AFTER_NO_ACKS)
    health.acked()
    assert not health.after_failure(SendStatus.NO_ACK, None, T).rejoin


def test_joins_and_modem_probes_back_off_with_equal_jitter() -> None:
    health = LinkHealth(Backoff(30.0, 3600.0, "equal"), random.Random(4))
    gaps = [health.join_failed(T, None) - T for _ in range(8)]
    for n, gap in enumerate(gaps):
        step = min(3600.0, 30.0 * 2**n)
        assert step / 2 <= gap <= step
    assert health.join_failed(T, 7200.0) - T == 7200.0  # the module's own hint wins if longer
    health.joined()
    assert health.join_failures == 0
    assert 5.0 <= health.modem_failed(T) - T <= 10.0


def test_an_alert_is_given_up_on_lora_only_when_another_link_carries_it() -> None:
    rng = random.Random(3)
    carried = waiting(1, T, elsewhere=True)
    lora_only = waiting(2, T)
    assert after_attempts(carried, 3, 8, T + 5, T, rng) == T + 5
    assert after_attempts(carried, 8, 8, T + 5, T, rng) is None
    again = after_attempts(lora_only, 8, 8, T + 5, T, rng)
    assert again is not None
    assert T + LORA_ONLY_RETRY.base_s / 2 <= again <= T + LORA_ONLY_RETRY.base_s
    later = after_attempts(lora_only, 14, 8, T + 5, T, rng)
    assert later is not None
    assert later - T <= LORA_ONLY_RETRY.cap_s


# -- the downlink door ----------------------------------------------------------------------


@pytest.mark.parametrize(("data", "kind"), [
    ({"command": "set_threshold", "target": "species", "threshold": float("nan")},
     "non_finite"),
    ({"command": "set_threshold", "target": "species", "threshold": float("inf")},
     "non_finite"),
    ({"command": "set_threshold", "target": "species", "threshold": 1.5}, "out_of_range"),
    ({"command": "set_threshold", "target": "species", "threshold": True}, "bad_type"),
    ({"command": "set_threshold", "target": "moon", "threshold": 0.5}, "out_of_range"),
    ({"command": "set_threshold", "threshold": 0.5}, "missing"),
    ({"command": "set_status_interval", "hours": float("nan")}, "non_finite"),
    ({"command": "set_status_interval", "hours": 1000}, "out_of_range"),
    ({"command": "set_mode", "mode": "never"}, "out_of_range"),
    ({"command": "self_destruct"}, "bad_downlink"),
    ({"command": 7}, "bad_type"),
])
def test_the_downlink_door_refuses_what_the_codec_might_let_through(
    data: dict[str, object], kind: str
) -> None:
    with pytest.raises(Refused) as e:
        check_command(data)
    assert e.value.kind == kind


def test_the_downlink_door_turns_valid_commands_into_typed_ones() -> None:
    from edge_app.core import lora_codec as codec

    payload = codec.encode_downlink({"command": "set_threshold", "target": "detector",
                                     "threshold": 0.42}).payload
    assert read_command(codec.PORT_COMMAND, payload) == Command(
        "set_threshold", key="detector.score_threshold", value=0.42)
    assert check_command({"command": "set_mode", "mode": "fallback"}).mode == "fallback"
    with pytest.raises(Refused) as e:
        read_command(codec.PORT_COMMAND, b"\x09\x09")
    assert (e.value.kind, "unknown command 0x09" in e.value.reason) == ("bad_downlink", True)
    with pytest.raises(Refused) as e:
        read_command(codec.PORT_COMMAND, bytes(300))
    assert e.value.kind == "too_large"


def test_refused_downlinks_are_counted_per_kind_and_change_nothing() -> None:
    from edge_app.core import lora_codec as codec

    counts: dict[str, float] = {}
    acted: list[Command] = []

    def count(**d: float) -> None:
        for k, v in d.items():
            counts[k] = counts.get(k, 0) + v

    door = DownlinkDoor(Refusals("test"), count, lambda: True, acted.append)
    good = codec.encode_downlink({"command": "request_status"}).payload
    door.handle([Downlink(20, b"\x09"), Downlink(99, good), Downlink(20, good)])
    assert acted == [Command("request_status")]
    assert counts == {"downlinks": 3, "bad_downlinks": 2, "commands": 1}
    assert door.refusals.snapshot() == {"bad_downlink": 2}
