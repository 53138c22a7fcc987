"""``camtrap detect PATH...``: the pipeline over files and folders, one line per image.

The JSON lines are a contract (ARCHITECTURE §3): scripts that evaluate a model on a folder
of labelled frames parse them. An unreadable image is a line with ``error`` and the run goes
on; the exit code says whether any image failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from edge_app.config import DetectorConfig
from edge_app.detect.pipeline import Pipeline
from edge_app.errors import ImageError
from edge_app.events import FrameResult

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


def run_detect(paths: Sequence[str], models_dir: Path, cfg: DetectorConfig, as_json: bool,
               out: TextIO) -> int:
    """Analyse every image under ``paths`` and print one line each.

    Args:
        paths: image files and/or folders.
        models_dir: the models folder (see :func:`~edge_app.detect.pipeline.resolve_models_dir`).
        cfg: detector settings (thresholds, model card names, threads).
        as_json: print ARCHITECTURE §3 JSON objects instead of readable lines.
        out: where lines go (flushed after each, so a long run can be followed).

    Returns:
        1 if any image failed (unreadable or undecodable), else 0.

    Raises:
        ModelError: the models cannot be loaded (before any image is read).
    """
    failed = 0
    with Pipeline(cfg, models_dir) as pipeline:
        for name, path in expand_paths(paths):
            try:
                result = pipeline.analyse(path)
            except ImageError as e:
                failed += 1
                log.debug("%s: %s", path, e)
                line = (json.dumps({"file": name, "error": str(e)}) if as_json
                        else f"{name}: error: {e}")
            else:
                line = (json.dumps({"file": name, **result.to_json()}) if as_json
                        else format_line(name, result))
            out.write(line + "\n")
            out.flush()
    return 1 if failed else 0
