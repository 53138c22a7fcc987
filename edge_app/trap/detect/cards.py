"""Model cards: what a model file is, where it came from and how to talk to it.

A card is a small TOML file named ``<name>.toml``. It pins the model file by sha256 (a trap
in the field must never run a half-copied or swapped model), records the licence and source,
and describes everything the pipeline needs to drive the model without model-specific code:
input size, colour order and value range, the output *format* (which decoder to use), the
label file and how the model's labels map onto camtrap's categories and species.

Only the card is code-reviewed; the model file and label file live in the models folder
(``--models``/``detector.models_dir``/``CAMTRAP_MODELS``) because they are large and some are
AGPL-licensed. Cards are looked up first in the *active signed model pack* (``<models>/current``,
installed by ``camtrap models install``; see :mod:`edge_app.trap.packs`) and then among the
cards shipped inside the package (``edge_app/trap/detect/model_cards``, package data). A loose
card dropped into the models folder is ignored (and logged): a card decides which bytes the trap
trusts, so only a code-reviewed packaged card or a card that came in a signed, self-tested pack
may do that — a stray copy on an SD card must not quietly re-point the detector. Packaged cards
ship in the wheel, not beside the source tree, because a unit runs a plain ``pip install`` of
the wheel: there is no repository next to it, and a folder of model files must be all it needs.

New output formats plug in through :data:`FORMATS`: a format names the task it serves and the
extra ``[output]`` keys it accepts (with types and defaults). The loader validates cards
against that table, so adding ``yolov5`` or ``ssd_raw_anchors`` is a table entry plus a
decoder, not a loader rewrite.

Card schema (version 1)::

    schema = 1
    task = "detector"                  # or "classifier" or "embedding"
    file = "yolov8n_coco_int8_640.tflite"
    sha256 = "d4738..."
    licence = "AGPL-3.0"
    source = "where it came from"
    notes = "free text"                # optional
    second_look_tiles = true           # optional, detectors: tiles measured to help (see config)
    labels = "coco80_labels.txt"       # one label per line, line i = class i
                                       # (optional for an embedding model)

    [input]
    width = 640
    height = 640
    colour_order = "RGB"               # or "BGR"
    value_range = [0.0, 1.0]           # real pixel range the model was trained on
    resize = "letterbox"               # or "stretch"
    pad_value = 114                    # letterbox fill, 0-255

    [output]
    format = "yolov8"                  # a key of FORMATS, plus that format's own keys

    [categories]                       # camtrap category -> model labels (optional)
    animal = ["bird", "cat"]
    [species]                          # camtrap species -> model labels (optional)
    leopard = ["leopard", "jaguar"]

Label names in ``[categories]``/``[species]`` match a label line exactly or its first
comma-separated name (ImageNet lines read ``leopard, Panthera pardus``); every name must exist
in the label file, so a typo fails at load time instead of silently never matching.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray

from edge_app.core.errors import ModelError
from edge_app.core.events import CATEGORIES, SPECIES, Category, Species

log = logging.getLogger(__name__)

Task = Literal["detector", "classifier", "embedding"]
TASKS: tuple[Task, ...] = ("detector", "classifier", "embedding")
CARD_SCHEMA = 1
PACKAGED_CARDS = Path(str(resources.files("edge_app.trap.detect") / "model_cards"))
"""The cards shipped in the package, searched after the models folder.

Found through :mod:`importlib.resources` so that an installed wheel, an sdist build and an
editable checkout all read the same files (declared as package data in ``pyproject.toml``;
``tests/test_packaging.py`` checks the built wheel holds them). pip unpacks wheels, so this is
a real folder; a zipped import is not a supported way to run camtrap.
"""
REPO_MODELS = PACKAGED_CARDS
"""Former name of :data:`PACKAGED_CARDS` (the cards used to live in ``<repo>/models``)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class FormatSpec:
    """One output format: the task it serves and the ``[output]`` keys it accepts.

    Attributes:
        task: ``detector``, ``classifier`` or ``embedding``.
        params: extra key → (allowed Python types, default). A default of ``None`` makes the
            key required.
        choices: key → allowed values, for string parameters.
        doc: one line for ``camtrap models ls`` and error messages.
        validate: checks the filled-in params together; returns (key, reason) when wrong.
        outputs: the output tensor roles, in the model's output order (default for the
            ``outputs`` parameter of multi-output formats); empty for one-output formats.
    """

    task: Task
    params: Mapping[str, tuple[tuple[type, ...], Any]] = field(default_factory=dict)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    doc: str = ""
    validate: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None
    outputs: tuple[str, ...] = ()


