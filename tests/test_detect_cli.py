"""The detection commands end to end through ``camtrap``: detect --md-json and its progress
bar, eval, models ls/verify, bench detect and bench motion."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from edge_app import cli
from edge_app.core.config import DetectorConfig
from edge_app.tools.batch import run_detect
from edge_app.tools.bench_detect import bench_detector, bench_images, detector_cards
from edge_app.tools.bench_motion import group_bursts, measure
from edge_app.tools.evaluate import Truth, label_from_name, read_labels
from edge_app.trap.detect.cards import REPO_MODELS

pytestmark = pytest.mark.models


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- detect


def test_md_json_is_megadetector_1_6(models_dir: Path, cameratrapai_dir: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    (site / "cam1").mkdir(parents=True)
    for name in ("ocelot.jpg", "blank.jpg", "human.jpg", "african_elephants.jpg"):
        shutil.copy(cameratrapai_dir / name, site / "cam1" / name)
    (site / "broken.jpg").write_bytes(os.urandom(1000))
    out = tmp_path / "md.json"
    rc, stdout, _ = run_cli(capsys, "detect", str(site), "--models", str(models_dir),
                            "--json", "--md-json", str(out))
    assert rc == 1  # one unreadable image
    assert len(stdout.splitlines()) == 5
    doc = json.loads(out.read_text())
    assert doc["info"]["format_version"] == "1.6"
    assert doc["info"]["detector"] == "yolov8n_coco_int8_640.tflite"
    assert doc["detection_categories"] == {"1": "animal", "2": "person", "3": "vehicle"}
    assert set(doc["classification_categories"].values()) == {"leopard", "tiger",
                                                              "other_big_cat"}
    images = {i["file"]: i for i in doc["images"]}
    assert set(images) == {"broken.jpg", "cam1/ocelot.jpg", "cam1/blank.jpg",
                           "cam1/human.jpg", "cam1/african_elephants.jpg"}
    assert images["broken.jpg"]["detections"] is None
    assert images["broken.jpg"]["failure"]
    assert images["cam1/blank.jpg"]["detections"] == []  # [] when nothing was detected
    (person,) = images["cam1/human.jpg"]["detections"]
    assert person["category"] == "2"
    (cat,) = images["cam1/ocelot.jpg"]["detections"]
    other = next(k for k, v in doc["classification_categories"].items()
                 if v == "other_big_cat")
    assert cat["classifications"][0][0] == other  # a spotted cat, never a leopard (issue 13)
    for img in doc["images"]:
        for d in img["detections"] or []:
            x, y, w, h = d["bbox"]
            assert all(0 <= v <= 1 for v in (x, y, w, h))
            assert min(w, h) > 0
            assert max(x + w, y + h) <= 1.0001
            assert d["category"] in doc["detection_categories"]
            assert 0 < d["conf"] <= 1
    assert not list(tmp_path.glob(".md.json*"))  # the temporary file is gone


def test_md_json_to_a_missing_folder_is_a_usage_error(
        models_dir: Path, cameratrapai_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "detect", str(cameratrapai_dir / "blank.jpg"), "--models",
                         str(models_dir), "--md-json", str(tmp_path / "no" / "md.json"))
    assert rc == 2
    assert "does not exist" in err


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(models_dir: Path, cameratrapai_dir: Path) -> None:
    files = [str(cameratrapai_dir / n) for n in ("blank.jpg", "human.jpg")]
    out, tty = io.StringIO(), FakeTty()
    assert run_detect(files, models_dir, DetectorConfig(), True, out,
                      progress_stream=tty) == 0
    assert "2/2" in tty.getvalue()
    assert "\r" in tty.getvalue()
    assert all(json.loads(line) for line in out.getvalue().splitlines())  # stdout stays clean
    plain = io.StringIO()
    run_detect(files, models_dir, DetectorConfig(), True, io.StringIO(),
               progress_stream=plain)
    assert plain.getvalue() == ""


# --------------------------------------------------------------------------- eval


@pytest.mark.parametrize(("name", "truth"), [
    ("blank2.jpg", Truth("empty", None)),
    ("human.jpg", Truth("person", None)),
    ("vehicle.jpg", Truth("vehicle", None)),
    ("ocelot.jpg", Truth("animal", "other_big_cat")),
    ("IMAG0046_bobcat.JPG", Truth("animal", "other_big_cat")),
    ("amur_tiger_03.jpg", Truth("animal", "tiger")),
    ("domestic_dog.jpg", Truth("animal", None)),
])
def test_labels_from_file_names(name: str, truth: Truth) -> None:
    assert label_from_name(name) == truth


def test_read_labels_rejects_unknown_labels(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("file,label,species\na.jpg,animal,leopard\nb.jpg,bird,\n")
    with pytest.raises(ValueError, match=r"l\.csv:3: label 'bird'"):
        read_labels(p)
    p.write_text("file,label\na.jpg,animal\n")
    with pytest.raises(ValueError, match="missing column"):
        read_labels(p)


def test_eval_cameratrapai_meets_the_targets(models_dir: Path, cameratrapai_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's targets on the shared images, through the real command."""
    rc, out, _ = run_cli(capsys, "eval", str(cameratrapai_dir), "--models", str(models_dir),
                         "--json")
    assert rc == 0
    s = json.loads(out)
    for key in ("images", "empty_discard_rate", "animal_recall", "person_recall",
                "vehicle_recall", "bigcat_recall", "bigcat_false_alarms", "confusion"):
        assert key in s
    assert s["images"] == 14
    assert s["empty_discard_rate"] == 1.0  # the three blanks are discarded
    assert s["animal_kept_rate"] == 1.0  # every animal kept, the ocelot too
    assert s["confusion"]["empty"]["empty"] == 3
    assert s["person_recall"] == 1.0
    assert s["vehicle_recall"] == 1.0
    assert s["bigcat_false_alarms"] == 0  # no leopard/tiger on elephants, bear, cattle...
    assert s["mistakes"] == []


