"""The second look wired to the pipeline's models: which detectors look, at what scale.

:mod:`edge_app.trap.detect.second_look` decides *how* to look again (which looks, in which
order, tiles, the infrared stretch) with the detectors passed in as plain functions, so it is
tested without models. This module supplies those functions from real cards — the main
detector and, when ``detector.second_look_detector`` names one, a second voter it loads — and
turns what the looks found into detections with species named by the pipeline's classifier.
Apart from the pipeline because none of it runs on a frame the first pass already keeps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from edge_app.core.config import DetectorConfig
from edge_app.core.events import CATEGORIES, Detection, FrameResult, Species
from edge_app.trap.detect.heads import (
    MAX_CLASSIFIED,
    MAX_DETECTIONS,
    DetectorHead,
    Thresholds,
    load_detector,
)
from edge_app.trap.detect.loader import LoadedModel
from edge_app.trap.detect.preprocess import (
    Letterboxer,
    Prepared,
    decode_image,
    image_from_pixels,
)
from edge_app.trap.detect.second_look import (
    Found,
    Outcome,
    SecondLook,
    Settings,
    extend,
    tile_fraction,
)

Namer = Callable[[Image.Image, tuple[float, float, float, float]], tuple[Species | None, float]]
"""The pipeline's crop classifier: (frame, box) → (species or None, its confidence)."""

_ANIMAL = CATEGORIES.index("animal")


class SecondPass:
    """The configured second looks, bound to the main detector and the optional voter.

    Build with :meth:`load`, which returns None when no ``detector.second_look_*`` is on.
    """

    def __init__(self, cfg: DetectorConfig, main: tuple[LoadedModel, DetectorHead, Letterboxer],
                 vote: tuple[LoadedModel, DetectorHead, Letterboxer] | None,
                 looks: tuple[str, ...]) -> None:
        self.cfg = cfg
        """The settings of the frame being looked at (:meth:`run` takes the current ones)."""
        self._main = main
        self._vote = vote
        settings = Settings(looks, cfg.second_look_threshold, 2, cfg.second_look_overlap,
                            cfg.second_look_ir_saturation)
        self.look = SecondLook(settings, self._run_detector,
                               None if vote is None else self._run_vote)

    @classmethod
    def load(cls, cfg: DetectorConfig, models_dir: Path,
             main: tuple[LoadedModel, DetectorHead, Letterboxer]) -> SecondPass | None:
        """The second pass ``cfg`` asks for, loading its voter; None when it asks for none.

        Raises:
            ModelError: the voter's card or file is bad.
        """
        looks = tuple(name for name, on in (("ir", cfg.second_look_ir),
                                            ("detector", bool(cfg.second_look_detector)),
                                            ("tiles", cfg.second_look_tiles
                                             and main[0].card.second_look_tiles)) if on)
        if not looks:
            return None
        vote = None
        if cfg.second_look_detector:
            m, head = load_detector(cfg.second_look_detector, models_dir, cfg.num_threads)
            spec = m.card.input
            vote = (m, head, Letterboxer(spec.width, spec.height, spec.resize, spec.pad_value))
        return cls(cfg, main, vote, looks)

    def close(self) -> None:
        """Release the voter's interpreter (the main detector is the pipeline's)."""
        if self._vote is not None:
            self._vote[0].model.close()
            self._vote = None

    def run(self, cfg: DetectorConfig, prep: Prepared, result: FrameResult,
            name: Namer | None) -> tuple[FrameResult, Outcome]:
        """Look again at a frame the first pass would let go; name species in what it finds.

        Returns:
            The result with what was found added (:func:`extend`), and what the looks did.
        """
        self.cfg = cfg
        image = prep.decoded.image
        out = self.look.look(image, lambda: self._full_frame(prep))
        t0 = time.perf_counter()
        found: list[Detection] = []
        for i, f in enumerate(out.found[:MAX_DETECTIONS]):
            species: Species | None = None
            conf: float | None = None
            if name is not None and f.category == _ANIMAL and i < MAX_CLASSIFIED:
                named, c = name(image, f.bbox)
                if named is not None:
                    species, conf = named, c
            found.append(Detection(CATEGORIES[f.category], f.conf, f.bbox, f.cls, species,
                                   conf))
        return extend(result, found, out.ms + (time.perf_counter() - t0) * 1e3), out

    def _boxes_on(self, m: LoadedModel, head: DetectorHead, box: Letterboxer,
                  image: Image.Image) -> list[Found]:
        """One detector pass on ``image`` at the second look's threshold."""
        cfg = self.cfg
        per_class = Thresholds.resolve(cfg, m.classes).per_class
        per_class = np.maximum(per_class, np.float32(cfg.second_look_threshold))
        geom = box(image)
        m.model.set_image(box.buffer, bgr=m.card.input.colour_order == "BGR")
        raw = m.model.invoke_raw()
        finite = per_class[np.isfinite(per_class)]
        conf = float(finite.min()) if finite.size else cfg.second_look_threshold
        dec = head.decode(raw, m, conf, cfg.iou_threshold, MAX_DETECTIONS, per_class)
        norm = geom.to_normalised(dec.boxes)
        out = []
        for k in range(dec.scores.shape[0]):
            c = int(dec.class_ids[k])
            out.append(Found(int(m.classes.category_of[c]), float(dec.scores[k]),
                             (float(norm[k, 0]), float(norm[k, 1]), float(norm[k, 2]),
                              float(norm[k, 3])), m.classes.names[c], ""))
        return out

    def _run_detector(self, image: Image.Image) -> list[Found]:
        return self._boxes_on(*self._main, image)

    def _run_vote(self, image: Image.Image) -> list[Found]:
        assert self._vote is not None
        return self._boxes_on(*self._vote, image)

    def _full_frame(self, prep: Prepared) -> Image.Image:
        """The frame at the scale where a 2×2 window fills the detector input."""
        decoded = prep.decoded
        src = prep.source
        if src is None or decoded.image.size == decoded.original_size:
            return decoded.image
        s = self.look.settings
        frac = tile_fraction(s.grid, s.overlap)
        spec = self._main[0].card.input
        target = (math.ceil(spec.width / frac), math.ceil(spec.height / frac))
        if isinstance(src, np.ndarray):
            return image_from_pixels(src, target, "letterbox",
                                     max_pixels=self.cfg.max_pixels).image
        return decode_image(src, target, "letterbox", None, max_pixels=self.cfg.max_pixels).image

