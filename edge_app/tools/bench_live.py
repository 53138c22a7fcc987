"""``camtrap bench detect --live``: the camera-array path against the JPEG path, over bare invoke.

On the trap the camera hands over raw pixels; the first picamera2 adapter JPEG-encoded every
frame at capture and the detector decoded it again, and that round trip was most of the
pre-processing the JPEG bench measures. This benchmark takes frames the way the trap takes them
now — the real picamera2 adapter (:class:`~edge_app.trap.hardware.camera.PiCamera2Camera`) over
the picamera2 API fake, showing the benchmark images at the camera's configured size (``main``
at ``--size``, the lores stream beside it) — and runs each frame through the pipeline twice,
interleaved with the detector's bare ``invoke()`` as in ``bench detect``:

* **live**: the frame's pixel array (wrap, whole-factor reduce, letterbox; no decode);
* **jpeg**: the same frame JPEG-encoded at ``camera.jpeg_quality`` (as the old adapter stored
  it), decoded by the pipeline as any JPEG.

The two paths alternate order every pass, so neither always runs on a warmer cache. The JSON
keeps the shape of ``bench detect --json`` (``results``: one object per model with ``model``
and ``overhead_ratio``, here the live path's; ``overhead_ratio_detector_only`` is the median of
decode + pre-process + post-process per frame over the bare invoke, i.e. without the crop
classifier's stage), with the JPEG path's figures under
``jpeg_path`` and the camera-side figures under ``live``: the JPEG encode the old adapter paid
per *captured* frame (``capture_encode_ms_median``) and the one the store now pays per *kept*
event (``store_encode_ms_median``, with the thumbnail).

Allocation (``alloc_peak_kb_median``) is tracemalloc's peak per analysed frame: numpy and
Python objects (the pixel arrays' wrappers, decode buffers, result objects), not Pillow's own
image memory. Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_app.core.events import Frame

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "invoke", "postprocess", "classify")
SITE_STAGES = ("embed", "head", "background")


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` → (w, h), both even (YUV420) and ≥ 64."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from None
    if w < 64 or h < 64 or w % 2 or h % 2 or w * h > 64_000_000:
        raise argparse.ArgumentTypeError(f"{text}: sides must be even, ≥ 64, ≤ 64 MP")
    return w, h


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def camera_frames(paths: list[Path], size: tuple[int, int], lores_width: int,
                  ) -> tuple[list[Frame], dict[str, Any]]:
    """One captured frame per image, through the Pi adapter over the picamera2 API fake."""
    from edge_app.core.clock import SystemClock
    from edge_app.core.config import CameraConfig
    from edge_app.sim.picamera2_fake import Picamera2
    from edge_app.trap.hardware.camera import PiCamera2Camera

    clock = SystemClock()
    made: list[Picamera2] = []

    def factory() -> Picamera2:
        made.append(Picamera2(images=paths, clock=clock, frame_rate=0))
        return made[-1]

    cfg = CameraConfig(source="picamera2", width=size[0], height=size[1],
                       lores_width=min(lores_width, size[0]), pre_trigger_frames=0)
    cam = PiCamera2Camera(cfg, clock, factory)
    cam.start()
    try:
        frames = []
        for i in range(len(paths)):
            made[-1].show(i)
            frames.append(cam.capture(i))
        session = cam.session
        assert session is not None
        info = {"camera": "PiCamera2Camera over the picamera2 API fake",
                "size": list(session.main_size), "lores": list(session.lores_size),
                "main_format": "BGR888", "jpeg_quality": cfg.jpeg_quality}
    finally:
        cam.close()
    return frames, info


def encode_costs(frames: list[Frame], quality: int) -> tuple[list[bytes], float, float]:
    """The frames as JPEGs (the old adapter's capture output), the median encode time, and the
    median time the store now spends per kept event (image + thumbnail)."""
    from edge_app.trap.store.media import encode_pixels, thumbnail_from_pixels

    jpegs, enc, store = [], [], []
    for f in frames:
        assert f.pixels is not None
        t0 = time.perf_counter()
        data = encode_pixels(f.pixels, quality)
        t1 = time.perf_counter()
        thumbnail_from_pixels(f.pixels, 320, 70, 24 * 1024)
        t2 = time.perf_counter()
        jpegs.append(data)
        enc.append((t1 - t0) * 1e3)
        store.append((t2 - t0) * 1e3)
    return jpegs, _median(enc), _median(store)


class _Path:
    """The timings of one path (live or jpeg) for one model."""

    def __init__(self) -> None:
        self.frames: list[float] = []
        self.invokes: list[float] = []
        self.stages: dict[str, list[float]] = {s: [] for s in STAGES}
        self.passes: list[float] = []
        self.labels: list[str] = []
        self.around: list[float] = []  # decode + preprocess + postprocess, per frame

    def summary(self, clf_inv: float, alloc_kb: float) -> dict[str, Any]:
        inv, frame = _median(self.invokes), _median(self.frames)
        clf_total = clf_inv * statistics.mean(self.passes) if self.passes else 0.0
        return {
            "invoke_ms_median": round(inv, 2),
            "frame_ms_median": round(frame, 2),
            "overhead_ratio": round((frame - inv) / inv, 3) if inv else None,
            "overhead_ratio_excl_classifier": round((frame - inv - clf_total) / inv, 3)
            if inv else None,
            "overhead_ratio_detector_only": round(_median(self.around) / inv, 3)
            if inv else None,
            "classifier_passes_per_frame": round(statistics.mean(self.passes), 2)
            if self.passes else 0.0,
            "stages_ms": {s: round(_median(v), 2) for s, v in self.stages.items()},
            "alloc_peak_kb_median": round(alloc_kb, 1),
        }


def bench_model(models_dir: Path, detector: str, classifier: str | None,
                frames: list[Frame], jpegs: list[bytes], repeat: int, threads: int,
                site: bool) -> dict[str, Any]:
    """Both paths for one detector; see the module docstring."""
    from edge_app.core.config import DetectorConfig
    from edge_app.tools.bench_frames import alloc_peak_kb as _alloc_peak_kb
    from edge_app.tools.bench_frames import classifier_passes as _classifier_passes
    from edge_app.trap.detect.pipeline import Pipeline

    cfg = replace(DetectorConfig(), detector=detector, num_threads=threads)
    if classifier is not None:
        cfg = replace(cfg, classifier=classifier)
    live, jpeg = _Path(), _Path()
    clf_invokes: list[float] = []
    with Pipeline(cfg, models_dir, embed=site) as p:
        det, clf = p.detector_model, p.classifier_model
        for f, data in zip(frames, jpegs, strict=True):  # warm-up
            p.analyse(f)
            p.analyse(data)
        for k in range(repeat):
            for f, data in zip(frames, jpegs, strict=True):
                order: list[tuple[_Path, Any]] = [(live, f), (jpeg, data)]
                for path, item in (order if k % 2 == 0 else order[::-1]):
                    t0 = time.perf_counter()
                    r = p.analyse(item)
                    t1 = time.perf_counter()
                    det.run()
                    t2 = time.perf_counter()
                    site_ms = sum(r.stages_ms.get(s, 0.0) for s in SITE_STAGES)
                    path.frames.append((t1 - t0) * 1e3 - site_ms)
                    path.invokes.append((t2 - t1) * 1e3)
                    for s in STAGES:
                        path.stages[s].append(r.stages_ms.get(s, 0.0))
                    path.around.append(sum(r.stages_ms.get(s, 0.0) for s in
                                           ("decode", "preprocess", "postprocess")))
                    path.passes.append(float(_classifier_passes(r)))
                    path.labels.append(r.label)
                if clf is not None:
                    t3 = time.perf_counter()
                    clf.run()
                    clf_invokes.append((time.perf_counter() - t3) * 1e3)
        threads_used = det.num_threads
        live_alloc = _alloc_peak_kb(p, [("", f) for f in frames])
        jpeg_alloc = _alloc_peak_kb(p, [("", d) for d in jpegs])
        if p.background is not None:
            p.background.close()
    clf_inv = _median(clf_invokes)
    same = sum(a == b for a, b in zip(live.labels, jpeg.labels, strict=True))
    out: dict[str, Any] = {"model": detector, "path": "live",
                           "classifier": cfg.classifier or None, "images": len(frames),
                           "frames": len(live.frames), "threads": threads_used,
                           "classifier_invoke_ms_median": round(clf_inv, 2)
                           if clf_invokes else None}
    out.update(live.summary(clf_inv, live_alloc))
    out["jpeg_path"] = jpeg.summary(clf_inv, jpeg_alloc)
    out["labels_agree"] = round(same / len(live.labels), 3) if live.labels else None
    return out


def main(args: argparse.Namespace, models_dir: Path, folder: Path, paths: list[Path],
         detectors: list[str], site: bool) -> int:
    """``bench detect --live``."""
    from edge_app.core.config import CameraConfig

    quality = CameraConfig().jpeg_quality
    frames, info = camera_frames(paths, args.size, args.lores_width)
    jpegs, enc_ms, store_ms = encode_costs(frames, quality)
    info["capture_encode_ms_median"] = round(enc_ms, 2)
    info["store_encode_ms_median"] = round(store_ms, 2)
    results = []
    for name in detectors:
        res = bench_model(models_dir, name, args.classifier, frames, jpegs, args.repeat,
                          args.threads, site)
        res["live"] = info
        results.append(res)
        if not args.json:
            print(text(res), flush=True)
    if args.json:
        doc = {"results": results, "live": info,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "images_dir": str(folder), "min_side": args.min_side}
        print(json.dumps(doc, indent=2))
    return 0


def text(r: dict[str, Any]) -> str:
    """The human-readable lines of one model's result."""
    j, lv = r["jpeg_path"], r["live"]
    st, jst = r["stages_ms"], j["stages_ms"]
    return "\n".join([
        f"{r['model']} + {r['classifier'] or 'no classifier'}: {r['images']} camera frames "
        f"{lv['size'][0]}x{lv['size'][1]} (lores {lv['lores'][0]}x{lv['lores'][1]}) x "
        f"{r['frames'] // max(1, r['images'])} passes, {r['threads']} thread(s)",
        f"  live path: frame {r['frame_ms_median']:.1f} ms  bare invoke "
        f"{r['invoke_ms_median']:.1f} ms  overhead ratio {r['overhead_ratio']:.2f} "
        f"({r['overhead_ratio_excl_classifier']:.2f} without the classifier's invokes, "
        f"{r['overhead_ratio_detector_only']:.2f} decode+preprocess+postprocess)",
        f"  jpeg path: frame {j['frame_ms_median']:.1f} ms  bare invoke "
        f"{j['invoke_ms_median']:.1f} ms  overhead ratio {j['overhead_ratio']:.2f} "
        f"({j['overhead_ratio_excl_classifier']:.2f} without the classifier's invokes, "
        f"{j['overhead_ratio_detector_only']:.2f} decode+preprocess+postprocess)",
        "  stages live (median ms): " + "  ".join(f"{s} {st[s]:.2f}" for s in STAGES),
        "  stages jpeg (median ms): " + "  ".join(f"{s} {jst[s]:.2f}" for s in STAGES),
        f"  allocation peak per frame: live {r['alloc_peak_kb_median']:.0f} KB, jpeg "
        f"{j['alloc_peak_kb_median']:.0f} KB; labels agree on {100 * r['labels_agree']:.0f} %",
        f"  JPEG encode: {lv['capture_encode_ms_median']:.1f} ms per captured frame on the old "
        f"path; now {lv['store_encode_ms_median']:.1f} ms (image + thumbnail) per kept event",
    ])
