"""A trigger's burst: the motion gate in front of the per-frame models.

Apart from :mod:`edge_app.trap.detect.pipeline` (which runs the models on one frame) because
the gate is a policy over a burst: which frame is the reference, which frames may take its
result instead of an inference.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edge_app.core.errors import ImageError
from edge_app.core.events import Burst, Frame, FrameResult, Verdict
from edge_app.trap.detect.preprocess import changed_fraction, grey_from_lores, grey_thumbnail

if TYPE_CHECKING:
    from edge_app.trap.detect.pipeline import Pipeline

log = logging.getLogger(__name__)


def analyse_burst(pipeline: Pipeline, frames: Sequence[Frame]) -> list[FrameResult | None]:
    """Analyse a trigger's frames, skipping unchanged ones when the motion gate is on.

    The reference is the last pre-trigger frame (the scene just before the PIR fired).
    It is always analysed. With ``detector.motion_gate`` on, every other frame is first
    compared with it on a small greyscale copy; a frame where fewer than
    ``motion_min_fraction`` of the pixels changed by more than ``motion_pixel_delta``
    grey levels shows the same scene, so it *takes the reference's result* (marked
    ``gated``) instead of running the detector and the classifier again.

    Taking the reference's result, rather than calling the frame empty, is what makes
    the gate safe: an animal standing still in front of the camera since before the
    trigger is in the reference's result, so it is in the skipped frames' too.

    Args:
        pipeline: the loaded models (its ``cfg`` says whether the gate is on).
        frames: the burst, pre-trigger frames first (as :func:`capture_burst` builds it).

    Returns:
        One result per frame, ``None`` where the frame could not be decoded or was refused
        at the image door (more pixels than ``detector.max_pixels``), logged. ``None`` is
        never evidence of emptiness: a trigger whose frames are all ``None`` is kept
        (:func:`~edge_app.trap.detect.policy.decide`), so a camera mode that writes
        oversized frames loses nothing, it only stops filtering.
    """
    n = len(frames)
    results: list[FrameResult | None] = [None] * n
    ref_i = max((i for i, f in enumerate(frames) if f.pre_trigger), default=-1)
    gate = pipeline.cfg.motion_gate and ref_i >= 0
    ref_grey: NDArray[np.int16] | None = None
    # The camera's own greyscale copies (its lores stream) when every frame has one: no
    # conversion of the full frame; otherwise every frame is compared the same other way.
    lores = all(f.lores is not None for f in frames)
    order = ([ref_i] if ref_i >= 0 else []) + [i for i in range(n) if i != ref_i]
    for i in order:
        f = frames[i]
        try:
            prep = pipeline.prepare_frame(f)
        except ImageError as e:
            log.warning("frame %d (%s) unreadable: %s", f.index, f.name or "camera", e)
            continue
        if not gate:
            results[i] = pipeline.infer(prep)
            continue
        t0 = time.perf_counter()
        if lores and f.lores is not None:
            grey = grey_from_lores(f.lores, pipeline.cfg.motion_size)
        else:
            grey = grey_thumbnail(prep.decoded.image, pipeline.cfg.motion_size)
        gate_ms = (time.perf_counter() - t0) * 1e3
        if i == ref_i:
            ref_grey = grey
            results[i] = pipeline.infer(prep)
            continue
        ref = results[ref_i]
        motion = (1.0 if ref_grey is None or ref is None
                  else changed_fraction(grey, ref_grey, pipeline.cfg.motion_pixel_delta))
        if ref is not None and motion < pipeline.cfg.motion_min_fraction:
            decode_ms = prep.decode_ms + prep.letterbox_ms
            results[i] = dataclasses.replace(
                ref, gated=True, motion=motion,
                timings_ms={"decode": decode_ms, "detect": 0.0, "classify": 0.0},
                stages_ms={"decode": prep.decode_ms, "preprocess": prep.letterbox_ms,
                           "gate": gate_ms})
            continue
        results[i] = dataclasses.replace(pipeline.infer(prep), motion=motion)
    return results


def slim_burst(burst: Burst, verdict: Verdict) -> Burst:
    """The burst with the pixel arrays of every frame but the one the store keeps dropped.

    A live-path frame holds its full-size pixels (2.8 MB at 1280×720) until the store has
    JPEG-encoded the kept one; between detection and the store only that frame's pixels are
    needed. The kept frame is chosen as the store chooses it (the verdict's best frame, else
    the first frame after the trigger, else the first). JPEG-only frames are unchanged.
    """
    frames = burst.frames
    keep = verdict.best_index
    if not 0 <= keep < len(frames):
        keep = next((i for i, f in enumerate(frames) if not f.pre_trigger), 0)
    if all(f.pixels is None or i == keep for i, f in enumerate(frames)):
        return burst
    return dataclasses.replace(burst, frames=tuple(
        f if i == keep or f.pixels is None else dataclasses.replace(f, pixels=None)
        for i, f in enumerate(frames)))
