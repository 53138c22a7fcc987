"""Media files: atomic, fsynced writes; thumbnails; the on-card layout.

Layout under the storage root (UTC dates, so a unit's files sort the same wherever it is)::

    <root>/media/YYYY/MM/DD/<event_id>.jpg        the chosen frame, bytes as captured
    <root>/media/YYYY/MM/DD/<event_id>_thumb.jpg  a small JPEG for low-bandwidth links

Why atomic: a power cut while a JPEG is being written must leave either the old file, the new
file, or nothing under the final name, never half a JPEG that the catalogue points to. So every
file is written to a temp name in the *same* directory (``os.replace`` is only atomic within
one file system), fsynced, renamed, and then the directory is fsynced so the rename itself
survives. Temp files a crash left behind are removed by :func:`clean_temp` at start-up.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_app.core.errors import ImageError
from edge_app.core.events import Frame
from edge_app.core.files import TEMP_PREFIX, atomic_write

logger = logging.getLogger(__name__)

MEDIA_DIR = "media"

MediaKind = Literal["image", "thumb"]


@dataclass(frozen=True, slots=True)
class MediaRef:
    """One stored media file of an event.

    Attributes:
        id: media id, unique per unit (``<event_id>-image``); used in the media topic.
        kind: ``image`` (the frame as captured) or ``thumb``.
        path: where the file is on the card.
        bytes: file size.
        sha256: hex digest of the file, so a receiver can check a reassembled transfer.
    """

    id: str
    kind: MediaKind
    path: Path
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The ``media[]`` item of the event JSON (ARCHITECTURE §6); the path stays local."""
        return {"id": self.id, "kind": self.kind, "bytes": self.bytes, "sha256": self.sha256}


def media_paths(root: str | os.PathLike[str], event_id: str, wall: float) -> tuple[Path, Path]:
    """Image and thumbnail paths of an event taken at ``wall`` (Unix time, UTC date)."""
    day = datetime.fromtimestamp(wall, tz=UTC)
    d = Path(root) / MEDIA_DIR / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
    return d / f"{event_id}.jpg", d / f"{event_id}_thumb.jpg"


def store_file(
    path: Path, data: bytes, media_id: str, kind: MediaKind
) -> MediaRef:
    """Atomically write ``data`` and describe it as a :class:`MediaRef`."""
    atomic_write(path, data)
    return MediaRef(
        id=media_id, kind=kind, path=path, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )


