"""EXIF stamped on stored frames: readable by the usual tools, pixels untouched, never fatal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.core.config import LocationConfig
from edge_app.trap.store.exif import stamp

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
WHERE = LocationConfig(lat=43.105, lon=131.567, name="Kedrovaya Pad ridge 3")


def tags(jpeg: bytes) -> tuple[dict[int, object], dict[int, object], dict[int, object]]:
    e = Image.open(io.BytesIO(jpeg)).getexif()
    return dict(e), dict(e.get_ifd(EXIF_IFD)), dict(e.get_ifd(GPS_IFD))


def stamped(data: bytes) -> bytes:
    return stamp(data, unit_id="LL-042", event_id="LL-042-17", wall=1_790_000_000.25,
                 location=WHERE, verdict={"label": "animal", "species": "leopard",
                                          "score": 0.91})


@pytest.mark.parametrize("name", ["human.jpg", "african_elephants_with_exif_orientation.jpg",
                                  "african_elephants_cmyk.jpg",
                                  "african_elephants_truncated_file.jpg", "blank.jpg"])
def test_stamped_tags_read_back_and_pixels_are_untouched(cameratrapai_dir: Path,
                                                         name: str) -> None:
    original = (cameratrapai_dir / name).read_bytes()
    out = stamped(original)
    zeroth, ex, gps = tags(out)
    assert zeroth[0x010F] == "camtrap"  # Make
    assert zeroth[0x0110] == "LL-042"  # Model = unit
    assert ex[0x9003] == "2026:09:21 14:13:20"  # DateTimeOriginal (UTC)
    assert ex[0x9011] == "+00:00"  # OffsetTimeOriginal
    assert ex[0xA420] == "LL-042-17"  # ImageUniqueID = event id
    comment = ex[0x9286]
    assert isinstance(comment, bytes)
    assert json.loads(comment[8:])["species"] == "leopard"
    assert gps[1] == "N"
    assert gps[2] == (43.0, 6.0, 18.0)
    assert gps[3] == "E"
    # The orientation the camera wrote survives, so the stored frame still shows upright.
    before = Image.open(io.BytesIO(original)).getexif().get(0x0112)
    assert zeroth.get(0x0112) == before
    if "truncated" not in name:  # same entropy-coded data: identical pixels after decode
        a = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"))
        b = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))
        assert np.array_equal(a, b)


def test_no_position_is_written_when_none_is_configured(cameratrapai_dir: Path) -> None:
    out = stamp((cameratrapai_dir / "blank.jpg").read_bytes(), unit_id="X", event_id="X-1",
                wall=0.0, location=LocationConfig(), verdict={})
    assert tags(out)[2] == {}


def test_not_a_jpeg_is_returned_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # piexif would treat non-JPEG bytes as a file name
    for junk in (b"", b"garbage", b"\x89PNG\r\n\x1a\n"):
        assert stamped(junk) == junk
