"""The second look (edge_app/trap/detect/second_look.py): it only ever keeps, it runs only on
frames the first pass would let go, its tiles cover the frame with the stated overlap, the
infrared test and stretch, and on real frames the first pass misses."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_app.core.config import DetectorConfig, PolicyConfig
from edge_app.core.events import CATEGORIES, SPECIES, Detection, FrameResult
from edge_app.trap.detect.pipeline import Pipeline
from edge_app.trap.detect.policy import decide
from edge_app.trap.detect.second_look import (
    Found,
    SecondLook,
    Settings,
    extend,
    is_infrared,
    needed,
    saturation,
    stretch,
    tile_fraction,
    tile_windows,
)

POLICY = PolicyConfig()
RANK = {"discard": 0, "keep": 1, "alert": 2}

# --------------------------------------------------------------------------- only keeps

scores = st.floats(0.0, 1.0, allow_nan=False)
boxes = st.tuples(scores, scores, scores, scores)
detections = st.builds(Detection, st.sampled_from(["animal", "person", "vehicle"]), scores,
                       boxes, st.just("x"), st.one_of(st.none(), st.sampled_from(SPECIES)),
                       st.one_of(st.none(), scores))
max_scores = st.dictionaries(st.sampled_from(CATEGORIES + SPECIES), scores, max_size=6)


@st.composite
def results(draw: st.DrawFn) -> FrameResult:
    dets = tuple(sorted(draw(st.lists(detections, max_size=3)), key=lambda d: -d.conf))
    ms = draw(max_scores)
    for d in dets:  # the pipeline's invariant: max_scores ≥ every reported confidence
        ms[d.category] = max(ms.get(d.category, 0.0), d.conf)
    label = dets[0].category if dets else "empty"
    return FrameResult(label, None, dets[0].conf if dets else 0.0, dets, ms)


@settings(max_examples=300, deadline=None)
@given(results(), st.lists(detections, max_size=4))
def test_a_second_look_never_lowers_a_verdict(result: FrameResult,
                                              found: list[Detection]) -> None:
    before = decide([result], POLICY)
    after = decide([extend(result, found, 1.0)], POLICY)
    assert RANK[after.outcome] >= RANK[before.outcome]
    merged = extend(result, found, 1.0)
    for key, v in result.max_scores.items():
        assert merged.max_scores[key] >= v
    assert set(result.detections) <= set(merged.detections)
    if found:
        assert after.outcome != "discard"


def test_needed_only_when_every_score_is_below() -> None:
    assert needed([0.0, 0.14, 0.1], 0.15)
    assert needed([], 0.15)
    assert not needed([0.0, 0.15], 0.15)


class _Counting:
    """A fake detector (an API-boundary stand-in): counts calls, finds what it is told."""

    def __init__(self, conf: float) -> None:
        self.calls: list[tuple[int, int]] = []
        self.conf = conf

    def __call__(self, image: Image.Image) -> list[Found]:
        self.calls.append(image.size)
        return [Found(0, self.conf, (0.25, 0.25, 0.5, 0.5), "dog", "")]


def test_looks_run_in_order_and_stop_at_the_first_find() -> None:
    grey = Image.new("RGB", (400, 300), (60, 60, 60))
    detect, vote = _Counting(0.2), _Counting(0.6)
    sl = SecondLook(Settings(("ir", "detector", "tiles"), 0.3), detect, vote)
    out = sl.look(grey, lambda: grey)
    # IR copy (0.2 < 0.3: not enough), then the voter finds it: the tiles never run.
    assert out.looks == ["ir", "detector"]
    assert out.invokes == 2
    assert [f.look for f in out.found] == ["detector"]
    assert len(detect.calls) == 1
    assert len(vote.calls) == 1


def test_tiles_map_boxes_back_to_the_frame() -> None:
    colour = Image.new("RGB", (800, 600), (200, 30, 30))
    detect = _Counting(0.5)
    out = SecondLook(Settings(("ir", "tiles"), 0.3), detect, None).look(colour,
                                                                       lambda: colour)
    assert out.looks == ["tiles"]
    assert out.invokes == 4
    wins = tile_windows(800, 600, 2, Settings((), 0.3).overlap)
    assert detect.calls == [(x1 - x0, y1 - y0) for x0, y0, x1, y1 in wins]
    last = wins[-1]
    assert any(abs(f.bbox[0] - (last[0] + 0.25 * (last[2] - last[0])) / 800) < 1e-6
               for f in out.found)
    for f in out.found:
        assert f.bbox[0] >= 0.0
        assert f.bbox[0] + f.bbox[2] <= 1.0 + 1e-6


# --------------------------------------------------------------------------- tiles


@given(st.integers(16, 5000), st.integers(16, 5000), st.integers(1, 4),
       st.floats(0.0, 0.9, allow_nan=False))
def test_tiles_cover_the_frame_with_the_stated_overlap(w: int, h: int, grid: int,
                                                       overlap: float) -> None:
    wins = tile_windows(w, h, grid, overlap)
    assert len(wins) == grid * grid
    xs = sorted({(x0, x1) for x0, _, x1, _ in wins})
    ys = sorted({(y0, y1) for _, y0, _, y1 in wins})
    for spans, size in ((xs, w), (ys, h)):
        assert spans[0][0] == 0
        assert spans[-1][1] == size
        side = spans[0][1] - spans[0][0]
        assert all(b - a == side for a, b in spans)
        assert abs(side - size * tile_fraction(grid, overlap)) <= 1
        for (_a0, a1), (b0, _) in itertools.pairwise(spans):
            shared = a1 - b0
            assert shared >= 0  # no gap
            assert abs(shared - overlap * side) <= 2 + 0.01 * side


def test_tile_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="grid 0"):
        tile_windows(100, 100, 0, 0.5)
    with pytest.raises(ValueError, match=r"overlap 1\.0"):
        tile_windows(100, 100, 2, 1.0)


# --------------------------------------------------------------------------- infrared


def test_grey_frames_are_infrared_and_colour_frames_are_not() -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 120, (120, 160), dtype=np.uint8)
    ir = Image.fromarray(np.stack([grey] * 3, axis=2))
    assert saturation(ir) == 0.0
    assert is_infrared(ir, 0.015)
    tinted = np.stack([grey, grey, np.clip(grey.astype(int) + 2, 0, 255).astype(np.uint8)], 2)
    assert is_infrared(Image.fromarray(tinted), 0.015)  # a faint tint is still IR
    colour = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    assert not is_infrared(Image.fromarray(colour), 0.015)
    leaves = np.zeros((120, 160, 3), np.uint8)
    leaves[..., 1] = 90
    leaves[..., 0] = 60
    assert not is_infrared(Image.fromarray(leaves), 0.015)


def test_stretch_spreads_a_dull_frame_over_the_range() -> None:
    rng = np.random.default_rng(2)
    dull = rng.integers(40, 80, (100, 100, 3), dtype=np.uint8)
    out = stretch(dull)
    assert out.dtype == np.uint8
    assert out.shape == dull.shape
    assert out.min() == 0
    assert out.max() == 255
    # Monotone: the order of grey levels is kept.
    flat_in, flat_out = dull.ravel(), out.ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order].astype(int)) >= 0)


def test_stretch_leaves_a_flat_frame_alone() -> None:
    flat = np.full((10, 10, 3), 77, np.uint8)
    assert np.array_equal(stretch(flat), flat)


# --------------------------------------------------------------------------- real frames

# Measured (issue 13): the whole-frame pass scores every category of these two animals below
# policy.empty_below, so the policy would discard them; 2x2 windows at full resolution find
# a bird (0.70) and a bear (0.85) in them. The empty frame stays below the second look's
# threshold (its windows' best is 0.15 at most).
MISSED = ("animl-r/examples__test_data__Peru__S90__SDZG_1__EK000016.JPG",
          "zamba/tests__assets__images__ena24_small__596.jpg")
EMPTY = "animl-py/examples__Southwest__B013_IMG_0005_empty.jpeg"
KEPT = "animl-py/examples__Jaguar__AABP_13_20051007_1205.jpg"


@pytest.fixture(scope="module")
def pipelines(models_dir: Path) -> Iterator[tuple[Pipeline, Pipeline]]:
    """Without the second look, and with the tiles (the default)."""
    assert DetectorConfig().second_look_tiles  # shipped on: the best measured setting
    with Pipeline(DetectorConfig(second_look_tiles=False), models_dir) as plain, \
            Pipeline(DetectorConfig(), models_dir) as second:
        yield plain, second


@pytest.mark.models
@pytest.mark.parametrize("name", MISSED)
def test_tiles_keep_animals_the_first_pass_misses(pipelines: tuple[Pipeline, Pipeline],
                                                   field_dir: Path, name: str) -> None:
    plain, second = pipelines
    path = field_dir / name
    assert decide([plain.analyse(path)], POLICY).outcome == "discard"
    r = second.analyse(path)
    out = second.last_second_look
    assert out is not None
    assert out.looks == ["tiles"]
    assert out.invokes == 4
    assert decide([r], POLICY).outcome != "discard"
    assert r.label == "animal"
    assert r.stages_ms["second_look"] > 0
    assert r.species not in ("leopard", "tiger")
    # The live path (a camera array, no JPEG) finds it too.
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert decide([second.analyse(pixels)], POLICY).outcome != "discard"


@pytest.mark.models
def test_an_empty_frame_stays_discarded(pipelines: tuple[Pipeline, Pipeline],
                                        field_dir: Path) -> None:
    _, second = pipelines
    r = second.analyse(field_dir / EMPTY)
    assert second.last_second_look is not None  # it looked, and found nothing
    assert decide([r], POLICY).outcome == "discard"


@pytest.mark.models
def test_no_second_look_on_a_frame_already_kept(pipelines: tuple[Pipeline, Pipeline],
                                                field_dir: Path) -> None:
    plain, second = pipelines
    first = plain.analyse(field_dir / KEPT)
    assert not needed(list(first.max_scores.values()), 0.15)
    r = second.analyse(field_dir / KEPT)
    assert second.last_second_look is None
    assert "second_look" not in r.stages_ms
    assert r.detections == first.detections


@pytest.mark.models
def test_tiles_only_with_a_detector_whose_card_was_measured_with_them(
        models_dir: Path, field_dir: Path) -> None:
    """On by default for the default detector (its card says the tiles help); a site that
    swaps in the SSD, whose card does not (it keeps a blank frame with tiles), gets none."""
    with Pipeline(DetectorConfig(), models_dir) as yolo:
        assert yolo.detector_card.second_look_tiles
        assert yolo.second is not None
        assert yolo.second.look.settings.looks == ("tiles",)
    ssd = "ssd_mobilenet_v2_fpnlite_coco_uint8_256"
    with Pipeline(DetectorConfig(detector=ssd), models_dir) as p:
        assert not p.detector_card.second_look_tiles
        assert p.second is None
        r = p.analyse(field_dir / EMPTY)
        assert "second_look" not in r.stages_ms
