"""Detector output formats: how each is checked against its model and decoded, and the
thresholds the decoders apply.

Apart from :mod:`edge_app.trap.detect.pipeline` because both the main pass and the second
look (:mod:`edge_app.trap.detect.second_pass`) run detectors through these heads, and
``camtrap models verify`` checks models with them without building a pipeline. A new output
format is one entry in :data:`DETECTOR_HEADS` plus its decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.core.events import CATEGORIES, SPECIES
from edge_app.trap.detect import decoders
from edge_app.trap.detect.cards import ClassMap
from edge_app.trap.detect.decoders import Decoded, Quant
from edge_app.trap.detect.loader import LoadedModel, load_model
from edge_app.trap.detect.runtime import TensorInfo

MAX_DETECTIONS = 20
"""Boxes kept per frame after NMS; a camera-trap frame with more is a herd, 20 tell the story."""
MAX_CLASSIFIED = 3
"""Animal boxes per frame that get a classifier pass (best first): bounds the worst case to
~3 × 3 ms on x86, ~3 × 40 ms on a Pi Zero 2 W."""





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


def check_classifier(m: LoadedModel) -> None:
    outs = m.model.outputs
    n = len(m.labels)
    if len(outs) != 1 or math.prod(outs[0].shape) != n:
        shapes = [list(t.shape) for t in outs]
        raise ModelError(str(m.model.path), f"classifier format needs one output of {n} scores "
                         f"({n} labels in {m.card.labels}), found {shapes}")


def load_detector(name: str, models_dir: Path, threads: int) -> tuple[LoadedModel, DetectorHead]:
    """Load a detector card's model and check it against its output format's head.

    Raises:
        ModelError: the card or file is bad, or the format has no head or does not fit.
    """
    m = load_model(name, models_dir, threads, "detector")
    head = DETECTOR_HEADS.get(m.card.output.format)
    try:
        if head is None:
            raise ModelError(str(m.card.path), f"output format {m.card.output.format!r} has "
                             f"no detector head (known: {', '.join(DETECTOR_HEADS)})")
        head.check(m)
    except ModelError:
        m.model.close()
        raise
    return m, head


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