def _check_roles(roles: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[str, str] | None]:
    """A validator: ``outputs`` must name each role exactly once."""

    def check(p: Mapping[str, Any]) -> tuple[str, str] | None:
        got = p.get("outputs", list(roles))
        if sorted(got) != sorted(roles) or not all(isinstance(r, str) for r in got):
            return "outputs", f"must list each of {', '.join(roles)} once, got {got!r}"
        return None

    return check


def _check_ssd(p: Mapping[str, Any]) -> tuple[str, str] | None:
    v = p["variances"]
    if len(v) != 4 or not all(isinstance(x, int | float) and not isinstance(x, bool) and x > 0
                              for x in v):
        return "variances", f"must be 4 positive numbers, got {v!r}"
    return _check_roles(("scores", "boxes", "anchors"))(p)


def _check_embedding(p: Mapping[str, Any]) -> tuple[str, str] | None:
    if p["dims"] < 1:
        return "dims", f"must be ≥ 1, got {p['dims']}"
    return None


_COORDS = {"coords": ((str,), "normalised")}
_COORD_CHOICES = {"coords": ("normalised", "pixels")}

FORMATS: dict[str, FormatSpec] = {
    "yolov8": FormatSpec(
        task="detector",
        params=_COORDS,
        choices=_COORD_CHOICES,
        doc="[1, 4+C, N]: per anchor cx, cy, w, h then C class scores; no NMS in the graph. "
        "coords: 'normalised' (Ultralytics TFLite export) or 'pixels' of the input",
    ),
    "yolov5": FormatSpec(
        task="detector",
        params=_COORDS,
        choices=_COORD_CHOICES,
        doc="[1, N, 5+C]: per anchor cx, cy, w, h, objectness, C class scores (score = "
        "objectness x class); MegaDetector v5 / MDv1000 layout; no NMS in the graph",
    ),
    "yolov10": FormatSpec(
        task="detector",
        params=_COORDS,
        choices=_COORD_CHOICES,
        doc="[1, K, 6]: x_min, y_min, x_max, y_max, score, class id; NMS-free (YOLOv10, "
        "MegaDetector v6-compact)",
    ),
    "ssd_raw_anchors": FormatSpec(
        task="detector",
        params={"encoding": ((str,), None), "order": ((str,), "xy"),
                "variances": ((list,), [0.1, 0.1, 0.2, 0.2]),
                "activation": ((str,), "none"),
                "outputs": ((list,), ["scores", "boxes", "anchors"])},
        choices={"encoding": ("corners", "centre_size"), "order": ("xy", "yx"),
                 "activation": ("none", "sigmoid")},
        doc="3 tensors: scores [1, N, C] (incl. background), box encodings [1, N, 4], anchors "
        "[1, N, 4]; encoding 'corners' (ST model zoo) or 'centre_size' with variances; "
        "outputs: the roles in output order",
        validate=_check_ssd,
        outputs=("scores", "boxes", "anchors"),
    ),
    "tflite_postprocess": FormatSpec(
        task="detector",
        params={"label_offset": ((int,), 0),
                "outputs": ((list,), ["boxes", "classes", "scores", "count"])},
        doc="TFLite_Detection_PostProcess: boxes [1, K, 4] (y_min, x_min, y_max, x_max), "
        "classes [1, K], scores [1, K], count [1] (EfficientDet-Lite, Coral SSD); "
        "label_offset = 1 when the label file starts with 'background'",
        validate=_check_roles(("boxes", "classes", "scores", "count")),
        outputs=("boxes", "classes", "scores", "count"),
    ),
    "classifier": FormatSpec(
        task="classifier",
        params={"softmax": ((bool,), False)},
        doc="[1, C] class scores; softmax = true when the model outputs logits",
    ),
    "embedding": FormatSpec(
        task="embedding",
        params={"dims": ((int,), None)},
        doc="[1, ..., D] feature vector (unit-normalised by the decoder); no labels",
        validate=_check_embedding,
    ),
}
"""Known output formats. Adding one is an entry here, a pure decoder in
:mod:`edge_app.trap.detect.decoders` and a head in
:data:`edge_app.trap.detect.heads.DETECTOR_HEADS`."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """How to turn an RGB image into the model's input tensor.

    The tensor's dtype, scale and zero point are *not* here: they are read from the model
    file at run time, so a re-quantised export needs no card change.
    """

    width: int
    height: int
    colour_order: Literal["RGB", "BGR"] = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: int = 114


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """The output format name and its format-specific parameters (defaults filled in)."""

    format: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A validated model card.

    Attributes:
        name: the card's name (its file stem), as used in ``detector.detector``.
        path: where the card was read from.
        task: ``detector``, ``classifier`` or ``embedding``.
        file: model file name, relative to the models folder.
        sha256: expected hex digest of the model file.
        licence: SPDX-style licence of the model weights.
        source: where the weights came from.
        labels: label file name, relative to the models folder.
        input: input layout.
        output: output format.
        categories: camtrap category → model label names.
        species: camtrap species → model label names.
        notes: free text.
        second_look_tiles: the second look's tiles were measured to help with this detector
            (more animals kept, every empty still discarded); ``detector.second_look_tiles``
            only turns them on for such a card, so a site that swaps in another detector
            does not inherit a setting measured on this one.
    """

    name: str
    path: Path
    task: Task
    file: str
    sha256: str
    licence: str
    source: str
    labels: str
    input: InputSpec
    output: OutputSpec
    categories: Mapping[Category, tuple[str, ...]]
    species: Mapping[Species, tuple[str, ...]]
    notes: str = ""
    second_look_tiles: bool = False

    def model_path(self, models_dir: Path) -> Path:
        """The model file this card describes: in the active pack, else in ``models_dir``."""
        return file_in(models_dir, self.file)

    def labels_path(self, models_dir: Path) -> Path:
        """The label file: in the active pack, else in ``models_dir``."""
        return file_in(models_dir, self.labels)


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one TOML table that remembers which keys were used.

    Unknown keys are errors (like the config): a misspelt ``colour_ordr`` must not silently
    fall back to RGB on a BGR model.
    """

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str) -> None:
        self.path = path
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def fail(self, key: str, reason: str) -> ModelError:
        where = f"{self.prefix}{key}" if key else self.prefix.rstrip(".")
        return ModelError(str(self.path), f"bad model card: {where}: {reason}")

    def get(self, key: str, types: tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is None:
                raise self.fail(key, "is required")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in types:
            raise self.fail(key, f"must be {_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise self.fail(key, f"must be {_names(types)}, got {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        return cast(str, self.get(key, (str,), default))

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def table_of(self, key: str, required: bool = True) -> _Reader:
        value = self.get(key, (dict,), None if required else {})
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def check_unknown(self, allowed: set[str] | None = None) -> None:
        known = self.used if allowed is None else allowed
        for k in self.table:
            if k not in known:
                raise self.fail(k, f"unknown key (known: {', '.join(sorted(known))})")


def _names(types: tuple[type, ...]) -> str:
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number",
                        "bool": "true/false", "dict": "a table", "list": "a list"}
                       .get(t.__name__, t.__name__) for t in types)


def _label_lists(r: _Reader, allowed: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for key, value in r.table.items():
        if key not in allowed:
            raise r.fail(key, f"unknown key (known: {', '.join(allowed)})")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise r.fail(key, "must be a list of label names")
        out[key] = tuple(value)
    return out


def parse_card(data: Mapping[str, Any], name: str, path: Path) -> ModelCard:
    """Validate a parsed card document.

    Args:
        data: the TOML document.
        name: the card's name (file stem).
        path: the card file, for error messages.

    Raises:
        ModelError: naming the card file and the dotted key at fault.
    """
    top = _Reader(path, data, "")
    schema = top.get("schema", (int,))
    if schema != CARD_SCHEMA:
        raise top.fail("schema", f"this camtrap reads schema {CARD_SCHEMA}, got {schema}")
    task = cast(Task, top.choice("task", TASKS))
    file = top.text("file")
    # An embedding has no classes; every other task must say what its outputs mean.
    labels = top.text("labels", "" if task == "embedding" else None)
    for key, value in (("file", file), ("labels", labels)):
        if key == "labels" and not value and task == "embedding":
            continue
        if Path(value).name != value or not value:
            raise top.fail(key, f"must be a plain file name in the models folder, got {value!r}")
    sha = top.text("sha256").lower()
    if not _SHA_RE.match(sha):
        raise top.fail("sha256", "must be 64 hex digits")
    licence = top.text("licence")
    source = top.text("source")
    notes = top.text("notes", "")
    tiles = bool(top.get("second_look_tiles", (bool,), False))
    if tiles and task != "detector":
        raise top.fail("second_look_tiles", "only a detector card can say so")

    ri = top.table_of("input")
    width = ri.get("width", (int,))
    height = ri.get("height", (int,))
    for key, v in (("width", width), ("height", height)):
        if not 8 <= v <= 4096:
            raise ri.fail(key, f"must be 8..4096, got {v}")
    vr = ri.get("value_range", (list,), [0.0, 1.0])
    if (len(vr) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                for v in vr) or vr[0] >= vr[1]):
        raise ri.fail("value_range", f"must be [low, high] with low < high, got {vr!r}")
    pad = ri.get("pad_value", (int,), 114)
    if not 0 <= pad <= 255:
        raise ri.fail("pad_value", f"must be 0..255, got {pad}")
    inp = InputSpec(
        width=width,
        height=height,
        colour_order=cast(Literal["RGB", "BGR"], ri.choice("colour_order", ("RGB", "BGR"),
                                                           "RGB")),
        value_range=(float(vr[0]), float(vr[1])),
        resize=cast(Literal["letterbox", "stretch"],
                    ri.choice("resize", ("letterbox", "stretch"), "letterbox")),
        pad_value=pad,
    )
    ri.check_unknown()

    ro = top.table_of("output")
    fmt = ro.choice("format", tuple(FORMATS))
    spec = FORMATS[fmt]
    if spec.task != task:
        raise ro.fail("format", f"{fmt!r} is a {spec.task} format but task = {task!r}")
    params: dict[str, Any] = {}
    for key, (types, default) in spec.params.items():
        value = ro.get(key, types, default)
        if key in spec.choices and value not in spec.choices[key]:
            raise ro.fail(key, f"must be one of {', '.join(spec.choices[key])}, got {value!r}")
        params[key] = value
    if spec.validate is not None:
        bad = spec.validate(params)
        if bad is not None:
            raise ro.fail(*bad)
    ro.check_unknown()

    categories = _label_lists(top.table_of("categories", required=False), CATEGORIES)
    species = _label_lists(top.table_of("species", required=False), SPECIES)
    top.check_unknown()
    return ModelCard(
        name=name,
        path=path,
        task=task,
        file=file,
        sha256=sha,
        licence=licence,
        source=source,
        labels=labels,
        input=inp,
        output=OutputSpec(fmt, params),
        categories=cast(dict[Category, tuple[str, ...]], categories),
        species=cast(dict[Species, tuple[str, ...]], species),
        notes=notes,
        second_look_tiles=tiles,
    )


def load_card(path: Path) -> ModelCard:
    """Read and validate one card file.

    Raises:
        ModelError: the file is unreadable, not TOML, or not a valid card.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelError(str(path), f"cannot read model card: {e.strerror}") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ModelError(str(path), f"model card is not valid TOML: {e}") from e
    return parse_card(data, path.stem, path)


