"""``camtrap eval --within-site``: a site head trained on part of one camera's frames, judged on
the rest of that camera's frames.

Why apart from ``--loso``: a head is trained *per site* (``camtrap models adapt`` on the
frames rangers labelled at that trap), so the question it must answer is "does it tell this
scene empty from this scene with an animal", not "does it transfer to another camera".
Leave-one-source-out answers the second question; this answers the first.

Why events and not frames: a trap shoots bursts, and the frames of one burst are near
copies of each other (same light, same animal a few pixels further). A random frame split
puts siblings on both sides and measures memory, not separation (issue 13's 27/13 split of
one camera did that). So frames are grouped into *events* — frames of one camera less than
:data:`EVENT_GAP_S` apart by their EXIF time, or each frame alone when it has none — and the
split is leave-one-event-out: deterministic (no seed to vary), every frame held out once, and
no held-out frame has a sibling in training.

A camera is the ``source`` column's path without the file name (``owner/repo: a/b/c.jpg`` →
``repo: a/b``), else the file's folder. A camera is evaluated when it has at least
``min_examples`` empty and animal frames and empties in at least two events (one to train on
while the other is held out); the others are listed with their counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

EVENT_GAP_S = 60.0
"""Frames of one camera closer than this (EXIF time) are one event (a burst, a pass)."""
_EXIF_DATETIME = 306
_EXIF_DATETIME_ORIGINAL = 36867
_EXIF_SUB_IFD = 0x8769

Item = tuple[str, Any, Any]
"""One analysed frame: (file, Truth, FrameResult)."""
Scorer = Callable[[Item], float]
"""A trained head as a function: a frame → P(empty) (or a score read the same way)."""
Fitter = Callable[[Sequence[Item]], tuple[Scorer, float]]
"""Train a head on labelled frames → (scorer, threshold: empty at or above); raises
ValueError (``LabelError``) when the frames cannot make a head."""


def camera_of(source: str, name: str) -> str:
    """The camera a frame came from: the ``source`` column without its file name and owner,
    else the file's folder, else ``-``."""
    if source.strip():
        repo, _, path = source.strip().partition(":")
        folder = path.strip().rsplit("/", 1)[0] if "/" in path else ""
        return f"{repo.rsplit('/', 1)[-1]}: {folder}" if folder else repo.rsplit("/", 1)[-1]
    parent = Path(name).parent.as_posix()
    return parent if parent not in ("", ".") else "-"


