"""``camtrap models adapt``, ``camtrap eval --head`` / ``--loso`` and the site stages of
``camtrap bench detect``, through the CLI on the real field frames."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from edge_app import cli
from edge_app.tools.bench_detect import bench_detector, bench_images
from edge_app.trap.detect.site_head import load_head

pytestmark = pytest.mark.models

PERU = "animl-r"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def peru(field_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Peru camera's 43 frames with their labels (9 empty, 33 animal, 1 person)."""
    d = tmp_path_factory.mktemp("peru")
    with (field_dir / "labels.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["file"].startswith(PERU + "/")]
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "species"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            name = r["file"].split("/", 1)[1]
            shutil.copy(field_dir / r["file"], d / name)
            w.writerow({**r, "file": name})
    return d


def test_models_adapt_writes_a_head_and_its_card(peru: Path, models_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "peru.npz"
    rc, text, err = run_cli(capsys, "models", "adapt", "--images", str(peru), "--out", str(out),
                            "--models", str(models_dir), "--json")
    assert rc == 0, err
    s = json.loads(text)
    assert s["counts"] == {"empty": 9, "animal": 33, "person": 1, "vehicle": 0}
    assert s["bytes"] == out.stat().st_size <= 100 * 1024
    assert s["cv"]["nonempty_kept"] >= 0.95
    head = load_head(out)
    assert head.threshold == pytest.approx(s["threshold"], abs=1e-4)
    assert head.meta["embedding"]["card"] == "mobilenet_v1_embedding_uint8_224"
    assert len(head.meta["training"]["images_sha256_16"]) == 43
    card = Path(s["card"]).read_text()
    assert hashlib.sha256(out.read_bytes()).hexdigest() in card
    assert "## Held-out figures" in card
    assert "empty 9, animal 33, person 1, vehicle 0" in card

    # eval with that head on its own training frames: flagged, never passed off as held out.
    rc, text, err = run_cli(capsys, "eval", str(peru), "--models", str(models_dir), "--head",
                            str(out), "--json")
    assert rc == 0
    assert "NOT held out" in err
    ev = json.loads(text)
    assert ev["head"]["training_frames_here"] == 43
    assert ev["head"]["threshold"] == head.threshold


@pytest.mark.parametrize(("rows", "extra", "message"), [
    ([("nope.jpg", "empty")], [], r"1 labelled file\(s\) not found .*nope\.jpg"),
    ([("EK000010.JPG", "cat")], [], r"unknown label 'cat' for \S+EK000010\.JPG"),
    ([("EK000010.JPG", "empty")], [], r"too few examples .*empty has 1; animal has 0"),
    ([("EK000010.JPG", "empty")], ["--min-examples", "0"], "--min-examples must be ≥ 1"),
    ([("EK000010.JPG", "empty")], ["--target-recall", "1.5"], "--target-recall"),
])
def test_models_adapt_refuses_bad_labels(peru: Path, models_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         rows: list[tuple[str, str]], extra: list[str],
                                         message: str) -> None:
    labels = tmp_path / "bad.csv"
    labels.write_text("file,label\n" + "".join(
        f"examples__test_data__Peru__S90__SDZG_1__{f},{lab}\n" if f != "nope.jpg"
        else f"{f},{lab}\n" for f, lab in rows))
    out = tmp_path / "h.npz"
    rc, _, err = run_cli(capsys, "models", "adapt", "--images", str(peru), "--labels",
                         str(labels), "--out", str(out), "--models", str(models_dir), *extra)
    assert rc == 2
    assert err.startswith("models adapt: ")
    assert re.search(message, err), err
    assert not out.exists()


def test_eval_loso_on_the_field_set(field_dir: Path, models_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, err = run_cli(capsys, "eval", str(field_dir), "--models", str(models_dir),
                            "--loso", "--json")
    assert rc == 0, err
    s = json.loads(text)
    lo = s["loso"]
    rows = {r["source"]: r for r in lo["per_source"]}
    assert set(rows) == {"animl-py", "animl-r", "zamba"}
    with (field_dir / "labels.csv").open(newline="") as f:
        truth = list(csv.DictReader(f))
    for src, r in rows.items():
        mine = [t for t in truth if t["file"].startswith(src + "/")]
        others = [t for t in truth if not t["file"].startswith(src + "/")]
        # Each head is trained on the other sources only: held-out figures.
        assert sum(r["trained_on"].values()) == len(others)
        assert r["images"] == len(mine)
        assert r["animals"] == sum(t["label"] == "animal" for t in mine)
        assert r["empties"] == sum(t["label"] == "empty" for t in mine)
        # Fusion can only keep more than the plain pipeline, never discard more.
        assert r["animals_kept"] >= r["baseline"]["animals_kept"]
        assert r["empties_discarded"] <= r["baseline"]["empties_discarded"]
        assert r["big_cats_kept"] >= r["baseline"]["big_cats_kept"]
        # Every animal the fold keeps beyond the plain pipeline was kept by its head.
        assert r["kept_by_head"] >= r["animals_kept"] - r["baseline"]["animals_kept"]
    # The Peru camera's frames are the only empty ones besides one: without them the other
    # two sources hold a single empty frame, too few to train a head on (said, not hidden).
    assert "empty has 1" in rows["animl-r"]["head"]["error"]
    assert rows["animl-r"]["animals_kept"] == rows["animl-r"]["baseline"]["animals_kept"]
    pooled = lo["pooled"]
    assert pooled["images"] == len(truth) == s["images"]
    assert pooled["animal_kept_rate"] >= s["animal_kept_rate"]  # vs the plain pipeline
    assert set(lo["targets"]) == {"animals_kept_ge_90pct_every_source",
                                  "empties_discarded_ge_90pct", "every_big_cat_kept",
                                  "no_leopard_tiger_on_others"}

    rc, _, err = run_cli(capsys, "eval", str(field_dir / "zamba"), "--models", str(models_dir),
                         "--loso")
    assert rc == 2
    assert "--loso needs a labels CSV" in err


def test_bench_reports_the_added_cost_of_site_adaptation(models_dir: Path,
                                                        cameratrapai_dir: Path) -> None:
    images = bench_images(cameratrapai_dir, 2048)[:2]
    r = bench_detector(models_dir, "yolov8n_coco_int8io_float_320", None, images, 1, 0,
                       site=True)
    site = r["site"]
    assert site["embedder"] == "mobilenet_v1_embedding_uint8_224"
    assert site["background_scenes"] == 256
    assert set(site["stages_ms"]) == {"embed", "head", "background"}
    assert all(v > 0 for v in site["stages_ms"].values())
    assert site["added_ms_median"] >= site["stages_ms"]["embed"]
    assert site["embed_invoke_ms_median"] > 0
    assert r["frame_with_site_ms_median"] > r["frame_ms_median"]
    off = bench_detector(models_dir, "yolov8n_coco_int8io_float_320", None, images, 1, 0)
    assert off["site"] is None


def test_models_adapt_nearest_empty_head_loads_on_the_trap_and_votes(
        peru: Path, models_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--kind nearest_empty`` (issue 13): held-out figures by burst from the frames' EXIF
    times; the file loads in the trap's pipeline, whose head keeps a held-out animal."""
    from edge_app.core.config import DetectorConfig
    from edge_app.trap.detect.pipeline import Pipeline

    out = tmp_path / "peru-nearest.npz"
    rc, text, err = run_cli(capsys, "models", "adapt", "--images", str(peru), "--out", str(out),
                            "--models", str(models_dir), "--kind", "nearest_empty", "--json")
    assert rc == 0, err
    s = json.loads(text)
    assert s["cv"]["method"] == "leave one burst out"
    assert 3 <= s["cv"]["bursts"] < 43  # the 9 empties are three bursts, not nine frames
    # the head's own held-out shares (the trap's verdict also has the detector's votes:
    # `camtrap eval --within-site` measures that)
    assert 0.5 <= s["cv"]["animal_kept"] <= 1.0
    assert s["cv"]["empty_discarded"] is not None
    assert s["bytes"] <= 100 * 1024  # 9 float16 empties
    assert "Nearest empty frame" in Path(s["card"]).read_text()
    head = load_head(out)
    assert head.kind == "nearest_empty"
    assert head.empties is not None
    assert head.empties.shape == (9, 1024)
    with Pipeline(DetectorConfig(head=str(out)), models_dir) as p:
        assert p.head is not None
        assert p.head.kind == "nearest_empty"
        empty = p.analyse(peru / "examples__test_data__Peru__S90__SDZG_1__EK000001.JPG")
        assert empty.empty_prob is not None
        assert 0.0 <= empty.empty_prob <= 1.0
    # a training empty frame is its own nearest empty: the head calls it empty
    rows = list(csv.DictReader((peru / "labels.csv").open()))
    first_empty = next(r["file"] for r in rows if r["label"] == "empty")
    with Pipeline(DetectorConfig(head=str(out)), models_dir) as p:
        r = p.analyse(peru / first_empty)
        assert r.head_empty is True
        assert r.empty_prob == pytest.approx(1.0, abs=2e-3)
