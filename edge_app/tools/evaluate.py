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

``--loso`` trains a head per source on the other sources; ``--within-site``
(:mod:`edge_app.tools.within_site`) trains one per camera on that camera's other bursts.

Labels come from a CSV with at least ``file,label,species`` columns (the field set's
``labels.csv``, found automatically in DIR), or else from file names as in the cameratrapai
set: ``blank``/``empty`` → empty, ``human``/``person`` → person, ``vehicle`` → vehicle,
anything else → animal; species from words in the name (``leopard``, ``jaguar``, ``cheetah``
→ leopard: big rosette-spotted cats, the group the classifier card names; ``tiger``; the small
spotted cats ``leopard_cat``, ``ocelot``, ``serval`` and ``cougar``, ``puma``, ``lynx``,
``bobcat``, ``lion`` → other_big_cat — a leopard cat on the park's trails must never count as a
leopard; ``edge_app/trap/detect/species.py``).
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

from edge_app.core.models_dir import SEARCH_HELP

LABELS = ("empty", "animal", "person", "vehicle")
BIG_CATS = ("leopard", "tiger")
_SPECIES_WORDS = {  # first match wins: the small cats' words before "leopard"
    "other_big_cat": ("leopard_cat", "leopardcat", "ocelot", "serval", "cougar", "puma",
                      "lynx", "bobcat", "lion"),
    "leopard": ("leopard", "jaguar", "cheetah"),
    "tiger": ("tiger",),
}


@dataclass(frozen=True, slots=True)
class Truth:
    """The ground truth of one image, and the source (camera, site) it came from."""

    label: str
    species: str | None
    source: str = ""
    camera: str = ""


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
    kept_by: tuple[str, ...] = ()


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
                 "score": round(r.score, 3), "kept_by": list(r.kept_by),
                 **({"error": r.error} if r.error else {})}
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
    """``file → Truth`` from a CSV with ``file``, ``label`` and ``species`` columns, and an
    optional ``source`` column (its first word names the source for ``--loso``; without it,
    a file's top folder does).

    Raises:
        ValueError: missing columns, or a label/species camtrap does not know (names the row).
    """
    from edge_app.core.events import SPECIES
    from edge_app.tools.within_site import camera_of

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
            name = row["file"].strip()
            column = row.get("source") or ""
            out[name] = Truth(label, species, _source(column, name), camera_of(column, name))
    return out


