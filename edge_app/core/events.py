"""Frozen values passed between stages. Stages share nothing else.

Flow: :class:`TriggerEvent` (trigger) → :class:`Burst` of :class:`Frame` (capture) →
:class:`FrameResult` per frame (detect) → :class:`Verdict` (decide) → stored event (store).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Category = Literal["animal", "person", "vehicle"]
Label = Literal["empty", "animal", "person", "vehicle"]
Species = Literal["leopard", "tiger", "other_big_cat"]
Outcome = Literal["alert", "keep", "discard"]

CATEGORIES: tuple[Category, ...] = ("animal", "person", "vehicle")
SPECIES: tuple[Species, ...] = ("leopard", "tiger", "other_big_cat")


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """One accepted PIR edge (after debounce and hold-off).

    Attributes:
        number: per-process trigger counter, for logs.
        mono: monotonic time of the edge (for latency).
        wall: wall time of the edge (the event's timestamp).
        source: what fired, e.g. ``pir:17`` or ``mcu``.
        time_source: what ``wall`` was read from when it is not the Pi's own clock: ``rtc``
            (the supervisor MCU's RTC stamped the PIR edge); empty for the Pi's clock, whose
            source (``gps``, ``ntp``, ``none``) the store asks for when it records the event.
    """

    number: int
    mono: float
    wall: float
    source: str
    time_source: str = ""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: JPEG bytes (a replayed file), raw pixels (the Pi camera), or both.

    Two shapes, one type. A replayed file arrives as ``jpeg`` and reaches the detector and the
    card byte for byte. The Pi camera hands over arrays (the *live path*): ``pixels`` goes to
    the detector without an encode and a decode, and ``jpeg`` stays empty until the store
    encodes the one frame it keeps. Encoding every frame at capture, as the first adapter
    did, cost more CPU than the rest of the pre-processing together and was thrown away for
    every discarded trigger.

    Attributes:
        jpeg: the encoded image as the camera produced it (stored as-is if chosen); empty when
            the frame has ``pixels`` only.
        mono: monotonic capture time.
        wall: wall capture time.
        index: position in the burst (pre-trigger frames first, from 0).
        pre_trigger: True for frames taken from the ring buffer before the edge.
        name: where the frame came from (file name for replay), for logs and tests.
        pixels: the upright frame as uint8, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBX (the
            fourth byte ignored), owned by this frame (never a camera buffer that is reused);
            None for a JPEG-only frame. Pre-trigger frames of the Pi camera carry the smaller
            ring-buffer (lores) image here.
        lores: a small greyscale ``(h, w)`` uint8 copy of the same frame (the camera's lores
            stream, Y plane), for the motion gate; None when the camera has none.
        metadata: what the camera reported for this frame (``Lux``, ``ExposureTime`` in µs,
            ``AnalogueGain``...), already checked for finite, in-range values; empty when
            unknown.
    """

    jpeg: bytes
    mono: float
    wall: float
    index: int
    pre_trigger: bool
    name: str = ""
    pixels: NDArray[np.uint8] | None = field(default=None, compare=False, repr=False)
    lores: NDArray[np.uint8] | None = field(default=None, compare=False, repr=False)
    metadata: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of ``pixels``, or None for a JPEG-only frame."""
        if self.pixels is None:
            return None
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


@dataclass(frozen=True, slots=True)
class Burst:
    """The frames of one trigger, pre-trigger frames first."""

    trigger: TriggerEvent
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class Detection:
    """One box, mapped to camtrap's vocabulary.

    Attributes:
        category: ``animal``, ``person`` or ``vehicle``.
        conf: detector confidence in [0, 1].
        bbox: normalised ``[x_min, y_min, width, height]`` in the upright original image.
        cls: the model's own class name (e.g. COCO ``bear``).
        species: ``leopard``/``tiger``/``other_big_cat`` from the crop classifier, or None.
        species_conf: the classifier's confidence for ``species``, or None.
    """

    category: Category
    conf: float
    bbox: tuple[float, float, float, float]
    cls: str
    species: Species | None = None
    species_conf: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``detections[]`` item of ARCHITECTURE §3."""
        return {
            "category": self.category,
            "conf": round(self.conf, 4),
            "bbox": [round(v, 4) for v in self.bbox],
            "class": self.cls,
            "species": self.species,
            "species_conf": None if self.species_conf is None else round(self.species_conf, 4),
        }


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the pipeline saw in one frame.

    Attributes:
        label: top category, ``empty`` when nothing passed its threshold.
        species: best species over boxes and the whole-frame pass, or None.
        score: confidence of ``label`` (of the species when one is named), 0 for empty.
        detections: boxes above threshold, best first.
        max_scores: the highest raw score seen per category and species, even below threshold;
            the decision policy uses these to tell "confidently empty" from "unsure".
        timings_ms: stage name → milliseconds (``decode``, ``detect``, ``classify``: the
            ``detect --json`` contract).
        stages_ms: finer stage timings for ``camtrap bench`` (``decode``, ``preprocess``,
            ``invoke``, ``postprocess``, ``classify``; ``gate`` for a gated frame); not part
            of the JSON.
        gated: True when the motion gate found no change against the pre-trigger frame and
            this result is that frame's, taken over without running the models.
        motion: fraction of the small greyscale copy that changed against the pre-trigger
            frame (None when the gate did not look at this frame).
        empty_prob: the site head's P(empty), None without a head.
        head_empty: the site head's vote (P(empty) at or above its threshold), None without
            a head.
        background_sim: highest cosine similarity to the trap's known empty scenes, None
            while the background abstains (off, or too few scenes known).
        background_known: the background's vote (similarity at or above
            ``background.min_similarity``), None while it abstains.
        embedding: the frame's unit embedding (a copy), None when no stage needed it; kept
            so the daemon can learn a discarded frame as background without computing it
            twice. Not part of any JSON.
    """

    label: Label
    species: Species | None
    score: float
    detections: tuple[Detection, ...]
    max_scores: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    gated: bool = False
    motion: float | None = None
    empty_prob: float | None = None
    head_empty: bool | None = None
    background_sim: float | None = None
    background_known: bool | None = None
    embedding: Any = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``camtrap detect --json`` object without the ``file`` key."""
        return {
            "label": self.label,
            "species": self.species,
            "score": round(self.score, 4),
            "detections": [d.to_json() for d in self.detections],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for a whole trigger.

    Attributes:
        outcome: ``alert``, ``keep`` or ``discard`` (ARCHITECTURE §4).
        label: the trigger's category (``empty`` for a discard).
        species: the trigger's species, or None.
        score: confidence of the label/species.
        best_index: index into the burst's frames of the frame whose boxes the event carries,
            or -1 when no frame could be analysed.
        results: one result per frame (None where the frame could not be decoded).
        reason: one line on why, for logs and the catalogue.
        kept_by: the stages that said "not empty" (``detector``, ``classifier``, ``head``,
            ``background``, ``motion``, ``unreadable``), in that order; empty for a discard.
    """

    outcome: Outcome
    label: Label
    species: Species | None
    score: float
    best_index: int
    results: tuple[FrameResult | None, ...]
    reason: str = ""
    kept_by: tuple[str, ...] = ()
