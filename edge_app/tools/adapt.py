"""``camtrap models adapt``: train this site's head from labelled frames.

Input: a folder of frames and the labels CSV ``camtrap label`` writes (``file,label``;
``species`` and ``source`` columns are read when present, so the shared field set's
``labels.csv`` works too). Output: the head file (:mod:`edge_app.trap.detect.site_head`) and,
next to it, its model card ``<FILE>.md``: what it was trained on, the cross-validated
figures, the threshold and how to deploy it.

Frames are embedded exactly as on the trap: decoded at the reduced scale the configured
detector asks for, then stretched to the embedding model's input
(:meth:`edge_app.trap.detect.embed.Embedder.pixels`), so the head sees the same vectors in the
field as in training. The detector itself is not run: the head does not depend on it, and
adapting stays a few seconds per hundred frames.

Exit codes: 0 written; 2 on a bad labels CSV (unknown files or labels, too few examples of a
class: the message names the problem), a bad option, or a model error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from edge_app.core.models_dir import SEARCH_HELP
from edge_app.tools.adapt_options import KINDS, MIN_EXAMPLES, TARGET_RECALL

log = logging.getLogger(__name__)




def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap models adapt``."""
    p.add_argument("--images", required=True, metavar="DIR", help="folder of labelled frames")
    p.add_argument("--labels", metavar="CSV", help="file,label CSV (default DIR/labels.csv)")
    p.add_argument("--out", required=True, metavar="FILE", help="head file to write "
                   "(its model card goes to FILE.md)")
    p.add_argument("--models", help=SEARCH_HELP)
    p.add_argument("--config", metavar="FILE", help="take the detector and embedder cards "
                   "from this config's [detector]")
    p.add_argument("--target-recall", type=float, default=TARGET_RECALL, metavar="R",
                   help="share of non-empty frames the head must keep in cross-validation "
                   f"(default {TARGET_RECALL})")
    p.add_argument("--min-examples", type=int, default=MIN_EXAMPLES, metavar="N",
                   help=f"fewest empty and animal frames (default {MIN_EXAMPLES})")
    p.add_argument("--kind", choices=KINDS, default="whole_frame",
                   help="whole_frame: softmax on the frame embedding (default); nearest_empty: "
                   "the site's empty frames themselves, a frame close to one counts as empty "
                   "(measured to discard more empties within a site; see models/README.md)")
    p.add_argument("--json", action="store_true", help="the training summary as JSON")


class FrameEmbeddings:
    """Embeds image files the way the trap does (see the module docstring)."""

    def __init__(self, det_cfg: Any, models_dir: Path) -> None:
        from edge_app.trap.detect.cards import find_card, load_card
        from edge_app.trap.detect.embed import Embedder
        from edge_app.trap.detect.preprocess import DecodeBuffer

        card = load_card(find_card(det_cfg.detector, models_dir))
        self._target = (card.input.width, card.input.height)
        self._resize = card.input.resize
        self.embedder = Embedder(det_cfg.embedder, models_dir, det_cfg.num_threads)
        self._buffer = DecodeBuffer()
        self._max_pixels: int = det_cfg.max_pixels

    def __call__(self, data: bytes) -> Any:
        """A copy of the unit embedding of encoded image bytes.

        Raises:
            ImageError: the image cannot be decoded.
        """
        from edge_app.trap.detect.preprocess import decode_image

        decoded = decode_image(data, self._target, self._resize, self._buffer,
                               max_pixels=self._max_pixels)
        return self.embedder.embed(decoded.image).copy()

    def close(self) -> None:
        self.embedder.close()


def embedding_info(embedder: Any) -> dict[str, Any]:
    """What a head records about its embedding model."""
    return {"card": embedder.card.name, "sha256": embedder.sha256, "dims": embedder.dims}


