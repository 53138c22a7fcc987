"""Training the ``nearest_empty`` site head (issue 13, item 2): the site's labelled empty
frames are the head; a frame is "empty" when it is close enough to one of them.

Why this design: measured with ``camtrap eval --within-site`` (one burst held out at a time,
:mod:`edge_app.tools.within_site`), the softmax head on the whole-frame embedding discarded 4 of
the Peru camera's 9 held-out empty frames, this one 6, both keeping 32 of 33 animals, and it
costs no invoke beyond the embedding the trap already computes. Per-tile versions did no
better for 4–9 more invokes. The goal (≥ 90 % / ≥ 90 % within a site) is not met on that
camera: its three empty bursts were shot in three different lights.

Threshold: the novelty (1 − cosine similarity to the nearest empty frame) at or below which
a frame counts as empty, chosen so that ``target_recall`` of the training non-empty frames
stay above it (:func:`edge_app.trap.detect.site_features.novelty_threshold`); non-empty
frames are never prototypes, so no frame is compared with itself.

Reported figures are leave-one-*burst*-out (frames of one burst are near-copies; a frame split
would leak them): for each burst, the head is rebuilt from the other bursts' frames — its
empties and its threshold — and judges the held-out burst.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.tools.head_training import LabelError, TrainingSet, check_counts
from edge_app.trap.detect.site_features import novelty_threshold
from edge_app.trap.detect.site_head import HEAD_FORMAT, MAX_EMPTIES, NEAREST_VERSION, SiteHead

THRESHOLD_MARGIN = 1e-5
"""Added to the score threshold (see :func:`train_nearest_empty`)."""


def _novelty(protos: NDArray[np.float64], X: NDArray[np.float64]) -> NDArray[np.float64]:
    """1 − max cosine similarity of each row of ``X`` to the prototypes (1 with none)."""
    if protos.shape[0] == 0 or X.shape[0] == 0:
        return np.ones(X.shape[0])
    out: NDArray[np.float64] = 1.0 - (X @ protos.T).max(axis=1)
    return out


def _fit(X: NDArray[np.float64], empty: NDArray[np.bool_], target: float
         ) -> tuple[NDArray[np.float64], float]:
    """Prototypes and the novelty threshold from these frames."""
    protos = X[empty]
    return protos, novelty_threshold(_novelty(protos, X[~empty]), target)


def held_out_figures(X: NDArray[np.float64], labels: Sequence[str], bursts: Sequence[int],
                     target: float) -> dict[str, Any]:
    """Leave-one-burst-out shares (the module docstring): non-empty and animal frames kept,
    empty frames called empty; None where a burst's training part has no empty frame."""
    y = np.array(labels)
    b = np.asarray(bursts)
    empty = y == "empty"
    kept_ne: list[bool] = []
    kept_an: list[bool] = []
    called: list[bool] = []
    folds = 0
    for g in sorted(set(bursts)):
        test = b == g
        train = ~test
        if not empty[train].any() or not (~empty[train]).any():
            continue
        folds += 1
        protos, thr = _fit(X[train], empty[train], target)
        nov = _novelty(protos, X[test])
        for n, lab in zip(nov, y[test], strict=True):
            if lab == "empty":
                called.append(bool(n <= thr))
            else:
                kept_ne.append(bool(n > thr))
                if lab == "animal":
                    kept_an.append(bool(n > thr))

    def share(v: list[bool]) -> float | None:
        return round(sum(v) / len(v), 4) if v else None

    return {"method": "leave one burst out", "folds": folds, "repeats": 1,
            "bursts": len(set(bursts)), "scored_frames": len(kept_ne) + len(called),
            "nonempty_kept": share(kept_ne), "animal_kept": share(kept_an),
            "empty_discarded": share(called)}


def train_nearest_empty(ts: TrainingSet, *, target_recall: float, min_examples: int,
                        embedding: dict[str, Any] | None = None,
                        bursts: Sequence[int] | None = None) -> SiteHead:
    """The ``nearest_empty`` head of these frames.

    Args:
        ts: unit embeddings and labels.
        target_recall: share of the training non-empty frames the threshold keeps.
        min_examples: fewest ``empty`` and ``animal`` frames.
        embedding: the embedding card's name, sha256 and dims, recorded in the head.
        bursts: burst number per frame for the held-out figures (default: each frame its own,
            which flatters the figures when frames of one burst are labelled).

    Raises:
        LabelError: too few examples, more empty frames than a head may carry, or a bad
            target.
    """
    if not 0.5 <= target_recall <= 1.0:
        raise LabelError(f"target recall must be in [0.5, 1], got {target_recall}")
    counts = check_counts(ts.labels, min_examples)
    if counts["empty"] > MAX_EMPTIES:
        raise LabelError(f"{counts['empty']} empty frames: a nearest_empty head carries at "
                         f"most {MAX_EMPTIES}; label fewer, from different times of day")
    # The empties at the precision the head file stores them (float16), so the threshold is
    # the one the trap's comparisons meet; the frames scored against them as the trap has them.
    X = ts.X.astype(np.float64)
    empty = np.array([lab == "empty" for lab in ts.labels])
    X[empty] = X[empty].astype(np.float16).astype(np.float64)
    protos, thr = _fit(X, empty, target_recall)
    groups = list(bursts) if bursts is not None else list(range(len(ts.labels)))
    cv = held_out_figures(X, ts.labels, groups, target_recall)
    summary: dict[str, Any] = {
        "frames": len(ts.labels),
        "counts": {c: counts.get(c, 0) for c in ("empty", "animal", "person", "vehicle")},
        "min_examples": min_examples,
        "cv": cv,
        "warnings": [] if bursts is not None else [
            "no burst grouping (frames without capture times): the held-out figures treat "
            "frames of one burst as independent and are optimistic"],
    }
    if ts.digests:
        summary["images_sha256_16"] = sorted(ts.digests)
    dims = X.shape[1]
    # Score space: empty at (1 − novelty / 2) ≥ threshold. The margin is on the keeping side:
    # the trap's float32 products must not tip a training animal over it.
    threshold = 1.0 - thr / 2.0 + THRESHOLD_MARGIN
    meta = {
        "format": HEAD_FORMAT,
        "version": NEAREST_VERSION,
        "kind": "nearest_empty",
        "classes": ["empty"],
        "threshold": threshold,
        "target_recall": target_recall,
        "embedding": embedding or {},
        "training": summary,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return SiteHead(np.zeros((dims, 1), np.float32), np.zeros(1, np.float32),
                    np.zeros(dims, np.float32), ("empty",), threshold, meta,
                    empties=protos.astype(np.float32))