def make_thumbnail(jpeg: bytes, px: int, quality: int, max_bytes: int = 0) -> bytes:
    """A JPEG whose longest side is at most ``px``, upright, without EXIF.

    ``draft()`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding (DCT scaling),
    which on a Pi Zero is several times faster than decoding the full frame and resizing.
    The EXIF orientation is applied so that thumbnails of a rotated camera look right.

    A truncated JPEG (a frame cut short) is decoded as far as its data goes, by retrying with
    an End-Of-Image marker appended, rather than by flipping Pillow's process-wide
    ``LOAD_TRUNCATED_IMAGES`` flag, which would change decoding for every other thread.

    Args:
        jpeg: the source JPEG.
        px: longest side of the result, pixels.
        quality: JPEG quality of the result (10–100).
        max_bytes: if the result is larger, encode again at lower quality (down to 30), then
            smaller, until it fits (0: no limit). A thumbnail is what crosses a weak link right
            after the alert, so its size is a budget, not a guess.

    Raises:
        ImageError: the bytes cannot be decoded as an image.
    """
    try:
        return _thumbnail(jpeg, px, quality, max_bytes)
    except Image.DecompressionBombError as e:  # neither OSError nor ValueError
        raise ImageError(f"cannot make a thumbnail: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as first:
        if not jpeg.startswith(_SOI):
            raise ImageError(f"cannot make a thumbnail: {first}") from first
        try:
            small = _thumbnail(jpeg + _EOI, px, quality, max_bytes)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot make a thumbnail: {e}") from e
        logger.info("thumbnail made from a truncated JPEG (%s)", first)
        return small


_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"


def _thumbnail(jpeg: bytes, px: int, quality: int, max_bytes: int = 0) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as im:
        # draft() keeps the decoded size >= the request; asking for a square box keeps that
        # true whichever way the EXIF orientation turns the image afterwards.
        im.draft("RGB", (px, px))
        upright = ImageOps.exif_transpose(im)
        upright.thumbnail((px, px), Image.Resampling.BILINEAR, reducing_gap=2.0)
        if upright.mode not in ("RGB", "L"):
            upright = upright.convert("RGB")
        return _fit(upright, quality, max_bytes)


def _fit(small: Image.Image, quality: int, max_bytes: int) -> bytes:
    """``small`` as JPEG, at lower quality and then smaller until it fits ``max_bytes``."""
    out = _encode(small, quality)
    while max_bytes and len(out) > max_bytes:
        if quality > 30:
            quality = max(30, quality - 10)
        elif min(small.size) > 32:
            small = small.resize((max(1, small.width * 3 // 4), max(1, small.height * 3 // 4)),
                                 Image.Resampling.BILINEAR)
        else:
            break
        out = _encode(small, quality)
    return out


def _pixels_image(pixels: Any) -> Image.Image:
    """A live-path frame's array as an RGB Pillow image.

    Raises:
        ImageError: not an ``(H, W, 3|4)`` or ``(H, W)`` uint8 array.
    """
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or not (
            pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))) \
            or pixels.size == 0:
        raise ImageError(f"not an image array: {getattr(pixels, 'shape', None)}")
    arr = np.ascontiguousarray(pixels)
    if arr.ndim == 2:
        return Image.fromarray(arr, "L")
    if arr.shape[2] == 4:
        return Image.frombuffer("RGBX", (arr.shape[1], arr.shape[0]), arr, "raw", "RGBX", 0,
                                1).convert("RGB")
    return Image.fromarray(arr, "RGB")


def encode_pixels(pixels: Any, quality: int) -> bytes:
    """A live-path frame's pixels as a JPEG (the store's one encode per kept event).

    The camera hands the detector raw arrays; only the frame that is kept is encoded, here,
    at ``camera.jpeg_quality`` (~3 ms for 1280×720 on the x86 test machines).

    Raises:
        ImageError: ``pixels`` is not an image array.
    """
    return _encode(_pixels_image(pixels), quality, optimize=False)


def thumbnail_from_pixels(pixels: Any, px: int, quality: int, max_bytes: int = 0) -> bytes:
    """:func:`make_thumbnail` for a live-path frame: straight from its pixels, not from the
    JPEG just encoded (no decode).

    Raises:
        ImageError: ``pixels`` is not an image array.
    """
    im = _pixels_image(pixels)
    im.thumbnail((px, px), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return _fit(im, quality, max_bytes)


def frame_image(frame: Frame, quality: int) -> bytes:
    """The JPEG to store for ``frame``: its own bytes (a replayed file, unchanged), else its
    pixels encoded now.

    Raises:
        ImageError: the frame has neither.
    """
    if frame.jpeg:
        return frame.jpeg
    if frame.pixels is None:
        raise ImageError("frame has neither JPEG bytes nor pixels")
    return encode_pixels(frame.pixels, quality)


def frame_thumbnail(frame: Frame, px: int, quality: int, max_bytes: int = 0) -> bytes:
    """The thumbnail of ``frame``, from its pixels when it has them, else from its JPEG.

    Raises:
        ImageError: nothing decodable.
    """
    if frame.pixels is not None:
        return thumbnail_from_pixels(frame.pixels, px, quality, max_bytes)
    return make_thumbnail(frame.jpeg, px, quality, max_bytes)


def _encode(im: Image.Image, quality: int, optimize: bool = True) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality, optimize=optimize)
    return out.getvalue()


def clean_temp(root: str | os.PathLike[str]) -> int:
    """Remove temp files left by writes a crash interrupted; returns how many.

    Only names starting with :data:`TEMP_PREFIX` are touched: a finished file is never
    removed. Call at start-up, before the store thread writes anything.
    """
    base = Path(root) / MEDIA_DIR
    removed = 0
    if not base.is_dir():
        return 0
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            try:
                os.unlink(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            removed += 1
    if removed:
        logger.warning("removed %d unfinished media file(s) under %s", removed, base)
    return removed
