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
    return boxes[keep], scores[keep], class_ids[keep]


def _top_candidates(cand: NDArray[np.intp], conf: NDArray[Any],
                    max_candidates: int) -> NDArray[np.intp]:
    if cand.size > max_candidates:
        cand = cand[np.argpartition(conf[cand], -max_candidates)[-max_candidates:]]
    return cand


def _empty() -> tuple[Boxes, NDArray[np.float32], NDArray[np.intp]]:
    return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.intp))


def decode_yolov8(
    output: NDArray[np.float32],
    conf_thr: float,
    iou_thr: float,
    max_det: int,
    *,
    classes: NDArray[np.intp] | None = None,
    nms_groups: NDArray[Any] | None = None,
    box_scale: tuple[float, float] = (1.0, 1.0),
    max_candidates: int = 300,
) -> tuple[Boxes, NDArray[np.float32], NDArray[np.intp]]:
    """Decode a YOLOv8 head ``[1, 4+C, N]`` (or ``[4+C, N]``) into boxes after NMS.

    Each anchor votes for its single best class (among ``classes`` when given); anchors whose
    best score is above ``conf_thr`` become candidates, the best ``max_candidates`` of them
    go through NMS.

    Args:
        output: rows 0-3 are cx, cy, w, h; rows 4.. are per-class scores in [0, 1].
        conf_thr: minimum class score (exclusive).
        iou_thr: boxes of the same NMS group overlapping more than this are suppressed.
        max_det: at most this many boxes are returned.
        classes: only these class ids compete (e.g. the ones a card maps to a category), so
            a "chair" that slightly beats a "dog" on one anchor does not hide the dog.
        nms_groups: per class id, the NMS group (default: the class id itself). Passing the
            camtrap category makes "dog" and "bear" on the same animal one box.
        box_scale: multiply x and y by these (input width/height for normalised exports).
        max_candidates: cap on boxes entering NMS (bounds its cost on a cluttered frame).

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
    cand = np.flatnonzero(conf > conf_thr)
    if cand.size == 0:
        return _empty()
    if cand.size > max_candidates:
        cand = cand[np.argpartition(conf[cand], -max_candidates)[-max_candidates:]]
    scores = conf[cand].astype(np.float32, copy=False)
    best = rows[classes[:, None], cand[None, :]].argmax(axis=0)  # (len(classes), K), K small
    class_ids = classes[best]
    sx, sy = box_scale
    cx = pred[0, cand] * sx
    cy = pred[1, cand] * sy
    hw = pred[2, cand] * (sx / 2)
    hh = pred[3, cand] * (sy / 2)
    boxes = np.stack((cx - hw, cy - hh, cx + hw, cy + hh), axis=1).astype(np.float32,
                                                                         copy=False)
    groups = class_ids if nms_groups is None else nms_groups[class_ids]
    keep = nms(boxes, scores, iou_thr, max_det, groups=groups)
    return boxes[keep], scores[keep], class_ids[keep]


def yolov8_class_max(output: NDArray[np.float32],
                     classes: NDArray[np.intp] | None = None) -> NDArray[np.float32]:
    """Highest score of each class over all anchors (``(C,)``, or ``(len(classes),)``).

    The decision policy needs these raw maxima, below threshold too, to tell a confidently
    empty frame (everything < 0.15) from an unsure one.
    """
    pred = output[0] if output.ndim == 3 else output
    rows = pred[4:]
    if classes is None:
        out: NDArray[np.float32] = rows.max(axis=1).astype(np.float32, copy=False)
        return out
    # Row by row: reductions over views, no copy of the selected rows.
    return np.array([rows[c].max() for c in classes], dtype=np.float32)


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
