"""Image decoding, letterboxing and crops: from camera JPEG bytes to model input.

Costs that matter on a Pi Zero 2 W (512 MB, 4 slow cores):

* A 2048×1536 JPEG decoded at full size is 9 MB of RGB and ~100 ms of CPU. Pillow's
  ``draft()`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale during the IDCT, so we ask for
  just enough pixels for the detector input (the smallest DCT scale still ≥ the letterbox
  size). Crops for the classifier come from the same reduced image; a box a tenth of the
  frame wide is still ≥ 64 px there.
* The letterbox is written into one reusable uint8 buffer per :class:`Letterboxer`; only the
  padding strips are refilled when the geometry changes.

Odd files are part of the job, not errors: EXIF orientation is applied (so boxes are in the
upright frame a person sees), greyscale/CMYK/palette images become RGB, and a truncated JPEG
(a card pulled mid-write, a short network copy) is decoded as far as the data goes.

JPEGs go through libjpeg-turbo's own API (``simplejpeg``, which picamera2 already depends on,
so every Pi camera install has it) when it is installed: it scales by any M/8 during the IDCT
(2048 → 768 px for a 640 input, where Pillow's ``draft()`` only offers powers of two and
gives 1024 px, so the resize after it is ~40 % cheaper), decodes straight into a reusable
buffer (:class:`DecodeBuffer`: no 2-7 MB allocation and page faults per frame) and hands the
pixels to Pillow as ``RGBX`` without a copy. Anything it cannot do (PNG, odd JPEGs) goes
through Pillow as before, with the same result up to JPEG rounding.

Truncated JPEGs are handled *without* Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES``
flag: flipping a global from a worker thread would silently change how every other thread
(thumbnails, the store) decodes. Instead the data is retried with an End-Of-Image marker
appended, which is exactly what Pillow itself does under that flag for JPEG; libjpeg then
fills the missing rows with grey. Other formats are not retried: a truncated PNG is an
:class:`~edge_app.core.errors.ImageError` (cameras write JPEG; PNG only reaches us by hand).
The decision for truncated JPEGs is *decode what is there and report it*
(``DecodedImage.truncated``, a warning in the log): the top of a frame cut short by a power
cut may still show the animal, and a grey bottom never creates a detection.

Frames from the Pi camera arrive as arrays, not JPEGs (the *live path*): :func:`image_from_pixels`
is their door. It does what the JPEG path's scaled decode does without the decode: it checks the
shape and the pixel count, wraps the array as a Pillow image (no copy for RGBX, one for RGB) and
reduces it by the largest whole factor that still covers the model input (Pillow's ``reduce``, a
box filter: 2 ms for 1280×720 → 640×360 here, where a bilinear resize of the full frame takes
8 ms), so the letterbox and the classifier crops start from an image the size a DCT-scaled
decode would have given.

:func:`decode_image` is the image door (ARCHITECTURE §2: size first, then parse): the pixel
count is read from the header (a JPEG's by libjpeg-turbo's header parse, a PNG's from its
IHDR chunk, otherwise from Pillow's lazy open, which decodes no pixels) and an image above
``max_pixels`` (``detector.max_pixels``) is refused before a byte of it is decoded. Without
that, a 16000×12000 frame reached Pillow's own decompression-bomb check, whose
``DecompressionBombError`` is neither an ``OSError`` nor a ``ValueError``: ``camtrap detect``
stopped mid-folder with a traceback and the trap's detect stage crashed on every burst holding
it. Only JPEG (an MPO, a JPEG with extra pictures, opens through the JPEG plugin) and PNG are
opened at all: cameras write JPEG, people hand ``camtrap detect`` a PNG now and then, and every
other Pillow plugin is parser surface nobody here needs. Whatever the bytes, the door
answers with a :class:`DecodedImage` or an :class:`~edge_app.core.errors.ImageError`.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from edge_app.core.config import MAX_PIXELS_DEFAULT
from edge_app.core.errors import ImageError

try:  # libjpeg-turbo's scaled decode; optional (see the module docstring)
    import simplejpeg as _sj
except ImportError:  # pragma: no cover - depends on the install
    _sj = None

log = logging.getLogger(__name__)

_EOI = b"\xff\xd9"
_SOI = b"\xff\xd8"
_PNG = b"\x89PNG\r\n\x1a\n"
FORMATS = ("JPEG", "PNG")
"""The formats the door opens (see the module docstring)."""
_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90° (width ↔ height)

Resize = Literal["letterbox", "stretch"]


class DecodeBuffer:
    """The reusable output buffer of the JPEG fast path; grows to the largest frame seen.

    Owned by one pipeline (one thread): the image of the previous :func:`decode_image` call
    that used it is overwritten by the next one.
    """

    def __init__(self) -> None:
        self._buf: NDArray[np.uint8] = np.empty(0, np.uint8)

    def get(self, shape: tuple[int, ...]) -> NDArray[np.uint8]:
        """A uint8 array of ``shape`` inside the buffer (reallocated only to grow)."""
        n = math.prod(shape)
        if self._buf.size < n:
            self._buf = np.empty(n, np.uint8)
        return self._buf[:n].reshape(shape)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upright RGB image, possibly decoded at reduced scale.

    Attributes:
        image: upright Pillow image (EXIF orientation applied), mode ``RGB``, or ``RGBX``
            (RGB plus a padding byte: Pillow's own pixel layout, shared with the decoder's
            buffer without a copy).
        original_size: (width, height) of the upright image at full resolution.
        truncated: True when the file ended early and only part of it was decoded.
        source_mode: Pillow mode of the file before conversion (``L``, ``CMYK``, ``RGB``...).
    """

    image: Image.Image
    original_size: tuple[int, int]
    truncated: bool
    source_mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as decoded."""
        return self.image.size


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as e:
        raise ImageError("not a JPEG or PNG image") from e
    except Image.DecompressionBombError as e:  # above Pillow's own hard limit (~179 MP)
        raise ImageError(f"too many pixels: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:  # Pillow plugins raise all three
        raise ImageError(f"cannot read image header: {e}") from e


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image of ``size`` (width, height) with more than ``max_pixels`` pixels.

    Raises:
        ImageError: saying the size and the limit (and the key that sets it).
    """
    w, h = size
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} is {w * h / 1e6:.1f} megapixels, more than "
                         f"detector.max_pixels ({max_pixels / 1e6:.1f} MP); not decoded")


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, before Pillow sees the data, or None if unsure.

    A JPEG's via libjpeg-turbo's header parse; a PNG's from its IHDR chunk, which the format
    requires first at a fixed place. Pillow's own open then never gets to warn about, or
    refuse with its own exception, a size we refuse anyway.
    """
    if data.startswith(_PNG) and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if _sj is None or not data.startswith(_SOI):
        return None
    try:
        h, w, _, _ = _sj.decode_jpeg_header(data)
    except ValueError:
        return None  # Pillow gets its turn, and the error message
    return int(w), int(h)


def _draft_size(stored: tuple[int, int], orientation: int, target: tuple[int, int] | None,
                resize: Resize) -> tuple[int, int] | None:
    """The stored-orientation size to ask ``draft()`` for, or None to decode at full size."""
    if target is None:
        return None
    w, h = stored
    uw, uh = (h, w) if orientation in _SWAPS_AXES else (w, h)
    sx, sy = target[0] / uw, target[1] / uh
    if resize == "letterbox":
        sx = sy = min(sx, sy)
    if sx >= 1 and sy >= 1:
        return None
    # ``draft`` picks the largest DCT reduction that keeps the image ≥ this size.
    rw, rh = math.ceil(uw * min(sx, 1.0)), math.ceil(uh * min(sy, 1.0))
    return (rh, rw) if orientation in _SWAPS_AXES else (rw, rh)


def _decode_fast(data: bytes, draft: tuple[int, int] | None,
                 buffer: DecodeBuffer | None) -> tuple[Image.Image, bool] | None:
    """libjpeg-turbo decode at the smallest M/8 scale covering ``draft`` (None: full size).

    Returns (RGBX image, truncated), or None when this path cannot decode the data (the
    caller then uses Pillow, which also produces the error message).
    """
    if _sj is None:
        return None
    min_w, min_h = draft if draft is not None else (0, 0)
    try:
        h, w, _, _ = _sj.decode_jpeg_header(data, min_height=min_h, min_width=min_w)
        h, w = int(h), int(w)
        out = buffer.get((h, w, 4)) if buffer is not None else None
    except ValueError:
        return None
    truncated = False
    try:
        arr = _sj.decode_jpeg(data, "RGBX", min_height=min_h, min_width=min_w, buffer=out,
                              strict=True)
    except ValueError:
        # A recoverable libjpeg warning (premature end, corrupt segment): decode what is
        # there; the missing rows come out grey, as with Pillow.
        try:
            arr = _sj.decode_jpeg(data, "RGBX", min_height=min_h, min_width=min_w,
                                  buffer=out, strict=False)
        except ValueError:
            return None
        truncated = True
    if arr.shape != (h, w, 4):  # pragma: no cover - a simplejpeg contract change
        return None
    return Image.frombuffer("RGBX", (w, h), arr, "raw", "RGBX", 0, 1), truncated


def decode_image(src: bytes | Path, target: tuple[int, int] | None = None,
                 resize: Resize = "letterbox",
                 buffer: DecodeBuffer | None = None,
                 max_pixels: int = MAX_PIXELS_DEFAULT) -> DecodedImage:
    """Decode a JPEG/PNG (bytes or a path) to an upright RGB image.

    Args:
        src: encoded image bytes, or a file path.
        target: the (width, height) the image will be resized to next; JPEGs are decoded at
            the smallest DCT scale that still covers it. None decodes at full size.
        resize: how the image will be fitted to ``target`` (affects the scale needed).
        buffer: reuse this buffer for the pixels (the JPEG fast path); the previous image
            decoded into it becomes invalid.
        max_pixels: refuse an image whose header says more pixels than this.

    Returns:
        The decoded image; ``truncated`` says whether the file was cut short.

    Raises:
        ImageError: the file cannot be read, is not a JPEG or PNG, has more than
            ``max_pixels`` pixels, or nothing decodable is in it.
    """
    if isinstance(src, Path):
        try:
            data = src.read_bytes()
        except OSError as e:
            raise ImageError(f"cannot read {src}: {e.strerror}") from e
    else:
        data = src
    if not data:
        raise ImageError("empty image data")

    truncated = False
    header = _header_size(data)
    if header is not None:  # before Pillow: its bomb check would raise its own error
        check_pixels(header, max_pixels)
    im = _open(data)
    check_pixels(im.size, max_pixels)
    try:
        orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        orientation = 1  # unreadable EXIF: treat as upright, the pixels still decode
    stored_size = im.size
    draft = _draft_size(stored_size, orientation, target, resize)
    is_jpeg = im.format == "JPEG"
    source_mode = im.mode
    fast = _decode_fast(data, draft, buffer) if is_jpeg else None
    if fast is not None:
        im, truncated = fast
        if orientation != 1:
            im = _upright(im, orientation)
        uw, uh = (stored_size[1], stored_size[0]) if orientation in _SWAPS_AXES else stored_size
        return DecodedImage(im, (uw, uh), truncated, source_mode)
    try:
        if draft is not None and is_jpeg:
            im.draft("RGB", draft)
        im.load()
    except (OSError, ValueError, SyntaxError) as first:
        if not is_jpeg:
            raise ImageError(f"cannot decode {im.format or 'image'} data: {first}") from first
        im = _open(data + _EOI)
        try:
            if draft is not None:
                im.draft("RGB", draft)
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"cannot decode JPEG data: {e}") from e
        truncated = True

    source_mode = im.mode
    if orientation != 1:
        im = _upright(im, orientation)
    if im.mode != "RGB":
        # P/PA with transparency, LA, RGBA: drop alpha; CMYK: Pillow undoes Adobe inversion;
        # I/I;16/F (16-bit or float greyscale PNG/TIFF) need scaling to 8 bits first.
        if im.mode.startswith(("I", "F")):
            arr = np.asarray(im, dtype=np.float32)
            top = 65535.0 if arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
        im = im.convert("RGB")
    uw, uh = (stored_size[1], stored_size[0]) if orientation in _SWAPS_AXES else stored_size
    return DecodedImage(im, (uw, uh), truncated, source_mode)


def image_from_pixels(pixels: NDArray[np.uint8], target: tuple[int, int] | None = None,
                      resize: Resize = "letterbox",
                      max_pixels: int = MAX_PIXELS_DEFAULT) -> DecodedImage:
    """A camera frame's array as a :class:`DecodedImage`, reduced for ``target``.

    Args:
        pixels: ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBX uint8 (the fourth byte ignored), or
            ``(H, W)`` grey; upright (the camera's own transform already applied).
        target: the (width, height) the image will be fitted to next; the image is reduced
            by the largest whole factor that keeps it at least that large (see the module
            docstring). None keeps full size.
        resize: how the image will be fitted (affects the factor, as for a JPEG).
        max_pixels: refuse an array with more pixels than this.

    Raises:
        ImageError: not a uint8 image array, or more than ``max_pixels`` pixels.
    """
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or not (
            pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        shape = getattr(pixels, "shape", None)
        raise ImageError(f"not an image array (H, W, 3|4) uint8: {shape} "
                         f"{getattr(pixels, 'dtype', type(pixels).__name__)}")
    h, w = int(pixels.shape[0]), int(pixels.shape[1])
    if w < 1 or h < 1:
        raise ImageError(f"empty image array {pixels.shape}")
    check_pixels((w, h), max_pixels)
    if pixels.ndim == 2:
        im = Image.fromarray(np.ascontiguousarray(pixels), "L").convert("RGB")
        mode = "L"
    elif pixels.shape[2] == 4:
        arr = np.ascontiguousarray(pixels)
        im = Image.frombuffer("RGBX", (w, h), arr, "raw", "RGBX", 0, 1)  # shares the memory
        mode = "RGBX"
    else:
        im = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        mode = "RGB"
    k = reduce_factor((w, h), target, resize)
    if k > 1:
        im = im.reduce(k)
    return DecodedImage(im, (w, h), False, mode)


def reduce_factor(size: tuple[int, int], target: tuple[int, int] | None,
                  resize: Resize = "letterbox") -> int:
    """The largest whole factor an image of ``size`` can be reduced by and still cover
    ``target`` as ``resize`` fits it (1: no reduction)."""
    if target is None:
        return 1
    sx, sy = size[0] / target[0], size[1] / target[1]
    k = max(sx, sy) if resize == "letterbox" else min(sx, sy)
    return max(1, int(k))


def grey_from_lores(grey: NDArray[np.uint8], width: int) -> NDArray[np.int16]:
    """:func:`grey_thumbnail` for a frame that brought its own greyscale copy (the camera's
    lores stream): box-filtered down to ``width`` pixels, as int16."""
    h, w = grey.shape[:2]
    height = max(1, round(width * h / w))
    small = Image.fromarray(np.ascontiguousarray(grey), "L").resize(
        (width, height), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small, dtype=np.int16)


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(im: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation (the same table as ``ImageOps.exif_transpose``).

    Done by hand rather than with ``exif_transpose`` because the fast path's image has no
    EXIF of its own (it came from the decoder's buffer), and because exif_transpose also
    rewrites the EXIF block, which we do not need.
    """
    op = _TRANSPOSE.get(orientation)
    if op is None:
        if orientation != 1:
            log.warning("ignoring unknown EXIF orientation %d", orientation)
        return im
    return im.transpose(op)


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where the image landed in the model input, to map boxes back.

    Attributes:
        image_size: (width, height) of the decoded image that was letterboxed.
        scale_x: input pixels per image pixel, horizontally.
        scale_y: same, vertically.
        pad_x: left padding in input pixels.
        pad_y: top padding in input pixels.
    """

    image_size: tuple[int, int]
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_normalised(self, boxes: NDArray[np.float32]) -> NDArray[np.float32]:
        """xyxy boxes in input pixels → ``[x_min, y_min, w, h]`` normalised to the image.

        The image is a uniform reduction of the upright original, so normalised coordinates
        are the same for the original. Boxes are clipped to the image (the letterbox padding
        is not part of the picture).
        """
        w, h = self.image_size
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0] = (boxes[:, 0] - self.pad_x) / (self.scale_x * w)
        out[:, 1] = (boxes[:, 1] - self.pad_y) / (self.scale_y * h)
        out[:, 2] = (boxes[:, 2] - self.pad_x) / (self.scale_x * w)
        out[:, 3] = (boxes[:, 3] - self.pad_y) / (self.scale_y * h)
        np.clip(out, 0.0, 1.0, out=out)
        out[:, 2:] -= out[:, :2]
        return out



@dataclass(slots=True)
class Prepared:
    """A decoded frame, letterboxed; valid until the next frame is decoded."""

    decoded: DecodedImage
    geometry: Geometry
    decode_ms: float
    letterbox_ms: float
    source: bytes | Path | NDArray[np.uint8] | None = None
    """What was decoded: the second look's tiles decode it again at a larger scale."""

class Letterboxer:
    """Fits images into a fixed-size uint8 buffer, reused for every frame.

    ``letterbox`` keeps the aspect ratio and pads (YOLO); ``stretch`` fills the whole input
    (SSD-style models trained that way).
    """

    def __init__(self, width: int, height: int, resize: Resize = "letterbox",
                 pad_value: int = 114) -> None:
        self.width = width
        self.height = height
        self.resize = resize
        self.pad_value = pad_value
        self.buffer: NDArray[np.uint8] = np.full((height, width, 3), pad_value, np.uint8)
        self._last: tuple[int, int, int, int] | None = None

    def __call__(self, image: Image.Image) -> Geometry:
        """Resize ``image`` (RGB) into :attr:`buffer` and return the mapping back."""
        w, h = image.size
        if self.resize == "stretch":
            nw, nh = self.width, self.height
        else:
            r = min(self.width / w, self.height / h)
            nw = max(1, min(self.width, round(w * r)))
            nh = max(1, min(self.height, round(h * r)))
        px, py = (self.width - nw) // 2, (self.height - nh) // 2
        if (nw, nh, px, py) != self._last:
            # Geometry changed: refill the padding (the image area is overwritten below).
            self.buffer.fill(self.pad_value)
            self._last = (nw, nh, px, py)
        resized = image if (w, h) == (nw, nh) else image.resize(
            (nw, nh), Image.Resampling.BILINEAR)
        self.buffer[py:py + nh, px:px + nw] = np.asarray(resized)[..., :3]  # RGBX → RGB
        return Geometry((w, h), nw / w, nh / h, px, py)


def crop_box(size: tuple[int, int], bbox: tuple[float, float, float, float],
             context: float) -> tuple[float, float, float, float]:
    """Pixel box (left, top, right, bottom) for the classifier crop of a normalised bbox.

    The crop is made square around the box's centre (side = longest box side) and grown by
    ``context`` × side on each side, so the classifier sees the animal undistorted and with
    some surroundings, as ImageNet-style models were trained. It is shifted to stay inside
    the image and clipped only when it is larger than the image.

    Args:
        size: (width, height) of the image in pixels.
        bbox: normalised ``[x_min, y_min, w, h]``.
        context: margin as a fraction of the box size.
    """
    iw, ih = size
    x, y, bw, bh = bbox[0] * iw, bbox[1] * ih, bbox[2] * iw, bbox[3] * ih
    side = max(bw, bh, 1.0) * (1.0 + 2.0 * context)
    cx, cy = x + bw / 2, y + bh / 2
    sw, sh = min(side, iw), min(side, ih)
    left = min(max(cx - sw / 2, 0.0), iw - sw)
    top = min(max(cy - sh / 2, 0.0), ih - sh)
    return left, top, left + sw, top + sh


def crop_resized(image: Image.Image, bbox: tuple[float, float, float, float] | None,
                 context: float, size: tuple[int, int]) -> NDArray[np.uint8]:
    """The classifier input for a box (or the whole frame when ``bbox`` is None).

    Uses ``resize(box=...)`` so the crop and the resize are one Pillow pass with no
    intermediate crop image.
    """
    box = None if bbox is None else crop_box(image.size, bbox, context)
    out: NDArray[np.uint8] = np.asarray(image.resize(size, Image.Resampling.BILINEAR,
                                                     box=box))[..., :3]
    return out


def grey_thumbnail(image: Image.Image, width: int) -> NDArray[np.int16]:
    """A small greyscale copy for the motion gate, as int16 (ready to subtract).

    Box-filtered down to ``width`` pixels first (averaging away sensor and JPEG noise, and
    cheap: only the small image is converted to grey).
    """
    w, h = image.size
    height = max(1, round(width * h / w))
    small = image.resize((width, height), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small.convert("L"), dtype=np.int16)


def changed_fraction(a: NDArray[np.int16], b: NDArray[np.int16], delta: int) -> float:
    """Fraction of pixels whose grey level differs by more than ``delta`` (0..1).

    Images of different shapes (a camera mode change mid-burst) count as fully changed.
    """
    if a.shape != b.shape:
        return 1.0
    return float(np.count_nonzero(np.abs(a - b) > delta)) / a.size
