"""Puts the firmware (not a package: MicroPython modules imported by name) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
for sub in ("supervisor", "tests"):
    path = str(FIRMWARE / sub)
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def _firmware_tmp(tmp_path: Path) -> None:
    """Board scenarios write their state file here, not into the working directory."""
    import scenarios

    scenarios.TMP_DIR[0] = str(tmp_path) + "/"
