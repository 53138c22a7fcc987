"""The site head: threshold rule, labels CSV checks, training on real embeddings, the file."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.tools.adapt import FrameEmbeddings, embedding_info
from edge_app.tools.head_training import (
    LabelError,
    TrainingSet,
    check_counts,
    read_label_csv,
    source_of,
    stratified_folds,
    threshold_for_recall,
    train_head,
)
from edge_app.trap.detect.site_head import CLASSES, SiteHead, head_bytes, load_head, save_head

# --------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(("scores", "target", "kept"), [
    ([0.9, 0.8, 0.1, 0.05], 1.0, 4),   # every frame below: threshold just above the top
    ([0.9, 0.8, 0.1, 0.05], 0.75, 3),  # one may reach it: just above the second
    ([0.9, 0.8, 0.1, 0.05], 0.5, 2),
    (list(np.linspace(0, 1, 100)), 0.95, 95),
])
def test_threshold_keeps_at_least_the_target(scores: list[float], target: float,
                                             kept: int) -> None:
    t = threshold_for_recall(np.array(scores), target)
    below = sum(s < t for s in scores)
    assert below == kept
    assert below >= target * len(scores)
    # ...and is the smallest such threshold: any lower one keeps fewer than the target.
    assert sum(s < t - 2e-6 for s in scores) < kept


def test_threshold_without_non_empty_frames_never_says_empty() -> None:
    assert threshold_for_recall(np.array([]), 0.95) > 1.0


def test_stratified_folds_spread_every_class() -> None:
    y = np.array([0] * 5 + [1] * 50 + [2] * 2)
    f = stratified_folds(y, 5, seed=3)
    for c in (0, 1):
        assert sorted(np.bincount(f[y == c], minlength=5)) == ([1] * 5 if c == 0 else [10] * 5)
    assert np.array_equal(f, stratified_folds(y, 5, seed=3))  # deterministic


def test_too_few_examples_names_the_class() -> None:
    with pytest.raises(LabelError, match=r"empty has 1 .*need ≥ 5"):
        check_counts(["empty"] + ["animal"] * 9, 5)
    with pytest.raises(LabelError, match="animal has 0"):
        check_counts(["empty"] * 9, 5)
    with pytest.raises(LabelError, match="unknown label"):
        check_counts(["empty"] * 5 + ["animal"] * 5 + ["bird"], 5)
    counts = check_counts(["empty"] * 5 + ["animal"] * 5 + ["vehicle"], 5)
    assert counts["vehicle"] == 1  # rare optional classes are allowed (and down-weighted)


# --------------------------------------------------------------------------- labels CSV


def _csv(path: Path, rows: list[tuple[str, ...]], header: str = "file,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    (d / "cam1").mkdir(parents=True)
    (d / "cam1" / "a.jpg").write_bytes(b"x")
    (d / "b.jpg").write_bytes(b"x")
    return d


def test_label_csv_reads_rows_and_sources(two_images: Path) -> None:
    p = _csv(two_images / "l.csv", [("cam1/a.jpg", "empty", "", "owner/site-1: a/b.jpg"),
                                    ("b.jpg", "animal", "leopard", "")],
             "file,label,species,source")
    rows = read_label_csv(p, two_images)
    assert [(r.file, r.label) for r in rows] == [("cam1/a.jpg", "empty"), ("b.jpg", "animal")]
    assert [source_of(r) for r in rows] == ["site-1", "-"]
    p = _csv(two_images / "l.csv", [("cam1/a.jpg", "empty")])
    assert source_of(read_label_csv(p, two_images)[0]) == "cam1"  # top folder


@pytest.mark.parametrize(("rows", "header", "message"), [
    ([("a.jpg", "empty")], "name,label", "missing column"),
    ([("b.jpg", "bird")], "file,label", r":2: unknown label 'bird' for b\.jpg"),
    ([("b.jpg", "")], "file,label", "unknown label ''"),
    ([("missing.jpg", "empty"), ("gone.jpg", "animal")], "file,label",
     r"2 labelled file\(s\) not found .*missing\.jpg, gone\.jpg"),
    ([("../imgs/b.jpg", "empty"), ("../../etc/passwd", "empty")], "file,label", "outside"),
    ([("b.jpg", "empty"), ("b.jpg", "animal")], "file,label",
     "labelled both empty and animal"),
    ([], "file,label", "no labelled frames"),
])
def test_bad_label_csv_names_the_problem(two_images: Path, rows: list[tuple[str, ...]],
                                        header: str, message: str) -> None:
    p = _csv(two_images / "l.csv", rows, header)
    with pytest.raises(LabelError, match=message):
        read_label_csv(p, two_images)


# --------------------------------------------------------------------------- real training


@pytest.fixture(scope="module")
def field_set(models_dir: Path, field_dir: Path) -> TrainingSet:
    """Embeddings of the 119 field frames, computed as on the trap."""
    emb = FrameEmbeddings(DetectorConfig(), models_dir)
    try:
        with (field_dir / "labels.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        X = np.array([emb((field_dir / r["file"]).read_bytes()) for r in rows], np.float32)
        info = embedding_info(emb.embedder)
    finally:
        emb.close()
    return TrainingSet(X, tuple(r["label"] for r in rows), tuple(r["file"] for r in rows),
                       (info["sha256"],))


@pytest.mark.models
def test_embeddings_are_unit_vectors(field_set: TrainingSet) -> None:
    norms = np.linalg.norm(field_set.X, axis=1)
    assert field_set.X.shape == (119, 1024)
    assert np.allclose(norms, 1.0, atol=1e-5)
    # Same-scene empty frames of one camera are near each other; an IR animal is not.
    files = list(field_set.files)
    e10 = field_set.X[files.index("animl-r/examples__test_data__Peru__S90__SDZG_1__EK000010.JPG")]
    e11 = field_set.X[files.index("animl-r/examples__test_data__Peru__S90__SDZG_1__EK000011.JPG")]
    ir = field_set.X[files.index("animl-r/examples__test_data__Peru__S90__SDZG_1__EK000031.JPG")]
    assert float(e10 @ e11) > float(e10 @ ir) + 0.2


@pytest.mark.models
def test_head_trains_deterministically_and_meets_its_cv_target(field_set: TrainingSet,
                                                               tmp_path: Path) -> None:
    sha = field_set.digests[0]
    info = {"card": "mobilenet_v1_embedding_uint8_224", "sha256": sha, "dims": 1024}
    head = train_head(field_set, target_recall=0.95, embedding=info)
    again = train_head(field_set, target_recall=0.95, embedding=info)
    assert np.array_equal(head.weights, again.weights)
    assert head.threshold == again.threshold
    t = head.meta["training"]
    assert t["counts"] == {"empty": 10, "animal": 106, "person": 2, "vehicle": 1}
    assert t["cv"]["nonempty_kept"] >= 0.95  # out of fold, by construction of the threshold
    assert t["cv"]["penalty"] in (1e-3, 1e-2, 1e-1)
    assert {w.split(":")[0] for w in t["warnings"]} == {"person", "vehicle"}

    P = head.probs_batch(field_set.X)
    assert np.allclose(P.sum(axis=1), 1.0)
    assert head.classes == CLASSES
    for i in (0, 50, 118):  # the per-frame path (float32, reused buffers) agrees
        assert head.empty_prob(field_set.X[i]) == pytest.approx(P[i, 0], abs=1e-4)

    path = tmp_path / "site.npz"
    size = save_head(head, path)
    assert size == path.stat().st_size <= 100 * 1024
    loaded = load_head(path, sha, 1024)
    assert np.allclose(loaded.probs_batch(field_set.X), P, atol=1e-5)
    assert loaded.threshold == head.threshold
    assert loaded.embedding_sha256 == sha
    assert loaded.meta["training"]["counts"] == t["counts"]
    with pytest.raises(ModelError, match=f"trained on embedding model sha256 {sha}.*"
                                         "the loaded one is 0+; retrain"):
        load_head(path, "0" * 64)
    with pytest.raises(ModelError, match="takes 1024-d embeddings"):
        load_head(path, sha, 512)


def _head(k: int = 4, d: int = 8) -> SiteHead:
    return SiteHead(np.zeros((d, k), np.float32), np.zeros(k, np.float32),
                    np.zeros(d, np.float32), CLASSES[:k], 0.5, {"embedding": {"sha256": "x"}})


def test_bad_head_files_are_model_errors(tmp_path: Path) -> None:
    good = head_bytes(_head())
    p = tmp_path / "h.npz"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="cannot read head file"):
        load_head(p)
    with pytest.raises(ModelError, match="not found"):
        load_head(tmp_path / "none.npz")
    buf = io.BytesIO()
    np.savez(buf, W=np.zeros((2, 2)))
    p.write_bytes(buf.getvalue())
    with pytest.raises(ModelError, match="not a camtrap head file"):
        load_head(p)

    def rewrite(**meta_changes: object) -> None:
        import json

        z = np.load(io.BytesIO(good))
        meta = json.loads(bytes(z["meta"]).decode())
        meta.update(meta_changes)
        out = io.BytesIO()
        np.savez(out, W=z["W"], b=z["b"], mean=z["mean"],
                 meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        p.write_bytes(out.getvalue())

    rewrite(version=99)
    with pytest.raises(ModelError, match="version 99"):
        load_head(p)
    rewrite(classes=["animal", "empty", "person", "vehicle"])
    with pytest.raises(ModelError, match="inconsistent head"):
        load_head(p)
    rewrite(threshold="high")
    with pytest.raises(ModelError, match="threshold"):
        load_head(p)
    rewrite()
    assert load_head(p).threshold == 0.5
    assert zipfile.is_zipfile(p)  # a plain .npz: inspectable with numpy, no pickle


def test_the_new_commands_keep_the_cli_cheap_to_start() -> None:
    """`camtrap check-config` on a Pi must not pay for numpy because `models adapt` and
    `label` registered their options (defaults live in adapt_options.py for this reason)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, edge_app.cli as c; "
                          "c.build_parser(); print(sorted(m for m in ('numpy', "
                          "'edge_app.trap.detect.site_head', 'PIL') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
