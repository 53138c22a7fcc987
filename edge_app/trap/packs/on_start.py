"""The daemon's side of a model pack's trial (:mod:`edge_app.trap.packs.trial`): count each
start, roll back when the pack stops the daemon from starting, confirm it once healthy.

A separate module because it needs both the trial record and the installer's rollback, and
the installer itself writes the trial record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edge_app.core.clock import Clock
from edge_app.core.config import Config
from edge_app.core.errors import ConfigError, ModelError
from edge_app.core.models_dir import resolve_models_dir
from edge_app.trap.packs.install import rollback
from edge_app.trap.packs.manifest import decode_public_key
from edge_app.trap.packs.trial import Trial

log = logging.getLogger(__name__)


class PackTrial:
    """What ``camtrap run`` does about a pack on trial; every method is a no-op without one.

    Args:
        trial: the record, None when no pack is on trial.
        public_key: the fleet key the previous pack is re-verified with before it returns.
    """

    def __init__(self, trial: Trial | None, public_key: bytes = b"") -> None:
        self._trial = trial if trial is not None and trial.version is not None else None
        self._key = public_key

    @classmethod
    def for_config(cls, cfg: Config, models: str | None) -> PackTrial:
        """The trial in the models folder ``run`` is about to use, if any."""
        try:
            root = resolve_models_dir(models, cfg.detector.models_dir)
        except (ConfigError, ModelError):
            return cls(None)  # no folder: preflight reports it, in its own order
        trial = Trial.load(root)
        if trial.version is None:
            return cls(None)
        try:
            key = decode_public_key(cfg.detector.pack_public_key)
        except ModelError as e:
            log.error("a model pack is on trial but it cannot be rolled back: %s", e)
            return cls(None)
        return cls(trial, key)

    def _rollback(self) -> str:
        assert self._trial is not None
        return rollback(Path(self._trial.root), self._key).version

    def count_start(self) -> bool:
        """One more start of the pack on trial; True when it was rolled back instead."""
        if self._trial is None:
            return False
        return self._trial.count_start(self._rollback) is not None

    def failed(self, why: str) -> bool:
        """The pack on trial stopped the daemon from starting: True when rolled back."""
        if self._trial is None:
            return False
        return self._trial.roll_back(self._rollback, why) is not None

    def watch(self, clock: Clock) -> Callable[[bool], None] | None:
        """A watchdog hook that confirms the pack after enough healthy running."""
        trial = self._trial
        if trial is None or not trial.pending():
            return None
        since: list[float | None] = [None]

        def on_tick(healthy: bool) -> None:
            now = clock.monotonic()
            if not healthy:
                since[0] = None
                return
            start = since[0] if since[0] is not None else now
            since[0] = start
            trial.healthy_for(now - start)

        return on_tick