PACK_MANIFEST = "manifest.json"
"""The file that makes a folder a model pack (see :mod:`edge_app.trap.packs`)."""
ACTIVE_PACK = "current"
"""``<models>/current``: the symlink to the active pack, switched atomically on install."""


def pack_dir(models_dir: Path | None) -> Path | None:
    """The model pack whose cards and files win, if any.

    ``<models>/current`` when a pack is installed there; or ``models_dir`` itself when it *is*
    an unpacked pack (the installer self-tests a staged pack this way, before switching).
    The signature is checked once, at install; like the models folder itself, an installed
    pack is then trusted as far as the sha256 in each card goes.
    """
    if models_dir is None:
        return None
    current = models_dir / ACTIVE_PACK
    if (current / PACK_MANIFEST).is_file():
        return current
    if (models_dir / PACK_MANIFEST).is_file():
        return models_dir
    return None


def file_in(models_dir: Path, name: str) -> Path:
    """A model or label file: the active pack's copy when it has one, else the folder's.

    A pack may carry only the detector; the other models (the classifier, the embedder) then
    still come from the models folder, pinned by their packaged cards' sha256.
    """
    pack = pack_dir(models_dir)
    if pack is not None and (pack / name).is_file():
        return pack / name
    return models_dir / name


_warned_loose: set[str] = set()