def exif_time(path: Path) -> float | None:
    """The frame's EXIF capture time (seconds, naive local clock), None when absent or bad.

    Read from the header only (Pillow opens lazily); any failure means "no time", which
    makes the frame an event of its own: never a reason to fail the evaluation.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            raw = exif.get_ifd(_EXIF_SUB_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(
                _EXIF_DATETIME)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    if not isinstance(raw, str):
        return None
    try:
        return dt.datetime.strptime(raw.strip()[:19], "%Y:%m:%d %H:%M:%S").replace(
            tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def group_events(times: Sequence[float | None], gap: float = EVENT_GAP_S) -> list[int]:
    """Event number per frame of one camera: frames with times chained less than ``gap``
    apart share one; a frame without a time is an event of its own."""
    order = sorted((t, i) for i, t in enumerate(times) if t is not None)
    out = [-1] * len(times)
    event = -1
    last: float | None = None
    for t, i in order:
        if last is None or t - last >= gap:
            event += 1
        out[i] = event
        last = t
    for i, when in enumerate(times):
        if when is None:
            event += 1
            out[i] = event
    return out


def embedding_fitter(target_recall: float, min_examples: int,
                     embedding: dict[str, Any] | None) -> Fitter:
    """The whole-frame head exactly as ``models adapt`` trains it, as a :data:`Fitter`."""
    from edge_app.tools.head_training import TrainingSet, train_head

    def fit(items: Sequence[Item]) -> tuple[Scorer, float]:
        X = np.array([r.embedding for _, _, r in items], np.float32)
        head = train_head(TrainingSet(X, tuple(t.label for _, t, _ in items)),
                          target_recall=target_recall, min_examples=min_examples,
                          embedding=embedding)
        return (lambda item: head.empty_prob(item[2].embedding)), head.threshold

    return fit


def novelty_fitter(tiles_of: Callable[[Item], NDArray[np.float32]], target_recall: float,
                   min_examples: int) -> Fitter:
    """A novelty head (:mod:`edge_app.trap.detect.site_features`) as a :data:`Fitter`: the
    training empties' tiles are the prototypes, and the threshold keeps ``target_recall`` of
    the training non-empty frames (scored against those prototypes, which they are not part
    of: no frame is compared with itself).

    Args:
        tiles_of: a frame's (T, D) unit tile embeddings; the whole-frame embedding as one
            tile (``embedding[None]``) makes the "nearest empty frame" head, which costs no
            invoke beyond the embedding the trap already computes.

    Its score reads like P(empty): ``1 − novelty / 2`` (novelty is in [0, 2]).
    """
    from edge_app.tools.head_training import check_counts
    from edge_app.trap.detect.site_features import novelty_threshold, tile_novelty

    def fit(items: Sequence[Item]) -> tuple[Scorer, float]:
        check_counts([t.label for _, t, _ in items], min_examples)
        protos = np.array([tiles_of(i) for i in items if i[1].label == "empty"], np.float32)
        nonempty = np.array([tile_novelty(tiles_of(i), protos) for i in items
                             if i[1].label != "empty"], np.float64)
        thr = novelty_threshold(nonempty, target_recall)
        return (lambda item: 1.0 - tile_novelty(tiles_of(item), protos) / 2.0), 1.0 - thr / 2.0

    return fit


@dataclasses.dataclass(slots=True)
class _Tally:
    """One camera's (or the pooled) counts."""

    animals: int = 0
    animals_kept: int = 0
    animals_kept_no_head: int = 0
    animals_head_keeps: int = 0
    empties: int = 0
    empties_discarded: int = 0
    empties_discarded_no_head: int = 0
    empties_head_calls_empty: int = 0
    folds: int = 0
    folds_without_head: int = 0

    def add(self, other: _Tally) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def figures(self) -> dict[str, Any]:
        def rate(k: int, n: int) -> float | None:
            return round(k / n, 4) if n else None

        return {**dataclasses.asdict(self),
                "animal_kept_rate": rate(self.animals_kept, self.animals),
                "empty_discard_rate": rate(self.empties_discarded, self.empties),
                "animal_kept_rate_no_head": rate(self.animals_kept_no_head, self.animals),
                "empty_discard_rate_no_head": rate(self.empties_discarded_no_head,
                                                   self.empties)}


def within_site(results: Sequence[tuple[str, Any, Any]], folder: Path, policy: Any,
                fitters: dict[str, Fitter], min_examples: int,
                gap: float = EVENT_GAP_S) -> dict[str, Any]:
    """Leave-one-event-out per camera, for each head kind in ``fitters`` (see the module).

    Args:
        results: (file, Truth with ``camera``, FrameResult or None) per analysed frame.
        folder: where the files are (for their EXIF times).
        policy: the PolicyConfig the verdicts use.
        fitters: head kind → how to train it (e.g. ``{"whole_frame": ...}``).
        min_examples: fewest empty and animal frames a camera needs to be evaluated.
        gap: event gap in seconds.

    Returns:
        ``cameras`` (per camera: counts, events, and per head kind the figures),
        ``skipped`` (cameras without enough frames, with their counts), ``pooled`` (per head
        kind, over the evaluated cameras) and ``targets`` (issue 13's goal per head kind).
    """
    # The trap's own fusion (not evaluate.judge: evaluate imports this module).
    from edge_app.trap.detect.policy import decide

    by_cam: dict[str, list[tuple[str, Any, Any]]] = {}
    for item in results:
        if item[2] is not None:
            by_cam.setdefault(item[1].camera, []).append(item)
    cameras: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    pooled = {kind: _Tally() for kind in fitters}
    for cam in sorted(by_cam):
        items = by_cam[cam]
        events = group_events([exif_time(folder / name) for name, _, _ in items], gap)
        labels = [t.label for _, t, _ in items]
        counts = {lab: labels.count(lab) for lab in ("empty", "animal", "person", "vehicle")}
        empty_events = {e for e, lab in zip(events, labels, strict=True) if lab == "empty"}
        row: dict[str, Any] = {"camera": cam, "frames": len(items), "counts": counts,
                               "events": len(set(events)), "empty_events": len(empty_events)}
        if (counts["empty"] < min_examples or counts["animal"] < min_examples
                or len(empty_events) < 2):
            skipped.append(row)
            continue
        for kind, fit in fitters.items():
            tally = _loeo(items, events, policy, fit, decide)
            row[kind] = tally.figures()
            pooled[kind].add(tally)
        cameras.append(row)
    pooled_figs = {kind: t.figures() for kind, t in pooled.items()}
    targets = {kind: bool(cameras) and all(
        (c[kind]["animal_kept_rate"] or 0.0) >= 0.9
        and (c[kind]["empty_discard_rate"] or 0.0) >= 0.9 for c in cameras)
        for kind in fitters}
    return {"event_gap_s": gap, "min_examples": min_examples, "cameras": cameras,
            "skipped": skipped, "pooled": pooled_figs,
            "targets_animals_ge_90_and_empties_ge_90": targets}


