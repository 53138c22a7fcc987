"""The three MegaDetector architectures as torch modules with camtrap's input and output.

MegaDetector v5 (md_v5a/b) is the *original* YOLOv5 P6 network (YOLOv5x6 at 1280) with its
anchor-based head: per anchor cx, cy, w, h, objectness and the class scores. Ultralytics'
own ``yolov5.yaml`` now builds the anchor-free "YOLOv5u" head instead, so the v5 network comes
from the ``yolov5`` package (a packaging of the original repository), ``models/hub/
yolov5{n,s,m,l,x}6.yaml``; its checkpoints also unpickle there. MegaDetector v6 (MDV6-yolov9-*
and MDV6-yolov10-*) are Ultralytics models: YOLOv9 gives the anchor-free ``[1, 4+C, N]`` head,
YOLOv10 the NMS-free ``[1, K, 6]`` one.

Every network is wrapped so that the exported graph has what camtrap's runtime feeds and its
decoders read: an NHWC float input in [0, 1] (the int8 quantisation then maps 0..255 exactly),
and box coordinates divided by the input size. The last matters for an int8 output: boxes in
pixels (0..1280) share one quantisation scale with scores (0..1), which would leave a score
about 5 steps of resolution; normalised, both use the whole int8 range.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

MD_LABELS = ("animal", "person", "vehicle")
MDV5_SIZE = 1280
"""MegaDetector v5's input size (YOLOv5x6 trained at 1280)."""
"""MegaDetector's classes, in its class-id order (0 animal, 1 person, 2 vehicle)."""


@dataclass(frozen=True)
class Arch:
    """One architecture family: its camtrap output format and the default (smallest) yaml."""

    name: str
    fmt: str
    yaml: str
    source: str


ARCHS = {
    "yolov5": Arch("yolov5", "yolov5", "yolov5n6.yaml",
                   "yolov5 package (original YOLOv5 repository) models/hub"),
    "yolov9": Arch("yolov9", "yolov8", "yolov9t.yaml", "ultralytics cfg/models/v9"),
    "yolov10": Arch("yolov10", "yolov10", "yolov10n.yaml", "ultralytics cfg/models/v10"),
}