def card_dirs(models_dir: Path | None) -> list[Path]:
    """Where cards are searched, in order: the active signed pack (if any), then the packaged
    cards. Never the loose models folder: see the module docstring."""
    pack = pack_dir(models_dir)
    if models_dir is not None and pack != models_dir and models_dir.is_dir():
        loose = sorted(p.name for p in models_dir.glob("*.toml"))
        if loose and str(models_dir) not in _warned_loose:
            _warned_loose.add(str(models_dir))
            log.warning("ignoring loose model card(s) %s in %s: only cards in a signed model "
                        "pack (camtrap models install) override the packaged ones",
                        ", ".join(loose), models_dir)
    dirs = [pack] if pack is not None else []
    dirs.append(PACKAGED_CARDS)
    return dirs


def find_card(name: str, models_dir: Path | None) -> Path:
    """Find the card called ``name``: in the active pack first, then the package's.

    A pack's card wins so that a site can pin its own model (or a re-export of the same one)
    without touching the installed package — through a signed pack only.

    Raises:
        ModelError: ``name`` is not a plain card name, or no such card exists.
    """
    if not _NAME_RE.match(name):
        raise ModelError(name, "model card names are letters, digits, '.', '_' and '-'")
    tried = []
    for d in card_dirs(models_dir):
        p = d / f"{name}.toml"
        if p.is_file():
            return p
        tried.append(str(p))
    loose = "" if models_dir is None or not (models_dir / f"{name}.toml").is_file() else (
        f"; {models_dir / f'{name}.toml'} is a loose card, ignored: install it in a signed "
        "model pack")
    raise ModelError(name, f"no model card found (looked for {' and '.join(tried)}){loose}")