def main(args: argparse.Namespace) -> int:
    """``camtrap models adapt``: see the module docstring."""
    import numpy as np

    from edge_app.core import config
    from edge_app.core.errors import ImageError
    from edge_app.core.models_dir import resolve_models_dir
    from edge_app.tools.head_training import (
        LabelError,
        TrainingSet,
        check_counts,
        image_digest,
        read_label_csv,
        source_of,
        train_head,
    )
    from edge_app.trap.detect.site_head import save_head

    def fail(msg: str) -> int:
        print(f"models adapt: {msg}", file=sys.stderr)
        return 2

    images = Path(args.images)
    if not images.is_dir():
        return fail(f"{images} is not a folder")
    if not 0.5 <= args.target_recall <= 1.0:
        return fail(f"--target-recall must be in [0.5, 1], got {args.target_recall}")
    if args.min_examples < 1:
        return fail(f"--min-examples must be ≥ 1, got {args.min_examples}")
    out = Path(args.out)
    if not out.parent.is_dir():
        return fail(f"folder of --out {out} does not exist")
    det_cfg = config.load(args.config).detector if args.config else config.DetectorConfig()
    if not det_cfg.embedder:
        return fail("detector.embedder is '' in the config: a head needs an embedding model")
    models_dir = resolve_models_dir(args.models, det_cfg.models_dir)  # before reading labels
    labels = Path(args.labels) if args.labels else images / "labels.csv"
    try:
        rows = read_label_csv(labels, images)
        check_counts([r.label for r in rows], args.min_examples)
    except LabelError as e:
        return fail(str(e))

    t0 = time.perf_counter()
    embed = FrameEmbeddings(det_cfg, models_dir)
    vecs, kept, digests, skipped = [], [], [], []
    try:
        for r in rows:
            data = (images / r.file).read_bytes()
            try:
                vecs.append(embed(data))
            except ImageError as e:
                skipped.append(f"{r.file}: {e}")
                continue
            kept.append(r)
            digests.append(image_digest(data))
        info = embedding_info(embed.embedder)
    finally:
        embed.close()
    for s in skipped:
        log.warning("skipped unreadable frame %s", s)
    t1 = time.perf_counter()
    ts = TrainingSet(np.array(vecs, np.float32), tuple(r.label for r in kept),
                     tuple(r.file for r in kept), tuple(digests))
    try:
        if args.kind == "nearest_empty":
            from edge_app.tools.nearest_head import train_nearest_empty

            head = train_nearest_empty(ts, target_recall=args.target_recall,
                                       min_examples=args.min_examples, embedding=info,
                                       bursts=burst_ids(images, kept))
        else:
            head = train_head(ts, target_recall=args.target_recall,
                              min_examples=args.min_examples, embedding=info)
    except LabelError as e:
        return fail(str(e))
    t2 = time.perf_counter()
    head.meta["training"]["images_dir"] = str(images)
    head.meta["training"]["labels_csv"] = str(labels)
    head.meta["training"]["unreadable"] = len(skipped)
    try:
        size = save_head(head, out)
        card = write_card(head, out, [source_of(r) for r in kept])
    except OSError as e:
        return fail(f"cannot write {out}: {e.strerror or e}")
    summary = {"head": str(out), "card": str(card), "bytes": size,
               "threshold": round(head.threshold, 4), "target_recall": args.target_recall,
               "embed_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1),
               **{k: head.meta["training"][k] for k in ("frames", "counts", "cv", "warnings")}}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        cv = summary["cv"]
        print(f"wrote {out} ({size / 1024:.1f} KB) and its card {card}")
        print(f"  {summary['frames']} frames: " + ", ".join(
            f"{k} {v}" for k, v in summary["counts"].items()))
        print(f"  threshold P(empty) ≥ {head.threshold:.3f}; cross-validated ({cv['folds']}-fold"
              f" x {cv['repeats']}): non-empty kept {_pct(cv['nonempty_kept'])}, animals kept "
              f"{_pct(cv['animal_kept'])}, empties the head calls empty "
              f"{_pct(cv['empty_discarded'])}")
        for w in summary["warnings"]:
            print(f"  warning: {w}")
        print(f"  deploy: copy it next to the models and set detector.head = \"{out.name}\"")
    return 0


