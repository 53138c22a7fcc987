"""Pure functions from raw model outputs to boxes or class scores.

No model, card or image knowledge here, so each decoder is tested on hand-built tensors. All
work on the anchor axis is vectorised: the only Python loop is greedy NMS, which runs over
the few candidates above threshold (capped by ``max_candidates``), never over the 8400
anchors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

Boxes = NDArray[np.float32]
"""``(K, 4)`` boxes as ``x_min, y_min, x_max, y_max``."""


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
