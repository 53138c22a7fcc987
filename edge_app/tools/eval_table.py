"""The README's detection figures, regenerated from ``camtrap eval`` output.

Why a tool and not a typed table: the figures change whenever a default, a threshold or a
model changes, and a hand-typed table goes stale without anyone noticing. Each row is one
*stage added* to the pipeline (issue 13: "per stage added, with the cost per frame"), run as
``camtrap eval DIR --json`` with that stage's ``[detector]`` settings; the row's figures are
read from the JSON. ``deploy/dev/update-readme`` writes the table between its markers, and
``tests/test_eval_table.py`` re-runs the default row and fails when the README disagrees.

Run: ``python -m edge_app.tools.eval_table ../shared/data/images/field [--models DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Stage:
    """One row: a name, the ``[detector]`` keys it sets, extra ``camtrap eval`` options."""

    name: str
    detector: dict[str, Any] = field(default_factory=dict)
    argv: tuple[str, ...] = ()
    default: bool = False
    """The row of the shipped defaults (the one the test re-runs)."""


STAGES: tuple[Stage, ...] = (
    Stage("detector alone (YOLOv8n 640)", {"classifier": "", "second_look_tiles": False}),
    Stage("+ crop classifier, the whole frame when there is no box",
          {"second_look_tiles": False}),
    Stage("+ second look: 2x2 tiles at full resolution (the defaults)", default=True),
    Stage("+ site head trained on the other sources (leave-one-source-out)", argv=("--loso",)),
)

COLUMNS = ("stage", "animals kept", "empties discarded", "people kept", "vehicles kept",
           "false leopard / tiger", "ms / frame")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def run_stage(stage: Stage, images: Path, models: Path | None, camtrap: Sequence[str]
              ) -> dict[str, Any]:
    """``camtrap eval`` for one stage; its JSON summary.

    Raises:
        RuntimeError: the evaluation failed (its stderr in the message).
    """
    with tempfile.TemporaryDirectory(prefix="camtrap-eval-") as tmp:
        cfg = Path(tmp) / "stage.toml"
        lines = ['[unit]\nid = "EVAL-1"\n[detector]',
                 *(f"{k} = {_toml_value(v)}" for k, v in stage.detector.items())]
        cfg.write_text("\n".join(lines) + "\n")
        argv = [*camtrap, "eval", str(images), "--json", "--config", str(cfg), *stage.argv]
        if models is not None:
            argv += ["--models", str(models)]
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if p.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr[-2000:]}")
        out: dict[str, Any] = json.loads(p.stdout)
        return out


TARGETS = ("leopard", "tiger")


def _total(s: dict[str, Any], truth: str) -> int:
    return sum(int(v) for v in s["confusion"].get(truth, {}).values())


def _lost(s: dict[str, Any], truth: str) -> int:
    """Frames of ``truth`` the pipeline discarded (every lost frame is a listed mistake)."""
    return sum(1 for m in s["mistakes"] if m["truth"] == truth and m["outcome"] == "discard")


def _kept(s: dict[str, Any], truth: str) -> str:
    n = _total(s, truth)
    return "—" if n == 0 else f"{n - _lost(s, truth)}/{n}"


def _false_target(s: dict[str, Any], target: str) -> int:
    """Frames named ``target`` whose true species is another (a wrong big cat is a listed
    mistake: the species differs from the truth's)."""
    return sum(1 for m in s["mistakes"]
               if m.get("species") == target and m.get("truth_species") != target)


def figures(s: dict[str, Any]) -> dict[str, str]:
    """One row's cells from a ``camtrap eval --json`` summary; a ``--loso`` row is judged on
    its held-out frames (``loso.pooled``)."""
    src = s.get("loso", {}).get("pooled", s)
    empties = _total(src, "empty")
    kept_empties = round(empties * (1.0 - float(src["empty_discard_rate"] or 0.0)))
    ms = s.get("ms_per_frame")
    return {
        "animals kept": _kept(src, "animal"),
        "empties discarded": "—" if empties == 0 else f"{empties - kept_empties}/{empties}",
        "people kept": _kept(src, "person"),
        "vehicles kept": _kept(src, "vehicle"),
        "false leopard / tiger": " / ".join(str(_false_target(src, t)) for t in TARGETS),
        "ms / frame": "—" if ms is None else f"{ms:.0f}",
    }


def render(rows: Sequence[tuple[Stage, dict[str, Any]]], images_label: str) -> str:
    """The markdown table (and its one-line caption) for the README."""
    out = [f"Field set (`camtrap eval {images_label}`), each row adds one stage to the one "
           "above; cost measured on the machine that generated the table:", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for stage, s in rows:
        cells = figures(s)
        out.append("| " + " | ".join([stage.name, *(cells[c] for c in COLUMNS[1:])]) + " |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eval_table", description=__doc__)
    p.add_argument("images", type=Path, help="the labelled field set")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--label", default="../shared/data/images/field",
                   help="how the folder is named in the table's caption")
    p.add_argument("--camtrap", default=str(Path(sys.executable).with_name("camtrap")))
    args = p.parse_args(argv)
    rows = [(st, run_stage(st, args.images, args.models, [args.camtrap])) for st in STAGES]
    sys.stdout.write(render(rows, args.label))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
