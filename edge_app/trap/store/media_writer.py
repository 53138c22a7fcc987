"""The event's media on the card: the chosen frame, EXIF-stamped, and its thumbnail.

Apart from the store stage's transaction (:mod:`edge_app.trap.store.pipeline`) because this is
where a full card is met first and degraded around: in an emergency (the space reserve given
up) only the thumbnail is written, and a write that fails with ENOSPC is tried once more after
pruning. Files are written before the rows that point to them (see the store's docstring).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path

from edge_app.core.config import Config
from edge_app.core.errors import ImageError
from edge_app.core.events import Burst, Frame, Verdict
from edge_app.trap.store import exif
from edge_app.trap.store.media import (
    MediaKind,
    MediaRef,
    frame_image,
    frame_thumbnail,
    media_paths,
    store_file,
)
from edge_app.trap.store.retention import DiskGuard

logger = logging.getLogger(__name__)

MakeRoom = Callable[[bool, int], bool]
"""The store's pruning: (force, bytes needed) → True if anything was freed."""


def pick_frame(burst: Burst, verdict: Verdict) -> Frame | None:
    """The frame to keep: the verdict's best one, else the first frame after the trigger."""
    if 0 <= verdict.best_index < len(burst.frames):
        return burst.frames[verdict.best_index]
    for f in burst.frames:
        if not f.pre_trigger:
            return f
    return burst.frames[0] if burst.frames else None


class MediaWriter:
    """Writes one event's media under the storage root (store thread only).

    Args:
        cfg: ``camera.jpeg_quality``, ``storage.thumb_*``, the unit id and location (EXIF).
        root: the storage root.
        guard: the disk guard (is the reserve given up?).
        make_room: the store's pruning, run on the store's own connection.
    """

    def __init__(self, cfg: Config, root: Path, guard: DiskGuard, make_room: MakeRoom) -> None:
        self.cfg = cfg
        self.root = root
        self.guard = guard
        self._make_room = make_room

    def write(
        self, event_id: str, burst: Burst, verdict: Verdict
    ) -> tuple[MediaRef | None, MediaRef | None]:
        """Write the chosen frame and its thumbnail; failures are logged, not raised.

        A full or failing card must not cost the alert: the event is still catalogued and
        queued, just without the media that could not be written. While the space reserve is
        in use (the card is full and nothing is left to prune) only the small thumbnail is
        kept, so the reserve goes to alerts, not to the next 2 MB frame.
        """
        frame = pick_frame(burst, verdict)
        if frame is None:
            return None, None
        img_path, thumb_path = media_paths(self.root, event_id, burst.trigger.wall)
        image = thumb = None
        if self.guard.emergency():
            logger.warning("%s: card full, space reserve in use: keeping the thumbnail only",
                           event_id)
        else:
            try:
                # A live-path frame (pixels, no JPEG yet) is encoded here, once, for the
                # events that keep it; a replayed frame is stored as its own bytes.
                data = frame_image(frame, self.cfg.camera.jpeg_quality)
                tagged = exif.stamp(
                    data, unit_id=self.cfg.unit.id, event_id=event_id,
                    wall=burst.trigger.wall, location=self.cfg.unit.location,
                    verdict={"outcome": verdict.outcome, "label": verdict.label,
                             "species": verdict.species, "score": round(verdict.score, 3)},
                )
                image = self._store(img_path, tagged, f"{event_id}-image", "image")
            except (OSError, ImageError) as e:
                logger.error("%s: frame not written (%s); storing the event without it",
                             event_id, e)
        try:
            small = frame_thumbnail(frame, self.cfg.storage.thumb_px,
                                    self.cfg.storage.thumb_quality,
                                    int(self.cfg.storage.thumb_max_kb * 1024))
        except ImageError as e:
            logger.warning("%s: no thumbnail: %s", event_id, e)
            return image, None
        try:
            thumb = self._store(thumb_path, small, f"{event_id}-thumb", "thumb")
        except OSError as e:
            logger.error("%s: thumbnail not written: %s", event_id, e)
        return image, thumb

    def _store(self, path: Path, data: bytes, media_id: str, kind: MediaKind) -> MediaRef:
        """:func:`store_file`, once more after pruning if the card was full.

        Raises:
            OSError: the file could not be written even after pruning.
        """
        try:
            return store_file(path, data, media_id, kind)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            logger.warning("%s: card full while writing %s: pruning", media_id, path.name)
            if not self._make_room(True, len(data)):
                raise
        return store_file(path, data, media_id, kind)

    def rel(self, ref: MediaRef | None) -> str | None:
        """A media path relative to the storage root, so the card can be read elsewhere."""
        if ref is None:
            return None
        try:
            return str(ref.path.relative_to(self.root))
        except ValueError:
            return str(ref.path)