class CamtrapIO(nn.Module):
    """NHWC [0, 1] input in (camtrap's tensor layout), the head's one output tensor out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.permute(0, 3, 1, 2))
        return y[0] if isinstance(y, list | tuple) else y


def _yolov5_dir() -> Path:
    import yolov5

    return Path(os.path.dirname(yolov5.__file__))


def _alias_yolov5_modules() -> None:
    """Let a checkpoint of the original YOLOv5 repository (md_v5a.0.0.pt) unpickle.

    It names its classes ``models.yolo.Model``, ``models.common.C3``, ``utils.…``: the
    repository's own top-level packages, which the ``yolov5`` package ships as
    ``yolov5.models``/``yolov5.utils``. Each such module is registered under its old name too
    (a ``sys.path`` entry would not do: ``models`` here is already this tool's package).
    """
    import importlib
    import pkgutil

    import yolov5

    for pkg in ("models", "utils"):
        base = importlib.import_module(f"yolov5.{pkg}")
        if pkg == "utils":
            sys.modules.setdefault("utils", base)
        for info in pkgutil.walk_packages(base.__path__, f"yolov5.{pkg}."):
            try:
                mod = importlib.import_module(info.name)
            except ImportError:  # optional integrations (loggers, cloud): never pickled
                continue
            sys.modules.setdefault(info.name.removeprefix("yolov5."), mod)
    del yolov5


def _build_yolov5(yaml: str, weights: Path | None, size: int) -> nn.Module:
    root = _yolov5_dir()
    if weights is not None:
        _alias_yolov5_modules()
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
        net: nn.Module = (ckpt.get("ema") or ckpt["model"]).float()
    else:
        from yolov5.models.yolo import Model

        path = Path(yaml) if Path(yaml).is_file() else root / "models" / "hub" / yaml
        net = Model(str(path), nc=len(MD_LABELS))
        # The P6 anchors (19..925 px) are sized for MegaDetector's 1280 input. At a smaller
        # test size they would be 4x the frame and the wh outputs would reach ~12 frame
        # widths, wasting the int8 output range; scaled, the outputs span what MDv5 gives.
        if size != MDV5_SIZE:
            with torch.no_grad():
                net.model[-1].anchors *= size / MDV5_SIZE  # type: ignore[index,operator]
    return net


def _v5_head_forward(self: nn.Module, x: list[torch.Tensor]) -> torch.Tensor:
    """The YOLOv5 Detect head at inference, written with ``t * t`` where it squares.

    Same arithmetic as the package's own ``Detect.forward`` (xy = (2σ + grid) · stride,
    wh = (2σ)² · anchor), with two changes: ``t * t`` because the converter cannot lower the
    ``pow`` op the original uses, and the boxes divided by the input size *before* they are
    concatenated with the scores. An int8 concatenation gives all its inputs one scale, so
    boxes in pixels (up to ~4 × the largest anchor) would leave the scores a step of ~4 and
    every score would come out 0. :func:`_patch_v5_head` checks the result against the
    package's head before the export.
    """
    z = []
    for i in range(self.nl):  # type: ignore[attr-defined]
        p = self.m[i](x[i])  # type: ignore[attr-defined,index]
        bs, _, ny, nx = p.shape
        p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)  # type: ignore[attr-defined]
        grid, anchor_grid = self._make_grid(nx, ny, i)  # type: ignore[operator]
        y = p.sigmoid()
        xy = (y[..., :2] * 2 + grid) * (self.stride[i] / self.md_size)  # type: ignore[index,attr-defined]
        wh = y[..., 2:4] * 2
        wh = wh * wh * (anchor_grid / self.md_size)  # type: ignore[attr-defined]
        z.append(torch.cat((xy, wh, y[..., 4:]), 4).reshape(bs, -1, self.no))  # type: ignore[attr-defined]
    return torch.cat(z, 1)


def _patch_v5_head(net: nn.Module, size: int) -> None:
    import types

    head = net.model[-1]  # type: ignore[index]
    x = torch.from_numpy(noise_images(np.random.default_rng(1), 1, size)).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = net(x)[0]
        want = torch.cat((want[..., :4] / size, want[..., 4:]), -1)
        head.md_size = float(size)
        head.forward = types.MethodType(_v5_head_forward, head)
        got = net(x)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-3):
        raise SystemExit(f"YOLOv5 head rewrite differs from the package's head by "
                         f"{(want - got).abs().max().item()}")


def _build_ultralytics(arch: Arch, yaml: str, weights: Path | None, size: int) -> nn.Module:
    from ultralytics.nn.modules import Detect

    if weights is not None:
        from ultralytics import YOLO

        net: nn.Module = YOLO(str(weights)).model  # type: ignore[assignment]
    else:
        from ultralytics.nn.tasks import DetectionModel

        net = DetectionModel(yaml, nc=len(MD_LABELS), verbose=False)
    for m in net.modules():
        if isinstance(m, Detect):
            m.export = True  # the decoded tensor alone, not (tensor, raw dict)
            m.format = "tflite"
            if arch.name == "yolov10":
                m.end2end = True  # the one-to-one head: [1, max_det, 6], no NMS
            _normalise_boxes(m, size)
    return net


def _normalise_boxes(head: nn.Module, size: int) -> None:
    """Make an Ultralytics head decode boxes in frame units (pixels / input size).

    Done where the boxes are made, before the head concatenates them with the scores: an
    int8 concatenation gives its inputs one scale, and boxes in pixels would leave the
    scores (0..1) a step of several units, i.e. all zero (see ``_v5_head_forward``).
    """
    decode = head._get_decode_boxes  # type: ignore[attr-defined]

    def normalised(x: dict[str, torch.Tensor]) -> torch.Tensor:
        return decode(x) / float(size)

    head._get_decode_boxes = normalised  # type: ignore[attr-defined,method-assign]


BN_SHIFT = 2.0
"""Batch-norm output mean of the random networks (see :func:`randomise`)."""


def randomise(net: nn.Module, seed: int, size: int, *, ultralytics: bool) -> None:
    """Give a freshly built network weights whose outputs depend on the input.

    A network straight from its yaml is random but nearly inert: Ultralytics initialises the
    box branch so every distance bin is equal (every box is the same) and the score branch
    to ~0.01, and deep stacks of default-initialised convolutions shrink the signal, so the
    outputs barely move with the input and a float-vs-int8 comparison would prove little.
    Here every convolution gets He-normal weights from ``seed`` and every batch norm the
    statistics of its own inputs on seeded noise images (not on any real frame), so each
    layer passes on a unit-scale signal and the head's logits spread over a few units.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        # A frozen convolution is not a weight but the DFL's fixed 0..15 bin values.
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the noise batches
        with torch.no_grad():
            bn.bias.fill_(BN_SHIFT)
    net.train()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _ in range(4):
            x = torch.from_numpy(noise_images(rng, 4, size)).permute(0, 3, 1, 2)
            net(x)
    net.eval()
    if ultralytics:
        _score_bias(net)


