"""Per-tile novelty (edge_app/trap/detect/site_features.py): the feature math, without models."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from edge_app.trap.detect.site_features import (
    novelty_threshold,
    tile_boxes,
    tile_embeddings,
    tile_novelty,
)


def unit(v: list[float]) -> NDArray[np.float32]:
    a = np.array(v, np.float32)
    return a / np.linalg.norm(a)


def test_tiles_cover_the_frame_row_by_row() -> None:
    boxes = tile_boxes(2)
    assert boxes == [(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5),
                     (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)]
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in tile_boxes(3))
    assert area == pytest.approx(1.0)
    assert tile_boxes(1) == [(0.0, 0.0, 1.0, 1.0)]


@pytest.mark.parametrize("grid", [0, 5, -1])
def test_a_grid_out_of_range_is_refused(grid: int) -> None:
    with pytest.raises(ValueError, match="grid must be"):
        tile_boxes(grid)


class MeanColour:
    """A stand-in for the embedding model at its API boundary (``embed_pixels``): the
    'embedding' of a tile is its mean colour, so the test can tell which pixels each tile got."""

    size = (8, 8)
    dims = 3

    def embed_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        assert pixels.shape == (8, 8, 3)
        return pixels.reshape(-1, 3).mean(axis=0).astype(np.float32)


def test_each_tile_embeds_its_own_quarter_of_the_frame() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img = Image.new("RGB", (64, 48))
    for k, c in enumerate(colours):
        x, y = (k % 2) * 32, (k // 2) * 24
        img.paste(c, (x, y, x + 32, y + 24))
    out = tile_embeddings(MeanColour(), img, 2)
    assert out.shape == (4, 3)
    # Bilinear filtering reads a pixel or so across a tile's edge: a few levels of bleed.
    np.testing.assert_allclose(out, np.array(colours, np.float32), atol=16.0)


def test_a_frame_like_a_known_empty_one_has_no_novelty() -> None:
    empty = np.stack([unit([1, 0, 0]), unit([0, 1, 0])])
    assert tile_novelty(empty, empty[None]) == pytest.approx(0.0, abs=1e-6)


def test_novelty_is_the_most_changed_tile_against_its_closest_empty_frame() -> None:
    a, b, c = unit([1, 0, 0]), unit([0, 1, 0]), unit([0, 0, 1])
    empties = np.stack([np.stack([a, b]), np.stack([b, b])])  # (M=2, T=2, D=3)
    # Tile 0 is `a`: in the first empty frame, so unchanged. Tile 1 is half-way to `c`.
    half = unit([0, 1, 1])
    frame = np.stack([a, half])
    assert tile_novelty(frame, empties) == pytest.approx(1.0 - float(half @ b), abs=1e-6)
    # The same change in the other tile scores the same: the grid has no favourite tile.
    assert tile_novelty(np.stack([half, b]), np.stack([np.stack([b, b])])) == pytest.approx(
        1.0 - float(half @ b), abs=1e-6)
    # A tile pointing away from every empty one is as novel as it gets in that tile.
    assert tile_novelty(np.stack([a, c]), empties) == pytest.approx(1.0, abs=1e-6)


def test_without_empty_frames_novelty_is_one() -> None:
    assert tile_novelty(np.stack([unit([1, 0])]), np.zeros((0, 1, 2), np.float32)) == 1.0


def test_mismatched_tiles_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        tile_novelty(np.zeros((4, 3), np.float32), np.zeros((2, 9, 3), np.float32))


def test_the_threshold_keeps_the_target_share_of_non_empty_frames() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.0, 1.0, 40)
    for target in (0.9, 0.95, 1.0):
        thr = novelty_threshold(scores, target)
        kept = (scores > thr).mean()  # a frame is called empty at or below the threshold
        assert kept >= target
        # ... and no higher threshold would do: the next score up would drop one too many.
        above = np.sort(scores)[np.sort(scores) > thr]
        if above.size and target < 1.0:
            assert (scores > above[0]).mean() < target
    assert novelty_threshold(np.array([]), 0.95) < 0.0
