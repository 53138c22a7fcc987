"""The site head: a small numpy classifier on frame embeddings, trained per site.

ARCHITECTURE §4: the stand-in detector misses about a third of real animals (night IR, small,
half-hidden), so "empty" must be a confident verdict. A camera trap is fixed in place and its
empty frames look like each other, so a head trained on a few hundred labelled frames *of the
site* tells "the usual empty scene" from "something is there" far better than a COCO detector
that has never seen the place. It is one more voter in the fusion
(:func:`edge_app.trap.detect.policy.decide`): it can only keep a frame the other stages would have
discarded, never discard one they keep.

Model: multinomial logistic regression (softmax) over empty / animal / person / vehicle on
the L2-normalised embedding, with an L2 penalty. Why not an MLP: with 10²–10³ labelled frames
and 1024 inputs a linear model is what the data supports; its output is smooth enough for a
cross-validated threshold to transfer, and its inference is one 1024×4 product (µs).

Training (:func:`train_head`), all numpy, deterministic:

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

File format (:func:`save_head` / :func:`load_head`): one ``.npz`` (no pickle) holding
``W`` (D×K), ``b`` (K), ``mean`` (D) as float32 and ``meta``, a UTF-8 JSON document:
``format`` = ``camtrap-site-head``, ``version``, ``classes``, ``threshold``,
``target_recall``, ``embedding`` (card name, sha256, dims), ``training`` (counts, penalty,
cross-validated figures, the sha256 prefix of every training image) and ``created``. A head
is refused when its embedding sha256 differs from the loaded embedding model's: a head is
only meaningful on the exact features it was trained on.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import math
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.core.errors import ModelError
from edge_app.tools.adapt import MIN_EXAMPLES, TARGET_RECALL

log = logging.getLogger(__name__)

HEAD_FORMAT = "camtrap-site-head"
HEAD_VERSION = 1
CLASSES: tuple[str, ...] = ("empty", "animal", "person", "vehicle")
EMPTY = 0
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


# --------------------------------------------------------------------------- the head


@dataclass(slots=True)
class SiteHead:
    """A trained head, ready to score embeddings.

    Attributes:
        weights: (D, K) float32.
        bias: (K,) float32.
        mean: (D,) float32 centring of the inputs (folded into the bias for inference).
        classes: the K class names, a subset of :data:`CLASSES` in that order, ``empty``
            first.
        threshold: P(empty) at or above which the head votes "empty".
        meta: the rest of the file's metadata (embedding, training summary...).
        path: where it was loaded from, if anywhere.
    """

    weights: NDArray[np.float32]
    bias: NDArray[np.float32]
    mean: NDArray[np.float32]
    classes: tuple[str, ...]
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    _b_eff: NDArray[np.float32] = field(init=False, repr=False)
    _z: NDArray[np.float32] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # (x − mean)·W + b = x·W + (b − mean·W): one product per frame, no centring copy.
        self._b_eff = (self.bias - self.mean @ self.weights).astype(np.float32)
        self._z = np.empty(len(self.classes), np.float32)

    @property
    def dims(self) -> int:
        """Embedding length the head expects."""
        return int(self.weights.shape[0])

    @property
    def embedding_sha256(self) -> str:
        """sha256 of the embedding model the head was trained on."""
        return str(self.meta.get("embedding", {}).get("sha256", ""))

    def probs(self, vec: NDArray[np.float32]) -> NDArray[np.float32]:
        """Class probabilities for one unit embedding (a reused buffer: copy to keep)."""
        z = self._z
        np.dot(vec, self.weights, out=z)
        z += self._b_eff
        z -= z.max()
        np.exp(z, out=z)
        z /= z.sum()
        return z

    def empty_prob(self, vec: NDArray[np.float32]) -> float:
        """P(empty) for one unit embedding."""
        return float(self.probs(vec)[EMPTY])

    def probs_batch(self, X: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """Class probabilities for many embeddings (rows), for training and evaluation."""
        return _softmax(X.astype(np.float64) @ self.weights.astype(np.float64)
                        + self._b_eff.astype(np.float64))


def _softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


# --------------------------------------------------------------------------- training


def _class_weights(y: NDArray[np.intp], k: int, min_examples: int) -> NDArray[np.float64]:
    """Per-sample weights summing to 1: balanced classes, rare classes capped (see module)."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    per_class = np.where(present, 1.0 / np.maximum(counts, max(1, min_examples)), 0.0)
    w = per_class[y]
    out: NDArray[np.float64] = w / w.sum()
    return out


