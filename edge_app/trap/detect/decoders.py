"""Pure functions from raw model outputs to boxes or class scores.

No model, card or image knowledge here, so each decoder is tested on hand-built tensors. All
work on the anchor axis is vectorised: the only Python loop is greedy NMS, which runs over
the few candidates above threshold (capped by ``max_candidates``), never over the 8400
anchors.

Quantised outputs are decoded *in their own integer domain*: a decoder takes the raw int8 or
uint8 tensor plus its ``(scale, zero_point)`` (:data:`Quant`), turns the confidence threshold
into the matching integer, finds candidates with integer comparisons, and dequantises only
the handful of candidate rows. For a YOLOv8n 640 head that avoids converting 705,600 values
to float32 per frame (about 1.5 ms and 2.8 MB of memory traffic on x86, several times more on
a Pi). ``quant=None`` means the tensor is already real-valued (float I/O exports).

Every detector decoder returns boxes as ``x_min, y_min, x_max, y_max`` in *input pixels* (the
letterboxed model input), scores, and class ids in the model's own numbering, best first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

Boxes = NDArray[np.float32]
"""``(K, 4)`` boxes as ``x_min, y_min, x_max, y_max``."""

Quant = tuple[float, int] | None
"""``(scale, zero_point)`` of a quantised tensor (real = scale · (q − zero_point)), or None."""


class Decoded(NamedTuple):
    """A detector head's answer.

    Attributes:
        boxes: ``(K, 4)`` xyxy in input pixels, best first.
        scores: ``(K,)`` confidences in [0, 1].
        class_ids: ``(K,)`` class ids in the model's numbering.
        class_max: ``(C,)`` highest score of each class anywhere in the frame, below the
            threshold too (0 for classes not asked about); the decision policy needs these to
            tell a confidently empty frame from an unsure one.
    """

    boxes: Boxes
    scores: NDArray[np.float32]
    class_ids: NDArray[np.intp]
    class_max: NDArray[np.float32]


def dequantise(q: NDArray[Any], quant: Quant) -> NDArray[np.float32]:
    """Real values of ``q`` (a new float32 array; ``q`` itself when already float32)."""
    if quant is None:
        return q.astype(np.float32, copy=False)
    scale, zero_point = quant
    out = q.astype(np.float32)
    out -= np.float32(zero_point)
    out *= np.float32(scale)
    return out


def raw_threshold(thr: float, quant: Quant, dtype: np.dtype[Any]) -> float | int | None:
    """The raw value ``r`` with ``raw > r`` ⇔ ``real > thr``, or None when every value passes.

    Computed by dequantising every representable value with :func:`dequantise` itself, so the
    integer comparison agrees bit for bit with comparing dequantised floats (no off-by-one at
    a quantisation step).
    """
    if quant is None or not np.issubdtype(dtype, np.integer):
        return thr
    scale, _ = quant
    if scale <= 0:
        raise ValueError(f"quantisation scale must be > 0, got {scale}")
    info = np.iinfo(dtype)
    if info.bits > 16:
        # Wide integer outputs are rare; analytic (may differ from float compare at a tie).
        return int(np.floor(thr / scale + quant[1]))
    q = np.arange(info.min, info.max + 1, dtype=np.int64)
    above = np.flatnonzero(dequantise(q, quant) > thr)
    if above.size == 0:
        return int(info.max)  # raw > max never holds: nothing passes
    first = int(q[above[0]])
    return None if first == info.min else first - 1


def _above(values: NDArray[Any], thr: float, quant: Quant) -> NDArray[np.intp]:
    """Indices where the real value of ``values`` is above ``thr``."""
    r = raw_threshold(thr, quant, values.dtype)
    if r is None:
        return np.arange(values.shape[0], dtype=np.intp)
    return np.flatnonzero(values > r)


def _filter_nms(boxes: Boxes, scores: NDArray[np.float32], class_ids: NDArray[np.intp],
                iou_thr: float, max_det: int, nms_groups: NDArray[Any] | None,
                class_thresholds: NDArray[np.float32] | None,
                run_nms: bool = True) -> tuple[Boxes, NDArray[np.float32], NDArray[np.intp]]:
    """Per-class thresholds, then NMS within groups (shared by every detector decoder)."""
    if class_thresholds is not None and scores.size:
        ok = scores > class_thresholds[class_ids]
        boxes, scores, class_ids = boxes[ok], scores[ok], class_ids[ok]
    if scores.size == 0:
        return _empty()
    if run_nms:
        groups = class_ids if nms_groups is None else nms_groups[class_ids]
        keep = nms(boxes, scores, iou_thr, max_det, groups=groups)
    else:
        keep = np.argsort(-scores, kind="stable")[:max_det]
    # An int8 score's top step can dequantise a hair above 1 (e.g. 1.006): a confidence is
    # reported in [0, 1] whatever the output's quantisation.
    return boxes[keep], np.minimum(scores[keep], np.float32(1.0)), class_ids[keep]


def _top_candidates(cand: NDArray[np.intp], conf: NDArray[Any],
                    max_candidates: int) -> NDArray[np.intp]:
    if cand.size > max_candidates:
        cand = cand[np.argpartition(conf[cand], -max_candidates)[-max_candidates:]]
    return cand


def _empty() -> tuple[Boxes, NDArray[np.float32], NDArray[np.intp]]:
    return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.intp))


def decode_yolov8(
    output: NDArray[Any],
    conf_thr: float,
    iou_thr: float,
    max_det: int,
    *,
    classes: NDArray[np.intp] | None = None,
    nms_groups: NDArray[Any] | None = None,
    box_scale: tuple[float, float] = (1.0, 1.0),
    max_candidates: int = 300,
    quant: Quant = None,
    class_thresholds: NDArray[np.float32] | None = None,
) -> tuple[Boxes, NDArray[np.float32], NDArray[np.intp]]:
    """Decode a YOLOv8 head ``[1, 4+C, N]`` (or ``[4+C, N]``) into boxes after NMS.

    Each anchor votes for its single best class (among ``classes`` when given); anchors whose
    best score is above ``conf_thr`` become candidates, the best ``max_candidates`` of them
    go through NMS.

    Args:
        output: rows 0-3 are cx, cy, w, h; rows 4.. are per-class scores in [0, 1]; float, or
            int8/uint8 with ``quant``.
        conf_thr: minimum class score (exclusive).
        iou_thr: boxes of the same NMS group overlapping more than this are suppressed.
        max_det: at most this many boxes are returned.
        classes: only these class ids compete (e.g. the ones a card maps to a category), so
            a "chair" that slightly beats a "dog" on one anchor does not hide the dog.
        nms_groups: per class id, the NMS group (default: the class id itself). Passing the
            camtrap category makes "dog" and "bear" on the same animal one box.
        box_scale: multiply x and y by these (input width/height for normalised exports).
        max_candidates: cap on boxes entering NMS (bounds its cost on a cluttered frame).
        quant: the tensor's (scale, zero point) when ``output`` is quantised.
        class_thresholds: per class id, a stricter threshold applied after the class is
            chosen (per-category/species thresholds); ``conf_thr`` should be their minimum.

    Returns:
        ``(boxes, scores, class_ids)``: xyxy boxes in input pixels (times ``box_scale``),
        scores, and class ids in the model's class numbering, best first.
    """
    pred = output[0] if output.ndim == 3 else output
    rows = pred[4:]
    if classes is None:
        classes = np.arange(rows.shape[0], dtype=np.intp)
        conf = rows.max(axis=0)
    elif classes.size == 0:
        return _empty()
    else:
        # Running max over the chosen rows: one (N,) buffer instead of a (len(classes), N)
        # fancy-indexed copy. The loop is over classes (16 for COCO → camtrap), not anchors.
        conf = rows[classes[0]].copy()
        for c in classes[1:]:
            np.maximum(conf, rows[c], out=conf)
    cand = _above(conf, conf_thr, quant)
    if cand.size == 0:
        return _empty()
    cand = _top_candidates(cand, conf, max_candidates)
    scores = dequantise(conf[cand], quant)
    # Scale > 0, so the best raw value is the best real value: argmax in the raw domain.
    best = rows[classes[:, None], cand[None, :]].argmax(axis=0)  # (len(classes), K), K small
    class_ids = classes[best]
    xywh = dequantise(pred[:4, cand], quant)
    sx, sy = box_scale
    cx = xywh[0] * sx
    cy = xywh[1] * sy
    hw = xywh[2] * (sx / 2)
    hh = xywh[3] * (sy / 2)
    boxes = np.stack((cx - hw, cy - hh, cx + hw, cy + hh), axis=1).astype(np.float32,
                                                                         copy=False)
    return _filter_nms(boxes, scores, class_ids, iou_thr, max_det, nms_groups,
                       class_thresholds)


def yolov8_class_max(output: NDArray[Any], classes: NDArray[np.intp] | None = None,
                     quant: Quant = None) -> NDArray[np.float32]:
    """Highest score of each class over all anchors (``(C,)``, or ``(len(classes),)``).

    The decision policy needs these raw maxima, below threshold too, to tell a confidently
    empty frame (everything < 0.15) from an unsure one.
    """
    pred = output[0] if output.ndim == 3 else output
    rows = pred[4:]
    if classes is None:
        return dequantise(rows.max(axis=1), quant)
    # Row by row: reductions over views, no copy of the selected rows.
    raw = np.array([rows[c].max() for c in classes], dtype=rows.dtype)
    return dequantise(raw, quant)


def decode_yolov5(
    output: NDArray[Any],
    conf_thr: float,
    iou_thr: float,
    max_det: int,
    *,
    classes: NDArray[np.intp],
    nms_groups: NDArray[Any] | None = None,
    box_scale: tuple[float, float] = (1.0, 1.0),
    max_candidates: int = 300,
    quant: Quant = None,
    class_thresholds: NDArray[np.float32] | None = None,
) -> Decoded:
    """Decode a YOLOv5 head ``[1, N, 5+C]``: cx, cy, w, h, objectness, C class scores.

    This is the layout of MegaDetector v5 (and the MDv1000 YOLOv5/YOLOv9 exports): a box's
    confidence is objectness × class score. Since a class score is ≤ 1, only anchors whose
    objectness alone is above ``conf_thr`` can pass, so the products are computed for those
    few rows only (the same pre-filter YOLOv5's own NMS uses). The per-class maxima for the
    policy need every anchor; they cost one multiply per anchor per mapped class.

    Args: as :func:`decode_yolov8`; ``classes`` is required (the mapped classes).

    Returns:
        :class:`Decoded`, ``class_max`` of length C.
    """
    pred = output[0] if output.ndim == 3 else output
    n_classes = pred.shape[1] - 5
    class_max = np.zeros(n_classes, np.float32)
    if classes.size == 0:
        return Decoded(*_empty(), class_max)
    obj = dequantise(pred[:, 4], quant)
    for c in classes:
        class_max[c] = float((obj * dequantise(pred[:, 5 + c], quant)).max())
    cand = _above(pred[:, 4], conf_thr, quant)
    if cand.size == 0:
        return Decoded(*_empty(), class_max)
    rows = dequantise(pred[cand], quant)  # (K, 5+C), K small
    cls_scores = rows[:, 5 + classes] * rows[:, 4:5]
    best = cls_scores.argmax(axis=1)
    conf = cls_scores[np.arange(len(cand)), best]
    keep = np.flatnonzero(conf > conf_thr)
    keep = _top_candidates(keep, conf, max_candidates)
    rows, conf, class_ids = rows[keep], conf[keep], classes[best[keep]]
    sx, sy = box_scale
    cx, cy = rows[:, 0] * sx, rows[:, 1] * sy
    hw, hh = rows[:, 2] * (sx / 2), rows[:, 3] * (sy / 2)
    boxes = np.stack((cx - hw, cy - hh, cx + hw, cy + hh), axis=1).astype(np.float32,
                                                                         copy=False)
    return Decoded(*_filter_nms(boxes, conf.astype(np.float32, copy=False), class_ids,
                                iou_thr, max_det, nms_groups, class_thresholds), class_max)


def decode_yolov10(
    output: NDArray[Any],
    conf_thr: float,
    iou_thr: float,
    max_det: int,
    *,
    classes: NDArray[np.intp],
    n_classes: int,
    nms_groups: NDArray[Any] | None = None,
    box_scale: tuple[float, float] = (1.0, 1.0),
    quant: Quant = None,
    class_thresholds: NDArray[np.float32] | None = None,
) -> Decoded:
    """Decode an NMS-free head ``[1, K, 6]``: x_min, y_min, x_max, y_max, score, class id.

    The layout of YOLOv10 and of MegaDetector v6-compact exports: the model already keeps
    one box per object per class (top K, typically 300). The only NMS left is *across*
    classes of one camtrap category (``nms_groups``), so "dog" and "bear" on one animal
    still become one box, as with the other heads; pass ``nms_groups=None`` to keep the
    model's boxes untouched.

    Args:
        output: the head, float or quantised (``quant``).
        n_classes: number of labels (length of ``class_max``).
        Others: as :func:`decode_yolov8`.
    """
    pred = dequantise(output[0] if output.ndim == 3 else output, quant)
    class_max = np.zeros(n_classes, np.float32)
    ids = np.rint(pred[:, 5]).astype(np.intp)
    valid = (ids >= 0) & (ids < n_classes)
    mapped = np.zeros(n_classes, bool)
    mapped[classes] = True
    valid[valid] &= mapped[ids[valid]]
    rows, ids = pred[valid], ids[valid]
    if rows.shape[0] == 0:
        return Decoded(*_empty(), class_max)
    np.maximum.at(class_max, ids, rows[:, 4])
    keep = np.flatnonzero(rows[:, 4] > conf_thr)
    rows, ids = rows[keep], ids[keep]
    sx, sy = box_scale
    boxes = (rows[:, :4] * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    return Decoded(*_filter_nms(boxes, rows[:, 4].copy(), ids, iou_thr, max_det, nms_groups,
                                class_thresholds, run_nms=nms_groups is not None), class_max)


SSD_VARIANCES = (0.1, 0.1, 0.2, 0.2)
"""The usual SSD box-coder variances (TF Object Detection API scales 10, 10, 5, 5)."""


def ssd_decode_boxes(encodings: NDArray[np.float32], anchors: NDArray[np.float32],
                     encoding: str, variances: tuple[float, float, float, float] = SSD_VARIANCES,
                     order: str = "xy") -> Boxes:
    """Apply SSD box encodings to their anchors; returns normalised xyxy boxes.

    Two encodings exist in the wild:

    * ``corners`` (STMicroelectronics model zoo, the SSD in the shared pack): anchors are
      ``x_min, y_min, x_max, y_max``; each encoding is the offset of each corner in units of
      the anchor's width/height: ``x_min = a_x_min + e0 · a_w`` and so on. No variances.
    * ``centre_size`` (the original SSD paper, TF Object Detection API): anchors are centre
      and size, ``cx, cy, w, h`` (``order = "xy"``) or ``cy, cx, h, w`` (``order = "yx"``,
      TF OD API); ``cx = a_cx + e_x · v0 · a_w``, ``w = a_w · exp(e_w · v2)``.

    Args:
        encodings: ``(K, 4)`` raw box outputs.
        anchors: ``(K, 4)`` the matching anchors.
        encoding: ``corners`` or ``centre_size``.
        variances: centre_size only: the four scale factors, in the encoding's own order.
        order: centre_size only: ``xy`` or ``yx`` (coordinate order of anchors and encodings).
    """
    e = encodings.astype(np.float32, copy=False)
    a = anchors.astype(np.float32, copy=False)
    if encoding == "corners":
        aw = a[:, 2] - a[:, 0]
        ah = a[:, 3] - a[:, 1]
        return np.stack((a[:, 0] + e[:, 0] * aw, a[:, 1] + e[:, 1] * ah,
                         a[:, 2] + e[:, 2] * aw, a[:, 3] + e[:, 3] * ah), axis=1)
    if encoding != "centre_size":
        raise ValueError(f"unknown SSD box encoding {encoding!r}")
    v = np.asarray(variances, np.float32)
    if order == "yx":  # (y, x, h, w) → (x, y, w, h)
        e = e[:, [1, 0, 3, 2]]
        a = a[:, [1, 0, 3, 2]]
        v = v[[1, 0, 3, 2]]
    cx = a[:, 0] + e[:, 0] * v[0] * a[:, 2]
    cy = a[:, 1] + e[:, 1] * v[1] * a[:, 3]
    w = a[:, 2] * np.exp(e[:, 2] * v[2])
    h = a[:, 3] * np.exp(e[:, 3] * v[3])
    return np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=1).astype(
        np.float32, copy=False)


def decode_ssd_raw(
    scores: NDArray[Any],
    encodings: NDArray[Any],
    anchors: NDArray[Any],
    conf_thr: float,
    iou_thr: float,
    max_det: int,
    *,
    classes: NDArray[np.intp],
    encoding: str,
    variances: tuple[float, float, float, float] = SSD_VARIANCES,
    order: str = "xy",
    activation: str = "none",
    nms_groups: NDArray[Any] | None = None,
    box_scale: tuple[float, float] = (1.0, 1.0),
    max_candidates: int = 300,
    quants: tuple[Quant, Quant, Quant] = (None, None, None),
    class_thresholds: NDArray[np.float32] | None = None,
) -> Decoded:
    """Decode a raw SSD head: per-anchor class scores, box encodings and anchors.

    Args:
        scores: ``[1, N, C]`` class scores (including a background class, left out of
            ``classes``), probabilities (``activation = "none"``) or logits
            (``"sigmoid"``: thresholds are moved into the logit domain, so no sigmoid runs
            over the N×C tensor).
        encodings: ``[1, N, 4]`` box encodings.
        anchors: ``[1, N, 4]`` anchors, normalised to the input.
        encoding, variances, order: see :func:`ssd_decode_boxes`.
        box_scale: input width/height (boxes come out normalised).
        quants: quantisation of (scores, encodings, anchors).
        Others: as :func:`decode_yolov8`.
    """
    sc = scores[0] if scores.ndim == 3 else scores
    n_classes = sc.shape[1]
    class_max = np.zeros(n_classes, np.float32)
    if classes.size == 0:
        return Decoded(*_empty(), class_max)
    qs = quants[0]

    def real(raw: NDArray[Any]) -> NDArray[np.float32]:
        x = dequantise(raw, qs)
        if activation == "sigmoid":
            x = (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
        return x

    sub = sc[:, classes]  # (N, len(classes)): ~110k values for COCO → camtrap
    conf = sub.max(axis=1)
    class_max[classes] = real(sub.max(axis=0))
    thr = conf_thr
    if activation == "sigmoid":
        thr = float(np.log(conf_thr / (1.0 - conf_thr))) if 0 < conf_thr < 1 else (
            -np.inf if conf_thr <= 0 else np.inf)
    cand = _above(conf, thr, qs)
    if cand.size == 0:
        return Decoded(*_empty(), class_max)
    cand = _top_candidates(cand, conf, max_candidates)
    best = sub[cand].argmax(axis=1)
    class_ids = classes[best]
    conf_real = real(conf[cand])
    enc = dequantise((encodings[0] if encodings.ndim == 3 else encodings)[cand], quants[1])
    anc = dequantise((anchors[0] if anchors.ndim == 3 else anchors)[cand], quants[2])
    boxes = ssd_decode_boxes(enc, anc, encoding, variances, order)
    sx, sy = box_scale
    boxes *= np.array([sx, sy, sx, sy], np.float32)
    return Decoded(*_filter_nms(boxes, conf_real, class_ids, iou_thr, max_det, nms_groups,
                                class_thresholds), class_max)


def decode_tflite_postprocess(
    boxes: NDArray[Any],
    class_ids: NDArray[Any],
    scores: NDArray[Any],
    count: NDArray[Any],
    conf_thr: float,
    iou_thr: float,
    max_det: int,
    *,
    classes: NDArray[np.intp],
    n_classes: int,
    label_offset: int = 0,
    nms_groups: NDArray[Any] | None = None,
    box_scale: tuple[float, float] = (1.0, 1.0),
    class_thresholds: NDArray[np.float32] | None = None,
) -> Decoded:
    """Decode the four outputs of a ``TFLite_Detection_PostProcess`` op.

    The op (EfficientDet-Lite, Coral SSD, TF OD API exports) has already decoded the anchors
    and run NMS; it gives ``boxes [1, K, 4]`` as normalised ``y_min, x_min, y_max, x_max``,
    ``classes [1, K]`` (float class ids), ``scores [1, K]`` and ``count [1]`` (valid rows).
    Class ids count from the first *non-background* class, so a label file that starts with
    ``background`` needs ``label_offset = 1``.

    As for YOLOv10, the only NMS left is across classes of one camtrap category.
    """
    n = int(np.asarray(count).reshape(-1)[0])
    b = np.asarray(boxes, np.float32).reshape(-1, 4)[:n]
    ids = np.rint(np.asarray(class_ids, np.float32).reshape(-1)[:n]).astype(np.intp)
    ids += label_offset
    sc = np.asarray(scores, np.float32).reshape(-1)[:n]
    class_max = np.zeros(n_classes, np.float32)
    mapped = np.zeros(n_classes, bool)
    mapped[classes] = True
    ok = (ids >= 0) & (ids < n_classes)
    ok[ok] &= mapped[ids[ok]]
    b, ids, sc = b[ok], ids[ok], sc[ok]
    if sc.size == 0:
        return Decoded(*_empty(), class_max)
    np.maximum.at(class_max, ids, sc)
    keep = sc > conf_thr
    b, ids, sc = b[keep], ids[keep], sc[keep]
    sx, sy = box_scale
    xyxy = np.stack((b[:, 1] * sx, b[:, 0] * sy, b[:, 3] * sx, b[:, 2] * sy), axis=1).astype(
        np.float32, copy=False)
    return Decoded(*_filter_nms(xyxy, sc.copy(), ids, iou_thr, max_det, nms_groups,
                                class_thresholds, run_nms=nms_groups is not None), class_max)


def box_iou(box: NDArray[np.float32], boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    """IoU of one xyxy box against ``(K, 4)`` boxes."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou_thr: float,
        max_det: int, groups: NDArray[Any] | None = None) -> NDArray[np.intp]:
    """Greedy non-maximum suppression, within groups (class-aware when groups = class ids).

    Args:
        boxes: ``(K, 4)`` xyxy.
        scores: ``(K,)``.
        iou_thr: a box overlapping a kept box of its group by more than this is dropped.
        max_det: stop after this many kept boxes.
        groups: ``(K,)`` group ids; boxes in different groups never suppress each other.

    Returns:
        Indices into ``boxes`` of the kept boxes, best first.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if rest.size == 0:
            break
        suppress = box_iou(boxes[i], boxes[rest]) > iou_thr
        if groups is not None:
            suppress &= groups[rest] == groups[i]
        order = rest[~suppress]
    return np.array(keep, dtype=np.intp)


def decode_embedding(output: NDArray[Any], quant: Quant = None) -> NDArray[np.float32]:
    """Flatten an embedding ``[1, 1, 1, D]`` (or ``[1, D]``) to a unit-length ``(D,)`` vector.

    Unit length makes cosine similarity a dot product, which is what re-identification and
    "is this frame like the last empty one" comparisons use.
    """
    v = dequantise(output.reshape(-1), quant).astype(np.float32, copy=True)
    n = float(np.linalg.norm(v))
    if n > 0:
        v /= n
    return v


def decode_classifier(output: NDArray[np.float32], softmax: bool = False) -> NDArray[np.float32]:
    """Flatten a classifier output ``[1, C]`` to ``(C,)`` probabilities.

    Args:
        output: scores as the model produced them (already dequantised).
        softmax: apply a softmax (for models that output logits).

    Returns:
        A view of ``output`` when no softmax is needed (no allocation), else a new array.
    """
    probs = output.reshape(-1)
    if not softmax:
        return probs
    e = np.exp(probs - probs.max())
    out: NDArray[np.float32] = (e / e.sum()).astype(np.float32, copy=False)
    return out
