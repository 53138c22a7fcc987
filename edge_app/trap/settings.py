"""The one owner of the trap's settings: the TOML file plus the changes made remotely.

Why one owner: before this, the daemon, the store, the pipeline, the MQTT link and the LoRa
router each held a copy of the config, and each remote path rebuilt "the config" from its own
copy — so a LoRa ``set_threshold`` followed by an MQTT ``config/set`` of another key silently
undid the LoRa threshold until the next restart. Now every source of change (MQTT
``config/set``, LoRa downlinks, later the station) calls :meth:`Settings.apply`, which

1. refuses keys that are not settable remotely (:data:`ALLOWED_KEYS`),
2. validates the whole new config with the same code as the file (:func:`config.parse`:
   types, limits, non-finite numbers),
3. persists the changed keys once, in one transaction, in the ``settings`` table of the trap
   database (the TOML file belongs to the technician and is never rewritten),
4. swaps the effective config (a frozen object: readers see the old or the new one, never a
   mix) and notifies the subscribers.

At start, :meth:`Settings.load` applies the persisted changes over the file, skipping (with a
warning) any stored value the current schema no longer accepts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_app.core import config
from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, StorageError
from edge_app.core.guard import Refused, finite_number
from edge_app.trap.store.db import db_path, open_db, transaction

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
    "lorawan.mode",
    "lorawan.status_every_h",
)
"""What a ranger may tune from the office (by MQTT ``config/set`` or a LoRa downlink):
thresholds, the burst, the stats and status intervals, LoRa's mode. Where the
trap stores its data, which broker it trusts and its credentials are not settable remotely,
because a wrong value there cannot be undone remotely."""

Subscriber = Callable[[Config], None]


def with_values(cfg: Config, values: Mapping[str, Any]) -> Config:
    """``cfg`` with dotted keys replaced, validated exactly like a config file.

    Raises:
        ConfigError: an unknown key or an invalid value (the error names the key).
    """
    data = dataclasses.asdict(cfg)
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in data or not isinstance(data[section], dict) or not name \
                or name not in data[section]:
            raise ConfigError(key, "no such setting")
        if isinstance(value, float):
            try:
                finite_number(value, key)
            except Refused as e:
                raise ConfigError(key, e.reason) from None
        data[section][name] = value
    return config.parse(data)


def check_remote_keys(values: Mapping[str, Any]) -> None:
    """Refuse keys that cannot be set remotely.

    Raises:
        ConfigError: naming the first such key.
    """
    for key in values:
        if key not in ALLOWED_KEYS:
            raise ConfigError(key, f"cannot be set remotely (allowed: {', '.join(ALLOWED_KEYS)})")


class Settings:
    """The effective config and the only way to change it at run time. Thread-safe.

    Args:
        base: the config loaded from the file (already validated).
        clock: wall time stamped on persisted settings.
        path: the trap database holding the ``settings`` table (default: the one under
            ``base.storage.root``).
    """

    def __init__(self, base: Config, clock: Clock, path: Path | None = None) -> None:
        self._base = base
        self._clock = clock
        self._path = path if path is not None else db_path(base.storage.root)
        self._lock = threading.Lock()
        self._config = base
        self._subscribers: list[Subscriber] = []

    @property
    def config(self) -> Config:
        """The current effective config (a frozen object; read it again for later changes)."""
        return self._config

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(new_config)`` after every accepted change (on the changer's thread).

        A subscriber must be quick and must not call :meth:`apply`.
        """
        with self._lock:
            self._subscribers.append(callback)

    def load(self) -> Config:
        """Apply the persisted remote changes over the file's config; returns the result.

        A stored value the schema no longer accepts (the key left the allow-list, or an update
        changed its limits) is skipped with a warning rather than stopping the trap. A
        database that cannot be opened leaves the file's config in force (logged).
        """
        try:
            conn = open_db(self._path)
        except StorageError as e:
            logger.error("remote settings not applied: %s", e)
            return self._config
        try:
            rows = conn.execute("SELECT key, value, source FROM settings ORDER BY key").fetchall()
        finally:
            conn.close()
        out = self._base
        for key, raw, source in rows:
            try:
                value = json.loads(raw)
                check_remote_keys({key: value})
                out = with_values(out, {key: value})
            except (ConfigError, ValueError) as e:
                logger.warning("stored remote setting %s ignored: %s", key, e)
                continue
            logger.info("remote setting %s = %r (from an earlier %s)", key, value,
                        source or "change")
        with self._lock:
            self._config = out
        return out

    def apply(self, values: Mapping[str, Any], source: str) -> Config:
        """Validate, persist and install a remote change of one or more keys.

        Args:
            values: dotted key → new value, e.g. ``{"detector.score_threshold": 0.4}``.
            source: who asked (``config/set``, ``lorawan``...), stored with the value.

        Returns:
            The new effective config.

        Raises:
            ConfigError: a key is not settable remotely or a value is invalid; nothing changed.
            StorageError: the change could not be persisted; nothing changed.
        """
        if not values:
            raise ConfigError("values", "no setting given")
        check_remote_keys(values)
        with self._lock:
            new = with_values(self._config, values)
            self._persist(values, source)
            self._config = new
            subscribers = list(self._subscribers)
        logger.info("settings changed by %s: %s", source,
                    ", ".join(f"{k} = {v!r}" for k, v in values.items()))
        for callback in subscribers:
            callback(new)
        return new

    def _persist(self, values: Mapping[str, Any], source: str) -> None:
        now = self._clock.wall()
        conn = open_db(self._path)
        try:
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO settings (key, value, updated, source) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "updated = excluded.updated, source = excluded.source",
                    [(k, json.dumps(v, allow_nan=False), now, source)
                     for k, v in values.items()])
        except sqlite3.Error as e:
            raise StorageError(f"cannot store settings in {self._path}: {e}") from e
        finally:
            conn.close()