def _score_bias(net: nn.Module) -> None:
    """Ultralytics heads: class logits start at -3 (scores ~0.05) instead of ~-7.

    With Ultralytics' prior of 1 % objects in 80 classes nearly every random score is below
    0.01 and the decoders have almost nothing above any threshold to compare; at -3 the
    scores spread over 0..1 around 0.05.
    """
    from ultralytics.nn.modules import Detect

    for m in net.modules():
        if isinstance(m, Detect):
            heads = [m.cv3] + ([m.one2one_cv3] if getattr(m, "one2one_cv3", None) is not None
                               else [])
            for head in heads:
                for branch in head:
                    with torch.no_grad():
                        branch[-1].bias[:] = -3.0


def noise_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` smooth random colour images ``(n, size, size, 3)`` in [0, 1] (float32)."""
    small = rng.random((n, 3, size // 16, size // 16), dtype=np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(small), size=(size, size),
                                        mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.from_numpy(rng.standard_normal((n, 3, size, size), dtype=np.float32))
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous().numpy()


def reference_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` synthetic test frames ``(n, size, size, 3)`` uint8: a smooth background and a
    few sharp-edged ellipses ("animals"), no per-pixel noise, so the activations stay in
    the range the real calibration frames set (and the PNG stays small)."""
    small = rng.random((n, 3, 6, 6), dtype=np.float32) * 0.8 + 0.1
    x = torch.nn.functional.interpolate(torch.from_numpy(small), size=(size, size),
                                        mode="bicubic", align_corners=False)
    img = x.clamp(0, 1).permute(0, 2, 3, 1).numpy().copy()
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        for _ in range(4):
            cx, cy = rng.uniform(0.15, 0.85, 2)
            rx, ry = rng.uniform(0.04, 0.2, 2)
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            img[k][inside] = rng.uniform(0, 1, 3)
    return (img * 255).round().astype(np.uint8)


def build(arch: Arch, size: int, *, weights: Path | None = None, yaml: str | None = None,
          seed: int = 0) -> CamtrapIO:
    """The network of ``arch`` (random weights from ``seed`` unless ``weights``), wrapped."""
    torch.manual_seed(seed)
    y = yaml or arch.yaml
    if arch.name == "yolov5":
        net = _build_yolov5(y, weights, size)
    else:
        net = _build_ultralytics(arch, y, weights, size)
    if weights is None:
        randomise(net, seed, size, ultralytics=arch.name != "yolov5")
    net.eval()
    if arch.name == "yolov5":
        _patch_v5_head(net, size)
    return CamtrapIO(net).eval()
