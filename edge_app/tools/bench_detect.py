"""``camtrap bench detect``: where a frame's time goes, against bare ``interpreter.invoke()``.

For each detector card whose model file is in the models folder, the whole pipeline (with the
configured crop classifier) runs over the benchmark images, held in memory as the camera would
hand them over. Every frame is timed as a whole and per stage (decode, pre-process, invoke,
post-process/NMS, classify), and right after it the detector's bare ``invoke()`` is timed on
the same input. Interleaving the two keeps them under the same conditions (CPU frequency,
another process's load), which matters far more on a shared 2-vCPU machine or a Pi than any
number of repetitions.

``overhead_ratio`` = (frame − invoke) / invoke on the medians: what everything that is not the
detector's inference costs, the crop classifier's own inference included. The classifier's
bare invoke is reported too (``classifier_invoke_ms_median``), so the software overhead
alone is ``overhead_ratio_excl_classifier`` = (frame − invoke − classifier invokes) / invoke.

Site adaptation (issue 6) adds, per frame, the whole-frame embedding (one MobileNetV1 invoke on
the 224×224 frame the classifier's whole-frame pass also uses), the site head (a 1024×4
product) and the background lookup (a product with every remembered scene). When the
embedding card's model file is in the models folder the pipeline runs with all three, and
``site`` reports their medians and ``added_ms_median``, the added cost per frame (embed + head
+ background, summed per frame). The head is ``--head FILE`` or, without it, a zero head of
the same shape (its cost does not depend on its weights); the background is full
(``background.max_entries`` random scenes): the worst case. The pre-existing figures
(``frame_ms_median``, the overhead ratios, ``stages_ms``) leave these stages out, so they stay
comparable with earlier runs; ``frame_with_site_ms_median`` includes them.

Peak RSS is measured in a fresh child process that loads the detector, the classifier and (when
present) the embedding model with a head and a full background, and processes one frame (the
largest benchmark image): the parent has loaded every model in the pack by then, and
``ru_maxrss`` never goes down.

``jpeg_entropy_floor_ms`` is the median time of libjpeg-turbo's cheapest possible decode of
the same files (1/8 scale, greyscale: DC coefficients only). Entropy decoding reads every
coefficient whatever the output size, so this is a floor under the decode stage that no
pre-processing work can go below while frames arrive as JPEG.

``--live`` benchmarks the camera-array path instead (frames from the Pi camera adapter over the
picamera2 API fake, no JPEG decode) next to the same frames as JPEGs: see
:mod:`edge_app.tools.bench_live`. Its JSON has the same shape.

Speed is reported, never asserted: timed tests are flaky and say nothing about a Pi.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_app.core.models_dir import SEARCH_HELP
from edge_app.tools.bench_frames import alloc_peak_kb as _alloc_peak_kb
from edge_app.tools.bench_frames import classifier_passes as _classifier_passes

log = logging.getLogger(__name__)

MIN_SIDE = 2048
"""The issue's target is stated on the shared images whose long side is at least this."""

STAGES = ("decode", "preprocess", "invoke", "postprocess", "classify")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap bench detect``."""
    p.add_argument("--models", help=SEARCH_HELP)
    p.add_argument("--images", help="folder of JPEGs (default: images/cameratrapai next to "
                   "the models folder, i.e. the shared pack)")
    p.add_argument("--detector", action="append", metavar="CARD",
                   help="detector card to bench (repeatable; default: every detector card "
                   "whose model file is in the models folder)")
    p.add_argument("--classifier", default=None, metavar="CARD",
                   help="crop classifier card ('' for none; default: the config default)")
    p.add_argument("--min-side", type=int, default=MIN_SIDE,
                   help=f"only images whose long side is at least this (default {MIN_SIDE})")
    p.add_argument("--repeat", type=int, default=5, help="passes over the images (default 5)")
    p.add_argument("--threads", type=int, default=0, help="interpreter threads (0 = CPUs)")
    p.add_argument("--json", action="store_true", help="machine-readable results")
    p.add_argument("--head", metavar="FILE", help="site head file to time (default: a zero "
                   "head of the same shape; the cost does not depend on the weights)")
    p.add_argument("--no-site", action="store_true",
                   help="leave the embedding, head and background out")
    p.add_argument("--live", action="store_true",
                   help="the camera-array path: frames from the Pi camera adapter over the "
                   "picamera2 API fake, as arrays (no JPEG decode), next to the same frames as "
                   "JPEGs; same JSON shape")
    p.add_argument("--size", type=_size, default=None, metavar="WxH",
                   help="--live: the camera's main stream size (default: camera.width x "
                   "camera.height, 1280x720)")
    p.add_argument("--lores-width", type=int, default=640, metavar="PX",
                   help="--live: width of the camera's lores stream (default 640)")
    p.add_argument("--rss-probe", metavar="IMAGE", help=argparse.SUPPRESS)
    p.add_argument("--rss-site", action="store_true", help=argparse.SUPPRESS)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def _size(text: str) -> tuple[int, int]:
    from edge_app.tools.bench_live import parse_size

    return parse_size(text)


def _default_images(models_dir: Path) -> Path:
    return models_dir.parent / "images" / "cameratrapai"


def bench_images(folder: Path, min_side: int) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of every image in ``folder`` whose long side is ≥ ``min_side``."""
    return [(name, path.read_bytes()) for name, path in bench_paths(folder, min_side)]


