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

Everything model-specific comes from the cards (:mod:`edge_app.trap.detect.cards`); the detector's
output format selects a *head* from :data:`DETECTOR_HEADS`, so a new format is one entry
there plus its decoder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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
from edge_app.trap.detect import decoders
from edge_app.trap.detect.cards import (
    ACTIVE_PACK,
    PACK_MANIFEST,
    ClassMap,
    ModelCard,
    file_in,
)
from edge_app.trap.detect.decoders import Decoded, Quant
from edge_app.trap.detect.embed import Embedder
from edge_app.trap.detect.loader import LoadedModel, load_model
from edge_app.trap.detect.preprocess import (
    DecodeBuffer,
    DecodedImage,
    Geometry,
    Letterboxer,
    crop_resized,
    decode_image,
    image_from_pixels,
)
from edge_app.trap.detect.runtime import TensorInfo, TfliteModel
from edge_app.trap.detect.second_look import (
    Found,
    Outcome,
    SecondLook,
    Settings,
    extend,
    needed,
    tile_fraction,
)
from edge_app.trap.detect.site_head import SiteHead, load_head
from edge_app.trap.detect.species import SpeciesRule, evidence, evidence_indices, judge
from edge_app.trap.packs.manifest import MAX_MANIFEST_BYTES, parse_manifest

if TYPE_CHECKING:
    from edge_app.trap.detect.background import BackgroundMemory

log = logging.getLogger(__name__)

MAX_DETECTIONS = 20
"""Boxes kept per frame after NMS; a camera-trap frame with more is a herd, 20 tell the story."""
MAX_CLASSIFIED = 3
"""Animal boxes per frame that get a classifier pass (best first): bounds the worst case to
~3 × 3 ms on x86, ~3 × 40 ms on a Pi Zero 2 W."""

_ANIMAL = CATEGORIES.index("animal")


# --------------------------------------------------------------------------- models


def quant_of(t: TensorInfo) -> Quant:
    """The (scale, zero point) a decoder needs, or None for a float tensor."""
    return (t.scale, t.zero_point) if t.quantised else None


@dataclass(frozen=True, slots=True)
class DetectorHead:
    """How to check and decode one detector output format.

    Attributes:
        check: raises ModelError when the model's outputs do not fit the format and labels.
        decode: (raw outputs, loaded model, score threshold, IoU threshold, max boxes,
            per-class thresholds) → :class:`~edge_app.trap.detect.decoders.Decoded`. The raw
            outputs are in the tensors' own dtypes; the head passes each tensor's
            quantisation to the decoder.
    """

    check: Callable[[LoadedModel], None]
    decode: Callable[[list[NDArray[Any]], LoadedModel, float, float, int, NDArray[np.float32]],
                     Decoded]


def _shapes(m: LoadedModel) -> list[list[int]]:
    return [list(t.shape) for t in m.model.outputs]


def _box_scale(m: LoadedModel) -> tuple[float, float]:
    """Input pixels per output unit: (w, h) for normalised coordinates, else (1, 1)."""
    w, h = m.model.input_size
    if m.card.output.params.get("coords", "normalised") == "normalised":
        return float(w), float(h)
    return 1.0, 1.0


def _yolo_axis(m: LoadedModel, per_anchor: int) -> int:
    """Which axis of the single ``[1, a, b]`` output holds the ``per_anchor`` values."""
    outs = m.model.outputs
    n = len(m.labels)
    fmt = m.card.output.format
    if len(outs) == 1 and len(outs[0].shape) == 3:
        shape = outs[0].shape
        if shape[1] == per_anchor and shape[2] != per_anchor:
            return 1
        if shape[2] == per_anchor:
            return 2
    raise ModelError(str(m.model.path), f"{fmt} format needs one output with {per_anchor} "
                     f"values per anchor ({n} labels in {m.card.labels}), found {_shapes(m)}")


def _check_yolov8(m: LoadedModel) -> None:
    _yolo_axis(m, 4 + len(m.labels))


