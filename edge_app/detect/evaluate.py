"""``camtrap eval DIR [--labels CSV]``: how well the trap's filter does on labelled images.

Each image is run through the pipeline and then through the decision policy as a one-frame
burst, so the figures are the trap's own verdicts (alert / keep / discard, label, species),
not raw detector output. What matters for a leopard trap, in order:

* ``animal_kept_rate``: animal frames that are *not discarded* (kept or alerted). A discarded
  animal is lost for good; this is the number that must stay at 1.
* ``empty_discard_rate``: empty frames the filter throws away (the saving).
* ``bigcat_recall`` / ``bigcat_false_alarms``: frames with a leopard or tiger named as one,
  and frames without one that raise a leopard/tiger alert anyway.
* per-category precision and recall of the trap's label, and the confusion table.

Labels come from a CSV with at least ``file,label,species`` columns (the field set's
``labels.csv``, found automatically in DIR), or else from file names as in the cameratrapai
set: ``blank``/``empty`` → empty, ``human``/``person`` → person, ``vehicle`` → vehicle,
anything else → animal; species from words in the name (``leopard``, ``jaguar``, ``ocelot``,
``cheetah`` → leopard: rosette-spotted cats, the group the classifier card alerts on;
``tiger``; ``cougar``, ``puma``, ``lynx``, ``bobcat``, ``lion`` → other_big_cat).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

LABELS = ("empty", "animal", "person", "vehicle")
BIG_CATS = ("leopard", "tiger")
_SPECIES_WORDS = {
    "leopard": ("leopard", "jaguar", "ocelot", "cheetah"),
    "tiger": ("tiger",),
    "other_big_cat": ("cougar", "puma", "lynx", "bobcat", "lion"),
}


@dataclass(frozen=True, slots=True)
class Truth:
    """The ground truth of one image."""

    label: str
    species: str | None


@dataclass(slots=True)
class Row:
    """One evaluated image."""

    file: str
    truth: Truth
    outcome: str
    label: str
    species: str | None
    score: float
    error: str | None = None


@dataclass(slots=True)
class Report:
    """The figures of one evaluation (see the module docstring)."""

    rows: list[Row] = field(default_factory=list)

    def _share(self, rows: Sequence[Row], ok: Iterable[bool]) -> float | None:
        n = len(rows)
        return round(sum(ok) / n, 4) if n else None

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        by_truth = {lab: [r for r in rows if r.truth.label == lab] for lab in LABELS}
        confusion = {t: {p: sum(1 for r in by_truth[t] if r.label == p) for p in LABELS}
                     for t in LABELS}
        precision: dict[str, float | None] = {}
        recall: dict[str, float | None] = {}
        for lab in LABELS:
            predicted = [r for r in rows if r.label == lab]
            precision[lab] = self._share(predicted, (r.truth.label == lab for r in predicted))
            recall[lab] = self._share(by_truth[lab], (r.label == lab for r in by_truth[lab]))
        cats = [r for r in rows if r.truth.species in BIG_CATS]
        not_cats = [r for r in rows if r.truth.species not in BIG_CATS]
        false_alarms = [r for r in not_cats if r.species in BIG_CATS]
        animals = by_truth["animal"]
        species_recall = {
            s: self._share(sp, (r.species == s for r in sp))
            for s in ("leopard", "tiger", "other_big_cat")
            if (sp := [r for r in rows if r.truth.species == s])
        }
        return {
            "images": len(rows),
            "failed": sum(r.error is not None for r in rows),
            "empty_discard_rate": self._share(by_truth["empty"],
                                              (r.outcome == "discard" for r in by_truth["empty"])),
            "animal_kept_rate": self._share(animals, (r.outcome != "discard" for r in animals)),
            "animal_recall": recall["animal"],
            "person_recall": recall["person"],
            "vehicle_recall": recall["vehicle"],
            "bigcat_recall": self._share(cats, (r.species in BIG_CATS for r in cats)),
            "bigcat_images": len(cats),
            "bigcat_false_alarms": len(false_alarms),
            "bigcat_false_alarm_rate": self._share(not_cats,
                                                   (r.species in BIG_CATS for r in not_cats)),
            "species_recall": species_recall,
            "precision": precision,
            "recall": recall,
            "outcomes": {o: sum(r.outcome == o for r in rows)
                         for o in ("alert", "keep", "discard")},
            "discard_rate": self._share(rows, (r.outcome == "discard" for r in rows)),
            "confusion": confusion,
            "mistakes": [
                {"file": r.file, "truth": r.truth.label, "truth_species": r.truth.species,
                 "outcome": r.outcome, "label": r.label, "species": r.species,
                 "score": round(r.score, 3), **({"error": r.error} if r.error else {})}
                for r in rows if _is_mistake(r)],
        }


def _is_mistake(r: Row) -> bool:
    wrong_species = (r.truth.species in BIG_CATS) != (r.species in BIG_CATS)
    lost = r.truth.label != "empty" and r.outcome == "discard"
    return r.error is not None or r.label != r.truth.label or wrong_species or lost


def label_from_name(name: str) -> Truth:
    """Ground truth from a file name, as in the shared cameratrapai set."""
    stem = Path(name).stem.lower()
    if stem.startswith(("blank", "empty")):
        label = "empty"
    elif "human" in stem or "person" in stem:
        label = "person"
    elif "vehicle" in stem:
        label = "vehicle"
    else:
        label = "animal"
    species = None
    if label == "animal":
        for sp, words in _SPECIES_WORDS.items():
            if any(w in stem for w in words):
                species = sp
                break
    return Truth(label, species)


def read_labels(path: Path) -> dict[str, Truth]:
    """``file → Truth`` from a CSV with ``file``, ``label`` and ``species`` columns.

    Raises:
        ValueError: missing columns, or a label/species camtrap does not know (names the row).
    """
    from edge_app.events import SPECIES

    out: dict[str, Truth] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "label", "species"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for i, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            species = (row["species"] or "").strip() or None
            if label not in LABELS:
                raise ValueError(f"{path}:{i}: label {label!r} is not one of "
                                 f"{', '.join(LABELS)}")
            if species is not None and species not in SPECIES:
                raise ValueError(f"{path}:{i}: species {species!r} is not one of "
                                 f"{', '.join(SPECIES)}")
            out[row["file"].strip()] = Truth(label, species)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap eval``."""
    p.add_argument("dir", metavar="DIR", help="folder of labelled images")
    p.add_argument("--labels", metavar="CSV", help="file,label,species CSV (default: "
                   "DIR/labels.csv if present, else labels from file names)")
    p.add_argument("--models", help="model folder (else CAMTRAP_MODELS)")
    p.add_argument("--config", metavar="FILE", help="take [detector] and [policy] from this "
                   "config (to try thresholds)")
    p.add_argument("--detector", metavar="CARD", help="detector card (overrides the config)")
    p.add_argument("--classifier", metavar="CARD",
                   help="classifier card, '' for none (overrides the config)")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")


