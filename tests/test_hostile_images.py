"""The image door (``decode_image``): huge, truncated and random images are refused per file.

Before: a 16000×12000 JPEG raised Pillow's ``DecompressionBombError`` (neither ``OSError`` nor
``ValueError``), so ``camtrap detect`` stopped mid-folder with a traceback and the trap's
detect stage crashed on every burst holding one. After: the header's pixel count is checked
against ``detector.max_pixels`` before decoding; whatever the bytes, the door answers with a
decoded image or an ``ImageError``.

The huge JPEGs are made cheaply: a 16×16 JPEG whose frame header claims 16000×12000 (630
bytes, ~20 ms), plus one real 16000×12000 JPEG (solid grey at quality 1: 2.2 MB, ~0.45 s and
~190 MB of RAM to encode) to show the header check is not fooled by the forgery's shortcut.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_app import cli
from edge_app.core.config import MAX_PIXELS_DEFAULT, DetectorConfig, PolicyConfig
from edge_app.core.errors import ImageError
from edge_app.core.events import Frame
from edge_app.trap.detect import preprocess
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.policy import decide
from edge_app.trap.detect.preprocess import DecodedImage, decode_image

_SOF = (0xC0, 0xC1, 0xC2)


def small_jpeg(size: tuple[int, int] = (16, 16), quality: int = 10) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 110, 70)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def small_png(size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 110, 70)).save(buf, "PNG")
    return buf.getvalue()


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF) claiming ``width`` × ``height``."""
    b = bytearray(jpeg)
    i = 2
    while i + 4 <= len(b):
        marker, length = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in _SOF:
            struct.pack_into(">HH", b, i + 5, height, width)
            return bytes(b)
        i += 2 + length
    raise AssertionError("no SOF marker")


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR claiming ``width`` × ``height``, CRC fixed (a forger would)."""
    b = bytearray(png)
    struct.pack_into(">II", b, 16, width, height)
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    return bytes(b)


HUGE = with_jpeg_size(small_jpeg(), 16000, 12000)


def _refused_for_pixels(e: ImageError) -> bool:
    return "detector.max_pixels" in str(e) or "too many pixels" in str(e)


# --------------------------------------------------------------------------- the door itself


def test_a_16000_by_12000_jpeg_header_is_refused_before_decoding() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"16000x12000 is 192\.0 megapixels.*max_pixels"):
        decode_image(HUGE, (640, 640))
    assert time.perf_counter() - t0 < 0.5


def test_a_real_16000_by_12000_jpeg_is_refused_too() -> None:
    buf = io.BytesIO()
    Image.new("L", (16000, 12000), 90).save(buf, "JPEG", quality=1)
    data = buf.getvalue()
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="16000x12000"):
        decode_image(data, (640, 640))
    assert time.perf_counter() - t0 < 0.5  # the header only: no 192 MP decode


@pytest.mark.parametrize("fast", [True, False], ids=["libjpeg-turbo", "pillow-only"])
def test_the_limit_is_exact_on_both_jpeg_paths(fast: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if not fast:
        monkeypatch.setattr(preprocess, "_sj", None)  # as on a machine without simplejpeg
    data = small_jpeg((100, 50))
    assert decode_image(data, (64, 64), max_pixels=5000).original_size == (100, 50)
    with pytest.raises(ImageError, match="100x50"):
        decode_image(data, (64, 64), max_pixels=4999)
    with pytest.raises(ImageError) as e:
        decode_image(HUGE, (640, 640))
    assert _refused_for_pixels(e.value)


def test_png_headers_are_checked_too() -> None:
    png = small_png((100, 50))
    assert decode_image(png, max_pixels=5000).original_size == (100, 50)
    with pytest.raises(ImageError, match="100x50"):
        decode_image(png, max_pixels=4999)
    for w, h in ((16000, 12000), (65535, 65535)):  # below and above Pillow's own bomb limit
        with pytest.raises(ImageError) as e:
            decode_image(with_png_size(png, w, h))
        assert _refused_for_pixels(e.value)


def test_only_jpeg_and_png_are_opened() -> None:
    for fmt in ("BMP", "GIF", "TIFF", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, fmt)
        with pytest.raises(ImageError, match="not a JPEG or PNG"):
            decode_image(buf.getvalue())


def _door(data: bytes, max_pixels: int) -> DecodedImage | None:
    """The door's answer: a decoded image, or None for an ImageError; anything else fails."""
    try:
        out = decode_image(data, (64, 64), max_pixels=max_pixels)
    except ImageError:
        return None
    assert out.image.mode in ("RGB", "RGBX")
    w, h = out.original_size
    assert w * h <= max_pixels
    return out


SEEDS = [small_jpeg(), small_jpeg((40, 30), 90), small_png(), small_png((30, 20))]
DOOR = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@DOOR
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_refused_or_decoded(data: bytes) -> None:
    _door(data, MAX_PIXELS_DEFAULT)


