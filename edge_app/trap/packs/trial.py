"""A newly switched model pack is on trial until the daemon has run healthy with it.

Why: the install self-test loads the pack and replays its samples, but only the daemon proves
the pack works *on this unit* (memory, the camera's frames, the other models beside it). A
pack that passes its self-test and then stops the daemon from starting — or crashes it over
and over — must not leave a trap blind for months with nobody near it. So:

* the installer writes ``<models>/trial.json`` (the version, zero starts) right after the
  switch, atomically;
* each daemon start counts one start; a start beyond :data:`MAX_TRIAL_STARTS`, or a start the
  pack itself refuses (a model error), rolls back to the previous pack first;
* :data:`CONFIRM_AFTER_S` of healthy running (the watchdog's verdict) ends the trial.

A power cut at any point leaves either the trial file or not: one file, replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_app.core.errors import ModelError
from edge_app.core.files import atomic_write
from edge_app.trap.detect.cards import ACTIVE_PACK

log = logging.getLogger(__name__)

TRIAL = "trial.json"
MAX_TRIAL_STARTS = 3
"""Starts a pack on trial gets; systemd restarts a failed daemon every few seconds, so three
starts that never reached :data:`CONFIRM_AFTER_S` of health are a pack that does not work."""
CONFIRM_AFTER_S = 120.0
"""Healthy running (every stage beating) that confirms a pack."""
MAX_TRIAL_BYTES = 4096


@dataclass
class Trial:
    """The pack on trial in ``root`` (None-safe: every method is a no-op without one)."""

    root: Path
    version: str | None
    starts: int = 0

    @classmethod
    def load(cls, root: Path) -> Trial:
        """The trial record; a missing, oversized or unreadable one means no trial (a record
        that cannot be read must not roll a working pack back)."""
        path = root / TRIAL
        try:
            raw = path.read_bytes()[: MAX_TRIAL_BYTES + 1]
            data = json.loads(raw) if len(raw) <= MAX_TRIAL_BYTES else None
        except (OSError, ValueError):
            return cls(root, None)
        if (not isinstance(data, dict) or not isinstance(data.get("version"), str)
                or not isinstance(data.get("starts"), int) or isinstance(data["starts"], bool)):
            log.warning("ignoring unreadable %s", path)
            return cls(root, None)
        return cls(root, data["version"], max(0, data["starts"]))

    @classmethod
    def begin(cls, root: Path, version: str) -> Trial:
        """The installer just switched to ``version``: it is on trial from now on."""
        trial = cls(root, version, 0)
        trial._save()
        return trial

    def _save(self) -> None:
        atomic_write(self.root / TRIAL, json.dumps(
            {"version": self.version, "starts": self.starts}).encode())

    def end(self) -> None:
        """No trial any more (confirmed, or rolled back)."""
        (self.root / TRIAL).unlink(missing_ok=True)
        self.version = None

    def pending(self) -> bool:
        """A trial for the pack that is active now (a trial of a pack no longer active — a
        manual rollback happened — is over)."""
        if self.version is None:
            return False
        try:
            return os.readlink(self.root / ACTIVE_PACK) == os.path.join("packs", self.version)
        except OSError:
            return False

    def count_start(self, rollback: Callable[[], str]) -> str | None:
        """One daemon start; rolls back first when the pack used up its starts.

        Returns:
            What was done, for the log, or None.
        """
        if self.version is None:
            return None
        if not self.pending():
            self.end()
            return None
        self.starts += 1
        if self.starts > MAX_TRIAL_STARTS:
            return self.roll_back(rollback, f"{self.starts - 1} starts without "
                                  f"{CONFIRM_AFTER_S:.0f} s of healthy running")
        self._save()
        return None

    def roll_back(self, rollback: Callable[[], str], why: str) -> str | None:
        """Back to the previous pack because the one on trial failed; None without a trial.

        ``rollback`` makes the previous pack active and returns its version (the installer's
        :func:`~edge_app.trap.packs.install.rollback`, which re-verifies it first).
        """
        if not self.pending():
            return None
        failed = self.version
        try:
            back_to = rollback()
        except ModelError as e:
            log.critical("model pack %s failed on trial (%s) and cannot be rolled back: %s",
                         failed, why, e)
            self.end()
            return None
        self.end()
        msg = f"model pack {failed} failed on trial ({why}): rolled back to {back_to}"
        log.critical("%s", msg)
        return msg

    def healthy_for(self, seconds: float) -> bool:
        """The daemon has run healthy this long: confirm the pack. True when it confirmed."""
        if seconds < CONFIRM_AFTER_S or not self.pending():
            return False
        log.info("model pack %s confirmed after %.0f s of healthy running", self.version,
                 seconds)
        self.end()
        return True