def evaluate(folder: Path, truths: dict[str, Truth] | None, pipeline: Any, policy: Any,
             progress: Any = None) -> Report:
    """Run ``pipeline`` and the policy over every image in ``folder``.

    Args:
        folder: the images (searched recursively).
        truths: labels by file path relative to ``folder``; None = from file names.
        pipeline: a loaded :class:`~edge_app.detect.pipeline.Pipeline`.
        policy: the :class:`~edge_app.config.PolicyConfig` the verdicts use.
        progress: called once per image (a progress bar), or None.

    Raises:
        ValueError: an image has no label in ``truths``, or a label names no image.
    """
    from edge_app.detect.batch import expand_paths
    from edge_app.detect.policy import decide
    from edge_app.errors import ImageError

    paths = list(expand_paths([str(folder)]))
    if truths is not None:
        names = {n for n, _ in paths}
        unlabelled = sorted(names - set(truths))
        if unlabelled:
            raise ValueError(f"no label for {len(unlabelled)} image(s), e.g. {unlabelled[0]}")
        orphans = sorted(set(truths) - names)
        if orphans:
            raise ValueError(f"{len(orphans)} labelled file(s) not found, e.g. {orphans[0]}")
    report = Report()
    for name, path in paths:
        truth = truths[name] if truths is not None else label_from_name(name)
        error = None
        try:
            result = pipeline.analyse(path)
        except ImageError as e:
            result, error = None, str(e)
        v = decide([result], policy)
        report.rows.append(Row(name, truth, v.outcome, v.label, v.species, v.score, error))
        if progress is not None:
            progress()
    return report