def _decode_yolov8(outs: list[NDArray[Any]], m: LoadedModel, conf: float, iou: float,
                   max_det: int, class_thr: NDArray[np.float32]) -> Decoded:
    out = outs[0]
    if _yolo_axis(m, 4 + len(m.labels)) == 2:  # [1, N, 4+C] export: a view, not a copy
        out = out.transpose(0, 2, 1)
    mapped = m.classes.mapped_classes
    q = quant_of(m.model.outputs[0])
    boxes, scores, class_ids = decoders.decode_yolov8(
        out, conf, iou, max_det, classes=mapped, nms_groups=m.classes.category_of,
        box_scale=_box_scale(m), quant=q, class_thresholds=class_thr)
    class_max = np.zeros(len(m.labels), np.float32)
    class_max[mapped] = decoders.yolov8_class_max(out, mapped, q)
    return Decoded(boxes, scores, class_ids, class_max)


def _check_yolov5(m: LoadedModel) -> None:
    _yolo_axis(m, 5 + len(m.labels))


def _decode_yolov5(outs: list[NDArray[Any]], m: LoadedModel, conf: float, iou: float,
                   max_det: int, class_thr: NDArray[np.float32]) -> Decoded:
    out = outs[0]
    if _yolo_axis(m, 5 + len(m.labels)) == 1:  # [1, 5+C, N] export
        out = out.transpose(0, 2, 1)
    return decoders.decode_yolov5(
        out, conf, iou, max_det, classes=m.classes.mapped_classes,
        nms_groups=m.classes.category_of, box_scale=_box_scale(m),
        quant=quant_of(m.model.outputs[0]), class_thresholds=class_thr)


def _check_yolov10(m: LoadedModel) -> None:
    outs = m.model.outputs
    if len(outs) != 1 or len(outs[0].shape) != 3 or outs[0].shape[2] != 6:
        raise ModelError(str(m.model.path), f"yolov10 format needs one output [1, K, 6], "
                         f"found {_shapes(m)}")


def _decode_yolov10(outs: list[NDArray[Any]], m: LoadedModel, conf: float, iou: float,
                    max_det: int, class_thr: NDArray[np.float32]) -> Decoded:
    return decoders.decode_yolov10(
        outs[0], conf, iou, max_det, classes=m.classes.mapped_classes,
        n_classes=len(m.labels), nms_groups=m.classes.category_of, box_scale=_box_scale(m),
        quant=quant_of(m.model.outputs[0]), class_thresholds=class_thr)


def _roles(m: LoadedModel) -> dict[str, int]:
    """Output role → output index, from the card's ``outputs`` list."""
    roles = list(m.card.output.params["outputs"])
    return {r: i for i, r in enumerate(roles)}


def _check_ssd(m: LoadedModel) -> None:
    outs = m.model.outputs
    n = len(m.labels)
    fail = ModelError(str(m.model.path), f"ssd_raw_anchors format needs 3 outputs: scores "
                      f"[1, N, {n}] ({n} labels in {m.card.labels}), boxes [1, N, 4], anchors "
                      f"[1, N, 4] in the order of the card's outputs, found {_shapes(m)}")
    if len(outs) != 3:
        raise fail
    r = _roles(m)
    sc, bx, an = (outs[r[k]].shape for k in ("scores", "boxes", "anchors"))
    if (len(sc) != 3 or sc[2] != n or bx != an or len(bx) != 3 or bx[2] != 4
            or bx[1] != sc[1]):
        raise fail


def _decode_ssd(outs: list[NDArray[Any]], m: LoadedModel, conf: float, iou: float,
                max_det: int, class_thr: NDArray[np.float32]) -> Decoded:
    r = _roles(m)
    p = m.card.output.params
    t = m.model.outputs
    return decoders.decode_ssd_raw(
        outs[r["scores"]], outs[r["boxes"]], outs[r["anchors"]], conf, iou, max_det,
        classes=m.classes.mapped_classes, encoding=p["encoding"],
        variances=cast(tuple[float, float, float, float], tuple(p["variances"])),
        order=p["order"], activation=p["activation"], nms_groups=m.classes.category_of,
        box_scale=_box_scale(m),
        quants=(quant_of(t[r["scores"]]), quant_of(t[r["boxes"]]), quant_of(t[r["anchors"]])),
        class_thresholds=class_thr)