def _source(column: str, name: str) -> str:
    """A row's source: the ``source`` column's first word without its owner (``owner/repo:
    path`` → ``repo``), else the file's top folder, else ``-``."""
    from edge_app.tools.head_training import LabelRow, source_of

    return source_of(LabelRow(name, "", column.strip()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap eval``."""
    p.add_argument("dir", metavar="DIR", help="folder of labelled images")
    p.add_argument("--labels", metavar="CSV", help="file,label,species CSV (default: "
                   "DIR/labels.csv if present, else labels from file names)")
    p.add_argument("--models", help=SEARCH_HELP)
    p.add_argument("--config", metavar="FILE", help="take [detector] and [policy] from this "
                   "config (to try thresholds)")
    p.add_argument("--detector", metavar="CARD", help="detector card (overrides the config)")
    p.add_argument("--classifier", metavar="CARD",
                   help="classifier card, '' for none (overrides the config)")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    p.add_argument("--head", metavar="FILE", help="site head file (camtrap models adapt) to "
                   "fuse in (overrides detector.head); warns when DIR holds its training frames")
    p.add_argument("--loso", action="store_true",
                   help="leave-one-source-out: for each source in the labels, train a head on "
                   "the other sources (as models adapt does) and evaluate it on this one")
    p.add_argument("--within-site", action="store_true",
                   help="per camera (the source column's folder), leave one event (burst) "
                   "out: a head trained on the camera's other frames, judged on this event")
    p.add_argument("--grid", type=int, default=2, choices=range(5), metavar="N",
                   help="--within-site: also judge the per-tile novelty head on N×N tiles "
                   "(N² embedding invokes per frame; 0 = only the whole-frame head; default 2)")
    p.add_argument("--target-recall", type=float, default=None, metavar="R",
                   help="--loso/--within-site: the heads' cross-validated recall target "
                   "(default as adapt)")
    p.add_argument("--min-examples", type=int, default=None, metavar="N",
                   help="--loso/--within-site: fewest empty and animal training frames "
                   "(default as adapt); a fold with fewer is evaluated without a head")


def evaluate(folder: Path, truths: dict[str, Truth] | None, pipeline: Any, policy: Any,
             progress: Any = None, on_result: Any = None) -> Report:
    """Run ``pipeline`` and the policy over every image in ``folder``.

    Args:
        folder: the images (searched recursively).
        truths: labels by file path relative to ``folder``; None = from file names.
        pipeline: a loaded :class:`~edge_app.trap.detect.pipeline.Pipeline`.
        policy: the :class:`~edge_app.core.config.PolicyConfig` the verdicts use.
        progress: called once per image (a progress bar), or None.
        on_result: called with (name, truth, FrameResult or None) per image, or None.

    Raises:
        ValueError: an image has no label in ``truths``, or a label names no image.
    """
    from edge_app.core.errors import ImageError
    from edge_app.tools.batch import expand_paths

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
        report.rows.append(judge(name, truth, result, error, policy))
        if on_result is not None:
            on_result(name, truth, result)
        if progress is not None:
            progress()
    return report


def judge(name: str, truth: Truth, result: Any, error: str | None, policy: Any) -> Row:
    """The trap's verdict on one frame as a one-frame burst, as a report row."""
    from edge_app.trap.detect.policy import decide

    v = decide([result], policy)
    return Row(name, truth, v.outcome, v.label, v.species, v.score, error, v.kept_by)


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
    from edge_app.core import config
    from edge_app.core.models_dir import resolve_models_dir
    from edge_app.tools.batch import Progress, expand_paths
    from edge_app.trap.detect.pipeline import Pipeline

    def fail(msg: str) -> int:
        print(f"eval: {msg}", file=sys.stderr)
        return 2

    folder = Path(args.dir)
    if not folder.is_dir():
        return fail(f"{folder} is not a folder")
    cfg = config.load(args.config) if args.config else None
    det_cfg = cfg.detector if cfg else config.DetectorConfig()
    policy = cfg.policy if cfg else config.PolicyConfig()
    if args.detector:
        det_cfg = replace(det_cfg, detector=args.detector)
    if args.classifier is not None:
        det_cfg = replace(det_cfg, classifier=args.classifier)
    if args.head is not None:
        det_cfg = replace(det_cfg, head=str(Path(args.head).resolve()) if args.head else "")
    trains = args.loso or args.within_site
    what = "--loso" if args.loso else "--within-site"
    if trains and det_cfg.head:
        return fail(f"{what} trains its own heads; leave out --head and detector.head")
    if trains and not det_cfg.embedder:
        return fail(f"{what} needs detector.embedder (the frame embedding model card)")
    labels_path = Path(args.labels) if args.labels else folder / "labels.csv"
    truths = None
    try:
        if args.labels or labels_path.is_file():
            truths = read_labels(labels_path)
    except (OSError, ValueError) as e:
        return fail(str(e))
    if trains and truths is None:
        return fail(f"{what} needs a labels CSV ({labels_path} not found)")
    models_dir = resolve_models_dir(args.models, det_cfg.models_dir)

    total = sum(1 for _ in expand_paths([str(folder)]))
    results: list[tuple[str, Truth, Any]] = []
    with Pipeline(det_cfg, models_dir, embed=trains) as pipeline, \
            Progress(total, "eval") as bar:
        try:
            report = evaluate(folder, truths, pipeline, policy, bar.step,
                              on_result=lambda *item: results.append(item))
        except ValueError as e:
            return fail(str(e))
        tiles = (tile_embeddings_of(pipeline, folder, [r.file for r in report.rows], args.grid)
                 if args.within_site and args.grid else {})
        head = pipeline.head
        embedder = pipeline.embedder
        embedding = None if embedder is None else {
            "card": embedder.card.name, "sha256": embedder.sha256, "dims": embedder.dims}
    s = report.summary()
    timed = [sum(r.stages_ms.values()) for _, _, r in results if r is not None]
    # The pipeline's own per-stage times (decode to second look), not the wall clock of the
    # run: model loading and the progress bar are not a frame's cost.
    s["ms_per_frame"] = round(sum(timed) / len(timed), 1) if timed else None
    s["detector"] = det_cfg.detector
    s["classifier"] = det_cfg.classifier or None
    if head is not None:
        s["head"] = head_info(head, folder, [r.file for r in report.rows])
        if s["head"]["training_frames_here"]:
            print(f"eval: warning: {s['head']['training_frames_here']} of these images were in "
                  "the head's training set: these figures are NOT held out (use --loso)",
                  file=sys.stderr)
    if args.loso:
        try:
            s["loso"] = loso(results, policy, embedding, args.target_recall, args.min_examples)
        except ValueError as e:
            return fail(str(e))
    if args.within_site:
        try:
            s["within_site"] = run_within_site(results, folder, policy, embedding,
                                               args.target_recall, args.min_examples, tiles)
        except ValueError as e:
            return fail(str(e))
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        print(f"{folder}: {det_cfg.detector} + {det_cfg.classifier or 'no classifier'}"
              f"{' + site head ' + det_cfg.head if det_cfg.head else ''}, "
              f"labels from {labels_path if truths is not None else 'file names'}")
        if trains:
            print("without a head (the plain pipeline, every frame):")
        format_text(s, sys.stdout)
        if args.loso:
            format_loso(s["loso"], sys.stdout)
        if args.within_site:
            from edge_app.tools.within_site import format_within_site

            format_within_site(s["within_site"], sys.stdout)
    return 1 if s["failed"] else 0


def head_info(head: Any, folder: Path, files: list[str]) -> dict[str, Any]:
    """What ``eval --head`` reports about the head, and how many of the evaluated images it
    was trained on (by sha256 prefix): those figures are training figures, not held out."""
    from edge_app.tools.head_training import image_digest

    trained = set(head.meta.get("training", {}).get("images_sha256_16", ()))
    here = sum(image_digest((folder / f).read_bytes()) in trained for f in files)
    return {"file": str(head.path), "threshold": head.threshold,
            "embedding_sha256": head.embedding_sha256, "training_frames_here": here}


# --------------------------------------------------------------------------- within site


def run_within_site(results: list[tuple[str, Truth, Any]], folder: Path, policy: Any,
                    embedding: dict[str, Any] | None, target_recall: float | None,
                    min_examples: int | None,
                    tiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """``--within-site``: :func:`edge_app.tools.within_site.within_site` with the head
    ``models adapt`` trains (``whole_frame``), the nearest-empty-frame novelty on the same
    embedding (``nearest_empty``: no extra invoke) and, given ``tiles`` (file → tile
    embeddings), the per-tile novelty (``tile_novelty``), each with its defaults unless
    overridden.

    Raises:
        ValueError: a bad target or minimum.
    """
    from edge_app.tools.head_training import DEFAULT_MIN_EXAMPLES, DEFAULT_TARGET_RECALL
    from edge_app.tools.within_site import embedding_fitter, novelty_fitter, within_site

    target = DEFAULT_TARGET_RECALL if target_recall is None else target_recall
    minimum = DEFAULT_MIN_EXAMPLES if min_examples is None else min_examples
    if not 0.5 <= target <= 1.0 or minimum < 1:
        raise ValueError("--target-recall must be in [0.5, 1] and --min-examples ≥ 1")
    fitters = {"whole_frame": embedding_fitter(target, minimum, embedding),
               "nearest_empty": novelty_fitter(lambda item: item[2].embedding[None], target,
                                               minimum)}
    if tiles:
        fitters["tile_novelty"] = novelty_fitter(lambda item: tiles[item[0]], target, minimum)
    out = within_site(results, folder, policy, fitters, minimum)
    out["target_recall"] = target
    return out


def tile_embeddings_of(pipeline: Any, folder: Path, files: list[str],
                       grid: int) -> dict[str, Any]:
    """Per-tile embeddings of every readable file, on the frame as the pipeline decodes it
    (``grid²`` embedding invokes per frame)."""
    from edge_app.core.errors import ImageError
    from edge_app.trap.detect.site_features import tile_embeddings

    out: dict[str, Any] = {}
    for name in files:
        try:
            prep = pipeline.prepare(folder / name, name)
        except ImageError:
            continue
        out[name] = tile_embeddings(pipeline.embedder, prep.decoded.image, grid)
    return out


# --------------------------------------------------------------------------- LOSO


def loso(results: list[tuple[str, Truth, Any]], policy: Any, embedding: dict[str, Any] | None,
         target_recall: float | None, min_examples: int | None) -> dict[str, Any]:
    """Leave one source out: per source, a head trained on the others, judged on this one.

    Every frame was analysed once (detector, classifier, embedding); each fold trains a
    head exactly as ``camtrap models adapt`` does (same code, same cross-validated threshold,
    never looking at the held-out source) and re-decides the held-out frames with it. A
    fold whose training sources cannot make a head (too few empty frames, say) is reported
    with the reason and judged without one: what a trap with no head would do.

    Returns:
        ``per_source`` (one row per source, with the same frames' figures without a head as
        ``baseline``), ``pooled`` (every held-out frame, the usual summary keys) and
        ``targets`` (issue 6's targets, each true or false).

    Raises:
        ValueError: fewer than two sources, or a bad target/minimum.
    """
    import dataclasses

    import numpy as np

    from edge_app.tools.head_training import (
        DEFAULT_MIN_EXAMPLES,
        DEFAULT_TARGET_RECALL,
        LabelError,
        TrainingSet,
        train_head,
    )

    target = DEFAULT_TARGET_RECALL if target_recall is None else target_recall
    minimum = DEFAULT_MIN_EXAMPLES if min_examples is None else min_examples
    if not 0.5 <= target <= 1.0 or minimum < 1:
        raise ValueError("--target-recall must be in [0.5, 1] and --min-examples ≥ 1")
    sources = sorted({t.source for _, t, _ in results})
    if len(sources) < 2:
        raise ValueError(f"--loso needs at least 2 sources in the labels, found {sources}")
    pooled = Report()
    rows: list[dict[str, Any]] = []
    for src in sources:
        train = [(t, r) for _, t, r in results
                 if t.source != src and r is not None and r.embedding is not None]
        head = None
        info: dict[str, Any]
        try:
            head = train_head(TrainingSet(np.array([r.embedding for _, r in train], np.float32),
                                          tuple(t.label for t, _ in train)),
                              target_recall=target, min_examples=minimum, embedding=embedding)
            tr = head.meta["training"]
            info = {"threshold": round(head.threshold, 4), "penalty": tr["cv"]["penalty"],
                    "cv": {k: tr["cv"][k] for k in ("nonempty_kept", "animal_kept",
                                                    "empty_discarded")}}
        except LabelError as e:
            info = {"error": str(e)}
        fold, base = Report(), Report()
        for name, truth, r in results:
            if truth.source != src:
                continue
            error = None if r is not None else "unreadable"
            base.rows.append(judge(name, truth, r, error, policy))
            if head is not None and r is not None and r.embedding is not None:
                pe = head.empty_prob(r.embedding)
                r = dataclasses.replace(r, empty_prob=pe, head_empty=pe >= head.threshold)
            row = judge(name, truth, r, error, policy)
            fold.rows.append(row)
            pooled.rows.append(row)
        trained = [t.label for t, _ in train]
        rows.append({"source": src, "trained_on": {lab: trained.count(lab) for lab in LABELS},
                     "head": info, **_fold_figures(fold),
                     "baseline": _fold_figures(base)})
    summary = pooled.summary()
    targets = {
        "animals_kept_ge_90pct_every_source": all(
            r["animal_kept_rate"] is None or r["animal_kept_rate"] >= 0.9 for r in rows),
        "empties_discarded_ge_90pct": (summary["empty_discard_rate"] or 0.0) >= 0.9,
        "every_big_cat_kept": all(r["big_cats_kept"] == r["big_cats"] for r in rows),
        "no_leopard_tiger_on_others": summary["bigcat_false_alarms"] == 0,
    }
    return {"target_recall": target, "min_examples": minimum, "per_source": rows,
            "pooled": summary, "targets": targets}


_ANY_BIG_CAT = ("leopard", "tiger", "other_big_cat")


def _fold_figures(rep: Report) -> dict[str, Any]:
    """One source's row of the LOSO table."""
    rows = rep.rows
    animals = [r for r in rows if r.truth.label == "animal"]
    empties = [r for r in rows if r.truth.label == "empty"]
    cats = [r for r in rows if r.truth.species in _ANY_BIG_CAT]
    false_cats = [r for r in rows if r.truth.species not in BIG_CATS and r.species in BIG_CATS]
    kept = sum(r.outcome != "discard" for r in animals)
    disc = sum(r.outcome == "discard" for r in empties)
    return {
        "images": len(rows),
        "animals": len(animals),
        "animals_kept": kept,
        "animal_kept_rate": round(kept / len(animals), 4) if animals else None,
        "empties": len(empties),
        "empties_discarded": disc,
        "empty_discard_rate": round(disc / len(empties), 4) if empties else None,
        "big_cats": len(cats),
        "big_cats_kept": sum(r.outcome != "discard" for r in cats),
        "leopard_tiger_false_alarms": len(false_cats),
        "false_alarm_files": [r.file for r in false_cats],
        "kept_by_head": sum("head" in r.kept_by for r in rows),
        "lost_animals": [r.file for r in animals if r.outcome == "discard"],
    }


def format_loso(lo: dict[str, Any], out: TextIO) -> None:
    """The leave-one-source-out table (with the same frames without a head in brackets)."""
    def frac(k: int, n: int) -> str:
        return f"{k}/{n} {100 * k / n:5.1f}%" if n else "n/a"

    w = out.write
    w(f"\nleave-one-source-out (a head per source, trained on the others; target recall "
      f"{lo['target_recall']}, ≥ {lo['min_examples']} empty and animal frames to train):\n")
    w(f"{'source':10s}  {'animals kept (no head)':24s}  {'empties discarded':22s}  "
      f"{'big cats':8s}  {'leo/tig':7s}  head\n")
    for r in lo["per_source"]:
        b = r["baseline"]
        head = (f"threshold {r['head']['threshold']:.3f}, trained on " + ", ".join(
            f"{k} {v}" for k, v in r["trained_on"].items())) if "threshold" in r["head"] \
            else f"none: {r['head']['error']}"
        animals = f"{frac(r['animals_kept'], r['animals'])} ({b['animals_kept']})"
        empties = f"{frac(r['empties_discarded'], r['empties'])} ({b['empties_discarded']})"
        w(f"{r['source']:10s}  {animals:24s}  {empties:22s}  "
          f"{str(r['big_cats_kept']) + '/' + str(r['big_cats']):8s}  "
          f"{r['leopard_tiger_false_alarms']:<7d}  {head}\n")
    p = lo["pooled"]
    w(f"{'pooled':10s} animals kept {100 * (p['animal_kept_rate'] or 0):.1f}%, empties "
      f"discarded {100 * (p['empty_discard_rate'] or 0):.1f}%, leopard/tiger false alarms "
      f"{p['bigcat_false_alarms']}\n")
    w("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in lo["targets"].items())
      + "\n")
    for r in lo["per_source"]:
        if r["lost_animals"]:
            w(f"  {r['source']}: animals discarded: {', '.join(r['lost_animals'])}\n")
        if r["false_alarm_files"]:
            w(f"  {r['source']}: leopard/tiger named on: {', '.join(r['false_alarm_files'])}\n")