def format_text(s: dict[str, Any], out: TextIO) -> None:
    """The figures as a readable table."""
    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}%"

    w = out.write
    w(f"images {s['images']}  (failed {s['failed']})  outcomes: "
      + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()) + "\n")
    w(f"animal frames kept (not discarded) {pct(s['animal_kept_rate'])}\n")
    w(f"empty frames discarded             {pct(s['empty_discard_rate'])}\n")
    w(f"leopard/tiger recall               {pct(s['bigcat_recall'])} "
      f"({s['bigcat_images']} images)\n")
    w(f"leopard/tiger false alarms         {s['bigcat_false_alarms']} "
      f"({pct(s['bigcat_false_alarm_rate'])} of the others)\n")
    if s["species_recall"]:
        w("species recall                     " + "  ".join(
            f"{k} {pct(v)}" for k, v in s["species_recall"].items()) + "\n")
    w("\n          precision  recall\n")
    for lab in LABELS:
        w(f"{lab:9s} {pct(s['precision'][lab]):>9s}  {pct(s['recall'][lab]):>6s}\n")
    w("\nconfusion (rows: truth, columns: trap label)\n")
    w("          " + "".join(f"{p:>9s}" for p in LABELS) + "\n")
    for t in LABELS:
        w(f"{t:9s} " + "".join(f"{s['confusion'][t][p]:9d}" for p in LABELS) + "\n")
    if s["mistakes"]:
        w(f"\n{len(s['mistakes'])} image(s) not right:\n")
        for m in s["mistakes"]:
            truth = m["truth"] + (f"/{m['truth_species']}" if m["truth_species"] else "")
            got = m["label"] + (f"/{m['species']}" if m["species"] else "")
            w(f"  {m['file']}: truth {truth}, trap {m['outcome']} {got} {m['score']:.2f}"
              + (f" ({m['error']})" if "error" in m else "") + "\n")


def main(args: argparse.Namespace) -> int:
    """``camtrap eval``: exit 0, 1 if an image could not be read, 2 on bad input."""
    from edge_app import config
    from edge_app.detect.batch import Progress
    from edge_app.detect.pipeline import Pipeline, resolve_models_dir

    folder = Path(args.dir)
    if not folder.is_dir():
        print(f"eval: {folder} is not a folder", file=sys.stderr)
        return 2
    cfg = config.load(args.config) if args.config else None
    det_cfg = cfg.detector if cfg else config.DetectorConfig()
    policy = cfg.policy if cfg else config.PolicyConfig()
    if args.detector:
        det_cfg = replace(det_cfg, detector=args.detector)
    if args.classifier is not None:
        det_cfg = replace(det_cfg, classifier=args.classifier)
    labels_path = Path(args.labels) if args.labels else folder / "labels.csv"
    truths = None
    try:
        if args.labels or labels_path.is_file():
            truths = read_labels(labels_path)
    except (OSError, ValueError) as e:
        print(f"eval: {e}", file=sys.stderr)
        return 2
    models_dir = resolve_models_dir(args.models, det_cfg.models_dir)
    from edge_app.detect.batch import expand_paths

    total = sum(1 for _ in expand_paths([str(folder)]))
    with Pipeline(det_cfg, models_dir) as pipeline, Progress(total, "eval") as bar:
        try:
            report = evaluate(folder, truths, pipeline, policy, bar.step)
        except ValueError as e:
            print(f"eval: {e}", file=sys.stderr)
            return 2
    s = report.summary()
    s["detector"] = det_cfg.detector
    s["classifier"] = det_cfg.classifier or None
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(f"{folder}: {det_cfg.detector} + {det_cfg.classifier or 'no classifier'}, "
              f"labels from {labels_path if truths is not None else 'file names'}")
        format_text(s, sys.stdout)
    return 1 if s["failed"] else 0
