"""One frame in, one :class:`~edge_app.core.events.FrameResult` out; one burst in, a list out.

decode (reduced-scale JPEG, upright, RGB; or, for a camera frame that arrived as an array, the
array reduced by a whole factor: no decode at all) → letterbox → detector → classes to camtrap
categories → crop classifier on the best animal boxes → species. When the detector finds
nothing at all, the classifier looks at the whole frame: the stand-in COCO detector misses
night and half-hidden cats (the cameratrapai ocelot), and a trap that drops a leopard is worse
than no filter. For a burst (:meth:`Pipeline.analyse_burst`) an optional motion gate first
compares each frame with the pre-trigger frame and skips inference where nothing changed.

A frame the policy would discard (every raw score below ``detector.second_look_below``) can
get a second look (:mod:`edge_app.trap.detect.second_look`): tiles at full resolution, a
stretched infrared copy, a second detector. It only adds boxes, so it can keep a frame, never
drop one, and it costs nothing on frames already kept.

Site adaptation (issue 6): when a site head (``detector.head``, else the one the active signed
pack ships: :func:`pack_head`) or the self-learned background is on, the frame is also embedded
once (:mod:`edge_app.trap.detect.embed`), on the frame already decoded for the detector and,
when the classifier looked at the whole frame, on the very same 224×224 pixels; the head's
P(empty) and the background's similarity are computed from that one vector and recorded in
the result, and the embedding itself is kept for the daemon to learn from. The pipeline only
records these votes: combining them is the policy's job
(:func:`edge_app.trap.detect.policy.decide`).

Thresholds are per camtrap category and species (``[detector.thresholds]``): the decoder keeps
candidates above the lowest of them and each box must clear its own category's; a species is
named only above its own threshold.

Everything model-specific comes from the cards (:mod:`edge_app.trap.detect.cards`); the
detector's output format selects a *head* (:mod:`edge_app.trap.detect.heads`). The second
look's wiring lives in :mod:`edge_app.trap.detect.second_pass`, the embedding-based votes in
:mod:`edge_app.trap.detect.site_votes`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.core.events import (
    CATEGORIES,
    SPECIES,
    Detection,
    Frame,
    FrameResult,
    Label,
    Species,
)

# The models-folder search moved to core (every command shares it); re-exported for callers
# that import it from here.
from edge_app.core.models_dir import resolve_models_dir as resolve_models_dir
from edge_app.trap.detect.cards import ModelCard
from edge_app.trap.detect.crop_classifier import CropClassifier
from edge_app.trap.detect.embed import Embedder
from edge_app.trap.detect.heads import (
    MAX_CLASSIFIED,
    MAX_DETECTIONS,
    Thresholds,
    load_detector,
)
from edge_app.trap.detect.preprocess import (
    DecodeBuffer,
    Letterboxer,
    Prepared,
    crop_resized,
    decode_image,
    image_from_pixels,
)
from edge_app.trap.detect.runtime import TfliteModel
from edge_app.trap.detect.second_look import Outcome, needed
from edge_app.trap.detect.second_pass import SecondPass
from edge_app.trap.detect.site_head import SiteHead
from edge_app.trap.detect.site_votes import SiteVotes

if TYPE_CHECKING:
    from edge_app.trap.detect.background import BackgroundMemory

log = logging.getLogger(__name__)

_ANIMAL = CATEGORIES.index("animal")


@dataclass(slots=True)
class _Box:
    """A detection being built (Detection is frozen)."""

    category: int
    conf: float
    bbox: tuple[float, float, float, float]
    cls: str
    species: Species | None = None
    species_conf: float | None = None

    def freeze(self) -> Detection:
        return Detection(CATEGORIES[self.category], self.conf, self.bbox, self.cls,
                         self.species, self.species_conf)


class Pipeline:
    """Motion gate → detector → crop classifier, driven by model cards.

    Not thread-safe (interpreters and buffers are reused): one Pipeline per detect thread.
    """

    def __init__(self, cfg: DetectorConfig, models_dir: Path, *, embed: bool = False,
                 background: BackgroundMemory | None = None) -> None:
        """Load and verify the detector, the classifier (unless ``cfg.classifier`` is ''),
        and the embedding model and site head when they are used.

        Args:
            cfg: ``[detector]``.
            models_dir: the models folder (cards, model files, a relative ``cfg.head``).
            embed: compute the frame embedding even without a head (for the background or
                for ``camtrap eval --loso``); a head or a background implies it.
            background: the trap's self-learned background, when on.

        Raises:
            ModelError: a card, model file, label file or head file is missing, invalid or
                altered, or the head was trained on another embedding model.
        """
        self.cfg = cfg
        self.models_dir = models_dir
        t0 = time.perf_counter()
        det, head = load_detector(cfg.detector, models_dir, cfg.num_threads)
        self._det = det
        self._head = head
        self._clf: CropClassifier | None = None
        self.site: SiteVotes | None = None
        self.second: SecondPass | None = None
        """The second look (issue 13), None when no ``detector.second_look_*`` is on."""
        spec = det.card.input
        self._letterbox = Letterboxer(spec.width, spec.height, spec.resize, spec.pad_value)
        try:
            if cfg.classifier:
                self._clf = CropClassifier.load(cfg.classifier, models_dir, cfg.num_threads)
            self.site = SiteVotes(cfg, models_dir, embed=embed, background=background)
            self.second = SecondPass.load(cfg, models_dir, (det, head, self._letterbox))
        except ModelError:
            self.close()
            raise
        self.load_ms = (time.perf_counter() - t0) * 1e3
        """Time to verify, load and warm up the models (``bench`` reports it)."""
        self._buffer = DecodeBuffer()
        self._whole: tuple[tuple[int, int], NDArray[np.uint8]] | None = None
        self.thresholds = Thresholds.resolve(cfg, det.classes)
        self.last_second_look: Outcome | None = None
        """What the second look did on the last frame (``bench`` and ``eval`` read it)."""

    def apply(self, cfg: DetectorConfig) -> None:
        """Use changed settings from the next frame on (the settings service calls this).

        Only thresholds and per-frame options can change at run time (the model cards are not
        settable remotely), so the resolved thresholds are rebuilt before the new config is
        swapped in: a frame sees the old pair or the new one.
        """
        self.thresholds = Thresholds.resolve(cfg, self._det.classes)
        self.cfg = cfg
        if self.site is not None:
            self.site.cfg = cfg

    @property
    def head(self) -> SiteHead | None:
        """The site head in use (``detector.head`` or the active pack's), or None."""
        return None if self.site is None else self.site.head

    @head.setter
    def head(self, value: SiteHead | None) -> None:
        # ``bench detect`` times a head it loads (or a zero head) on a pipeline built with embed.
        assert self.site is not None
        self.site.head = value

    @property
    def head_threshold(self) -> float:
        """P(empty) at or above which the head votes empty: config, else the head file's."""
        return math.inf if self.site is None else self.site.head_threshold

    @property
    def background(self) -> BackgroundMemory | None:
        """The self-learned background, when on."""
        return None if self.site is None else self.site.background

    @background.setter
    def background(self, value: BackgroundMemory | None) -> None:
        # The daemon sets it once the embedder is known (the pipeline was built with embed).
        assert self.site is not None
        self.site.background = value

    @property
    def embedder(self) -> Embedder | None:
        """The frame embedding model, when loaded."""
        return None if self.site is None else self.site.embedder

    @property
    def detector_card(self) -> ModelCard:
        """The detector's card (for stats and ``bench``)."""
        return self._det.card

    @property
    def classifier_card(self) -> ModelCard | None:
        """The classifier's card, or None when there is no classifier."""
        return None if self._clf is None else self._clf.model.card

    @property
    def detector_model(self) -> TfliteModel:
        """The detector's interpreter wrapper (``bench`` times its bare invoke)."""
        return self._det.model

    @property
    def classifier_model(self) -> TfliteModel | None:
        """The classifier's interpreter wrapper, or None."""
        return None if self._clf is None else self._clf.model.model

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the interpreters."""
        self._det.model.close()
        if self._clf is not None:
            self._clf.close()
        if self.second is not None:
            self.second.close()
        if self.site is not None:
            self.site.close()

    # -- one frame ------------------------------------------------------------------------

    def analyse(self, image: bytes | Path | NDArray[np.uint8] | Frame) -> FrameResult:
        """Run the whole pipeline on one image.

        Args:
            image: JPEG/PNG bytes, a file path, a camera frame's pixel array (the live path:
                no decode), or a :class:`Frame` (its pixels when it has them, else its JPEG).

        Returns:
            The frame's result; ``max_scores`` holds every category's and species' highest
            raw score, below thresholds too.

        Raises:
            ImageError: nothing decodable in ``image``, or more pixels than
                ``detector.max_pixels`` (read from the header, before decoding).
        """
        if isinstance(image, Frame):
            return self.infer(self.prepare_frame(image))
        return self.infer(self.prepare(image, image if isinstance(image, Path) else "frame"))

    def prepare_frame(self, frame: Frame) -> Prepared:
        """:meth:`prepare` for a captured frame: its pixels when it has them (the live path),
        else its JPEG bytes."""
        src = frame.pixels if frame.pixels is not None else frame.jpeg
        return self.prepare(src, frame.name or f"frame {frame.index}")

    def prepare(self, image: bytes | Path | NDArray[np.uint8], name: object) -> Prepared:
        """Decode (or, for an array, wrap and reduce) and letterbox one image.

        Raises:
            ImageError: see :meth:`analyse`.
        """
        spec = self._det.card.input
        t0 = time.perf_counter()
        if isinstance(image, np.ndarray):
            decoded = image_from_pixels(image, (spec.width, spec.height), spec.resize,
                                        max_pixels=self.cfg.max_pixels)
        else:
            decoded = decode_image(image, (spec.width, spec.height), spec.resize,
                                   self._buffer, max_pixels=self.cfg.max_pixels)
        t1 = time.perf_counter()
        if decoded.truncated:
            log.warning("%s: truncated image, decoded the part that is there", name)
        geom = self._letterbox(decoded.image)
        t2 = time.perf_counter()
        return Prepared(decoded, geom, (t1 - t0) * 1e3, (t2 - t1) * 1e3, image)

    def infer(self, prep: Prepared) -> FrameResult:
        cfg = self.cfg
        det = self._det
        th = self.thresholds
        self._whole = None
        t0 = time.perf_counter()
        det.model.set_image(self._letterbox.buffer, bgr=det.card.input.colour_order == "BGR")
        t1 = time.perf_counter()
        raw = det.model.invoke_raw()
        t2 = time.perf_counter()
        dec = self._head.decode(raw, det, th.decode, cfg.iou_threshold, MAX_DETECTIONS,
                                th.per_class)
        class_max = np.minimum(dec.class_max, np.float32(1.0))  # as the boxes' (decoders)
        cat_max = det.classes.category_max(class_max)
        sp_max = det.classes.species_max(class_max)
        norm = prep.geometry.to_normalised(dec.boxes)
        boxes: list[_Box] = []
        for k in range(dec.scores.shape[0]):
            c = int(dec.class_ids[k])
            b = _Box(int(det.classes.category_of[c]), float(dec.scores[k]),
                     (float(norm[k, 0]), float(norm[k, 1]), float(norm[k, 2]),
                      float(norm[k, 3])), det.classes.names[c])
            s = int(det.classes.species_of[c])
            # A detector that knows species (a better model than COCO) names it, when its
            # confidence also clears that species' threshold.
            if s >= 0 and b.conf >= th.species[s]:
                b.species, b.species_conf = SPECIES[s], b.conf
            boxes.append(b)
        t3 = time.perf_counter()

        image = prep.decoded.image
        if self._clf is not None:
            animals = [b for b in boxes if b.category == _ANIMAL and b.species is None]
            for b in animals[:MAX_CLASSIFIED]:
                v = self._clf.classify(image, b.bbox, th.species, cfg, self._whole_frame)
                np.maximum(sp_max, v.sums, out=sp_max)
                if v.species is not None:
                    b.species, b.species_conf = v.species, v.conf
            if not boxes:
                whole = np.maximum(th.species, cfg.whole_frame_species_threshold)
                v = self._clf.classify(image, None, whole, cfg, self._whole_frame)
                np.maximum(sp_max, v.sums, out=sp_max)
                if v.species is not None:
                    # No box, but the classifier is sure a cat fills the frame: report it as
                    # a whole-frame animal so the trigger is kept and alerted on.
                    boxes.append(_Box(_ANIMAL, v.conf, (0.0, 0.0, 1.0, 1.0), v.top_class,
                                      v.species, v.conf))
        t4 = time.perf_counter()
        site = None if self.site is None else self.site.score(image, self._whole_frame)
        t5 = time.perf_counter()

        # max_scores ≥ every reported confidence (a whole-frame species verdict is an animal).
        for b in boxes:
            cat_max[b.category] = max(cat_max[b.category], b.conf)
        boxes.sort(key=lambda b: -b.conf)
        detections = tuple(b.freeze() for b in boxes)
        label: Label = detections[0].category if detections else "empty"
        named = [d for d in detections if d.species is not None]
        best_sp = max(named, key=lambda d: d.species_conf or 0.0) if named else None
        species = best_sp.species if best_sp else None
        score = detections[0].conf if detections else 0.0
        if label == "animal" and best_sp is not None and best_sp.species_conf is not None:
            score = best_sp.species_conf
        max_scores: dict[str, float] = {c: float(cat_max[i]) for i, c in enumerate(CATEGORIES)}
        max_scores.update({s: float(sp_max[i]) for i, s in enumerate(SPECIES)})
        decode_ms = prep.decode_ms + prep.letterbox_ms
        stages = {"decode": prep.decode_ms, "preprocess": prep.letterbox_ms + (t1 - t0) * 1e3,
                  "invoke": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3,
                  "classify": (t4 - t3) * 1e3}
        timings = {"decode": decode_ms, "detect": (t3 - t0) * 1e3, "classify": (t4 - t3) * 1e3}
        if site is not None:
            stages["embed"] = site.embed_ms
            stages["head"] = site.head_ms
            stages["background"] = (t5 - t4) * 1e3 - site.embed_ms - site.head_ms
            timings["embed"] = (t5 - t4) * 1e3
        result = FrameResult(
            label=label,
            species=species,
            score=score,
            detections=detections,
            max_scores=max_scores,
            timings_ms=timings,
            stages_ms=stages,
            empty_prob=None if site is None else site.empty_prob,
            head_empty=None if site is None else site.head_empty,
            background_sim=None if site is None else site.background_sim,
            background_known=None if site is None else site.background_known,
            embedding=None if site is None else site.embedding,
        )
        self.last_second_look = None
        if self.second is not None and needed(list(result.max_scores.values()),
                                              cfg.second_look_below):
            result, self.last_second_look = self.second.run(cfg, prep, result, self._name)
        return result

    def _name(self, image: Image.Image,
              bbox: tuple[float, float, float, float]) -> tuple[Species | None, float]:
        """The species in a box the second look found (none without a classifier)."""
        if self._clf is None:
            return None, 0.0
        v = self._clf.classify(image, bbox, self.thresholds.species, self.cfg,
                               self._whole_frame)
        return v.species, v.conf

    def _whole_frame(self, image: Image.Image, size: tuple[int, int]) -> NDArray[np.uint8]:
        """The whole frame stretched to ``size``, made once per frame: the classifier's
        whole-frame pass and the embedding model (both 224×224) share it."""
        if self._whole is not None and self._whole[0] == size:
            return self._whole[1]
        pixels = crop_resized(image, None, 0.0, size)
        self._whole = (size, pixels)
        return pixels

    # -- a burst --------------------------------------------------------------------------

    def analyse_burst(self, frames: Sequence[Frame]) -> list[FrameResult | None]:
        """A trigger's frames, with the motion gate when it is on: see
        :func:`edge_app.trap.detect.burst.analyse_burst`."""
        from edge_app.trap.detect.burst import analyse_burst

        return analyse_burst(self, frames)

