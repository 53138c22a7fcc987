"""The durable outbox on real SQLite: order of service, backoff, crash recovery, housekeeping."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_support import make_cfg

from edge_app.core.clock import FakeClock
from edge_app.core.config import OutboxConfig
from edge_app.trap.store.catalog import Catalog, EventRecord
from edge_app.trap.store.db import open_db, transaction
from edge_app.trap.store.outbox import Kind, Link, Outbox, State
from edge_app.trap.store.receipts import Receipts
from edge_app.trap.store.upkeep import OutboxUpkeep


class MaxRandom(random.Random):
    """A random source whose ``uniform`` returns its upper bound (the backoff cap)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def upkeep(conn: sqlite3.Connection, clock: FakeClock) -> OutboxUpkeep:
    return OutboxUpkeep(conn, clock, OutboxConfig())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = open_db(tmp_path / "camtrap.db")
    yield c
    c.close()


def make_box(conn: sqlite3.Connection, clock: FakeClock, rng: random.Random | None = None,
             **cfg: float) -> Outbox:
    base = {"backoff_min_s": 2.0, "backoff_max_s": 300.0}
    base.update(cfg)
    return Outbox(conn, clock, OutboxConfig(**base), rng or random.Random(1))  # type: ignore[arg-type]


def test_due_serves_alerts_then_status_event_thumb_image_then_oldest(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    ids = {}
    for name, kind in [("img", Kind.IMAGE), ("thumb", Kind.THUMB), ("ev", Kind.EVENT),
                       ("a1", Kind.ALERT), ("st", Kind.STATUS), ("a2", Kind.ALERT)]:
        if kind in (Kind.IMAGE, Kind.THUMB):
            ids[name] = box.enqueue(kind, media_path=f"{name}.jpg")
        else:
            ids[name] = box.enqueue(kind, payload=name.encode())
    order = [r.id for r in box.due(limit=10)]
    assert order == [ids[n] for n in ("a1", "a2", "st", "ev", "thumb", "img")]
    assert [r.id for r in box.due(limit=2)] == [ids["a1"], ids["a2"]]


def test_enqueue_requires_exactly_one_body(conn: sqlite3.Connection, clock: FakeClock) -> None:
    box = make_box(conn, clock)
    with pytest.raises(ValueError, match="exactly one"):
        box.enqueue(Kind.ALERT)
    with pytest.raises(ValueError, match="exactly one"):
        box.enqueue(Kind.ALERT, payload=b"x", media_path="a.jpg")
    with pytest.raises(ValueError, match="bogus"):
        box.enqueue("bogus", payload=b"x")


def test_enqueue_joins_the_callers_transaction(conn: sqlite3.Connection, clock: FakeClock) -> None:
    box = make_box(conn, clock)

    class Boom(Exception):
        pass

    def fail_after_enqueue() -> None:
        with transaction(conn):
            box.enqueue(Kind.ALERT, payload=b"1")
            raise Boom

    with pytest.raises(Boom):
        fail_after_enqueue()
    assert box.depth()["alert"] == 0
    with transaction(conn):
        box.enqueue(Kind.ALERT, payload=b"2")
    assert box.depth()["alert"] == 1


def test_failed_send_backs_off_exponentially_up_to_the_cap(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock, MaxRandom(), backoff_min_s=2.0, backoff_max_s=20.0)
    rid = box.enqueue(Kind.ALERT, payload=b"x")
    delays = []
    for _ in range(6):
        now = clock.wall()
        assert [r.id for r in box.due(now)] == [rid]
        box.mark_inflight(rid, now)
        assert box.due(now) == []
        when = box.mark_failed(rid, now, "PUBACK Quota exceeded")
        assert when is not None
        delays.append(round(when - now, 6))
        assert box.due(now) == []  # not before its time
        clock.advance(when - now)
    assert delays == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    row = box.get(rid)
    assert row is not None
    assert row.attempts == 6
    assert row.state == State.READY
    assert row.last_error == "PUBACK Quota exceeded"


def test_backoff_is_full_jitter_from_the_injected_random_source(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    a = make_box(conn, clock, random.Random(42))
    b = make_box(conn, clock, random.Random(42))
    got = [a.backoff_s(n) for n in range(1, 12)]
    assert got == [b.backoff_s(n) for n in range(1, 12)]  # deterministic given the seed
    for n, d in enumerate(got, start=1):
        assert 0.0 <= d <= min(300.0, 2.0 * 2 ** (n - 1))
    assert len(set(got)) == len(got)  # jittered, not a fixed schedule
    assert 0.0 <= a.backoff_s(10_000) <= 300.0  # no overflow after months of failures


def test_crash_with_rows_in_flight_then_recover(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "camtrap.db"
    conn = open_db(path)
    box = make_box(conn, clock)
    sent = box.enqueue(Kind.ALERT, payload=b"sent")
    lost = box.enqueue(Kind.ALERT, payload=b"on the air")
    waiting = box.enqueue(Kind.THUMB, media_path="x.jpg")
    for rid in (sent, lost):
        box.mark_inflight(rid)
    box.mark_sent(sent)
    conn.close()  # "crash": the PUBACK for `lost` never came

    conn = open_db(path)
    try:
        box = make_box(conn, clock)
        assert box.stats()["alert"]["inflight"] == 1
        assert box.recover() == 1
        due = box.due()
        assert [r.id for r in due] == [lost, waiting]
        assert due[0].payload == b"on the air"
        assert due[0].attempts == 1  # the lost attempt still counts
        assert box.get(sent).state == State.SENT  # type: ignore[union-attr]
    finally:
        conn.close()


def test_each_link_serves_and_recovers_only_its_own_rows(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    add_event(conn, "T-1-1")
    lora = box.enqueue(Kind.ALERT, link=Link.LORAWAN, payload=b"a", event_id="T-1-1")
    mqtt = box.enqueue(Kind.ALERT, payload=b"a", event_id="T-1-1")
    thumb = box.enqueue(Kind.THUMB, media_path="t.jpg", event_id="T-1-1")
    assert [r.id for r in box.due(link="mqtt")] == [mqtt, thumb]
    assert [r.id for r in box.due(link="lorawan")] == [lora]
    assert [r.id for r in box.due()] == [lora, mqtt, thumb]  # inspection: every link
    assert box.get(lora).link == "lorawan"  # type: ignore[union-attr]
    assert box.get(thumb).media_id == "T-1-1-thumb"  # type: ignore[union-attr]
    for rid in (lora, mqtt):
        box.mark_inflight(rid)
    assert box.recover(link=Link.MQTT) == 1  # the MQTT link restarting leaves LoRa alone
    assert box.get(lora).state == State.INFLIGHT  # type: ignore[union-attr]
    assert box.next_ready_at(link="lorawan") is None
    assert box.next_ready_at(link="mqtt") == clock.wall()
    assert box.depth(link="lorawan")["alert"] == 1
    assert box.depth()["alert"] == 2  # one alert, owed on two links


def test_images_and_event_json_never_go_over_lora(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    for kind in (Kind.IMAGE, Kind.THUMB):
        with pytest.raises(ValueError, match="cannot go over lorawan"):
            box.enqueue(kind, link="lorawan", media_path="x.jpg")
    with pytest.raises(ValueError, match="cannot go over lorawan"):
        box.enqueue(Kind.EVENT, link="lorawan", payload=b"{}")
    with pytest.raises(sqlite3.IntegrityError):  # and the schema says so too
        conn.execute("INSERT INTO outbox (kind, link, priority, media_path, created, "
                     "next_attempt_at) VALUES ('image', 'lorawan', 4, 'x.jpg', 0, 0)")
    with pytest.raises(ValueError, match="pigeon"):
        box.enqueue(Kind.ALERT, link="pigeon", payload=b"{}")


def test_mark_sent_batches_and_ignores_finished_rows(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    ids = [box.enqueue(Kind.ALERT, payload=b"%d" % i) for i in range(3)]
    for rid in ids:
        box.mark_inflight(rid)
    assert box.mark_sent(ids) == 3
    assert box.mark_sent(ids) == 0
    assert box.mark_failed(ids[0], None, "late") is None  # a sent row stays sent
    assert box.stats()["alert"] == {"ready": 0, "inflight": 0, "acked-by-broker": 0, "sent": 3,
                                    "skipped": 0, "dead": 0}


def test_expired_alerts_become_dead_and_are_not_served(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    old = box.enqueue(Kind.ALERT, payload=b"old", expires_at=clock.wall() + 10)
    keep = box.enqueue(Kind.ALERT, payload=b"no expiry")
    clock.advance(11)
    assert [r.id for r in box.due()] == [keep]  # never served once expired
    assert upkeep(conn, clock).expire() == 1
    row = box.get(old)
    assert row is not None
    assert row.state == State.DEAD
    assert row.last_error == "expired"


def test_a_clock_stepping_back_does_not_park_rows(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock, MaxRandom(), backoff_max_s=60.0)
    rid = box.enqueue(Kind.ALERT, payload=b"x")
    box.mark_inflight(rid)
    # The failure was recorded with a clock one day ahead (before NTP corrected it).
    box.mark_failed(rid, clock.wall() + 86400, "refused")
    assert [r.id for r in box.due()] == [rid]
    nxt = box.next_ready_at()
    assert nxt is not None
    assert nxt <= clock.wall() + 61.0


def add_event(conn: sqlite3.Connection, event_id: str) -> None:
    """A catalogue row for outbox rows to refer to (the outbox has a foreign key on it)."""
    unit, _, seq = event_id.rpartition("-")
    Catalog(conn).insert(EventRecord(
        id=event_id, unit=unit, seq=int(seq), ts=0.0, outcome="alert", label="animal",
        species=None, score=0.5, audit=False, reason="", event_json="{}", image_path=None,
        thumb_path=None, created=0.0))


def test_outbox_rows_must_belong_to_a_catalogued_event(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    with pytest.raises(sqlite3.IntegrityError):
        box.enqueue(Kind.ALERT, payload=b"x", event_id="T-1-99")


def test_depth_stats_ls_and_purge(conn: sqlite3.Connection, clock: FakeClock) -> None:
    box = make_box(conn, clock)
    add_event(conn, "T-1-1")
    a = box.enqueue(Kind.ALERT, payload=b"a", event_id="T-1-1")
    t = box.enqueue(Kind.THUMB, media_path="m.jpg", event_id="T-1-1")
    s = box.enqueue(Kind.STATUS, payload=b"{}")
    box.mark_inflight(a)
    box.mark_sent(a)
    box.mark_inflight(t)
    box.mark_dead(s, None, "gone")
    assert box.depth() == {"alert": 0, "status": 0, "event": 0, "thumb": 1, "image": 0}
    stats = box.stats()
    assert stats["alert"]["sent"] == 1
    assert stats["thumb"]["inflight"] == 1
    assert stats["status"]["dead"] == 1
    assert [r.id for r in box.ls()] == [t, s, a]  # in flight, ready, dead, sent
    assert [r.id for r in box.ls(states=["sent"])] == [a]
    assert box.ls()[0].to_json()["media_path"] == "m.jpg"
    clock.advance(100)
    assert upkeep(conn, clock).purge(older_than_s=200) == 0  # sent too recently
    assert upkeep(conn, clock).purge(older_than_s=50) == 1
    assert upkeep(conn, clock).purge(states=["dead"]) == 1
    assert box.get(a) is None
    assert box.get(t) is not None


def test_store_cli_reports_the_outbox(tmp_path: Path, clock: FakeClock) -> None:
    import io

    from edge_app.trap.store.cli import outbox_command

    cfg = make_cfg(tmp_path)
    out = io.StringIO()
    assert outbox_command(cfg, "ls", out) == 1  # no database yet
    conn = open_db(tmp_path / "camtrap.db")
    box = make_box(conn, clock)
    add_event(conn, "T-1-1")
    add_event(conn, "T-1-2")
    rid = box.enqueue(Kind.ALERT, payload=b"{}", event_id="T-1-1")
    box.enqueue(Kind.ALERT, payload=b"{}", event_id="T-1-2")
    box.mark_inflight(rid)
    box.mark_sent(rid)
    conn.close()
    assert outbox_command(cfg, "ls", out) == 0
    assert "T-1-2" in out.getvalue()
    assert "ready" in out.getvalue()
    out = io.StringIO()
    assert outbox_command(cfg, "stats", out, as_json=True) == 0
    assert '"sent": 1' in out.getvalue()
    out = io.StringIO()
    assert outbox_command(cfg, "purge", out) == 0
    assert out.getvalue() == "purged 1 sent message(s)\n"


def test_receipts_hold_an_alert_until_the_receiver_confirms_it(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock, receipt_timeout_s=10.0, receipt_timeout_max_s=25.0)
    receipts = Receipts(conn, clock, box.cfg)
    add_event(conn, "T-1-1")
    rid = box.enqueue(Kind.ALERT, payload=b"a", event_id="T-1-1")
    lora = box.enqueue(Kind.ALERT, link="lorawan", payload=b"a", event_id="T-1-1")
    timeouts = []
    for _ in range(3):
        box.mark_inflight(rid)
        assert receipts.mark_acked([rid]) == 1  # the broker's PUBACK
        row = box.get(rid)
        assert row is not None
        assert row.state == State.ACKED
        timeouts.append(row.next_attempt_at - clock.wall())
        assert box.due(link="mqtt") == []  # not sent again before its time
        assert box.depth(link="mqtt")["alert"] == 1  # still owed to the receiver
        clock.advance(timeouts[-1] - 1)
        assert receipts.requeue_unreceipted() == 0
        clock.advance(1)
        assert receipts.requeue_unreceipted() == 1  # no receipt in time: send it again
        assert [r.id for r in box.due(link="mqtt")] == [rid]
    assert timeouts == [10.0, 20.0, 25.0]  # doubling, capped
    box.mark_inflight(rid)
    # The receipt can overtake the PUBACK; unknown ids are ignored.
    assert receipts.mark_received(["T-1-1", "T-1-77"]) == [(rid, "alert")]
    assert receipts.mark_received(["T-1-1"]) == []
    assert receipts.mark_acked([rid]) == 0  # a late PUBACK does not undo the receipt
    row = box.get(rid)
    assert row is not None
    assert row.state == State.SENT
    assert row.attempts == 4
    # A receipt is MQTT's confirmation: the LoRa row of the same alert is its network's.
    assert box.get(lora).state == State.READY  # type: ignore[union-attr]


def test_expiry_is_per_kind(conn: sqlite3.Connection, clock: FakeClock) -> None:
    box = make_box(conn, clock, status_expiry_s=60.0, image_expiry_s=3600.0,
                   alert_expiry_s=0.0, thumb_expiry_s=0.0)
    now = clock.wall()
    status = box.enqueue(Kind.STATUS, payload=b"s")
    image = box.enqueue(Kind.IMAGE, media_path="i.jpg")
    alert = box.enqueue(Kind.ALERT, payload=b"a")
    thumb = box.enqueue(Kind.THUMB, media_path="t.jpg")
    forever = box.enqueue(Kind.IMAGE, media_path="j.jpg", expires_at=None)
    got = {rid: box.get(rid).expires_at for rid in (status, image, alert, thumb, forever)}  # type: ignore[union-attr]
    assert got == {status: now + 60, image: now + 3600, alert: None, thumb: None,
                   forever: None}
    clock.advance(61)
    assert status not in [r.id for r in box.due(limit=10)]
    nxt = box.next_ready_at()
    assert nxt is not None  # the expired status row does not keep anyone awake
    assert upkeep(conn, clock).expire() == 1


def test_a_retried_media_row_keeps_its_missing_chunks_and_gives_up_after_n_tries(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock, max_media_attempts=3)
    img = box.enqueue(Kind.IMAGE, media_path="i.jpg", chunks=[5, 1, 3])
    alert = box.enqueue(Kind.ALERT, payload=b"a")
    assert box.get(img).chunks == [1, 3, 5]  # type: ignore[union-attr]
    box.mark_inflight(img)
    assert box.requeue(img, None, "no acknowledgement", chunks=[3, 5]) == State.READY
    assert box.get(img).chunks == [3, 5]  # type: ignore[union-attr]
    box.mark_inflight(img)
    assert box.mark_failed(img, None, "refused") is not None
    box.mark_inflight(img)
    assert box.requeue(img, None, "no acknowledgement") == State.DEAD
    row = box.get(img)
    assert row is not None
    assert row.last_error is not None
    assert row.last_error.startswith("gave up after 3 attempts")
    for _ in range(20):  # an alert is never given up
        box.mark_inflight(alert)
        assert box.requeue(alert, None, "no acknowledgement") == State.READY


def test_images_can_be_held_back_without_waking_the_link(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    box.enqueue(Kind.IMAGE, media_path="i.jpg")
    assert box.due(max_priority=3) == []
    assert box.next_ready_at(max_priority=3) is None
    assert box.next_ready_at() == clock.wall()


def test_resend_requeues_finished_events_and_rebuilds_purged_rows(
    conn: sqlite3.Connection, clock: FakeClock
) -> None:
    box = make_box(conn, clock)
    for i in (1, 2, 3):
        add_event(conn, f"T-1-{i}")
    a1 = box.enqueue(Kind.ALERT, payload=b"1", event_id="T-1-1")
    a2 = box.enqueue(Kind.ALERT, payload=b"2", event_id="T-1-2")
    for rid in (a1, a2):
        box.mark_inflight(rid)
        box.mark_sent(rid)
    conn.execute("DELETE FROM outbox WHERE id = ?", (a2,))  # purged long ago
    assert box.resend_events(["T-1-1", "T-1-2", "T-1-9"]) == ["T-1-1", "T-1-2"]
    due = {r.event_id: r for r in box.due()}
    assert set(due) == {"T-1-1", "T-1-2"}
    assert due["T-1-1"].id == a1
    assert due["T-1-2"].payload == b"{}"  # rebuilt from the catalogue's event JSON
    assert due["T-1-2"].link == "mqtt"


def test_outbox_cli_filters_and_refuses_to_purge_unsent_rows(
    tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import json

    from edge_app.trap.store.cli import outbox_command

    cfg = make_cfg(tmp_path)
    conn = open_db(tmp_path / "camtrap.db")
    box = make_box(conn, clock)
    box.enqueue(Kind.ALERT, payload=b"a")
    box.enqueue(Kind.THUMB, media_path="m.jpg")
    conn.close()
    out = io.StringIO()
    assert outbox_command(cfg, "ls", out, as_json=True, kinds=["thumb"]) == 0
    assert [json.loads(line)["kind"] for line in out.getvalue().splitlines()] == ["thumb"]
    assert outbox_command(cfg, "purge", io.StringIO(), states=["ready"]) == 2
    assert "refusing" in capsys.readouterr().err
    out = io.StringIO()
    assert outbox_command(cfg, "stats", out, as_json=True) == 0
    body = json.loads(out.getvalue())
    assert body["depth"]["alert"] == 1
    assert body["rows"]["thumb"]["ready"] == 1
    assert isinstance(body["disk_low"], bool)
