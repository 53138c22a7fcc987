"""The embedding-based votes on a frame: the site head's P(empty) and the background's
similarity, from one embedding of the frame.

Apart from the pipeline because these votes are about the *site*, not the frame's objects:
they load from the site's own files (``detector.head`` or the active signed pack's head, the
self-learned background), and a frame is embedded once for both. The pipeline only records
the votes; combining them is the policy's job (:func:`edge_app.trap.detect.policy.decide`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ModelError
from edge_app.trap.detect.cards import ACTIVE_PACK, PACK_MANIFEST, file_in
from edge_app.trap.detect.embed import Embedder
from edge_app.trap.detect.site_head import SiteHead, load_head
from edge_app.trap.packs.manifest import MAX_MANIFEST_BYTES, parse_manifest

if TYPE_CHECKING:
    from edge_app.trap.detect.background import BackgroundMemory

log = logging.getLogger(__name__)

WholeFrame = Callable[[Image.Image, tuple[int, int]], NDArray[np.uint8]]
"""The pipeline's whole frame stretched to a size, shared with the classifier's pass."""


@dataclass(slots=True)
class SiteScore:
    """What the embedding-based stages made of one frame."""

    embedding: NDArray[np.float32]
    embed_ms: float
    head_ms: float = 0.0
    empty_prob: float | None = None
    head_empty: bool | None = None
    background_sim: float | None = None
    background_known: bool | None = None


class SiteVotes:
    """The embedder, the site head and the background of one pipeline.

    Args:
        cfg: ``[detector]`` (``embedder``, ``head``, ``head_threshold``).
        models_dir: the models folder (a relative ``detector.head``, the active pack).
        embed: load the embedder even without a head (background, ``eval --loso``).
        background: the trap's self-learned background, when on.

    Raises:
        ModelError: the embedding card or the head file is bad, or the head was trained on
            another embedding model.
    """

    def __init__(self, cfg: DetectorConfig, models_dir: Path, *, embed: bool = False,
                 background: BackgroundMemory | None = None) -> None:
        self.cfg = cfg
        self.embedder: Embedder | None = None
        self.head: SiteHead | None = None
        self.background = background
        """The self-learned background; the daemon sets it once the embedder is known."""
        shipped = "" if cfg.head else pack_head(models_dir)
        if not (cfg.head or shipped or embed or background is not None):
            return
        if not cfg.embedder:
            raise ModelError("detector.embedder", "the site head and the background need an "
                             "embedding model card")
        self.embedder = Embedder(cfg.embedder, models_dir, cfg.num_threads)
        if cfg.head or shipped:
            path = (head_path(cfg.head, models_dir) if cfg.head
                    else models_dir / ACTIVE_PACK / shipped)
            try:
                self.head = load_head(path, self.embedder.sha256, self.embedder.dims)
            except ModelError:
                self.close()
                raise
            log.info("site head %s%s: threshold %.3f (%s)", self.head.path,
                     "" if cfg.head else " (shipped in the active model pack)",
                     self.head_threshold, "config" if cfg.head_threshold else "head file")

    @property
    def head_threshold(self) -> float:
        """P(empty) at or above which the head votes empty: config, else the head file's."""
        if self.head is None:
            return math.inf
        return self.cfg.head_threshold or self.head.threshold

    def close(self) -> None:
        """Release the embedding interpreter."""
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None

    def score(self, image: Image.Image, whole_frame: WholeFrame) -> SiteScore | None:
        """The frame embedding, once, and what the head and the background make of it;
        None when no embedder is loaded."""
        emb = self.embedder
        if emb is None:
            return None
        t0 = time.perf_counter()
        pixels = whole_frame(image, emb.size) if emb.stretches else emb.pixels(image)
        vec = emb.embed_pixels(pixels)
        t1 = time.perf_counter()
        out = SiteScore(embedding=vec.copy(), embed_ms=(t1 - t0) * 1e3)
        if self.head is not None:
            out.empty_prob = self.head.empty_prob(vec)
            out.head_empty = out.empty_prob >= self.head_threshold
            out.head_ms = (time.perf_counter() - t1) * 1e3
        bg = self.background
        if bg is not None:
            out.background_sim = bg.similarity(vec)
            out.background_known = bg.is_known(out.background_sim)
        return out


def head_path(value: str, models_dir: Path) -> Path:
    """``detector.head`` as a path: absolute, or relative to the models folder — the active
    signed pack's copy when the pack carries it (a head sent in a pack is the one the pack's
    signature and hashes vouch for)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else file_in(models_dir, value)


def pack_head(models_dir: Path) -> str:
    """The site head file the *installed* active pack ships (``<models>/current``), '' if none.

    Why a pack's head is used without a config change: the station's review loop trains a
    head on the frames rangers labelled and sends it to the unit in a signed pack; installing
    it must be enough for the unit's next verdicts to use it (a remote config change would be
    a second, separately failing step). ``detector.head`` still wins when set, and a pack
    without a head changes nothing. Only an installed pack counts, not a folder that *is* a
    pack: the installer's self-test and ``models pack`` run the pipeline on a staged pack,
    whose record is the detector's and classifier's verdicts alone.

    The manifest was verified at install; it is still parsed with limits here.

    Raises:
        ModelError: the active pack's manifest is unreadable or malformed (a broken pack:
            on trial, the daemon's start then rolls it back).
    """
    path = models_dir / ACTIVE_PACK / PACK_MANIFEST
    if not path.is_file():
        return ""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ModelError(str(path), f"cannot read the active pack's manifest: {e.strerror}") from e
    return parse_manifest(raw).head