def bench_paths(folder: Path, min_side: int) -> list[tuple[str, Path]]:
    """(name, path) of every image in ``folder`` whose long side is ≥ ``min_side``."""
    from PIL import Image

    from edge_app.tools.batch import expand_paths

    out = []
    for name, path in expand_paths([str(folder)]):
        with Image.open(path) as im:
            if max(im.size) < min_side:
                continue
        out.append((name, path))
    return out


def detector_cards(models_dir: Path) -> list[str]:
    """Detector cards (models folder first, then the repository) whose model file is there."""
    from edge_app.core.errors import ModelError
    from edge_app.trap.detect.cards import card_dirs, load_card

    names: list[str] = []
    for d in card_dirs(models_dir):
        for p in sorted(d.glob("*.toml")):
            if p.stem in names:
                continue
            try:
                card = load_card(p)
            except ModelError as e:  # `camtrap models verify` reports it in full
                log.warning("skipping card %s: %s", p, e.reason)
                continue
            if card.task == "detector" and (models_dir / card.file).is_file():
                names.append(p.stem)
    return names


def rss_probe(models_dir: Path, detector: str, classifier: str, image: Path,
              threads: int, site: bool = False, head: str | None = None) -> float:
    """Peak RSS (MB) of a fresh process that loads the models (with ``site``: the embedding
    model, a head and a full background too) and analyses ``image``."""
    cmd = [sys.executable, "-m", "edge_app", "bench", "detect", "--models", str(models_dir),
           "--detector", detector, "--classifier", classifier, "--threads", str(threads),
           "--rss-probe", str(image)]
    if site:
        cmd.append("--rss-site")
        if head:
            cmd += ["--head", head]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    return float(out.stdout.strip().splitlines()[-1])


def _probe_main(args: argparse.Namespace, models_dir: Path) -> int:
    import resource
    import tempfile

    from edge_app.core.config import DetectorConfig
    from edge_app.trap.detect.pipeline import Pipeline

    cfg = replace(DetectorConfig(), detector=args.detector[0], num_threads=args.threads)
    if args.classifier is not None:
        cfg = replace(cfg, classifier=args.classifier)
    with tempfile.TemporaryDirectory() as tmp, \
            Pipeline(cfg, models_dir, embed=args.rss_site) as p:
        if args.rss_site:
            _add_site(p, args.head, Path(tmp))
        p.analyse(Path(args.rss_probe).read_bytes())
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if p.background is not None:
            p.background.close()
    print(f"{peak_kb / 1024:.1f}")
    return 0


def site_available(models_dir: Path) -> bool:
    """True when the default embedding card's model file is in the models folder."""
    from edge_app.core.config import DetectorConfig
    from edge_app.core.errors import ModelError
    from edge_app.trap.detect.cards import find_card, load_card

    name = DetectorConfig().embedder
    try:
        card = load_card(find_card(name, models_dir))
    except ModelError:
        return False
    return (models_dir / card.file).is_file()


def _add_site(p: Any, head_file: str | None, tmp: Path) -> None:
    """Give a pipeline (loaded with ``embed=True``) a head and a full background."""
    import numpy as np

    from edge_app.core.clock import SystemClock
    from edge_app.core.config import BackgroundConfig
    from edge_app.trap.detect.background import BackgroundMemory
    from edge_app.trap.detect.site_head import CLASSES, SiteHead, load_head

    emb = p.embedder
    assert emb is not None
    if head_file:
        p.head = load_head(Path(head_file), emb.sha256, emb.dims)
    else:
        k = len(CLASSES)
        p.head = SiteHead(np.zeros((emb.dims, k), np.float32), np.zeros(k, np.float32),
                          np.zeros(emb.dims, np.float32), CLASSES, 0.5)
    cfg = BackgroundConfig(enabled=True, min_entries=1, dedupe_similarity=1.1)
    bg = BackgroundMemory(tmp, emb.dims, emb.sha256, cfg, SystemClock())
    bg.open()
    rng = np.random.default_rng(0)
    for _ in range(cfg.max_entries):
        v = rng.standard_normal(emb.dims).astype(np.float32)
        bg.add(v / np.linalg.norm(v), "shot")
    p.background = bg


