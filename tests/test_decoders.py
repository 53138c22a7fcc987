"""Decoders on hand-built tensors whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_app.trap.detect.decoders import (
    box_iou,
    decode_classifier,
    decode_embedding,
    decode_ssd_raw,
    decode_tflite_postprocess,
    decode_yolov5,
    decode_yolov8,
    decode_yolov10,
    dequantise,
    nms,
    raw_threshold,
    ssd_decode_boxes,
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


# --------------------------------------------------------------------------- quantised heads


def quantise(x: np.ndarray, scale: float, zp: int, dtype: type) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)


@pytest.mark.parametrize(("dtype", "scale", "zp"), [(np.int8, 1 / 255, -128),
                                                    (np.uint8, 1 / 256, 0),
                                                    (np.int8, 0.0042, -3)])
def test_raw_threshold_agrees_with_float_comparison(dtype: type, scale: float, zp: int) -> None:
    info = np.iinfo(dtype)
    q = np.arange(info.min, info.max + 1).astype(dtype)
    real = dequantise(q, (scale, zp))
    for thr in (-1.0, 0.0, 0.1, 0.25, scale * 37, 0.5, 0.999, 2.0):
        r = raw_threshold(thr, (scale, zp), np.dtype(dtype))
        got = np.ones(q.size, bool) if r is None else q > r
        np.testing.assert_array_equal(got, real > thr, err_msg=f"thr {thr}")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 0.9))
def test_decode_yolov8_int8_equals_decoding_the_dequantised_float(seed: int,
                                                                   thr: float) -> None:
    """Deciding in the integer domain gives exactly what dequantise-then-decode gives."""
    rng = np.random.default_rng(seed)
    scale, zp = 1 / 255, -128
    q = rng.integers(-128, 128, (1, 4 + 6, 300), dtype=np.int8)
    real = dequantise(q, (scale, zp))
    classes = np.array([0, 2, 5])
    a = decode_yolov8(q, thr, 0.5, 50, classes=classes, box_scale=(640.0, 640.0),
                      quant=(scale, zp))
    b = decode_yolov8(real, thr, 0.5, 50, classes=classes, box_scale=(640.0, 640.0))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(yolov8_class_max(q, classes, (scale, zp)),
                                  yolov8_class_max(real, classes))


def test_decode_yolov8_per_class_thresholds() -> None:
    out = yolo_output([(0.2, 0.2, 0.1, 0.1, [0.30, 0.0]),   # class 0 at 0.30
                       (0.7, 0.7, 0.1, 0.1, [0.0, 0.30])],  # class 1 at 0.30
                      n_classes=2)
    thr = np.array([0.25, 0.40], np.float32)  # class 1 (say "person") is stricter
    _, scores, cls = decode_yolov8(out, 0.25, 0.45, 10, class_thresholds=thr)
    assert cls.tolist() == [0]
    assert scores.tolist() == pytest.approx([0.30])


# --------------------------------------------------------------------------- yolov5


def yolov5_output(rows: list[tuple[float, float, float, float, float, list[float]]],
                  n_classes: int, n_anchors: int = 40) -> np.ndarray:
    """[1, N, 5+C]: listed rows (cx, cy, w, h, objectness, class scores), zero padding."""
    out = np.zeros((1, n_anchors, 5 + n_classes), np.float32)
    for i, (cx, cy, w, h, obj, cls) in enumerate(rows):
        out[0, i, :5] = (cx, cy, w, h, obj)
        out[0, i, 5:] = cls
    return out


def test_decode_yolov5_multiplies_objectness_and_class() -> None:
    out = yolov5_output([
        (0.5, 0.5, 0.2, 0.4, 0.9, [0.9, 0.1, 0.0]),   # 0.81 class 0
        (0.5, 0.5, 0.2, 0.4, 0.9, [0.2, 0.0, 0.0]),   # 0.18: below 0.25
        (0.1, 0.1, 0.1, 0.1, 0.2, [0.0, 0.0, 1.0]),   # objectness 0.2 < 0.25: never a box
        (0.8, 0.2, 0.1, 0.1, 0.6, [0.0, 0.0, 0.7]),   # 0.42 class 2
    ], n_classes=3)
    d = decode_yolov5(out, 0.25, 0.45, 10, classes=np.array([0, 1, 2]),
                      box_scale=(640.0, 480.0))
    assert d.class_ids.tolist() == [0, 2]
    np.testing.assert_allclose(d.scores, [0.81, 0.42], rtol=1e-6)
    np.testing.assert_allclose(d.boxes[0], [256, 144, 384, 336], atol=1e-3)
    # The policy's raw maxima see every anchor, the low-objectness one too.
    np.testing.assert_allclose(d.class_max, [0.81, 0.09, 0.42], rtol=1e-6)


def test_decode_yolov5_quantised_and_class_subset() -> None:
    real = yolov5_output([(0.5, 0.5, 0.2, 0.2, 0.8, [0.9, 0.8])], n_classes=2)
    scale, zp = 1 / 255, 0
    q = quantise(real, scale, zp, np.uint8)
    d = decode_yolov5(q, 0.25, 0.45, 10, classes=np.array([1]), quant=(scale, zp))
    assert d.class_ids.tolist() == [1]  # class 0 is not mapped: cannot win
    assert d.scores[0] == pytest.approx(0.8 * 0.8, abs=0.01)
    assert d.class_max[0] == 0.0


# --------------------------------------------------------------------------- yolov10


def test_decode_yolov10_nms_free_rows() -> None:
    out = np.zeros((1, 300, 6), np.float32)
    out[0, 0] = (0.1, 0.1, 0.3, 0.5, 0.9, 16)    # dog
    out[0, 1] = (0.1, 0.1, 0.3, 0.5, 0.6, 21)    # bear on the same animal
    out[0, 2] = (0.6, 0.6, 0.8, 0.9, 0.7, 0)     # person
    out[0, 3] = (0.0, 0.0, 1.0, 1.0, 0.95, 56)   # chair: not mapped
    out[0, 4] = (0.5, 0.5, 0.6, 0.6, 0.1, 0)     # below threshold
    groups = np.full(80, -1)
    groups[[16, 21]] = 0
    groups[0] = 1
    mapped = np.array([0, 16, 21])
    d = decode_yolov10(out, 0.25, 0.45, 10, classes=mapped, n_classes=80, nms_groups=groups,
                       box_scale=(640.0, 640.0))
    assert d.class_ids.tolist() == [16, 0]  # bear merged into the dog's box (same category)
    np.testing.assert_allclose(d.boxes[0], [64, 64, 192, 320], atol=1e-3)
    assert d.class_max[0] == pytest.approx(0.7)  # the 0.1 person row does not lower it
    assert d.class_max[21] == pytest.approx(0.6)
    assert d.class_max[56] == 0.0
    untouched = decode_yolov10(out, 0.25, 0.45, 10, classes=mapped, n_classes=80)
    assert sorted(untouched.class_ids.tolist()) == [0, 16, 21]


# --------------------------------------------------------------------------- SSD


def test_ssd_corner_encoding_known_answer() -> None:
    anchors = np.array([[0.2, 0.2, 0.4, 0.6]], np.float32)  # w 0.2, h 0.4
    enc = np.array([[0.5, -0.25, 1.0, 0.0]], np.float32)
    got = ssd_decode_boxes(enc, anchors, "corners")
    np.testing.assert_allclose(got, [[0.2 + 0.1, 0.2 - 0.1, 0.4 + 0.2, 0.6]], atol=1e-6)


def test_ssd_centre_size_encoding_known_answer_both_orders() -> None:
    # anchor centre (0.5, 0.4), size (0.2, 0.1); box centre moved by +0.02 in x, size ×e^0.2
    enc_xy = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)  # tx·0.1·0.2 = 0.02; tw·0.2 = 0.2
    anc_xy = np.array([[0.5, 0.4, 0.2, 0.1]], np.float32)
    w = 0.2 * np.exp(0.2)
    want = [[0.52 - w / 2, 0.35, 0.52 + w / 2, 0.45]]
    np.testing.assert_allclose(ssd_decode_boxes(enc_xy, anc_xy, "centre_size"), want,
                               atol=1e-6)
    # TF OD API order: (y, x, h, w) for both
    enc_yx = enc_xy[:, [1, 0, 3, 2]]
    anc_yx = anc_xy[:, [1, 0, 3, 2]]
    np.testing.assert_allclose(ssd_decode_boxes(enc_yx, anc_yx, "centre_size", order="yx"),
                               want, atol=1e-6)
    with pytest.raises(ValueError, match="encoding"):
        ssd_decode_boxes(enc_xy, anc_xy, "diagonal")


def ssd_tensors(n: int = 20, c: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.zeros((1, n, c), np.float32)
    scores[0, :, 0] = 1.0  # background everywhere
    enc = np.zeros((1, n, 4), np.float32)
    anchors = np.tile(np.array([0.0, 0.0, 0.1, 0.1], np.float32), (1, n, 1))
    return scores, enc, anchors


def test_decode_ssd_raw_background_is_never_a_box() -> None:
    scores, enc, anchors = ssd_tensors()
    scores[0, 3] = (0.2, 0.7, 0.1, 0.0)                     # class 1 at 0.7
    anchors[0, 3] = (0.5, 0.5, 0.7, 0.9)
    enc[0, 3] = (0.0, 0.0, 0.5, 0.0)                        # x_max grows by half the width
    scores[0, 7] = (0.6, 0.0, 0.0, 0.4)                     # class 3 at 0.4
    anchors[0, 7] = (0.0, 0.0, 0.2, 0.2)
    d = decode_ssd_raw(scores, enc, anchors, 0.25, 0.45, 10, classes=np.array([1, 2, 3]),
                       encoding="corners", box_scale=(100.0, 200.0))
    assert d.class_ids.tolist() == [1, 3]
    np.testing.assert_allclose(d.scores, [0.7, 0.4], rtol=1e-6)
    np.testing.assert_allclose(d.boxes[0], [50, 100, 80, 180], atol=1e-4)
    assert d.class_max[0] == 0.0  # background is not asked about
    np.testing.assert_allclose(d.class_max[1:], [0.7, 0.1, 0.4], rtol=1e-6)


def test_decode_ssd_raw_sigmoid_logits_threshold_in_logit_domain() -> None:
    scores, enc, anchors = ssd_tensors(c=2)
    scores[0, :, :] = -10.0  # logits: nothing
    scores[0, 5, 1] = np.log(0.3 / 0.7)  # sigmoid → 0.3
    scores[0, 6, 1] = np.log(0.2 / 0.8)  # sigmoid → 0.2
    anchors[0, 6] = (0.5, 0.5, 0.6, 0.6)
    d = decode_ssd_raw(scores, enc, anchors, 0.25, 0.45, 10, classes=np.array([1]),
                       encoding="corners", activation="sigmoid")
    assert d.scores.tolist() == pytest.approx([0.3], abs=1e-6)
    assert d.class_max[1] == pytest.approx(0.3, abs=1e-6)


# --------------------------------------------------------------------------- postprocess op


def test_decode_tflite_postprocess_count_offset_and_axes() -> None:
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, 0] = (0.1, 0.2, 0.5, 0.6)  # y_min, x_min, y_max, x_max
    boxes[0, 1] = (0.0, 0.0, 1.0, 1.0)
    boxes[0, 2] = (0.3, 0.3, 0.4, 0.4)  # beyond count: padding, must be ignored
    classes = np.array([[0, 17, 0] + [0] * 7], np.float32)  # person, (chair-ish) 17
    scores = np.array([[0.8, 0.9, 0.99] + [0] * 7], np.float32)
    count = np.array([2], np.float32)
    # labels start with "background": model class 0 is label 1
    d = decode_tflite_postprocess(boxes, classes, scores, count, 0.25, 0.45, 10,
                                  classes=np.array([1]), n_classes=91, label_offset=1,
                                  box_scale=(200.0, 100.0))
    assert d.class_ids.tolist() == [1]
    np.testing.assert_allclose(d.boxes[0], [40, 10, 120, 50], atol=1e-4)
    assert d.scores.tolist() == pytest.approx([0.8])
    assert d.class_max[1] == pytest.approx(0.8)  # the padded 0.99 row is not counted
    assert d.class_max[18] == 0.0


def test_decode_embedding_is_unit_length() -> None:
    q = np.array([[[[3, 4, 0]]]], np.uint8)
    v = decode_embedding(q, (0.5, 0))
    np.testing.assert_allclose(v, [0.6, 0.8, 0.0], rtol=1e-6)
