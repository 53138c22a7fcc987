"""Per-tile novelty: how unlike the site's empty scene each part of a frame is.

Issue 13: a whole-frame embedding is dominated by the scene, so a small animal barely moves
it. Cutting the frame into a grid and embedding each tile gives the animal a larger share of
one tile's pixels; comparing each tile with *the same tile* of the site's empty frames asks
"has this part of the scene changed", which is what an animal does to a fixed camera.

The feature (:func:`tile_novelty`): for each tile, one minus the highest cosine similarity to
that tile in any known empty frame; the frame's novelty is the maximum over its tiles. A
frame like a known empty scene everywhere scores near 0; one with something new in any tile
scores high. Pure numpy on unit vectors: the cost is the embeddings, ``grid²`` invokes of the
embedding model per frame (about 40 ms each on a Pi Zero 2 W), on the frame already decoded.

Measured on the field set (``camtrap eval --within-site``, leave one burst out, on the one
camera with empty frames in more than one burst: Peru S90, 9 empties in 3 bursts, 33
animals), fused with the detector as the policy does, threshold keeping 95 % of the
training non-empty frames:

* whole frame as one tile (``grid`` 1: the embedding the trap already computes, 0 extra
  invokes) — 32/33 animals kept, 6/9 empties discarded;
* 2×2 and 3×3 tiles (4 and 9 extra invokes) — 31/33 and 6/9: no better;
* the softmax site head on the same embedding — 32/33 and 4/9.

So novelty against the site's own empty frames beats the softmax head, and tiles do not
pay on this camera. Still far from issue 13's 90 %/90 %: the three missed empties are the
noon burst, unlike both morning bursts (cosine 0.83) — with one burst per light, holding it
out leaves nothing like it in training.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MAX_GRID = 4
"""Largest grid side: 16 invokes a frame is already 0.6 s on a Pi Zero 2 W."""


class TileEmbedder(Protocol):
    """What :func:`tile_embeddings` needs of :class:`~edge_app.trap.detect.embed.Embedder`."""

    size: tuple[int, int]
    dims: int

    def embed_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]: ...


def tile_boxes(grid: int) -> list[tuple[float, float, float, float]]:
    """The ``grid × grid`` tiles of a frame as normalised (x0, y0, x1, y1), row by row.

    Raises:
        ValueError: ``grid`` outside 1..:data:`MAX_GRID`.
    """
    if not 1 <= grid <= MAX_GRID:
        raise ValueError(f"grid must be 1..{MAX_GRID}, got {grid}")
    return [(j / grid, i / grid, (j + 1) / grid, (i + 1) / grid)
            for i in range(grid) for j in range(grid)]


def tile_embeddings(embedder: TileEmbedder, image: Image.Image,
                    grid: int) -> NDArray[np.float32]:
    """One unit embedding per tile, (grid², dims): ``grid²`` invokes of the embedder.

    Raises:
        ValueError: see :func:`tile_boxes`.
    """
    w, h = image.size
    boxes = tile_boxes(grid)
    out = np.empty((len(boxes), embedder.dims), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        # Stretched like the whole frame (not the classifier's square crop): the tile as is.
        pixels = np.asarray(image.resize(embedder.size, Image.Resampling.BILINEAR,
                                         box=(x0 * w, y0 * h, x1 * w, y1 * h)))[..., :3]
        out[k] = embedder.embed_pixels(pixels)
    return out


def tile_novelty(tiles: NDArray[np.float32], empty_tiles: NDArray[np.float32]) -> float:
    """The frame's novelty against known empty frames (see the module docstring).

    Args:
        tiles: (T, D) unit embeddings of one frame's tiles.
        empty_tiles: (M, T, D) the same tiles of M empty frames of the site.

    Returns:
        max over tiles of (1 − max over empty frames of the cosine similarity), in [0, 2];
        1.0 when no empty frame is known (nothing to compare: as new as it gets without
        claiming the opposite of similar).

    Raises:
        ValueError: the tile counts or lengths differ.
    """
    if tiles.ndim != 2 or empty_tiles.ndim != 3 or empty_tiles.shape[1:] != tiles.shape:
        raise ValueError(f"tiles {tiles.shape} do not match empty tiles {empty_tiles.shape}")
    if empty_tiles.shape[0] == 0:
        return 1.0
    sims = np.einsum("mtd,td->mt", empty_tiles, tiles)
    return float((1.0 - sims.max(axis=0)).max())


def novelty_threshold(nonempty: NDArray[np.float64], target: float) -> float:
    """The novelty at or below which a frame is called empty, keeping ≥ ``target`` of these
    non-empty frames (their novelty must stay above it).

    With n scores sorted low to high, at most ⌊(1 − target)·n⌋ may fall at or below the
    threshold; it is set just below the next one. Below 0 means "never empty".
    """
    s = np.sort(np.asarray(nonempty, np.float64))
    if s.size == 0:
        return -1.0
    allowed = int(np.floor((1.0 - target) * s.size + 1e-9))
    if allowed >= s.size:
        return float(s[-1])
    return float(s[allowed]) - 1e-6
