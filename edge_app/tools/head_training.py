"""Training a site head on labelled frames of one site (``camtrap models adapt``, ``eval --loso``).

The head itself (file format, scoring) is :mod:`edge_app.trap.detect.site_head`; the trap never
trains. Training (:func:`train_head`), all numpy, deterministic:

* class weights are balanced (each class carries the same total weight), except that a class
  with fewer than ``min_examples`` frames is weighted as if it had ``min_examples``: one
  labelled vehicle must not pull the head around;
* the penalty is chosen from :data:`LAMBDAS` by repeated stratified k-fold cross-validation
  (balanced log-loss of the out-of-fold P(empty): the question the decision asks);
* the **threshold** on P(empty) is chosen on the same out-of-fold predictions so that at least
  ``target_recall`` of the *non-empty* frames (animals, people, vehicles) fall below it: the
  head then keeps that share of them on frames it has not been trained on. It is picked on
  non-empty frames only, so a site with few labelled empties gets a head that rarely says
  "empty" (it keeps more) instead of one that drops animals.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.tools.adapt_options import MIN_EXAMPLES, TARGET_RECALL
from edge_app.trap.detect.site_head import (
    CLASSES,
    EMPTY,
    HEAD_FORMAT,
    HEAD_VERSION,
    SiteHead,
    softmax,
)

log = logging.getLogger(__name__)

REQUIRED = ("empty", "animal")
"""Classes the decision depends on: ``models adapt`` refuses to train without enough of each."""
LAMBDAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
"""L2 penalties tried by cross-validation (on unit-length inputs)."""
DEFAULT_TARGET_RECALL = TARGET_RECALL
DEFAULT_MIN_EXAMPLES = MIN_EXAMPLES
CV_FOLDS = 5
CV_REPEATS = 2
MAX_ITER = 800


class LabelError(ValueError):
    """A labels CSV or a training set that cannot make a head (the message says why)."""


# --------------------------------------------------------------------------- training


def _class_weights(y: NDArray[np.intp], k: int, min_examples: int) -> NDArray[np.float64]:
    """Per-sample weights summing to 1: balanced classes, rare classes capped (see module)."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    per_class = np.where(present, 1.0 / np.maximum(counts, max(1, min_examples)), 0.0)
    w = per_class[y]
    out: NDArray[np.float64] = w / w.sum()
    return out


def fitsoftmax(X: NDArray[np.float64], y: NDArray[np.intp], k: int, lam: float,
                min_examples: int = DEFAULT_MIN_EXAMPLES,
                max_iter: int = MAX_ITER) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                                   NDArray[np.float64]]:
    """Weighted, L2-penalised softmax regression by accelerated gradient descent.

    Deterministic (full batch, from zero). Classes absent from ``y`` get a bias of −30, so
    the head never predicts what it has never seen.

    Returns:
        (mean, W, b): input centring (D,), weights (D, k), bias (k,).
    """
    d = X.shape[1]
    mean = X.mean(axis=0)
    Xc = X - mean
    sw = _class_weights(y, k, min_examples)
    present = np.bincount(y, minlength=k) > 0
    T = np.eye(k)[y]
    # Lipschitz constant of the gradient: the softmax Hessian is ≤ ½·XᵀSX (+ λ).
    lip = 0.5 * float(np.linalg.norm(Xc * np.sqrt(sw)[:, None], 2)) ** 2 + lam
    step = 1.0 / lip
    W = np.zeros((d, k))
    b = np.where(present, 0.0, -30.0)
    Wv, bv = W.copy(), b.copy()
    for it in range(max_iter):
        P = softmax(Xc @ Wv + bv)
        G = (P - T) * sw[:, None]
        gW = Xc.T @ G + lam * Wv
        gb = G.sum(axis=0)
        gb[~present] = 0.0
        Wn = Wv - step * gW
        bn = bv - step * gb
        mom = it / (it + 3.0)
        Wv = Wn + mom * (Wn - W)
        bv = bn + mom * (bn - b)
        W, b = Wn, bn
        if float(np.abs(gW).max()) < 1e-7:
            break
    return mean, W, b


def _predict(model: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]],
             X: NDArray[np.float64]) -> NDArray[np.float64]:
    mean, W, b = model
    return softmax((X - mean) @ W + b)


