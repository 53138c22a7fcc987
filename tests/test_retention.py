"""Pruning when the card runs low, on real files and a real database.

Free space is measured by a quota function over the real files under the storage root (the
OS boundary is the only thing replaced), so the tests run anywhere; the real full file system
is in test_chaos.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from store_support import burst_and_verdict, make_cfg

from edge_app.trap.store.outbox import State
from edge_app.trap.store.pipeline import EventStore
from edge_app.trap.store.retention import RESERVE_NAME, DiskGuard


def quota(limit: int) -> Callable[[Path], int]:
    """Free bytes of a card of ``limit`` bytes holding what is under the root."""

    def free(root: Path) -> int:
        return max(0, limit - used(root))

    return free


def used(root: Path) -> int:
    """Bytes of the files under ``root``, the database aside (its WAL grows with every
    commit, which would make these small-file tests depend on SQLite's page size)."""
    return sum(f.stat().st_size for f in root.rglob("*")
               if f.is_file() and not f.name.startswith("camtrap.db"))


def media_left(store: EventStore) -> dict[str, tuple[bool, bool]]:
    """event id → (image still there, thumbnail still there)."""
    out = {}
    for r in store.catalog.recent(100):
        out[r.id] = (r.image_path is not None and (store.root / r.image_path).exists(),
                     r.thumb_path is not None and (store.root / r.thumb_path).exists())
    return out


def test_images_go_first_delivered_before_keep_before_alert_then_thumbs(
    tmp_path: Path,
) -> None:
    cfg = make_cfg(tmp_path / "data", storage={"min_free_mb": 0.0, "reserve_mb": 0.0})
    with EventStore(cfg) as store:
        for i, outcome in enumerate(("alert", "keep", "alert", "alert"), start=1):
            store.record(*burst_and_verdict(outcome, wall=1_790_000_000.0 + 100 * i))
        conn, outbox = store._conn, store.outbox
        assert conn is not None
        # T-1-3's image was delivered: it is the first to go although it is not the oldest.
        conn.execute("UPDATE outbox SET state = 'sent' WHERE event_id = 'T-1-3' "
                     "AND kind = 'image'")
        sizes = {r.id: (store.root / r.image_path).stat().st_size  # type: ignore[operator]
                 for r in store.catalog.recent(10)}

        def make_room(need: int) -> None:
            guard = DiskGuard(store.root, 0, free_bytes=quota(used(store.root)))
            guard.prune(conn, outbox, 0.0, need_bytes=need)

        make_room(sizes["T-1-3"])
        assert media_left(store)["T-1-3"] == (False, True)
        assert sum(not img for img, _ in media_left(store).values()) == 1
        make_room(sizes["T-1-2"])
        # The keep's image (never to be sent) goes before the older alert's.
        assert media_left(store)["T-1-2"] == (False, True)
        assert media_left(store)["T-1-1"] == (True, True)
        make_room(10**9)  # everything: the images, then the thumbnails
        assert all(left == (False, False) for left in media_left(store).values())
        rows = store.outbox.ls(100)
        media_rows = [r for r in rows if r.kind in ("image", "thumb") and r.state != "sent"]
        assert media_rows
        assert all(r.state == State.DEAD and r.last_error == "pruned: disk low"
                   for r in media_rows)
        assert {r.state for r in rows if r.kind in ("alert", "event")} == {State.READY}


def test_the_store_prunes_before_writing_when_the_card_is_low(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "data", storage={"min_free_mb": 0.0, "reserve_mb": 0.0})
    with EventStore(cfg) as store:
        store.record(*burst_and_verdict("alert"))
        first = used(store.root)
        store.guard = DiskGuard(store.root, 2 * first, free_bytes=quota(first * 2))
        store.record(*burst_and_verdict("alert"))  # the card is now "low"
        left = media_left(store)
        assert left["T-1-1"][0] is False  # the older image made room
        assert left["T-1-2"] == (True, True)
        assert store.outbox.depth()["alert"] == 2  # alerts are never pruned


class Card:
    """A card whose size the test sets; free = size − what is under the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.size = 0

    def free(self, root: Path) -> int:
        return max(0, self.size - used(self.root))

    def fill(self, slack: int) -> None:
        """Make the card full but ``slack`` bytes."""
        self.size = used(self.root) + slack


def test_the_reserve_is_released_only_when_nothing_else_can_go(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    cfg = make_cfg(root, storage={"min_free_mb": 0.0, "reserve_mb": 0.0})
    card = Card(root)
    card.size = 10 * 1024 * 1024
    guard = DiskGuard(root, 1024, free_bytes=card.free, reserve_bytes=1024 * 1024)
    assert guard.ensure_reserve()
    reserve = root / RESERVE_NAME
    assert reserve.stat().st_size == 1024 * 1024
    with EventStore(cfg) as store:
        assert store._conn is not None
        store.record(*burst_and_verdict("alert"))
        card.fill(10)
        # A write failed, but there is media to prune: the reserve stays.
        assert guard.prune(store._conn, store.outbox, 0.0, need_bytes=100).enough
        assert reserve.exists()
        media = used(root) - reserve.stat().st_size
        guard.prune(store._conn, store.outbox, 0.0, need_bytes=media)  # every media file
        assert media_left(store)["T-1-1"] == (False, False)
        assert reserve.exists()
        card.fill(10)
        # A write failed and nothing is left: the reserve goes, so alerts still fit.
        result = guard.prune(store._conn, store.outbox, 0.0, need_bytes=100)
        assert not reserve.exists()
        assert result.bytes == 1024 * 1024
        # Until the card recovers, only alerts and thumbnails are written.
        store.guard = guard
        card.fill(1024 * 1024)
        assert guard.emergency()
        store.record(*burst_and_verdict("alert"))
        assert media_left(store)["T-1-2"] == (False, True)
    card.size = 10 * 1024 * 1024
    assert not guard.emergency()
    assert guard.ensure_reserve()  # room again: it comes back
    os.unlink(reserve)
    card.fill(2 * 1024 * 1024)
    assert not guard.ensure_reserve()  # never makes the card low by itself


def test_housekeeping_expires_and_purges_the_outbox_with_mqtt_off(tmp_path: Path) -> None:
    """Expiry and purging are the store's, not the MQTT link's: a LoRa-only unit runs them."""
    from edge_app.core.clock import FakeClock
    from edge_app.trap.store.retention import Housekeeper
    from edge_app.trap.store.upkeep import DEAD_RETENTION_S, SENT_RETENTION_S, OutboxUpkeep

    clock = FakeClock()
    cfg = make_cfg(tmp_path / "data", mqtt={"enabled": False}, lorawan={"enabled": True},
                   outbox={"status_expiry_s": 60.0},
                   storage={"min_free_mb": 0.0, "reserve_mb": 0.0})
    with EventStore(cfg, clock) as store:
        store.record(*burst_and_verdict("alert"))
        box, conn = store.outbox, store._conn
        assert conn is not None
        [lora] = box.ls(10)
        assert (lora.link, lora.kind) == ("lorawan", "alert")
        status = box.enqueue("status", link="lorawan", payload=b"{}")
        box.mark_sent(lora.id, confirmed=True)
        keeper, upkeep = Housekeeper(cfg, clock), OutboxUpkeep(conn, clock, cfg.outbox)
        clock.advance(61)
        keeper.check(conn, upkeep)
        row = box.get(status)
        assert row is not None
        assert (row.state, row.last_error) == (State.DEAD, "expired")
        clock.advance(SENT_RETENTION_S)
        keeper.check(conn, upkeep)
        assert box.get(lora.id) is None  # delivered a week ago: purged
        assert box.get(status) is not None  # given up rows stay longer, for a technician
        clock.advance(DEAD_RETENTION_S)
        keeper.check(conn, upkeep)
        assert box.ls(10) == []
        assert store.catalog.get("T-1-1") is not None  # the catalogue is never purged
