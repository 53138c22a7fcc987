"""Whole-frame embeddings: one vector per frame, computed once and shared by every stage.

The site head (:mod:`edge_app.trap.detect.site_head`) and the self-learned background
(:mod:`edge_app.trap.detect.background`) both work on the same frame embedding, so the embedding
model runs once per analysed frame, right after the detector, on the frame the detector
already decoded (no second JPEG decode). The output is dequantised and L2-normalised into one
buffer that is reused for every frame: the hot path allocates nothing here except the resized
224×224 input, which the crop classifier's whole-frame pass reuses when its input is the same
size (see :class:`~edge_app.trap.detect.pipeline.Pipeline`).

Why the whole frame and not the detector's features or crops: the frames a COCO detector
misses are exactly those where it has no box to offer (night IR, a tail behind a trunk), and
a fixed camera's empty frames differ from its animal frames mostly in the whole scene, which
is what a frozen ImageNet embedding captures. Crops would only add passes for frames the
detector already keeps.

Why L2 normalisation: the head and the background compare *directions* (cosine similarity).
The raw MobileNetV1 embedding is an average of ReLU6 activations whose overall magnitude
follows exposure and contrast (a dim IR frame has a small norm); normalising removes that
nuisance so a head trained on daytime frames is not thrown by a darker night.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.core.errors import ModelError
from edge_app.trap.detect.cards import ModelCard
from edge_app.trap.detect.preprocess import Letterboxer, crop_resized

log = logging.getLogger(__name__)


class Embedder:
    """The embedding model of a card with ``task = "embedding"``, ready for frames.

    Not thread-safe: one per pipeline (the interpreter and the output buffer are reused).
    """

    def __init__(self, name: str, models_dir: Path, num_threads: int) -> None:
        """Load and verify the card's model (sha256, tensors, one warm-up invoke).

        Raises:
            ModelError: missing or altered file, not an embedding card, or a model whose
                output does not hold the card's ``dims`` values.
        """
        from edge_app.trap.detect.loader import load_model

        m = load_model(name, models_dir, num_threads, "embedding")
        dims = int(m.card.output.params["dims"])
        outs = m.model.outputs
        if len(outs) != 1 or math.prod(outs[0].shape) != dims:
            m.model.close()
            raise ModelError(str(m.model.path), f"embedding card {name!r} says {dims} values, "
                             f"the model outputs {[list(t.shape) for t in outs]}")
        self._loaded = m
        self.card: ModelCard = m.card
        self.dims = dims
        self.model = m.model
        spec = m.card.input
        self.size = (spec.width, spec.height)
        self._bgr = spec.colour_order == "BGR"
        self._letterbox = (Letterboxer(spec.width, spec.height, "letterbox", spec.pad_value)
                           if spec.resize == "letterbox" else None)
        self._vec = np.empty(dims, np.float32)
        out = outs[0]
        self._quant = (out.scale, out.zero_point) if out.quantised else None

    @property
    def sha256(self) -> str:
        """The model file's sha256 (from its verified card): what a head file is pinned to."""
        return self.card.sha256

    @property
    def stretches(self) -> bool:
        """True when the input is the whole frame stretched (shareable with a classifier)."""
        return self._letterbox is None

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        """The model input for ``image``: stretched or letterboxed to the card's size."""
        if self._letterbox is not None:
            self._letterbox(image)
            return self._letterbox.buffer
        return crop_resized(image, None, 0.0, self.size)

    def embed_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embed prepared input pixels; returns the reused unit vector (copy to keep it)."""
        self.model.set_image(pixels, bgr=self._bgr)
        raw = self.model.invoke_raw()[0].reshape(-1)
        vec = self._vec
        if self._quant is not None:
            scale, zp = self._quant
            np.subtract(raw, zp, out=vec, dtype=np.float32, casting="unsafe")
            np.multiply(vec, scale, out=vec)
        else:
            np.copyto(vec, raw, casting="unsafe")
        normalise(vec)
        return vec

    def embed(self, image: Image.Image) -> NDArray[np.float32]:
        """Embed a decoded frame; returns the reused unit vector (copy to keep it)."""
        return self.embed_pixels(self.pixels(image))

    def embed_timed(self, image: Image.Image) -> tuple[NDArray[np.float32], float]:
        """:meth:`embed` and its time in milliseconds."""
        t0 = time.perf_counter()
        v = self.embed(image)
        return v, (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        """Release the interpreter."""
        self.model.close()


def normalise(vec: NDArray[np.float32]) -> NDArray[np.float32]:
    """Scale ``vec`` to unit length in place (a zero vector stays zero) and return it.

    A zero embedding (a black frame: every activation clipped) has no direction; leaving it
    at zero makes its cosine similarity to everything 0, i.e. "unlike any background", which
    is the safe reading of a frame we cannot judge.
    """
    n = float(np.sqrt(np.dot(vec, vec)))
    if n > 0.0:
        vec /= n
    return vec
