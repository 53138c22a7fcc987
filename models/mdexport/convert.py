"""torch → float TFLite (litert-torch) → full-integer TFLite (AI Edge Quantizer).

Why this route: it is the one Ultralytics 8.4 itself takes for ``format=tflite`` (it now
exports through litert-torch instead of ONNX → onnx2tf → TensorFlow), it needs no
TensorFlow, and it works the same for the original YOLOv5 network, which Ultralytics' exporter
no longer accepts. Unlike Ultralytics' export, the graph's input and output stay int8 (the
quantizer's default): a camera frame is uint8 anyway, camtrap reads the quantisation from the
file, and its decoders work on the int8 output directly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def letterbox(path: Path, size: int, pad: int = 114) -> np.ndarray:
    """An image file as a ``(size, size, 3)`` float32 RGB letterbox in [0, 1]."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = min(size / im.width, size / im.height)
        w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (size, size), (pad, pad, pad))
        canvas.paste(im, ((size - w) // 2, (size - h) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def calibration_frames(folder: Path, size: int, count: int) -> list[np.ndarray]:
    """Up to ``count`` frames spread evenly over ``folder``'s images (sorted, recursive)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no calibration images in {folder}")
    pick = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
    frames = [letterbox(files[i], size) for i in sorted(set(pick.tolist()))]
    # Pin the input's observed range to exactly [0, 1]: the input scale is then 1/255 and a
    # uint8 pixel maps to its int8 value without rounding (one pixel each, no effect on the
    # activation statistics).
    frames[0][0, 0] = 0.0
    frames[0][0, 1] = 1.0
    return frames


def to_tflite(model: torch.nn.Module, size: int, frames: Iterable[np.ndarray],
              out: Path) -> Path:
    """Write the full-integer TFLite of ``model`` to ``out``, calibrated on ``frames``.

    Returns:
        The float TFLite written beside it (``<out stem>_float.tflite`` in a temporary
        folder the caller may inspect), for the conversion check.
    """
    import litert_torch
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils

    sample = torch.zeros(1, size, size, 3)
    edge = litert_torch.convert(model.eval(), (sample,))
    tmp = Path(tempfile.mkdtemp(prefix="mdexport-"))
    float_file = tmp / f"{out.stem}_float.tflite"
    edge.export(str(float_file))
    qt = quantizer.Quantizer(str(float_file))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    data = [{"args_0": f[None].astype(np.float32)} for f in frames]
    # The true min/max over all frames, not Quantizer.calibrate()'s moving average (weight
    # 0.95 on the past): with a few dozen frames the average clips every frame's extremes,
    # and on the output tensor that is a clipped box or score, not rounding.
    calib = calibrator.Calibrator(float_file.read_bytes(),
                                  qsv_update_func=qsv_utils.min_max_update)
    calib.calibrate({"serving_default": data}, qt._recipe_manager)
    result = calib.get_model_qsvs()
    qt.quantize(calibration_result=result).export_model(str(out), overwrite=True)
    return float_file
