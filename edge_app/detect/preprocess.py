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

Truncated JPEGs are handled *without* Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES``
flag: flipping a global from a worker thread would silently change how every other thread
(thumbnails, the store) decodes. Instead the data is retried with an End-Of-Image marker
appended, which is exactly what Pillow itself does under that flag for JPEG; libjpeg then
fills the missing rows with grey. Other formats are not retried: a truncated PNG is an
:class:`~edge_app.errors.ImageError` (cameras write JPEG; PNG only reaches us by hand).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from edge_app.errors import ImageError

log = logging.getLogger(__name__)

_EOI = b"\xff\xd9"
_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90° (width ↔ height)

Resize = Literal["letterbox", "stretch"]


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upright RGB image, possibly decoded at reduced scale.

    Attributes:
        image: upright RGB Pillow image (EXIF orientation applied).
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
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError("not a recognised image format") from e
    except (OSError, ValueError, SyntaxError) as e:  # Pillow plugins raise all three
        raise ImageError(f"cannot read image header: {e}") from e


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


def decode_image(src: bytes | Path, target: tuple[int, int] | None = None,
                 resize: Resize = "letterbox") -> DecodedImage:
    """Decode a JPEG/PNG (bytes or a path) to an upright RGB image.

    Args:
        src: encoded image bytes, or a file path.
        target: the (width, height) the image will be resized to next; JPEGs are decoded at
            the smallest DCT scale that still covers it. None decodes at full size.
        resize: how the image will be fitted to ``target`` (affects the scale needed).

    Returns:
        The decoded image; ``truncated`` says whether the file was cut short.

    Raises:
        ImageError: the file cannot be read or nothing decodable is in it.
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
    im = _open(data)
    try:
        orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        orientation = 1  # unreadable EXIF: treat as upright, the pixels still decode
    stored_size = im.size
    draft = _draft_size(stored_size, orientation, target, resize)
    is_jpeg = im.format == "JPEG"
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
        try:
            im = ImageOps.exif_transpose(im)
        except (OSError, ValueError, SyntaxError, TypeError) as e:
            log.warning("cannot apply EXIF orientation %d: %s", orientation, e)
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
        self.buffer[py:py + nh, px:px + nw] = np.asarray(resized)
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
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box))