def _loeo(items: list[tuple[str, Any, Any]], events: list[int], policy: Any, fit: Fitter,
          decide: Callable[..., Any]) -> _Tally:
    """One camera, one head kind: each event held out once, the head trained on the rest."""
    t = _Tally()
    for ev in sorted(set(events)):
        held = [i for i, e in enumerate(events) if e == ev]
        train = [i for i, e in enumerate(events) if e != ev]
        t.folds += 1
        try:
            score, threshold = fit([items[i] for i in train])
        except ValueError:
            score, threshold = None, 0.0
            t.folds_without_head += 1
        for i in held:
            _name, truth, r = items[i]
            base = decide([r], policy)
            head_empty = True
            if score is not None:
                pe = score(items[i])
                head_empty = pe >= threshold
                r = dataclasses.replace(r, empty_prob=pe, head_empty=head_empty)
            row = decide([r], policy)
            if truth.label == "animal":
                t.animals += 1
                t.animals_kept += row.outcome != "discard"
                t.animals_kept_no_head += base.outcome != "discard"
                t.animals_head_keeps += not head_empty
            elif truth.label == "empty":
                t.empties += 1
                t.empties_discarded += row.outcome == "discard"
                t.empties_discarded_no_head += base.outcome == "discard"
                t.empties_head_calls_empty += head_empty
    return t


def format_within_site(ws: dict[str, Any], out: TextIO) -> None:
    """The within-site table: per camera and head kind, with the plain pipeline beside it."""
    def frac(k: int, n: int) -> str:
        return f"{k}/{n} {100 * k / n:5.1f}%" if n else "n/a"

    w = out.write
    w(f"\nwithin-site (per camera, leave one event out; events = frames < "
      f"{ws['event_gap_s']:g} s apart; ≥ {ws['min_examples']} empty and animal frames and "
      "empties in ≥ 2 events to be evaluated):\n")
    kinds = list(ws["pooled"])
    for c in ws["cameras"]:
        w(f"{c['camera']}: {c['frames']} frames in {c['events']} events (empties in "
          f"{c['empty_events']}); " + ", ".join(f"{k} {v}" for k, v in c["counts"].items())
          + "\n")
        for kind in kinds:
            f = c[kind]
            w(f"  {kind:12s} animals kept {frac(f['animals_kept'], f['animals']):14s} "
              f"(no head {f['animals_kept_no_head']}, head alone {f['animals_head_keeps']})"
              f"  empties discarded {frac(f['empties_discarded'], f['empties']):14s} "
              f"(no head {f['empties_discarded_no_head']}, head alone "
              f"{f['empties_head_calls_empty']})  folds without a head "
              f"{f['folds_without_head']}/{f['folds']}\n")
    for kind in kinds:
        p = ws["pooled"][kind]
        met = ws["targets_animals_ge_90_and_empties_ge_90"][kind]
        w(f"pooled {kind:12s} animals kept {frac(p['animals_kept'], p['animals'])}, empties "
          f"discarded {frac(p['empties_discarded'], p['empties'])}; goal (≥ 90 % and ≥ 90 % "
          f"on every camera) {'met' if met else 'NOT met'}\n")
    if ws["skipped"]:
        w("not evaluated (too few empty or animal frames, or empties in one event): "
          + "; ".join(f"{c['camera']} ({c['counts']['empty']} empty, "
                      f"{c['counts']['animal']} animal)" for c in ws["skipped"]) + "\n")

