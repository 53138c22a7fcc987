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
=================  =====================================================  ====================

Only the keys in :data:`ALLOWED_KEYS` can be set remotely: thresholds, the burst and the stats
interval are what a ranger tunes from the office; where the trap stores its data, which broker
it trusts and its credentials are not, because a wrong value there cannot be undone remotely.
Settings are stored in the trap's database (not written into the TOML file, which belongs to
the technician) and logged at start-up, so a remote change survives a reboot visibly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_app.core import config
from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, StorageError
from edge_app.core.topics import media_topic
from edge_app.trap.store.db import db_path, open_db, transaction
from edge_app.trap.store.outbox import Kind, Outbox

logger = logging.getLogger(__name__)

ALLOWED_KEYS: tuple[str, ...] = (
    "detector.score_threshold",
    "detector.species_threshold",
    "detector.whole_frame_species_threshold",
    "policy.empty_below",
    "camera.burst_frames",
    "camera.burst_interval_s",
    "mqtt.stats_interval_s",
    "mqtt.send_images",
)
COMMANDS: tuple[str, ...] = ("config/set", "media/request", "resend")
MAX_ID_LEN = 128
MAX_RESEND = 1000
MAX_CHUNKS = 100_000
_REMEMBER = 256


class CommandError(ValueError):
    """A command that cannot be run as given; its message goes into the error result."""


def with_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    """``cfg`` with dotted keys replaced, validated like a config file.

    Raises:
        ConfigError: a value is invalid (the error names the key).
    """
    data = dataclasses.asdict(cfg)
    for key, value in settings.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    return config.parse(data)


def load_settings(cfg: Config, conn: sqlite3.Connection) -> Config:
    """Apply the settings stored by earlier ``config/set`` commands to a freshly loaded config.

    A stored value that is no longer valid (the key left the allow-list, or the schema changed
    in an update) is skipped with a warning rather than stopping the trap.
    """
    rows = conn.execute("SELECT key, value FROM settings ORDER BY key").fetchall()
    out = cfg
    for r in rows:
        key, value = str(r[0]), json.loads(r[1])
        if key not in ALLOWED_KEYS:
            logger.warning("stored remote setting %s ignored: not settable remotely", key)
            continue
        try:
            out = with_settings(out, {key: value})
        except ConfigError as e:
            logger.warning("stored remote setting %s = %r ignored: %s", key, value, e.reason)
            continue
        logger.info("remote setting %s = %r (from an earlier config/set)", key, value)
    return out


def load_settings_from_db(cfg: Config) -> Config:
    """:func:`load_settings` on the trap database under ``storage.root`` (created if new)."""
    try:
        conn = open_db(db_path(cfg.storage.root))
    except StorageError as e:
        logger.error("remote settings not applied: %s", e)
        return cfg
    try:
        return load_settings(cfg, conn)
    finally:
        conn.close()


class Commands:
    """Runs commands on the uplink thread, against the uplink's own database connection.

    Args:
        get_cfg: the current configuration.
        apply_cfg: installs a new configuration (the daemon applies it to every stage).
        clock: wall time for stored settings and queued rows.
    """

    def __init__(
        self, get_cfg: Callable[[], Config], apply_cfg: Callable[[Config], None], clock: Clock
    ) -> None:
        self._get_cfg = get_cfg
        self._apply_cfg = apply_cfg
        self._clock = clock
        self._done: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def handle(self, name: str, payload: bytes, conn: sqlite3.Connection) -> dict[str, Any]:
        """Run one command; returns its result object (always has ``id`` and ``ok``)."""
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return _error(None, "payload is not JSON")
        if not isinstance(body, dict):
            return _error(None, "payload is not a JSON object")
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
            else:
                result.update(self._resend(body, conn))
        except CommandError as e:
            result = _error(cmd_id, str(e))
        except sqlite3.Error as e:
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
        for key in values:
            if key not in ALLOWED_KEYS:
                raise CommandError(f"{key!r} cannot be set remotely (allowed: "
                                   f"{', '.join(ALLOWED_KEYS)})")
        try:
            new = with_settings(self._get_cfg(), values)
        except ConfigError as e:
            raise CommandError(str(e)) from e
        now = self._clock.wall()
        with transaction(conn):
            for key, value in values.items():
                conn.execute(
                    "INSERT INTO settings (key, value, updated, source) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "updated = excluded.updated, source = excluded.source",
                    (key, json.dumps(value), now, "config/set"),
                )
        self._apply_cfg(new)
        return {"applied": values}

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
        cfg = self._get_cfg()
        path = Path(cfg.storage.root) / rel if rel else None
        if path is None or not path.is_file():
            raise CommandError(f"{media_id} is not on the card (pruned or never written)")
        total = max(1, math.ceil(path.stat().st_size / cfg.mqtt.chunk_bytes))
        if chunks is not None and (of not in (None, total) or max(chunks) >= total):
            chunks = None  # chunked differently (another chunk size): send the whole file
        outbox = Outbox(conn, self._clock, cfg.outbox)
        row = outbox.enqueue(
            Kind.IMAGE if kind == "image" else Kind.THUMB,
            media_topic(cfg.mqtt.topic_prefix, cfg.unit.id, media_id),
            media_path=str(rel), event_id=event_id, chunks=chunks,
        )
        return {"media": media_id, "queued": row, "chunks": chunks or "all", "of": total}

    def _resend(self, body: dict[str, Any], conn: sqlite3.Connection) -> dict[str, Any]:
        _only(body, {"id", "events", "from_seq", "to_seq"})
        cfg = self._get_cfg()
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


def _error(cmd_id: str | None, message: str) -> dict[str, Any]:
    return {"id": cmd_id, "ok": False, "error": message}