def fit_softmax(X: NDArray[np.float64], y: NDArray[np.intp], k: int, lam: float,
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
        P = _softmax(Xc @ Wv + bv)
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
    return _softmax((X - mean) @ W + b)


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
                model = fit_softmax(X[~test], y[~test], k, lam, min_examples)
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
    mean, W, b = fit_softmax(X, y, k, best, min_examples)
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


# --------------------------------------------------------------------------- files


def head_bytes(head: SiteHead) -> bytes:
    """The head as ``.npz`` bytes (compressed, no pickle)."""
    meta = dict(head.meta, threshold=head.threshold, classes=list(head.classes),
                format=HEAD_FORMAT, version=HEAD_VERSION)
    buf = io.BytesIO()
    np.savez_compressed(buf, W=head.weights.astype(np.float32),
                        b=head.bias.astype(np.float32), mean=head.mean.astype(np.float32),
                        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8))
    return buf.getvalue()


def save_head(head: SiteHead, path: Path) -> int:
    """Write the head atomically (a power cut leaves the old file or the new one).

    Returns:
        The file size in bytes.

    Raises:
        OSError: the file cannot be written.
    """
    from edge_app.trap.store.media import atomic_write

    data = head_bytes(head)
    atomic_write(path, data)
    return len(data)


def load_head(path: Path, embedding_sha256: str | None = None,
              dims: int | None = None) -> SiteHead:
    """Read and check a head file.

    Args:
        path: the ``.npz`` written by :func:`save_head`.
        embedding_sha256: when given, the head must have been trained on this model.
        dims: when given, the embedding length the head must take.

    Raises:
        ModelError: unreadable, not a head, a newer version, inconsistent arrays, or trained
            on another embedding model (both digests in the message).
    """
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("W", "b", "mean", "meta")}
    except FileNotFoundError as e:
        raise ModelError(where, "head file not found") from e
    except KeyError as e:
        raise ModelError(where, f"not a camtrap head file (no {e} array)") from e
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ModelError(where, f"cannot read head file (truncated or not a head?): {e}") from e
    try:
        meta = json.loads(bytes(arrays["meta"].astype(np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(where, f"head metadata is not JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise ModelError(where, f"not a camtrap head file (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else "not a camtrap head file")
    if meta.get("version") != HEAD_VERSION:
        raise ModelError(where, f"head file version {meta.get('version')!r}; this camtrap "
                         f"reads version {HEAD_VERSION}")
    classes = tuple(meta.get("classes", ()))
    W, b, mean = arrays["W"], arrays["b"], arrays["mean"]
    k = len(classes)
    if (classes[:1] != ("empty",) or not set(classes) <= set(CLASSES) or W.ndim != 2
            or W.shape[1] != k or b.shape != (k,) or mean.shape != (W.shape[0],)):
        raise ModelError(where, f"inconsistent head: classes {list(classes)}, W {W.shape}, "
                         f"b {b.shape}, mean {mean.shape}")
    if not (np.isfinite(W).all() and np.isfinite(b).all() and np.isfinite(mean).all()):
        raise ModelError(where, "head weights are not finite")
    threshold = meta.get("threshold")
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.5:
        raise ModelError(where, f"head threshold must be a number in [0, 1], got {threshold!r}")
    if dims is not None and W.shape[0] != dims:
        raise ModelError(where, f"head takes {W.shape[0]}-d embeddings, the embedding model "
                         f"gives {dims}")
    got = str(meta.get("embedding", {}).get("sha256", ""))
    if embedding_sha256 is not None and got != embedding_sha256:
        raise ModelError(where, f"head was trained on embedding model sha256 {got or '?'}, "
                         f"the loaded one is {embedding_sha256}; retrain it "
                         "(camtrap models adapt)")
    return SiteHead(W.astype(np.float32), b.astype(np.float32), mean.astype(np.float32),
                    classes, float(threshold), meta, path)


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