def _check_postprocess(m: LoadedModel) -> None:
    outs = m.model.outputs
    fail = ModelError(str(m.model.path), "tflite_postprocess format needs 4 outputs: boxes "
                      "[1, K, 4], classes [1, K], scores [1, K], count [1] in the order of "
                      f"the card's outputs, found {_shapes(m)}")
    if len(outs) != 4:
        raise fail
    r = _roles(m)
    bx, cl, sc, ct = (outs[r[k]].shape for k in ("boxes", "classes", "scores", "count"))
    if len(bx) != 3 or bx[2] != 4 or cl != sc or cl != bx[:2] or math.prod(ct) != 1:
        raise fail


def _decode_postprocess(outs: list[NDArray[Any]], m: LoadedModel, conf: float, iou: float,
                        max_det: int, class_thr: NDArray[np.float32]) -> Decoded:
    r = _roles(m)
    t = m.model.outputs
    real = [decoders.dequantise(outs[i], quant_of(t[i])) for i in range(len(outs))]
    return decoders.decode_tflite_postprocess(
        real[r["boxes"]], real[r["classes"]], real[r["scores"]], real[r["count"]], conf, iou,
        max_det, classes=m.classes.mapped_classes, n_classes=len(m.labels),
        label_offset=int(m.card.output.params["label_offset"]),
        nms_groups=m.classes.category_of, box_scale=_box_scale(m), class_thresholds=class_thr)


