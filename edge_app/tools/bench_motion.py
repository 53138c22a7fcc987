"""``camtrap bench motion``: what the motion gate saves on real bursts, and what it costs.

Real camera-trap bursts are rebuilt from a folder of frames by their EXIF capture time
(frames of one camera less than ``--gap`` seconds apart are one burst; the shared field set's
Peru sequence holds 14 such bursts). The first frame of each burst stands in for the
pre-trigger frame. Every burst is analysed twice, gate off and gate on, and the report gives:

* frames inferred with and without the gate, and the time per burst both ways;
* whether every burst's verdict (outcome, label, species) is the same both ways — the gate
  must never change a decision, only skip work (judged with the motion vote off);
* which bursts the motion *vote* (``policy.motion_keep_fraction``: a large change against the
  pre-trigger frame keeps the trigger) keeps that the other stages would have discarded.

A stand-in reference that may already show the animal is the *harder* case for the gate: a
frame that looks like it takes the reference's result, animal included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

_DATETIME_ORIGINAL = 0x9003
_EXIF_IFD = 0x8769
_DATETIME = 0x0132


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``camtrap bench motion``."""
    p.add_argument("--models", help="model folder (else CAMTRAP_MODELS)")
    p.add_argument("--images", help="folder of frames with EXIF times (default: "
                   "images/field/animl-r next to the models folder)")
    p.add_argument("--gap", type=float, default=2.0,
                   help="frames closer than this many seconds are one burst (default 2)")
    p.add_argument("--json", action="store_true", help="machine-readable results")


def capture_time(path: Path) -> dt.datetime | None:
    """EXIF DateTimeOriginal (else DateTime) of a JPEG, or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            text = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    except OSError:
        return None
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text.strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def group_bursts(paths: list[Path], gap_s: float) -> list[list[Path]]:
    """Bursts of ≥ 2 frames: same folder, consecutive capture times ≤ ``gap_s`` apart."""
    timed = sorted(((t, p) for p in paths if (t := capture_time(p)) is not None),
                   key=lambda tp: (str(tp[1].parent), tp[0], tp[1].name))
    bursts: list[list[Path]] = []
    cur: list[Path] = []
    last: tuple[Path, dt.datetime] | None = None
    for t, p in timed:
        if last is not None and (p.parent != last[0]
                                 or (t - last[1]).total_seconds() > gap_s):
            bursts.append(cur)
            cur = []
        cur.append(p)
        last = (p.parent, t)
    if cur:
        bursts.append(cur)
    return [b for b in bursts if len(b) >= 2]


def measure(models_dir: Path, bursts: list[list[Path]]) -> dict[str, Any]:
    """Run every burst with the gate off and on; see the module docstring."""
    from edge_app.core.config import DetectorConfig, PolicyConfig
    from edge_app.core.events import Frame
    from edge_app.trap.detect.pipeline import Pipeline
    from edge_app.trap.detect.policy import decide

    frames_of = [[Frame(p.read_bytes(), 0.0, 0.0, i, i == 0, p.name) for i, p in enumerate(b)]
                 for b in bursts]
    runs: dict[bool, dict[str, Any]] = {}
    # The gate's skipping is judged with the motion *vote* off (it must change no decision);
    # what the vote then adds (policy.motion_keep_fraction) is reported on its own.
    no_vote = replace(PolicyConfig(), motion_keep_fraction=0.0)
    voted: list[bool] = []
    for gate in (False, True):
        cfg = replace(DetectorConfig(), motion_gate=gate)
        with Pipeline(cfg, models_dir) as p:
            p.analyse_burst(frames_of[0])  # warm-up
            times, verdicts, inferred, motions = [], [], 0, []
            for frames in frames_of:
                t0 = time.perf_counter()
                results = p.analyse_burst(frames)
                times.append((time.perf_counter() - t0) * 1e3)
                v = decide(results, no_vote)
                if gate:  # a discard that the motion vote turns into a keep
                    voted.append(v.outcome == "discard"
                                 and decide(results, PolicyConfig()).outcome != "discard")
                verdicts.append((v.outcome, v.label, v.species))
                inferred += sum(r is not None and not r.gated for r in results)
                motions.append([None if r is None or r.motion is None else round(r.motion, 4)
                                for r in results])
        runs[gate] = {"times": times, "verdicts": verdicts, "inferred": inferred,
                      "motions": motions}
    off, on = runs[False], runs[True]
    total = sum(len(f) for f in frames_of)
    return {
        "bursts": len(bursts),
        "frames": total,
        "inferred_gate_off": off["inferred"],
        "inferred_gate_on": on["inferred"],
        "inference_saved": round(1 - on["inferred"] / off["inferred"], 3),
        "burst_ms_median_gate_off": round(statistics.median(off["times"]), 1),
        "burst_ms_median_gate_on": round(statistics.median(on["times"]), 1),
        "time_saved": round(1 - sum(on["times"]) / sum(off["times"]), 3),
        "verdicts_identical": off["verdicts"] == on["verdicts"],
        "motion_keep_fraction": PolicyConfig().motion_keep_fraction,
        "kept_by_motion_vote": sum(voted),
        "per_burst": [
            {"frames": [p.name for p in b], "verdict": list(off["verdicts"][i]),
             "verdict_gate_on": list(on["verdicts"][i]), "motion": on["motions"][i],
             "kept_by_motion_vote": voted[i]}
            for i, b in enumerate(bursts)],
    }


def main(args: argparse.Namespace) -> int:
    """``camtrap bench motion``; exit 2 when no burst can be built from the images."""
    from edge_app.tools.batch import expand_paths
    from edge_app.trap.detect.pipeline import resolve_models_dir

    models_dir = resolve_models_dir(args.models, "")
    folder = (Path(args.images) if args.images
              else models_dir.parent / "images" / "field" / "animl-r")
    if not folder.is_dir():
        print(f"bench motion: {folder} does not exist (use --images)", file=sys.stderr)
        return 2
    bursts = group_bursts([p for _, p in expand_paths([str(folder)])], args.gap)
    if not bursts:
        print(f"bench motion: no bursts (frames ≤ {args.gap} s apart by EXIF time) in "
              f"{folder}", file=sys.stderr)
        return 2
    r = measure(models_dir, bursts)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['bursts']} bursts, {r['frames']} frames from {folder} (first frame of each "
          f"burst = the pre-trigger reference)")
    print(f"  frames inferred: {r['inferred_gate_off']} without the gate, "
          f"{r['inferred_gate_on']} with it ({100 * r['inference_saved']:.0f} % saved)")
    print(f"  time per burst (median): {r['burst_ms_median_gate_off']:.0f} ms -> "
          f"{r['burst_ms_median_gate_on']:.0f} ms; total time saved "
          f"{100 * r['time_saved']:.0f} %")
    print(f"  verdicts identical with and without the gate: {r['verdicts_identical']}")
    print(f"  discards the motion vote turns into keeps (policy.motion_keep_fraction "
          f"{r['motion_keep_fraction']:g}): {r['kept_by_motion_vote']}")
    for b in r["per_burst"]:
        names = " ".join(Path(n).stem[-8:] for n in b["frames"])
        verdict = "/".join(str(x) for x in b["verdict"] if x)
        vote = "; kept by the motion vote" if b["kept_by_motion_vote"] else ""
        print(f"    {names}: {verdict}; changed {b['motion'][1:]}{vote}")
    return 0
