"""The README is a contract too: its quick start and config reference must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from edge_app.core import config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_config_reference_matches_the_schema() -> None:
    m = re.search(r"<!-- config-reference:start -->\n```text\n(.*?)```", README, re.S)
    assert m, "README.md lost its config-reference block"
    assert m.group(1).splitlines() == config.explain(), (
        "README config reference is stale: run deploy/dev/update-readme")


def test_quick_start_commands_exist_and_ci_calls_the_test_command() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    for cmd in ("deploy/dev/demo", "deploy/dev/test"):
        assert cmd in quick
        assert (REPO / cmd).stat().st_mode & 0o111, f"{cmd} is not executable"
    assert "deploy/dev/test" in (REPO / ".ci" / "run").read_text()