def burst_ids(images: Path, rows: list[Any]) -> list[int] | None:
    """A burst number per frame (per source, frames < 60 s apart by EXIF time), for honest
    held-out figures; None when no frame has a capture time."""
    from edge_app.tools.head_training import source_of
    from edge_app.tools.within_site import exif_time, group_events

    times = [exif_time(images / r.file) for r in rows]
    if all(t is None for t in times):
        return None
    out = [0] * len(rows)
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(source_of(r), []).append(i)
    base = 0
    for idx in by_source.values():
        events = group_events([times[i] for i in idx])
        for i, e in zip(idx, events, strict=True):
            out[i] = base + e
        base += max(events, default=-1) + 1
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def write_card(head: Any, out: Path, sources: list[str]) -> Path:
    """The head's model card, ``<out>.md``: provenance, figures, limits, deployment.

    Raises:
        OSError: the card cannot be written.
    """
    import hashlib
    from collections import Counter

    from edge_app import __version__
    from edge_app.core.files import atomic_write

    t = head.meta["training"]
    cv = t["cv"]
    emb = head.meta.get("embedding", {})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    by_source = Counter(s for s in sources if s)
    lines = [
        f"# Site head `{out.name}`",
        "",
        f"- file sha256: `{digest}` ({out.stat().st_size} bytes), format "
        f"`{head.meta.get('format')}` v{head.meta.get('version')}",
        f"- created {head.meta.get('created')} by camtrap {__version__} "
        "(`camtrap models adapt`)",
        f"- embedding model: card `{emb.get('card')}`, sha256 `{emb.get('sha256')}`, "
        f"{emb.get('dims')} values; the trap refuses the head with any other model",
        "",
        "## Intended use",
        "",
        "One more voter in the trap's empty/not-empty fusion (ARCHITECTURE §4): a frame the "
        "detector and classifier would discard is kept when this head's P(empty) is below "
        "its threshold. It never discards a frame another stage keeps, and it never names a "
        "label or a species. Trained for the site its frames come from; retrain after the "
        "camera moves, and each season.",
        "",
        "## Training data",
        "",
        f"- {t['frames']} frames from `{t.get('images_dir')}`, labels `{t.get('labels_csv')}`"
        f" ({t.get('unreadable', 0)} unreadable skipped)",
        "- per class: " + ", ".join(f"{k} {v}" for k, v in t["counts"].items()),
    ]
    if by_source:
        lines.append("- per source: " + ", ".join(f"{k} {v}" for k, v in by_source.items()))
    lines += ["", "## Method", ""]
    if head.kind == "nearest_empty":
        lines += [
            f"Nearest empty frame: the {t['counts']['empty']} labelled empty frames' embeddings "
            "are the head (float16); a frame scores (1 + cosine similarity to the nearest) / 2 "
            f"and the head votes empty at ≥ **{head.threshold:.4f}**, the score that keeps "
            f"{head.meta['target_recall']} of the training non-empty frames below it. Figures: "
            f"{cv['method']} ({cv['folds']} folds).",
        ]
    else:
        lines += [
            "Softmax regression on the L2-normalised embedding, balanced class weights (a "
            f"class with fewer than {t['min_examples']} frames is down-weighted), L2 penalty "
            f"{cv['penalty']} chosen by {cv['folds']}-fold cross-validation repeated "
            f"{cv['repeats']} times (balanced log-loss of P(empty): "
            + ", ".join(f"{k}: {v}" for k, v in cv["log_loss"].items()) + ").",
            "",
            f"Threshold: the head votes empty at P(empty) ≥ **{head.threshold:.4f}**, chosen on "
            f"the out-of-fold predictions so that ≥ {head.meta['target_recall']} of the "
            "non-empty frames stay below it.",
        ]
    lines += [
        "",
        "## Held-out figures (frames not used to build the head that scored them)",
        "",
        f"- non-empty frames kept by the head: {_pct(cv['nonempty_kept'])}",
        f"- animal frames kept by the head: {_pct(cv['animal_kept'])}",
        f"- empty frames the head calls empty: {_pct(cv['empty_discarded'])}",
        "",
        "These are from the same site's frames; on a new site expect less: measure with "
        "`camtrap eval --loso`.",
        "",
        "## Limitations",
        "",
    ]
    lines += [f"- {w}" for w in t["warnings"]] + [
        "- A linear head on a whole-frame embedding cannot see a small animal in a familiar "
        "scene; the detector and the classifier still carry those frames.",
        "- Labels were made by eye; a frame marked empty may hide an animal.",
        "",
        "## Deploy",
        "",
        f"Copy `{out.name}` into the models folder and set `detector.head = \"{out.name}\"` "
        "(`detector.head_threshold` overrides the threshold). `camtrap eval DIR --head "
        f"{out.name}` warns when DIR holds frames the head was trained on.",
        "",
    ]
    card = out.with_name(out.name + ".md")
    atomic_write(card, "\n".join(lines).encode("utf-8"))
    return card
