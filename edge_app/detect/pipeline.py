"""One frame in, one :class:`~edge_app.events.FrameResult` out.

decode (reduced-scale JPEG, upright, RGB) → letterbox → detector → classes to camtrap
categories → crop classifier on the best animal boxes → species. When the detector finds
nothing at all, the classifier looks at the whole frame: the stand-in COCO detector misses
night and half-hidden cats (the cameratrapai ocelot), and a trap that drops a leopard is worse
than no filter.

Everything model-specific comes from the cards (:mod:`edge_app.detect.cards`); the detector's
output format selects a *head* from :data:`DETECTOR_HEADS`, so a new format is one entry
there plus its decoder.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.config import DetectorConfig
from edge_app.detect import decoders
from edge_app.detect.cards import (
    ClassMap,
    ModelCard,
    build_class_map,
    find_card,
    load_card,
    load_labels,
    verify_model_file,
)
from edge_app.detect.preprocess import Letterboxer, crop_resized, decode_image
from edge_app.detect.runtime import TfliteModel
from edge_app.errors import ModelError
from edge_app.events import CATEGORIES, SPECIES, Detection, FrameResult, Label, Species

log = logging.getLogger(__name__)

MAX_DETECTIONS = 20
"""Boxes kept per frame after NMS; a camera-trap frame with more is a herd, 20 tell the story."""
MAX_CLASSIFIED = 3
"""Animal boxes per frame that get a classifier pass (best first): bounds the worst case to
~3 × 3 ms on x86, ~3 × 40 ms on a Pi Zero 2 W."""

_ANIMAL = CATEGORIES.index("animal")


# --------------------------------------------------------------------------- models


@dataclass(slots=True)
class LoadedModel:
    """A card, its verified and loaded model, labels and class map."""

    card: ModelCard
    model: TfliteModel
    labels: tuple[str, ...]
    classes: ClassMap


def load_model(name: str, models_dir: Path, num_threads: int, task: str) -> LoadedModel:
    """Find the card, verify the file's sha256, load the model and check it fits the card.

    Raises:
        ModelError: missing/invalid card, missing or altered model file, wrong task, or a
            model whose tensors do not match the card.
    """
    card = load_card(find_card(name, models_dir))
    if card.task != task:
        raise ModelError(str(card.path), f"card {name!r} is a {card.task}, expected a {task}")
    path = verify_model_file(card, models_dir)
    labels = load_labels(card, models_dir)
    classes = build_class_map(card, labels)
    model = TfliteModel(path, num_threads, card.input.value_range)
    want = (card.input.width, card.input.height)
    if model.input_size != want:
        model.close()
        raise ModelError(str(path), f"input is {model.input_size[0]}x{model.input_size[1]} but "
                         f"card {card.path} says {want[0]}x{want[1]}")
    model.warm_up()
    return LoadedModel(card, model, labels, classes)


@dataclass(frozen=True, slots=True)
class RawBoxes:
    """A detector head's answer, before mapping to camtrap categories.

    Attributes:
        boxes: ``(K, 4)`` xyxy in input pixels, best first.
        scores: ``(K,)``.
        class_ids: ``(K,)`` in the model's class numbering.
        class_max: ``(C,)`` the highest raw score of each class anywhere in the frame (0 for
            classes no category uses).
    """

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    class_ids: NDArray[np.intp]
    class_max: NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class DetectorHead:
    """How to check and decode one detector output format.

    Attributes:
        check: raises ModelError when the model's outputs do not fit the format and labels.
        decode: (outputs, loaded model, score threshold, IoU threshold, max boxes) → RawBoxes.
    """

    check: Callable[[LoadedModel], None]
    decode: Callable[[list[NDArray[np.float32]], LoadedModel, float, float, int], RawBoxes]


def _check_yolov8(m: LoadedModel) -> None:
    outs = m.model.outputs
    n = len(m.labels)
    if len(outs) != 1 or len(outs[0].shape) != 3 or outs[0].shape[1] != 4 + n:
        shapes = [list(t.shape) for t in outs]
        raise ModelError(str(m.model.path), f"yolov8 format needs one output [1, 4+{n}, N] "
                         f"({n} labels in {m.card.labels}), found {shapes}")


def _decode_yolov8(outs: list[NDArray[np.float32]], m: LoadedModel, conf: float, iou: float,
                   max_det: int) -> RawBoxes:
    out = outs[0]
    mapped = m.classes.mapped_classes
    w, h = m.model.input_size
    scale = (float(w), float(h)) if m.card.output.params["coords"] == "normalised" else (1., 1.)
    boxes, scores, class_ids = decoders.decode_yolov8(
        out, conf, iou, max_det, classes=mapped, nms_groups=m.classes.category_of,
        box_scale=scale)
    class_max = np.zeros(len(m.labels), np.float32)
    class_max[mapped] = decoders.yolov8_class_max(out, mapped)
    return RawBoxes(boxes, scores, class_ids, class_max)


DETECTOR_HEADS: dict[str, DetectorHead] = {
    "yolov8": DetectorHead(_check_yolov8, _decode_yolov8),
}
"""Output format → head. Formats the card loader knows but that have no head here are refused
at load time with a clear message."""


def _check_classifier(m: LoadedModel) -> None:
    outs = m.model.outputs
    n = len(m.labels)
    if len(outs) != 1 or math.prod(outs[0].shape) != n:
        shapes = [list(t.shape) for t in outs]
        raise ModelError(str(m.model.path), f"classifier format needs one output of {n} scores "
                         f"({n} labels in {m.card.labels}), found {shapes}")


# --------------------------------------------------------------------------- pipeline


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


@dataclass(slots=True)
class _Species:
    """The best species verdict of one classifier pass."""

    species: Species | None
    conf: float
    sums: NDArray[np.float32]
    top_class: str = ""


class Pipeline:
    """Detector + optional crop classifier, driven by model cards.

    Not thread-safe (interpreters and buffers are reused): one Pipeline per detect thread.
    """

    def __init__(self, cfg: DetectorConfig, models_dir: Path) -> None:
        """Load and verify the detector and (unless ``cfg.classifier`` is '') the classifier.

        Raises:
            ModelError: a card, model file or label file is missing, invalid or altered.
        """
        self.cfg = cfg
        self.models_dir = models_dir
        det = load_model(cfg.detector, models_dir, cfg.num_threads, "detector")
        head = DETECTOR_HEADS.get(det.card.output.format)
        if head is None:
            det.model.close()
            raise ModelError(str(det.card.path), f"output format {det.card.output.format!r} is "
                             f"not supported yet (supported: {', '.join(DETECTOR_HEADS)})")
        head.check(det)
        self._det = det
        self._head = head
        self._clf: LoadedModel | None = None
        if cfg.classifier:
            clf = load_model(cfg.classifier, models_dir, cfg.num_threads, "classifier")
            _check_classifier(clf)
            self._clf = clf
        spec = det.card.input
        self._letterbox = Letterboxer(spec.width, spec.height, spec.resize, spec.pad_value)

    @property
    def detector_card(self) -> ModelCard:
        """The detector's card (for stats and ``bench``)."""
        return self._det.card

    @property
    def classifier_card(self) -> ModelCard | None:
        """The classifier's card, or None when there is no classifier."""
        return None if self._clf is None else self._clf.card

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the interpreters."""
        self._det.model.close()
        if self._clf is not None:
            self._clf.model.close()

    def analyse(self, image: bytes | Path) -> FrameResult:
        """Run the whole pipeline on one encoded image.

        Args:
            image: JPEG/PNG bytes (a camera frame) or a file path.

        Returns:
            The frame's result; ``max_scores`` holds every category's and species' highest
            raw score, below thresholds too.

        Raises:
            ImageError: nothing decodable in ``image``.
        """
        cfg = self.cfg
        det = self._det
        spec = det.card.input
        t0 = time.perf_counter()
        decoded = decode_image(image, (spec.width, spec.height), spec.resize)
        if decoded.truncated:
            log.warning("%s: truncated image, decoded the part that is there",
                        image if isinstance(image, Path) else "frame")
        geom = self._letterbox(decoded.image)
        t1 = time.perf_counter()

        det.model.set_image(self._letterbox.buffer, bgr=spec.colour_order == "BGR")
        raw = self._head.decode(det.model.invoke(), det, cfg.score_threshold,
                                cfg.iou_threshold, MAX_DETECTIONS)
        cat_max = det.classes.category_max(raw.class_max)
        sp_max = det.classes.species_max(raw.class_max)
        norm = geom.to_normalised(raw.boxes)
        boxes: list[_Box] = []
        for k in range(raw.scores.shape[0]):
            c = int(raw.class_ids[k])
            b = _Box(int(det.classes.category_of[c]), float(raw.scores[k]),
                     (float(norm[k, 0]), float(norm[k, 1]), float(norm[k, 2]),
                      float(norm[k, 3])), det.classes.names[c])
            s = int(det.classes.species_of[c])
            if s >= 0:  # a detector that knows species (a better model than COCO) names it
                b.species, b.species_conf = SPECIES[s], b.conf
            boxes.append(b)
        t2 = time.perf_counter()

        if self._clf is not None:
            animals = [b for b in boxes if b.category == _ANIMAL and b.species is None]
            for b in animals[:MAX_CLASSIFIED]:
                v = self._classify(decoded.image, b.bbox)
                np.maximum(sp_max, v.sums, out=sp_max)
                if v.species is not None and v.conf >= cfg.species_threshold:
                    b.species, b.species_conf = v.species, v.conf
            if not boxes:
                v = self._classify(decoded.image, None)
                np.maximum(sp_max, v.sums, out=sp_max)
                if v.species is not None and v.conf >= cfg.whole_frame_species_threshold:
                    # No box, but the classifier is sure a cat fills the frame: report it as
                    # a whole-frame animal so the trigger is kept and alerted on.
                    boxes.append(_Box(_ANIMAL, v.conf, (0.0, 0.0, 1.0, 1.0), v.top_class,
                                      v.species, v.conf))
        t3 = time.perf_counter()

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
        return FrameResult(
            label=label,
            species=species,
            score=score,
            detections=detections,
            max_scores=max_scores,
            timings_ms={"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3,
                        "classify": (t3 - t2) * 1e3},
        )

    def _classify(self, image: Image.Image,
                  bbox: tuple[float, float, float, float] | None) -> _Species:
        """Classifier pass on a box crop (with context) or on the whole frame."""
        clf = self._clf
        assert clf is not None
        spec = clf.card.input
        pixels = crop_resized(image, bbox, self.cfg.crop_context, (spec.width, spec.height))
        clf.model.set_image(pixels, bgr=spec.colour_order == "BGR")
        probs = decoders.decode_classifier(clf.model.invoke()[0],
                                           bool(clf.card.output.params.get("softmax", False)))
        sums = clf.classes.species_sum(probs)
        j = int(np.argmax(sums))
        if sums[j] <= 0.0:
            return _Species(None, 0.0, sums)
        idx = clf.classes.species_classes[j]
        top = clf.classes.names[int(idx[int(np.argmax(probs[idx]))])]
        return _Species(SPECIES[j], float(sums[j]), sums, top)


def resolve_models_dir(cli_value: str | None, cfg_value: str) -> Path:
    """The models folder: ``--models``, else ``detector.models_dir``, else ``CAMTRAP_MODELS``.

    Raises:
        ModelError: none of the three is set, or the folder does not exist.
    """
    env = os.environ.get("CAMTRAP_MODELS", "")
    for value, how in ((cli_value, "--models"), (cfg_value, "detector.models_dir"),
                       (env, "CAMTRAP_MODELS")):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ModelError(str(path), f"model folder does not exist (set by {how})")
            return path
    raise ModelError("models", "no model folder given: pass --models DIR, set "
                     "detector.models_dir in the config, or set CAMTRAP_MODELS")
