"""YUV420 planes as the Pi camera hands them over, and their conversion to RGB.

Why YUV420 at all: the pre-trigger ring and the motion gate run on the camera's small second
stream (``lores``), and on the VC4 ISP of the Pi Zero 2 W, 3 and 4 that stream *must* be YUV
(picamera2 refuses anything else there). Its Y plane is already the greyscale image the motion
gate wants, at no cost; only the few ring frames that reach the detector are converted.

Layout (picamera2 ``make_array`` of a ``YUV420`` stream): a ``(h * 3 // 2, stride)`` uint8
array holding, back to back, the Y plane (``h`` rows of ``stride`` bytes), then U and V (each
``h/2`` rows of ``stride/2`` bytes). ``stride`` ≥ width (the ISP pads rows to 32/64 bytes);
the padding is not image.

The matrix depends on the stream's colour space, which picamera2 chooses from the main size
(``Smpte170m`` below 1280×720, ``Rec709`` from there, ``Sycc`` for stills): BT.601 or BT.709
coefficients, full range (sYCC, as in JPEG) or limited (16-235 / 16-240).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class YuvMatrix:
    """A Y'CbCr encoding: the luma weights of red and blue and the range.

    Attributes:
        kr: red's share of luma (0.299 BT.601, 0.2126 BT.709).
        kb: blue's share of luma (0.114 BT.601, 0.0722 BT.709).
        full: full range (0-255) rather than limited (Y 16-235, chroma 16-240).
        name: for logs.
    """

    kr: float
    kb: float
    full: bool
    name: str

    def to_rgb_coefficients(self) -> tuple[float, float, float, float, float, float]:
        """(y_scale, y_offset, r_cr, g_cb, g_cr, b_cb) of R,G,B = y·(Y−off) + chroma terms."""
        kg = 1.0 - self.kr - self.kb
        if self.full:
            ys, yo, cs = 1.0, 0.0, 1.0
        else:
            ys, yo, cs = 255.0 / 219.0, 16.0, 255.0 / 224.0
        return (ys, yo, 2 * (1 - self.kr) * cs, -2 * self.kb * (1 - self.kb) / kg * cs,
                -2 * self.kr * (1 - self.kr) / kg * cs, 2 * (1 - self.kb) * cs)


BT601_FULL = YuvMatrix(0.299, 0.114, True, "BT.601 full range (sYCC/JPEG)")
BT601_LIMITED = YuvMatrix(0.299, 0.114, False, "BT.601 limited range (SMPTE 170M)")
BT709_LIMITED = YuvMatrix(0.2126, 0.0722, False, "BT.709 limited range (Rec.709)")
BT709_FULL = YuvMatrix(0.2126, 0.0722, True, "BT.709 full range")


def matrix_of(colour_space: Any) -> YuvMatrix | None:
    """The matrix of a libcamera ``ColorSpace`` (or anything with the same attributes).

    libcamera's Python binding exposes ``ycbcrEncoding`` and ``range`` as enums whose names
    end in ``Rec601``/``Rec709`` and ``Full``/``Limited``; the names are read rather than the
    enums compared, so no libcamera import is needed here. Returns None when the object says
    neither (a colour space this module does not know).
    """
    enc = str(getattr(colour_space, "ycbcrEncoding", ""))
    rng = str(getattr(colour_space, "range", ""))
    if not enc or not rng:
        return None
    full = rng.endswith("Full")
    if not full and not rng.endswith("Limited"):
        return None
    if enc.endswith("Rec601"):
        return BT601_FULL if full else BT601_LIMITED
    if enc.endswith("Rec709"):
        return BT709_FULL if full else BT709_LIMITED
    return None


def planes(yuv: NDArray[np.uint8], width: int, height: int
           ) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    """(Y, U, V) views of a picamera2 YUV420 array, padding cut off.

    Raises:
        ValueError: the array does not hold a ``width`` × ``height`` YUV420 image.
    """
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"YUV420 needs even sizes, got {width}x{height}")
    if yuv.dtype != np.uint8 or yuv.ndim != 2 or yuv.shape[0] != height * 3 // 2:
        raise ValueError(f"not a {width}x{height} YUV420 array: {yuv.shape} {yuv.dtype}")
    stride = int(yuv.shape[1])
    if stride < width or stride % 2:
        raise ValueError(f"YUV420 stride {stride} does not fit width {width}")
    flat = yuv.reshape(-1)
    y_size, c_size = stride * height, (stride // 2) * (height // 2)
    y = yuv[:height, :width]
    u = flat[y_size:y_size + c_size].reshape(height // 2, stride // 2)[:, :width // 2]
    v = flat[y_size + c_size:y_size + 2 * c_size].reshape(height // 2, stride // 2)[
        :, :width // 2]
    return y, u, v


def to_rgb(yuv: NDArray[np.uint8], width: int, height: int, matrix: YuvMatrix,
           out: NDArray[np.uint8] | None = None) -> NDArray[np.uint8]:
    """A YUV420 frame as ``(height, width, 3)`` RGB.

    The chroma terms are computed once per 2×2 block and broadcast onto the four luma samples
    (no upsampled copies of U and V). ~3 ms for 640×360 on the x86 test machines.

    Args:
        yuv: the picamera2 array (see the module docstring).
        width: image width.
        height: image height.
        matrix: the stream's colour space.
        out: write into this array (must be ``(height, width, 3)`` uint8) instead of a new one.
    """
    y, u, v = planes(yuv, width, height)
    ys, yo, r_cr, g_cb, g_cr, b_cb = matrix.to_rgb_coefficients()
    cb = u.astype(np.float32) - 128.0
    cr = v.astype(np.float32) - 128.0
    chroma = np.empty((height // 2, width // 2, 3), np.float32)
    np.multiply(cr, r_cr, out=chroma[..., 0])
    np.multiply(cb, g_cb, out=chroma[..., 1])
    chroma[..., 1] += cr * g_cr
    np.multiply(cb, b_cb, out=chroma[..., 2])
    luma = y.astype(np.float32)
    luma -= yo
    luma *= ys
    rgb = luma.reshape(height // 2, 2, width // 2, 2, 1) + chroma[:, None, :, None, :]
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    np.clip(rgb.reshape(height, width, 3), 0.0, 255.0, out=rgb.reshape(height, width, 3))
    np.rint(rgb, out=rgb)
    out[...] = rgb.reshape(height, width, 3)
    return out


def from_rgb(rgb: NDArray[np.uint8], matrix: YuvMatrix, stride: int | None = None
             ) -> NDArray[np.uint8]:
    """RGB ``(h, w, 3)`` as a picamera2-shaped YUV420 array (chroma averaged per 2×2 block).

    What the ISP does on the Pi; here for the picamera2 API fake and the tests.

    Args:
        rgb: the image; width and height must be even.
        matrix: the colour space to encode in.
        stride: row length in bytes (≥ width, even); default: width rounded up to 64, as the
            VC4 ISP aligns YUV420 rows.
    """
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    if w % 2 or h % 2:
        raise ValueError(f"YUV420 needs even sizes, got {w}x{h}")
    stride = stride if stride is not None else -(-w // 64) * 64
    if stride < w or stride % 2:
        raise ValueError(f"bad stride {stride} for width {w}")
    f = rgb[..., :3].astype(np.float32)
    kr, kb = matrix.kr, matrix.kb
    kg = 1.0 - kr - kb
    luma = kr * f[..., 0] + kg * f[..., 1] + kb * f[..., 2]
    blocks = f.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    bl = kr * blocks[..., 0] + kg * blocks[..., 1] + kb * blocks[..., 2]
    cb = (blocks[..., 2] - bl) / (2 * (1 - kb))
    cr = (blocks[..., 0] - bl) / (2 * (1 - kr))
    if matrix.full:
        y_out, cb_out, cr_out = luma, cb + 128.0, cr + 128.0
    else:
        y_out = luma * (219.0 / 255.0) + 16.0
        cb_out, cr_out = cb * (224.0 / 255.0) + 128.0, cr * (224.0 / 255.0) + 128.0
    out = np.zeros((h * 3 // 2, stride), np.uint8)
    flat = out.reshape(-1)
    out[:h, :w] = np.clip(np.rint(y_out), 0, 255)
    y_size, c_size = stride * h, (stride // 2) * (h // 2)
    u = flat[y_size:y_size + c_size].reshape(h // 2, stride // 2)
    v = flat[y_size + c_size:y_size + 2 * c_size].reshape(h // 2, stride // 2)
    u[:, :w // 2] = np.clip(np.rint(cb_out), 0, 255)
    v[:, :w // 2] = np.clip(np.rint(cr_out), 0, 255)
    return out