SITE_STAGES = ("embed", "head", "background")


def bench_detector(models_dir: Path, detector: str, classifier: str | None,
                   images: list[tuple[str, bytes]], repeat: int,
                   threads: int, site: bool = False,
                   head: str | None = None) -> dict[str, Any]:
    """Time one detector (with the classifier, and with ``site`` the embedding, head and
    background) over ``images``; see the module docstring."""
    import tempfile
    import time

    from edge_app.core.config import DetectorConfig
    from edge_app.trap.detect.pipeline import Pipeline

    cfg = replace(DetectorConfig(), detector=detector, num_threads=threads)
    if classifier is not None:
        cfg = replace(cfg, classifier=classifier)
    frames: list[float] = []
    frames_site: list[float] = []
    invokes: list[float] = []
    clf_invokes: list[float] = []
    clf_per_frame: list[float] = []
    emb_invokes: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    site_stages: dict[str, list[float]] = {s: [] for s in SITE_STAGES}
    added: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, Pipeline(cfg, models_dir, embed=site) as p:
        if site:
            _add_site(p, head, Path(tmp))
        load_ms = p.load_ms
        det = p.detector_model
        clf = p.classifier_model
        emb = p.embedder
        for _, data in images:  # warm-up: caches, XNNPACK packing, the decode buffer
            p.analyse(data)
        for _ in range(repeat):
            for _, data in images:
                t0 = time.perf_counter()
                r = p.analyse(data)
                t1 = time.perf_counter()
                det.run()  # bare invoke, same input, same conditions
                t2 = time.perf_counter()
                site_ms = sum(r.stages_ms.get(s, 0.0) for s in SITE_STAGES)
                frames_site.append((t1 - t0) * 1e3)
                frames.append((t1 - t0) * 1e3 - site_ms)
                invokes.append((t2 - t1) * 1e3)
                for s in STAGES:
                    stages[s].append(r.stages_ms.get(s, 0.0))
                passes = _classifier_passes(r)
                if clf is not None and passes:
                    t3 = time.perf_counter()
                    clf.run()
                    clf_invokes.append((time.perf_counter() - t3) * 1e3)
                clf_per_frame.append(float(passes))
                if emb is not None:
                    for s in SITE_STAGES:
                        site_stages[s].append(r.stages_ms.get(s, 0.0))
                    added.append(site_ms)
                    t4 = time.perf_counter()
                    emb.model.run()
                    emb_invokes.append((time.perf_counter() - t4) * 1e3)
        threads_used = det.num_threads
        alloc_kb = _alloc_peak_kb(p, images)
        scenes = 0 if p.background is None else len(p.background)
        if p.background is not None:
            p.background.close()
    inv = _median(invokes)
    frame = _median(frames)
    clf_inv = _median(clf_invokes)
    clf_total = clf_inv * statistics.mean(clf_per_frame) if clf_per_frame else 0.0
    site_doc = None
    if emb is not None:
        site_doc = {
            "embedder": cfg.embedder,
            "head": head or "zero head (same shape)",
            "background_scenes": scenes,
            "stages_ms": {s: round(_median(v), 3) for s, v in site_stages.items()},
            "embed_invoke_ms_median": round(_median(emb_invokes), 2),
            "added_ms_median": round(_median(added), 2),
            "added_ms_p90": round(sorted(added)[int(0.9 * (len(added) - 1))], 2),
        }
    return {
        "model": detector,
        "classifier": cfg.classifier or None,
        "images": len(images),
        "frames": len(frames),
        "threads": threads_used,
        "invoke_ms_median": round(inv, 2),
        "frame_ms_median": round(frame, 2),
        "overhead_ratio": round((frame - inv) / inv, 3) if inv else None,
        "classifier_invoke_ms_median": round(clf_inv, 2) if clf_invokes else None,
        "classifier_passes_per_frame": round(statistics.mean(clf_per_frame), 2)
        if clf_per_frame else 0.0,
        "overhead_ratio_excl_classifier": round((frame - inv - clf_total) / inv, 3)
        if inv else None,
        "load_ms": round(load_ms, 1),
        "stages_ms": {s: round(_median(v), 2) for s, v in stages.items()},
        "alloc_peak_kb_median": round(alloc_kb, 1),
        "jpeg_entropy_floor_ms": _entropy_floor_ms(images),
        "frame_with_site_ms_median": round(_median(frames_site), 2),
        "site": site_doc,
    }


