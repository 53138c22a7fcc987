"""Model packs over MQTT: the ``models/offer`` and ``models/install`` commands and the chunks.

The exchange, driven by the sender (``camtrap models push`` at the base station)::

    cmd/models/offer    {"id", "pack": <sha256>, "bytes": N, "chunk_bytes": C}
      result            {"id", "ok": true, "pack", "of": K, "missing": [chunk, ...]}
    pack/<sha256>/<i>   the raw bytes of chunk i (QoS 1), only the missing ones, in rounds
    cmd/models/offer    again: the answer says what is still missing (resumable at any point,
                        across outages and power cuts: the chunks on the card stay there)
    cmd/models/install  {"id", "pack": <sha256>}
      result            {"id", "ok": true, "version", "previous", "restarting": true}
                        or {"id", "ok": false, "error": "<why, naming the file>"}

``models/install`` runs the same installer as ``camtrap models install`` on the uplink thread
(signature against ``detector.pack_public_key``, every file against its card, the self-test,
the atomic switch), so a pack refused there is refused here with the same reason and the
active pack is untouched. After a switch the daemon restarts itself (exit 75, which systemd's
``Restart=on-failure`` turns into a fresh start) to load the new models, and the new pack is on
trial (:mod:`edge_app.trap.packs.trial`): rolled back by itself if the daemon cannot start or
run healthy with it.

Why install on the uplink thread rather than a stage of its own: the command's one result must
say whether the pack went in, and the uplink is idle meanwhile anyway (a few seconds of
verifying and invoking, well inside its watchdog deadline); a new stage and queue would buy
nothing but a second answer to correlate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_app.core.config import Config
from edge_app.core.errors import ModelError
from edge_app.trap.packs.download import DownloadError, Downloads
from edge_app.trap.packs.install import Installed, active, install
from edge_app.trap.packs.manifest import decode_public_key
from edge_app.trap.packs.trial import Trial

log = logging.getLogger(__name__)

EXIT_RESTART = 75
"""``camtrap run``'s exit status after a pack switch (EX_TEMPFAIL): systemd restarts it."""


class PackCommandError(ValueError):
    """A pack command that cannot be run as given (the message goes into its result)."""


class RemotePacks:
    """A unit's side of pack delivery over MQTT.

    Args:
        downloads: the incoming pack on the card.
        models_root: the models folder the daemon loads from (``current`` lives there).
        public_key: the fleet's Ed25519 public key (``detector.pack_public_key``).
        on_installed: called after a switch, before the result is published; the daemon asks
            for its own restart there.
    """

    def __init__(self, downloads: Downloads, models_root: Path, public_key: bytes,
                 on_installed: Callable[[Installed], None] | None = None) -> None:
        self.downloads = downloads
        self.models_root = models_root
        self.public_key = public_key
        self.on_installed = on_installed

    def offer(self, body: dict[str, Any]) -> dict[str, Any]:
        """``models/offer``: start or resume; say which chunks are missing."""
        _only(body, {"id", "pack", "bytes", "chunk_bytes"})
        size, chunk = body.get("bytes"), body.get("chunk_bytes")
        if not isinstance(size, int) or not isinstance(chunk, int) or _is_bool(size, chunk):
            raise PackCommandError("'bytes' and 'chunk_bytes' must be integers")
        try:
            p = self.downloads.offer(str(body.get("pack", "")), size, chunk)
        except DownloadError as e:
            raise PackCommandError(str(e)) from e
        except OSError as e:  # the card: full, read-only, gone
            raise PackCommandError(f"cannot write the download: {e}") from e
        return {"pack": p.sha256, "of": p.of, "missing": p.missing}

    def chunk(self, sha: str, index: int, data: bytes) -> None:
        """One chunk from ``pack/<sha>/<index>``.

        Raises:
            DownloadError: not offered, out of range or the wrong length (the link counts it).
        """
        self.downloads.chunk(sha, index, data)

    def install(self, body: dict[str, Any]) -> dict[str, Any]:
        """``models/install``: check the whole download, install it, ask for the restart."""
        _only(body, {"id", "pack"})
        sha = str(body.get("pack", ""))
        try:
            path = self.downloads.complete(sha)
        except DownloadError as e:
            raise PackCommandError(str(e)) from e
        try:
            done = install(path, self.models_root, self.public_key)
        except OSError as e:  # the installer cleans its staging folder up; current is intact
            raise PackCommandError(f"cannot install, the active pack is unchanged: {e}") from e
        except ModelError as e:
            self.downloads.discard()  # a refused pack does not become good by waiting
            log.warning("model pack %s… refused: %s", sha[:12], e)
            raise PackCommandError(f"refused, the active pack is unchanged: {e}") from e
        self.downloads.discard()
        log.warning("model pack %s installed over MQTT (previous %s): restarting to load it",
                    done.version, done.previous)
        if self.on_installed is not None:
            self.on_installed(done)
        return {"version": done.version, "previous": done.previous, "restarting": True}


def for_config(cfg: Config, models_root: Path,
               on_installed: Callable[[Installed], None]) -> RemotePacks | None:
    """The unit's pack service, or None when it cannot check a pack (no public key: check-config
    has already refused a malformed one)."""
    if not cfg.detector.pack_public_key:
        return None
    return RemotePacks(Downloads(Path(cfg.storage.root), cfg.storage.min_free_mb), models_root,
                       decode_public_key(cfg.detector.pack_public_key), on_installed)


def pack_state(models_root: Path) -> dict[str, Any]:
    """The active pack for the stats message: what the station's fleet view shows."""
    return {"active": active(models_root), "previous": active(models_root, "previous"),
            "on_trial": Trial.load(models_root).pending()}


def _is_bool(*values: Any) -> bool:
    return any(isinstance(v, bool) for v in values)


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise PackCommandError(f"unknown field(s) {', '.join(extra)} (allowed: "
                               f"{', '.join(sorted(allowed))})")
