"""EXIF on stored frames: what Timelapse, MegaDetector and Camtrap DP tools read.

A card pulled from a trap months later must still say which unit took each photo, when and
where, without the catalogue next to it. piexif inserts the EXIF segment without re-encoding
the JPEG (the pixels the detector saw are the pixels stored), and picamera2 already depends on
it. Tags follow the camera-trap convention (MegaDetector's minimal set plus GPS): Make/Model,
DateTimeOriginal with OffsetTimeOriginal (UTC, written as +00:00 so no reader guesses a zone),
ImageUniqueID = the event id, GPS from the config, and the verdict as compact JSON in
UserComment.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import piexif

from edge_app import __version__
from edge_app.core.config import LocationConfig

logger = logging.getLogger(__name__)

MAKE = b"camtrap"


def _dms(value: float) -> tuple[tuple[int, int], ...]:
    """Degrees as EXIF's three rationals (degrees, minutes, seconds to 1/1000)."""
    v = abs(value)
    deg = int(v)
    minutes = int((v - deg) * 60)
    seconds = Fraction(round((v - deg - minutes / 60) * 3600 * 1000), 1000)
    return ((deg, 1), (minutes, 1), (seconds.numerator, seconds.denominator))


def _gps(loc: LocationConfig) -> dict[int, Any]:
    if loc.lat == 0.0 and loc.lon == 0.0:
        return {}  # not configured: no position is better than a wrong one at 0°N 0°E
    return {
        piexif.GPSIFD.GPSVersionID: (2, 3, 0, 0),
        piexif.GPSIFD.GPSLatitudeRef: b"N" if loc.lat >= 0 else b"S",
        piexif.GPSIFD.GPSLatitude: _dms(loc.lat),
        piexif.GPSIFD.GPSLongitudeRef: b"E" if loc.lon >= 0 else b"W",
        piexif.GPSIFD.GPSLongitude: _dms(loc.lon),
        piexif.GPSIFD.GPSMapDatum: b"WGS-84",
    }


def stamp(
    jpeg: bytes,
    *,
    unit_id: str,
    event_id: str,
    wall: float,
    location: LocationConfig,
    verdict: dict[str, Any],
) -> bytes:
    """Return ``jpeg`` with camtrap's EXIF merged into whatever EXIF it already had.

    Existing tags (Orientation above all: the stored frame must still display upright) are
    kept; ours overwrite theirs. A frame whose own EXIF cannot be parsed gets a fresh segment.
    Never raises for bad input: if the JPEG cannot take EXIF at all, it is returned unchanged
    and the failure is logged — an untagged photo beats a lost one.
    """
    if not jpeg.startswith(b"\xff\xd8"):
        # Not a JPEG: piexif would take the bytes for a *file name*. Store it as it came.
        logger.warning("%s: not a JPEG, stored without EXIF", event_id)
        return jpeg
    try:
        theirs: dict[str, Any] = piexif.load(jpeg)
    except Exception:  # noqa: BLE001 - piexif raises bare ValueError/struct.error/... on junk
        theirs = {}
    ours = _ours(unit_id, event_id, wall, location, verdict)
    orientation = theirs.get("0th", {}).get(piexif.ImageIFD.Orientation)
    minimal = {k: dict(v) for k, v in ours.items()}
    if orientation is not None:
        minimal["0th"][piexif.ImageIFD.Orientation] = orientation
    merged = {ifd: {**theirs.get(ifd, {}), **ours[ifd]} for ifd in ours}
    # Their tags first; if piexif cannot write back what it read (it reads some types it
    # cannot dump), ours plus the orientation; failing that, the frame as captured.
    for exif in (merged, minimal):
        try:
            blob = piexif.dump(exif)
            buf = io.BytesIO()
            piexif.insert(blob, jpeg, buf)
            return buf.getvalue()
        except Exception as e:  # noqa: BLE001 - never lose the frame over metadata
            error = e
    logger.warning("%s: EXIF not written (%s); storing the frame as captured", event_id, error)
    return jpeg


def _ours(
    unit_id: str, event_id: str, wall: float, location: LocationConfig, verdict: dict[str, Any]
) -> dict[str, dict[int, Any]]:
    """camtrap's own tags per IFD (the camera's embedded thumbnail, "1st", is dropped)."""
    t = datetime.fromtimestamp(wall, tz=UTC)
    stamp_s = t.strftime("%Y:%m:%d %H:%M:%S").encode()
    zeroth: dict[int, Any] = {
        piexif.ImageIFD.Make: MAKE,
        piexif.ImageIFD.Model: unit_id.encode(),
        piexif.ImageIFD.Software: f"camtrap {__version__}".encode(),
        piexif.ImageIFD.DateTime: stamp_s,
    }
    if location.name:
        zeroth[piexif.ImageIFD.ImageDescription] = location.name.encode("utf-8")
    comment = json.dumps({"event": event_id, **verdict}, separators=(",", ":"))
    return {
        "0th": zeroth,
        "Exif": {
            piexif.ExifIFD.DateTimeOriginal: stamp_s,
            piexif.ExifIFD.OffsetTimeOriginal: b"+00:00",
            piexif.ExifIFD.SubSecTimeOriginal: f"{t.microsecond // 1000:03d}".encode(),
            piexif.ExifIFD.ImageUniqueID: event_id.encode(),
            piexif.ExifIFD.BodySerialNumber: unit_id.encode(),
            piexif.ExifIFD.UserComment: b"ASCII\0\0\0" + comment.encode("ascii", "replace"),
        },
        "GPS": _gps(location),
    }
