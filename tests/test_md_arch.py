"""MegaDetector architectures as real int8 TFLite files, through camtrap's own doors.

``tests/data/md_arch`` holds three detectors made by ``models/mdexport`` (issue 13 item 3):
MegaDetector v5's network (the original YOLOv5 P6, anchor head with objectness, format
``yolov5``) and MegaDetector v6's two (YOLOv9, anchor-free ``yolov8`` format; YOLOv10,
NMS-free ``yolov10`` format), at the smallest scale of each family and a 320 input, with
seeded random weights, full-integer quantised on the field frames. Their boxes mean nothing;
what is checked is everything a real MegaDetector file goes through: the card, the signed
pack and its install, ``camtrap models verify``, the runtime's int8 input, the raw output
against the float network's output on the same input (stored by the export as
``<name>_ref.npz``, so this test needs neither torch nor TensorFlow), the decoders, and the
whole pipeline as ``camtrap detect`` runs it.

The inputs are two synthetic 320×320 PNGs the export drew from a fixed seed (not field
frames): at the model's own size the letterbox is the identity, so camtrap's preprocessing
feeds the network exactly the pixels the float reference saw.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from edge_app.cli import main as camtrap
from edge_app.core.config import DetectorConfig
from edge_app.tools import pack_build
from edge_app.tools.batch import run_detect
from edge_app.trap.detect import decoders
from edge_app.trap.detect.heads import load_detector
from edge_app.trap.detect.loader import LoadedModel
from edge_app.trap.packs import install as packs
from edge_app.trap.packs.manifest import decode_public_key

DATA = Path(__file__).resolve().parent / "data" / "md_arch"
MODELS = {
    # card name: (output format, output shape)
    "mdarch_yolov5n6_int8_320": ("yolov5", (1, 6375, 8)),
    "mdarch_yolov9t_int8_320": ("yolov8", (1, 7, 2100)),
    "mdarch_yolov10n_int8_320": ("yolov10", (1, 300, 6)),
}
INPUTS = ("synthetic_320_0", "synthetic_320_1")
SIZE = 320

# Tolerances of the int8 file against the float network, in steps of the output's own
# quantisation scale (one step = the smallest difference the int8 output can express).
# Rounding alone gives 0.5 step at the output; each of the ~100-250 int8 layers before it adds
# its own rounding, which the network passes on, so the bound is a few steps on most values
# and a wider tail. Measured on these files (models/README.md, "MegaDetector"), with margin:
MEAN_STEPS = 2.0
P99_STEPS = 10.0
MIN_CORRELATION = 0.99
# Rounding errors have no direction, so the int8 output is neither scaled nor shifted against
# the float one: measured gain 0.995-1.002 and mean signed error within 0.23 step. A wrong
# output scale of 1.5 % or a zero point off by one would break these (the bounds above let
# a gain error of several per cent through on tensors whose values are mostly near 0).
MAX_GAIN_ERROR = 0.015
MAX_BIAS_STEPS = 0.5


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A unit's models folder with the three detectors installed as one signed pack.

    The way a user with real MegaDetector weights installs them (models/README.md): keygen,
    ``models pack`` with the export's cards and two sample frames, ``models install``.
    """
    d = tmp_path_factory.mktemp("md_arch")
    priv, pub = pack_build.keygen(d / "fleet.key")
    samples = d / "samples"
    samples.mkdir()
    for name in INPUTS:
        shutil.copyfile(DATA / f"{name}.png", samples / f"{name}.png")
    pack = d / "md.pack"
    manifest = pack_build.build(priv, DATA, [str(DATA / f"{n}.toml") for n in MODELS], pack,
                                version="md-arch-1", samples=samples)
    assert manifest["detector"] == next(iter(MODELS))
    assert len(manifest["record"]) == len(INPUTS)
    root = d / "models"
    root.mkdir()
    packs.install(pack, root, decode_public_key(pub.read_text().strip()))
    return root


