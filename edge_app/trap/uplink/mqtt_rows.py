"""The MQTT link's side of the outbox: rows started, outcomes recorded, failures backed off.

Why apart from the link: the link's loop (:class:`edge_app.trap.uplink.mqtt.MqttLink`) deals
with the connection and with events; this class turns the send policy's answers into outbox
state, on the uplink thread's own connection, and turns database failures into a short pause
instead of an exception in the loop:

* a database error while recording deliveries (a full card) keeps them in the policy and
  blocks new sends for :data:`DB_RETRY_S`; nothing is resent meanwhile because the rows stay
  in flight;
* a row that can never be sent (too large for the broker, its media file gone, no topic)
  becomes ``dead`` with the reason, instead of holding the link forever;
* a refused or unpublishable row is backed off (:meth:`Outbox.mark_failed`, the project's
  backoff with full jitter); a row unanswered in time is requeued at once (a lost message
  is not a refusal).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from paho.mqtt.properties import Properties

from edge_app.core.config import Config
from edge_app.trap.store.db import transaction
from edge_app.trap.store.outbox import Kind, Link, Outbox, OutboxRow
from edge_app.trap.store.receipts import Receipts
from edge_app.trap.uplink.mqtt_policy import Refusal, SendPolicy
from edge_app.trap.uplink.mqtt_wire import Transfer, media_transfer, payload_transfer, topic_of

logger = logging.getLogger(__name__)

DB_RETRY_S = 1.0
IMAGE_HOLD_S = 600.0
"""A full image the data plan refused: the link asks again this much later (the projection
falls as the month goes on with little use; the month rolls over)."""
Publish = Callable[[str, bytes, Properties | None], tuple[int | None, str]]
ImageGate = Callable[[int, float], bool]
"""(size in bytes, wall time) → whether a full image may go now (the cellular data plan)."""


class MqttRows:
    """The MQTT link's rows, on the uplink thread's connection.

    Args:
        outbox: the outbox on the uplink thread's connection.
        receipts: the receipt side of the same connection.
        policy: the send policy (what is in flight).
        cfg: the current config (prefix, unit id, storage root, timeouts).
        count: bumps the link's counters.
        count_sent: counts delivered rows per kind.
        chunk_override: media chunk size instead of ``mqtt.chunk_bytes`` (tests, bench).
        image_gate: asked before each full image starts (None: every image may go); a refusal
            holds full images for :data:`IMAGE_HOLD_S`, the rows staying ready. An image the
            station asked for (:meth:`let_through`) passes the gate and the hold once.
    """

    def __init__(self, outbox: Outbox, receipts: Receipts, policy: SendPolicy,
                 cfg: Callable[[], Config], count: Callable[..., None],
                 count_sent: Callable[[Iterable[str]], None],
                 chunk_override: int | None = None, image_gate: ImageGate | None = None) -> None:
        self.outbox, self.receipts, self.policy, self._cfg = outbox, receipts, policy, cfg
        self._count, self._count_sent = count, count_sent
        self._chunk_override = chunk_override
        self._image_gate = image_gate
        self.images_held = False
        self.retry_at: float | None = None
        self.passes: set[str] = set()
        """Events whose full image goes at the next chance, whatever the plan says."""

    def let_through(self, event_id: str) -> None:
        """The station asked for this event's full image (``images/send``): its ready row
        starts at the next pump, past the data plan's gate and hold (one image at a time
        still), and its bytes count in the month as any other."""
        self.passes.add(event_id)

    def _passed_rows(self, have: set[int]) -> list[OutboxRow]:
        """Ready MQTT image rows of the events let through (not already in ``have``)."""
        events = sorted(self.passes)[:100]
        rows = self.outbox.conn.execute(
            f"SELECT * FROM outbox WHERE state = 'ready' AND kind = ? AND link = ? AND "  # noqa: S608 - placeholders only
            f"event_id IN ({', '.join('?' for _ in events)}) ORDER BY id",
            [Kind.IMAGE.value, Link.MQTT.value, *events]).fetchall()
        found = [OutboxRow.from_row(r) for r in rows]
        self.passes -= set(events) - {r.event_id for r in found}  # nothing left to send
        return [r for r in found if r.id not in have]

    def blocked(self, mono: float) -> bool:
        """True while a database error pauses sending."""
        return self.retry_at is not None and mono < self.retry_at

    def _db_failed(self, what: str, e: sqlite3.Error, mono: float) -> None:
        logger.error("MQTT: cannot %s (%s); retrying in %.0f s", what, e, DB_RETRY_S)
        self.retry_at = mono + DB_RETRY_S

    def timers(self, now: float, mono: float) -> list[float | None]:
        """Wall times at which rows want the link (next due row, image gate, receipts)."""
        p, out = self.policy, []
        if p.free_slots() > 0:
            out.append(self.outbox.next_ready_at(now, link=Link.MQTT,
                                                 max_priority=p.max_priority(mono)))
            if not p.image_busy():
                out.append(now + (p.images_from() - mono))
        out.append(self.receipts.next_deadline(self.outbox, now))
        return out

    def flush(self, now: float, mono: float) -> None:
        """Record deliveries, broker acknowledgements and receipts in one transaction."""
        p = self.policy
        if self.blocked(mono) or not p.has_outcomes():
            return
        acked, changed = 0, []
        try:
            with transaction(self.outbox.conn):  # one commit, one fsync for the lot
                if p.to_sent:
                    self.outbox.mark_sent(list(p.to_sent), now)
                if p.to_acked:
                    acked = self.receipts.mark_acked(list(p.to_acked), now)
                if p.to_receive:
                    changed = self.receipts.mark_received(p.to_receive, now)
        except sqlite3.Error as e:
            self._db_failed("record deliveries", e, mono)
            return
        self.retry_at = None
        self._count_sent(p.to_sent.values())
        self._count(acked=acked, receipts=len(changed))
        self._count_sent(kind for _rid, kind in changed)
        p.flushed(rid for rid, _kind in changed)

    def pump(self, publish: Publish, now: float, mono: float) -> None:
        """Start due rows and feed chunks, most urgent first, within the policy's limits."""
        p = self.policy
        free = p.free_slots()
        if free <= 0:
            return
        try:
            due = self.outbox.due(now, free, link=Link.MQTT, max_priority=p.max_priority(mono))
        except sqlite3.Error as e:
            self._db_failed("read the outbox", e, mono)
            return
        if self.passes and not p.image_busy():
            try:
                due = self._passed_rows({r.id for r in due}) + due
            except sqlite3.Error as e:
                self._db_failed("read the outbox", e, mono)
                return
        if self._image_gate is not None:
            due = [row for row in due if row.kind != Kind.IMAGE or row.event_id in self.passes
                   or self._image_ok(row, now, mono)]
        admitted = p.admit(due)
        self.passes -= {r.event_id for r in admitted if r.kind == Kind.IMAGE and r.event_id}
        starting = [t for row in admitted if (t := self._start(row, now, mono))]
        if starting:
            try:
                self.outbox.mark_inflight_many([t.row_id for t in starting], now)
            except sqlite3.Error as e:
                self._db_failed("mark rows in flight", e, mono)
                return
            p.started(starting)
            self._count(published=len(starting))
        errors: dict[int, str] = {}

        def send(t: Transfer, i: int) -> int | None:
            mid, errors[t.row_id] = publish(*t.message(i))
            return mid

        for t in p.feed(send):
            logger.warning("MQTT: row %d not published: %s", t.row_id, errors[t.row_id])
            self._back_off(t.row_id, now, f"publish failed: {errors[t.row_id]}",
                           t.remaining() if t.media else None)

    def _image_ok(self, row: OutboxRow, now: float, mono: float) -> bool:
        """The image gate's word on one full image; a refusal holds them all."""
        assert self._image_gate is not None
        try:
            size = (Path(self._cfg().storage.root) / (row.media_path or "")).stat().st_size
        except OSError:
            return True  # _start marks it dead with the reason
        if self._image_gate(size, now):
            if self.images_held:
                logger.info("MQTT: full images go again (data plan)")
            self.images_held = False
            return True
        if not self.images_held:
            logger.warning("MQTT: full images held: the data plan's month would not fit them; "
                           "they wait in the outbox (asked again every %.0f s)", IMAGE_HOLD_S)
        self.images_held = True
        self.policy.hold_images(mono + IMAGE_HOLD_S)
        return False

    def _start(self, row: OutboxRow, now: float, mono: float) -> Transfer | None:
        """Render a row's messages; a row that can never be sent becomes dead (logged)."""
        cfg = self._cfg()
        topic = topic_of(row, cfg.mqtt.topic_prefix, cfg.unit.id)
        if topic is None:
            self._give_up(row, now, f"no topic for a {row.kind} row without an event id")
            return None
        if row.media_path is None:
            t = payload_transfer(row, topic, self.policy.message_limit(), mono)
            if isinstance(t, str):
                self._give_up(row, now, t)
                return None
            return t
        try:
            data = (Path(cfg.storage.root) / row.media_path).read_bytes()
        except OSError as e:
            self._give_up(row, now, f"media unreadable: {e}")
            return None
        return media_transfer(row, topic, data, self.policy.chunk_size(self._chunk_override),
                              mono)

    def _give_up(self, row: OutboxRow, now: float, why: str) -> None:
        try:
            self.outbox.mark_dead(row.id, now, why)
        except sqlite3.Error as e:
            logger.error("MQTT: cannot mark row %d dead: %s", row.id, e)
            return
        self._count(dropped=1)
        logger.error("MQTT: row %d (%s %s) dropped: %s", row.id, row.kind, row.event_id or "",
                     why)

    def _back_off(self, rid: int, now: float, why: str,
                  chunks: list[int] | None) -> float | None:
        """Back a row off after a failed attempt; counts it (and a give-up)."""
        try:
            when = self.outbox.mark_failed(rid, now, why, chunks)
        except sqlite3.Error as e:
            logger.error("MQTT: cannot record a failed attempt of row %d: %s", rid, e)
            return None
        self._count(failed=1, dropped=1 if when is None else 0)
        return when

    def refused(self, r: Refusal, now: float, mono: float) -> None:
        """The broker refused a message of a row (failure reason code): back off."""
        t = self.policy.forget(r.row_id)
        chunks = sorted(set(t.remaining()) | {r.chunk}) if t is not None and t.media else None
        self.policy.trouble(mono)
        when = self._back_off(r.row_id, now, f"broker refused: {r.reason}", chunks)
        logger.warning("MQTT: row %d refused by the broker (%s); %s", r.row_id, r.reason,
                       "given up" if when is None else f"retry in {when - now:.1f} s")

    def check_timeouts(self, now: float, mono: float) -> None:
        """Rows unanswered for ``outbox.inflight_timeout_s`` go out again."""
        timeout = self._cfg().outbox.inflight_timeout_s
        for t in self.policy.lost(mono):
            try:
                state = self.outbox.requeue(t.row_id, now, "no acknowledgement in time",
                                            t.remaining() if t.media else None)
            except sqlite3.Error as e:
                logger.error("MQTT: cannot requeue row %d: %s", t.row_id, e)
                continue
            self._count(requeued=1, dropped=1 if state == "dead" else 0)
            logger.warning("MQTT: row %d (%s) unacknowledged after %.0f s: %s", t.row_id,
                           t.kind, timeout, "given up" if state == "dead" else "sending again")

    def requeue_unreceipted(self, now: float, mono: float) -> None:
        """Events the broker acknowledged but no receiver confirmed in time go out again."""
        try:
            deadline = self.receipts.next_deadline(self.outbox, now)
            if deadline is not None and deadline <= now:
                self._count(requeued=self.receipts.requeue_unreceipted(now))
        except sqlite3.Error as e:
            self._db_failed("requeue unreceipted events", e, mono)

    def housekeeping(self, now: float) -> None:
        """Requeue rows left in flight that this session does not know (only after a database
        error separated a row from its transfer); the rest of the upkeep is the store's."""
        try:
            tracked = self.policy.tracked()
            for row in self.outbox.ls(1000, states=["inflight"], links=[Link.MQTT]):
                if row.id not in tracked:
                    self.outbox.requeue(row.id, now, "lost track of it")
        except sqlite3.Error as e:
            logger.error("MQTT: housekeeping failed: %s", e)