def stratified_folds(y: NDArray[np.intp], k: int, seed: int) -> NDArray[np.intp]:
    """Fold index per sample: each class spread round-robin over the folds after a shuffle."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), np.intp)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # the next class starts where this one ended: balanced folds
    return folds


def threshold_for_recall(p_empty_nonempty: NDArray[np.float64], target: float) -> float:
    """Smallest P(empty) threshold that keeps ≥ ``target`` of these non-empty frames.

    The head votes "empty" at P(empty) ≥ threshold, so a frame is kept when its P(empty) is
    below it. With n scores sorted high to low, at most ⌊(1 − target)·n⌋ may reach the
    threshold; it is set just above the next one. Above 1 means "never empty".
    """
    s = np.sort(np.asarray(p_empty_nonempty, np.float64))[::-1]
    if s.size == 0:
        return 1.0 + 1e-6
    allowed = math.floor((1.0 - target) * s.size + 1e-9)
    if allowed >= s.size:
        return 0.0
    return float(s[allowed]) + 1e-6


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Embeddings (unit rows) with their labels, and where each came from."""

    X: NDArray[np.float32]
    labels: tuple[str, ...]
    files: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()


def check_counts(labels: Sequence[str], min_examples: int) -> Counter[str]:
    """Counts per class; raises when a required class has too few frames.

    Raises:
        LabelError: ``empty`` or ``animal`` has fewer than ``min_examples`` frames (names
            the class, its count and what to do).
    """
    counts = Counter(labels)
    unknown = sorted(set(counts) - set(CLASSES))
    if unknown:
        raise LabelError(f"unknown label(s) {', '.join(unknown)} (known: {', '.join(CLASSES)})")
    short = [f"{c} has {counts.get(c, 0)}" for c in REQUIRED if counts.get(c, 0) < min_examples]
    if short:
        raise LabelError(f"too few examples to train a head: {'; '.join(short)} (need ≥ "
                         f"{min_examples} of each of {' and '.join(REQUIRED)}; label more "
                         "frames, e.g. empty ones from different times of day, or lower "
                         "--min-examples)")
    return counts