@pytest.fixture(scope="module", params=list(MODELS))
def loaded(request: pytest.FixtureRequest, unit: Path) -> Any:
    m, head = load_detector(request.param, unit, 1)
    yield m, head
    m.model.close()


def _pixels(name: str) -> NDArray[np.uint8]:
    with Image.open(DATA / f"{name}.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _reference(m: LoadedModel, name: str) -> NDArray[np.float32]:
    with np.load(DATA / f"{m.card.name}_ref.npz") as ref:
        return np.asarray(ref[name], dtype=np.float32)


def _run(m: LoadedModel, name: str) -> NDArray[Any]:
    """The raw int8 output for one input, fed through the runtime's own image writer."""
    m.model.set_image(_pixels(name))
    return np.array(m.model.invoke_raw()[0])


def _real(m: LoadedModel, raw: NDArray[Any], ref: NDArray[np.float32]) -> NDArray[np.float32]:
    """The dequantised int8 output, in the reference's row order.

    A YOLOv10 output is the top 300 rows by score, sorted: rows of nearly equal score may come
    out in another order (or one swapped for another at the 300th place) for a rounding's
    difference. So each reference row is paired with the int8 row of the same class that is
    nearest to it; the other formats are compared element by element as they are.
    """
    t = m.model.outputs[0]
    real = decoders.dequantise(raw, (t.scale, t.zero_point))
    if m.card.output.format != "yolov10":
        return real
    rows, refs = real[0], ref[0]
    dist = np.abs(refs[:, None, :5] - rows[None, :, :5]).max(axis=2)
    dist[np.rint(refs[:, None, 5]) != np.rint(rows[None, :, 5])] = np.inf
    return rows[np.argmin(dist, axis=1)][None]


def _steps(m: LoadedModel, raw: NDArray[Any], ref: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.abs(_real(m, raw, ref) - ref) / np.float32(m.model.outputs[0].scale)


def test_models_verify_passes_on_the_installed_pack(
        unit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = camtrap(["models", "verify", str(unit), "--json", *(
        arg for n in MODELS for arg in ("--card", n))])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    status = {r["card"]: r["status"] for r in rows}
    assert rc == 0
    assert all(status[n] == "ok" for n in MODELS), status


def test_card_input_and_output_are_the_formats_camtrap_decodes(loaded: Any) -> None:
    m, _ = loaded
    fmt, shape = MODELS[m.card.name]
    assert m.card.output.format == fmt
    assert m.labels == ("animal", "person", "vehicle")
    inp, out = m.model.input, m.model.outputs
    assert (inp.shape, inp.dtype) == ((1, SIZE, SIZE, 3), np.dtype(np.int8))
    # Scale 1/255 and zero point -128: a pixel p is the int8 value p - 128, exactly.
    assert inp.zero_point == -128
    assert abs(inp.scale * 255 - 1) < 1e-6
    assert len(out) == 1
    assert (out[0].shape, out[0].dtype) == (shape, np.dtype(np.int8))


@pytest.mark.parametrize("name", INPUTS)
def test_int8_output_matches_the_float_network_within_quantisation_error(
        loaded: Any, name: str) -> None:
    m, _ = loaded
    pixels = _pixels(name)
    raw = _run(m, name)
    assert np.array_equal(m.model.read_input()[0], pixels.astype(np.int16) - 128)
    ref = _reference(m, name)
    assert raw.shape == ref.shape
    steps = _steps(m, raw, ref)
    real = _real(m, raw, ref)
    corr = float(np.corrcoef(real.ravel(), ref.ravel())[0, 1])
    assert float(steps.mean()) <= MEAN_STEPS, steps.mean()
    assert float(np.percentile(steps, 99)) <= P99_STEPS, np.percentile(steps, 99)
    assert corr >= MIN_CORRELATION, corr
    gain = float((real * ref).sum() / (ref * ref).sum())
    assert abs(gain - 1) <= MAX_GAIN_ERROR, gain
    bias = float((real - ref).mean()) / m.model.outputs[0].scale
    assert abs(bias) <= MAX_BIAS_STEPS, bias
    # The comparison tells inputs apart: the other input's reference is far off.
    other = _reference(m, next(n for n in INPUTS if n != name))
    assert float(_steps(m, raw, other).mean()) > 3 * float(steps.mean())


def _decode(m: LoadedModel, out: NDArray[Any], quant: decoders.Quant, conf: float,
            iou: float = 1.0, max_det: int = 300) -> decoders.Decoded:
    """The format's decoder on a raw int8 (``quant``) or float (None) output.

    By default without NMS (IoU 1.0 suppresses nothing) and up to 300 boxes: random weights
    give many boxes of nearly equal score, and NMS would keep a different one of a tied pair
    on each side for a rounding's difference, which says nothing about the decoding.
    """
    classes = m.classes.mapped_classes
    groups = None if iou >= 1.0 else m.classes.category_of
    scale = (float(SIZE), float(SIZE))
    fmt = m.card.output.format
    if fmt == "yolov5":
        return decoders.decode_yolov5(out, conf, iou, max_det, classes=classes,
                                      nms_groups=groups, box_scale=scale, quant=quant)
    if fmt == "yolov10":
        return decoders.decode_yolov10(out, conf, iou, max_det, classes=classes, n_classes=3,
                                       nms_groups=groups, box_scale=scale, quant=quant)
    boxes, scores, ids = decoders.decode_yolov8(out, conf, iou, max_det, classes=classes,
                                                nms_groups=groups, box_scale=scale,
                                                quant=quant)
    return decoders.Decoded(boxes, scores, ids,
                            decoders.yolov8_class_max(out, classes, quant))


# Low on purpose: the point is to compare many decoded candidates, not to find objects.
DECODE_THRESHOLD = 0.1
# Decoded boxes and scores against the float network's, in output steps: a corner is one
# output value (yolov10) or a sum of two (centre ± half size), a YOLOv5 score the product of
# two (objectness × class), so these are a little wider than the raw bounds.
CORNER_MEDIAN, CORNER_P90 = 3.0, 6.0
SCORE_MEDIAN, SCORE_P90 = 3.0, 8.0


def _nearest(f: decoders.Decoded, q: decoders.Decoded, step: float
             ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """For each box of ``f``, the nearest box of ``q`` of the same class (nearest in corners
    and score together: thin random boxes lie close to each other): (corner error, score
    difference) in output steps (``step``: the output's scale; a corner step is
    ``step * SIZE`` input pixels)."""
    corner, score = [], []
    for box, s, cls in zip(f.boxes, f.scores, f.class_ids, strict=True):
        c = np.abs(q.boxes - box).max(axis=1) / (step * SIZE)
        d = np.abs(q.scores - s) / step
        k = int(np.argmin(np.maximum(c, d) + np.where(q.class_ids == cls, 0, np.inf)))
        corner.append(c[k])
        score.append(d[k])
    return np.array(corner), np.array(score)


@pytest.mark.parametrize("name", INPUTS)
def test_decoded_boxes_match_the_float_networks_boxes(loaded: Any, name: str) -> None:
    m, head = loaded
    raw = _run(m, name)
    t = m.model.outputs[0]
    step = float(t.scale)
    q = _decode(m, raw, (t.scale, t.zero_point), DECODE_THRESHOLD)
    f = _decode(m, _reference(m, name), None, DECODE_THRESHOLD)
    # Only float boxes clear of the threshold must have a partner (one near it may fall
    # either side of it).
    sure = f.scores > DECODE_THRESHOLD + SCORE_P90 * step
    assert sure.sum() >= 20, "the reference has too few boxes to compare"
    f = decoders.Decoded(f.boxes[sure], f.scores[sure], f.class_ids[sure], f.class_max)
    corner, score = _nearest(f, q, step)
    assert np.median(corner) <= CORNER_MEDIAN, np.percentile(corner, [50, 90, 100])
    assert np.percentile(corner, 90) <= CORNER_P90, np.percentile(corner, [50, 90, 100])
    assert np.median(score) <= SCORE_MEDIAN, np.percentile(score, [50, 90, 100])
    assert np.percentile(score, 90) <= SCORE_P90, np.percentile(score, [50, 90, 100])
    mapped = m.classes.mapped_classes
    assert np.abs(q.class_max[mapped] - f.class_max[mapped]).max() <= SCORE_P90 * step
    # The pipeline's own head (what camtrap detect runs) decodes the int8 tensor exactly as
    # the decoder called with its quantisation does.
    thr = np.full(len(m.labels), DECODE_THRESHOLD, np.float32)
    via_head = head.decode([raw], m, DECODE_THRESHOLD, 0.45, 20, thr)
    direct = _decode(m, raw, (t.scale, t.zero_point), DECODE_THRESHOLD, 0.45, 20)
    np.testing.assert_allclose(via_head.boxes, direct.boxes, atol=1e-3)
    np.testing.assert_array_equal(via_head.class_ids, direct.class_ids)


def _check_reported(rows: list[dict[str, Any]], card: str, unit: Path, floor: float) -> int:
    """Every box ``camtrap detect --json`` reported for ``card`` is one of the float
    network's boxes above ``floor`` (class, corners and score); returns how many there were."""
    assert [Path(r["file"]).stem for r in rows] == list(INPUTS)
    m, _ = load_detector(card, unit, 1)
    step = float(m.model.outputs[0].scale)
    m.model.close()
    reported = 0
    for row, name in zip(rows, INPUTS, strict=True):
        if not row["detections"]:
            continue
        reported += len(row["detections"])
        f = _decode(m, _reference(m, name), None, floor - SCORE_P90 * step)
        f = decoders.Decoded(np.clip(f.boxes, 0, SIZE), f.scores, f.class_ids, f.class_max)
        got = decoders.Decoded(
            np.array([[x, y, x + w, y + h] for x, y, w, h in
                      (d["bbox"] for d in row["detections"])], np.float32) * SIZE,
            np.array([d["conf"] for d in row["detections"]], np.float32),
            np.array([m.labels.index(d["class"]) for d in row["detections"]]),
            f.class_max)
        corner, score = _nearest(got, f, step)
        assert np.percentile(corner, 90) <= CORNER_P90, (card, name, corner)
        assert np.percentile(score, 90) <= SCORE_P90, (card, name, score)
    return reported


def test_camtrap_detect_reports_the_float_networks_boxes(unit: Path) -> None:
    """``camtrap detect --json`` (its function, with the detector chosen in the config): every
    image has boxes at a low threshold, and each is one of the float network's."""
    for card in MODELS:
        out = io.StringIO()
        cfg = DetectorConfig(detector=card, classifier="", score_threshold=DECODE_THRESHOLD)
        paths = [str(DATA / f"{n}.png") for n in INPUTS]
        assert run_detect(paths, unit, cfg, True, out) == 0
        rows = [json.loads(line) for line in out.getvalue().splitlines()]
        assert all(r["detections"] for r in rows), card
        _check_reported(rows, card, unit, DECODE_THRESHOLD)


def test_the_camtrap_detect_command_runs_each_card(
        unit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command itself, the detector chosen with ``--detector``: one JSON line per image,
    and every box it reports at the default thresholds is one of the float network's."""
    from edge_app.cli import main

    reported = 0
    for card in MODELS:
        paths = [str(DATA / f"{n}.png") for n in INPUTS]
        assert main(["detect", "--models", str(unit), "--detector", card, "--classifier", "",
                     "--json", *paths]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        reported += _check_reported(rows, card, unit, DECODE_THRESHOLD)
    assert reported > 0  # the comparison above ran on something