# --------------------------------------------------------------------------- files


_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, computed once per process per (file, size, mtime, inode).

    Hashing a 3-4 MB model costs ~30 ms on a Pi Zero 2 W and the pipeline may be rebuilt
    (stage restarts, ``camtrap models verify`` then load), so the digest is cached; the key
    includes size, mtime and inode so a replaced file is hashed again.

    Raises:
        ModelError: the file is missing or unreadable (names the path).
    """
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise ModelError(str(path), "model file not found") from e
    except OSError as e:
        raise ModelError(str(path), f"cannot read model file: {e.strerror}") from e
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ModelError(str(path), f"cannot read model file: {e.strerror}") from e
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def verify_model_file(card: ModelCard, models_dir: Path) -> Path:
    """Check the model file against the card's sha256 and return its path.

    Raises:
        ModelError: missing file, or a digest that differs from the card (both digests and
            the file path are in the message, so a technician can tell a truncated copy from
            a different model).
    """
    path = card.model_path(models_dir)
    actual = sha256_file(path)
    if actual != card.sha256:
        raise ModelError(
            str(path),
            f"sha256 mismatch for model card {card.name!r} ({card.path}): "
            f"expected {card.sha256}, actual {actual}; refusing to load",
        )
    return path


def load_labels(card: ModelCard, models_dir: Path) -> tuple[str, ...]:
    """The card's label file, one label per line (line i = class i).

    Raises:
        ModelError: the file is missing or not UTF-8.
    """
    if not card.labels:
        return ()  # an embedding model: no classes
    path = card.labels_path(models_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ModelError(str(path), f"label file for model card {card.name!r} not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(str(path), f"cannot read label file: {e}") from e
    labels = tuple(line.strip() for line in text.splitlines())
    # A trailing blank line is an editor artefact, not a class.
    while labels and not labels[-1]:
        labels = labels[:-1]
    if not labels:
        raise ModelError(str(path), "label file is empty")
    return labels


def short_label(label: str) -> str:
    """The first comma-separated name of a label (``leopard, Panthera pardus`` → ``leopard``)."""
    return label.split(",", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class ClassMap:
    """Class index → camtrap category/species, as arrays for vectorised lookups.

    Attributes:
        names: short label name per class (what ``Detection.cls`` reports).
        category_of: per class, index into :data:`edge_app.core.events.CATEGORIES` or -1 (ignored).
        species_of: per class, index into :data:`edge_app.core.events.SPECIES` or -1.
        category_classes: per category, the class indices mapped to it.
        species_classes: per species, the class indices mapped to it.
    """

    names: tuple[str, ...]
    category_of: NDArray[np.int8]
    species_of: NDArray[np.int8]
    category_classes: tuple[NDArray[np.intp], ...]
    species_classes: tuple[NDArray[np.intp], ...]

    @property
    def mapped_classes(self) -> NDArray[np.intp]:
        """Classes that map to some category (the only ones worth decoding)."""
        return np.flatnonzero(self.category_of >= 0)

    def category_max(self, class_scores: NDArray[np.float32]) -> NDArray[np.float32]:
        """Per category, the highest of its classes' scores (0 for an unmapped category)."""
        return np.array([class_scores[idx].max() if idx.size else 0.0
                         for idx in self.category_classes], dtype=np.float32)

    def species_max(self, class_scores: NDArray[np.float32]) -> NDArray[np.float32]:
        """Per species, the highest of its classes' scores (for detectors naming species)."""
        return np.array([class_scores[idx].max() if idx.size else 0.0
                         for idx in self.species_classes], dtype=np.float32)

    def species_sum(self, probs: NDArray[np.float32]) -> NDArray[np.float32]:
        """Per species, the summed probability of its classes.

        Summing is right for a softmax classifier whose classes split one animal finely
        (leopard / jaguar / snow leopard / cheetah): each alone may be below threshold while
        "some spotted cat" is confident.
        """
        return np.array([probs[idx].sum() if idx.size else 0.0
                         for idx in self.species_classes], dtype=np.float32)


