"""The store stage: a decided trigger becomes media files, a catalogue row and outbox rows.

Order of writes, and why:

1. The media files, atomically and fsynced (``media.atomic_write``). A row must never point
   to a file that a power cut could have left half-written, so files come first; a crash
   after this step leaves only orphan files that the next event overwrites (same name).
2. One SQLite transaction: allocate ``seq``, insert the catalogue row, insert the outbox rows.
   Either all of them exist after a power cut or none does: an event is never catalogued
   without its alert queued, and no alert is queued for an event that is not catalogued.

The event id ``<unit>-<seq>`` is needed for the file names before the transaction allocates
``seq``. The store thread is the only writer of the counter, so the next value is known in
advance; the transaction checks that it got the same one (a second process writing the same
database would be caught here).

What is queued per outcome and link (defaults; see :class:`EventStore`). The rows say *what*
must be delivered and *over which link*, never how: each link renders its wire form at send
time, so a LoRa-only unit (``mqtt.enabled = false``) has no MQTT rows (and no topics) at all.

==========  =================================================  ===============  ===============
outcome     MQTT rows (``mqtt.enabled``)                       LoRa rows        catalogue
==========  =================================================  ===============  ===============
alert       ``alert`` (event JSON), ``thumb``, ``image``        ``alert``        row
keep        ``event`` (event JSON), ``thumb``                   none             row
discard     none                                               none             counted; 1 in N
                                                                                stored as an
                                                                                audit row,
                                                                                never sent
==========  =================================================  ===============  ===============

LoRa rows only when ``lorawan.enabled``; images and thumbnails never go over LoRa. A unit with
no link on at all (``camtrap demo`` without a broker, a trap read from its card) keeps its MQTT
rows, so that nothing decided is lost and a link switched on later delivers them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

from edge_app.core.clock import Clock, SystemClock, rfc3339
from edge_app.core.config import Config
from edge_app.core.errors import StorageError
from edge_app.core.events import Burst, Outcome, Verdict
from edge_app.trap.store.catalog import Catalog, EventRecord
from edge_app.trap.store.db import db_path, open_db, transaction
from edge_app.trap.store.deployments import DeploymentBook
from edge_app.trap.store.media import (
    MediaRef,
    clean_temp,
)
from edge_app.trap.store.media_writer import MediaWriter
from edge_app.trap.store.outbox import Outbox
from edge_app.trap.store.retention import DiskGuard
from edge_app.trap.store.routing import deliveries

logger = logging.getLogger(__name__)


THUMBS_FOR: frozenset[Outcome] = frozenset({"alert", "keep"})
IMAGES_FOR: frozenset[Outcome] = frozenset({"alert"})


class Recorded(NamedTuple):
    """What :meth:`EventStore.record` stored: the event id and the event JSON (as a dict)."""

    event_id: str
    event: dict[str, Any]


def build_event(
    *,
    event_id: str,
    unit: str,
    seq: int,
    burst: Burst,
    verdict: Verdict,
    media: list[MediaRef],
    battery_v: float | None,
    temp_c: float | None,
    time_synced: bool,
    audit: bool = False,
    time_source: str | None = None,
    deployment_id: str | None = None,
) -> dict[str, Any]:
    """The event JSON of ARCHITECTURE §6, plus ``outcome`` and ``kept_by`` (the stages that
    said "not empty": ``detector``, ``classifier``, ``head``, ``background``, ``motion``,
    ``unreadable``; empty for an audit sample of a discard).

    ``detections`` are the boxes of the verdict's best frame (``detect --json`` items);
    ``frames`` is the number of frames in the burst. ``deployment_id``: the deployment
    (``camtrap deployment start``) whose interval holds the trigger, null outside any.
    """
    best = None
    if 0 <= verdict.best_index < len(verdict.results):
        best = verdict.results[verdict.best_index]
    event: dict[str, Any] = {
        "id": event_id,
        "unit": unit,
        "seq": seq,
        "deployment_id": deployment_id,
        "ts": rfc3339(burst.trigger.wall),
        "time_synced": time_synced,
        # gps / ntp (the Pi's clock and what synced it), rtc (the supervisor MCU's RTC
        # stamped the PIR edge) or none (the Pi's clock, never synced since boot)
        "time_source": time_source or ("ntp" if time_synced else "none"),
        "outcome": verdict.outcome,
        "kept_by": list(verdict.kept_by),
        "label": verdict.label,
        "species": verdict.species,
        "score": round(verdict.score, 4),
        "detections": [] if best is None else [d.to_json() for d in best.detections],
        "frames": len(burst.frames),
        # true: taken in night mode (IR-cut filter out, IR lit unless shed); null: no IR
        # control (edge_app/trap/capture.py CapturedBurst)
        "night": getattr(burst, "night", None),
        "media": [m.to_json() for m in media],
        "battery_v": battery_v,
        "temp_c": temp_c,
    }
    if audit:
        event["audit"] = True
    return event


class EventStore:
    """Owned by the store thread: records decided triggers (see the module docstring).

    Build it anywhere; call :meth:`open` on the store thread (it owns the connection), then
    :meth:`record` per decided trigger, then :meth:`close`.

    Args:
        cfg: the unit id, ``storage``, ``outbox``, ``policy.audit_every`` and which links are
            on (``mqtt.enabled``, ``lorawan.enabled``, ``mqtt.send_images``).
        clock: wall time for row creation times.
        notify: called after rows were queued, e.g. ``MqttLink.wake``.
        thumbs_for: outcomes whose thumbnail is queued (low priority).
        images_for: outcomes whose full frame is queued (lowest priority).
        time_source: the Pi clock's source now (``gps``, ``ntp``, ``none``), asked per event
            whose trigger was stamped by the Pi's clock.
        readings: (battery V, temperature °C) now, e.g. from the supervisor MCU.
    """

    def __init__(
        self,
        cfg: Config,
        clock: Clock | None = None,
        *,
        notify: Callable[[], None] | None = None,
        thumbs_for: Collection[Outcome] = THUMBS_FOR,
        images_for: Collection[Outcome] = IMAGES_FOR,
        time_source: Callable[[], str] | None = None,
        readings: Callable[[], tuple[float | None, float | None]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.time_source = time_source
        self.readings = readings
        self.clock: Clock = clock or SystemClock()
        self.root = Path(cfg.storage.root)
        self.db_path = db_path(self.root)
        self.notify = notify
        self._thumbs_for = frozenset(thumbs_for)
        self._images_for = frozenset(images_for)
        self._conn: sqlite3.Connection | None = None
        self._catalog: Catalog | None = None
        self._outbox: Outbox | None = None
        guard = DiskGuard.from_config(cfg)
        self.media = MediaWriter(cfg, self.root, guard, self._make_room)

    @property
    def guard(self) -> DiskGuard:
        """The disk guard the store prunes with (tests swap in one with an injected quota)."""
        return self.media.guard

    @guard.setter
    def guard(self, value: DiskGuard) -> None:
        self.media.guard = value

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open the database and clean temp files of interrupted writes (store thread)."""
        if self._conn is not None:
            return
        clean_temp(self.root)
        self._conn = open_db(self.db_path)
        self._catalog = Catalog(self._conn)
        self._outbox = Outbox(self._conn, self.clock, self.cfg.outbox)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
        self._conn = self._catalog = self._outbox = None

    def __enter__(self) -> EventStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def catalog(self) -> Catalog:
        """The catalogue on the store thread's connection (opens it if needed)."""
        self.open()
        assert self._catalog is not None
        return self._catalog

    @property
    def outbox(self) -> Outbox:
        """The outbox on the store thread's connection (opens it if needed)."""
        self.open()
        assert self._outbox is not None
        return self._outbox

    # -- recording ----------------------------------------------------------------------

    def record(
        self,
        burst: Burst,
        verdict: Verdict,
        *,
        battery_v: float | None = None,
        temp_c: float | None = None,
        time_synced: bool | None = None,
        time_source: str | None = None,
    ) -> Recorded | None:
        """Store a decided trigger and queue what must be sent.

        Args:
            burst: the trigger's frames (the chosen frame is stored as captured).
            verdict: the decision; ``outcome`` selects what is stored and queued.
            battery_v: battery voltage for the event JSON, if known.
            temp_c: enclosure temperature for the event JSON, if known; when both are None
                they are taken from the ``readings`` provider.
            time_synced: whether the wall clock was synced when the trigger fired (default:
                the time source is not ``none``).
            time_source: what stamped the trigger (default: the trigger's own
                ``time_source``, else the ``time_source`` provider; without either, ``ntp``
                when ``time_synced`` is not False).

        Returns:
            The event id and JSON, or None for a discard that was only counted.

        Raises:
            StorageError: the database could not be written (the event is not stored).
        """
        catalog, outbox = self.catalog, self.outbox
        assert self._conn is not None
        unit = self.cfg.unit.id
        audit = False
        if verdict.outcome == "discard":
            n = catalog.tally("discard") + 1
            every = self.cfg.policy.audit_every
            audit = every > 0 and n % every == 0
            if not audit:
                self._write(lambda: catalog.bump("discard"))
                return None

        seq = catalog.current_seq(unit) + 1
        event_id = f"{unit}-{seq}"
        self._make_room()
        image, thumb = self.media.write(event_id, burst, verdict)
        media = [m for m in (image, thumb) if m is not None]
        source = time_source or burst.trigger.time_source or (
            self.time_source() if self.time_source is not None
            else "ntp" if time_synced is not False else "none")
        if battery_v is None and temp_c is None and self.readings is not None:
            battery_v, temp_c = self.readings()
        deployment_id = DeploymentBook(self._conn).at(burst.trigger.wall)
        event = build_event(
            event_id=event_id, unit=unit, seq=seq, burst=burst, verdict=verdict, media=media,
            battery_v=battery_v, temp_c=temp_c, audit=audit, time_source=source,
            deployment_id=deployment_id,
            time_synced=source != "none" if time_synced is None else time_synced,
        )
        payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        now = self.clock.wall()
        rec = EventRecord(
            id=event_id, unit=unit, seq=seq, ts=burst.trigger.wall, outcome=verdict.outcome,
            label=verdict.label, species=verdict.species, score=verdict.score, audit=audit,
            reason=verdict.reason, event_json=payload, image_path=self.media.rel(image),
            thumb_path=self.media.rel(thumb), created=now,
        )

        def write() -> int:
            got = catalog.allocate_seq(unit)
            if got != seq:
                raise StorageError(
                    f"seq for {unit} moved from {seq - 1} to {got - 1} under us: is another "
                    f"camtrap writing {self.db_path}?"
                )
            catalog.insert(rec)
            if audit:
                catalog.bump("discard")
                return 0
            return self._enqueue(outbox, rec, payload.encode("utf-8"), image, thumb, now)

        queued = self._write(write)
        logger.info(
            "stored %s %s %s%s (%d message(s) queued)", event_id, verdict.outcome, verdict.label,
            " audit sample" if audit else "", queued, extra={"event_id": event_id},
        )
        if queued and self.notify is not None:
            self.notify()
        return Recorded(event_id, event)

    def _write(self, fn: Callable[[], int]) -> int:
        """Run ``fn`` in one transaction, translating database failures.

        A transaction that failed because the card is full is tried once more after pruning
        media (the database itself needs a little room to commit an alert).
        """
        assert self._conn is not None
        for attempt in (1, 2):
            try:
                with transaction(self._conn):
                    return fn()
            except sqlite3.Error as e:
                if attempt == 1 and _is_full(e):
                    # The same words as a media file's ENOSPC: one line to grep for.
                    logger.warning("card full while writing %s: pruning", self.db_path.name)
                    if self._make_room(force=True):
                        continue
                raise StorageError(f"cannot write {self.db_path}: {e}") from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _make_room(self, force: bool = False, need_bytes: int = 1024 * 1024) -> bool:
        """Prune media if the card is low on space (or ``force``, after a write failed for
        lack of it); True if anything was freed."""
        if not force and not self.guard.low():
            return False
        assert self._conn is not None
        assert self._outbox is not None
        result = self.guard.prune(self._conn, self._outbox, self.clock.wall(),
                                  need_bytes=need_bytes if force else 0)
        return result.files > 0

    def _enqueue(
        self,
        outbox: Outbox,
        rec: EventRecord,
        payload: bytes,
        image: MediaRef | None,
        thumb: MediaRef | None,
        now: float,
    ) -> int:
        """Queue what :func:`~edge_app.trap.store.routing.deliveries` says the event owes; no
        wire form here: each link renders its own (MQTT topics, the LoRa alert) at send time."""
        rows = deliveries(
            rec.outcome, lora=self.cfg.lorawan.enabled, mqtt=self.cfg.mqtt.enabled,
            thumbs_for=self._thumbs_for,
            images_for=self._images_for if self.cfg.mqtt.send_images else frozenset(),
            has_thumb=thumb is not None, has_image=image is not None)
        for d in rows:
            ref = thumb if d.media == "thumb" else image if d.media == "image" else None
            outbox.enqueue(d.kind, link=d.link, event_id=rec.id, now=now,
                           payload=None if ref is not None else payload,
                           media_path=self.media.rel(ref))
        return len(rows)

    # -- inspection (any thread) --------------------------------------------------------

    def outbox_depth(self) -> int:
        """Unsent outbox rows; safe from any thread (opens its own short-lived connection)."""
        conn = open_db(self.db_path)
        try:
            return sum(Outbox(conn, self.clock, self.cfg.outbox).depth().values())
        finally:
            conn.close()

    def outbox_depth_by_link(self, links: tuple[str, ...]) -> dict[str, int]:
        """Unsent rows per link named (``mqtt``, ``lorawan``); any thread (own connection).

        The power policy asks only about the links that run: rows owed to a link that is
        switched off would otherwise keep a gated Pi up until its uptime cap every wake."""
        conn = open_db(self.db_path)
        try:
            outbox = Outbox(conn, self.clock, self.cfg.outbox)
            return {link: sum(outbox.depth(link).values()) for link in links}
        finally:
            conn.close()

    def counts_since(self, since: float) -> dict[str, int]:
        """Stored events per outcome (audit samples apart) triggered at or after ``since``;
        safe from any thread. Discards are not stored, so they are not in here."""
        conn = open_db(self.db_path)
        try:
            out = {"alert": 0, "keep": 0, "audit": 0}
            for r in conn.execute(
                "SELECT outcome, audit, COUNT(*) FROM events WHERE ts >= ? "
                "GROUP BY outcome, audit", (since,)
            ):
                key = "audit" if r[1] else str(r[0])
                if key in out:
                    out[key] += int(r[2])
            return out
        finally:
            conn.close()

    def counts(self) -> dict[str, int]:
        """Catalogue totals (:meth:`Catalog.counts`); safe from any thread."""
        conn = open_db(self.db_path)
        try:
            return Catalog(conn).counts()
        finally:
            conn.close()


def _is_full(e: sqlite3.Error) -> bool:
    """SQLITE_FULL ("database or disk is full") or an I/O error from a full card."""
    code = getattr(e, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(e).lower()