def test_eval_field_set_figures_add_up(models_dir: Path, field_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "eval", str(field_dir), "--models", str(models_dir),
                         "--json")
    assert rc == 0
    s = json.loads(out)
    truths = read_labels(field_dir / "labels.csv")
    assert s["images"] == len(truths) == 119
    assert sum(sum(row.values()) for row in s["confusion"].values()) == 119
    assert sum(s["outcomes"].values()) == 119
    n_animals = sum(t.label == "animal" for t in truths.values())
    assert sum(s["confusion"]["animal"].values()) == n_animals
    assert s["animal_recall"] == pytest.approx(s["confusion"]["animal"]["animal"] / n_animals,
                                               abs=1e-4)
    assert s["bigcat_images"] == sum(t.species in ("leopard", "tiger")
                                     for t in truths.values())
    assert 0 <= s["bigcat_recall"] <= 1


def test_eval_text_and_bad_labels(models_dir: Path, cameratrapai_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label,species\nblank.jpg,empty,\n")
    rc, _, err = run_cli(capsys, "eval", str(cameratrapai_dir), "--models", str(models_dir),
                         "--labels", str(labels))
    assert rc == 2
    assert "no label for 13 image(s)" in err
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(cameratrapai_dir / "human.jpg", one / "human.jpg")
    rc, out, _ = run_cli(capsys, "eval", str(one), "--models", str(models_dir))
    assert rc == 0
    assert "confusion" in out
    assert "person       100.0%" in out


# --------------------------------------------------------------------------- models


def test_models_ls_and_verify(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "models", "ls", "--models", str(models_dir), "--json")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["card"] for r in rows} >= {p.stem for p in REPO_MODELS.glob("*.toml")}
    assert all(r["present"] for r in rows)
    rc, out, _ = run_cli(capsys, "models", "verify", str(models_dir))
    assert rc == 0
    assert "5 model(s) checked" in out
    assert out.count(" OK ") == 5


