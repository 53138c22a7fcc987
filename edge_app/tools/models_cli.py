"""``camtrap models ls|verify|adapt|keygen|pack|install|rollback|push``.

``keygen``/``pack`` are the maintainer's side of signed model packs
(:mod:`edge_app.tools.pack_build`); ``install``/``rollback`` the unit's
(:mod:`edge_app.trap.packs.install`); ``push`` sends a pack to a unit over MQTT
(:mod:`edge_app.tools.pack_push`, the unit's side in :mod:`edge_app.trap.packs.remote`).

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
from edge_app.tools import pack_push


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
    k = sub.add_parser("keygen", help="make the fleet's Ed25519 key pair for signing packs")
    k.add_argument("out", metavar="OUT", help="private key file (0600); OUT.pub gets the "
                   "public key for detector.pack_public_key")
    pk = sub.add_parser("pack", help="build and sign a model pack")
    pk.add_argument("--key", required=True, help="private key from 'camtrap models keygen'")
    pk.add_argument("--models", required=True, help="folder holding the model and label files")
    pk.add_argument("--cards", required=True, nargs="+", metavar="CARD",
                    help="packaged card names or .toml files (the first detector is the "
                    "pack's detector, the first classifier its classifier)")
    pk.add_argument("--head", help="site head file ('camtrap models adapt') to ship")
    pk.add_argument("--samples", help="folder of sample frames whose verdicts the unit's "
                    "self-test must reproduce")
    pk.add_argument("--version", required=True, help="pack version (its folder on the unit)")
    pk.add_argument("--name", default="camtrap-models", help="pack name")
    pk.add_argument("--out", required=True, help="pack file to write")
    for verb, text in (("install", "verify, stage, self-test and switch to a signed pack"),
                       ("rollback", "switch back to the previous pack")):
        i = sub.add_parser(verb, help=text)
        if verb == "install":
            i.add_argument("pack", metavar="PACK", help="pack file from 'camtrap models pack'")
        i.add_argument("--config", required=True, help="unit config (detector.pack_public_key, "
                       "detector.models_dir)")
        i.add_argument("--models", help=SEARCH_HELP)
    pu = sub.add_parser("push", help="send a signed pack to a unit over MQTT (resumable); the "
                        "unit installs it, restarts on it and rolls back by itself if it fails")
    pack_push.add_arguments(pu)


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
            present = models_dir is not None and card.model_path(models_dir).is_file()
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
    from edge_app.trap.detect.heads import DETECTOR_HEADS, check_classifier
    from edge_app.trap.detect.loader import load_model

    verify_model_file(card, models_dir)  # first: a wrong file must not even be loaded
    m = load_model(card.name, models_dir, 1, card.task)
    try:
        if card.task == "detector":
            head = DETECTOR_HEADS.get(card.output.format)
            if head is None:
                raise ModelError(str(card.path), f"no detector head for {card.output.format}")
            head.check(m)
        elif card.task == "classifier":
            check_classifier(m)
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
                                            else " (the active signed model pack)"))
    looked_for: list[str] = []
    for path, card in cards:
        names.add(path.stem)
        if isinstance(card, ModelError):
            failed += 1
            _report(args.json, path.stem, "invalid", card.reason, path)
            continue
        file = card.model_path(models_dir)
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


def _packs(args: argparse.Namespace) -> int:
    from edge_app.core.config import load
    from edge_app.core.models_dir import resolve_models_dir
    from edge_app.tools import pack_build
    from edge_app.trap.packs import install
    from edge_app.trap.packs.manifest import decode_public_key

    if args.models_action == "keygen":
        priv, pub = pack_build.keygen(Path(args.out))
        print(f"private key {priv} (keep it off the units), public key {pub}: put its line "
              "in detector.pack_public_key")
        return 0
    if args.models_action == "pack":
        m = pack_build.build(Path(args.key), Path(args.models), args.cards, Path(args.out),
                             version=args.version, name=args.name,
                             head=Path(args.head) if args.head else None,
                             samples=Path(args.samples) if args.samples else None)
        print(f"{args.out}: pack {m['name']} {m['version']}, {len(m['files'])} files, cards "
              f"{', '.join(m['cards'])}, {len(m['record'])} recorded sample verdict(s)")
        return 0
    cfg = load(args.config)
    root = resolve_models_dir(args.models, cfg.detector.models_dir)
    key = decode_public_key(cfg.detector.pack_public_key)
    if args.models_action == "install":
        done = install.install(Path(args.pack), root, key)
    else:
        done = install.rollback(root, key)
    print(f"model pack {done.version} active in {root} (previous: {done.previous or 'none'}); "
          "restart camtrap (systemctl restart camtrap) to load it")
    return 0


def main(args: argparse.Namespace) -> int:
    """``camtrap models ls|verify|adapt|keygen|pack|install|rollback``."""
    if args.models_action == "ls":
        return _ls(args)
    if args.models_action in ("keygen", "pack", "install", "rollback"):
        return _packs(args)
    if args.models_action == "push":
        return pack_push.main(args)
    if args.models_action == "adapt":
        from edge_app.tools import adapt

        return adapt.main(args)
    return _verify(args)