DETECTOR_HEADS: dict[str, DetectorHead] = {
    "yolov8": DetectorHead(_check_yolov8, _decode_yolov8),
    "yolov5": DetectorHead(_check_yolov5, _decode_yolov5),
    "yolov10": DetectorHead(_check_yolov10, _decode_yolov10),
    "ssd_raw_anchors": DetectorHead(_check_ssd, _decode_ssd),
    "tflite_postprocess": DetectorHead(_check_postprocess, _decode_postprocess),
}
"""Output format → head. Every detector format of :data:`~edge_app.trap.detect.cards.FORMATS`
has one (a test checks it)."""


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


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Resolved thresholds: per camtrap category/species and per detector class.

    Attributes:
        category: per category (CATEGORIES order), ``detector.thresholds.<c>`` or
            ``detector.score_threshold``.
        species: per species (SPECIES order), ``detector.thresholds.<s>`` or
            ``detector.species_threshold``.
        per_class: per detector class, the threshold of its category (inf if unmapped).
        decode: the lowest of them: what the decoder keeps as candidates.
    """

    category: NDArray[np.float32]
    species: NDArray[np.float32]
    per_class: NDArray[np.float32]
    decode: float

    @classmethod
    def resolve(cls, cfg: DetectorConfig, classes: ClassMap) -> Thresholds:
        """Fill the per-category/species defaults in and map them onto the classes."""
        th = cfg.thresholds
        category = np.array([getattr(th, c) or cfg.score_threshold for c in CATEGORIES],
                            np.float32)
        species = np.array([getattr(th, s) or cfg.species_threshold for s in SPECIES],
                           np.float32)
        per_class = np.full(len(classes.names), np.inf, np.float32)
        mapped = classes.category_of >= 0
        per_class[mapped] = category[classes.category_of[mapped]]
        decode = float(per_class[mapped].min()) if mapped.any() else cfg.score_threshold
        return cls(category, species, per_class, decode)


@dataclass(slots=True)
class _Site:
    """What the embedding-based stages made of one frame."""

    embedding: NDArray[np.float32]
    embed_ms: float
    head_ms: float = 0.0
    empty_prob: float | None = None
    head_empty: bool | None = None
    background_sim: float | None = None
    background_known: bool | None = None


@dataclass(slots=True)
class _Prepared:
    """A decoded frame, letterboxed; valid until the next frame is decoded."""

    decoded: DecodedImage
    geometry: Geometry
    decode_ms: float
    letterbox_ms: float
    source: bytes | Path | NDArray[np.uint8] | None = None
    """What was decoded: the second look's tiles decode it again at a larger scale."""


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
        det = load_model(cfg.detector, models_dir, cfg.num_threads, "detector")
        head = DETECTOR_HEADS.get(det.card.output.format)
        try:
            if head is None:
                raise ModelError(str(det.card.path), f"output format "
                                 f"{det.card.output.format!r} has no detector head (known: "
                                 f"{', '.join(DETECTOR_HEADS)})")
            head.check(det)
        except ModelError:
            det.model.close()
            raise
        self._det = det
        self._head = head
        self._clf: LoadedModel | None = None
        self._cat_groups: dict[str, NDArray[np.intp]] = {}
        if cfg.classifier:
            clf = load_model(cfg.classifier, models_dir, cfg.num_threads, "classifier")
            try:
                _check_classifier(clf)
            except ModelError:
                clf.model.close()
                det.model.close()
                raise
            self._clf = clf
            self._cat_groups = evidence_indices(clf.classes.names)
        self._embedder: Embedder | None = None
        self.head: SiteHead | None = None
        self.background = background
        """The self-learned background; the daemon sets it once the embedder is known."""
        shipped = "" if cfg.head else pack_head(models_dir)
        if cfg.head or shipped or embed or background is not None:
            try:
                self._load_embedding(cfg, models_dir, shipped)
            except ModelError:
                self.close()
                raise
        self.load_ms = (time.perf_counter() - t0) * 1e3
        """Time to verify, load and warm up the models (``bench`` reports it)."""
        spec = det.card.input
        self._letterbox = Letterboxer(spec.width, spec.height, spec.resize, spec.pad_value)
        self._buffer = DecodeBuffer()
        self._whole: tuple[tuple[int, int], NDArray[np.uint8]] | None = None
        self.thresholds = Thresholds.resolve(cfg, det.classes)
        self._vote: tuple[LoadedModel, DetectorHead, Letterboxer] | None = None
        self.second: SecondLook | None = None
        """The second look (issue 13), None when no ``detector.second_look_*`` is on."""
        self.last_second_look: Outcome | None = None
        """What the second look did on the last frame (``bench`` and ``eval`` read it)."""
        try:
            self._load_second_look(cfg, models_dir)
        except ModelError:
            self.close()
            raise

    def apply(self, cfg: DetectorConfig) -> None:
        """Use changed settings from the next frame on (the settings service calls this).

        Only thresholds and per-frame options can change at run time (the model cards are not
        settable remotely), so the resolved thresholds are rebuilt before the new config is
        swapped in: a frame sees the old pair or the new one.
        """
        self.thresholds = Thresholds.resolve(cfg, self._det.classes)
        self.cfg = cfg

    def _load_embedding(self, cfg: DetectorConfig, models_dir: Path, shipped: str) -> None:
        """The embedder, and the head: ``detector.head``, else ``shipped`` (the active pack's)."""
        if not cfg.embedder:
            raise ModelError("detector.embedder", "the site head and the background need an "
                             "embedding model card")
        self._embedder = Embedder(cfg.embedder, models_dir, cfg.num_threads)
        if cfg.head or shipped:
            path = (head_path(cfg.head, models_dir) if cfg.head
                    else models_dir / ACTIVE_PACK / shipped)
            self.head = load_head(path, self._embedder.sha256, self._embedder.dims)
            log.info("site head %s%s: threshold %.3f (%s)", self.head.path,
                     "" if cfg.head else " (shipped in the active model pack)",
                     self.head_threshold, "config" if cfg.head_threshold else "head file")

    @property
    def head_threshold(self) -> float:
        """P(empty) at or above which the head votes empty: config, else the head file's."""
        if self.head is None:
            return math.inf
        return self.cfg.head_threshold or self.head.threshold

    @property
    def embedder(self) -> Embedder | None:
        """The frame embedding model, when loaded."""
        return self._embedder

    @property
    def detector_card(self) -> ModelCard:
        """The detector's card (for stats and ``bench``)."""
        return self._det.card

    @property
    def classifier_card(self) -> ModelCard | None:
        """The classifier's card, or None when there is no classifier."""
        return None if self._clf is None else self._clf.card

    @property
    def detector_model(self) -> TfliteModel:
        """The detector's interpreter wrapper (``bench`` times its bare invoke)."""
        return self._det.model

    @property
    def classifier_model(self) -> TfliteModel | None:
        """The classifier's interpreter wrapper, or None."""
        return None if self._clf is None else self._clf.model

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the interpreters."""
        self._det.model.close()
        if self._clf is not None:
            self._clf.model.close()
        vote = getattr(self, "_vote", None)
        if vote is not None:
            vote[0].model.close()
        if getattr(self, "_embedder", None) is not None:
            assert self._embedder is not None
            self._embedder.close()

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

    def prepare_frame(self, frame: Frame) -> _Prepared:
        """:meth:`prepare` for a captured frame: its pixels when it has them (the live path),
        else its JPEG bytes."""
        src = frame.pixels if frame.pixels is not None else frame.jpeg
        return self.prepare(src, frame.name or f"frame {frame.index}")

    def prepare(self, image: bytes | Path | NDArray[np.uint8], name: object) -> _Prepared:
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
        return _Prepared(decoded, geom, (t1 - t0) * 1e3, (t2 - t1) * 1e3, image)

    def infer(self, prep: _Prepared) -> FrameResult:
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
        cat_max = det.classes.category_max(dec.class_max)
        sp_max = det.classes.species_max(dec.class_max)
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
                v = self._classify(image, b.bbox, th.species)
                np.maximum(sp_max, v.sums, out=sp_max)
                if v.species is not None:
                    b.species, b.species_conf = v.species, v.conf
            if not boxes:
                whole = np.maximum(th.species, cfg.whole_frame_species_threshold)
                v = self._classify(image, None, whole)
                np.maximum(sp_max, v.sums, out=sp_max)
                if v.species is not None:
                    # No box, but the classifier is sure a cat fills the frame: report it as
                    # a whole-frame animal so the trigger is kept and alerted on.
                    boxes.append(_Box(_ANIMAL, v.conf, (0.0, 0.0, 1.0, 1.0), v.top_class,
                                      v.species, v.conf))
        t4 = time.perf_counter()
        site = self._site(image)
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
            result = self._second_pass(prep, result)
        return result

    # -- the second look (edge_app/trap/detect/second_look.py) ---------------------------

    def _load_second_look(self, cfg: DetectorConfig, models_dir: Path) -> None:
        looks = tuple(name for name, on in (("ir", cfg.second_look_ir),
                                            ("detector", bool(cfg.second_look_detector)),
                                            ("tiles", cfg.second_look_tiles)) if on)
        if not looks:
            return
        vote = None
        if cfg.second_look_detector:
            m = load_model(cfg.second_look_detector, models_dir, cfg.num_threads, "detector")
            head = DETECTOR_HEADS.get(m.card.output.format)
            try:
                if head is None:
                    raise ModelError(str(m.card.path), f"output format "
                                     f"{m.card.output.format!r} has no detector head")
                head.check(m)
            except ModelError:
                m.model.close()
                raise
            spec = m.card.input
            self._vote = (m, head, Letterboxer(spec.width, spec.height, spec.resize,
                                               spec.pad_value))
            vote = self._run_vote
        settings = Settings(looks, cfg.second_look_threshold, 2, cfg.second_look_overlap,
                            cfg.second_look_ir_saturation)
        self.second = SecondLook(settings, self._run_detector, vote)

    def _boxes_on(self, m: LoadedModel, head: DetectorHead, box: Letterboxer,
                  image: Image.Image) -> list[Found]:
        """One detector pass on ``image`` at the second look's threshold."""
        per_class = Thresholds.resolve(self.cfg, m.classes).per_class
        per_class = np.maximum(per_class, np.float32(self.cfg.second_look_threshold))
        geom = box(image)
        m.model.set_image(box.buffer, bgr=m.card.input.colour_order == "BGR")
        raw = m.model.invoke_raw()
        finite = per_class[np.isfinite(per_class)]
        conf = float(finite.min()) if finite.size else self.cfg.second_look_threshold
        dec = head.decode(raw, m, conf, self.cfg.iou_threshold, MAX_DETECTIONS, per_class)
        norm = geom.to_normalised(dec.boxes)
        out = []
        for k in range(dec.scores.shape[0]):
            c = int(dec.class_ids[k])
            out.append(Found(int(m.classes.category_of[c]), float(dec.scores[k]),
                             (float(norm[k, 0]), float(norm[k, 1]), float(norm[k, 2]),
                              float(norm[k, 3])), m.classes.names[c], ""))
        return out

    def _run_detector(self, image: Image.Image) -> list[Found]:
        return self._boxes_on(self._det, self._head, self._letterbox, image)

    def _run_vote(self, image: Image.Image) -> list[Found]:
        assert self._vote is not None
        return self._boxes_on(*self._vote, image)

    def _full_frame(self, prep: _Prepared) -> Image.Image:
        """The frame at the scale where a 2×2 window fills the detector input."""
        decoded = prep.decoded
        src = prep.source
        if src is None or decoded.image.size == decoded.original_size:
            return decoded.image
        assert self.second is not None
        frac = tile_fraction(self.second.settings.grid, self.second.settings.overlap)
        spec = self._det.card.input
        target = (math.ceil(spec.width / frac), math.ceil(spec.height / frac))
        if isinstance(src, np.ndarray):
            return image_from_pixels(src, target, "letterbox",
                                     max_pixels=self.cfg.max_pixels).image
        return decode_image(src, target, "letterbox", None, max_pixels=self.cfg.max_pixels).image

    def _second_pass(self, prep: _Prepared, result: FrameResult) -> FrameResult:
        """Look again at a frame the first pass would let go; name species in what it finds."""
        assert self.second is not None
        image = prep.decoded.image
        out = self.second.look(image, lambda: self._full_frame(prep))
        self.last_second_look = out
        t0 = time.perf_counter()
        found: list[Detection] = []
        for i, f in enumerate(out.found[:MAX_DETECTIONS]):
            b = _Box(f.category, f.conf, f.bbox, f.cls)
            if self._clf is not None and f.category == _ANIMAL and i < MAX_CLASSIFIED:
                v = self._classify(image, f.bbox, self.thresholds.species)
                if v.species is not None:
                    b.species, b.species_conf = v.species, v.conf
            found.append(b.freeze())
        return extend(result, found, out.ms + (time.perf_counter() - t0) * 1e3)

    def _site(self, image: Image.Image) -> _Site | None:
        """The frame embedding, once, and what the head and the background make of it."""
        emb = self._embedder
        if emb is None:
            return None
        t0 = time.perf_counter()
        pixels = self._whole_frame(image, emb.size) if emb.stretches else emb.pixels(image)
        vec = emb.embed_pixels(pixels)
        t1 = time.perf_counter()
        out = _Site(embedding=vec.copy(), embed_ms=(t1 - t0) * 1e3)
        if self.head is not None:
            out.empty_prob = self.head.empty_prob(vec)
            out.head_empty = out.empty_prob >= self.head_threshold
            out.head_ms = (time.perf_counter() - t1) * 1e3
        bg = self.background
        if bg is not None:
            out.background_sim = bg.similarity(vec)
            out.background_known = bg.is_known(out.background_sim)
        return out

    def _whole_frame(self, image: Image.Image, size: tuple[int, int]) -> NDArray[np.uint8]:
        """The whole frame stretched to ``size``, made once per frame: the classifier's
        whole-frame pass and the embedding model (both 224×224) share it."""
        if self._whole is not None and self._whole[0] == size:
            return self._whole[1]
        pixels = crop_resized(image, None, 0.0, size)
        self._whole = (size, pixels)
        return pixels

    def _classify(self, image: Image.Image, bbox: tuple[float, float, float, float] | None,
                  thresholds: NDArray[np.float32]) -> _Species:
        """Classifier pass on a box crop (with context) or on the whole frame.

        The named species is the likeliest of those whose summed probability clears its own
        threshold (``thresholds``, SPECIES order), so a stricter tiger threshold does not
        hide a leopard that clears its own. A leopard or tiger must then pass the species
        rule (:mod:`edge_app.trap.detect.species`): a small, boxless or cat-of-the-village
        crop is demoted to ``other_big_cat`` or a plain animal; ``sums`` stay raw.
        """
        clf = self._clf
        assert clf is not None
        spec = clf.card.input
        size = (spec.width, spec.height)
        pixels = (self._whole_frame(image, size) if bbox is None
                  else crop_resized(image, bbox, self.cfg.crop_context, size))
        clf.model.set_image(pixels, bgr=spec.colour_order == "BGR")
        probs = decoders.decode_classifier(clf.model.invoke()[0],
                                           bool(clf.card.output.params.get("softmax", False)))
        sums = clf.classes.species_sum(probs)
        passing = np.where((sums >= thresholds) & (sums > 0.0), sums, -1.0)
        j = int(np.argmax(passing))
        if passing[j] < 0.0:
            return _Species(None, 0.0, sums)
        idx = clf.classes.species_classes[j]
        top = clf.classes.names[int(idx[int(np.argmax(probs[idx]))])]
        rule = SpeciesRule(self.cfg.target_min_height, self.cfg.target_min_area)
        named, conf = judge(SPECIES[j], float(sums[j]), evidence(probs, self._cat_groups),
                            bbox, rule)
        if named is None:
            return _Species(None, 0.0, sums)
        return _Species(named, conf, sums, top)

    # -- a burst --------------------------------------------------------------------------

    def analyse_burst(self, frames: Sequence[Frame]) -> list[FrameResult | None]:
        """A trigger's frames, with the motion gate when it is on: see
        :func:`edge_app.trap.detect.burst.analyse_burst`."""
        from edge_app.trap.detect.burst import analyse_burst

        return analyse_burst(self, frames)