def _entropy_floor_ms(images: list[tuple[str, bytes]]) -> float | None:
    """Median time of the cheapest decode libjpeg-turbo can do (1/8 scale, grey, DC only).

    Entropy (Huffman) decoding has to read every coefficient whatever the output scale, so
    this is the floor under the ``decode`` stage for these files on this CPU: what no
    pre-processing change can go below while frames arrive as JPEG.
    """
    import time

    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - depends on the install
        return None
    times = []
    for _, data in images:
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                simplejpeg.decode_jpeg(data, "GRAY", min_factor=8, strict=False)
            except ValueError:
                break
            times.append((time.perf_counter() - t0) * 1e3)
    return round(_median(times), 2) if times else None


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 2 on a bad models or images folder."""
    from edge_app.core.models_dir import resolve_models_dir

    models_dir = resolve_models_dir(args.models, "")
    if args.rss_probe:
        return _probe_main(args, models_dir)
    if args.repeat < 1:
        print("bench detect: --repeat must be ≥ 1", file=sys.stderr)
        return 2
    folder = Path(args.images) if args.images else _default_images(models_dir)
    if not folder.is_dir():
        print(f"bench detect: image folder {folder} does not exist (use --images)",
              file=sys.stderr)
        return 2
    images = bench_images(folder, args.min_side)
    if not images:
        print(f"bench detect: no image in {folder} with a side ≥ {args.min_side} px",
              file=sys.stderr)
        return 2
    largest = max(images, key=lambda item: len(item[1]))[0]
    detectors = args.detector or detector_cards(models_dir)
    site = not args.no_site and (bool(args.head) or site_available(models_dir))
    if args.live:
        from edge_app.core.config import CameraConfig
        from edge_app.tools import bench_live

        if args.size is None:
            args.size = (CameraConfig().width, CameraConfig().height)
        paths = [path for _, path in bench_paths(folder, args.min_side)]
        return bench_live.main(args, models_dir, folder, paths, detectors, site)
    results = []
    for name in detectors:
        res = bench_detector(models_dir, name, args.classifier, images, args.repeat,
                             args.threads, site=site, head=args.head)
        res["peak_rss_mb"] = rss_probe(models_dir, name, res["classifier"] or "",
                                       folder / largest, args.threads, site, args.head)
        results.append(res)
        if not args.json:
            print(_text(res), flush=True)
    if args.json:
        doc = {"results": results,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "images_dir": str(folder), "min_side": args.min_side}
        print(json.dumps(doc, indent=2))
    return 0


def _text(r: dict[str, Any]) -> str:
    st = r["stages_ms"]
    lines = [
        f"{r['model']} + {r['classifier'] or 'no classifier'}: {r['images']} images x "
        f"{r['frames'] // max(1, r['images'])} passes, {r['threads']} thread(s)",
        f"  frame {r['frame_ms_median']:.1f} ms  bare invoke {r['invoke_ms_median']:.1f} ms  "
        f"overhead ratio {r['overhead_ratio']:.2f} "
        f"({r['overhead_ratio_excl_classifier']:.2f} without the classifier's "
        f"{r['classifier_passes_per_frame']:.1f} x "
        f"{r['classifier_invoke_ms_median'] or 0.0:.1f} ms invokes)",
        "  stages (median ms): " + "  ".join(f"{s} {st[s]:.2f}" for s in STAGES),
        f"  JPEG entropy-decoding floor (1/8-scale grey decode) {r['jpeg_entropy_floor_ms']} ms"
        f" = {(r['jpeg_entropy_floor_ms'] or 0.0) / r['invoke_ms_median']:.2f} x invoke",
        f"  load {r['load_ms']:.0f} ms  peak RSS {r['peak_rss_mb']:.1f} MB  "
        f"numpy/Python allocation peak per frame {r['alloc_peak_kb_median']:.0f} KB",
    ]
    site = r.get("site")
    if site:
        st = site["stages_ms"]
        lines.append(
            f"  site adaptation adds {site['added_ms_median']:.2f} ms per frame (p90 "
            f"{site['added_ms_p90']:.2f}): embed {st['embed']:.2f} (bare invoke "
            f"{site['embed_invoke_ms_median']:.2f}), head {st['head']:.3f}, background "
            f"{st['background']:.3f} ({site['background_scenes']} scenes); frame with it "
            f"{r['frame_with_site_ms_median']:.1f} ms")
    return "\n".join(lines)
