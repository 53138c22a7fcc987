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

Training lives in :mod:`edge_app.tools.head_training` (a laptop's job); this module is
what the trap needs to load and score a head.

A second kind, ``nearest_empty`` (issue 13, measured with ``camtrap eval --within-site``):
the head keeps the site's labelled *empty* frames' embeddings (``E``, M×D, float16 on disk)
and scores a frame by its nearest one, ``(1 + max cosine similarity) / 2`` in place of
P(empty); the threshold keeps ``target_recall`` of the training non-empty frames. On the one
field camera with enough empties it discarded 6 of 9 held-out empties where the softmax head
discarded 4, keeping the same animals, at one M×D product per frame. Its files are version 2
(``kind`` in the metadata); a camtrap that reads only version 1 refuses them by name.

File format (:func:`save_head` / :func:`load_head`): one ``.npz`` (no pickle) holding
``W`` (D×K), ``b`` (K), ``mean`` (D) as float32 and ``meta``, a UTF-8 JSON document:
``format`` = ``camtrap-site-head``, ``version``, ``classes``, ``threshold``,
``target_recall``, ``embedding`` (card name, sha256, dims), ``training`` (counts, penalty,
cross-validated figures, the sha256 prefix of every training image) and ``created``. A head
is refused when its embedding sha256 differs from the loaded embedding model's: a head is
only meaningful on the exact features it was trained on.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_app.core.errors import ModelError

log = logging.getLogger(__name__)

HEAD_FORMAT = "camtrap-site-head"
HEAD_VERSION = 1
"""Version of a ``whole_frame`` (softmax) head file."""
NEAREST_VERSION = 2
"""Version of a ``nearest_empty`` head file (it adds the ``E`` array)."""
KINDS = ("whole_frame", "nearest_empty")
MAX_EMPTIES = 4096
"""Most empty embeddings a head may carry (8 MB as float16 at 1024-d): a bound on the file."""
CLASSES: tuple[str, ...] = ("empty", "animal", "person", "vehicle")
EMPTY = 0

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
        empties: (M, D) unit embeddings of the site's empty frames for a ``nearest_empty``
            head (its score replaces P(empty)); None for the softmax head.
    """

    weights: NDArray[np.float32]
    bias: NDArray[np.float32]
    mean: NDArray[np.float32]
    classes: tuple[str, ...]
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    empties: NDArray[np.float32] | None = None
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
    def kind(self) -> str:
        """``whole_frame`` (softmax on the embedding) or ``nearest_empty``."""
        return "whole_frame" if self.empties is None else "nearest_empty"

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
        """P(empty) for one unit embedding; for a ``nearest_empty`` head the score that
        stands in for it, ``(1 + cosine similarity to the nearest empty frame) / 2``."""
        if self.empties is not None:
            return nearest_score(self.empties, vec)
        return float(self.probs(vec)[EMPTY])

    def probs_batch(self, X: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """Class probabilities for many embeddings (rows), for training and evaluation."""
        return softmax(X.astype(np.float64) @ self.weights.astype(np.float64)
                        + self._b_eff.astype(np.float64))


def nearest_score(empties: NDArray[np.floating[Any]], vec: NDArray[np.floating[Any]]) -> float:
    """``(1 + max cosine similarity) / 2`` of a unit vector to unit rows, in [0, 1]; 0.5
    with no rows (nothing known: neither like nor unlike an empty frame)."""
    if empties.shape[0] == 0:
        return 0.5
    return float(min(1.0, max(0.0, (1.0 + float(np.max(empties @ vec))) / 2.0)))


def softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise softmax, shifted for stability."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


# --------------------------------------------------------------------------- files


def head_bytes(head: SiteHead) -> bytes:
    """The head as ``.npz`` bytes (compressed, no pickle)."""
    nearest = head.empties is not None
    meta = dict(head.meta, threshold=head.threshold, classes=list(head.classes),
                format=HEAD_FORMAT, version=NEAREST_VERSION if nearest else HEAD_VERSION,
                kind=head.kind)
    arrays: dict[str, Any] = {"W": head.weights.astype(np.float32),
                              "b": head.bias.astype(np.float32),
                              "mean": head.mean.astype(np.float32)}
    if head.empties is not None:
        arrays["E"] = head.empties.astype(np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays,
                        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8))
    return buf.getvalue()


def save_head(head: SiteHead, path: Path) -> int:
    """Write the head atomically (a power cut leaves the old file or the new one).

    Returns:
        The file size in bytes.

    Raises:
        OSError: the file cannot be written.
    """
    from edge_app.core.files import atomic_write

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
            empties = z["E"] if "E" in z.files else None
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
    version = meta.get("version")
    if version not in (HEAD_VERSION, NEAREST_VERSION):
        raise ModelError(where, f"head file version {version!r}; this camtrap reads versions "
                         f"{HEAD_VERSION} and {NEAREST_VERSION}")
    kind = meta.get("kind", "whole_frame")
    if kind not in KINDS or (kind == "nearest_empty") != (version == NEAREST_VERSION) or (
            (empties is not None) != (kind == "nearest_empty")):
        raise ModelError(where, f"inconsistent head: kind {kind!r}, version {version!r}, "
                         f"{'an' if empties is not None else 'no'} E array")
    classes = tuple(meta.get("classes", ()))
    W, b, mean = arrays["W"], arrays["b"], arrays["mean"]
    k = len(classes)
    if (classes[:1] != ("empty",) or not set(classes) <= set(CLASSES) or W.ndim != 2
            or W.shape[1] != k or b.shape != (k,) or mean.shape != (W.shape[0],)):
        raise ModelError(where, f"inconsistent head: classes {list(classes)}, W {W.shape}, "
                         f"b {b.shape}, mean {mean.shape}")
    if not (np.isfinite(W).all() and np.isfinite(b).all() and np.isfinite(mean).all()):
        raise ModelError(where, "head weights are not finite")
    if empties is not None:
        if (empties.ndim != 2 or empties.shape[1] != W.shape[0]
                or not 1 <= empties.shape[0] <= MAX_EMPTIES):
            raise ModelError(where, f"inconsistent head: E {empties.shape} for "
                             f"{W.shape[0]}-d embeddings (1..{MAX_EMPTIES} rows)")
        empties = empties.astype(np.float32)
        if not np.isfinite(empties).all():
            raise ModelError(where, "head empties are not finite")
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
                    classes, float(threshold), meta, path, empties)
