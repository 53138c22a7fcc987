"""Fusion: a trigger is discarded only when every stage agrees it is empty (ARCHITECTURE §4),
and the verdict names the stages that kept it. Then the same on the real pipeline: the
embedding is computed once per frame, shared with the classifier, and scored by the head."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_app.trap.detect.pipeline as pipeline_mod
from edge_app.core.config import DetectorConfig, PolicyConfig
from edge_app.core.errors import ModelError
from edge_app.core.events import CATEGORIES, SPECIES, Detection, Frame, FrameResult
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.policy import STAGES, decide, stage_votes
from edge_app.trap.detect.site_head import CLASSES, SiteHead, save_head
from edge_app.trap.store.pipeline import build_event

POLICY = PolicyConfig()


def quiet(**fields: Any) -> FrameResult:
    """A frame every detector and classifier score of which is below empty_below."""
    scores = dict.fromkeys((*CATEGORIES, *SPECIES), 0.02)
    return FrameResult("empty", None, 0.0, (), scores, **fields)


def test_every_stage_empty_is_a_discard_with_its_reasons() -> None:
    v = decide([quiet(empty_prob=0.9, head_empty=True, background_sim=0.97,
                      background_known=True, motion=0.01)], POLICY)
    assert (v.outcome, v.kept_by) == ("discard", ())
    assert "below empty_below" in v.reason
    assert "site head says empty" in v.reason
    assert "known empty scene" in v.reason


@pytest.mark.parametrize(("fields", "stage", "why"), [
    ({"empty_prob": 0.2, "head_empty": False}, "head", "P(empty) 0.20"),
    ({"background_sim": 0.4, "background_known": False}, "background", "similarity 0.40"),
    ({"motion": 0.3}, "motion", "30.0 % of frame 0 changed"),
])
def test_one_stage_that_is_not_sure_keeps_the_trigger(fields: dict[str, Any], stage: str,
                                                      why: str) -> None:
    v = decide([quiet(**fields)], POLICY)
    assert (v.outcome, v.label, v.kept_by) == ("keep", "empty", (stage,))
    assert why in v.reason


def test_stages_that_did_not_look_abstain() -> None:
    """No head, background still learning, gate off: only the detector and classifier vote."""
    assert decide([quiet()], POLICY).outcome == "discard"
    # Motion below the keep fraction, or motion voting switched off, does not keep.
    assert decide([quiet(motion=0.05)], POLICY).outcome == "discard"
    assert decide([quiet(motion=0.9)], PolicyConfig(motion_keep_fraction=0.0)).outcome \
        == "discard"


def test_every_frame_must_agree_and_all_keepers_are_named() -> None:
    burst = [quiet(empty_prob=0.9, head_empty=True),
             quiet(empty_prob=0.1, head_empty=False, background_sim=0.5,
                   background_known=False),
             None]
    v = decide(burst, POLICY)
    assert v.outcome == "keep"
    assert v.kept_by == ("head", "background", "unreadable")
    assert list(stage_votes(burst, POLICY)) == list(v.kept_by)
    assert v.best_index == 1  # the frame the head and the background flagged


def test_detector_and_classifier_votes_below_the_box_threshold() -> None:
    r = dataclasses.replace(quiet(), max_scores={**quiet().max_scores, "animal": 0.2})
    assert decide([r], POLICY).kept_by == ("detector",)
    r = dataclasses.replace(quiet(), max_scores={**quiet().max_scores, "leopard": 0.2})
    assert decide([r], POLICY).kept_by == ("classifier",)


def test_detections_are_kept_by_the_detector_or_the_whole_frame_classifier() -> None:
    box = Detection("person", 0.8, (0.1, 0.1, 0.2, 0.2), "person")
    r = FrameResult("person", None, 0.8, (box,), {**quiet().max_scores, "person": 0.8},
                    empty_prob=0.05, head_empty=False)
    v = decide([r], POLICY)
    assert (v.outcome, v.kept_by) == ("alert", ("detector", "head"))
    whole = Detection("animal", 0.7, (0.0, 0.0, 1.0, 1.0), "jaguar", "leopard", 0.7)
    r = FrameResult("animal", "leopard", 0.7, (whole,), {**quiet().max_scores, "leopard": 0.7})
    assert decide([r], POLICY).kept_by == ("classifier",)
    assert set(STAGES) == {"detector", "classifier", "head", "background", "motion",
                           "unreadable"}


def test_event_json_records_kept_by() -> None:
    from edge_app.core.events import Burst, TriggerEvent

    burst = Burst(TriggerEvent(1, 0.0, 1_790_000_000.0, "pir:17"),
                  (Frame(b"jpeg", 0.0, 0.0, 0, False),))
    v = decide([quiet(empty_prob=0.3, head_empty=False)], POLICY)
    event = build_event(event_id="T-1-1", unit="T-1", seq=1, burst=burst, verdict=v, media=[],
                        battery_v=None, temp_c=None, time_synced=True)
    assert event["kept_by"] == ["head"]
    assert event["outcome"] == "keep"


# --------------------------------------------------------------------------- real pipeline

def _head_file(tmp_path: Path, sha: str, dims: int, empty_bias: float,
               threshold: float = 0.5) -> Path:
    """A real head file whose P(empty) is the same for every frame (zero weights)."""
    k = len(CLASSES)
    b = np.zeros(k, np.float32)
    b[0] = empty_bias
    head = SiteHead(np.zeros((dims, k), np.float32), b, np.zeros(dims, np.float32), CLASSES,
                    threshold, {"embedding": {"card": "mobilenet_v1_embedding_uint8_224",
                                              "sha256": sha, "dims": dims}})
    path = tmp_path / f"head_{empty_bias}.npz"
    save_head(head, path)
    return path


@pytest.fixture(scope="module")
def plain(models_dir: Path) -> Iterator[Pipeline]:
    with Pipeline(DetectorConfig(), models_dir, embed=True) as p:
        yield p


@pytest.mark.models
def test_embedding_once_per_frame_and_shared_with_the_classifier(
        plain: Pipeline, cameratrapai_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = plain.embedder
    assert emb is not None
    invokes: list[int] = []
    resizes: list[Any] = []
    real_invoke = emb.model.invoke_raw
    real_crop = pipeline_mod.crop_resized

    def count_invoke() -> Any:
        invokes.append(1)
        return real_invoke()

    def count_crop(image: Any, bbox: Any, *a: Any) -> Any:
        resizes.append(bbox)
        return real_crop(image, bbox, *a)

    monkeypatch.setattr(emb.model, "invoke_raw", count_invoke)
    monkeypatch.setattr(pipeline_mod, "crop_resized", count_crop)
    r = plain.analyse(cameratrapai_dir / "blank.jpg")  # no box: whole-frame classifier pass
    assert len(invokes) == 1
    assert resizes == [None]  # one whole-frame resize for the classifier and the embedding
    assert r.embedding is not None
    assert r.embedding.shape == (1024,)
    assert float(np.linalg.norm(r.embedding)) == pytest.approx(1.0, abs=1e-5)
    assert r.stages_ms["embed"] > 0
    assert "embed" in r.timings_ms
    # The copy in the result is the frame's own: the next frame does not overwrite it.
    before = r.embedding.copy()
    plain.analyse(cameratrapai_dir / "human.jpg")
    assert np.array_equal(r.embedding, before)
    assert len(invokes) == 2
    assert r.empty_prob is None
    assert r.head_empty is None


@pytest.mark.models
def test_head_votes_in_the_real_pipeline(models_dir: Path, cameratrapai_dir: Path,
                                         tmp_path: Path, plain: Pipeline) -> None:
    emb = plain.embedder
    assert emb is not None
    sure = _head_file(tmp_path, emb.sha256, emb.dims, empty_bias=5.0)    # P(empty) ≈ 0.98
    unsure = _head_file(tmp_path, emb.sha256, emb.dims, empty_bias=-5.0)  # P(empty) ≈ 0.0
    blank = cameratrapai_dir / "blank.jpg"
    base = decide([plain.analyse(blank)], POLICY)
    assert base.outcome == "discard"  # the detector and classifier alone: empty
    with Pipeline(DetectorConfig(head=str(sure)), models_dir) as p:
        r = p.analyse(blank)
        assert r.head_empty is True
        assert r.empty_prob == pytest.approx(0.9803, abs=1e-3)
        assert decide([r], POLICY).outcome == "discard"
    # A relative path is taken from the models folder: refused there (no such file).
    with pytest.raises(ModelError, match="head file not found"):
        Pipeline(DetectorConfig(head=unsure.name), models_dir)
    with Pipeline(DetectorConfig(head=str(unsure)), models_dir) as p:
        v = decide([p.analyse(blank)], POLICY)
        assert (v.outcome, v.kept_by) == ("keep", ("head",))
    # The config threshold overrides the file's: at 0.99 even the sure head says "not empty".
    with Pipeline(DetectorConfig(head=str(sure), head_threshold=0.99), models_dir) as p:
        assert p.analyse(blank).head_empty is False


@pytest.mark.models
def test_head_for_another_embedding_model_is_refused(models_dir: Path, tmp_path: Path) -> None:
    path = _head_file(tmp_path, "ab" * 32, 1024, 0.0)
    with pytest.raises(ModelError, match="trained on embedding model sha256 abab"):
        Pipeline(DetectorConfig(head=str(path)), models_dir)


@pytest.mark.models
def test_motion_vote_keeps_a_real_night_burst_the_models_miss(models_dir: Path,
                                                              field_dir: Path) -> None:
    """Peru EK000049-50: a night IR animal neither model sees; a fifth of the picture changed
    against the first frame, so with the gate on the motion stage keeps it."""
    from edge_app.tools.bench_motion import measure

    peru = field_dir / "animl-r"
    burst = [peru / f"examples__test_data__Peru__S90__SDZG_1__EK0000{n}.JPG" for n in (49, 50)]
    r = measure(models_dir, [burst])
    assert r["verdicts_identical"]  # the gate's skipping alone changes nothing
    (b,) = r["per_burst"]
    assert b["verdict"][0] == "discard"
    assert b["motion"][1] >= PolicyConfig().motion_keep_fraction
    assert b["kept_by_motion_vote"] is True