def train_head(ts: TrainingSet, *, target_recall: float = DEFAULT_TARGET_RECALL,
               min_examples: int = DEFAULT_MIN_EXAMPLES, embedding: dict[str, Any] | None = None,
               seed: int = 0, folds: int = CV_FOLDS, repeats: int = CV_REPEATS) -> SiteHead:
    """Train a head, choose its penalty and threshold by cross-validation (see module).

    Args:
        ts: unit embeddings and labels (``empty``/``animal``/``person``/``vehicle``).
        target_recall: share of non-empty frames the head must keep, out of fold.
        min_examples: fewest frames of ``empty`` and of ``animal``.
        embedding: the embedding card's name, sha256 and dims, recorded in the head.
        seed: fold shuffling seed (training is otherwise deterministic).
        folds: k of the k-fold cross-validation.
        repeats: how many different k-fold splits are pooled.

    Raises:
        LabelError: too few examples (see :func:`check_counts`), or a bad target.
    """
    if not 0.5 <= target_recall <= 1.0:
        raise LabelError(f"target recall must be in [0.5, 1], got {target_recall}")
    counts = check_counts(ts.labels, min_examples)
    k = len(CLASSES)
    y = np.array([CLASSES.index(lab) for lab in ts.labels], np.intp)
    X = ts.X.astype(np.float64)
    n = len(y)
    nonempty = y != EMPTY
    # Out-of-fold P(empty) per penalty, pooled over the repeats.
    # A fold whose training part lacks empty or animal frames (possible only below 5 of a
    # class) says nothing about the head: its frames stay NaN for that repeat.
    oof: dict[float, NDArray[np.float64]] = {lam: np.full((repeats, n, k), np.nan)
                                             for lam in LAMBDAS}
    need = [CLASSES.index(c) for c in REQUIRED]
    for r in range(repeats):
        fold = stratified_folds(y, folds, seed + r)
        for f in range(folds):
            test = fold == f
            if not test.any() or not all((y[~test] == c).any() for c in need):
                continue
            for lam in LAMBDAS:
                model = fitsoftmax(X[~test], y[~test], k, lam, min_examples)
                oof[lam][r, test] = _predict(model, X[test])
    # The decision only asks "empty or not", so the penalty is judged on that: the balanced
    # binary log-loss of P(empty). (A 4-class loss would be dominated by the one vehicle whose
    # class was absent from its fold's training part and so got P ≈ 0.)
    sw = np.where(nonempty, 0.5 / max(1, int(nonempty.sum())),
                  0.5 / max(1, int((~nonempty).sum())))

    def loss(lam: float) -> float:
        pe = np.clip(oof[lam][:, :, EMPTY], 1e-12, 1.0 - 1e-12)
        ll = np.where(nonempty, -np.log1p(-pe), -np.log(pe))
        scored = ~np.isnan(ll)
        return float((np.where(scored, ll, 0.0) * sw).sum() / max(1, int(scored.any(1).sum())))

    losses = {lam: loss(lam) for lam in LAMBDAS}
    # Lowest loss; on a tie (within 1 %) the stronger penalty: the simpler head.
    low = min(losses.values())
    best = max(lam for lam in LAMBDAS if losses[lam] <= low * 1.01)
    pe = oof[best][:, :, EMPTY]

    def scores(mask: NDArray[np.bool_]) -> NDArray[np.float64]:
        v = pe[:, mask].ravel()
        out: NDArray[np.float64] = v[~np.isnan(v)]
        return out

    threshold = threshold_for_recall(scores(nonempty), target_recall)

    def share(mask: NDArray[np.bool_], empty_vote: bool) -> float | None:
        v = scores(mask)
        if v.size == 0:
            return None
        return round(float(((v >= threshold) if empty_vote else (v < threshold)).mean()), 4)

    cv = {
        "folds": folds,
        "repeats": repeats,
        "penalty": best,
        "log_loss": {str(lam): round(v, 4) for lam, v in losses.items()},
        "scored_frames": int(scores(np.ones(n, bool)).size),
        "nonempty_kept": share(nonempty, False),
        "animal_kept": share(y == CLASSES.index("animal"), False),
        "empty_discarded": share(~nonempty, True),
    }
    mean, W, b = fitsoftmax(X, y, k, best, min_examples)
    rare = sorted(c for c in CLASSES if 0 < counts.get(c, 0) < min_examples)
    summary: dict[str, Any] = {
        "frames": n,
        "counts": {c: counts.get(c, 0) for c in CLASSES},
        "min_examples": min_examples,
        "cv": cv,
        "warnings": [f"{c}: only {counts[c]} example(s), down-weighted; the head's own {c} "
                     "score is not to be trusted (it still counts as not empty)"
                     for c in rare],
    }
    if ts.digests:
        summary["images_sha256_16"] = sorted(ts.digests)
    meta = {
        "format": HEAD_FORMAT,
        "version": HEAD_VERSION,
        "classes": list(CLASSES),
        "threshold": threshold,
        "target_recall": target_recall,
        "embedding": embedding or {},
        "training": summary,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return SiteHead(W.astype(np.float32), b.astype(np.float32), mean.astype(np.float32),
                    CLASSES, threshold, meta)


def image_digest(data: bytes) -> str:
    """First 16 hex digits of an image's sha256: identifies training frames in a head."""
    return hashlib.sha256(data).hexdigest()[:16]


# --------------------------------------------------------------------------- labels CSV


@dataclass(frozen=True, slots=True)
class LabelRow:
    """One labelled frame of a labels CSV."""

    file: str
    label: str
    source: str = ""


def read_label_csv(path: Path, images_dir: Path) -> list[LabelRow]:
    """The rows of a ``file,label[,species,...,source]`` CSV, checked against ``images_dir``.

    ``file`` is relative to ``images_dir``; ``source`` (optional) names where the frame came
    from (a camera, a site) for ``camtrap eval --loso``. Other columns are ignored, so the
    shared field set's ``labels.csv`` and ``camtrap label``'s output both work.

    Raises:
        LabelError: unreadable file, missing columns, an unknown label, a file that is not in
            ``images_dir`` (or escapes it), or one file labelled twice differently. The message
            names the row and the value.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LabelError(f"{path}: cannot read labels CSV: {e}") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = {"file", "label"} - set(reader.fieldnames or ())
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need at "
                         "least file,label)")
    root = images_dir.resolve()
    rows: dict[str, LabelRow] = {}
    absent: list[str] = []
    for i, row in enumerate(reader, start=2):
        name = (row.get("file") or "").strip()
        label = (row.get("label") or "").strip()
        if not name:
            raise LabelError(f"{path}:{i}: empty file name")
        if label not in CLASSES:
            raise LabelError(f"{path}:{i}: unknown label {label!r} for {name} (known: "
                             f"{', '.join(CLASSES)})")
        target = (images_dir / name).resolve()
        if not target.is_relative_to(root):
            raise LabelError(f"{path}:{i}: {name} is outside {images_dir}")
        if not target.is_file():
            absent.append(name)
            continue
        prev = rows.get(name)
        if prev is not None and prev.label != label:
            raise LabelError(f"{path}:{i}: {name} is labelled both {prev.label} and {label}")
        rows[name] = LabelRow(name, label, (row.get("source") or "").strip())
    if absent:
        more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
        raise LabelError(f"{path}: {len(absent)} labelled file(s) not found in {images_dir}: "
                         f"{', '.join(absent[:3])}{more}")
    if not rows:
        raise LabelError(f"{path}: no labelled frames")
    return list(rows.values())


def source_of(row: LabelRow) -> str:
    """The row's source group: the ``source`` column's first word (``owner/repo:`` in the
    field set), else the file's top folder, else ``-``."""
    if row.source:
        return row.source.split(":", 1)[0].split()[0].rsplit("/", 1)[-1]
    parts = Path(row.file).parts
    return parts[0] if len(parts) > 1 else "-"
