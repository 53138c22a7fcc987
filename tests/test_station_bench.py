"""``camtrap bench station --json``: the figures' contract (their values are the note's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.broker
def test_bench_station_json_contract(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge_app", "bench", "station", "--json",
                        "--events", "300", "--units", "5", "--samples", "5", "--dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=180, cwd=REPO,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert {"ingest_per_s", "lost", "duplicates", "page_latency_ms_p50",
            "page_latency_ms_p95"} <= set(out)
    assert (out["lost"], out["duplicates"], out["samples"]) == (0, 0, 5)
    assert out["ingest_per_s"] > 0
    assert 0 < out["page_latency_ms_p50"] <= out["page_latency_ms_p95"]
