"""Decoders on hand-built tensors whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.detect.decoders import (
    box_iou,
    decode_classifier,
    decode_yolov8,
    nms,
    yolov8_class_max,
)


def yolo_output(anchors: list[tuple[float, float, float, float, list[float]]],
                n_classes: int, n_anchors: int = 50) -> np.ndarray:
    """A [1, 4+C, N] head: listed anchors (cx, cy, w, h, scores) then zero-score padding."""
    out = np.zeros((1, 4 + n_classes, n_anchors), np.float32)
    out[0, :4, :] = 0.5  # padding anchors: a box in the middle with zero scores
    for i, (cx, cy, w, h, scores) in enumerate(anchors):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4:, i] = scores
    return out


def test_box_iou_known_values() -> None:
    a = np.array([0, 0, 2, 2], np.float32)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [1 / 7, 1.0, 0.0, 0.0], rtol=1e-6)


def test_nms_keeps_best_of_overlapping_and_respects_groups() -> None:
    boxes = np.array([[0, 0, 10, 10],     # 0: best
                      [1, 1, 11, 11],     # 1: IoU 0.68 with 0 → suppressed
                      [0, 0, 10, 10],     # 2: same place, other group → kept
                      [50, 50, 60, 60]],  # 3: elsewhere → kept
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    groups = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, 0.5, 10, groups=groups).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, 10).tolist() == [0, 3]  # one group: 2 goes too
    assert nms(boxes, scores, 0.5, 2, groups=groups).tolist() == [0, 2]  # max_det
    assert nms(boxes, scores, 0.7, 10).tolist() == [0, 1, 3]  # 0.68 < 0.7: both stay


def test_decode_yolov8_thresholds_scales_and_class_aware_nms() -> None:
    out = yolo_output([
        (0.50, 0.50, 0.20, 0.40, [0.90, 0.00, 0.00]),   # class 0
        (0.51, 0.50, 0.20, 0.40, [0.80, 0.10, 0.00]),   # class 0, overlaps → suppressed
        (0.50, 0.50, 0.20, 0.40, [0.00, 0.70, 0.00]),   # class 1, same place → kept
        (0.10, 0.10, 0.10, 0.10, [0.00, 0.00, 0.20]),   # below threshold
        (0.80, 0.20, 0.10, 0.10, [0.00, 0.00, 0.60]),   # class 2, alone
    ], n_classes=3)
    boxes, scores, cls = decode_yolov8(out, 0.25, 0.45, 100, box_scale=(640.0, 480.0))
    assert cls.tolist() == [0, 1, 2]
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6], rtol=1e-6)
    # cx 0.5·640 = 320, w 0.2·640 = 128; cy 0.5·480 = 240, h 0.4·480 = 192
    np.testing.assert_allclose(boxes[0], [256, 144, 384, 336], atol=1e-3)
    np.testing.assert_allclose(boxes[2], [480, 72, 544, 120], atol=1e-3)
    assert boxes.dtype == np.float32
    assert cls.dtype == np.intp


def test_decode_yolov8_nms_groups_merge_classes() -> None:
    """Grouping 'dog' and 'bear' as one category leaves one box on one animal."""
    out = yolo_output([
        (0.5, 0.5, 0.2, 0.2, [0.9, 0.0]),
        (0.5, 0.5, 0.2, 0.2, [0.0, 0.7]),
    ], n_classes=2)
    _, _, cls = decode_yolov8(out, 0.25, 0.45, 100)
    assert cls.tolist() == [0, 1]
    _, scores, cls = decode_yolov8(out, 0.25, 0.45, 100, nms_groups=np.array([0, 0]))
    assert cls.tolist() == [0]
    assert scores.tolist() == pytest.approx([0.9])


def test_decode_yolov8_class_subset_ignores_other_classes() -> None:
    """A 'chair' that beats a 'dog' on the same anchor must not hide the dog."""
    out = yolo_output([(0.5, 0.5, 0.2, 0.2, [0.95, 0.60, 0.10])], n_classes=3)
    _, scores, cls = decode_yolov8(out, 0.25, 0.45, 100, classes=np.array([1, 2]))
    assert cls.tolist() == [1]  # ids stay in the model's numbering
    assert scores.tolist() == pytest.approx([0.60])
    empty = decode_yolov8(out, 0.25, 0.45, 100, classes=np.array([], dtype=np.intp))
    assert empty[0].shape == (0, 4)


def test_decode_yolov8_empty_and_max_det_and_2d_input() -> None:
    out = yolo_output([], n_classes=4)
    boxes, scores, cls = decode_yolov8(out, 0.25, 0.45, 100)
    assert boxes.shape == (0, 4)
    assert scores.shape == (0,)
    assert cls.shape == (0,)
    many = yolo_output([(0.05 + 0.1 * i, 0.5, 0.05, 0.05, [0.5 + 0.01 * i]) for i in range(9)],
                       n_classes=1)
    boxes, scores, _ = decode_yolov8(many[0], 0.25, 0.45, 3)  # [4+C, N] works too
    assert len(boxes) == 3
    np.testing.assert_allclose(scores, [0.58, 0.57, 0.56], rtol=1e-6)
    _, scores, _ = decode_yolov8(many, 0.25, 0.45, 100, max_candidates=4)
    assert len(scores) == 4
    assert scores.min() == pytest.approx(0.55)


def test_decode_yolov8_on_full_size_head_is_vectorised() -> None:
    """8400 anchors × 80 classes with a few real boxes: the right ones, quickly."""
    rng = np.random.default_rng(1)
    out = np.zeros((1, 84, 8400), np.float32)
    out[0, :4] = rng.uniform(0.1, 0.2, (4, 8400))
    out[0, 4:] = rng.uniform(0.0, 0.2, (80, 8400))  # noise below threshold
    out[0, :4, 1234] = (0.3, 0.3, 0.1, 0.1)
    out[0, 4 + 21, 1234] = 0.8  # a 'bear'
    boxes, _scores, cls = decode_yolov8(out, 0.25, 0.45, 20, box_scale=(640.0, 640.0))
    assert cls.tolist() == [21]
    np.testing.assert_allclose(boxes[0], [160, 160, 224, 224], atol=1e-3)
    cm = yolov8_class_max(out)
    assert cm.shape == (80,)
    assert cm[21] == pytest.approx(0.8)
    sub = yolov8_class_max(out, np.array([21, 0]))
    np.testing.assert_allclose(sub, [cm[21], cm[0]])


def test_decode_classifier_is_a_view_and_softmax_normalises() -> None:
    out = np.array([[0.1, 0.7, 0.2]], np.float32)
    probs = decode_classifier(out)
    assert probs.shape == (3,)
    assert np.shares_memory(probs, out)
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    sm = decode_classifier(logits, softmax=True)
    assert sm.sum() == pytest.approx(1.0)
    assert np.argmax(sm) == 2
    assert sm[2] == pytest.approx(np.exp(3) / np.exp([1, 2, 3]).sum())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 90), st.floats(0, 90), st.floats(1, 30),
                          st.floats(1, 30), st.floats(0.01, 1), st.integers(0, 2)),
                min_size=1, max_size=30),
       st.floats(0.1, 0.9))
def test_nms_invariants(items: list[tuple[float, float, float, float, float, int]],
                        thr: float) -> None:
    """Kept boxes are best-first, and no two of one group overlap above the threshold."""
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _, _ in items], np.float32)
    scores = np.array([s for *_, s, _ in items], np.float32)
    groups = np.array([g for *_, g in items])
    keep = nms(boxes, scores, thr, 100, groups=groups)
    assert len(set(keep.tolist())) == len(keep)
    assert np.all(np.diff(scores[keep]) <= 0)
    for a, i in enumerate(keep):
        for j in keep[a + 1:]:
            if groups[i] == groups[j]:
                assert box_iou(boxes[i], boxes[j:j + 1])[0] <= thr + 1e-6
    # The best box always survives.
    assert scores[keep[0]] == scores.max()