@DOOR
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8))
def test_truncated_and_corrupted_images_are_refused_or_decoded(
    seed: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(seed[:max(cut, 1)])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    _door(bytes(data), MAX_PIXELS_DEFAULT)


# A JPEG side above libjpeg's 65500 goes past its header parse to Pillow's lazy open, which
# warns (DecompressionBombWarning) above 89 MP before the door refuses it: expected here.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@DOOR
@given(width=st.integers(0, 65535), height=st.integers(0, 65535),
       png=st.booleans(), limit=st.integers(4096, 2_000_000))
def test_any_claimed_size_is_refused_above_the_limit(width: int, height: int, png: bool,
                                                     limit: int) -> None:
    """The header's size decides, whatever the data behind it (a small limit keeps the sizes
    that do get decoded cheap)."""
    data = with_png_size(SEEDS[2], width, height) if png else with_jpeg_size(SEEDS[0], width,
                                                                           height)
    out = _door(data, limit)
    if width * height > limit:
        assert out is None


# --------------------------------------------------------------------------- camtrap detect


@pytest.mark.models
def test_detect_reports_the_huge_file_and_goes_on(
    models_dir: Path, cameratrapai_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_blank.jpg").write_bytes((cameratrapai_dir / "blank.jpg").read_bytes())
    (tmp_path / "b_huge.jpg").write_bytes(HUGE)
    shutil.copy(cameratrapai_dir / "human.jpg", tmp_path / "c_human.jpg")
    rc = cli.main(["detect", "--json", "--models", str(models_dir), str(tmp_path)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1  # the CLI contract: exit 1 when any image failed, after all of them
    assert [o["file"] for o in lines] == ["a_blank.jpg", "b_huge.jpg", "c_human.jpg"]
    assert set(lines[1]) == {"file", "error"}
    assert "16000x12000" in lines[1]["error"]
    assert "detector.max_pixels" in lines[1]["error"]
    assert lines[2]["label"] == "person"


# --------------------------------------------------------------------------- the trap


@pytest.mark.models
def test_a_refused_frame_is_never_evidence_of_emptiness(models_dir: Path,
                                                        cameratrapai_dir: Path) -> None:
    """Decision: a frame refused at the door is unreadable (None), and a trigger with no
    readable frame is kept, never discarded: what the camera saw is unknown, and a trap that
    drops animals is worse than no filter (ARCHITECTURE §4)."""
    blank = (cameratrapai_dir / "blank.jpg").read_bytes()
    frames = [Frame(jpeg=HUGE, mono=0.0, wall=0.0, index=0, pre_trigger=True),
              Frame(jpeg=HUGE, mono=0.1, wall=0.1, index=1, pre_trigger=False)]
    with Pipeline(DetectorConfig(), models_dir) as p:
        results = p.analyse_burst(frames)
        assert results == [None, None]
        assert decide(results, PolicyConfig()).outcome == "keep"
        # The limit is the config's: a small one refuses an ordinary frame too.
        p.cfg = DetectorConfig(max_pixels=100_000)
        with pytest.raises(ImageError, match=r"detector\.max_pixels"):
            p.analyse(blank)


@pytest.mark.models
def test_the_daemon_keeps_triggers_whose_frames_are_huge(models_dir: Path,
                                                         tmp_path: Path) -> None:
    """A replay camera that only shows a 16000×12000 frame: every trigger is still stored
    (kept), no stage crashes (the store's thumbnail refuses it too), the daemon stops clean."""
    images = tmp_path / "img"
    images.mkdir()
    (images / "huge.jpg").write_bytes(HUGE)
    cfg = tmp_path / "trap.toml"
    cfg.write_text('[unit]\nid = "LL-9"\n[hardware]\nbackend = "sim"\n'
                   '[trigger]\nsim_every_s = 0.3\nholdoff_s = 0.1\ndebounce_s = 0.02\n'
                   'sample_rate_hz = 50.0\n'
                   '[camera]\nsource = "replay"\nimages_dir = "img"\nburst_frames = 2\n'
                   'burst_interval_s = 0.05\n[storage]\nroot = "data"\n[mqtt]\nenabled = false\n')
    log = tmp_path / "log"
    with log.open("wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "edge_app", "run", "--config", str(cfg),
                                 "--models", str(models_dir)], stdout=f,
                                stderr=subprocess.STDOUT)
    db = tmp_path / "data" / "camtrap.db"

    def kept() -> list[str]:
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return [r[0] for r in con.execute("SELECT outcome FROM events")]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    try:
        deadline = time.monotonic() + 60
        while len(kept()) < 4:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text
    assert set(kept()) == {"keep"}
    assert "16000x12000" in text
    assert "no thumbnail" in text