def build_class_map(card: ModelCard, labels: tuple[str, ...]) -> ClassMap:
    """Resolve the card's label names against the label file.

    Raises:
        ModelError: a name in ``[categories]``/``[species]`` is not in the label file, or one
            label is mapped to two categories.
    """
    short = tuple(short_label(label) for label in labels)
    index: dict[str, list[int]] = {}
    for i, (full, s) in enumerate(zip(labels, short, strict=True)):
        index.setdefault(full, []).append(i)
        if s != full:
            index.setdefault(s, []).append(i)

    def resolve(table: Mapping[Any, tuple[str, ...]], names: tuple[str, ...],
                what: str) -> tuple[NDArray[np.int8], tuple[NDArray[np.intp], ...]]:
        of = np.full(len(labels), -1, dtype=np.int8)
        per: list[NDArray[np.intp]] = []
        for k, key in enumerate(names):
            idx: set[int] = set()
            for label in table.get(key, ()):
                if label not in index:
                    raise ModelError(str(card.path), f"bad model card: {what}.{key}: label "
                                     f"{label!r} is not in {card.labels}")
                idx.update(index[label])
            for i in sorted(idx):
                if of[i] >= 0 and of[i] != k:
                    raise ModelError(str(card.path), f"bad model card: label {labels[i]!r} is "
                                     f"mapped to both {names[of[i]]} and {key}")
                of[i] = k
            per.append(np.array(sorted(idx), dtype=np.intp))
        return of, tuple(per)

    category_of, category_classes = resolve(card.categories, CATEGORIES, "categories")
    species_of, species_classes = resolve(card.species, SPECIES, "species")
    # A species is an animal: a detector card that names "leopard" only under [species]
    # still reports it as an animal box.
    orphan = (species_of >= 0) & (category_of < 0)
    if orphan.any():
        a = CATEGORIES.index("animal")
        category_of[orphan] = a
        per = list(category_classes)
        per[a] = np.union1d(per[a], np.flatnonzero(orphan)).astype(np.intp)
        category_classes = tuple(per)
    return ClassMap(short, category_of, species_of, category_classes, species_classes)

