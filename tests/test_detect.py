"""The detection pipeline on the real models and the 14 real cameratrapai images.

The models are loaded once for the module and every image is analysed once (about 1 s);
the tests then read those results.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ImageError, ModelError
from edge_app.core.events import FrameResult
from edge_app.tools.batch import run_detect
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.preprocess import Letterboxer, crop_box, decode_image
from edge_app.trap.detect.runtime import TfliteModel, resolve_threads

pytestmark = pytest.mark.models

ANIMALS = ["african_elephants.jpg", "african_elephants_bw.jpg", "african_elephants_cmyk.jpg",
           "african_elephants_truncated_file.jpg",
           "african_elephants_with_exif_orientation.jpg", "american_black_bear.jpg",
           "domestic_cattle.jpg", "domestic_dog.jpg"]
BLANKS = ["blank.jpg", "blank2.jpg", "blank3.jpg"]


@pytest.fixture(scope="module")
def pipeline(models_dir: Path) -> Iterator[Pipeline]:
    with Pipeline(DetectorConfig(), models_dir) as p:
        yield p


@pytest.fixture(scope="module")
def results(pipeline: Pipeline, cameratrapai_dir: Path) -> dict[str, FrameResult]:
    return {f.name: pipeline.analyse(f) for f in sorted(cameratrapai_dir.glob("*.jpg"))}


def iou_xywh(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# --------------------------------------------------------------------------- the 14 images


def test_all_fourteen_images_analysed(results: dict[str, FrameResult]) -> None:
    assert len(results) == 14
    for r in results.values():
        assert set(r.timings_ms) == {"decode", "detect", "classify"}
        assert set(r.max_scores) == {"animal", "person", "vehicle", "leopard", "tiger",
                                     "other_big_cat"}
        json.dumps(r.to_json())


@pytest.mark.parametrize("name", BLANKS)
def test_blanks_are_confidently_empty(results: dict[str, FrameResult], name: str) -> None:
    r = results[name]
    assert r.label == "empty"
    assert r.detections == ()
    assert max(r.max_scores.values()) < 0.15, r.max_scores  # policy.empty_below


def test_human_is_a_person(results: dict[str, FrameResult]) -> None:
    r = results["human.jpg"]
    assert r.label == "person"
    assert r.detections[0].cls == "person"
    assert r.score > 0.5


def test_vehicle_is_a_vehicle(results: dict[str, FrameResult]) -> None:
    r = results["vehicle.jpg"]
    assert r.label == "vehicle"
    assert r.detections[0].category == "vehicle"


@pytest.mark.parametrize("name", ANIMALS)
def test_animals_are_animals(results: dict[str, FrameResult], name: str) -> None:
    r = results[name]
    assert r.label == "animal"
    assert r.score >= 0.25
    for d in r.detections:
        assert all(0.0 <= v <= 1.0 for v in d.bbox)
        assert d.bbox[0] + d.bbox[2] <= 1.0 + 1e-6
        assert d.bbox[1] + d.bbox[3] <= 1.0 + 1e-6
    assert r.species is None  # elephants, bear, cattle, dog are no big cats


def test_night_ocelot_is_caught_with_a_species(results: dict[str, FrameResult]) -> None:
    """The detector misses it; the whole-frame classifier pass names a spotted cat, which the
    species rule reports as other_big_cat: no box, no size, never a leopard (issue 13)."""
    r = results["ocelot.jpg"]
    assert r.label == "animal"
    assert r.species == "other_big_cat"
    assert r.score >= DetectorConfig().whole_frame_species_threshold
    (d,) = r.detections
    assert d.bbox == (0.0, 0.0, 1.0, 1.0)
    assert d.species == "other_big_cat"
    assert r.max_scores["leopard"] == pytest.approx(r.score)


def test_elephant_variants_agree_with_the_original(results: dict[str, FrameResult]) -> None:
    """bw / CMYK / truncated / EXIF-rotated give the same elephants, in the upright frame."""
    ref = results["african_elephants.jpg"].detections[0].bbox
    for name in ANIMALS[1:5]:
        best = max(iou_xywh(ref, d.bbox) for d in results[name].detections)
        assert best > 0.8, name


def test_exif_rotated_image_is_decoded_upright(cameratrapai_dir: Path) -> None:
    stored = Image.open(cameratrapai_dir / "african_elephants_with_exif_orientation.jpg")
    assert stored.size == (1536, 2048)  # portrait on disk, orientation 6
    d = decode_image(cameratrapai_dir / "african_elephants_with_exif_orientation.jpg",
                     (640, 640))
    assert d.original_size == (2048, 1536)
    assert d.size == (768, 576)  # upright, decoded at 3/8 scale by libjpeg-turbo
    assert not d.truncated


def test_odd_files_decode(cameratrapai_dir: Path) -> None:
    bw = decode_image(cameratrapai_dir / "african_elephants_bw.jpg", (640, 640))
    cmyk = decode_image(cameratrapai_dir / "african_elephants_cmyk.jpg", (640, 640))
    cut = decode_image(cameratrapai_dir / "african_elephants_truncated_file.jpg", (640, 640))
    assert bw.source_mode == "L"
    assert cmyk.source_mode == "CMYK"
    assert {bw.image.mode, cmyk.image.mode, cut.image.mode} <= {"RGB", "RGBX"}
    assert cut.truncated
    # libjpeg fills the missing bottom rows with mid-grey; the top is real picture.
    pixels = rgb_of(cut.image)
    assert pixels[-4:].std() < 1.0
    assert pixels[:4].std() > 5.0
    # CMYK comes out with the same colours as the RGB original (Adobe inversion undone).
    rgb = rgb_of(decode_image(cameratrapai_dir / "african_elephants.jpg", (640, 640)).image)
    assert np.abs(rgb_of(cmyk.image).astype(int) - rgb).mean() < 10
    # Greyscale really is grey in all three channels.
    g = rgb_of(bw.image).astype(int)
    assert np.array_equal(g[..., 0], g[..., 1])
    assert np.array_equal(g[..., 1], g[..., 2])


def rgb_of(image: Image.Image) -> np.ndarray:
    """The RGB pixels of an RGB or RGBX image."""
    return np.asarray(image)[..., :3]


def test_draft_decodes_just_enough(cameratrapai_dir: Path) -> None:
    full = decode_image(cameratrapai_dir / "blank2.jpg")
    small = decode_image(cameratrapai_dir / "blank2.jpg", (640, 640))
    assert full.size == (3264, 2448)
    assert small.size == (816, 612)  # 1/4: the smallest DCT scale still ≥ 640 wide
    assert small.original_size == (3264, 2448)


def test_bytes_and_path_give_the_same_result(pipeline: Pipeline, cameratrapai_dir: Path,
                                             results: dict[str, FrameResult]) -> None:
    r = pipeline.analyse((cameratrapai_dir / "human.jpg").read_bytes())
    assert r.detections == results["human.jpg"].detections


@pytest.mark.parametrize("data", [b"", b"not an image at all", os.urandom(4096),
                                  b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_garbage_is_an_image_error(pipeline: Pipeline, data: bytes) -> None:
    with pytest.raises(ImageError):
        pipeline.analyse(data)


def test_missing_file_is_an_image_error(pipeline: Pipeline, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.jpg"):
        pipeline.analyse(tmp_path / "nope.jpg")


def test_png_in_awkward_modes(pipeline: Pipeline, cameratrapai_dir: Path) -> None:
    """PNG inputs (by hand, via ``camtrap detect``) in awkward modes still work."""
    im = Image.open(cameratrapai_dir / "human.jpg")
    im.draft("RGB", (768, 432))
    for mode in ("P", "I;16", "LA", "RGBA"):
        buf = io.BytesIO()
        conv = im.convert("L").convert(mode) if mode == "I;16" else im.convert(mode)
        conv.save(buf, "PNG")
        assert pipeline.analyse(buf.getvalue()).label == "person", mode


def test_truncated_png_is_an_image_error(pipeline: Pipeline, cameratrapai_dir: Path) -> None:
    """Only JPEG gets the decode-what-is-there treatment (see preprocess's docstring)."""
    im = Image.open(cameratrapai_dir / "vehicle.jpg")
    im.draft("RGB", (512, 384))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    with pytest.raises(ImageError, match="truncated"):
        pipeline.analyse(buf.getvalue()[: len(buf.getvalue()) // 2])


# --------------------------------------------------------------------------- preprocessing


def test_letterbox_geometry_maps_boxes_back() -> None:
    lb = Letterboxer(640, 640)
    geom = lb(Image.new("RGB", (1000, 500), (255, 0, 0)))
    assert (geom.pad_x, geom.pad_y) == (0, 160)
    assert lb.buffer[0, 0].tolist() == [114, 114, 114]
    assert lb.buffer[320, 320].tolist() == [255, 0, 0]
    # The whole picture area in input pixels is the whole image, normalised.
    back = geom.to_normalised(np.array([[0, 160, 640, 480]], np.float32))
    np.testing.assert_allclose(back[0], [0, 0, 1, 1], atol=1e-6)
    # A box reaching into the padding is clipped to the picture.
    back = geom.to_normalised(np.array([[320, 100, 960, 400]], np.float32))
    np.testing.assert_allclose(back[0], [0.5, 0.0, 0.5, 0.75], atol=1e-6)
    # A taller image next: the old padding must not leak into the picture.
    lb(Image.new("RGB", (500, 1000), (0, 255, 0)))
    assert lb.buffer[320, 0].tolist() == [114, 114, 114]
    assert lb.buffer[0, 320].tolist() == [0, 255, 0]


def test_crop_box_is_square_with_context_and_stays_inside() -> None:
    left, top, right, bottom = crop_box((1000, 800), (0.4, 0.4, 0.1, 0.05), 0.25)
    assert right - left == pytest.approx(150)  # 100 px box side × 1.5
    assert bottom - top == pytest.approx(150)
    assert (left + right) / 2 == pytest.approx(450)
    left, top, right, bottom = crop_box((1000, 800), (0.95, 0.9, 0.05, 0.1), 0.5)
    assert right <= 1000
    assert bottom <= 800
    assert bottom - top == pytest.approx(160)  # shifted inside, not shrunk


# --------------------------------------------------------------------------- runtime


def test_runtime_reads_quantisation_from_the_model(models_dir: Path) -> None:
    m = TfliteModel(models_dir / "yolov8n_coco_int8_640.tflite", 1)
    assert m.input.dtype == np.int8
    assert m.input.scale == pytest.approx(1 / 255)
    assert m.input.zero_point == -128
    assert m.input_size == (640, 640)
    f = TfliteModel(models_dir / "yolov8n_coco_int8io_float_320.tflite", 1)
    assert f.input.dtype == np.float32
    assert not f.input.quantised
    assert resolve_threads(0) == os.cpu_count()
    assert m.num_threads == 1


@pytest.mark.parametrize(("model", "value_range", "path"), [
    ("yolov8n_coco_int8_640", (0.0, 1.0), "int8: p - 128"),
    ("mobilenet_v2_imagenet_uint8_224", (-1.0, 1.0), "uint8: identity"),
    ("yolov8n_coco_int8io_float_320", (0.0, 1.0), "float32: p / 255"),
    ("yolov8n_coco_int8_640", (0.0, 0.5), "general table"),
])
def test_set_image_writes_the_table(models_dir: Path, model: str,
                                    value_range: tuple[float, float], path: str) -> None:
    """Every write path (affine fast paths and the blocked table) equals lut[pixel]."""
    m = TfliteModel(models_dir / f"{model}.tflite", 1, value_range)
    w, h = m.input_size
    x = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for bgr in (False, True):
        m.set_image(x, bgr=bgr)
        src = x[..., ::-1] if bgr else x
        np.testing.assert_allclose(m.read_input()[0], m.lut[src], rtol=1e-6, err_msg=path)
    if path.startswith("int8"):
        assert np.array_equal(m.lut.astype(int), np.arange(256) - 128)
    if path.startswith("uint8"):
        assert np.array_equal(m.lut, np.arange(256))


def test_runtime_dequantises_each_output_with_its_own_params(models_dir: Path) -> None:
    """Compare against a bare interpreter, dequantised by hand from its tensor details."""
    from ai_edge_litert.interpreter import Interpreter

    path = models_dir / "mobilenet_v2_imagenet_uint8_224.tflite"
    x = np.random.default_rng(3).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    bare = Interpreter(model_path=str(path), num_threads=1)
    bare.allocate_tensors()
    bare.set_tensor(bare.get_input_details()[0]["index"], x)
    bare.invoke()
    od = bare.get_output_details()[0]
    scale, zp = od["quantization"]
    want = (bare.get_tensor(od["index"]).astype(np.float32) - zp) * scale
    m = TfliteModel(path, 1, (-1.0, 1.0))
    (got,) = m.invoke(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # set_image with value range [-1, 1] and scale 1/127.5, zero point 127 is the identity.
    m.set_image(x[0])
    np.testing.assert_allclose(m.invoke()[0], want, rtol=1e-6)


# --------------------------------------------------------------------------- models dir


def test_pipeline_on_missing_models_dir_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"yolov8n_coco_int8_640\.tflite.*not found"):
        Pipeline(DetectorConfig(), tmp_path)


# --------------------------------------------------------------------------- batch


def test_run_detect_json_lines(models_dir: Path, cameratrapai_dir: Path,
                               tmp_path: Path) -> None:
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(os.urandom(2048))
    out = io.StringIO()
    rc = run_detect([str(cameratrapai_dir / "ocelot.jpg"), str(cameratrapai_dir / "blank.jpg"),
                     str(bad), str(tmp_path / "missing.jpg")],
                    models_dir, DetectorConfig(), True, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rc == 1
    assert [x["file"] for x in lines] == ["ocelot.jpg", "blank.jpg", "garbage.jpg",
                                          "missing.jpg"]
    ocelot, blank, garbage, missing = lines
    assert list(ocelot) == ["file", "label", "species", "score", "detections", "timings_ms"]
    assert (ocelot["label"], ocelot["species"]) == ("animal", "other_big_cat")
    assert set(ocelot["detections"][0]) == {"category", "conf", "bbox", "class", "species",
                                            "species_conf"}
    assert (blank["label"], blank["species"], blank["detections"]) == ("empty", None, [])
    assert set(garbage) == {"file", "error"}
    assert "missing.jpg" in missing["error"]


def test_run_detect_folder_and_text(models_dir: Path, cameratrapai_dir: Path,
                                    tmp_path: Path) -> None:
    sub = tmp_path / "site" / "cam1"
    sub.mkdir(parents=True)
    (sub / "B.JPG").write_bytes((cameratrapai_dir / "human.jpg").read_bytes())
    (tmp_path / "site" / "a.jpeg").write_bytes((cameratrapai_dir / "vehicle.jpg").read_bytes())
    (tmp_path / "site" / "notes.txt").write_text("not an image")
    out = io.StringIO()
    rc = run_detect([str(tmp_path / "site")], models_dir, DetectorConfig(), False, out)
    lines = out.getvalue().splitlines()
    assert rc == 0
    assert len(lines) == 2
    assert lines[0].startswith("a.jpeg: vehicle")
    assert lines[1].startswith("cam1/B.JPG: person")