def test_models_verify_refuses_an_altered_file(models_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = (models_dir / "mobilenet_v2_imagenet_uint8_224.tflite").read_bytes()
    bad = bytearray(good)
    bad[1000] ^= 0xFF
    (tmp_path / "mobilenet_v2_imagenet_uint8_224.tflite").write_bytes(bytes(bad))
    shutil.copy(models_dir / "imagenet_labels.txt", tmp_path)
    rc, out, _ = run_cli(capsys, "models", "verify", str(tmp_path), "--card",
                         "yolov8n_coco_int8_640")
    assert rc == 2
    assert hashlib.sha256(good).hexdigest() in out
    assert hashlib.sha256(bytes(bad)).hexdigest() in out
    assert "MISSING" in out  # the required YOLO card has no file here
    assert "SKIPPED" in out  # the other cards' files are simply not here


def test_models_ls_flags_an_invalid_card(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.toml").write_text("schema = 1\ntask = 'detector'\n")
    (tmp_path / "manifest.json").write_text("{}")  # an unpacked model pack: its cards count
    rc, out, _ = run_cli(capsys, "models", "ls", "--models", str(tmp_path))
    assert rc == 2
    assert "broken" in out
    assert "INVALID" in out


# --------------------------------------------------------------------------- bench


def test_bench_detector_reports_every_key(models_dir: Path, cameratrapai_dir: Path) -> None:
    images = bench_images(cameratrapai_dir, 2048)
    assert len(images) == 13  # every shared image but the 1046-px ocelot
    assert "yolov8n_coco_int8_640" in detector_cards(models_dir)
    r = bench_detector(models_dir, "yolov8n_coco_int8_640", None, images[:2], 1, 0)
    for key in ("model", "images", "invoke_ms_median", "frame_ms_median", "overhead_ratio",
                "load_ms", "stages_ms"):
        assert key in r
    assert set(r["stages_ms"]) == {"decode", "preprocess", "invoke", "postprocess",
                                   "classify"}
    assert r["frames"] == 2
    assert r["threads"] == os.cpu_count()
    assert r["invoke_ms_median"] > 0
    assert r["jpeg_entropy_floor_ms"] > 0
    assert r["alloc_peak_kb_median"] > 0
    assert r["overhead_ratio"] == pytest.approx(
        (r["frame_ms_median"] - r["invoke_ms_median"]) / r["invoke_ms_median"], abs=2e-3)


def test_bench_detect_json_through_the_cli(models_dir: Path, tmp_path: Path,
                                           cameratrapai_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("blank.jpg", "human.jpg"):
        shutil.copy(cameratrapai_dir / name, tmp_path / name)
    rc, out, _ = run_cli(capsys, "bench", "detect", "--models", str(models_dir), "--images",
                         str(tmp_path), "--detector", "yolov8n_coco_int8io_float_320",
                         "--repeat", "1", "--json")
    assert rc == 0
    (r,) = json.loads(out)["results"]
    assert r["model"] == "yolov8n_coco_int8io_float_320"
    assert r["images"] == 2
    assert 20 < r["peak_rss_mb"] < 1000  # measured in a child process, plausibly
    rc, _, err = run_cli(capsys, "bench", "detect", "--models", str(models_dir), "--images",
                         str(tmp_path), "--min-side", "99999")
    assert rc == 2
    assert "no image" in err


def test_bench_motion_gate_never_changes_a_verdict(models_dir: Path, field_dir: Path) -> None:
    bursts = group_bursts(sorted((field_dir / "animl-r").glob("*.JPG")), 2.0)
    assert len(bursts) == 14  # the Peru sequence: 12 triples and 2 pairs
    assert sum(len(b) for b in bursts) == 40
    # Two static bursts (the gate skips) and one with motion (it must not).
    pick = [b for b in bursts if b[0].stem.endswith(("25", "55", "46"))]
    r = measure(models_dir, pick)
    assert r["verdicts_identical"]
    assert r["inferred_gate_on"] < r["inferred_gate_off"] == 9
    moving = next(b for b in r["per_burst"] if b["frames"][0].endswith("46.JPG"))
    assert all(m > 0.002 for m in moving["motion"][1:])
