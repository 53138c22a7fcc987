"""``python -m models.mdexport``: build, calibrate, export, check and card one detector.

Without ``--weights`` the network gets seeded random weights (a test model: its boxes mean
nothing, but its shapes, quantisation and decoding are the real ones); with ``--weights`` a
real checkpoint (``md_v5a.0.0.pt``, ``MDV6-yolov9-c.pt``, ``MDV6-yolov10-c.pt``, …) is
exported the same way. ``--refs`` also writes deterministic synthetic input images and the
float network's outputs on them, which ``tests/test_md_arch.py`` compares with the int8
file through camtrap's own runtime and decoders.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.mdexport.card import save_reference, sha256, write_card
from models.mdexport.convert import calibration_frames, to_tflite
from models.mdexport.nets import ARCHS, build, reference_images

REF_SEED = 20261203


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.mdexport", description=__doc__)
    p.add_argument("--arch", required=True, choices=sorted(ARCHS),
                   help="yolov5 = MegaDetector v5 (anchor head); yolov9 / yolov10 = MDv6")
    p.add_argument("--weights", type=Path, help="a real checkpoint (.pt); default: random")
    p.add_argument("--yaml", help="model yaml for random weights (default: the smallest: "
                   "yolov5n6.yaml, yolov9t.yaml, yolov10n.yaml)")
    p.add_argument("--imgsz", type=int, default=320, help="input size (MDv5: 1280; MDv6: 640)")
    p.add_argument("--calib", type=Path, required=True, help="folder of site frames")
    p.add_argument("--calib-count", type=int, default=32, help="calibration frames used")
    p.add_argument("--out", type=Path, required=True, help="folder for .tflite, card, labels")
    p.add_argument("--name", required=True, help="card name (file <name>.tflite)")
    p.add_argument("--licence", default="", help="licence for the card (default: MIT for "
                   "MDv5 weights, else AGPL-3.0, the licence of the model code)")
    p.add_argument("--seed", type=int, default=0, help="random weights' seed")
    p.add_argument("--refs", type=int, default=0,
                   help="write this many synthetic inputs and the float outputs on them")
    return p.parse_args()


def _invoke(path: Path, image: np.ndarray) -> np.ndarray:
    """Run a TFLite file on one RGB uint8 image; the output dequantised to float."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    x = image[None].astype(np.float32) / 255.0
    if i["dtype"] != np.float32:
        s, z = i["quantization"]
        x = np.clip(np.round(x / s + z), -128, 127).astype(i["dtype"])
    it.set_tensor(i["index"], x)
    it.invoke()
    y = it.get_tensor(o["index"])
    if o["dtype"] != np.float32:
        s, z = o["quantization"]
        return (y.astype(np.float32) - z) * s
    return y.astype(np.float32)


def main() -> int:
    a = _args()
    arch = ARCHS[a.arch]
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model = build(arch, a.imgsz, weights=a.weights, yaml=a.yaml, seed=a.seed)
    refs = {}
    rng = np.random.default_rng(REF_SEED)
    for k, img in enumerate(reference_images(rng, a.refs, a.imgsz)):
        name = f"synthetic_{a.imgsz}_{k}"
        Image.fromarray(img).save(a.out / f"{name}.png")
        refs[name] = img
    outs = {}
    for name, img in refs.items():  # before the conversion, which leaves fake tensors behind
        with torch.no_grad():
            outs[name] = model(torch.from_numpy(img[None].astype(np.float32) / 255)).numpy()
    frames = calibration_frames(a.calib, a.imgsz, a.calib_count)
    tflite = a.out / f"{a.name}.tflite"
    float_file = to_tflite(model, a.imgsz, frames, tflite)
    t_export = time.monotonic() - t0

    for name, img in refs.items():
        q = _invoke(tflite, img)
        f = _invoke(float_file, img)
        print(f"{name}: output {list(q.shape)}, max |float tflite - torch| "
              f"{np.abs(f - outs[name]).max():.2e}, max |int8 - torch| "
              f"{np.abs(q - outs[name]).max():.4f}, mean {np.abs(q - outs[name]).mean():.4f}")
    if refs:
        save_reference(a.out / f"{a.name}_ref.npz", refs, outs)

    weights = str(a.weights.name) if a.weights else f"random weights, seed {a.seed}"
    yaml = "" if a.weights else f" from {a.yaml or arch.yaml} ({arch.source})"
    # MDv5 weights are MIT; the Ultralytics-trained MDv6 ones and every random export carry
    # the AGPL-3.0 of the model code they were built with. --licence overrides (e.g. the MDv6
    # releases under other licences).
    licence = a.licence or ("MIT" if a.weights and arch.name == "yolov5" else "AGPL-3.0")
    source = (f"{arch.name}{yaml}, {weights}; models/mdexport (litert-torch, AI Edge "
              f"Quantizer static int8, {len(frames)} calibration frames from {a.calib.name})")
    notes = ("MegaDetector classes animal/person/vehicle."
             + ("" if a.weights else " Random weights: a test model for shapes, quantisation "
                "and decoding; its boxes mean nothing."))
    card = write_card(a.out, a.name, arch, a.imgsz, licence=licence, source=source,
                      notes=notes)
    print(f"{tflite}: {tflite.stat().st_size / 1e6:.2f} MB, sha256 {sha256(tflite)}, "
          f"export {t_export:.0f} s; card {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
