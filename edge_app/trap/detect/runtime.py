"""The one module that touches the TFLite interpreter.

LiteRT (``ai_edge_litert``) first; ``tflite_runtime`` as a fallback for platforms LiteRT has no
wheel for (armv7 Pis). Both are imported lazily inside :func:`interpreter_class`, so
``import edge_app.trap.detect.runtime`` works on a machine with neither.

Quantisation is read from each tensor's details, never hard-coded: the same card works for an
int8, uint8 or float export of a model. Images enter through a 256-entry lookup table that
maps a uint8 pixel straight to the input tensor's dtype (value range, scale and zero point
folded in), written in place into the interpreter's own input buffer: one pass, no float
intermediate, no per-frame allocation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.core.errors import ModelError

log = logging.getLogger(__name__)


def interpreter_class() -> Any:
    """The ``Interpreter`` class of whichever runtime is installed.

    Raises:
        ModelError: neither runtime is importable.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise ModelError(
                "ai_edge_litert",
                "no TFLite runtime installed: pip install ai-edge-litert "
                "(or tflite-runtime where LiteRT has no wheel)",
            ) from e
        log.info("using tflite_runtime (ai_edge_litert not installed)")
    return Interpreter


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output tensor as the model file declares it.

    Attributes:
        index: the interpreter's tensor index.
        name: tensor name (for messages).
        shape: declared shape.
        dtype: element type.
        scale: quantisation scale, 0.0 for a float tensor.
        zero_point: quantisation zero point.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantised(self) -> bool:
        """True when values are stored as integers with a scale and zero point."""
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> TensorInfo:
        """Build from an entry of ``get_input_details()``/``get_output_details()``."""
        scale, zero_point = d.get("quantization", (0.0, 0))
        return cls(
            index=int(d["index"]),
            name=str(d.get("name", "")),
            shape=tuple(int(v) for v in d["shape"]),
            dtype=np.dtype(d["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


def resolve_threads(num_threads: int) -> int:
    """``0`` means every CPU: on a Pi Zero 2 W the detector is the only busy stage."""
    return num_threads if num_threads > 0 else (os.cpu_count() or 1)


class TfliteModel:
    """A loaded model: typed tensor details, an image writer and dequantised outputs.

    Not thread-safe: one instance per thread (the interpreter and the buffers are shared
    state). The arrays :meth:`invoke` returns are reused by the next call.
    """

    def __init__(self, path: Path, num_threads: int = 0,
                 value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """Load and allocate.

        Args:
            path: the ``.tflite`` file (already verified against its card).
            num_threads: interpreter threads, 0 = CPU count.
            value_range: the real-valued range a 0..255 pixel maps to (card ``value_range``).

        Raises:
            ModelError: the runtime is missing or the file is not a loadable model.
        """
        self.path = path
        self.num_threads = resolve_threads(num_threads)
        interpreter = interpreter_class()
        try:
            self._interp = interpreter(model_path=str(path), num_threads=self.num_threads)
            self._interp.allocate_tensors()
            inputs = [TensorInfo.from_details(d) for d in self._interp.get_input_details()]
            self.outputs = tuple(TensorInfo.from_details(d)
                                 for d in self._interp.get_output_details())
        except (ValueError, RuntimeError) as e:
            raise ModelError(str(path), f"cannot load model: {e}") from e
        if len(inputs) != 1:
            raise ModelError(str(path), f"expected one input tensor, found {len(inputs)}")
        self.input = inputs[0]
        if len(self.input.shape) != 4 or self.input.shape[0] != 1 or self.input.shape[3] != 3:
            raise ModelError(str(path), f"expected an input of shape [1, H, W, 3], found "
                             f"{list(self.input.shape)}")
        self._lut = self._make_lut(value_range)
        # Dequantised outputs land in these buffers: allocated once, reused every invoke.
        self._out = [np.empty(t.shape, dtype=np.float32) for t in self.outputs]
        # Raw (still quantised) outputs are copied here by invoke_raw(): decoders that
        # threshold in the integer domain never dequantise the whole [1, 84, 8400] head.
        self._raw = [np.empty(t.shape, dtype=t.dtype) for t in self.outputs]
        log.info("loaded %s: input %s %s (scale %g, zero point %d), %d output(s), %d thread(s)",
                 path.name, list(self.input.shape), self.input.dtype.name, self.input.scale,
                 self.input.zero_point, len(self.outputs), self.num_threads)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the input tensor."""
        return self.input.shape[2], self.input.shape[1]

    def _make_lut(self, value_range: tuple[float, float]) -> NDArray[Any]:
        """uint8 pixel → input value: real = lo + p·(hi−lo)/255, then quantised if needed.

        Also decides how :meth:`set_image` applies it. The common exports are affine in the
        pixel value (int8 with scale 1/255: p − 128; uint8 with scale 1/127.5: p; float: p/255),
        which a ufunc does in place in ~0.2 ms for 640×640×3. A general table goes through
        ``np.take``, whose index conversion would allocate 8 bytes per pixel (10 MB at 640²),
        so it runs in row blocks.
        """
        lo, hi = value_range
        step = (hi - lo) / 255.0
        real = lo + np.arange(256, dtype=np.float64) * step
        t = self.input
        self._int_offset: int | None = None
        self._float_affine: tuple[float, float] | None = None
        if t.quantised:
            # Round half up, with a hair of slack: the usual pixel quantisation (scale 1/127.5,
            # zero point 127) puts every pixel exactly on .5, where banker's rounding (np.round)
            # or float32 noise in the scale would map odd and even pixels unevenly.
            q = np.floor(real / t.scale + t.zero_point + 0.5 + 1e-4)
            info = np.iinfo(t.dtype)
            lut = np.clip(q, info.min, info.max).astype(t.dtype)
            diff = lut.astype(np.int64) - np.arange(256)
            if np.all(diff == diff[0]):
                self._int_offset = int(diff[0])
            return lut
        if np.issubdtype(t.dtype, np.floating):
            self._float_affine = (lo, step)
            return real.astype(t.dtype)
        raise ModelError(str(self.path), f"unsupported input dtype {t.dtype} without "
                         "quantisation parameters")

    def set_image(self, rgb: NDArray[np.uint8], bgr: bool = False) -> None:
        """Write an ``(H, W, 3)`` uint8 image into the input tensor, converted in one pass.

        No per-frame allocation beyond ufunc buffers: the pixels go straight into the
        interpreter's input memory.

        Args:
            rgb: the image, exactly the input's height and width, RGB order.
            bgr: reverse the channels on the way (for BGR-trained models).
        """
        src = rgb[..., ::-1] if bgr else rgb
        # A view into the interpreter's own input buffer: writing through it avoids the
        # extra copy of set_tensor(). It must be released before invoke().
        view = self._interp.tensor(self.input.index)()
        try:
            dst = view[0]
            if self._int_offset == 0 and dst.dtype == np.uint8:
                np.copyto(dst, src)
            elif self._int_offset is not None:
                np.add(src, self._int_offset, out=dst, dtype=np.int32, casting="unsafe")
            elif self._float_affine is not None:
                lo, step = self._float_affine
                np.multiply(src, step, out=dst, dtype=dst.dtype, casting="unsafe")
                if lo:
                    np.add(dst, lo, out=dst, casting="unsafe")
            else:
                rows = max(1, 65536 // max(1, dst.shape[1] * dst.shape[2]))
                for r in range(0, dst.shape[0], rows):
                    np.take(self._lut, src[r:r + rows], out=dst[r:r + rows], mode="clip")
        finally:
            del view

    @property
    def lut(self) -> NDArray[Any]:
        """The 256-entry pixel → input value table (read-only use)."""
        return self._lut

    def read_input(self) -> NDArray[Any]:
        """A copy of the input tensor as it is now (tests, ``bench``, debugging)."""
        return np.array(self._interp.get_tensor(self.input.index))

    def warm_up(self) -> None:
        """One invoke on whatever is in the input, at load time.

        XNNPACK builds its packed weights on the first invoke (tens of ms, more on a Pi); doing
        it here keeps that off the first trigger's latency, and a model that loads but cannot
        run fails now, as a ModelError, instead of on the first animal.

        Raises:
            ModelError: the interpreter fails to run the model.
        """
        try:
            self._interp.invoke()
        except (RuntimeError, ValueError) as e:
            raise ModelError(str(self.path), f"model loads but does not run: {e}") from e

    def set_input(self, array: NDArray[Any]) -> None:
        """Copy an already-prepared array (input dtype and shape) into the input tensor."""
        self._interp.set_tensor(self.input.index, array)

    def invoke(self, array: NDArray[Any] | None = None) -> list[NDArray[np.float32]]:
        """Run the model and return every output as float32, dequantised per tensor.

        Args:
            array: input in the tensor's dtype and shape; ``None`` when :meth:`set_image`
                already filled the input.

        Returns:
            One array per output tensor, in output order. The arrays are reused by the next
            call: copy anything you keep.
        """
        if array is not None:
            self.set_input(array)
        self._interp.invoke()
        for t, buf in zip(self.outputs, self._out, strict=True):
            raw = self._interp.tensor(t.index)()
            try:
                if t.quantised:
                    # Each output has its own scale/zero point: real = scale·(q − zp).
                    np.subtract(raw, t.zero_point, out=buf, dtype=np.float32)
                    np.multiply(buf, t.scale, out=buf)
                else:
                    np.copyto(buf, raw, casting="unsafe")
            finally:
                del raw
        return self._out

    def run(self) -> None:
        """Bare ``interpreter.invoke()`` on whatever is in the input (``bench`` times this)."""
        self._interp.invoke()

    def invoke_raw(self) -> list[NDArray[Any]]:
        """Run the model and return every output in its own dtype, not dequantised.

        Pair each array with :attr:`outputs` (scale, zero point) to interpret it. Copying an
        int8 head (700 KB for YOLOv8n 640) into a preallocated buffer costs ~0.05 ms;
        dequantising it all would cost ~1.5 ms and 2.8 MB of float32 traffic per frame, for
        the few dozen anchors a decoder actually looks at.

        Returns:
            One array per output tensor, reused by the next call: copy anything you keep.
        """
        self._interp.invoke()
        for t, buf in zip(self.outputs, self._raw, strict=True):
            view = self._interp.tensor(t.index)()
            try:
                np.copyto(buf, view)
            finally:
                del view
        return self._raw

    def close(self) -> None:
        """Drop the interpreter (frees its arena; the object is unusable afterwards)."""
        self.__dict__.pop("_interp", None)
