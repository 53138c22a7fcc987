"""``camtrap models ls``, ``camtrap models verify [DIR]`` and ``camtrap models adapt``.

``ls`` is cheap (no hashing, no runtime): which cards exist, what they describe, and whether
their files are in the models folder. ``verify`` is what a technician runs after copying
models onto a trap: every card whose model file is present is checked end to end — sha256
against the card, label file and label mapping, the model loads in the runtime, its tensors
fit the card's format, and one invoke runs. A mismatch is a model error (exit 2), with both
hashes in the message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_app.core.models_dir import SEARCH_HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap models``."""
    sub = p.add_subparsers(dest="models_action", required=True)
    ls = sub.add_parser("ls", help="list the model cards and whether their files are present")
    ls.add_argument("--models", help=SEARCH_HELP)
    ls.add_argument("--json", action="store_true", help="one JSON object per card")
    v = sub.add_parser("verify", help="check every present model against its card")
    v.add_argument("dir", nargs="?", metavar="DIR", help="model folder (same as --models)")
    v.add_argument("--models", help=SEARCH_HELP)
    v.add_argument("--card", action="append", metavar="NAME",
                   help="also require this card's file to be present (repeatable)")
    v.add_argument("--json", action="store_true", help="one JSON object per card")
    from edge_app.tools import adapt

    a = sub.add_parser("adapt", help="train this site's head (empty/animal/person/vehicle) "
                       "from labelled frames")
    adapt.add_arguments(a)


def list_cards(models_dir: Path | None) -> list[tuple[Path, Any]]:
    """(card path, card or the ModelError) for every card, models folder first, by name."""
    from edge_app.core.errors import ModelError
    from edge_app.trap.detect.cards import card_dirs, load_card

    seen: set[str] = set()
    out: list[tuple[Path, Any]] = []
    for d in card_dirs(models_dir):
        for path in sorted(d.glob("*.toml")):
            if path.stem in seen:
                continue  # shadowed by the models folder's card of the same name
            seen.add(path.stem)
            try:
                out.append((path, load_card(path)))
            except ModelError as e:
                out.append((path, e))
    return out


def _ls(args: argparse.Namespace) -> int:
    from edge_app.core.errors import ModelError
    from edge_app.core.models_dir import resolve_models_dir

    try:
        models_dir: Path | None = resolve_models_dir(args.models, "")
    except ModelError:
        if args.models:
            raise
        models_dir = None  # still list the repository's cards
    bad = 0
    for path, card in list_cards(models_dir):
        if isinstance(card, ModelError):
            bad += 1
            row: dict[str, Any] = {"card": path.stem, "path": str(path), "error": card.reason}
            text = f"{path.stem:40s} INVALID  {card.reason}"
        else:
            present = models_dir is not None and (models_dir / card.file).is_file()
            row = {"card": card.name, "path": str(path), "task": card.task,
                   "format": card.output.format, "file": card.file,
                   "input": [card.input.width, card.input.height], "licence": card.licence,
                   "present": present}
            text = (f"{card.name:40s} {card.task:10s} {card.output.format:18s} "
                    f"{card.input.width}x{card.input.height:<5d} {card.licence:11s} "
                    f"{'present' if present else 'missing'}")
        print(json.dumps(row) if args.json else text)
    return 2 if bad else 0


def verify_card(card: Any, models_dir: Path) -> str:
    """Check one card's model end to end; returns a one-line summary.

    Raises:
        ModelError: any mismatch (sha256, labels, tensors, a model that does not run).
    """
    import math

    from edge_app.core.errors import ModelError
    from edge_app.trap.detect.cards import verify_model_file
    from edge_app.trap.detect.loader import load_model
    from edge_app.trap.detect.pipeline import DETECTOR_HEADS, _check_classifier

    verify_model_file(card, models_dir)  # first: a wrong file must not even be loaded
    m = load_model(card.name, models_dir, 1, card.task)
    try:
        if card.task == "detector":
            head = DETECTOR_HEADS.get(card.output.format)
            if head is None:
                raise ModelError(str(card.path), f"no detector head for {card.output.format}")
            head.check(m)
        elif card.task == "classifier":
            _check_classifier(m)
        else:
            size = math.prod(m.model.outputs[0].shape)
            if len(m.model.outputs) != 1 or size != card.output.params["dims"]:
                raise ModelError(str(m.model.path), f"embedding card says "
                                 f"{card.output.params['dims']} values, model outputs "
                                 f"{[list(t.shape) for t in m.model.outputs]}")
        shapes = " ".join("x".join(map(str, t.shape)) for t in m.model.outputs)
        return (f"sha256 ok, {len(m.labels)} labels, input {m.model.input.dtype.name} "
                f"{m.model.input_size[0]}x{m.model.input_size[1]}, outputs {shapes}")
    finally:
        m.model.close()


def _verify(args: argparse.Namespace) -> int:
    from edge_app.core.errors import ModelError
    from edge_app.core.models_dir import resolve_models_dir
    from edge_app.trap.detect.cards import PACKAGED_CARDS, card_dirs

    models_dir = resolve_models_dir(args.dir or args.models, "")
    required = set(args.card or [])
    failed = checked = 0
    names = set()
    cards = list_cards(models_dir)
    if not args.json:  # which cards it knows, and from where (a site's own, or camtrap's)
        for d in card_dirs(models_dir):
            n = sum(1 for path, _ in cards if path.parent == d)
            print(f"{n} card(s) in {d}" + (" (shipped with camtrap)" if d == PACKAGED_CARDS
                                            else " (the models folder's own)"))
    looked_for: list[str] = []
    for path, card in cards:
        names.add(path.stem)
        if isinstance(card, ModelError):
            failed += 1
            _report(args.json, path.stem, "invalid", card.reason, path)
            continue
        file = models_dir / card.file
        looked_for.append(str(file))
        if not file.is_file():
            if card.name in required:
                failed += 1
                _report(args.json, card.name, "missing", f"{file} not found", path)
            else:
                _report(args.json, card.name, "skipped", f"{file} not found", path)
            continue
        checked += 1
        try:
            _report(args.json, card.name, "ok", f"{file}: {verify_card(card, models_dir)}",
                    path)
        except ModelError as e:
            failed += 1
            _report(args.json, card.name, "failed", str(e), path)
    for name in sorted(required - names):
        failed += 1
        _report(args.json, name, "missing", "no such card")
    if not args.json:
        print(f"{checked} model(s) checked in {models_dir}, {failed} problem(s)")
    if checked == 0 and not failed:
        print(f"models verify: no model file of any card is in {models_dir} (looked for "
              f"{', '.join(looked_for) or 'nothing: no card'})", file=sys.stderr)
        return 2
    return 2 if failed else 0


def _report(as_json: bool, name: str, status: str, detail: str,
            card_path: Path | None = None) -> None:
    if as_json:
        print(json.dumps({"card": name, "status": status, "detail": detail,
                          "card_path": None if card_path is None else str(card_path)}))
    else:
        print(f"{name:40s} {status.upper():8s} {detail}")


def main(args: argparse.Namespace) -> int:
    """``camtrap models ls|verify|adapt``."""
    if args.models_action == "ls":
        return _ls(args)
    if args.models_action == "adapt":
        from edge_app.tools import adapt

        return adapt.main(args)
    return _verify(args)
