"""Remote commands: ``<prefix>/<unit>/cmd/<name>`` in, ``.../cmd/<name>/result`` out.

A command is a JSON object with an ``id`` (a string the sender picks; the result carries it
back). Every command gets exactly one result ``{"id", "ok", ...}``; a malformed or unknown one
gets ``ok: false`` and an ``error``, and changes nothing. Commands are at-least-once like
everything on MQTT: a repeated ``id`` gets the first result again without running twice.

=================  =====================================================  ====================
command            body                                                   effect
=================  =====================================================  ====================
``config/set``     ``{"values": {"camera.burst_frames": 5, ...}}``        validated as a whole
                                                                          against the config
                                                                          schema; stored in
                                                                          SQLite and applied
                                                                          live and at every
                                                                          start
``media/request``  ``{"media": "<media id>", "chunks": [3, 7], "of": 9}``  the media file (or
                                                                          those chunks) is
                                                                          queued again
``resend``         ``{"events": ["LL-042-17"]}`` or                       the events' JSON is
                   ``{"from_seq": 10, "to_seq": 20}``                      queued again
``images/send``    ``{"event": "LL-042-17"}``                             that event's full
                                                                          image goes now, even
                                                                          while the data plan
                                                                          holds full images
``models/offer``   ``{"pack": "<sha256>", "bytes": N, "chunk_bytes": C}``  a model pack download
                                                                          starts or resumes;
                                                                          the result lists the
                                                                          missing chunks
``models/install`` ``{"pack": "<sha256>"}``                               the downloaded pack
                                                                          is verified, self-
                                                                          tested and switched
                                                                          to; the daemon
                                                                          restarts with it
=================  =====================================================  ====================

``images/send`` is how a station asks for full images the cellular data plan holds back, one
by one: the event's held row (still ``ready`` in the outbox) is let through the plan's gate
once, or, if the image went earlier or its row expired, queued again and let through; its
bytes count in the month like any other. ``media/request`` for a whole ``-image`` does the
same (it is what the station's "ask for the full image" button sends), and reuses a row that
already waits instead of queueing the image twice. The pass is held in memory by the MQTT
link: after a restart the station asks again.

The two ``models/`` commands are :mod:`edge_app.trap.packs.remote`'s (the chunks themselves
come on ``<prefix>/<unit>/pack/<sha256>/<i>``); a unit without ``detector.pack_public_key``
answers them with ``ok: false``.

``config/set`` goes through the settings service (:mod:`edge_app.trap.settings`), the one
owner of the trap's settings: the same allow-list, the same validation as the file, persisted
once, applied to every stage. A payload passes the guarded door first (:mod:`edge_app.core.guard`:
size, nesting depth, non-finite numbers); a refused one is counted and answered with
``ok: false``, never raised into the uplink loop.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_app.core.clock import Clock
from edge_app.core.errors import ConfigError, StorageError
from edge_app.core.guard import Limits, Refusals, Refused, parse_object
from edge_app.trap.packs.remote import PackCommandError, RemotePacks
from edge_app.trap.settings import Settings
from edge_app.trap.store.outbox import Kind, Link, Outbox

logger = logging.getLogger(__name__)

COMMANDS: tuple[str, ...] = ("config/set", "media/request", "resend", "images/send",
                              "models/offer", "models/install")
MAX_ID_LEN = 128
MAX_RESEND = 1000
MAX_CHUNKS = 100_000
_REMEMBER = 256
LIMITS = Limits(max_bytes=64 * 1024, max_depth=8, max_nodes=MAX_CHUNKS + 64)
"""A command is a few hundred bytes; the largest legitimate one is a media/request listing
many chunk indices."""


class CommandError(ValueError):
    """A command that cannot be run as given; its message goes into the error result."""


class Commands:
    """Runs commands on the uplink thread, against the uplink's own database connection.

    Args:
        settings: the settings service (``config/set`` changes go through it).
        clock: wall time for queued rows.
        refusals: where refused payloads are counted (the link's stats show them).
        packs: model packs over MQTT (None: this unit takes none).
        image_pass: lets one event's full image through the data plan's gate (the MQTT
            link's; None: no gate, an image request only queues).
    """

    def __init__(self, settings: Settings, clock: Clock,
                 refusals: Refusals | None = None, packs: RemotePacks | None = None,
                 image_pass: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self.packs = packs
        self._image_pass = image_pass
        self._clock = clock
        self.refusals = refusals if refusals is not None else Refusals("mqtt commands", clock)
        self._done: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def handle(self, name: str, payload: bytes, conn: sqlite3.Connection) -> dict[str, Any]:
        """Run one command; returns its result object (always has ``id`` and ``ok``).

        Never raises for anything in ``payload``: a refused payload is counted and answered.
        """
        try:
            body = parse_object(payload, LIMITS)
        except Refused as r:
            self.refusals.count(r, f"cmd/{name[:40]}")
            what = {"not_json": "payload is not JSON", "bad_type": "payload is not a JSON object"}
            return {**_error(_salvage_id(payload) if r.kind == "non_finite" else None,
                             what.get(r.kind, f"payload refused: {r.kind}")),
                    "refused": r.kind, "reason": r.reason}
        cmd_id = body.get("id")
        if not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > MAX_ID_LEN:
            return _error(None, f"'id' must be a non-empty string of at most {MAX_ID_LEN} "
                          "characters")
        if name not in COMMANDS:
            return _error(cmd_id, f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
        previous = self._done.get((name, cmd_id))
        if previous is not None:
            return previous  # a QoS 1 redelivery: same answer, no second effect
        try:
            result: dict[str, Any] = {"id": cmd_id, "ok": True}
            if name == "config/set":
                result.update(self._config_set(body, conn))
            elif name == "media/request":
                result.update(self._media_request(body, conn))
            elif name == "resend":
                result.update(self._resend(body, conn))
            elif name == "images/send":
                result.update(self._images_send(body, conn))
            else:
                result.update(self._models(name, body))
        except (CommandError, PackCommandError) as e:
            result = _error(cmd_id, str(e))
        except (sqlite3.Error, StorageError) as e:
            logger.error("command %s %s: database error: %s", name, cmd_id, e)
            result = _error(cmd_id, f"storage error: {e}")
        self._done[(name, cmd_id)] = result
        if len(self._done) > _REMEMBER:
            self._done.popitem(last=False)
        level = logging.INFO if result["ok"] else logging.WARNING
        logger.log(level, "command %s %s: %s", name, cmd_id,
                   "ok" if result["ok"] else result["error"])
        return result

    # -- the commands -------------------------------------------------------------------

    def _config_set(self, body: dict[str, Any], conn: sqlite3.Connection) -> dict[str, Any]:
        _only(body, {"id", "values"})
        values = body.get("values")
        if not isinstance(values, dict) or not values:
            raise CommandError("'values' must be a non-empty object of dotted keys")
        try:
            self._settings.apply(values, "config/set")
        except ConfigError as e:
            raise CommandError(str(e)) from e
        return {"applied": values}

    def _models(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.packs is None:
            raise CommandError("this unit takes no model packs: detector.pack_public_key is "
                               "not set in its config")
        return self.packs.offer(body) if name == "models/offer" else self.packs.install(body)

    def _media_request(self, body: dict[str, Any], conn: sqlite3.Connection) -> dict[str, Any]:
        _only(body, {"id", "media", "chunks", "of"})
        media_id = body.get("media")
        if not isinstance(media_id, str) or not media_id:
            raise CommandError("'media' must be a media id such as 'LL-042-17-thumb'")
        event_id, _, kind = media_id.rpartition("-")
        if kind not in ("image", "thumb") or not event_id:
            raise CommandError(f"unknown media id {media_id!r}")
        chunks = body.get("chunks")
        if chunks is not None and (
            not isinstance(chunks, list) or not chunks or len(chunks) > MAX_CHUNKS
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < MAX_CHUNKS
                       for c in chunks)
        ):
            raise CommandError("'chunks' must be a non-empty list of chunk indices")
        of = body.get("of")
        if of is not None and (not isinstance(of, int) or isinstance(of, bool) or of < 1):
            raise CommandError("'of' must be a positive integer")
        column = "image_path" if kind == "image" else "thumb_path"
        r = conn.execute(f"SELECT {column} FROM events WHERE id = ?",  # noqa: S608 - fixed names
                         (event_id,)).fetchone()
        if r is None:
            raise CommandError(f"no event {event_id!r} on this unit")
        rel = r[0]
        cfg = self._settings.config
        path = Path(cfg.storage.root) / rel if rel else None
        if path is None or not path.is_file():
            raise CommandError(f"{media_id} is not on the card (pruned or never written)")
        total = max(1, math.ceil(path.stat().st_size / cfg.mqtt.chunk_bytes))
        if chunks is not None and (of not in (None, total) or max(chunks) >= total):
            chunks = None  # chunked differently (another chunk size): send the whole file
        if kind == "image" and chunks is None:
            row, _state = self._send_image(event_id, str(rel), conn)
            return {"media": media_id, "queued": row, "chunks": "all", "of": total}
        outbox = Outbox(conn, self._clock, cfg.outbox)
        row = outbox.enqueue(
            Kind.IMAGE if kind == "image" else Kind.THUMB,
            media_path=str(rel), event_id=event_id, chunks=chunks,  # the MQTT link's topic
        )
        return {"media": media_id, "queued": row, "chunks": chunks or "all", "of": total}

    def _images_send(self, body: dict[str, Any], conn: sqlite3.Connection) -> dict[str, Any]:
        _only(body, {"id", "event"})
        event_id = body.get("event")
        if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LEN:
            raise CommandError("'event' must be an event id such as 'LL-042-17'")
        r = conn.execute("SELECT image_path FROM events WHERE id = ?", (event_id,)).fetchone()
        if r is None:
            raise CommandError(f"no event {event_id!r} on this unit")
        rel = r[0]
        if not rel or not (Path(self._settings.config.storage.root) / rel).is_file():
            raise CommandError(f"the full image of {event_id} is not on the card (pruned, "
                               "or the event kept none)")
        row, state = self._send_image(event_id, str(rel), conn)
        return {"event": event_id, "row": row, "state": state}

    def _send_image(self, event_id: str, rel: str, conn: sqlite3.Connection) -> tuple[int, str]:
        """The event's full image through the data plan's gate: its waiting MQTT row, or a
        new one; (row id, ``waiting``/``in flight``/``queued``)."""
        r = conn.execute(
            "SELECT id, state FROM outbox WHERE event_id = ? AND kind = ? AND link = ? AND "
            "state IN ('ready', 'inflight') ORDER BY id LIMIT 1",
            (event_id, Kind.IMAGE.value, Link.MQTT.value)).fetchone()
        if r is not None and r[1] == "inflight":
            return int(r[0]), "in flight"
        if r is not None:
            row, state = int(r[0]), "waiting"
        else:
            row = Outbox(conn, self._clock, self._settings.config.outbox).enqueue(
                Kind.IMAGE, media_path=rel, event_id=event_id)
            state = "queued"
        if self._image_pass is not None:
            self._image_pass(event_id)
        return row, state

    def _resend(self, body: dict[str, Any], conn: sqlite3.Connection) -> dict[str, Any]:
        _only(body, {"id", "events", "from_seq", "to_seq"})
        cfg = self._settings.config
        events = body.get("events")
        lo, hi = body.get("from_seq"), body.get("to_seq")
        if events is not None:
            if lo is not None or hi is not None:
                raise CommandError("give either 'events' or 'from_seq'/'to_seq'")
            if (not isinstance(events, list) or not events or len(events) > MAX_RESEND
                    or not all(isinstance(e, str) and e for e in events)):
                raise CommandError(f"'events' must be a list of 1 to {MAX_RESEND} event ids")
            ids = [str(e) for e in events]
        else:
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                       for v in (lo, hi)):
                raise CommandError("give 'events' (a list of ids) or 'from_seq' and 'to_seq' "
                                   "(positive integers)")
            assert isinstance(lo, int)
            assert isinstance(hi, int)
            if hi < lo or hi - lo + 1 > MAX_RESEND:
                raise CommandError(f"'from_seq'..'to_seq' must be a range of 1 to "
                                   f"{MAX_RESEND} events")
            ids = [f"{cfg.unit.id}-{seq}" for seq in range(lo, hi + 1)]
        outbox = Outbox(conn, self._clock, cfg.outbox)
        requeued = outbox.resend_events(ids)
        done = set(requeued)
        unknown = [e for e in ids if e not in done]
        return {"requeued": requeued, "unknown": unknown}


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise CommandError(f"unknown field(s) {', '.join(extra)} (allowed: "
                           f"{', '.join(sorted(allowed))})")


def _salvage_id(payload: bytes) -> str | None:
    """The ``id`` of a command refused only for a non-finite number, so that the sender can
    tell which of its commands failed. Size and depth have already passed the door, so a
    plain parse (which accepts NaN) is safe here; the body is used for nothing else."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    cmd_id = body.get("id") if isinstance(body, dict) else None
    return cmd_id if isinstance(cmd_id, str) and 0 < len(cmd_id) <= MAX_ID_LEN else None


def _error(cmd_id: str | None, message: str) -> dict[str, Any]:
    return {"id": cmd_id, "ok": False, "error": message}
