"""A second look at a frame the whole-frame pass would let go (issue 13).

The stand-in COCO detector misses what a camera trap sees most: small or distant animals (the
frame was shrunk to 640 px before the detector saw it), night infrared frames (flat, grey,
low contrast) and half-hidden animals. When the PIR fired and the first pass found nothing
above the keep threshold (every raw score below ``detector.second_look_below``, so the policy
would discard the frame), the pipeline may look again, each way behind its own ``[detector]``
key:

* ``tiles`` (``second_look_tiles``): 2×2 overlapping windows of the frame at the resolution it
  came in (re-decoded at the scale where a window fills the detector input, not the downscaled
  copy), each letterboxed to the detector input: a distant animal is larger in pixels.
* ``ir`` (``second_look_ir``): when the frame is infrared (grey: low saturation,
  :func:`is_infrared`), a percentile-stretched copy (:func:`stretch`): IR flash frames use a
  fraction of the grey range and COCO was trained on daylight colour.
* ``detector`` (``second_look_detector``): a second detector card (the pack's SSD) on the
  whole frame, as a second voter.

What a second look finds counts only at ``detector.second_look_threshold`` (above the
category's own threshold too): tiles and stretched copies raise every score, empties' too, and
the trap must keep discarding empty frames. A second look only *adds* boxes and scores to a
result (:func:`extend`): it can turn a discard into a keep or alert, never the reverse; and it
never runs on a frame that is already kept, so its cost falls on the frames that would be
discarded. The looks run in a fixed order, cheapest first, and stop at the first that finds
something.

Measured on the field set (issue 13, ``camtrap eval --loso``): the tiles keep 6 more of 106
animals with every empty frame still discarded (with YOLOv8n; with the SSD as the main detector
they keep a blank frame); the stretched IR copy keeps none more (COCO's scores on these IR
frames stay ≤ 0.07 however the contrast is set); the SSD voter keeps 3 more but also an empty
frame (0.49 on the empty, 0.48-0.49 on the animals: no threshold separates them). So only the
tiles are worth their cost, and only with the detector they were measured on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.core.events import Detection, FrameResult

LOOKS: tuple[str, ...] = ("ir", "detector", "tiles")
"""The second looks, in the order they run (cheapest first: one invoke, one, four)."""

IR_THUMB = 64
"""Width of the copy the infrared test looks at (cheap, and enough for a mean)."""


@dataclass(frozen=True, slots=True)
class Found:
    """A box a second look found, in frame coordinates.

    Attributes:
        category: index into :data:`edge_app.core.events.CATEGORIES`.
        conf: detector confidence.
        bbox: ``[x_min, y_min, w, h]`` normalised to the frame.
        cls: the detector's class name.
        look: which look found it (one of :data:`LOOKS`).
    """

    category: int
    conf: float
    bbox: tuple[float, float, float, float]
    cls: str
    look: str


Detect = Callable[[Image.Image], list[Found]]
"""An image → the boxes a detector finds in it (normalised to that image)."""


@dataclass(slots=True)
class Outcome:
    """What the second look did on one frame.

    Attributes:
        found: the boxes it found (at or above its threshold), best first.
        invokes: detector invokes it spent.
        ms: its wall time in milliseconds.
        looks: the looks that ran, in order.
    """

    found: list[Found] = field(default_factory=list)
    invokes: int = 0
    ms: float = 0.0
    looks: list[str] = field(default_factory=list)


def needed(max_scores: Sequence[float], below: float) -> bool:
    """True when the first pass found nothing at or above ``below`` (the frame would go)."""
    return all(v < below for v in max_scores)


def tile_windows(width: int, height: int, grid: int, overlap: float) -> list[tuple[int, int,
                                                                                   int, int]]:
    """``grid × grid`` windows ``(x0, y0, x1, y1)`` covering a ``width × height`` frame.

    Neighbouring windows share ``overlap`` of a window's side, so an animal cut by one
    window's edge is whole in its neighbour: the side is ``size / (grid - (grid - 1) ×
    overlap)``. The last window ends at the frame's edge exactly.
    """
    if grid < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"grid {grid} must be ≥ 1 and overlap {overlap} in [0, 1)")

    def spans(size: int) -> list[tuple[int, int]]:
        side = min(size, math.ceil(size / (grid - (grid - 1) * overlap)))
        if grid == 1:
            return [(0, size)]
        step = (size - side) / (grid - 1)
        return [(round(i * step), round(i * step) + side) for i in range(grid - 1)] + [
            (size - side, size)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


def tile_fraction(grid: int, overlap: float) -> float:
    """A window's side as a fraction of the frame's (see :func:`tile_windows`)."""
    return min(1.0, 1.0 / (grid - (grid - 1) * overlap))


def saturation(image: Image.Image) -> float:
    """Mean chroma (max − min channel, 0-1) of a small copy: near 0 for an IR frame."""
    w, h = image.size
    small = image.convert("RGB").resize((IR_THUMB, max(1, round(IR_THUMB * h / max(w, 1)))),
                                        Image.Resampling.BILINEAR)
    a = np.asarray(small, dtype=np.int16)
    return float((a.max(axis=2) - a.min(axis=2)).mean()) / 255.0


def is_infrared(image: Image.Image, max_saturation: float) -> bool:
    """A night infrared frame: grey, its colours under ``max_saturation`` on average."""
    return saturation(image) < max_saturation


def stretch(pixels: NDArray[np.uint8], low: float = 1.0, high: float = 99.0) -> NDArray[np.uint8]:
    """The grey levels between the ``low`` and ``high`` percentiles spread over 0-255.

    The same mapping for every channel (an IR frame is grey; colours keep their balance).
    A flat image (both percentiles equal) comes back unchanged.
    """
    lo, hi = np.percentile(pixels, (low, high))
    if hi - lo < 1.0:
        return pixels.copy()
    lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
    out: NDArray[np.uint8] = lut.round().astype(np.uint8)[pixels]
    return out


def _to_frame(f: Found, window: tuple[int, int, int, int], size: tuple[int, int]) -> Found:
    """A box normalised to a window → normalised to the frame."""
    x0, y0, x1, y1 = window
    w, h = size
    tw, th = x1 - x0, y1 - y0
    bx, by, bw, bh = f.bbox
    return Found(f.category, f.conf, ((x0 + bx * tw) / w, (y0 + by * th) / h, bw * tw / w,
                                      bh * th / h), f.cls, f.look)


def _best(found: list[Found], threshold: float, look: str) -> list[Found]:
    return sorted((Found(f.category, f.conf, f.bbox, f.cls, look) for f in found
                   if f.conf >= threshold), key=lambda f: -f.conf)


@dataclass(frozen=True, slots=True)
class Settings:
    """The second look's settings (from ``[detector]``)."""

    looks: tuple[str, ...]
    threshold: float
    grid: int = 2
    overlap: float = 0.2
    ir_saturation: float = 0.015