def head_path(value: str, models_dir: Path) -> Path:
    """``detector.head`` as a path: absolute, or relative to the models folder — the active
    signed pack's copy when the pack carries it (a head sent in a pack is the one the pack's
    signature and hashes vouch for)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else file_in(models_dir, value)


def pack_head(models_dir: Path) -> str:
    """The site head file the *installed* active pack ships (``<models>/current``), '' if none.

    Why a pack's head is used without a config change: the station's review loop trains a
    head on the frames rangers labelled and sends it to the unit in a signed pack; installing
    it must be enough for the unit's next verdicts to use it (a remote config change would be
    a second, separately failing step). ``detector.head`` still wins when set, and a pack
    without a head changes nothing. Only an installed pack counts, not a folder that *is* a
    pack: the installer's self-test and ``models pack`` run the pipeline on a staged pack,
    whose record is the detector's and classifier's verdicts alone.

    The manifest was verified at install; it is still parsed with limits here.

    Raises:
        ModelError: the active pack's manifest is unreadable or malformed (a broken pack:
            on trial, the daemon's start then rolls it back).
    """
    path = models_dir / ACTIVE_PACK / PACK_MANIFEST
    if not path.is_file():
        return ""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ModelError(str(path), f"cannot read the active pack's manifest: {e.strerror}") from e
    return parse_manifest(raw).head
