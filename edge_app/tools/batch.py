"""``camtrap detect PATH...``: the pipeline over files and folders, one line per image.

The JSON lines are a contract (ARCHITECTURE §3): scripts that evaluate a model on a folder
of labelled frames parse them. An unreadable image is a line with ``error`` and the run goes
on; the exit code says whether any image failed.

``--md-json OUT`` also writes the whole run as a MegaDetector batch output file (format 1.6),
which Timelapse and AddaxAI open directly: camtrap's categories become detection categories
``1`` animal, ``2`` person, ``3`` vehicle, and a named species becomes a classification
(``1`` leopard, ``2`` tiger, ``3`` other_big_cat) on its box.

On a terminal a progress line is drawn on stderr (never on stdout, which scripts read).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from edge_app.core.config import DetectorConfig
from edge_app.core.errors import ImageError
from edge_app.core.events import CATEGORIES, SPECIES, FrameResult
from edge_app.trap.detect.pipeline import Pipeline

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


def expand_paths(paths: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """(display name, path) per image: files as given, folders expanded recursively, sorted.

    A file given directly is shown by its name; an image found in a folder by its path
    relative to that folder (field sets keep same-named frames in sub-folders).
    """
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                log.warning("%s: no .jpg/.jpeg/.png images in this folder", p)
            for f in found:
                yield f.relative_to(p).as_posix(), f
        else:
            yield p.name or arg, p


def format_line(name: str, r: FrameResult) -> str:
    """A readable one-line summary of a frame result."""
    head = f"{name}: {r.label}"
    if r.species:
        head += f" ({r.species})"
    head += f" {r.score:.2f}"
    boxes = []
    for d in r.detections:
        item = f"{d.cls} {d.conf:.2f}"
        if d.species:
            item += f" → {d.species} {d.species_conf or 0.0:.2f}"
        x, y, w, h = d.bbox
        boxes.append(f"{item} @ {x:.2f},{y:.2f},{w:.2f},{h:.2f}")
    times = " ".join(f"{k} {v:.0f}" for k, v in r.timings_ms.items())
    body = f" [{'; '.join(boxes)}]" if boxes else ""
    return f"{head}{body} ({times} ms)"


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    Use as a context manager; call :meth:`step` once per item. Redraws at most 10 times a
    second so a fast run is not slowed by the terminal.
    """

    def __init__(self, total: int, what: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._t0 = time.monotonic()
        self._last = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled and self.done:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def step(self) -> None:
        """One more item done."""
        self.done += 1
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.1 or self.done == self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        width = 30
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * round(width * frac)
        rate = self.done / max(time.monotonic() - self._t0, 1e-9)
        self.stream.write(f"\r{self.what} [{bar:<{width}s}] {self.done}/{self.total} "
                          f"{rate:.1f} img/s")
        self.stream.flush()


MD_DETECTION_CATEGORIES = {str(i + 1): c for i, c in enumerate(CATEGORIES)}
"""MegaDetector's own ids: 1 animal, 2 person, 3 vehicle ("0" informally means empty)."""
MD_CLASSIFICATION_CATEGORIES = {str(i + 1): s for i, s in enumerate(SPECIES)}
_MD_SPECIES_DESCRIPTIONS = {
    "leopard": "animalia;chordata;mammalia;carnivora;felidae;panthera;panthera pardus",
    "tiger": "animalia;chordata;mammalia;carnivora;felidae;panthera;panthera tigris",
    "other_big_cat": "animalia;chordata;mammalia;carnivora;felidae",
}


def md_image(name: str, result: FrameResult | None, error: str | None = None) -> dict[str, Any]:
    """One ``images[]`` entry of MegaDetector format 1.6."""
    if result is None:
        return {"file": name, "detections": None, "failure": error or "unreadable"}
    cat_id = {c: k for k, c in MD_DETECTION_CATEGORIES.items()}
    sp_id = {s: k for k, s in MD_CLASSIFICATION_CATEGORIES.items()}
    dets = []
    for d in result.detections:
        item: dict[str, Any] = {"category": cat_id[d.category], "conf": round(d.conf, 4),
                                "bbox": [round(v, 4) for v in d.bbox]}
        if d.species is not None:
            item["classifications"] = [[sp_id[d.species], round(d.species_conf or 0.0, 4)]]
        dets.append(item)
    return {"file": name, "detections": dets}


def md_document(images: list[dict[str, Any]], pipeline: Pipeline,
                started: dt.datetime) -> dict[str, Any]:
    """The whole MegaDetector 1.6 document for a run."""
    now = dt.datetime.now(dt.UTC).astimezone()
    det = pipeline.detector_card
    clf = pipeline.classifier_card
    info: dict[str, Any] = {
        "format_version": "1.6",
        "detector": det.file,  # the model file basename: tools key thresholds on it
        "detection_completion_time": now.isoformat(timespec="seconds"),
        "detector_metadata": {
            "image_size": max(det.input.width, det.input.height),
            "typical_detection_threshold": pipeline.cfg.score_threshold,
            "conservative_detection_threshold": round(pipeline.thresholds.decode, 4),
        },
        "camtrap_started": started.isoformat(timespec="seconds"),
    }
    if clf is not None:
        info["classifier"] = clf.file
        info["classification_completion_time"] = info["detection_completion_time"]
        info["classifier_metadata"] = {"species_threshold": pipeline.cfg.species_threshold}
    return {
        "info": info,
        "detection_categories": dict(MD_DETECTION_CATEGORIES),
        "classification_categories": dict(MD_CLASSIFICATION_CATEGORIES),
        "classification_category_descriptions": {
            k: _MD_SPECIES_DESCRIPTIONS[s] for k, s in MD_CLASSIFICATION_CATEGORIES.items()},
        "images": images,
    }


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` via a temporary file and rename (never a half file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def run_detect(paths: Sequence[str], models_dir: Path, cfg: DetectorConfig, as_json: bool,
               out: TextIO, md_json: Path | None = None,
               progress_stream: TextIO | None = None) -> int:
    """Analyse every image under ``paths`` and print one line each.

    Args:
        paths: image files and/or folders.
        models_dir: the models folder (see
            :func:`~edge_app.core.models_dir.resolve_models_dir`).
        cfg: detector settings (thresholds, model card names, threads).
        as_json: print ARCHITECTURE §3 JSON objects instead of readable lines.
        out: where lines go (flushed after each, so a long run can be followed).
        md_json: also write a MegaDetector 1.6 file here.
        progress_stream: where the progress bar goes (default stderr; drawn only on a TTY).

    Returns:
        1 if any image failed (unreadable or undecodable), else 0.

    Raises:
        ModelError: the models cannot be loaded (before any image is read).
        OSError: ``md_json`` cannot be written.
    """
    failed = 0
    started = dt.datetime.now(dt.UTC).astimezone()
    md_images: list[dict[str, Any]] = []
    items = list(expand_paths(paths))
    with Pipeline(cfg, models_dir) as pipeline, \
            Progress(len(items), "detect", progress_stream) as bar:
        for name, path in items:
            try:
                result = pipeline.analyse(path)
            except ImageError as e:
                failed += 1
                log.debug("%s: %s", path, e)
                line = (json.dumps({"file": name, "error": str(e)}) if as_json
                        else f"{name}: error: {e}")
                md_images.append(md_image(name, None, str(e)))
            else:
                line = (json.dumps({"file": name, **result.to_json()}) if as_json
                        else format_line(name, result))
                md_images.append(md_image(name, result))
            if bar.enabled:
                out.flush()
            out.write(line + "\n")
            out.flush()
            bar.step()
        if md_json is not None:
            write_json_atomic(md_json, md_document(md_images, pipeline, started))
    return 1 if failed else 0
