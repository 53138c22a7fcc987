"""The camtrap model card, label file and float reference outputs of an export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from models.mdexport.nets import MD_LABELS, Arch

LABELS_FILE = "md_labels.txt"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string is a JSON string


def write_card(out: Path, name: str, arch: Arch, size: int, *, licence: str, source: str,
               notes: str) -> Path:
    """Write ``<name>.toml`` for ``<name>.tflite`` and the label file beside it."""
    (out / LABELS_FILE).write_text("".join(f"{label}\n" for label in MD_LABELS))
    model = out / f"{name}.tflite"
    card = "\n".join([
        "schema = 1",
        'task = "detector"',
        f"file = {_q(model.name)}",
        f'sha256 = "{sha256(model)}"',
        f"licence = {_q(licence)}",
        f"source = {_q(source)}",
        f"notes = {_q(notes)}",
        f'labels = "{LABELS_FILE}"',
        "",
        "[input]",
        f"width = {size}",
        f"height = {size}",
        'colour_order = "RGB"',
        "value_range = [0.0, 1.0]",
        'resize = "letterbox"',
        "pad_value = 114",
        "",
        "[output]",
        f'format = "{arch.fmt}"',
        'coords = "normalised"',
        "",
        "[categories]",
        'animal = ["animal"]',
        'person = ["person"]',
        'vehicle = ["vehicle"]',
        "",
    ])
    path = out / f"{name}.toml"
    path.write_text(card)
    return path


def save_reference(path: Path, inputs: dict[str, np.ndarray],
                   outputs: dict[str, np.ndarray]) -> None:
    """``<name>_ref.npz``: per input image name, the float network's raw output."""
    np.savez_compressed(path, **{k: outputs[k].astype(np.float32) for k in inputs})
