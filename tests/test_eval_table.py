"""The README's detection table is camtrap eval's output (edge_app/tools/eval_table.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_app.tools.eval_table import COLUMNS, STAGES, figures, render, run_stage

REPO = Path(__file__).resolve().parents[1]
CAMTRAP = [sys.executable, "-m", "edge_app"]


def readme_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- eval-table:start -->\n(.*?)<!-- eval-table:end -->", text, re.S)
    assert m, "README.md lost its eval-table block: run deploy/dev/update-readme"
    rows = {}
    for line in m.group(1).splitlines():
        if line.startswith("| ") and not line.startswith("| stage"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def summary(confusion: dict[str, dict[str, int]], mistakes: list[dict[str, Any]],
            discard_rate: float) -> dict[str, Any]:
    return {"confusion": confusion, "mistakes": mistakes, "empty_discard_rate": discard_rate}


def test_figures_come_from_the_summary() -> None:
    zero = {"empty": 0, "animal": 0, "person": 0, "vehicle": 0}
    s = summary({"empty": {**zero, "empty": 4}, "animal": {**zero, "animal": 5, "empty": 3},
                 "person": {**zero, "person": 1}, "vehicle": zero},
                [{"truth": "animal", "outcome": "discard", "species": None,
                  "truth_species": None},
                 {"truth": "animal", "outcome": "alert", "species": "leopard",
                  "truth_species": "other_big_cat"}], 0.75)
    cells = figures(s)
    assert cells["animals kept"] == "7/8"
    assert cells["empties discarded"] == "3/4"
    assert cells["people kept"] == "1/1"
    assert cells["vehicles kept"] == "—"
    assert cells["false leopard / tiger"] == "1 / 0"
    # a --loso row is judged on its held-out frames
    held_out = summary({"empty": {**zero, "empty": 2}, "animal": {**zero, "animal": 2},
                        "person": zero, "vehicle": zero}, [], 1.0)
    assert figures({**s, "loso": {"pooled": held_out}})["animals kept"] == "2/2"
    table = render([(STAGES[0], s)], "DIR")
    assert table.count("\n| ") == 2
    assert all(c in table for c in COLUMNS)


@pytest.mark.models
def test_the_readme_row_of_the_defaults_is_what_camtrap_eval_says_now(
        field_dir: Path, models_dir: Path) -> None:
    """Change a default, a threshold or a model and this fails until the table is
    regenerated (deploy/dev/update-readme): the README cannot keep stale figures."""
    stage = next(s for s in STAGES if s.default)
    got = figures(run_stage(stage, field_dir, models_dir, CAMTRAP))
    row = readme_rows().get(stage.name)
    assert row is not None, f"README has no row {stage.name!r}"
    for i, column in enumerate(COLUMNS[1:], start=1):
        if column == "ms / frame":
            continue  # cost is machine-dependent: measured when the table was made
        assert row[i] == got[column], (column, row[i], got[column])
