"""Per-frame measurements shared by ``bench detect`` and ``bench detect --live``."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_app.core.events import FrameResult


def alloc_peak_kb(p: Any, images: list[tuple[str, Any]]) -> float:
    """Median over frames of the peak Python/numpy memory allocated while analysing one.

    tracemalloc sees numpy's buffers and Python objects, not Pillow's own image memory (the
    resized letterbox and crops) nor the interpreter's arena; it is the part of the hot path
    our code controls, and a regression there (a full-frame float copy) shows up at once.
    ``images`` are (name, what ``Pipeline.analyse`` takes: bytes, an array or a Frame).
    """
    import tracemalloc

    peaks = []
    tracemalloc.start()
    try:
        for _, data in images:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            p.analyse(data)
            peaks.append((tracemalloc.get_traced_memory()[1] - base) / 1024)
    finally:
        tracemalloc.stop()
    return statistics.median(peaks) if peaks else 0.0


def classifier_passes(r: FrameResult) -> int:
    """How many classifier passes a frame result needed (crops, or the whole frame)."""
    from edge_app.trap.detect.heads import MAX_CLASSIFIED

    if not r.detections:
        return 1  # the whole-frame pass ran and found nothing
    whole = r.detections[0].bbox == (0.0, 0.0, 1.0, 1.0) and len(r.detections) == 1
    if whole:
        return 1
    animals = sum(d.category == "animal" for d in r.detections)
    return min(animals, MAX_CLASSIFIED)