class SecondLook:
    """Runs the configured looks on one frame; the pipeline supplies the detectors.

    Args:
        settings: which looks, at which threshold.
        detect: the main detector on an image.
        vote: the second detector on an image, or None (then ``detector`` is skipped).
    """

    def __init__(self, settings: Settings, detect: Detect, vote: Detect | None) -> None:
        self.settings = settings
        self._detect = detect
        self._vote = vote

    def look(self, image: Image.Image, full: Callable[[], Image.Image]) -> Outcome:
        """The looks in :data:`LOOKS` order until one finds a box at the threshold.

        Args:
            image: the frame as the first pass saw it (decoded at reduced scale).
            full: the frame at the resolution the tiles need (called only for the tiles).
        """
        s = self.settings
        out = Outcome()
        t0 = time.perf_counter()
        for name in LOOKS:
            if name not in s.looks:
                continue
            found = self._run(name, image, full, out)
            if found:
                out.found = found
                break
        out.ms = (time.perf_counter() - t0) * 1e3
        return out

    def _run(self, name: str, image: Image.Image, full_frame: Callable[[], Image.Image],
             out: Outcome) -> list[Found]:
        s = self.settings
        if name == "ir":
            if not is_infrared(image, s.ir_saturation):
                return []
            out.looks.append(name)
            out.invokes += 1
            flat = stretch(np.asarray(image.convert("RGB")))
            return _best(self._detect(Image.fromarray(flat)), s.threshold, name)
        if name == "detector":
            if self._vote is None:
                return []
            out.looks.append(name)
            out.invokes += 1
            return _best(self._vote(image), s.threshold, name)
        out.looks.append(name)
        full = full_frame()
        found: list[Found] = []
        for win in tile_windows(full.width, full.height, s.grid, s.overlap):
            out.invokes += 1
            found += [_to_frame(f, win, full.size) for f in self._detect(full.crop(win))]
        return _best(found, s.threshold, name)


def extend(result: FrameResult, found: Sequence[Detection], ms: float) -> FrameResult:
    """``result`` with the second look's boxes added: scores only rise, boxes only add.

    The label, species and score are recomputed as the pipeline does (best box; a named
    species' confidence for an animal), so a found box makes the frame a keep or an alert
    under the policy and nothing the first pass had is lost.
    """
    stages = {**result.stages_ms, "second_look": ms}
    if not found:
        return replace(result, stages_ms=stages)
    detections = tuple(sorted((*result.detections, *found), key=lambda d: -d.conf))
    max_scores = dict(result.max_scores)
    for d in found:
        max_scores[d.category] = max(max_scores.get(d.category, 0.0), d.conf)
        if d.species is not None:
            max_scores[d.species] = max(max_scores.get(d.species, 0.0), d.species_conf or 0.0)
    top = detections[0]
    named = [d for d in detections if d.species is not None]
    best = max(named, key=lambda d: d.species_conf or 0.0) if named else None
    score = top.conf
    if top.category == "animal" and best is not None and best.species_conf is not None:
        score = best.species_conf
    return replace(result, label=top.category, species=best.species if best else None,
                   score=score, detections=detections, max_scores=max_scores,
                   stages_ms=stages)
