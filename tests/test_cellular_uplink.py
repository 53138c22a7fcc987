"""The data plan inside the MQTT link: full images wait while the month's projection would not
fit them (alerts and thumbnails never do), stay ready in the outbox, and go after the month
rolls over. The link's row side (:class:`MqttRows`) on a real SQLite outbox, a FakeClock and a
real :class:`DataBudget`; the publish is a fake broker (it only hands out message ids)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from store_support import burst_and_verdict, make_cfg

from edge_app.core.clock import FakeClock
from edge_app.core.errors import ConfigError
from edge_app.trap.cellular.budget import DataBudget
from edge_app.trap.store.outbox import Link
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.store.receipts import Receipts
from edge_app.trap.uplink.mqtt_policy import SendPolicy
from edge_app.trap.uplink.mqtt_rows import IMAGE_HOLD_S, MqttRows

UTC = ZoneInfo("UTC")


class FakeBroker:
    """A fake publish (named so): every message gets the next id, nothing is delivered."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def __call__(self, topic: str, body: bytes, props: Any) -> tuple[int | None, str]:
        self.topics.append(topic)
        return len(self.topics), ""


def test_full_images_held_while_the_plan_is_spent_then_sent_after_rollover(
        tmp_path: Path) -> None:
    clock = FakeClock(start_mono=0.0,
                      start_wall=datetime(2026, 12, 20, 12, tzinfo=UTC).timestamp())
    cfg = make_cfg(tmp_path / "data", outbox={"image_expiry_s": 0, "max_inflight": 64},
                   cellular={"enabled": True, "plan_mb": 1.0})
    budget = DataBudget(1.0, 1, 0.1, UTC, datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    budget.observe_bearer("/b/0", 0, 850_000, clock.wall())  # the month is nearly spent
    asked: list[int] = []

    def gate(size: int, wall: float) -> bool:
        asked.append(size)
        return budget.allows("full_image", size, wall)

    with EventStore(cfg, clock) as store:
        store.record(*burst_and_verdict("alert", wall=clock.wall()))
        outbox = store.outbox
        policy = SendPolicy(cfg.mqtt, cfg.outbox, clock.monotonic())
        policy.connected(clock.monotonic(), None, None)
        rows = MqttRows(outbox, Receipts(outbox.conn, clock, cfg.outbox), policy, lambda: cfg,
                        lambda **kw: None, lambda kinds: None, image_gate=gate)
        broker = FakeBroker()
        rows.pump(broker, clock.wall(), clock.monotonic())
        started = sorted(t.kind for t in policy.transfers.values())
        assert "image" not in started
        assert {"alert", "thumb"} <= set(started)
        assert len(asked) == 1  # asked once, with the file's size
        assert asked[0] > 1000
        assert rows.images_held
        image = [r for r in outbox.ls(50) if r.kind == "image"]
        assert [r.state for r in image] == ["ready"]
        # held: the link's timers wake it at the hold's end, not in a loop
        mono = clock.monotonic()
        assert policy.images_from() == pytest.approx(mono + IMAGE_HOLD_S)
        assert rows.timers(clock.wall(), mono)[1] == pytest.approx(clock.wall() + IMAGE_HOLD_S)
        rows.pump(broker, clock.wall(), mono)  # the link's next turn before the hold ends
        assert len(asked) == 1
        clock.advance(IMAGE_HOLD_S)  # still December: asked again, still held
        rows.pump(broker, clock.wall(), clock.monotonic())
        assert len(asked) == 2
        assert "image" not in {t.kind for t in policy.transfers.values()}
        clock.advance(datetime(2027, 1, 1, 0, 5, tzinfo=UTC).timestamp() - clock.wall())
        rows.pump(broker, clock.wall(), clock.monotonic())  # the month rolled over
        assert "image" in {t.kind for t in policy.transfers.values()}
        assert not rows.images_held
        assert any("/media/" in t for t in broker.topics)
        assert [r.state for r in outbox.ls(50) if r.kind == "image"] == ["inflight"]
        assert budget.usage(clock.wall()).held_images == 0  # a new month
        assert outbox.depth(Link.MQTT)["image"] == 1


def test_without_a_gate_images_go_as_before(tmp_path: Path) -> None:
    clock = FakeClock(start_mono=0.0)
    cfg = make_cfg(tmp_path / "data", outbox={"max_inflight": 64})
    with EventStore(cfg, clock) as store:
        store.record(*burst_and_verdict("alert", wall=clock.wall()))
        policy = SendPolicy(cfg.mqtt, cfg.outbox, clock.monotonic())
        policy.connected(clock.monotonic(), None, None)
        rows = MqttRows(store.outbox, Receipts(store.outbox.conn, clock, cfg.outbox), policy,
                        lambda: cfg, lambda **kw: None, lambda kinds: None)
        rows.pump(FakeBroker(), clock.wall(), clock.monotonic())
        assert "image" in {t.kind for t in policy.transfers.values()}


def test_a_plan_needs_images_kept_until_the_rollover(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(tmp_path, cellular={"enabled": True, "plan_mb": 500})
    assert e.value.key == "outbox.image_expiry_s"
    make_cfg(tmp_path, cellular={"enabled": True, "plan_mb": 500},
             outbox={"image_expiry_s": 40 * 86400})
    make_cfg(tmp_path, cellular={"enabled": True})  # no plan: the default expiry is fine
